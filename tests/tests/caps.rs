//! Bandwidth caps: a capped session slows down to its cap (and is never
//! cut), on the splice path, on the copy path and across two nodes on a
//! lane; a node cap is shared fairly by the sessions under it.

use std::time::{Duration, Instant};

use dtcp_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The session cap the accuracy tests set: 10 MB/s.
const CAP: u64 = 10_000_000;
/// Bytes moved under it: 100 MB, ten seconds at the cap.
const TRANSFER: u64 = 100_000_000;
/// How far the measured rate may be from the cap.
const TOLERANCE: f64 = 0.05;

/// The fairness test runs alone (write), the others side by side (read):
/// it measures how the relay shares a node cap when it has the machine's two
/// cores to do so, not how the other tests' transfers delay its wake-ups.
static ALONE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Sends `size` bytes Initiator to Target (the other way closes at once);
/// returns the rate the Target received them at, in bytes a second.
async fn one_way(i: TcpStream, tg: TcpStream, size: u64, seed: u64) -> f64 {
    let (mut ir, mut iw) = i.into_split();
    let (mut tr, mut tw) = tg.into_split();
    tw.shutdown().await.unwrap();
    let started = Instant::now();
    let (sent, got, back) = tokio::join!(
        send_pattern(&mut iw, seed, size),
        recv_digest(&mut tr),
        recv_digest(&mut ir),
    );
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(got, (size, sent), "every byte, in order");
    assert_eq!(back.0, 0);
    size as f64 / secs
}

async fn capped_session(extra: &[&str], name: &str) {
    let mut options = NodeOptions::new().arg("--max-session-rate", format!("{CAP}/s"));
    for flag in extra {
        options = options.flag(flag);
    }
    let relay = options.start();
    let (i, tg) = pair(relay.addr, relay.addr, &triple(name)).await;
    let rate = one_way(i, tg, TRANSFER, 7).await;
    eprintln!("{name}: {:.3} MB/s under a 10 MB/s cap", rate / 1e6);
    let error = (rate - CAP as f64).abs() / CAP as f64;
    assert!(
        error < TOLERANCE,
        "{name}: {rate} B/s, {:.1} % off",
        error * 100.0
    );
    let page = relay.scrape().await;
    let throttled = sample_value(&page, "dtcp_throttled_seconds_sum");
    assert!(
        throttled > 5.0,
        "the time spent throttled is counted: {throttled} s; {:?}",
        page.lines()
            .filter(|l| l.contains("throttled"))
            .collect::<Vec<_>>()
    );
    relay
        .wait_for("dtcp_sessions_active{path=\"local\"}", 0.0)
        .await;
    relay.wait_for("dtcp_connections_open", 0.0).await;
    assert_eq!(
        relay
            .metric("dtcp_sessions_completed_total{path=\"local\",outcome=\"closed\"}")
            .await,
        1.0,
        "slowed down, not cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cap_holds_on_the_splice_path() {
    let _side_by_side = ALONE.read().await;
    capped_session(&[], "cap-splice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cap_holds_on_the_copy_path() {
    let _side_by_side = ALONE.read().await;
    capped_session(&["--no-splice"], "cap-copy").await;
}

/// Sends `size` bytes each way at once; returns the rate each receiver got
/// them at, Initiator to Target first, in bytes a second.
async fn both_ways(i: TcpStream, tg: TcpStream, size: u64) -> [f64; 2] {
    let (mut ir, mut iw) = i.into_split();
    let (mut tr, mut tw) = tg.into_split();
    let started = Instant::now();
    let timed = |got: (u64, [u8; 32])| (got, size as f64 / started.elapsed().as_secs_f64());
    let (to_t, to_i, (got_t, rate_t), (got_i, rate_i)) = tokio::join!(
        send_pattern(&mut iw, 11, size),
        send_pattern(&mut tw, 12, size),
        async { timed(recv_digest(&mut tr).await) },
        async { timed(recv_digest(&mut ir).await) },
    );
    assert_eq!(
        got_t,
        (size, to_t),
        "initiator -> target: every byte, in order"
    );
    assert_eq!(
        got_i,
        (size, to_i),
        "target -> initiator: every byte, in order"
    );
    [rate_t, rate_i]
}

/// A session cap across two nodes (the CREATE on one, the CONNECT on the
/// other, the bytes between them on a lane), 100 MB each way at once. Each
/// direction is capped by the node that reads it from its client, so this
/// measures both nodes' caps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cap_holds_across_nodes_on_a_lane() {
    let _side_by_side = ALONE.read().await;
    let redis = RedisServer::start();
    let node = || {
        NodeOptions::cluster(&[redis.url()])
            .arg("--max-session-rate", format!("{CAP}/s"))
            .start()
    };
    let (owner, other) = (node(), node());
    let (i, tg) = pair(owner.addr, other.addr, &triple("cap-forwarded")).await;
    let rates = both_ways(i, tg, TRANSFER).await;
    owner.wait_on_lanes(1.0).await;
    for (way, rate) in ["initiator -> target", "target -> initiator"]
        .iter()
        .zip(rates)
    {
        eprintln!(
            "cap-forwarded, {way}: {:.3} MB/s under a 10 MB/s cap",
            rate / 1e6
        );
        let error = (rate - CAP as f64).abs() / CAP as f64;
        assert!(
            error < TOLERANCE,
            "{way}: {rate} B/s, {:.1} % off",
            error * 100.0
        );
    }
    // Each node held back the direction it reads.
    for node in [&owner, &other] {
        let throttled = node.metric("dtcp_throttled_seconds_sum").await;
        assert!(throttled > 5.0, "time spent throttled: {throttled} s");
    }
    owner
        .wait_for("dtcp_sessions_active{path=\"forwarded\"}", 0.0)
        .await;
    owner
        .wait_for("dtcp_bridge_streams_active{role=\"server\"}", 0.0)
        .await;
    other
        .wait_for("dtcp_bridge_streams_active{role=\"client\"}", 0.0)
        .await;
    for node in [&owner, &other] {
        node.wait_for("dtcp_connections_open", 0.0).await;
        node.wait_for("dtcp_pending_registrations", 0.0).await;
    }
    assert_eq!(
        owner
            .metric("dtcp_sessions_completed_total{path=\"forwarded\",outcome=\"closed\"}")
            .await,
        1.0,
        "slowed down, not cut"
    );
}

/// A node cap across two nodes: each node counts what its own client socket
/// moves, both ways, so a session sending both ways at once through two
/// nodes capped at 20 MB/s moves 20 MB/s in all (how the two directions
/// share it is not held to a split: each passes two nodes' buckets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cap_counts_both_ways_of_a_forwarded_session() {
    let _side_by_side = ALONE.read().await;
    let redis = RedisServer::start();
    let node = || {
        NodeOptions::cluster(&[redis.url()])
            .arg("--max-node-rate", format!("{NODE_CAP}/s"))
            .start()
    };
    let (owner, other) = (node(), node());
    let (i, tg) = pair(owner.addr, other.addr, &triple("node-cap-forwarded")).await;
    let rates = both_ways(i, tg, SHARE * 2).await;
    owner.wait_on_lanes(1.0).await;
    // Both ways' bytes over the time until the last of them arrived.
    let total = 2.0 * rates[0].min(rates[1]);
    eprintln!(
        "node cap across two nodes: {:.3} MB/s in all under {:.3} ({:.3} and {:.3} MB/s each way)",
        total / 1e6,
        NODE_CAP as f64 / 1e6,
        rates[0] / 1e6,
        rates[1] / 1e6
    );
    let error = (total - NODE_CAP as f64).abs() / NODE_CAP as f64;
    assert!(error < TOLERANCE, "{total} B/s, {:.1} % off", error * 100.0);
    owner
        .wait_for("dtcp_sessions_active{path=\"forwarded\"}", 0.0)
        .await;
    for node in [&owner, &other] {
        node.wait_for("dtcp_connections_open", 0.0).await;
    }
}

