//! Forwarded sessions on lanes: once the Bridge has paired a session, its
//! bytes cross between the two nodes on a TCP connection of their own (a
//! lane, see `dtcp_forward::Lanes`), joined at each end to the client
//! socket by the same pump as a local session (spliced on Linux), or,
//! under plane TLS, by its sibling that copies through rustls.
//!
//! The Bridge that paired the session closes once the lane has attached
//! (see `BridgeBeside`): an idle session then costs each node its two
//! sockets and its pump, as a local one does. No reason travels with the
//! bytes: a node that cuts the session (its drain timeout, the owner's idle
//! timeout) resets the lane and names the cut in its own session line; the
//! other node sees a reset and resets its client. Both lines name the
//! registration and `via=lane`, which is how an operator matches them.
//! Only a node of an earlier version, which keeps its half of the Bridge
//! open, still sends (and is sent) the reason on it.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dtcp_duplex::OverTcp;
use dtcp_duplex::reset_on_close;
use dtcp_forward::proto::frame::Kind;
use dtcp_forward::{Inbound, LANE_WAIT, Lane, LaneStream, Offer, Outbound, RESET};
use dtcp_wire::{Condition, RegistrationId};
use metrics::{Counter, counter, gauge};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::limits::Slot;
use crate::metrics::{FORWARDED_SESSIONS, LANES_ACTIVE};
use crate::node::Node;
use crate::outcome::Outcome;
use crate::protocol::Protocol;
use crate::reply::send_ok;
pub(crate) use crate::session::beside::end_bridge;
use crate::session::beside::{BridgeBeside, End};
use crate::session::pump::Pump;
use crate::session::report::{Ended, Side, finished};

/// A lane offered by the owner: the offer, and the connection slot the lane
/// will hold (a forwarded session holds one more descriptor on each node).
pub(crate) struct Offered {
    pub(crate) offer: Offer,
    pub(crate) slot: Slot,
}

/// Offers the claimant node `peer` a lane for `id`, if this node does
/// lanes and has a connection slot for it.
pub(crate) fn offer(node: &Node, id: &RegistrationId, peer: &str) -> Option<Offered> {
    let lanes = node.lanes.as_ref()?;
    let slot = node.slots.take()?;
    let offer = lanes.offer(id.as_bytes(), peer)?;
    Some(Offered { offer, slot })
}

/// What ended the owner's wait for its lane.
pub(crate) enum LaneWait {
    /// The lane attached.
    Lane(LaneStream),
    /// The session's bytes cross on the Bridge (its first frame, if one
    /// came, given back to `inbound`).
    Bridge,
    /// The claimant's node went (its Bridge ended) before any lane came.
    Broken,
    /// No lane and no word within [`LANE_WAIT`]: the session is cut.
    Late,
}

/// Owner side: waits for the lane `offer`ed, or for the claimant to use
/// the Bridge after all, within [`LANE_WAIT`].
pub(crate) async fn await_lane(offer: &mut Offer, inbound: &mut Inbound) -> LaneWait {
    let deadline = tokio::time::sleep(LANE_WAIT);
    tokio::pin!(deadline);
    tokio::select! {
        biased;
        lane = &mut offer.arrival => match lane {
            Ok(lane) => LaneWait::Lane(lane),
            Err(_) => LaneWait::Broken,
        },
        frame = inbound.next() => match frame {
            // The claimant could not dial the lane: it says so with nothing.
            Ok(Some(Kind::Data(d))) if d.is_empty() => LaneWait::Bridge,
            Ok(Some(kind)) => {
                inbound.unread(kind);
                LaneWait::Bridge
            }
            Ok(None) | Err(_) => LaneWait::Broken,
        },
        () = &mut deadline => LaneWait::Late,
    }
}

/// How a lane session ended, as one node saw it.
struct LaneEnd {
    moved: [u64; 2],
    outcome: Outcome,
    detail: Option<String>,
}

