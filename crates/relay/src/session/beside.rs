//! The Bridge that paired a lane session, beside its lane until both
//! nodes know the lane attached (see `lane`).

use std::time::Duration;

use dtcp_forward::proto::Frame;
use dtcp_forward::proto::frame::Kind;
use dtcp_forward::{Inbound, Outbound};
use dtcp_wire::Condition;
use metrics::{Gauge, gauge};

use crate::metrics::LANE_BRIDGES_OPEN;

/// How long a node whose lane was reset waits for the other node's reason
/// on the Bridge (it sends it before it resets the lane).
const REASON_WAIT: Duration = Duration::from_millis(500);
/// How long a node, its side of a lane session over, waits for the other
/// node to end the Bridge too (having read why, if this node cut it).
const CUT_FLUSH: Duration = Duration::from_millis(500);

/// Which end of a session's Bridge a node holds, once its lane has
/// attached: the owner ends its half at once, the claimant when the owner
/// has (see [`BridgeBeside`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    Owner,
    Claimant,
}

/// A session's Bridge beside its lane, closed as soon as both nodes know
/// the lane attached: an idle Bridge stream costs each node far more memory
/// than the session itself (its HTTP/2 stream and message buffers).
///
/// The owner, which saw the lane attach, ends its half first; the claimant
/// ends its own when it reads that end (ending first, it could reach an
/// owner still waiting for the lane, which would take the end for a node
/// gone). A node of an earlier version keeps its half open for the whole
/// session, to send the reason of a cut on it: while a half is open, a cut
/// is told on it and a reason read from it, as then.
pub(super) struct BridgeBeside {
    outbound: Option<Outbound>,
    /// Boxed: the session's state keeps this field's room for its whole
    /// life, and the call closes once the lane has attached.
    inbound: Option<Box<Inbound>>,
    /// `dtcp_lane_bridges_open`, for this node's role, while the call is open.
    open: Option<Gauge>,
}

impl BridgeBeside {
    pub(super) fn new(end: End, outbound: Outbound, inbound: Box<Inbound>) -> Self {
        let role = match end {
            End::Owner => "server",
            End::Claimant => "client",
        };
        let open = gauge!(LANE_BRIDGES_OPEN, "role" => role);
        open.increment(1.0);
        BridgeBeside {
            outbound: (end == End::Claimant).then_some(outbound),
            inbound: Some(inbound),
            open: Some(open),
        }
    }

    /// Whether the other node's half of the call is still open.
    pub(super) fn is_open(&self) -> bool {
        self.inbound.is_some()
    }

    /// The call is over: its halves are dropped.
    fn closed(&mut self) {
        self.outbound = None;
        self.inbound = None;
        if let Some(open) = self.open.take() {
            open.decrement(1.0);
        }
    }

    /// The next frame of the other node's half; pending for ever once it
    /// has ended. Its end ends this node's half too, freeing the call.
    pub(super) async fn next(&mut self) -> Option<Kind> {
        let Some(inbound) = &mut self.inbound else {
            return std::future::pending().await;
        };
        match inbound.next().await {
            Ok(Some(kind)) => Some(kind),
            Ok(None) | Err(_) => {
                self.closed();
                None
            }
        }
    }

    /// Tells the other node why this node cut the session, if its half of
    /// the Bridge is still open to carry it.
    pub(super) fn tell(&self, condition: Condition, text: &str) {
        if let Some(outbound) = &self.outbound {
            outbound.try_send(Frame::error(condition, text));
        }
    }

    /// The reason the other node gives for the lane's reset, if it still
    /// has a Bridge open to give it on (within [`REASON_WAIT`]).
    pub(super) async fn reason(&mut self) -> Option<String> {
        self.inbound.as_ref()?;
        tokio::time::timeout(REASON_WAIT, async {
            loop {
                match self.next().await? {
                    Kind::Error(e) => return Some(e.condition),
                    _ => continue,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Ends what is left of the call (see [`end_bridge`]).
    pub(super) async fn close(mut self) {
        match (self.outbound.take(), self.inbound.take()) {
            (Some(outbound), Some(inbound)) => end_bridge(outbound, inbound).await,
            (None, Some(mut inbound)) => {
                let rest = async { while let Ok(Some(_)) = inbound.next().await {} };
                let _ = tokio::time::timeout(CUT_FLUSH, rest).await;
            }
            _ => {}
        }
        self.closed();
    }
}

impl Drop for BridgeBeside {
    /// A session's task ended without closing the call (aborted at a
    /// runtime's shutdown): the gauge is still put right.
    fn drop(&mut self) {
        self.closed();
    }
}

/// Ends this node's half of a session's Bridge (after any frame already
/// queued: the channel keeps their order), then reads the other node's
/// end, within [`CUT_FLUSH`]. A call dropped half-open would be reset, and
/// HTTP/2 closes a connection that has reset 1,024 streams, failing every
/// Bridge on it.
pub(crate) async fn end_bridge(outbound: Outbound, mut inbound: Box<Inbound>) {
    drop(outbound);
    let rest = async { while let Ok(Some(_)) = inbound.next().await {} };
    let _ = tokio::time::timeout(CUT_FLUSH, rest).await;
}
