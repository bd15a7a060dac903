//! Sessions whose two sides are on different nodes, joined by a Bridge.
//!
//! Each node runs one side: the **target side** (the node the `CONNECT`
//! reached: it opens the Bridge, then joins its Target to it) and the
//! **owner side** (the node holding the Initiator, which the Bridge claimed).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dtcp_forward::proto::Frame;
use dtcp_forward::{BridgeError, End, Halves, join};
use dtcp_store::NodeInfo;
use dtcp_wire::{Condition, RegistrationId};
use metrics::{counter, gauge};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::limits::Slot;
use crate::metrics::{BRIDGE_ERRORS, BRIDGE_STREAMS};
use crate::node::Node;
use crate::outcome::Outcome;
use crate::pending::RemoteClaim;
use crate::reply::send_ok;
use crate::session::report::{Ended, finished};

/// Why a Bridge was not opened.
pub(crate) enum OpenError {
    /// The owner has no such pending registration (now).
    NotFound,
    /// Answer the Target this.
    Refuse(Condition, &'static str),
}

/// Target side: the registration is `owner`'s. Opens a Bridge to it; on
/// success the owner has claimed its Initiator and answered it `OK`.
/// The bridge comes boxed: it is large, and every waiting CONNECT's state
/// would otherwise make room for it.
pub(crate) async fn open_bridge(
    node: &Node,
    id: &RegistrationId,
    owner: &NodeInfo,
) -> Result<Box<Halves>, OpenError> {
    let Some(dialer) = &node.dialer else {
        warn!(registration = %id, owner = %owner, "registration held by another node, and this node has no forwarding plane");
        let text = "the session is held by another node that cannot be reached";
        return Err(OpenError::Refuse(Condition::Unavailable, text));
    };
    dialer
        .open(&owner.forward_addr, id.as_bytes(), &owner.id)
        .await
        .map(Box::new)
        .map_err(|e| {
            let (reason, text) = match &e {
                BridgeError::NotFound => {
                    debug!(registration = %id, owner = %owner, "bridge: not found");
                    return OpenError::NotFound;
                }
                BridgeError::Unreachable(_) => (
                    "unreachable",
                    "the node holding the session cannot be reached",
                ),
                BridgeError::Unauthenticated => (
                    "unauthenticated",
                    "the node holding the session refused this node",
                ),
                BridgeError::Protocol(_) => {
                    ("protocol", "the node holding the session answered nonsense")
                }
            };
            counter!(BRIDGE_ERRORS, "role" => "client", "reason" => reason).increment(1);
            warn!(registration = %id, owner = %owner, error = %e, "bridge failed");
            OpenError::Refuse(Condition::Unavailable, text)
        })
}

/// Target side, once the Bridge is open: answers the Target `OK` and joins
/// its socket to the Bridge.
pub(crate) async fn run_target_side(
    node: Arc<Node>,
    target: TcpStream,
    _slot: Slot,
    id: RegistrationId,
    early: BytesMut,
    started: Instant,
    bridge: Box<Halves>,
) {
    // The owner has answered its Initiator: now the Target.
    send_ok(&target).await;
    let series = &node.hot.forwarded;
    series.pairing_latency.record(started.elapsed());
    node.hot.connect_ok.increment(1);
    let _tracked = node.sessions.token();
    let streams = gauge!(BRIDGE_STREAMS, "role" => "client");
    streams.increment(1.0);
    let joined = join(
        &target,
        early.freeze(),
        bridge.outbound,
        bridge.inbound,
        series.target_to_initiator.clone(),
        series.initiator_to_target.clone(),
        // The idle timeout is the owner's to enforce: it holds the session's
        // record, and two nodes timing the same silence would race.
        None,
    );
    let end = tokio::select! {
        report = joined => report.end,
        () = node.stop.cancelled() => End::Broken("drained".into()),
    };
    streams.decrement(1.0);
    if let End::Broken(why) = &end {
        counter!(BRIDGE_ERRORS, "role" => "client", "reason" => "broken").increment(1);
        debug!(registration = %id, why, "bridge ended abnormally");
    }
}

/// Owner side: a Bridge claimed this node's pending Initiator.
pub(crate) async fn run_owner_side(
    node: Arc<Node>,
    initiator: TcpStream,
    early: BytesMut,
    claim: RemoteClaim,
    id: RegistrationId,
    waited: Duration,
) {
    let RemoteClaim { outbound, inbound } = claim;
    send_ok(&initiator).await;
    node.hot.create_ok.increment(1);
    if outbound.send(Frame::paired()).await.is_err() {
        counter!(BRIDGE_ERRORS, "role" => "server", "reason" => "broken").increment(1);
        return;
    }
    let series = &node.hot.forwarded;
    let streams = gauge!(BRIDGE_STREAMS, "role" => "server");
    series.active.increment(1.0);
    streams.increment(1.0);
    let paired_at = Instant::now();
    // A second handle on the response stream, only to tell the Target's
    // node when this node stops the session; dropped as soon as the session
    // ends so that the stream can end.
    let stopper = outbound.clone();
    let joined = join(
        &initiator,
        early.freeze(),
        outbound,
        *inbound,
        series.initiator_to_target.clone(),
        series.target_to_initiator.clone(),
        node.config.idle_timeout(),
    );
    tokio::pin!(joined);
    let (outcome, moved) = tokio::select! {
        report = &mut joined => {
            let outcome = match &report.end {
                End::Closed => Outcome::Closed,
                End::Reset => Outcome::Reset,
                End::IdleTimeout => Outcome::IdleTimeout,
                End::Broken(why) => {
                    counter!(BRIDGE_ERRORS, "role" => "server", "reason" => "broken").increment(1);
                    debug!(registration = %id, why, "bridge ended abnormally");
                    Outcome::BridgeBroken
                }
            };
            (outcome, [report.sent, report.received])
        }
        () = node.stop.cancelled() => {
            stopper.try_send(Frame::error(Condition::ShuttingDown, "the relay is shutting down"));
            (Outcome::Drained, [0, 0])
        }
    };
    drop(stopper);
    streams.decrement(1.0);
    series.active.decrement(1.0);
    let ended = Ended {
        id,
        paired_at,
        waited,
        moved,
        outcome,
    };
    finished(series, ended);
}
