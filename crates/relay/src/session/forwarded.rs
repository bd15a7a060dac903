//! Sessions whose two sides are on different nodes, joined by a Bridge.
//!
//! Each node runs one side: the **claimant side** (the node the claimant,
//! a `CONNECT` or a XEP-0065 requester, reached: it opened the Bridge, and
//! joins its client to it) and the **owner side** (the node holding the
//! registering client, which the Bridge claimed). The session's roles are
//! DTCP's whatever the protocol: the claimant's client is its Target, the
//! registering client its Initiator.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dtcp_duplex::reset_on_close;
use dtcp_forward::proto::Frame;
use dtcp_forward::{End, Halves, LaneDial, join};
use dtcp_wire::{Condition, RegistrationId};
use metrics::{counter, gauge};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::claim::RemoteClaim;
use crate::limits::Slot;
use crate::metrics::{
    BRIDGE_ERRORS, BRIDGE_STREAMS, FORWARDED_SESSIONS, LANE_DIALS, LANE_WAITS_EXPIRED,
};
use crate::node::Node;
use crate::outcome::Outcome;
use crate::protocol::Protocol;
use crate::reply::send_ok;
use crate::session::Holding;
use crate::session::lane::{self, LaneWait};
use crate::session::report::{Ended, Side, finished};
use tracing::debug;

/// A session's future, on the path it took.
type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Claimant side, once the Bridge is open (and, in XEP-0065 mode, the pair
/// activated): answers a DTCP Target `OK` and joins its socket to the lane
/// or, without one, to the Bridge.
///
/// A plain fn that picks the path and returns its session boxed on its
/// own: an idle session's task then holds that path's state alone (as one
/// `async fn`, the task held the Bridge path's state beside the lane's).
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of a session handed over at once"
)]
pub(crate) fn run_claimant_side(
    node: Arc<Node>,
    target: TcpStream,
    slot: Slot,
    id: RegistrationId,
    early: BytesMut,
    started: Instant,
    mut bridge: Box<Halves>,
    client: IpAddr,
    protocol: Protocol,
) -> BoxFuture {
    // A drain waits for this session, on a lane or on the Bridge.
    let tracked = node.sessions.token();
    match std::mem::take(&mut bridge.lane) {
        LaneDial::Ready(lane) => match node.slots.take() {
            Some(lane_slot) => {
                counter!(LANE_DIALS, "outcome" => "ok").increment(1);
                let Halves {
                    outbound, inbound, ..
                } = *bridge;
                let session = lane::run_claimant(
                    node,
                    target,
                    lane_slot,
                    id,
                    early,
                    started,
                    *lane,
                    outbound,
                    Box::new(inbound),
                    client,
                    protocol,
                );
                // Released when the session ends.
                return Box::pin(Holding::new(session, (slot, tracked)));
            }
            None => {
                // No descriptor to spare for it: the Bridge carries the
                // bytes, and the owner is told so at once.
                counter!(LANE_DIALS, "outcome" => "no_slot").increment(1);
                bridge.outbound.try_send(Frame::data(bytes::Bytes::new()));
            }
        },
        LaneDial::Failed(reason) => {
            counter!(LANE_DIALS, "outcome" => reason).increment(1);
            debug!(registration = %id, reason, "lane dial failed: the Bridge carries the session");
        }
        // Dialed for nothing: counted, so that a cluster that wastes dials shows it.
        LaneDial::Declined => counter!(LANE_DIALS, "outcome" => "declined").increment(1),
        LaneDial::NotOffered | LaneDial::AtActivation(_) => {}
    }
    let session = claimant_on_bridge(node, target, id, early, started, bridge, client, protocol);
    Box::pin(Holding::new(session, (slot, tracked)))
}

