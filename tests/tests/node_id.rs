//! A node id given twice: `--node-id` names the node, and each start adds a
//! suffix of its own (`<ID>-<8 hex digits>`), so that a process restarted
//! with the same configuration at the same address (a container restarted
//! inside its pod, which the chart names by the pod) is a new node, and two
//! processes given one id by mistake are two nodes.

use std::time::Duration;

use dtcp_client::dtcp_wire::{Condition, Verb};
use dtcp_client::{ClientError, Target};
use dtcp_tests::*;

/// The id both starts are given, as the chart gives the pod's name.
const ID: &str = "dtcp-relay-7d9f-x2kq";

/// The suffix a start added to [`ID`]; panics unless the node's id is
/// `ID-` and 8 lower-case hex digits.
fn suffix(node_id: &str) -> &str {
    let suffix = node_id
        .strip_prefix(ID)
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or_else(|| panic!("node id {node_id} is not {ID}-<suffix>"));
    assert!(
        suffix.len() == 8
            && suffix
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "node id {node_id}: the suffix is not 8 hex digits"
    );
    suffix
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_its_id_at_its_address_is_a_new_node() {
    let redis = RedisServer::start();
    let mut a = NodeOptions::cluster(&[redis.url()])
        .arg("--node-id", ID)
        .pending_ttl(30.0)
        .start();
    let b = NodeOptions::cluster(&[redis.url()])
        .connect_grace(1.0)
        .start();
    let forward = a.forward.expect("forward address").to_string();
    let t = triple("same-id-restart");
    let _i = raw(a.addr, &command(Verb::Create, &t)).await;
    eventually(Duration::from_secs(5), "registered", || async {
        redis.keys().iter().any(|k| k.starts_with("dtcp:reg:"))
    })
    .await;
    let old_id = a.node_id.clone();
    let old_suffix = suffix(&old_id).to_owned();
    assert!(
        redis.keys().contains(&format!("dtcp:node:{old_id}")),
        "no heartbeat under the suffixed id {old_id}: {:?}",
        redis.keys()
    );

    // Killed, and started again with the same id at the same address.
    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(5)).expect("killed");
    let a2 = NodeOptions::cluster(&[redis.url()])
        .arg("--node-id", ID)
        .forward_listen(&forward)
        .start();
    assert_eq!(a2.forward.expect("forward address").to_string(), forward);
    assert_ne!(
        suffix(&a2.node_id),
        old_suffix,
        "the same id and address twice made the same node"
    );

    // The predecessor's registration is a dead node's to the new process:
    // it refuses to claim it (stale_owner), instead of taking it for its
    // own.
    let refused = match Target::connect(b.addr, &t).await {
        Err(ClientError::Refused { condition, .. }) => condition,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(
        matches!(refused, Condition::NotFound | Condition::Unavailable),
        "{refused:?}"
    );
    assert!(
        a2.metric("dtcp_bridge_errors_total{role=\"server\",reason=\"stale_owner\"}")
            .await
            >= 1.0,
        "the restarted node did not see its predecessor's registration as stale"
    );

    // Once the old heartbeat has expired, a new CREATE of the same triple
    // takes the registration over (not conflict until the pending TTL).
    eventually(
        Duration::from_secs(10),
        "the old heartbeat expired",
        || async { !redis.keys().contains(&format!("dtcp:node:{old_id}")) },
    )
    .await;
    let (i, tg) = pair(a2.addr, b.addr, &t).await;
    exchange(i, tg, 4096, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_given_one_id_are_two_nodes() {
    let redis = RedisServer::start();
    let a = NodeOptions::cluster(&[redis.url()])
        .arg("--node-id", ID)
        .start();
    let b = NodeOptions::cluster(&[redis.url()])
        .arg("--node-id", ID)
        .start();
    assert_ne!(suffix(&a.node_id), suffix(&b.node_id));
    // Each sees the other alive, and a session crosses from one to the
    // other.
    a.wait_for("dtcp_nodes_alive", 2.0).await;
    b.wait_for("dtcp_nodes_alive", 2.0).await;
    let (i, tg) = pair(a.addr, b.addr, &triple("same-id-twice")).await;
    exchange(i, tg, 4096, 2).await;
}
