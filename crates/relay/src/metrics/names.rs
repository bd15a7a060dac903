//! The name of every metric the relay exports.
//!
//! Counters end in `_total`, units are in the name, and labels take values
//! from small fixed sets only (never a key, a JID, an address or an id).

/// Client connections accepted.
pub const CONNECTIONS_ACCEPTED: &str = "dtcp_connections_accepted_total";
/// Client connections open now.
pub const CONNECTIONS_OPEN: &str = "dtcp_connections_open";
/// Client connections refused before any command, by `reason`.
pub const CONNECTIONS_REFUSED: &str = "dtcp_connections_refused_total";
/// Client addresses the connection rate limiter remembers now.
pub const CONNECTION_RATE_SOURCES: &str = "dtcp_connection_rate_sources";
/// Client addresses (IPv6: prefixes) holding a connection or a session now,
/// each with its share of the per-address limits.
pub const CLIENT_ADDRESSES: &str = "dtcp_client_addresses";
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
/// 1 while this node's `CONNECT` looks are tracked by Redis, else 0.
pub const STORE_LOOKS_TRACKED: &str = "dtcp_store_looks_tracked";
/// Paired sessions running now, by `path`.
pub const SESSIONS_ACTIVE: &str = "dtcp_sessions_active";
/// Paired sessions finished, by `path` and `outcome`.
pub const SESSIONS_COMPLETED: &str = "dtcp_sessions_completed_total";
/// Bytes relayed, by `path` and `direction`.
pub const BYTES: &str = "dtcp_relayed_bytes_total";
/// From a CONNECT's command to both sides holding `OK`, by `path` (a
/// XEP-0065 requester: from its request to its success reply).
pub const PAIRING_LATENCY: &str = "dtcp_pairing_latency_seconds";
/// How long a CREATE waited for its CONNECT.
pub const PENDING_WAIT: &str = "dtcp_pending_wait_seconds";
/// From `OK` to the end of a session, by `path`.
pub const SESSION_DURATION: &str = "dtcp_session_duration_seconds";
/// Each wait of a session direction held back by a bandwidth cap; the sum
/// is the time spent throttled.
pub const THROTTLED: &str = "dtcp_throttled_seconds";
/// Rendezvous store operations, by `op`.
pub const STORE_OPERATIONS: &str = "dtcp_store_operations_total";
/// Failed rendezvous store operations, by `op`.
pub const STORE_ERRORS: &str = "dtcp_store_errors_total";
/// Rendezvous store latency, by `op`.
pub const STORE_LATENCY: &str = "dtcp_store_latency_seconds";
/// Times this node wrote its pending registrations to the store again,
/// after the store had lost them.
pub const STORE_REWRITES: &str = "dtcp_store_rewrites_total";
/// Pending registrations written to the store again.
pub const STORE_REWRITTEN: &str = "dtcp_store_rewritten_registrations_total";
/// Nodes with a live heartbeat in the store, as this node last saw it.
pub const NODES_ALIVE: &str = "dtcp_nodes_alive";
/// IP addresses of the live peer nodes this node knows (their advertised
/// addresses, names resolved): a plane connection from one of them waits
/// for its first byte among the lanes attaching.
pub const PEER_ADDRESSES: &str = "dtcp_peer_addresses";
/// Bridge streams open now, by `role` (`client`: this node holds the
/// Target; `server`: it holds the Initiator).
pub const BRIDGE_STREAMS: &str = "dtcp_bridge_streams_active";
/// Bridges that failed, by `role` and `reason`.
pub const BRIDGE_ERRORS: &str = "dtcp_bridge_errors_total";
/// Bridges that paired, by `role` and the cluster `format` the peer named
/// in its first frame (`server`: the caller's `open`, the format it asked;
/// `client`: the owner's `paired`, the format it used): `0` from a node of
/// a release before the Bridge carried one, [`BRIDGE_FORMAT_LABELS`].
pub const BRIDGE_FORMATS: &str = "dtcp_bridge_formats_total";
/// Every `format` of [`BRIDGE_FORMATS`]: `0`, each format this release
/// knows, and `other` (a number past them, so that a peer cannot make the
/// series grow).
pub const BRIDGE_FORMAT_LABELS: [&str; 4] = ["0", "1", "2", "other"];

