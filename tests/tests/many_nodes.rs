//! Many nodes on one machine: twelve `dtcp-relay` nodes and one Redis. A
//! pair across every ordered pair of nodes (and on each node alone), bytes
//! checked both ways; then one node killed (SIGKILL) with a `CREATE` pending
//! on it for a Target on each of the others, and every one of those Targets
//! told `unavailable` promptly; the survivors pairing across each other
//! after it; and every node's descriptors and memory bounded after the run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dtcp_client::dtcp_wire::{Condition, Verb};
use dtcp_client::{ClientError, Target};
use dtcp_tests::abuse::Footprint;
use dtcp_tests::*;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The cluster's size.
const NODES: usize = 12;
/// The node killed.
const VICTIM: usize = 5;
/// Bytes each way of each pair: enough for several reads and writes on
/// both paths, small enough that 144 pairs take a moment.
const PAIR_BYTES: u64 = 32 * 1024;
/// Pairs in flight at once.
const AT_ONCE: usize = 16;
/// How long a Target of the killed node may wait for its `unavailable`:
/// the lookup, a refused connection to the dead node's plane, the reply
/// (milliseconds on loopback), with room for a machine shared with builds.
const UNAVAILABLE_WITHIN: Duration = Duration::from_secs(3);
/// How long the survivors may take to stop counting the dead node: its
/// heartbeat's TTL (6 s) and a refresh of their view, with room.
const FORGOTTEN_WITHIN: Duration = Duration::from_secs(20);
/// How long the nodes may take to settle after a phase (every session
/// closed, nothing pending).
const SETTLE: Duration = Duration::from_secs(10);
/// Descriptors a node may hold after the run beyond those it held once the
/// cluster had formed (before any pair): a plane connection to each other
/// node and one from each (2 x 11, what a run measures), the splice pipes
/// the pipe pool keeps (4, two descriptors each), and 8 for Redis
/// connections opened again. A descriptor leaked per pair or per session
/// (each node saw 24 sessions) would exceed it.
const FDS_GROWN_MAX: usize = 2 * (NODES - 1) + 2 * 4 + 8;
/// Memory a node may have grown by after the run (measured: 1.5-1.7 MiB
/// on 11-12 MiB). What a node may rightly keep: the buffer pool's 16
/// buffers of 256 KiB (4 MiB), what the allocator keeps of the most the
/// node held at once (16 pairs in flight, two 256 KiB buffers each: 8 MiB)
/// and the HTTP/2 state of its 22 plane connections; twice that, for a
/// busy machine's timing, is 24 MiB.
const RSS_GROWN_MAX_MIB: u64 = 24;

/// Waits until `node` has no pending registration, session or Bridge.
async fn settled(node: &Relay) {
    eventually(SETTLE, "the node to settle", || async {
        let page = node.scrape().await;
        [
            "dtcp_pending_registrations",
            "dtcp_sessions_active{path=\"local\"}",
            "dtcp_sessions_active{path=\"forwarded\"}",
            "dtcp_bridge_streams_active{role=\"client\"}",
            "dtcp_bridge_streams_active{role=\"server\"}",
        ]
        .iter()
        .all(|s| sample_value(&page, s) == 0.0)
    })
    .await;
}

