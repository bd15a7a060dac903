//! A cut is never a clean end (docs/PROTOCOL.md section 2): when the relay ends a
//! session its peers did not end (drain timeout, idle timeout, the other
//! node gone), every surviving peer sees a reset, never a FIN it could
//! mistake for the end of its peer's stream. Each peer here only reads once
//! the cut is on its way, as a receiver that trusts FIN would.

use std::time::Duration;

use dtcp_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a peer may wait for its connection to end.
const END_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes each side sends before the cut.
const BEFORE: usize = 64 * 1024;

/// How a client's connection ended, and how many bytes it read first.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// A FIN: read returned 0.
    Eof(u64),
    /// A reset: read failed with ECONNRESET.
    Reset(u64),
}

/// Reads until the connection ends.
async fn ending(s: &mut TcpStream) -> Ending {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Ending::Eof(total),
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Ending::Reset(total);
                }
                Err(e) => panic!("read failed with {e}, not a reset"),
            }
        }
    };
    tokio::time::timeout(END_TIMEOUT, read)
        .await
        .expect("the connection did not end")
}

/// Both peers read everything in flight, then see a reset.
async fn both_reset(i: &mut TcpStream, tg: &mut TcpStream) {
    let (ei, et) = tokio::join!(ending(i), ending(tg));
    assert!(matches!(ei, Ending::Reset(_)), "initiator: {ei:?}");
    assert!(matches!(et, Ending::Reset(_)), "target: {et:?}");
}

/// Pairs on `a` (CREATE) and `b` (CONNECT), and moves [`BEFORE`] bytes each
/// way, read to the last byte, so that the session is busy and paired.
async fn busy_pair(a: &Relay, b: &Relay, name: &str) -> (TcpStream, TcpStream) {
    let (mut i, mut tg) = pair(a.addr, b.addr, &triple(name)).await;
    let data = vec![7u8; BEFORE];
    i.write_all(&data).await.unwrap();
    tg.write_all(&data).await.unwrap();
    assert_eq!(read_n(&mut tg, BEFORE).await, data);
    assert_eq!(read_n(&mut i, BEFORE).await, data);
    (i, tg)
}

/// The "session finished" log lines of a node.
fn session_lines(relay: &Relay) -> Vec<serde_json::Value> {
    relay
        .logs()
        .into_iter()
        .filter(|l| l["message"] == "session finished")
        .collect()
}

