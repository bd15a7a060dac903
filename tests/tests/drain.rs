//! SIGTERM: the node drains. New commands get `shutting-down`, pending
//! CREATEs of a lone node too, paired sessions finish, and it exits 0.

use std::time::{Duration, Instant};

use dtcp_client::dtcp_wire::{Condition, Verb};
use dtcp_client::{Initiator, Target};
use dtcp_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_transfer_finish_and_refuses_new_commands() {
    let mut relay = NodeOptions::new().drain_timeout(30.0).start();
    let t = triple("draining");
    let (mut i, mut tg) = pair(relay.addr, relay.addr, &t).await;
    let pending = raw(relay.addr, &command(Verb::Create, &triple("never-claimed"))).await;
    relay.wait_for("dtcp_pending_registrations", 1.0).await;

    // Half the transfer before the signal, half after.
    i.write_all(&[1u8; 1 << 20]).await.unwrap();
    assert_eq!(read_n(&mut tg, 1 << 20).await.len(), 1 << 20);
    relay.signal(libc::SIGTERM);
    let mut pending = pending;
    assert!(
        is_error(&read_all(&mut pending).await, "shutting-down"),
        "pending CREATE of a lone node"
    );
    eventually(
        Duration::from_secs(5),
        "not ready while draining",
        || async { http_get(relay.metrics, "/readyz").await.0 == 503 },
    )
    .await;
    assert_eq!(relay.metric("dtcp_draining").await, 1.0);
    let err = Target::connect(relay.addr, &triple("late"))
        .await
        .unwrap_err();
    assert_eq!(err.condition(), Some(Condition::ShuttingDown), "{err}");
    let err = Initiator::connect(relay.addr, &triple("late"))
        .await
        .unwrap_err();
    assert_eq!(err.condition(), Some(Condition::ShuttingDown), "{err}");

    let (mut ir, mut iw) = i.into_split();
    let (mut tr, mut tw) = tg.into_split();
    let (a, b, got_t, got_i) = tokio::join!(
        send_pattern(&mut iw, 3, 32 << 20),
        send_pattern(&mut tw, 4, 1 << 20),
        recv_digest(&mut tr),
        recv_digest(&mut ir),
    );
    assert_eq!(got_t, (32 << 20, a));
    assert_eq!(got_i, (1 << 20, b));
    drop((ir, iw, tr, tw));
    let status = relay
        .wait_exit(Duration::from_secs(10))
        .expect("exits once sessions are done");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn the_drain_timeout_bounds_the_wait_for_sessions() {
    let mut relay = NodeOptions::new().drain_timeout(1.0).start();
    let t = triple("stuck");
    let (_i, mut tg) = pair(relay.addr, relay.addr, &t).await;
    let started = Instant::now();
    relay.signal(libc::SIGTERM);
    let status = relay
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the drain timeout");
    assert!(status.success(), "{status:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "left before the drain timeout: {waited:?}"
    );
    // Cut by the drain timeout: reset, never a FIN that would pass for the
    // Initiator's end of stream (docs/PROTOCOL.md section 2).
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), tg.read(&mut byte))
        .await
        .expect("the cut session was not closed");
    let err = read.expect_err("the cut session ended with a FIN, not a reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test]
async fn an_idle_node_exits_at_once_on_sigint() {
    let mut relay = NodeOptions::new().drain_timeout(30.0).start();
    let started = Instant::now();
    relay.signal(libc::SIGINT);
    let status = relay.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "nothing to wait for"
    );
}
