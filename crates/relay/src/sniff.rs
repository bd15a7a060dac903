//! The forwarding port's connections from their accept to tonic (HTTP/2,
//! through the plane's gate) or to their session (a lane, through the
//! places of lanes attaching), told apart by their first byte (under plane
//! TLS, by their ClientHello) outside the gate; and the counts of the
//! connections the port closes.
//!
//! A connection whose first byte (or ClientHello) has not come at its
//! accept waits for it ([`SILENT_TIMEOUT`] at most) in one of two places:
//! from a live peer node's address ([`PeerAddresses`]), in a place of the
//! lanes attaching, where a burst of pairings has room for its lanes and
//! which no newer connection takes; from any other address (or a peer's
//! when every such place is a peer's), among `--plane-max-connections`
//! places, past which it is reset at once, so that a crowd of silent
//! connections costs the node no more than that.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use dtcp_forward::{
    AuthFailure, ConnectionGate, Cut, LaneStream, Lanes, NotAttached, PlaneIo, PlaneTls, Probation,
    is_lane_start,
};
use metrics::counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use crate::admin::{Acceptor, reset};
use crate::descriptors::{LanesAttaching, Place};
use crate::metrics::{AUTH_FAILURES, LISTENER_CONNECTIONS_CLOSED};
use crate::peers::PeerAddresses;

/// Connections handshaken and waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;
/// How long a new connection on the plane port may stay silent: a peer's
/// HTTP/2 preface and a lane's magic are sent as they connect.
const SILENT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the plane port needs to take lanes, on a node that offers them:
/// its table of lanes offered, the places of lanes attaching, and the
/// addresses of its live peers.
#[derive(Debug, Clone)]
pub(crate) struct LanePort {
    pub(crate) lanes: Lanes,
    pub(crate) attaching: LanesAttaching,
    pub(crate) peers: PeerAddresses,
}

/// Where the plane sends what it accepted: to tonic.
type Accepted = mpsc::Sender<Result<PlaneIo, std::io::Error>>;

/// Counts a plane connection the gate closed.
pub(crate) fn plane_cut(cut: Cut) {
    counter!(LISTENER_CONNECTIONS_CLOSED, "listener" => "plane", "reason" => cut.as_str())
        .increment(1);
}

/// Counts refused credentials (a Bridge authenticator, a lane's token).
pub(crate) fn refused(failure: AuthFailure) {
    counter!(AUTH_FAILURES, "reason" => failure.as_str()).increment(1);
}

/// Counts a connection reset at once: every place where it could wait for
/// its first byte was held (`max_connections`).
fn no_room() {
    counter!(LISTENER_CONNECTIONS_CLOSED, "listener" => "plane", "reason" => "max_connections")
        .increment(1);
}