/// The node cap of the fairness test, and the sessions sharing it.
const NODE_CAP: u64 = 20_000_000;
const SESSIONS: u64 = 4;
/// Each session's bytes: about five seconds at a quarter of the cap.
const SHARE: u64 = 25_000_000;
/// How far each session's rate may be from its quarter.
const FAIRNESS: f64 = 0.20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cap_is_shared_fairly() {
    let _alone = ALONE.write().await;
    let relay = NodeOptions::new()
        .arg("--max-node-rate", format!("{NODE_CAP}/s"))
        .start();
    let mut pairs = Vec::new();
    for n in 0..SESSIONS {
        pairs.push(pair(relay.addr, relay.addr, &triple(&format!("fair{n}"))).await);
    }
    let runs: Vec<_> = pairs
        .into_iter()
        .enumerate()
        .map(|(n, (i, tg))| tokio::spawn(one_way(i, tg, SHARE, n as u64 + 1)))
        .collect();
    let quarter = NODE_CAP as f64 / SESSIONS as f64;
    for run in runs {
        let rate = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the sessions finish")
            .unwrap();
        eprintln!("fair share: {:.3} MB/s of {:.3}", rate / 1e6, quarter / 1e6);
        let error = (rate - quarter).abs() / quarter;
        assert!(
            error < FAIRNESS,
            "{rate} B/s, {:.1} % off a quarter",
            error * 100.0
        );
    }
    relay
        .wait_for("dtcp_sessions_active{path=\"local\"}", 0.0)
        .await;
    relay.wait_for("dtcp_connections_open", 0.0).await;
}