/// One node's side of a lane session: `client` (its `early` bytes first)
/// joined to `lane` until the session ends; `counters`: client to lane,
/// lane to client. `idle`: the owner's idle timeout (the claimant's node
/// leaves it to the owner, as on the Bridge). Both sockets are closed here,
/// with a reset unless both directions ended with a FIN.
///
/// This and the two sides' `run_*` below are plain fns returning an `async`
/// block: an `async fn` keeps a second copy of every argument, and an idle
/// session holds its future's state for its whole life.
#[expect(
    clippy::too_many_arguments,
    reason = "one call per side of a session, each argument a different thing"
)]
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a second copy of every argument in its state"
)]
fn join_lane<'a>(
    node: &'a Node,
    end: End,
    client: TcpStream,
    early: &'a [u8],
    mut lane: LaneStream,
    counters: [Counter; 2],
    idle: Option<Duration>,
    outbound: Outbound,
    inbound: Box<Inbound>,
) -> impl Future<Output = LaneEnd> + Send + 'a {
    async move {
        enum Why {
            Pump(Outcome),
            Stopped,
            Peer(String),
        }
        let [to_lane, to_client] = counters;
        let mut pump = Pump::lane(
            (&client, early, to_lane),
            (&mut lane, to_client),
            idle,
            !node.config.no_splice,
            node.lane_throttles(),
        );
        let mut bridge = BridgeBeside::new(end, outbound, inbound);
        let why = loop {
            // Boxed, and only while the Bridge is open: what the session holds
            // for its whole life is the pump, not a read of a closed call.
            let mut next = bridge.is_open().then(|| Box::pin(bridge.next()));
            let frame = async {
                match &mut next {
                    Some(next) => next.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                outcome = &mut pump => break Why::Pump(outcome),
                () = node.stop.cancelled() => break Why::Stopped,
                frame = frame => if let Some(Kind::Error(e)) = frame {
                    break Why::Peer(e.condition);
                },
            }
        };
        let moved = pump.moved();
        drop(pump);
        let closed = matches!(why, Why::Pump(Outcome::Closed));
        if !closed {
            // Every end but both FINs is a reset, at both ends of this node.
            reset_on_close(&client);
            reset_on_close(lane.tcp());
        }
        // This node's own cut: an earlier node is told why before the lane resets.
        match &why {
            Why::Pump(Outcome::IdleTimeout) => {
                bridge.tell(Condition::Timeout, "no byte moved for the idle timeout");
            }
            Why::Stopped => bridge.tell(Condition::ShuttingDown, crate::node::SHUTTING_DOWN),
            _ => {}
        }
        drop(client);
        drop(lane);
        let (outcome, detail) = match why {
            // The lane or the client reset. If it was the other node's cut and
            // that node still has a Bridge open to say so (an earlier version),
            // its reason is on its way; else this is a reset, and the other
            // node's line, under the same registration id, names any cut.
            Why::Pump(Outcome::Reset) => match Box::pin(bridge.reason()).await {
                Some(condition) => cut_by_peer(&condition),
                None => (Outcome::Reset, None),
            },
            Why::Pump(outcome) => (outcome, None),
            Why::Stopped => (Outcome::Drained, None),
            Why::Peer(condition) => cut_by_peer(&condition),
        };
        Box::pin(bridge.close()).await;
        LaneEnd {
            moved,
            outcome,
            detail,
        }
    }
}

/// Claimant side, the owner having answered its Initiator: a DTCP Target
/// gets its `OK` now, counted with its pairing latency (a XEP-0065 pair's
/// was recorded at its claim: see `local::run`).
pub(crate) async fn answer_target(
    node: &Node,
    target: &TcpStream,
    protocol: Protocol,
    started: Instant,
) {
    if protocol == Protocol::Dtcp {
        send_ok(target).await;
        node.hot.connect_ok.increment(1);
        let series = node.hot.forwarded(protocol);
        series.pairing_latency.record(started.elapsed());
    }
}

/// The outcome of a session the other node cut for `condition`, on a lane
/// or on the Bridge.
pub(crate) fn cut_by_peer(condition: &str) -> (Outcome, Option<String>) {
    let outcome = if condition == RESET {
        Outcome::Reset
    } else if condition == Condition::ShuttingDown.as_str() {
        Outcome::Drained
    } else if condition == Condition::Timeout.as_str() {
        Outcome::IdleTimeout
    } else {
        Outcome::BridgeBroken
    };
    (outcome, Some(format!("cut by the other node: {condition}")))
}

