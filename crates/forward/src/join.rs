//! Pumps bytes between a TCP socket and a Bridge stream, both ways: the
//! Bridge's framing around what `dtcp-duplex` gives every pump (its buffer
//! pool, the rate-cap gates, half-close and reset).

use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dtcp_duplex::{BUF_SIZE, Buf, Gate, Gates, pass_fin, reset_on_close, write_all};
use metrics::Counter;
use tokio::net::TcpStream;

use dtcp_wire::Condition;

use crate::codec::{Inbound, Outbound};
use crate::proto::Frame;
use crate::proto::frame::Kind;
use crate::{FRAME_SIZE, RESET};

// A data frame is read into one buffer of the pool.
const _: () = assert!(FRAME_SIZE <= BUF_SIZE);

/// Asks `gate` for up to `want` bytes (all of them without one).
async fn grant(gate: &mut Option<Box<dyn Gate>>, want: usize) -> usize {
    match gate {
        Some(g) => poll_fn(|cx| g.poll_grant(want, cx)).await,
        None => want,
    }
}

/// Tells `gate` how many of the granted bytes were moved.
fn used(gate: &mut Option<Box<dyn Gate>>, n: usize) {
    if let Some(g) = gate {
        g.used(n);
    }
}

/// How a joined session ended. Every end but [`End::Closed`] closes the
/// socket with a reset: a FIN toward a client only ever passes on its peer's
/// FIN (docs/PROTOCOL.md section 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Both directions ended with a half-close.
    Closed,
    /// The TCP side reset or failed.
    Reset,
    /// The peer node cut the session, for this docs/PROTOCOL.md condition (its
    /// drain timeout, its idle timeout, ...).
    CutByPeer(String),
    /// The Bridge broke, or the peer node answered nonsense.
    Broken(String),
    /// Cut here: no byte moved either way for the idle timeout.
    IdleTimeout,
    /// Cut here: the `stop` future given to [`join`] completed.
    Stopped,
}

/// What [`join`] moved.
#[derive(Debug, Clone)]
pub struct Report {
    /// How it ended.
    pub end: End,
    /// Bytes from the socket to the Bridge.
    pub sent: u64,
    /// Bytes from the Bridge to the socket.
    pub received: u64,
}

enum Failure {
    Tcp,
    Peer(String),
    Bridge(String),
}

/// How long the dialing side waits, after both directions are done, for the
/// owner to end the call.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the dialing side waits, after it cut a session, for the owner to
/// end the call (having read why).
const CUT_FLUSH_TIMEOUT: Duration = Duration::from_millis(500);

/// Moves bytes between `stream` and a Bridge until both directions have
/// half-closed, one side fails, no byte moves for `idle`, or `stop`
/// completes. `early` (what the client sent before pairing) goes first.
/// `gates` limit how fast each direction moves: `read` socket to Bridge,
/// `write` Bridge to socket (the early bytes are not held back: they were
/// read before pairing).
///
/// Any end but both half-closes closes the socket with a reset. When the cut
/// is this node's (idle, stop), the peer node is told why in an `error`
/// frame, so that it resets its client too and can say which cut it was.
#[expect(
    clippy::too_many_arguments,
    reason = "one call per side of a session, each argument a different thing"
)]
pub async fn join(
    stream: &TcpStream,
    early: Bytes,
    outbound: Outbound,
    mut inbound: Inbound,
    sent_counter: Counter,
    received_counter: Counter,
    gates: Gates,
    idle: Option<Duration>,
    stop: impl Future<Output = ()>,
) -> Report {
    let sent = AtomicU64::new(0);
    let received = AtomicU64::new(0);
    let dialing = outbound.is_dialing();
    // A second handle on the outbound half, only to tell the peer node of a
    // cut; dropped when this returns, so that the stream can end.
    let notifier = outbound.clone();
    let Gates { read, write } = gates;
    let both = async {
        tokio::try_join!(
            tcp_to_bridge(stream, early, outbound, read, &sent_counter, &sent),
            bridge_to_tcp(&mut inbound, stream, write, &received_counter, &received),
        )
    };
    let result = tokio::select! {
        r = both => Ok(r),
        () = idle_watch(idle, &sent, &received) => Err(End::IdleTimeout),
        () = stop => Err(End::Stopped),
    };
    // The pumps are dropped by now, and with them the outbound half.
    let result = match result {
        Ok(r) => r,
        Err(end) => {
            let (condition, text) = match end {
                End::IdleTimeout => (Condition::Timeout, "no byte moved for the idle timeout"),
                _ => (Condition::ShuttingDown, "the relay is shutting down"),
            };
            notifier.try_send(Frame::error(condition, text));
            // The outbound half ends cleanly behind the error frame.
            drop(notifier);
            reset_on_close(stream);
            if dialing {
                // Dropping the call now would reset its HTTP/2 stream, which
                // can overtake the error frame: the owner would see a broken
                // Bridge, not this cut. It ends the call once it has read it.
                let rest = async { while let Ok(Some(_)) = inbound.next().await {} };
                let _ = tokio::time::timeout(CUT_FLUSH_TIMEOUT, rest).await;
            }
            return Report {
                end,
                sent: sent.into_inner(),
                received: received.into_inner(),
            };
        }
    };
    drop(notifier);
    let end = match result {
        Ok(_) => {
            if dialing {
                // Dropping the response stream now would reset the HTTP/2
                // stream, and could throw away our last frames before they
                // are sent. The owner ends the call once it has them all.
                let rest = async { while let Ok(Some(_)) = inbound.next().await {} };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, rest).await;
            }
            End::Closed
        }
        Err(failure) => {
            reset_on_close(stream);
            match failure {
                Failure::Tcp => End::Reset,
                Failure::Peer(condition) => End::CutByPeer(condition),
                Failure::Bridge(why) => End::Broken(why),
            }
        }
    };
    Report {
        end,
        sent: sent.into_inner(),
        received: received.into_inner(),
    }
}

