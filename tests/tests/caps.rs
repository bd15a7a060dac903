//! Bandwidth caps: a capped session slows down to its cap (and is never
//! cut), on the splice path and on the copy path; a node cap is shared
//! fairly by the sessions under it.

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
    capped_session(&[], "cap-splice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cap_holds_on_the_copy_path() {
    capped_session(&["--no-splice"], "cap-copy").await;
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