/// The claimant's side of a session whose bytes cross on its Bridge.
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of a session handed over at once"
)]
async fn claimant_on_bridge(
    node: Arc<Node>,
    target: TcpStream,
    id: RegistrationId,
    early: BytesMut,
    started: Instant,
    bridge: Box<Halves>,
    client: IpAddr,
    protocol: Protocol,
) {
    // The owner has answered its Initiator: now the Target. From OK on, a
    // close that is not a passed-on FIN (the process killed included) is a
    // reset (`join` undoes it for the FIN).
    reset_on_close(&target);
    let series = node.hot.forwarded(protocol);
    lane::answer_target(&node, &target, protocol, started).await;
    let streams = gauge!(BRIDGE_STREAMS, "role" => "client");
    streams.increment(1.0);
    let paired_at = Instant::now();
    let report = Box::pin(join(
        &target,
        early.freeze(),
        bridge.outbound,
        bridge.inbound,
        series.target_to_initiator.clone(),
        series.initiator_to_target.clone(),
        // The Target's bytes are capped here, where they are read; see
        // `Node::gates` for which node caps what.
        node.gates(),
        // The idle timeout is the owner's to enforce: it holds the session's
        // record, and two nodes timing the same silence would race.
        None,
        node.stop.cancelled(),
    ))
    .await;
    streams.decrement(1.0);
    let (outcome, detail) = outcome_of(&report.end, "client");
    let ended = Ended {
        side: Side::Claimant,
        id,
        paired_at,
        waited: Duration::ZERO,
        moved: [report.received, report.sent],
        outcome,
        detail,
        // The Initiator's address stays with the node that holds it.
        clients: [None, Some(client)],
        via: Some("bridge"),
    };
    finished(series, ended);
}

/// Owner side: a Bridge claimed this node's pending Initiator (in XEP-0065
/// mode: the pair was activated, and both sides have had their replies and
/// the requester's node its `paired` and `activated` frames, the latter
/// with the lane `offered`, if one was). A DTCP Initiator is answered here,
/// and the lane offered in `paired`.
///
/// The pairing (the `OK`, the `paired` frame, the wait for the lane) is
/// boxed apart from the session on the path it chose, and freed once that
/// session starts: an idle session then holds its path's state alone, not
/// also the pairing's, the larger (1,176 bytes, freed now; as one future,
/// the owner's side of an idle lane session held a 2,616-byte box beside
/// the lane's own).
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of a session handed over at once"
)]
pub(crate) fn run_owner_side(
    node: Arc<Node>,
    initiator: TcpStream,
    early: BytesMut,
    claim: RemoteClaim,
    id: RegistrationId,
    waited: Duration,
    client: IpAddr,
    protocol: Protocol,
    offered: Option<lane::Offered>,
) -> impl Future<Output = ()> + Send {
    let pairing = Box::pin(pair_owner_side(
        node, initiator, early, claim, id, waited, client, protocol, offered,
    ));
    async move {
        if let Some(session) = pairing.await {
            session.await;
        }
    }
}

