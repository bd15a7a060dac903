//! A cluster of relays on a Redis Cluster with replicas: the master holding
//! the shard of a node's own channel (where it is told of the registrations
//! it waits for while its looks are not tracked) dies, and with it a third
//! of the registrations' keys and every node's tracked connection to it.
//! Its replica takes over, the nodes follow it (tracking is turned on
//! there, the channel subscribed again), and cross-node pairing keeps
//! working (that the messages themselves come back, and tracked looks, are
//! the store's tests, crates/store/tests/cluster.rs).

use std::time::{Duration, Instant};

use dtcp_client::{Initiator, Target};
use dtcp_tests::testkit::{Cluster, wait_until};
use dtcp_tests::*;

/// The key prefix the nodes use (their default).
const PREFIX: &str = "dtcp:";
/// The most cross-node pairing may take to work again after the shard's
/// master dies: the replicas' failover (cluster-node-timeout 1 s, measured
/// at about 3 s) with room for a busy machine.
const PAIRING_BACK: Duration = Duration::from_secs(30);
/// Cross-node pairs after the failover: enough that their registrations
/// land on every shard.
const PAIRS_AFTER: usize = 30;

/// Pairs a CREATE on `a` with a CONNECT on `b`, every byte checked; `false`
/// when either side was refused.
async fn cross_pair(a: &Relay, b: &Relay, name: &str) -> bool {
    let t = triple(name);
    let i = tokio::spawn({
        let (addr, t) = (a.addr, t.clone());
        async move { Initiator::connect(addr, &t).await }
    });
    let tg = Target::connect(b.addr, &t).await;
    match (i.await.unwrap(), tg) {
        (Ok(i), Ok(tg)) => {
            exchange(i, tg, 4096, 3).await;
            true
        }
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_pairing_survives_the_failover_of_a_waiting_nodes_shard() {
    let mut cluster = Cluster::start(3, 1);
    let urls = cluster.urls();
    let nodes = [0, 1, 2].map(|_| NodeOptions::cluster(&urls).connect_grace(5.0).start());
    nodes[0].wait_for("dtcp_nodes_alive", 3.0).await;
    // Every node's looks tracked, on every master.
    for node in &nodes {
        node.wait_for("dtcp_store_looks_tracked", 1.0).await;
    }
    for k in 0..3 {
        let name = format!("shard-before-{k}");
        assert!(cross_pair(&nodes[k], &nodes[(k + 1) % 3], &name).await);
    }

    // The shard of the channel where node 1, a CONNECT's node in every
    // other pair, is told of the registrations it waits for.
    let channel = format!("{PREFIX}wake:{}", nodes[1].node_id);
    let holder = cluster.master_of(&channel);
    cluster.nodes[holder].kill();
    let killed = Instant::now();
    // The dead master marked failed, then every slot served again: a replica
    // took its shard.
    let dead = cluster.nodes[holder].port;
    let witness = (holder + 1) % cluster.nodes.len();
    wait_until(PAIRING_BACK, "the dead master to be marked failed", || {
        cluster.nodes[witness]
            .cli(&["CLUSTER", "NODES"])
            .lines()
            .filter(|l| l.contains(&format!(":{dead}@")))
            // FAIL, not just PFAIL ("fail?"): from then on the cluster's
            // state is not ok until a replica serves the shard.
            .any(|l| {
                l.split_whitespace()
                    .nth(2)
                    .is_some_and(|f| f.split(',').any(|f| f == "fail"))
            })
    });
    cluster.wait_ok();
    assert_ne!(
        cluster.master_of(&channel),
        holder,
        "a replica holds it now"
    );
    eprintln!(
        "the shard failed over {:?} after its master was killed",
        killed.elapsed()
    );
    // Pairs whose registrations land on every shard, the new one included:
    // each works, at once or after a retry while the nodes learn the new
    // slot map.
    for k in 0..PAIRS_AFTER {
        let mut attempt = 0;
        while !cross_pair(
            &nodes[k % 3],
            &nodes[(k + 1) % 3],
            &format!("shard-after-{k}-{attempt}"),
        )
        .await
        {
            attempt += 1;
            assert!(
                killed.elapsed() < PAIRING_BACK,
                "pair {k}: no cross-node pair within {PAIRING_BACK:?} of the shard master's death"
            );
            // A sleep: the pause between two attempts, each a pair of its own.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!(
        "{PAIRS_AFTER} cross-node pairs done {:?} after the shard master was killed",
        killed.elapsed()
    );
    for node in &nodes {
        node.wait_for("dtcp_pending_registrations", 0.0).await;
        // Tracking on again, the promoted replica included.
        node.wait_for("dtcp_store_looks_tracked", 1.0).await;
    }
    let promoted = &cluster.nodes[cluster.master_of(&channel)];
    assert_eq!(promoted.tracking_clients().len(), nodes.len());
}
