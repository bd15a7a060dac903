//! Every metric the relay exports: names ([`names`]), help texts, units and
//! histogram buckets in one place; the handles of the hot series; the store's
//! instrumentation.

mod hot;
pub mod names;
mod store;

use std::time::Duration;

use dtcp_wire::Condition;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

pub(crate) use hot::{Hot, PathSeries, session_labels};
pub use names::*;
pub(crate) use store::{Instrumented, STORE_OPS};

use crate::outcome::Outcome;
use crate::protocol::Protocol;

/// Buckets of the latency histograms, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets of the duration histograms, in seconds: 10 ms to a day.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.1, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// The handles a node's lane pools count in.
pub(crate) fn lane_pool() -> dtcp_forward::PoolMetrics {
    let outcome = |outcome: &'static str| counter!(LANE_POOL, "outcome" => outcome);
    dtcp_forward::PoolMetrics {
        idle: gauge!(LANE_POOL_IDLE),
        taken: outcome("taken"),
        dialed: outcome("dialed"),
        aged_out: outcome("aged_out"),
        closed: outcome("closed"),
        failed: outcome("failed"),
        drained: outcome("drained"),
    }
}

/// Installs the global Prometheus recorder and describes every metric.
///
/// Histograms get explicit buckets so that they are exported as Prometheus
/// histograms (summable across nodes), not summaries.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(PAIRING_LATENCY.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(PENDING_WAIT.into()), DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(STORE_LATENCY.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(THROTTLED.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(SESSION_DURATION.into()), DURATION_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// The `reason` label of `dtcp_connections_refused_total`.
/// `per_ip_connections`: the client's address holds its share of open
/// connections (`--max-connections-per-ip`); `per_ip_sessions`: a pairing
/// refused because a client's address takes part in its share of paired
/// sessions (`--max-sessions-per-ip`).
pub const REFUSAL_REASONS: [&str; 5] = [
    "max_connections",
    "descriptors",
    "connection_rate",
    "per_ip_connections",
    "per_ip_sessions",
];

/// How often the exporter's histograms are compacted.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