/// The owner's side of a session until its path is known: the session on
/// that path, or nothing if it ended here.
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of a session handed over at once"
)]
async fn pair_owner_side(
    node: Arc<Node>,
    initiator: TcpStream,
    early: BytesMut,
    claim: RemoteClaim,
    id: RegistrationId,
    waited: Duration,
    client: IpAddr,
    protocol: Protocol,
    mut offered: Option<lane::Offered>,
) -> Option<BoxFuture> {
    let RemoteClaim {
        outbound,
        mut inbound,
        client: target,
        lane_peer,
        format,
    } = claim;
    // With debug logging, this connection's lines name the Target as its
    // node saw it, not the node: the Bridge carried its address (the
    // session line names it at any level).
    if let Some(target) = target {
        tracing::Span::current().record("target_client", tracing::field::display(target));
    }
    // From OK on, a close that is not a passed-on FIN (the process killed
    // included) is a reset (`join` undoes it for the FIN).
    reset_on_close(&initiator);
    if protocol == Protocol::Dtcp {
        send_ok(&initiator).await;
        node.hot.create_ok.increment(1);
        offered = lane_peer.and_then(|peer| lane::offer(&node, &id, &peer));
        let paired = match &offered {
            Some(o) => Frame::paired_with(o.offer.token.clone(), format),
            None => Frame::paired(format),
        };
        if outbound.send(paired).await.is_err() {
            counter!(BRIDGE_ERRORS, "role" => "server", "reason" => "broken").increment(1);
            // The Target's node is gone: the Initiator's OK stands for nothing.
            reset_on_close(&initiator);
            return None;
        }
    }
    if let Some(mut offered) = offered {
        match lane::await_lane(&mut offered.offer, &mut inbound).await {
            LaneWait::Lane(stream) => {
                // The offer (its token, its wait) goes now: the session
                // keeps the lane's connection slot only.
                let lane::Offered { offer, slot } = offered;
                drop(offer);
                return Some(Box::pin(lane::run_owner(
                    node, initiator, early, stream, slot, outbound, inbound, id, waited, client,
                    target, protocol,
                )));
            }
            LaneWait::Bridge => {}
            LaneWait::Late => {
                counter!(LANE_WAITS_EXPIRED).increment(1);
                let text = "the lane offered for the session did not attach";
                debug!(registration = %id, "{text}");
                // The claimant resets its Target on this; the Initiator is
                // reset when dropped here (zero linger).
                outbound.try_send(Frame::error(Condition::Unavailable, text));
                lane::end_bridge(outbound, inbound).await;
                let ended = Ended {
                    side: Side::Owner,
                    id,
                    paired_at: Instant::now(),
                    waited,
                    moved: [0, 0],
                    outcome: Outcome::BridgeBroken,
                    detail: Some(text.to_owned()),
                    clients: [Some(client), target.map(|t| t.ip())],
                    via: Some("lane"),
                };
                finished(node.hot.forwarded(protocol), ended);
                return None;
            }
            LaneWait::Broken => {
                counter!(BRIDGE_ERRORS, "role" => "server", "reason" => "broken").increment(1);
                debug!(registration = %id, "the claimant's node went before its lane came");
                return None;
            }
        }
    }
    Some(Box::pin(owner_on_bridge(
        node, initiator, early, outbound, inbound, id, waited, client, target, protocol,
    )))
}

/// The owner's side of a session whose bytes cross on its Bridge.
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of a session handed over at once"
)]
async fn owner_on_bridge(
    node: Arc<Node>,
    initiator: TcpStream,
    early: BytesMut,
    outbound: dtcp_forward::Outbound,
    inbound: Box<dtcp_forward::Inbound>,
    id: RegistrationId,
    waited: Duration,
    client: IpAddr,
    target: Option<std::net::SocketAddr>,
    protocol: Protocol,
) {
    counter!(FORWARDED_SESSIONS, "via" => "bridge").increment(1);
    let series = node.hot.forwarded(protocol);
    let streams = gauge!(BRIDGE_STREAMS, "role" => "server");
    series.active.increment(1.0);
    streams.increment(1.0);
    let paired_at = Instant::now();
    let report = Box::pin(join(
        &initiator,
        early.freeze(),
        outbound,
        *inbound,
        series.initiator_to_target.clone(),
        series.target_to_initiator.clone(),
        // The Initiator's bytes are capped here, where they are read.
        node.gates(),
        node.config.idle_timeout(),
        node.stop.cancelled(),
    ))
    .await;
    streams.decrement(1.0);
    series.active.decrement(1.0);
    let (outcome, detail) = outcome_of(&report.end, "server");
    let ended = Ended {
        side: Side::Owner,
        id,
        paired_at,
        waited,
        moved: [report.sent, report.received],
        outcome,
        detail,
        clients: [Some(client), target.map(|t| t.ip())],
        via: Some("bridge"),
    };
    finished(series, ended);
}

/// The outcome of a joined session, and what the plane said of it; a broken
/// Bridge is counted under `role`.
fn outcome_of(end: &End, role: &'static str) -> (Outcome, Option<String>) {
    match end {
        End::Closed => (Outcome::Closed, None),
        End::Reset => (Outcome::Reset, None),
        End::IdleTimeout => (Outcome::IdleTimeout, None),
        End::Stopped => (Outcome::Drained, None),
        // The other node cut it: the same cut, seen from here (a `reset`
        // from it never gets here: `join` ends with `End::Reset`).
        End::CutByPeer(condition) => lane::cut_by_peer(condition),
        End::Broken(why) => {
            counter!(BRIDGE_ERRORS, "role" => role, "reason" => "broken").increment(1);
            (Outcome::BridgeBroken, Some(why.clone()))
        }
    }
}