/// Waits for a node's log line of a finished session.
async fn session_line(relay: &Relay) -> serde_json::Value {
    eventually(Duration::from_secs(10), "a session line", || async {
        !session_lines(relay).is_empty()
    })
    .await;
    session_lines(relay).remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_timeout_resets_a_local_session() {
    let mut relay = NodeOptions::new().drain_timeout(0.5).start();
    let (mut i, mut tg) = busy_pair(&relay, &relay, "cut-drain-local").await;
    relay.signal(libc::SIGTERM);
    both_reset(&mut i, &mut tg).await;
    assert!(relay.wait_exit(Duration::from_secs(10)).is_some());
    let line = session_line(&relay).await;
    assert_eq!(line["outcome"], "drained");
    assert_eq!(line["bytes_initiator_to_target"], BEFORE as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_timeout_resets_a_local_session() {
    let relay = NodeOptions::new().idle_timeout(0.5).start();
    let (mut i, mut tg) = busy_pair(&relay, &relay, "cut-idle-local").await;
    both_reset(&mut i, &mut tg).await;
    relay
        .wait_for(
            "dtcp_sessions_completed_total{path=\"local\",outcome=\"idle_timeout\"}",
            1.0,
        )
        .await;
}

/// Which node of a forwarded session drains.
#[derive(Debug, Clone, Copy)]
enum Drains {
    Owner,
    TargetSide,
}

async fn forwarded_drain(drains: Drains) {
    let redis = RedisServer::start();
    let mut a = NodeOptions::cluster(&[redis.url()])
        .drain_timeout(0.5)
        .start();
    let mut b = NodeOptions::cluster(&[redis.url()])
        .drain_timeout(0.5)
        .start();
    let name = format!("cut-drain-{drains:?}");
    let (mut i, mut tg) = busy_pair(&a, &b, &name).await;
    let draining = match drains {
        Drains::Owner => &mut a,
        Drains::TargetSide => &mut b,
    };
    draining.signal(libc::SIGTERM);
    both_reset(&mut i, &mut tg).await;
    assert!(draining.wait_exit(Duration::from_secs(10)).is_some());
    // Both nodes log the session, with the true byte counts, under the same
    // registration id: the draining node names the cut; the other saw its
    // lane reset (no reason crosses once the lane has attached and the
    // Bridge has closed: docs/PROTOCOL.md section 7.5).
    let (draining, other) = match drains {
        Drains::Owner => (&a, &b),
        Drains::TargetSide => (&b, &a),
    };
    let cut = session_line(draining).await;
    let seen = session_line(other).await;
    assert_eq!(cut["outcome"], "drained", "{cut}");
    assert_eq!(seen["outcome"], "reset", "{seen}");
    assert_eq!(cut["registration"], seen["registration"], "{cut} {seen}");
    for (line, side) in [(&cut, draining), (&seen, other)] {
        let side = if std::ptr::eq(side, &a) {
            "owner"
        } else {
            "target"
        };
        assert_eq!(line["side"], side, "{line}");
        assert_eq!(line["via"], "lane", "{line}");
        assert_eq!(line["bytes_initiator_to_target"], BEFORE as u64, "{line}");
        assert_eq!(line["bytes_target_to_initiator"], BEFORE as u64, "{line}");
    }
    // The session is counted once, by the owner, as it saw the end.
    let counted = match drains {
        Drains::Owner => None,
        Drains::TargetSide => Some("reset"),
    };
    if let Some(outcome) = counted {
        other
            .wait_for(
                &format!(
                    "dtcp_sessions_completed_total{{path=\"forwarded\",outcome=\"{outcome}\"}}"
                ),
                1.0,
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_timeout_on_the_owner_resets_both_peers_of_a_forwarded_session() {
    forwarded_drain(Drains::Owner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_timeout_on_the_target_side_resets_both_peers_of_a_forwarded_session() {
    forwarded_drain(Drains::TargetSide).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_timeout_resets_both_peers_of_a_forwarded_session() {
    let redis = RedisServer::start();
    let a = NodeOptions::cluster(&[redis.url()])
        .idle_timeout(0.5)
        .start();
    let b = NodeOptions::cluster(&[redis.url()]).start();
    let (mut i, mut tg) = busy_pair(&a, &b, "cut-idle-forwarded").await;
    both_reset(&mut i, &mut tg).await;
    // The owner, which times the silence, names the cut; the Target's node
    // saw its lane reset, under the same registration id.
    let cut = session_line(&a).await;
    let seen = session_line(&b).await;
    assert_eq!(cut["side"], "owner", "{cut}");
    assert_eq!(cut["outcome"], "idle_timeout", "{cut}");
    assert_eq!(seen["side"], "target", "{seen}");
    assert_eq!(seen["outcome"], "reset", "{seen}");
    assert_eq!(cut["registration"], seen["registration"], "{cut} {seen}");
    for line in [&cut, &seen] {
        assert_eq!(line["via"], "lane", "{line}");
    }
}

/// Which node of a forwarded session is killed.
#[derive(Debug, Clone, Copy)]
enum Killed {
    Owner,
    TargetSide,
}

/// A node killed mid-transfer: the peer on the surviving node, which only
/// reads, sees a reset after some of the bytes, never a FIN.
async fn killed_mid_transfer(killed: Killed) {
    let redis = RedisServer::start();
    let a = NodeOptions::cluster(&[redis.url()]).start();
    let b = NodeOptions::cluster(&[redis.url()]).start();
    let name = format!("cut-kill-{killed:?}");
    let (i, tg) = busy_pair(&a, &b, &name).await;
    // On a lane, so that the reset below is a lane's: the owner counted it
    // there, and the surviving node holds it.
    a.wait_on_lanes(1.0).await;
    let (survivor, role) = match killed {
        Killed::Owner => (&b, "client"),
        Killed::TargetSide => (&a, "server"),
    };
    survivor
        .wait_for(&format!("dtcp_lanes_active{{role=\"{role}\"}}"), 1.0)
        .await;
    let (victim, survivor, mut survivor_peer, mut dead_peer, direction) = match killed {
        Killed::Owner => (a, b, tg, i, "initiator_to_target"),
        Killed::TargetSide => (b, a, i, tg, "target_to_initiator"),
    };
    // The peer on the doomed node keeps writing; its relay dies under it.
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; 64 * 1024];
        while dead_peer.write_all(&chunk).await.is_ok() {}
    });
    // Mid-transfer: the surviving node has relayed some of those bytes.
    let relayed =
        format!("dtcp_relayed_bytes_total{{path=\"forwarded\",direction=\"{direction}\"}}");
    let survivor = &survivor;
    let relayed = relayed.as_str();
    eventually(
        Duration::from_secs(10),
        "bytes on their way",
        || async move { survivor.metric(relayed).await > BEFORE as f64 },
    )
    .await;
    drop(victim); // SIGKILL
    let end = ending(&mut survivor_peer).await;
    assert!(matches!(end, Ending::Reset(n) if n > 0), "{end:?}");
    writer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_resets_the_target_mid_transfer() {
    killed_mid_transfer(Killed::Owner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_target_side_node_resets_the_initiator_mid_transfer() {
    killed_mid_transfer(Killed::TargetSide).await;
}

/// A node killed mid-session: its own clients, which only read, see a
/// reset, not the FIN the kernel would send for a socket it closes with
/// nothing unread (found by the chaos run, `tests/tests/chaos.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_resets_its_own_clients() {
    let redis = RedisServer::start();
    let a = NodeOptions::cluster(&[redis.url()]).start();
    let b = NodeOptions::cluster(&[redis.url()]).start();
    // A local session on `a`, and a forwarded one with its Target on `a`.
    let (mut li, mut lt) = busy_pair(&a, &a, "cut-kill-own-local").await;
    let (_fi, mut ft) = busy_pair(&b, &a, "cut-kill-own-forwarded").await;
    drop(a); // SIGKILL, with nothing unread in its sockets
    both_reset(&mut li, &mut lt).await;
    let end = ending(&mut ft).await;
    assert!(matches!(end, Ending::Reset(_)), "forwarded target: {end:?}");
}