fn describe() {
    describe_counter!(CONNECTIONS_ACCEPTED, "Client connections accepted.");
    describe_gauge!(CONNECTIONS_OPEN, "Client connections open now.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections refused by a connection limit, by reason (max_connections, descriptors, connection_rate, per_ip_connections before any command; per_ip_sessions at pairing)."
    );
    describe_gauge!(
        CLIENT_ADDRESSES,
        "Client addresses (IPv6: prefixes) holding a connection or a session now."
    );
    describe_gauge!(
        CONNECTION_RATE_SOURCES,
        "Client addresses the connection rate limiter remembers now."
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
    describe_gauge!(
        STORE_LOOKS_TRACKED,
        "1 while Redis tracks this node's CONNECT looks (one that comes before its CREATE leaves no waiter entry), 0 while they leave waiter entries (absent without Redis)."
    );
    describe_gauge!(SESSIONS_ACTIVE, "Paired sessions running now, by path.");
    describe_counter!(
        SESSIONS_COMPLETED,
        "Paired sessions finished, by path and outcome (how they ended: closed, reset, or a cut)."
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
    describe_histogram!(
        THROTTLED,
        Unit::Seconds,
        "Each wait of a session direction held back by a bandwidth cap (the sum is the time spent throttled)."
    );
    describe_counter!(STORE_OPERATIONS, "Rendezvous store operations, by op.");
    describe_counter!(STORE_ERRORS, "Failed rendezvous store operations, by op.");
    describe_histogram!(
        STORE_LATENCY,
        Unit::Seconds,
        "Rendezvous store latency, by op."
    );
    describe_counter!(
        STORE_REWRITES,
        "Times this node wrote its pending registrations to the store again, after the store had lost them (a restart, a failover)."
    );
    describe_counter!(
        STORE_REWRITTEN,
        "Pending registrations written to the store again."
    );
    describe_gauge!(
        NODES_ALIVE,
        "Nodes with a live heartbeat in the store, as this node last saw it (1 on a lone node: itself)."
    );
    describe_gauge!(
        PEER_ADDRESSES,
        "IP addresses of the live peer nodes this node knows: a plane connection from one waits for its first byte among the lanes attaching."
    );
    describe_gauge!(
        BRIDGE_STREAMS,
        "Bridge streams open now, by role (client: holds the Target; server: holds the Initiator)."
    );
    describe_counter!(BRIDGE_ERRORS, "Bridges that failed, by role and reason.");
    describe_counter!(
        BRIDGE_FORMATS,
        "Bridges that paired, by role and the cluster format the peer's first frame named (0: none)."
    );
    describe_counter!(
        FORWARDED_SESSIONS,
        "Forwarded sessions started, by via (lane or bridge), counted by the owner node."
    );
    describe_counter!(
        FORWARDED_BYTES,
        Unit::Bytes,
        "Bytes of forwarded sessions, both directions, by via, counted by each node as its side ends."
    );
    describe_gauge!(LANES_ACTIVE, "Lanes open now, by role.");
    describe_gauge!(
        LANES_ATTACHING,
        "Lanes attaching now on the plane port (their token not read yet), and a live peer's connections whose first byte has not come."
    );
    describe_gauge!(
        LANES_ATTACHING_MAX,
        "Places of lanes attaching, fitted to the open-file limit: past them the oldest not from a live peer's address is reset (when every place is a peer's, the new lane)."
    );
    describe_gauge!(
        LANE_BRIDGES_OPEN,
        "Bridge calls still open beside a lane, by role (each closes once its lane has attached)."
    );
    describe_counter!(
        LANE_WAITS_EXPIRED,
        "Lanes this node offered that did not attach within its wait; their sessions were cut."
    );
    describe_counter!(
        LANE_DIALS,
        "Lanes offered by an owner that this node dialed, by outcome (ok, or why the Bridge carried the session)."
    );
    describe_gauge!(
        LANE_POOL_IDLE,
        "Lanes this node dialed ahead to its peer nodes, idle in their pools."
    );
    describe_counter!(
        LANE_POOL,
        "Lanes of this node's claims and pools, by outcome (taken from a pool, dialed at the claim, aged out, closed, failed, drained)."
    );
    describe_counter!(
        AUTH_FAILURES,
        "Refused credentials (signed keys, Bridge authenticators, store records), by reason."
    );
    describe_gauge!(
        SOCKS5_AWAITING,
        "XEP-0065 pairs on this node waiting for their activation."
    );
    describe_counter!(
        SOCKS5_EXPIRED,
        "XEP-0065 pairs cut because they were not activated within --socks5-activation-timeout."
    );
    describe_gauge!(
        XMPP_LINK,
        "The XMPP component link, by state (down, standby, connected): 1 for its state, 0 for the others."
    );
    describe_counter!(
        ACTIVATIONS,
        "XEP-0065 activations this node's component asked for, by outcome."
    );
    describe_gauge!(
        LISTENER_CONNECTIONS_OPEN,
        "Connections open now on the node's own listeners (plane, metrics), by listener."
    );
    describe_counter!(
        LISTENER_CONNECTIONS_CLOSED,
        "Connections the node's own listeners closed, by listener and reason (max_connections: refused at the cap; evicted: the oldest on probation, to make room; probation: nothing useful in time, a lane's preamble included; lanes_attaching: every place of dtcp_lanes_attaching_max held, the oldest not from a live peer's address reset to make room, or the new lane when every place was a peer's)."
    );
    describe_counter!(
        ACCEPT_FAILURES,
        "Accepts that failed on the node's own listeners (out of descriptors), by listener."
    );
    describe_gauge!(DRAINING, "1 while the node drains, else 0.");
    describe_gauge!(BUILD_INFO, "Always 1, labelled with the relay's version.");
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    init_series();
}

/// Every series the relay can export, at zero: a fresh node shows them all,
/// so that `rate()` and dashboards work from the first scrape instead of
/// showing "No data" until the first event of each kind.
fn init_series() {
    const PATHS: [&str; 2] = ["local", "forwarded"];
    for gauge in [
        DRAINING,
        PENDING,
        CONNECTIONS_OPEN,
        STORE_REGISTRATIONS,
        NODES_ALIVE,
        PEER_ADDRESSES,
        CONNECTION_RATE_SOURCES,
        CLIENT_ADDRESSES,
    ] {
        gauge!(gauge).set(0.0);
    }
    counter!(CONNECTIONS_ACCEPTED).absolute(0);
    counter!(STORE_REWRITES).absolute(0);
    counter!(STORE_REWRITTEN).absolute(0);
    for reason in REFUSAL_REASONS {
        counter!(CONNECTIONS_REFUSED, "reason" => reason).absolute(0);
    }
    let conditions = Condition::ALL.map(Condition::as_str);
    for condition in conditions {
        counter!(ERRORS, "condition" => condition).absolute(0);
    }
    for verb in ["create", "connect", "unknown"] {
        for outcome in conditions.into_iter().chain(["ok", "abandoned"]) {
            counter!(COMMANDS, "verb" => verb, "outcome" => outcome).absolute(0);
        }
    }
    for (path, protocol) in PATHS
        .into_iter()
        .flat_map(|p| [(p, Protocol::Dtcp), (p, Protocol::Socks5)])
    {
        let labels = |extra: &[(&'static str, &'static str)]| session_labels(path, protocol, extra);
        gauge!(SESSIONS_ACTIVE, labels(&[])).set(0.0);
        let _ = histogram!(PAIRING_LATENCY, labels(&[]));
        let _ = histogram!(SESSION_DURATION, labels(&[]));
        for outcome in Outcome::ALL {
            counter!(SESSIONS_COMPLETED, labels(&[("outcome", outcome.label())])).absolute(0);
        }
        for direction in ["initiator_to_target", "target_to_initiator"] {
            counter!(BYTES, labels(&[("direction", direction)])).absolute(0);
        }
    }
    // XEP-0065 mode: each SOCKS5 connection is counted once, by its role
    // (`unknown` when refused before it had one) and its reply.
    let socks5_replies = [
        "ok",
        "no-acceptable-method",
        "general-failure",
        "not-allowed",
        "command-not-supported",
        "address-type-not-supported",
    ];
    for verb in ["unknown", "target", "requester"] {
        for outcome in socks5_replies {
            counter!(COMMANDS, "protocol" => "socks5", "verb" => verb, "outcome" => outcome)
                .absolute(0);
        }
    }
    gauge!(SOCKS5_AWAITING).set(0.0);
    counter!(SOCKS5_EXPIRED).absolute(0);
    for state in dtcp_xmpp::LinkState::ALL {
        gauge!(XMPP_LINK, "state" => state.label()).set(0.0);
    }
    for outcome in ACTIVATION_OUTCOMES {
        counter!(ACTIVATIONS, "outcome" => outcome).absolute(0);
    }
    let _ = histogram!(PENDING_WAIT);
    let _ = histogram!(THROTTLED);
    for op in STORE_OPS {
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
    for role in ["client", "server"] {
        for format in BRIDGE_FORMAT_LABELS {
            counter!(BRIDGE_FORMATS, "role" => role, "format" => format).absolute(0);
        }
    }
    for via in FORWARDED_VIAS {
        counter!(FORWARDED_SESSIONS, "via" => via).absolute(0);
        counter!(FORWARDED_BYTES, "via" => via).absolute(0);
    }
    for role in ["client", "server"] {
        gauge!(LANES_ACTIVE, "role" => role).set(0.0);
        gauge!(LANE_BRIDGES_OPEN, "role" => role).set(0.0);
    }
    gauge!(LANES_ATTACHING).set(0.0);
    counter!(LANE_WAITS_EXPIRED).absolute(0);
    for outcome in LANE_DIAL_OUTCOMES {
        counter!(LANE_DIALS, "outcome" => outcome).absolute(0);
    }
    gauge!(LANE_POOL_IDLE).set(0.0);
    for outcome in LANE_POOL_OUTCOMES {
        counter!(LANE_POOL, "outcome" => outcome).absolute(0);
    }
    for reason in AUTH_FAILURE_REASONS {
        counter!(AUTH_FAILURES, "reason" => reason).absolute(0);
    }
    for listener in LISTENERS {
        gauge!(LISTENER_CONNECTIONS_OPEN, "listener" => listener).set(0.0);
        counter!(ACCEPT_FAILURES, "listener" => listener).absolute(0);
        for reason in LISTENER_CLOSE_REASONS {
            counter!(LISTENER_CONNECTIONS_CLOSED, "listener" => listener, "reason" => reason)
                .absolute(0);
        }
    }
}
