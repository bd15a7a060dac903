//! How a paired session ended: one list for both paths, its metric labels
//! and its log lines.
//!
//! It sits beside the metrics rather than inside `session/`: the metrics
//! (below the sessions) name every outcome up front, so that each series
//! exists at zero from the first scrape.

/// How a paired session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Both directions finished with a FIN.
    Closed,
    /// A peer reset its connection or a socket failed; the relay passed the
    /// reset on.
    Reset,
    /// Cut: no byte moved either way for the idle timeout.
    IdleTimeout,
    /// Cut: the node's drain timeout ran out.
    Drained,
    /// Cut: the Bridge to the other node broke, or the other node ended the
    /// session abnormally.
    BridgeBroken,
}

impl Outcome {
    /// Every outcome, in the order of the metric series.
    pub(crate) const ALL: [Outcome; 5] = [
        Outcome::Closed,
        Outcome::Reset,
        Outcome::IdleTimeout,
        Outcome::Drained,
        Outcome::BridgeBroken,
    ];

    /// The `outcome` label of `dtcp_sessions_completed_total` and of the
    /// session's log line.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::Reset => "reset",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::Drained => "drained",
            Outcome::BridgeBroken => "bridge_broken",
        }
    }

    /// The outcome's place in [`Outcome::ALL`].
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_with_distinct_labels() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(outcome.index(), i);
        }
        let mut labels = Outcome::ALL.map(Outcome::label).to_vec();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Outcome::ALL.len());
    }
}