/// The `format` label of [`BRIDGE_FORMATS`] for a frame's `format` field.
pub fn bridge_format_label(field: u32) -> &'static str {
    match field {
        0 => "0",
        1 => "1",
        2 => "2",
        _ => "other",
    }
}
/// Refused credentials, by `reason`: a client's signed key (`bad_signature`,
/// `expired`, `lifetime`, `reused`), a Bridge call's authenticator
/// (`plane_mac`, `plane_replay`), a store record that is not the cluster's
/// (`bad_record`), a lane's token (`lane_token`: malformed or a MAC that
/// fails, `lane_expired`, `lane_replay`: used before or never offered).
pub const AUTH_FAILURES: &str = "dtcp_auth_failures_total";
/// Every `reason` of [`AUTH_FAILURES`].
pub const AUTH_FAILURE_REASONS: [&str; 10] = [
    "bad_signature",
    "expired",
    "lifetime",
    "reused",
    "plane_mac",
    "plane_replay",
    "bad_record",
    "lane_token",
    "lane_expired",
    "lane_replay",
];
/// Forwarded sessions started, by `via`: `lane` (their bytes cross on a
/// lane) or `bridge` (on the gRPC Bridge). Counted by the owner node.
pub const FORWARDED_SESSIONS: &str = "dtcp_forwarded_sessions_total";
/// Bytes of forwarded sessions, both directions, by `via`; counted by each
/// node when its side of a session ends.
pub const FORWARDED_BYTES: &str = "dtcp_forwarded_bytes_total";
/// Every `via` of [`FORWARDED_SESSIONS`] and [`FORWARDED_BYTES`].
pub const FORWARDED_VIAS: [&str; 2] = ["lane", "bridge"];
/// Lanes open now, by `role` (`client`: this node dialed it and holds the
/// Target; `server`: it holds the Initiator).
pub const LANES_ACTIVE: &str = "dtcp_lanes_active";
/// Lanes attaching now on this node's plane port: told to be lanes, their
/// preamble and token not read yet (under plane TLS, their handshake
/// first); and connections from a live peer's address whose first byte
/// (or ClientHello) has not come.
pub const LANES_ATTACHING: &str = "dtcp_lanes_attaching";
/// The places of [`LANES_ATTACHING`], fitted to the open-file limit (0 on a
/// node that offers no lanes): past them, the oldest not from a live
/// peer's address is reset (when every place is a peer's, the new lane).
pub const LANES_ATTACHING_MAX: &str = "dtcp_lanes_attaching_max";
/// Gauge: Bridge calls still open beside a lane (between a lane's attach
/// and the close of the call that paired it), by role.
pub const LANE_BRIDGES_OPEN: &str = "dtcp_lane_bridges_open";
/// Lanes this node offered that did not attach within the owner's wait:
/// dialed, but swallowed on the way (or the dialing node stalled). Each
/// such session is cut, both clients reset.
pub const LANE_WAITS_EXPIRED: &str = "dtcp_lane_waits_expired_total";
/// Lanes this node dialed, by `outcome`: `ok`, or why the session fell
/// back to its Bridge (see [`LANE_DIAL_OUTCOMES`]).
pub const LANE_DIALS: &str = "dtcp_lane_dials_total";
/// Every `outcome` of [`LANE_DIALS`]: dialed; refused; no connection within
/// `LANE_DIAL_TIMEOUT`; closed by the owner's port before the token came;
/// under plane TLS, a handshake that failed, or one where the owner agreed
/// on HTTP/2 rather than on TLS lanes; another failure; no connection slot
/// to spare; dialed while the claim was in flight but the owner offered
/// none (it is not dialed again for 10 s).
pub const LANE_DIAL_OUTCOMES: [&str; 9] = [
    "ok", "refused", "timeout", "reset", "tls", "alpn", "error", "no_slot", "declined",
];
/// Gauge: lanes this node dialed ahead to its peer nodes, idle in their
/// pools (`--lane-pool`).
pub const LANE_POOL_IDLE: &str = "dtcp_lane_pool_idle";
/// Lanes of this node's claims and of its pools, by `outcome` (see
/// [`LANE_POOL_OUTCOMES`]).
pub const LANE_POOL: &str = "dtcp_lane_pool_lanes_total";
/// Every `outcome` of [`LANE_POOL`]: a claim took a pooled lane; a claim
/// dialed its lane (no pooled one to take); a pooled lane dropped unused,
/// past its age (3 s); one found closed by the owner's port (its process
/// gone) and dropped; a dial ahead that failed (the peer's pool is
/// dropped); pooled lanes dropped with their peer's pool (the peer
/// declined a lane or could not be reached, or this node drains).
pub const LANE_POOL_OUTCOMES: [&str; 6] =
    ["taken", "dialed", "aged_out", "closed", "failed", "drained"];