/// The plane's connections, through its gate (and TLS handshakes, side by
/// side, so that a slow or silent caller holds up nobody). Accept failures
/// never reach tonic, whose loop would retry them at once. The listener
/// closes when the returned stream is dropped. `lanes`: when the node
/// offers lanes; `silent_max`: the places of connections from other
/// addresses than a peer's awaiting their first byte.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Option<PlaneTls>,
    gate: ConnectionGate,
    lanes: Option<LanePort>,
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
            let from_peer = lanes.as_ref().is_some_and(|l| l.peers.contains(peer.ip()));
            if let (Some(tls), Some(port)) = (&tls, &lanes) {
                // Told apart by its ClientHello (does it offer the lane's
                // protocol?) outside the gate, where no newer HTTP/2
                // connection can evict a lane mid-handshake (a newer lane
                // can, once every place of the lanes attaching is held);
                // where it waits for its ClientHello: [`Waiting`].
                let Some(waiting) = Waiting::take(from_peer, port, &sniffing) else {
                    reset(tcp);
                    continue;
                };
                let (tls, port, gate, tx) = (tls.clone(), port.clone(), gate.clone(), tx.clone());
                tokio::spawn(sniff_tls(tcp, tls, port, gate, tx, waiting));
                continue;
            }
            if let (None, Some(port)) = (&tls, &lanes) {
                // Until it is told apart, a connection may be a lane: if
                // the process dies now, the claimant's node must see a
                // reset, never a FIN it would pass on to its client. (An
                // HTTP/2 connection gets its graceful close back.)
                dtcp_duplex::reset_on_close(&tcp);
                // A lane whose first byte is in already (a dialing node
                // sends it as it connects) goes straight to its token.
                let first = dtcp_duplex::peek_now(&tcp);
                if matches!(first, Poll::Ready(Ok(Some(b))) if is_lane_start(b)) {
                    let lane = LaneStream::Plain(tcp);
                    tokio::spawn(attach(lane, port.clone(), from_peer));
                    continue;
                }
                // Else its first byte is awaited outside the gate, where
                // no newer HTTP/2 connection can evict a lane: [`Waiting`].
                let Some(waiting) = Waiting::take(from_peer, port, &sniffing) else {
                    reset(tcp);
                    continue;
                };
                let (port, gate, tx) = (port.clone(), gate.clone(), tx.clone());
                tokio::spawn(sniff(tcp, port, gate, tx, waiting));
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

/// Where a connection not yet told apart waits for its first byte (or its
/// ClientHello), given back once it is told apart.
#[derive(Debug)]
enum Waiting {
    /// One of the `--plane-max-connections` places of anyone's connections:
    /// past them a new one is reset at once, before it is read, so that a
    /// crowd of silent connections holds no more (and a lane so refused
    /// leaves its session on the Bridge at once, not a second later). And
    /// whether it came from a live peer's address (every place of the
    /// lanes attaching was a peer's).
    Anyone(OwnedSemaphorePermit, bool),
    /// From a live peer's address: a place of the lanes attaching (fitted
    /// to the open-file limit), which a burst of pairings needs for lanes
    /// whose first bytes come a moment after their accept, and which no
    /// newer connection takes.
    Peer(Place),
}

impl Waiting {
    /// A place for a connection from a live peer's address (`from_peer`)
    /// or anyone's (`None`: it is to be reset, counted).
    fn take(from_peer: bool, port: &LanePort, anyone: &Arc<Semaphore>) -> Option<Waiting> {
        // Every place a peer's: it waits among anyone's, as any other.
        if from_peer && let Some((place, evicted)) = port.attaching.take(true) {
            if evicted {
                lanes_full();
            }
            return Some(Waiting::Peer(place));
        }
        let Ok(permit) = anyone.clone().try_acquire_owned() else {
            no_room();
            return None;
        };
        Some(Waiting::Anyone(permit, from_peer))
    }

    /// Completes when a newer connection took its place (never, for one
    /// among anyone's).
    async fn evicted(&mut self) {
        match self {
            Waiting::Anyone(..) => std::future::pending().await,
            Waiting::Peer(place) => {
                let _ = (&mut place.evicted).await;
            }
        }
    }

    /// Told to be a lane: its place among the lanes attaching, where it
    /// then waits for its token (the one it waited in, or a new one; held
    /// among anyone's places, a burst of lanes awaiting their tokens filled
    /// them all). `None` on a node with no places.
    fn into_lane(self, attaching: &LanesAttaching) -> Option<Place> {
        match self {
            Waiting::Peer(place) => Some(place),
            Waiting::Anyone(permit, from_peer) => {
                drop(permit);
                take_place(attaching, from_peer)
            }
        }
    }
}

/// A plain connection on the plane port whose first byte had not come when
/// it was accepted: a lane (its token read and checked, then handed to its
/// session) or an HTTP/2 connection (through the plane's gate to tonic).
/// Silent for [`SILENT_TIMEOUT`], it is closed, counted as a probation
/// that ran out; reset when a newer connection took its place.
async fn sniff(
    tcp: TcpStream,
    port: LanePort,
    gate: ConnectionGate,
    tx: Accepted,
    mut waiting: Waiting,
) {
    let mut first = [0u8; 1];
    // Evicted: dropping the socket resets it (zero linger).
    let peeked = tokio::select! {
        peeked = tokio::time::timeout(SILENT_TIMEOUT, tcp.peek(&mut first)) => peeked,
        () = waiting.evicted() => return,
    };
    match peeked {
        Ok(Ok(1)) => {}
        Err(_) => return plane_cut(Cut::Probation),
        // Closed or failed: nothing to serve.
        Ok(_) => return,
    }
    if is_lane_start(first[0]) {
        let lane = LaneStream::Plain(tcp);
        return match waiting.into_lane(&port.attaching) {
            Some(place) => attach_in(lane, port.lanes, place).await,
            None => reset_lane(lane),
        };
    }
    drop(waiting);
    let _ = socket2::SockRef::from(&tcp).set_linger(None);
    if let Some(tcp) = enter(&gate, tcp) {
        let _ = tx.send(Ok(PlaneIo::plain(tcp))).await;
    }
}

/// A connection through the plane's gate, or, when every place is a
/// peer's, reset and counted (`max_connections`).
fn enter(gate: &ConnectionGate, tcp: TcpStream) -> Option<Probation<TcpStream>> {
    match gate.enter(tcp) {
        Ok(tcp) => Some(tcp),
        Err(tcp) => {
            no_room();
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
/// closes it, counted as a probation that ran out; a newer connection that
/// took its place resets it. A lane's handshake is made in a place of the
/// lanes attaching (a peer's, the one it waited in), not among anyone's
/// places, so that lanes stalled in their handshakes (a burst, or someone
/// who offers the lane's protocol and stalls) cannot keep a peer's HTTP/2
/// connection from being told apart.
async fn sniff_tls(
    tcp: TcpStream,
    tls: PlaneTls,
    port: LanePort,
    gate: ConnectionGate,
    tx: Accepted,
    mut waiting: Waiting,
) {
    let peer = tcp.peer_addr().ok();
    let told = tokio::select! {
        told = tokio::time::timeout(SILENT_TIMEOUT, PlaneTls::offers_lane(&tcp)) => told,
        () = waiting.evicted() => return reset(tcp),
    };
    match told {
        Err(_) => return plane_cut(Cut::Probation),
        // Closed or failed: nothing to serve.
        Ok(Err(_)) => return,
        Ok(Ok(true)) => {
            // From here on, as a plain lane: a process that dies resets it.
            dtcp_duplex::reset_on_close(&tcp);
            let Some(mut place) = waiting.into_lane(&port.attaching) else {
                reset(tcp);
                return;
            };
            let lanes = port.lanes;
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
        Ok(Ok(false)) => drop(waiting),
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
/// Past them, the oldest not from a live peer's address is reset to make
/// room, or, when every place is a peer's, this one (a lane so reset before
/// its node has the token leaves its session on the Bridge).
async fn attach(lane: LaneStream, port: LanePort, from_peer: bool) {
    let Some(place) = take_place(&port.attaching, from_peer) else {
        reset_lane(lane);
        return;
    };
    attach_in(lane, port.lanes, place).await;
}

/// A lane in its `place` among the lanes attaching: [`attach`].
async fn attach_in(lane: LaneStream, lanes: Lanes, mut place: Place) {
    // Evicted: dropping the read resets the lane (zero linger). A lane
    // whose token has come goes to its session first.
    tokio::select! {
        biased;
        attached = lanes.attach(lane) => not_attached(attached),
        _ = &mut place.evicted => {}
    }
}

/// A place among the lanes attaching for a connection from a live peer's
/// address (`from_peer`) or anyone's, the oldest of anyone's evicted for it
/// when every place is held (counted, `lanes_attaching`); `None` (counted
/// too) on a node with no places, or when every place is a peer's.
fn take_place(attaching: &LanesAttaching, from_peer: bool) -> Option<Place> {
    let Some((place, evicted)) = attaching.take(from_peer) else {
        lanes_full();
        return None;
    };
    if evicted {
        lanes_full();
    }
    Some(place)
}

/// Counts a connection reset because every place of lanes attaching was
/// held: the oldest of anyone's, to make room, or a new lane when every
/// place was a peer's.
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