/// The owner's side of a session on a lane: its Initiator (which has its
/// `OK`) joined to the lane that attached.
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of a session handed over at once"
)]
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a second copy of every argument in its state"
)]
pub(crate) fn run_owner(
    node: Arc<Node>,
    initiator: TcpStream,
    early: BytesMut,
    lane: LaneStream,
    _lane_slot: Slot,
    outbound: Outbound,
    inbound: Box<Inbound>,
    id: RegistrationId,
    waited: Duration,
    client: IpAddr,
    target: Option<SocketAddr>,
    protocol: Protocol,
) -> impl Future<Output = ()> + Send {
    async move {
        debug!(registration = %id, "session on a lane");
        let series = node.hot.forwarded(protocol);
        counter!(FORWARDED_SESSIONS, "via" => "lane").increment(1);
        let lanes = gauge!(LANES_ACTIVE, "role" => "server");
        series.active.increment(1.0);
        lanes.increment(1.0);
        let paired_at = Instant::now();
        let end = join_lane(
            &node,
            End::Owner,
            initiator,
            &early,
            lane,
            [
                series.initiator_to_target.clone(),
                series.target_to_initiator.clone(),
            ],
            node.config.idle_timeout(),
            outbound,
            inbound,
        )
        .await;
        lanes.decrement(1.0);
        series.active.decrement(1.0);
        let ended = Ended {
            side: Side::Owner,
            id,
            paired_at,
            waited,
            moved: end.moved,
            outcome: end.outcome,
            detail: end.detail,
            clients: [Some(client), target.map(|t| t.ip())],
            via: Some("lane"),
        };
        finished(series, ended);
    }
}

/// The claimant's side of a session on a lane: the preamble, then the
/// Target's `OK`, then its socket joined to the lane.
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of a session handed over at once"
)]
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a second copy of every argument in its state"
)]
pub(crate) fn run_claimant(
    node: Arc<Node>,
    target: TcpStream,
    _lane_slot: Slot,
    id: RegistrationId,
    early: BytesMut,
    started: Instant,
    mut lane: Lane,
    outbound: Outbound,
    inbound: Box<Inbound>,
    client: IpAddr,
    protocol: Protocol,
) -> impl Future<Output = ()> + Send {
    async move {
        let series = node.hot.forwarded(protocol);
        // From here on a close that is not a passed-on FIN is a reset.
        reset_on_close(&target);
        // The Target's early bytes follow the preamble (the pump writes them
        // first), without waiting for an answer: there is none.
        if lane.send_preamble().await.is_err() {
            // The owner's Initiator has its OK, and will be reset by the
            // owner when the Bridge ends; this Target never had one (it is
            // reset when dropped here).
            debug!(registration = %id, "the lane failed before its preamble was written");
            end_bridge(outbound, inbound).await;
            let ended = Ended {
                side: Side::Claimant,
                id,
                paired_at: Instant::now(),
                waited: Duration::ZERO,
                moved: [0, 0],
                outcome: Outcome::Reset,
                detail: Some("the lane failed before its preamble was written".to_owned()),
                clients: [None, Some(client)],
                via: Some("lane"),
            };
            finished(series, ended);
            return;
        }
        // The preamble is written: only the connection goes on.
        let Lane { stream, preamble } = lane;
        drop(preamble);
        answer_target(&node, &target, protocol, started).await;
        let lanes = gauge!(LANES_ACTIVE, "role" => "client");
        lanes.increment(1.0);
        let paired_at = Instant::now();
        let end = join_lane(
            &node,
            End::Claimant,
            target,
            &early,
            stream,
            [
                series.target_to_initiator.clone(),
                series.initiator_to_target.clone(),
            ],
            None,
            outbound,
            inbound,
        )
        .await;
        lanes.decrement(1.0);
        let [sent, received] = end.moved;
        let ended = Ended {
            side: Side::Claimant,
            id,
            paired_at,
            waited: Duration::ZERO,
            moved: [received, sent],
            outcome: end.outcome,
            detail: end.detail,
            clients: [None, Some(client)],
            via: Some("lane"),
        };
        finished(series, ended);
    }
}
