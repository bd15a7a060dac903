//! The end of a paired session: its metrics and its log line.

use std::time::Duration;

use dtcp_wire::RegistrationId;
use tokio::time::Instant;
use tracing::info;

use crate::metrics::PathSeries;
use crate::outcome::Outcome;

/// What one node saw of a session that has ended.
#[derive(Debug)]
pub(crate) struct Ended {
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
}

/// Records a finished session in `series` and writes its log line.
pub(crate) fn finished(series: &PathSeries, ended: Ended) {
    let duration = ended.paired_at.elapsed();
    series.completed(ended.outcome);
    series.duration.record(duration);
    info!(
        registration = %ended.id,
        path = series.path,
        duration_ms = duration.as_millis() as u64,
        waited_ms = ended.waited.as_millis() as u64,
        bytes_initiator_to_target = ended.moved[0],
        bytes_target_to_initiator = ended.moved[1],
        outcome = ended.outcome.label(),
        "session finished"
    );
}