/// XEP-0065 pairs on this node (their Target's owner) waiting for their
/// activation.
pub const SOCKS5_AWAITING: &str = "dtcp_socks5_pairs_awaiting_activation";
/// XEP-0065 pairs this node (their Target's owner) cut because they were
/// not activated within `--socks5-activation-timeout`.
pub const SOCKS5_EXPIRED: &str = "dtcp_socks5_pairs_expired_total";
/// The XMPP component link (XEP-0065 mode), by `state` (`down`, `standby`,
/// `connected`): 1 for the state it is in, 0 for the others.
pub const XMPP_LINK: &str = "dtcp_xmpp_link";
/// Activations this node's component asked for, by `outcome`.
pub const ACTIVATIONS: &str = "dtcp_xmpp_activations_total";
/// Every `outcome` of [`ACTIVATIONS`]: activated here or by the owner node,
/// no such pair, activated before, or the owner could not be asked.
pub const ACTIVATION_OUTCOMES: [&str; 4] =
    ["activated", "not_found", "already_activated", "failed"];
/// 1 while the node drains, else 0.
pub const DRAINING: &str = "dtcp_draining";
/// Always 1, labelled with the `version`.
pub const BUILD_INFO: &str = "dtcp_build_info";
/// Connections open now on the node's own listeners, by `listener`
/// (`plane`, `metrics`): each bounded by its cap.
pub const LISTENER_CONNECTIONS_OPEN: &str = "dtcp_listener_connections_open";
/// Connections the node's own listeners closed, by `listener` and `reason`
/// (see [`LISTENER_CLOSE_REASONS`]).
pub const LISTENER_CONNECTIONS_CLOSED: &str = "dtcp_listener_connections_closed_total";
/// Every `reason` of [`LISTENER_CONNECTIONS_CLOSED`]: refused at the cap
/// (every slot held by a connection that proved itself), evicted to make
/// room (the oldest still on probation), or on probation too long (nothing
/// useful: no authenticated call on the plane, no request on `metrics`, a
/// lane's preamble not whole within 5 s), or, on the plane, when every
/// place of [`LANES_ATTACHING_MAX`] was held: the oldest lane attaching not
/// from a live peer's address, or the new lane when every place was a
/// peer's.
pub const LISTENER_CLOSE_REASONS: [&str; 4] =
    ["max_connections", "evicted", "probation", "lanes_attaching"];
/// Every `listener` of the node's own listeners' series.
pub const LISTENERS: [&str; 2] = ["plane", "metrics"];
/// Accepts that failed on the node's own listeners, by `listener`: out of
/// descriptors (the listener backs off rather than spin).
pub const ACCEPT_FAILURES: &str = "dtcp_listener_accept_failures_total";
