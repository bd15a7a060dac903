//! A Redis writer plants values far larger than a relay writes: the store
//! refuses them without reading them whole, and never quotes them whole.

mod common;

use std::time::Duration;

use common::{Server, node, reg, store};
use dtcp_store::{RedisConfig, Rendezvous};

/// A planted record's size: a thousand times the longest a relay writes.
const PLANTED_BYTES: &str = "4194304";
/// Members planted in the `nodes` set.
const PLANTED_NODES: &str = "5000";
/// The most members one look reads (the store's `MAX_NODES`).
const MAX_NODES: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_records_and_nodes_are_read_bounded() {
    let redis = Server::start(&[]);
    let config = RedisConfig {
        urls: vec![redis.url()],
        prefix: "bounded:".into(),
        ..RedisConfig::default()
    };
    let s = store(&config);

    // A 4 MB record with a newline: refused by its length, not quoted.
    let id = reg(1);
    let key = format!("bounded:reg:{id}");
    redis.cli(&[
        "EVAL",
        "redis.call('SET', KEYS[1], ARGV[1] .. string.rep('x', tonumber(ARGV[2]))) return 1",
        "1",
        &key,
        "planted\nline ",
        PLANTED_BYTES,
    ]);
    let e = s.lookup(&id).await.unwrap_err().to_string();
    assert!(e.len() < 200 && !e.contains('\n'), "{e}");
    // The planted text, then 4 MB of `x`.
    let length = (PLANTED_BYTES.parse::<usize>().unwrap() + "planted\nline ".len()).to_string();
    assert!(e.contains(&length), "the error names the length: {e}");
    // A CREATE of the same registration is refused, not taken over.
    assert!(
        s.register(&id, &node("n1"), Duration::from_secs(30))
            .await
            .is_err()
    );
    // A rewrite compares without reading it whole: not ours.
    let rewritten = s
        .register_many(&node("n1"), &[(id, Duration::from_secs(30), None)])
        .await
        .unwrap();
    assert_eq!(rewritten, [false]);

    // The `nodes` set: a node's own beat is found among thousands of
    // planted members scored after it, one look reads at most MAX_NODES,
    // and an oversize member is left out.
    let me = node("n1");
    s.heartbeat(&me, Duration::from_secs(30)).await.unwrap();
    redis.cli(&[
        "EVAL",
        "for i = 1, tonumber(ARGV[1]) do redis.call('ZADD', KEYS[1], '99999999999999', 'planted-' .. i .. ' 10.9.9.9:1') end \
         redis.call('ZADD', KEYS[1], '99999999999998', 'huge ' .. string.rep('z', 100000)) return 1",
        "1",
        "bounded:nodes",
        PLANTED_NODES,
    ]);
    let live = s.live_nodes().await.unwrap();
    assert!(live.len() <= MAX_NODES, "{} members read", live.len());
    assert!(live.iter().any(|n| n.id == me.id), "the real node is read");
    assert!(
        live.iter().all(|n| n.forward_addr.len() < 100),
        "the oversize member is left out"
    );
}
