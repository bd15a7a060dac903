//! The forwarding port's connections from their accept to tonic (HTTP/2,
//! through the plane's gate) or to their session (a lane, through the
//! places of lanes attaching), told apart by their first byte (under plane
//! TLS, by their ClientHello) outside the gate; and the counts of the
//! connections the port closes.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use dtcp_forward::{
    AuthFailure, ConnectionGate, Cut, LaneStream, Lanes, NotAttached, PlaneIo, PlaneTls, Probation,
    is_lane_start,
};
use metrics::counter;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use crate::admin::{Acceptor, reset};
use crate::descriptors::{LanesAttaching, Place};
use crate::metrics::{AUTH_FAILURES, LISTENER_CONNECTIONS_CLOSED};

/// Connections handshaken and waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// Counts a plane connection the gate closed.
pub(crate) fn plane_cut(cut: Cut) {
    counter!(LISTENER_CONNECTIONS_CLOSED, "listener" => "plane", "reason" => cut.as_str())
        .increment(1);
}

/// Counts refused credentials (a Bridge authenticator, a lane's token).
pub(crate) fn refused(failure: AuthFailure) {
    counter!(AUTH_FAILURES, "reason" => failure.as_str()).increment(1);
}

/// The plane's connections, through its gate (and TLS handshakes, side by
/// side, so that a slow or silent caller holds up nobody). Accept failures
/// never reach tonic, whose loop would retry them at once. The listener
/// closes when the returned stream is dropped.
/// `lanes`: the node's table of lanes offered and the places of lanes
/// attaching, when it offers lanes.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Option<PlaneTls>,
    gate: ConnectionGate,
    lanes: Option<(Lanes, LanesAttaching)>,
    silent_max: usize,
) -> ReceiverStream<Result<PlaneIo, std::io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    let sniffing = Arc::new(Semaphore::new(silent_max));
    tokio::spawn(async move {
        let mut acceptor = Acceptor::new(listener, "plane");
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = acceptor.accept() => accepted,
                () = tx.closed() => return,
            };
            if let (Some(tls), Some((lanes, attaching))) = (&tls, &lanes) {
                // Told apart by its ClientHello (does it offer the lane's
                // protocol?) outside the gate, where no newer HTTP/2
                // connection can evict a lane mid-handshake (only a newer
                // lane can, once every place of the lanes attaching is
                // held), at most as many at once as the gate holds.
                let Ok(permit) = sniffing.clone().try_acquire_owned() else {
                    counter!(LISTENER_CONNECTIONS_CLOSED, "listener" => "plane", "reason" => "max_connections")
                        .increment(1);
                    reset(tcp);
                    continue;
                };
                let (tls, lanes, attaching) = (tls.clone(), lanes.clone(), attaching.clone());
                let (gate, tx) = (gate.clone(), tx.clone());
                tokio::spawn(async move {
                    sniff_tls(tcp, tls, lanes, attaching, gate, tx, permit).await;
                });
                continue;
            }
            if let (None, Some((lanes, attaching))) = (&tls, &lanes) {
                // Until it is told apart, a connection may be a lane: if
                // the process dies now, the claimant's node must see a
                // reset, never a FIN it would pass on to its client. (An
                // HTTP/2 connection gets its graceful close back.)
                dtcp_duplex::reset_on_close(&tcp);
                let (lanes, attaching) = (lanes.clone(), attaching.clone());
                // A lane whose first byte is in already (a dialing node
                // sends it as it connects) goes straight to its token.
                let first = dtcp_duplex::peek_now(&tcp);
                if matches!(first, Poll::Ready(Ok(Some(b))) if is_lane_start(b)) {
                    tokio::spawn(attach(LaneStream::Plain(tcp), lanes, attaching));
                    continue;
                }
                // Else its first byte is awaited outside the gate, where
                // no newer connection can evict a lane: a lane refused here
                // is refused at once, before its node has the token, and
                // its session crosses on the Bridge. At most as many as the
                // gate holds (`--plane-max-connections`).
                let Ok(permit) = sniffing.clone().try_acquire_owned() else {
                    counter!(LISTENER_CONNECTIONS_CLOSED, "listener" => "plane", "reason" => "max_connections")
                        .increment(1);
                    reset(tcp);
                    continue;
                };
                let (gate, tx) = (gate.clone(), tx.clone());
                tokio::spawn(sniff(tcp, lanes, attaching, gate, tx, permit));
                continue;
            }
            let Some(tcp) = enter(&gate, tcp) else {
                continue;
            };
            match &tls {
                None => {
                    if tx.send(Ok(PlaneIo::plain(tcp))).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let (tls, tx) = (tls.clone(), tx.clone());
                    tokio::spawn(async move {
                        match tls.accept(tcp).await {
                            // A lane to a node that does none: none was
                            // offered, and gRPC is not for it.
                            Ok(stream) if stream.agreed_on_lane() => {}
                            Ok(stream) => {
                                let _ = tx.send(Ok(stream)).await;
                            }
                            Err(e) => debug!(%peer, error = %e, "plane TLS handshake failed"),
                        }
                    });
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// How long a new connection on the plane port may stay silent: a peer's
/// HTTP/2 preface and a lane's magic are sent as they connect.
const SILENT_TIMEOUT: Duration = Duration::from_secs(1);

/// A plain connection on the plane port whose first byte had not come when
/// it was accepted: a lane (its token read and checked, then handed to its
/// session) or an HTTP/2 connection (through the plane's gate to tonic).
/// Silent for [`SILENT_TIMEOUT`], it is closed, counted as a probation
/// that ran out. `permit`: its place among the connections being told
/// apart, held until it is.
async fn sniff(
    tcp: tokio::net::TcpStream,
    lanes: Lanes,
    attaching: LanesAttaching,
    gate: ConnectionGate,
    tx: mpsc::Sender<Result<PlaneIo, std::io::Error>>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(SILENT_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        Err(_) => return plane_cut(Cut::Probation),
        // Closed or failed: nothing to serve.
        Ok(_) => return,
    }
    // Told apart: its place goes to the next one. A lane waits for its
    // token (which its node sends once the claim is answered) among the
    // lanes attaching, as one whose first byte was in at its accept does:
    // held here, a burst of pairings filled every place with lanes
    // awaiting their tokens, and the lanes after them were reset (a fifth
    // of a burst of 2,000 sessions crossed on the Bridge).
    drop(permit);
    if is_lane_start(first[0]) {
        return attach(LaneStream::Plain(tcp), lanes, attaching).await;
    }
    let _ = socket2::SockRef::from(&tcp).set_linger(None);
    if let Some(tcp) = enter(&gate, tcp) {
        let _ = tx.send(Ok(PlaneIo::plain(tcp))).await;
    }
}

/// A connection through the plane's gate, or, when every place is a
/// peer's, reset and counted (`max_connections`).
fn enter(
    gate: &ConnectionGate,
    tcp: tokio::net::TcpStream,
) -> Option<Probation<tokio::net::TcpStream>> {
    match gate.enter(tcp) {
        Ok(tcp) => Some(tcp),
        Err(tcp) => {
            counter!(LISTENER_CONNECTIONS_CLOSED, "listener" => "plane", "reason" => "max_connections")
                .increment(1);
            reset(tcp);
            None
        }
    }
}

/// Closes a lane with a reset of the TCP connection under it (its TLS,
/// if any, ended unsaid: a refused lane is told nothing).
fn reset_lane(lane: LaneStream) {
    dtcp_duplex::reset_on_close(dtcp_duplex::OverTcp::tcp(&lane));
    drop(lane);
}

/// A connection on the plane port under plane TLS: a lane if its
/// ClientHello offers the lane's protocol (its handshake made here, then its
/// token read and checked), else HTTP/2 (through the plane's gate, then its
/// handshake, to tonic). A ClientHello not come within [`SILENT_TIMEOUT`]
/// closes it, counted as a probation that ran out. `permit`: its place
/// among the connections being told apart, held until it is (a lane's
/// handshake then counts among the lanes attaching).
async fn sniff_tls(
    tcp: tokio::net::TcpStream,
    tls: PlaneTls,
    lanes: Lanes,
    attaching: LanesAttaching,
    gate: ConnectionGate,
    tx: mpsc::Sender<Result<PlaneIo, std::io::Error>>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let peer = tcp.peer_addr().ok();
    match tokio::time::timeout(SILENT_TIMEOUT, PlaneTls::offers_lane(&tcp)).await {
        Err(_) => return plane_cut(Cut::Probation),
        // Closed or failed: nothing to serve.
        Ok(Err(_)) => return,
        Ok(Ok(true)) => {
            // Told apart: its place among the connections being told apart
            // goes to the next one. A lane's handshake is bounded with the
            // lanes attaching (their token read), not by that place, so that
            // lanes stalled in their handshakes (a burst, or someone who
            // offers the lane's protocol and stalls) cannot keep a peer's
            // HTTP/2 connection from being told apart.
            drop(permit);
            // From here on, as a plain lane: a process that dies resets it.
            dtcp_duplex::reset_on_close(&tcp);
            let Some(mut place) = take_place(&attaching) else {
                reset(tcp);
                return;
            };
            let attach = async {
                match tls.accept_lane(tcp).await {
                    Ok(stream) => {
                        let lane = LaneStream::TlsServer(Box::new(stream));
                        not_attached(lanes.attach(lane).await);
                    }
                    Err(e) => debug!(?peer, error = %e, "lane TLS handshake failed"),
                }
            };
            // Evicted: dropping the handshake or the read resets the lane.
            // A lane whose token has come goes to its session first.
            tokio::select! {
                biased;
                () = attach => {}
                _ = &mut place.evicted => {}
            }
            return;
        }
        Ok(Ok(false)) => drop(permit),
    }
    let Some(tcp) = enter(&gate, tcp) else {
        return;
    };
    match tls.accept(tcp).await {
        Ok(stream) => {
            let _ = tx.send(Ok(stream)).await;
        }
        Err(e) => debug!(?peer, error = %e, "plane TLS handshake failed"),
    }
}

/// A lane: its token read and checked, then handed to its session, in
/// one of the places of lanes attaching (a descriptor each, fitted to the
/// open-file limit beside the connection limit: `descriptors::lanes_attaching_max`).
/// Past them, the oldest lane attaching is reset to make room (a lane so
/// reset before its node has the token leaves its session on the Bridge).
async fn attach(lane: LaneStream, lanes: Lanes, attaching: LanesAttaching) {
    let Some(mut place) = take_place(&attaching) else {
        reset_lane(lane);
        return;
    };
    // Evicted: dropping the read resets the lane (zero linger). A lane
    // whose token has come goes to its session first.
    tokio::select! {
        biased;
        attached = lanes.attach(lane) => not_attached(attached),
        _ = &mut place.evicted => {}
    }
}

/// A place among the lanes attaching, the oldest lane evicted for it when
/// every place is held (counted, `lanes_attaching`); `None` on a node with
/// no places.
fn take_place(attaching: &LanesAttaching) -> Option<Place> {
    let Some((place, evicted)) = attaching.take() else {
        lanes_full();
        return None;
    };
    if evicted {
        lanes_full();
    }
    Some(place)
}

/// Counts a lane reset because every place of lanes attaching was held.
fn lanes_full() {
    counter!(LISTENER_CONNECTIONS_CLOSED, "listener" => "plane", "reason" => "lanes_attaching")
        .increment(1);
}

/// Counts a lane that did not attach (it has been reset): a refused token
/// as an authentication failure, a preamble late as a probation run out;
/// one that closed first is nobody's fault (a lane dialed ahead, unused).
fn not_attached(attached: Result<(), NotAttached>) {
    match attached {
        Ok(()) | Err(NotAttached::Gone) => {}
        Err(NotAttached::Refused(failure)) => {
            debug!(reason = failure.as_str(), "lane refused");
            refused(failure);
        }
        Err(NotAttached::Stalled) => {
            debug!("lane preamble not whole in time");
            plane_cut(Cut::Probation);
        }
    }
}