/// Completes once no byte has moved either way for `idle` (never without one).
async fn idle_watch(idle: Option<Duration>, sent: &AtomicU64, received: &AtomicU64) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    let moved = || sent.load(Ordering::Relaxed) + received.load(Ordering::Relaxed);
    let tick = (idle / 4).max(Duration::from_millis(10));
    let (mut last, mut since) = (moved(), tokio::time::Instant::now());
    loop {
        tokio::time::sleep(tick).await;
        let now = moved();
        if now != last {
            (last, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= idle {
            return;
        }
    }
}

/// Socket to Bridge. Owns the outbound half: when it returns, that half of
/// the call ends (after the `fin`, or abruptly on failure).
async fn tcp_to_bridge(
    stream: &TcpStream,
    early: Bytes,
    outbound: Outbound,
    mut gate: Option<Box<dyn Gate>>,
    counter: &Counter,
    sent: &AtomicU64,
) -> Result<(), Failure> {
    let bridge = |e: io::Error| Failure::Bridge(e.to_string());
    if !early.is_empty() {
        let n = early.len() as u64;
        outbound.send(Frame::data(early)).await.map_err(bridge)?;
        counter.increment(n);
        sent.fetch_add(n, Ordering::Relaxed);
    }
    loop {
        stream.readable().await.map_err(|_| Failure::Tcp)?;
        // Asked once per read, once there is something to read (an idle
        // session takes nothing): a capped direction stops reading here.
        let max = grant(&mut gate, FRAME_SIZE).await;
        // Taken only when the socket is readable: an idle session holds
        // none. Handed to HTTP/2 as the frame's bytes, it comes back to the
        // pool when h2 has sent and dropped them.
        let mut buf = Buf::take();
        let read = stream.try_read(&mut buf[..max]);
        used(&mut gate, *read.as_ref().unwrap_or(&0));
        match read {
            Ok(0) => {
                drop(buf);
                outbound.send(Frame::fin()).await.map_err(bridge)?;
                return Ok(());
            }
            Ok(n) => {
                outbound
                    .send(Frame::data(buf.freeze(n)))
                    .await
                    .map_err(bridge)?;
                counter.increment(n as u64);
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                outbound.try_send(Frame::reset("the client's connection failed"));
                return Err(Failure::Tcp);
            }
        }
    }
}

async fn bridge_to_tcp(
    inbound: &mut Inbound,
    stream: &TcpStream,
    mut gate: Option<Box<dyn Gate>>,
    counter: &Counter,
    received: &AtomicU64,
) -> Result<(), Failure> {
    loop {
        let kind = match inbound.next().await {
            Ok(Some(kind)) => kind,
            Ok(None) => {
                return Err(Failure::Bridge(
                    "the bridge ended without a half-close".into(),
                ));
            }
            Err(status) => {
                return Err(Failure::Bridge(format!(
                    "bridge failed: {}",
                    status.message()
                )));
            }
        };
        match kind {
            Kind::Data(bytes) => {
                // In as many writes as the gate grants (one without a gate);
                // while it holds them back, no frame is read, and the
                // Bridge's flow control slows the sending node down.
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let n = grant(&mut gate, rest.len()).await;
                    write_all(stream, &rest[..n])
                        .await
                        .map_err(|_| Failure::Tcp)?;
                    used(&mut gate, n);
                    rest = &rest[n..];
                    counter.increment(n as u64);
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Kind::Fin(_) => {
                pass_fin(stream).map_err(|_| Failure::Tcp)?;
                return Ok(());
            }
            // The peer's client reset: a reset here too.
            Kind::Error(e) if e.condition == RESET => return Err(Failure::Tcp),
            Kind::Error(e) => return Err(Failure::Peer(e.condition)),
            _ => return Err(Failure::Bridge("unexpected frame on the bridge".into())),
        }
    }
}
