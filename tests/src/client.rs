//! Talking to a relay as a client: raw command bytes, replies, pairs and
//! checked exchanges.

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use dtcp_client::dtcp_wire::{Command as WireCommand, Triple, Verb};
use dtcp_testkit::Process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pattern::{recv_digest, send_pattern};

/// How long a test reads before it gives up on the relay.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(25);

/// Polls `cond` until it holds, or panics with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(settles(limit, cond).await, "not within {limit:?}: {what}");
}

/// Polls `cond` until it holds, for at most `limit`; whether it did (for a
/// caller that asserts with more to say than [`eventually`]).
pub async fn settles<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits for `process` to exit, at most `limit`, without holding up the
/// test's other tasks: its status, or `None` if it still runs then.
pub async fn exit_of(process: &mut Process, limit: Duration) -> Option<ExitStatus> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(status) = process.try_exit() {
            return Some(status);
        }
        if !process.is_running() || tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A triple unique to `name`.
pub fn triple(name: &str) -> Triple {
    Triple::new(
        format!("key-{name}"),
        format!("initiator@a.example/{name}"),
        "target@b.example/res",
    )
    .expect("valid triple")
}

/// Opens a raw connection and sends `bytes`.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("send");
    s
}

/// The command bytes for `verb` and `triple`.
pub fn command(verb: Verb, triple: &Triple) -> Vec<u8> {
    WireCommand::new(verb, triple.clone()).encode()
}

/// Reads everything until the relay closes (bounded by `READ_TIMEOUT`, 10 s).
pub async fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(READ_TIMEOUT, s.read_to_end(&mut out))
        .await
        .expect("relay did not close")
        .expect("read");
    out
}

/// Reads exactly `n` bytes (bounded by `READ_TIMEOUT`, 10 s).
pub async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    tokio::time::timeout(READ_TIMEOUT, s.read_exact(&mut out))
        .await
        .expect("timed out reading")
        .expect("read");
    out
}

/// The `ERROR` reply with this condition, whatever its text.
pub fn is_error(reply: &[u8], condition: &str) -> bool {
    let prefix = format!("ERROR\0{condition}\0");
    reply.starts_with(prefix.as_bytes()) && reply.ends_with(b"\0")
}

/// Pairs `t` with its CREATE sent to `a` and its CONNECT to `b`; panics
/// with both results if either side fails.
pub async fn pair(a: SocketAddr, b: SocketAddr, t: &Triple) -> (TcpStream, TcpStream) {
    let i = tokio::spawn({
        let t = t.clone();
        async move { dtcp_client::Initiator::connect(a, &t).await }
    });
    let tg = dtcp_client::Target::connect(b, t).await;
    match (i.await.unwrap(), tg) {
        (Ok(i), Ok(tg)) => (i, tg),
        (i, tg) => panic!("pairing failed: initiator {i:?}, target {tg:?}"),
    }
}

/// Sends `size` bytes each way at once, every byte checked, to the end of both streams.
pub async fn exchange(i: TcpStream, tg: TcpStream, size: u64, seed: u64) {
    let (mut ir, mut iw) = i.into_split();
    let (mut tr, mut tw) = tg.into_split();
    let (a, b, got_t, got_i) = tokio::join!(
        send_pattern(&mut iw, seed, size),
        send_pattern(&mut tw, seed + 1, size),
        recv_digest(&mut tr),
        recv_digest(&mut ir),
    );
    assert_eq!(got_t, (size, a), "initiator -> target");
    assert_eq!(got_i, (size, b), "target -> initiator");
}
