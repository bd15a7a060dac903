//! Handles of the series that every pairing and session touches.

use metrics::{Counter, Gauge, Histogram, Label, counter, gauge, histogram};

use crate::metrics::names::{
    BYTES, COMMANDS, CONNECTIONS_ACCEPTED, PAIRING_LATENCY, PENDING_WAIT, SESSION_DURATION,
    SESSIONS_ACTIVE, SESSIONS_COMPLETED, THROTTLED,
};
use crate::outcome::Outcome;
use crate::protocol::Protocol;

/// Handles of the series that every pairing and session touches, looked up
/// once when the node is built (after the recorder is installed).
///
/// A `counter!` builds its key and finds its series in the recorder's
/// registry on every call: with about 20 calls per local pair that was a
/// fifth of the relay's own instructions (callgrind, `pair --pairs 2000
/// --concurrency 32`: 103 k per pair before, 81 k after). Rare events
/// (errors, refusals) still use the macros.
#[derive(Debug)]
pub(crate) struct Hot {
    /// `dtcp_connections_accepted_total`.
    pub(crate) connections_accepted: Counter,
    /// `dtcp_pending_wait_seconds`.
    pub(crate) pending_wait: Histogram,
    /// `dtcp_commands_total{verb="create",outcome="ok"}`.
    pub(crate) create_ok: Counter,
    /// `dtcp_commands_total{verb="connect",outcome="ok"}`.
    pub(crate) connect_ok: Counter,
    /// `dtcp_throttled_seconds`: each wait of a direction held back by a
    /// bandwidth cap (its sum is the time spent throttled).
    pub(crate) throttled: Histogram,
    /// DTCP sessions whose two sides are on this node.
    pub(crate) local: PathSeries,
    /// DTCP sessions joined to another node by a Bridge.
    pub(crate) forwarded: PathSeries,
    /// XEP-0065 sessions whose two sides are on this node.
    pub(crate) socks5_local: PathSeries,
    /// XEP-0065 sessions joined to another node by a Bridge.
    pub(crate) socks5_forwarded: PathSeries,
}

impl Hot {
    /// The handles, from the recorder installed now.
    pub(crate) fn new() -> Self {
        Hot {
            connections_accepted: counter!(CONNECTIONS_ACCEPTED),
            pending_wait: histogram!(PENDING_WAIT),
            throttled: histogram!(THROTTLED),
            create_ok: counter!(COMMANDS, "verb" => "create", "outcome" => "ok"),
            connect_ok: counter!(COMMANDS, "verb" => "connect", "outcome" => "ok"),
            local: PathSeries::new("local", Protocol::Dtcp),
            forwarded: PathSeries::new("forwarded", Protocol::Dtcp),
            socks5_local: PathSeries::new("local", Protocol::Socks5),
            socks5_forwarded: PathSeries::new("forwarded", Protocol::Socks5),
        }
    }

    /// The series of local sessions of `protocol`.
    pub(crate) fn local(&self, protocol: Protocol) -> &PathSeries {
        match protocol {
            Protocol::Dtcp => &self.local,
            Protocol::Socks5 => &self.socks5_local,
        }
    }

    /// The series of forwarded sessions of `protocol`.
    pub(crate) fn forwarded(&self, protocol: Protocol) -> &PathSeries {
        match protocol {
            Protocol::Dtcp => &self.forwarded,
            Protocol::Socks5 => &self.socks5_forwarded,
        }
    }
}

/// The labels of a session series: its `path`, `extra`, and for XEP-0065
/// sessions `protocol="socks5"`. DTCP's series keep the label set they have
/// always had (no `protocol` label), so that every existing query and
/// dashboard still reads them unchanged; `{protocol="socks5"}` selects
/// XEP-0065 sessions, and a sum over `path` counts both.
pub(crate) fn session_labels(
    path: &'static str,
    protocol: Protocol,
    extra: &[(&'static str, &'static str)],
) -> Vec<Label> {
    let mut labels = vec![Label::from_static_parts("path", path)];
    labels.extend(extra.iter().map(|&(k, v)| Label::from_static_parts(k, v)));
    if protocol == Protocol::Socks5 {
        labels.push(Label::from_static_parts("protocol", protocol.label()));
    }
    labels
}

/// The series of one session `path` (`local` or `forwarded`).
#[derive(Debug)]
pub(crate) struct PathSeries {
    /// The `path` label.
    pub(crate) path: &'static str,
    /// The sessions' protocol (a label of XEP-0065's series only).
    pub(crate) protocol: Protocol,
    /// `dtcp_pairing_latency_seconds`.
    pub(crate) pairing_latency: Histogram,
    /// `dtcp_sessions_active`.
    pub(crate) active: Gauge,
    /// `dtcp_relayed_bytes_total{direction="initiator_to_target"}`.
    pub(crate) initiator_to_target: Counter,
    /// `dtcp_relayed_bytes_total{direction="target_to_initiator"}`.
    pub(crate) target_to_initiator: Counter,
    /// `dtcp_session_duration_seconds`.
    pub(crate) duration: Histogram,
    /// `dtcp_sessions_completed_total`, by [`Outcome::index`].
    completed: [Counter; Outcome::ALL.len()],
}

impl PathSeries {
    fn new(path: &'static str, protocol: Protocol) -> Self {
        let labels = |extra: &[(&'static str, &'static str)]| session_labels(path, protocol, extra);
        let completed = Outcome::ALL
            .map(|outcome| counter!(SESSIONS_COMPLETED, labels(&[("outcome", outcome.label())])));
        PathSeries {
            path,
            protocol,
            pairing_latency: histogram!(PAIRING_LATENCY, labels(&[])),
            active: gauge!(SESSIONS_ACTIVE, labels(&[])),
            initiator_to_target: counter!(BYTES, labels(&[("direction", "initiator_to_target")])),
            target_to_initiator: counter!(BYTES, labels(&[("direction", "target_to_initiator")])),
            duration: histogram!(SESSION_DURATION, labels(&[])),
            completed,
        }
    }

    /// Counts a finished session.
    pub(crate) fn completed(&self, outcome: Outcome) {
        self.completed[outcome.index()].increment(1);
    }
}
