//! The end of a paired session: its metrics and its log line.

use std::net::IpAddr;
use std::time::Duration;

use dtcp_wire::RegistrationId;
use tokio::time::Instant;
use tracing::info;

use metrics::counter;

use crate::metrics::{FORWARDED_BYTES, PathSeries};
use crate::outcome::Outcome;

/// Which side of a session a node ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Both clients on this node.
    Local,
    /// The node holding the Initiator, which the Bridge claimed.
    Owner,
    /// The node the claimant reached, which opened the Bridge.
    Claimant,
}

impl Side {
    /// The `side` field of the log line.
    const fn label(self) -> &'static str {
        match self {
            Side::Local => "local",
            Side::Owner => "owner",
            // DTCP's word: the node of the Target.
            Side::Claimant => "target",
        }
    }
}

/// What one node saw of a session that has ended.
#[derive(Debug)]
pub(crate) struct Ended {
    /// The side this node ran.
    pub(crate) side: Side,
    /// The registration the session paired.
    pub(crate) id: RegistrationId,
    /// When both sides had their `OK`.
    pub(crate) paired_at: Instant,
    /// How long the `CREATE` waited for its claim.
    pub(crate) waited: Duration,
    /// Bytes moved Initiator to Target, and Target to Initiator.
    pub(crate) moved: [u64; 2],
    /// How it ended.
    pub(crate) outcome: Outcome,
    /// What the forwarding plane said of an abnormal end, if it did.
    pub(crate) detail: Option<String>,
    /// The Initiator's and the Target's client addresses, where this node
    /// knows them (the client a trusted PROXY header named, else the peer).
    pub(crate) clients: [Option<IpAddr>; 2],
    /// How a forwarded session's bytes crossed between the nodes (`lane`
    /// or `bridge`); `None` for a local session.
    pub(crate) via: Option<&'static str>,
}

/// Records a finished session in `series` and writes its log line.
///
/// Both nodes of a forwarded session write a line (an operator can follow
/// it from either end), but only the owner counts it in the session
/// metrics, so that sums across the cluster count each session once.
pub(crate) fn finished(series: &PathSeries, ended: Ended) {
    let duration = ended.paired_at.elapsed();
    if ended.side != Side::Claimant {
        series.completed(ended.outcome);
        series.duration.record(duration);
    }
    if let Some(via) = ended.via {
        counter!(FORWARDED_BYTES, "via" => via).increment(ended.moved[0] + ended.moved[1]);
    }
    info!(
        registration = %ended.id,
        initiator_client = ended.clients[0].map(tracing::field::display),
        target_client = ended.clients[1].map(tracing::field::display),
        path = series.path,
        via = ended.via,
        protocol = series.protocol.label(),
        side = ended.side.label(),
        duration_ms = duration.as_millis() as u64,
        waited_ms = ended.waited.as_millis() as u64,
        bytes_initiator_to_target = ended.moved[0],
        bytes_target_to_initiator = ended.moved[1],
        outcome = ended.outcome.label(),
        detail = ended.detail,
        "session finished"
    );
}
