//! Every metric the relay exports: names, help texts and units in one place.
//!
//! Counters end in `_total`, units are in the name, and labels take values
//! from small fixed sets only (never a key, a JID, an address or an id).

use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Client connections accepted.
pub const CONNECTIONS_ACCEPTED: &str = "dtcp_connections_accepted_total";
/// Client connections open now.
pub const CONNECTIONS_OPEN: &str = "dtcp_connections_open";
/// Client connections refused before any command, by `reason`.
pub const CONNECTIONS_REFUSED: &str = "dtcp_connections_refused_total";
/// The connection limit in force (after clamping to the descriptor limit).
pub const CONNECTIONS_MAX: &str = "dtcp_connections_max";
/// Commands answered, by `verb` and `outcome` (`ok` or an error condition).
pub const COMMANDS: &str = "dtcp_commands_total";
/// `ERROR` replies sent, by `condition`.
pub const ERRORS: &str = "dtcp_errors_total";
/// CREATEs waiting for their CONNECT on this node.
pub const PENDING: &str = "dtcp_pending_registrations";
/// Registrations in the embedded in-memory store.
pub const STORE_REGISTRATIONS: &str = "dtcp_store_registrations";
/// Paired sessions running now, by `path`.
pub const SESSIONS_ACTIVE: &str = "dtcp_sessions_active";
/// Paired sessions finished, by `path` and `outcome`.
pub const SESSIONS_COMPLETED: &str = "dtcp_sessions_completed_total";
/// Bytes relayed, by `path` and `direction`.
pub const BYTES: &str = "dtcp_relayed_bytes_total";
/// From a CONNECT's command to both sides holding `OK`, by `path`.
pub const PAIRING_LATENCY: &str = "dtcp_pairing_latency_seconds";
/// How long a CREATE waited for its CONNECT.
pub const PENDING_WAIT: &str = "dtcp_pending_wait_seconds";
/// From `OK` to the end of a session, by `path`.
pub const SESSION_DURATION: &str = "dtcp_session_duration_seconds";
/// Rendezvous store operations, by `op`.
pub const STORE_OPERATIONS: &str = "dtcp_store_operations_total";
/// Failed rendezvous store operations, by `op`.
pub const STORE_ERRORS: &str = "dtcp_store_errors_total";
/// Rendezvous store latency, by `op`.
pub const STORE_LATENCY: &str = "dtcp_store_latency_seconds";
/// Nodes with a live heartbeat in the store, as this node last saw it.
pub const NODES_ALIVE: &str = "dtcp_nodes_alive";
/// Bridge streams open now, by `role` (`client`: this node holds the
/// Target; `server`: it holds the Initiator).
pub const BRIDGE_STREAMS: &str = "dtcp_bridge_streams_active";
/// Bridges that failed, by `role` and `reason`.
pub const BRIDGE_ERRORS: &str = "dtcp_bridge_errors_total";
/// 1 while the node drains, else 0.
pub const DRAINING: &str = "dtcp_draining";
/// Always 1, labelled with the `version`.
pub const BUILD_INFO: &str = "dtcp_build_info";

/// The `outcome`s of `dtcp_sessions_completed_total`.
const SESSION_OUTCOMES: [&str; 5] = [
    "closed",
    "reset",
    "idle_timeout",
    "drained",
    "bridge_broken",
];

/// Buckets of the latency histograms, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets of the duration histograms, in seconds: 10 ms to a day.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.1, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// Installs the global Prometheus recorder and describes every metric.
///
/// Histograms get explicit buckets so that they are exported as Prometheus
/// histograms (summable across nodes), not summaries.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(PAIRING_LATENCY.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(PENDING_WAIT.into()), DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(STORE_LATENCY.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(SESSION_DURATION.into()), DURATION_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// How often the exporter's histograms are compacted.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

fn describe() {
    describe_counter!(CONNECTIONS_ACCEPTED, "Client connections accepted.");
    describe_gauge!(CONNECTIONS_OPEN, "Client connections open now.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections refused before any command, by reason (max_connections, descriptors)."
    );
    describe_gauge!(CONNECTIONS_MAX, "The connection limit in force.");
    describe_counter!(
        COMMANDS,
        "Commands answered, by verb and outcome (ok or an error condition)."
    );
    describe_counter!(ERRORS, "ERROR replies sent, by condition.");
    describe_gauge!(PENDING, "CREATEs waiting for their CONNECT on this node.");
    describe_gauge!(
        STORE_REGISTRATIONS,
        "Registrations in the embedded in-memory store (absent in cluster mode)."
    );
    describe_gauge!(SESSIONS_ACTIVE, "Paired sessions running now, by path.");
    describe_counter!(
        SESSIONS_COMPLETED,
        "Paired sessions finished, by path and outcome (closed, reset, idle_timeout, drained, bridge_broken)."
    );
    describe_counter!(BYTES, Unit::Bytes, "Bytes relayed, by path and direction.");
    describe_histogram!(
        PAIRING_LATENCY,
        Unit::Seconds,
        "From a CONNECT's command to both sides holding OK, by path."
    );
    describe_histogram!(
        PENDING_WAIT,
        Unit::Seconds,
        "How long a CREATE waited for its CONNECT."
    );
    describe_histogram!(
        SESSION_DURATION,
        Unit::Seconds,
        "From OK to the end of a paired session, by path."
    );
    describe_counter!(STORE_OPERATIONS, "Rendezvous store operations, by op.");
    describe_counter!(STORE_ERRORS, "Failed rendezvous store operations, by op.");
    describe_histogram!(
        STORE_LATENCY,
        Unit::Seconds,
        "Rendezvous store latency, by op."
    );
    describe_gauge!(
        NODES_ALIVE,
        "Nodes with a live heartbeat in the store, as this node last saw it."
    );
    describe_gauge!(
        BRIDGE_STREAMS,
        "Bridge streams open now, by role (client: holds the Target; server: holds the Initiator)."
    );
    describe_counter!(BRIDGE_ERRORS, "Bridges that failed, by role and reason.");
    describe_gauge!(DRAINING, "1 while the node drains, else 0.");
    describe_gauge!(BUILD_INFO, "Always 1, labelled with the relay's version.");
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    init_series();
}