/// A pair with its `CREATE` on `a` and its `CONNECT` on `b`, `PAIR_BYTES`
/// each way, every byte checked.
async fn checked_pair(a: &Relay, b: &Relay, name: &str, seed: u64) {
    let (i, tg) = pair(a.addr, b.addr, &triple(name)).await;
    exchange(i, tg, PAIR_BYTES, seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_nodes_pair_across_each_other_and_survive_a_killed_node() {
    raise_fd_limit();
    let redis = RedisServer::start();
    let mut nodes: Vec<Relay> = (0..NODES)
        .map(|_| NodeOptions::cluster(&[redis.url()]).start())
        .collect();
    for node in &nodes {
        node.wait_for("dtcp_nodes_alive", NODES as f64).await;
    }
    let formed: Vec<Footprint> = nodes.iter().map(Footprint::of).collect();

    // Every ordered pair of nodes, and each node alone: 144 pairs.
    let started = Instant::now();
    let nodes_now = Arc::new(nodes);
    let slots = Arc::new(Semaphore::new(AT_ONCE));
    let mut pairs = Vec::new();
    for a in 0..NODES {
        for b in 0..NODES {
            let permit = slots.clone().acquire_owned().await.unwrap();
            let nodes = nodes_now.clone();
            pairs.push(tokio::spawn(async move {
                let seed = (a * NODES + b) as u64 * 2;
                checked_pair(&nodes[a], &nodes[b], &format!("across-{a}-{b}"), seed).await;
                drop(permit);
            }));
        }
    }
    for p in pairs {
        p.await.expect("a pair across two nodes failed");
    }
    eprintln!(
        "{} pairs across {NODES} nodes in {:?}",
        NODES * NODES,
        started.elapsed()
    );
    nodes = Arc::into_inner(nodes_now).expect("every pair done");
    for node in &nodes {
        settled(node).await;
    }

    // A CREATE on the victim for a Target on each other node, each in the
    // store before the victim dies.
    let others: Vec<usize> = (0..NODES).filter(|&k| k != VICTIM).collect();
    let victim = &nodes[VICTIM];
    let registered = "dtcp_store_operations_total{op=\"register\"}";
    let before = victim.metric(registered).await;
    let mut initiators: Vec<TcpStream> = Vec::new();
    for &k in &others {
        let t = triple(&format!("orphan-of-{k}"));
        initiators.push(raw(victim.addr, &command(Verb::Create, &t)).await);
    }
    eventually(SETTLE, "the victim's CREATEs in the store", || async {
        victim.metric(registered).await >= before + others.len() as f64
    })
    .await;
    victim
        .wait_for("dtcp_pending_registrations", others.len() as f64)
        .await;
    assert_eq!(
        victim
            .metric("dtcp_store_errors_total{op=\"register\"}")
            .await,
        0.0
    );
    nodes[VICTIM].kill();
    let killed = Instant::now();
    let mut targets = Vec::new();
    for &k in &others {
        let (addr, t) = (nodes[k].addr, triple(&format!("orphan-of-{k}")));
        targets.push(tokio::spawn(async move {
            let asked = Instant::now();
            let reply = tokio::time::timeout(UNAVAILABLE_WITHIN, Target::connect(addr, &t)).await;
            (k, reply, asked.elapsed())
        }));
    }
    for t in targets {
        let (k, reply, took) = t.await.unwrap();
        match reply {
            Ok(Err(ClientError::Refused { condition, .. })) => assert_eq!(
                condition,
                Condition::Unavailable,
                "the Target on node {k}, after {took:?}"
            ),
            Ok(other) => panic!("the Target on node {k}: {other:?} after {took:?}"),
            Err(_) => panic!("the Target on node {k}: no answer within {UNAVAILABLE_WITHIN:?}"),
        }
    }
    eprintln!(
        "{} Targets of the killed node told unavailable within {:?} of its death",
        others.len(),
        killed.elapsed()
    );
    drop(initiators);

    // The survivors forget the dead node and go on pairing across each
    // other: each CREATE on one survivor, its CONNECT on the next.
    for &k in &others {
        eventually(FORGOTTEN_WITHIN, "the dead node forgotten", || async {
            nodes[k].metric("dtcp_nodes_alive").await == (NODES - 1) as f64
        })
        .await;
    }
    for (n, &k) in others.iter().enumerate() {
        let next = others[(n + 1) % others.len()];
        checked_pair(
            &nodes[k],
            &nodes[next],
            &format!("after-{k}"),
            1000 + n as u64,
        )
        .await;
    }
    for &k in &others {
        settled(&nodes[k]).await;
    }

    for &k in &others {
        let now = Footprint::of(&nodes[k]);
        eprintln!(
            "node {k}: {} descriptors (formed: {}), RSS {} KiB (formed: {} KiB)",
            now.fds,
            formed[k].fds,
            now.rss >> 10,
            formed[k].rss >> 10
        );
        assert!(
            now.fds <= formed[k].fds + FDS_GROWN_MAX,
            "node {k}: {} descriptors, {} once the cluster formed",
            now.fds,
            formed[k].fds
        );
        assert!(
            now.grown_mib(&formed[k]) <= RSS_GROWN_MAX_MIB,
            "node {k}: RSS {} MiB, {} MiB once the cluster formed",
            now.rss >> 20,
            formed[k].rss >> 20
        );
    }
}