/// Every series the relay can export, at zero: a fresh node shows them all,
/// so that `rate()` and dashboards work from the first scrape instead of
/// showing "No data" until the first event of each kind.
fn init_series() {
    const CONDITIONS: [&str; 8] = [
        "bad-request",
        "conflict",
        "not-found",
        "timeout",
        "forbidden",
        "resource-constraint",
        "unavailable",
        "shutting-down",
    ];
    const PATHS: [&str; 2] = ["local", "forwarded"];
    for gauge in [
        DRAINING,
        PENDING,
        CONNECTIONS_OPEN,
        STORE_REGISTRATIONS,
        NODES_ALIVE,
    ] {
        gauge!(gauge).set(0.0);
    }
    counter!(CONNECTIONS_ACCEPTED).absolute(0);
    for reason in ["max_connections", "descriptors"] {
        counter!(CONNECTIONS_REFUSED, "reason" => reason).absolute(0);
    }
    for condition in CONDITIONS {
        counter!(ERRORS, "condition" => condition).absolute(0);
    }
    for verb in ["create", "connect", "unknown"] {
        for outcome in CONDITIONS.iter().copied().chain(["ok", "abandoned"]) {
            counter!(COMMANDS, "verb" => verb, "outcome" => outcome).absolute(0);
        }
    }
    for path in PATHS {
        gauge!(SESSIONS_ACTIVE, "path" => path).set(0.0);
        let _ = histogram!(PAIRING_LATENCY, "path" => path);
        let _ = histogram!(SESSION_DURATION, "path" => path);
        for outcome in SESSION_OUTCOMES {
            counter!(SESSIONS_COMPLETED, "path" => path, "outcome" => outcome).absolute(0);
        }
        for direction in ["initiator_to_target", "target_to_initiator"] {
            counter!(BYTES, "path" => path, "direction" => direction).absolute(0);
        }
    }
    let _ = histogram!(PENDING_WAIT);
    for op in [
        "register",
        "lookup",
        "remove",
        "register_many",
        "heartbeat",
        "remove_node",
        "nodes_alive",
    ] {
        counter!(STORE_OPERATIONS, "op" => op).absolute(0);
        counter!(STORE_ERRORS, "op" => op).absolute(0);
        let _ = histogram!(STORE_LATENCY, "op" => op);
    }
    for role in ["client", "server"] {
        gauge!(BRIDGE_STREAMS, "role" => role).set(0.0);
    }
    for (role, reason) in [
        ("client", "unreachable"),
        ("client", "unauthenticated"),
        ("client", "protocol"),
        ("client", "broken"),
        ("server", "broken"),
        ("server", "stale_owner"),
    ] {
        counter!(BRIDGE_ERRORS, "role" => role, "reason" => reason).absolute(0);
    }
}

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
    pub connections_accepted: Counter,
    pub pending_wait: Histogram,
    pub create_ok: Counter,
    pub connect_ok: Counter,
    pub local: PathSeries,
    pub forwarded: PathSeries,
}

impl Hot {
    pub fn new() -> Self {
        Hot {
            connections_accepted: counter!(CONNECTIONS_ACCEPTED),
            pending_wait: histogram!(PENDING_WAIT),
            create_ok: counter!(COMMANDS, "verb" => "create", "outcome" => "ok"),
            connect_ok: counter!(COMMANDS, "verb" => "connect", "outcome" => "ok"),
            local: PathSeries::new("local"),
            forwarded: PathSeries::new("forwarded"),
        }
    }
}

/// The series of one session `path` (`local` or `forwarded`).
#[derive(Debug)]
pub(crate) struct PathSeries {
    pub path: &'static str,
    pub pairing_latency: Histogram,
    pub active: Gauge,
    pub initiator_to_target: Counter,
    pub target_to_initiator: Counter,
    pub duration: Histogram,
    /// `dtcp_sessions_completed_total`, by the outcomes `finished` reports.
    completed: [(&'static str, Counter); 5],
}

impl PathSeries {
    fn new(path: &'static str) -> Self {
        let completed = SESSION_OUTCOMES.map(|outcome| {
            let c = counter!(SESSIONS_COMPLETED, "path" => path, "outcome" => outcome);
            (outcome, c)
        });
        PathSeries {
            path,
            pairing_latency: histogram!(PAIRING_LATENCY, "path" => path),
            active: gauge!(SESSIONS_ACTIVE, "path" => path),
            initiator_to_target: counter!(BYTES, "path" => path, "direction" => "initiator_to_target"),
            target_to_initiator: counter!(BYTES, "path" => path, "direction" => "target_to_initiator"),
            duration: histogram!(SESSION_DURATION, "path" => path),
            completed,
        }
    }

    /// Counts a finished session.
    pub fn completed(&self, outcome: &'static str) {
        match self.completed.iter().find(|(o, _)| *o == outcome) {
            Some((_, c)) => c.increment(1),
            None => {
                counter!(SESSIONS_COMPLETED, "path" => self.path, "outcome" => outcome).increment(1)
            }
        }
    }
}
