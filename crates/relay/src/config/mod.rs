//! The relay's configuration: command-line flags, each also settable by an
//! environment variable (`DTCP_LISTEN` for `--listen`, and so on). The flags
//! are here; what they mean together (validation, the store's and the wire's
//! settings) in `validate.rs`; their value parsers in `parse.rs`.

mod parse;
#[cfg(test)]
mod tests;
mod validate;
mod xmpp;

pub use xmpp::XmppFlags;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::config::parse::{parse_bytes_rate, parse_rate, parse_secs};
use dtcp_wire::Limits;
use ipnet::IpNet;

/// Configuration of one relay node.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "dtcp-relay",
    version,
    about = "A DTCP relay node: pairs an Initiator and a Target by key and pipes bytes between them."
)]
pub struct Config {
    /// Client listener (IPv4 or IPv6).
    #[arg(long, env = "DTCP_LISTEN", default_value = "0.0.0.0:7777")]
    pub listen: SocketAddr,

    /// Prometheus `/metrics` (and `/healthz`, `/readyz`) listener.
    #[arg(long, env = "DTCP_METRICS_LISTEN", default_value = "0.0.0.0:9777")]
    pub metrics_listen: SocketAddr,

    /// Seconds a CREATE waits for its CONNECT.
    #[arg(long, env = "DTCP_PENDING_TTL", default_value = "300", value_parser = parse_secs, value_name = "SECS")]
    pub pending_ttl: Duration,

    /// Seconds a CONNECT waits for its CREATE.
    #[arg(long, env = "DTCP_CONNECT_GRACE", default_value = "5", value_parser = parse_secs, value_name = "SECS")]
    pub connect_grace: Duration,

    /// Seconds a client has to send its whole command.
    #[arg(long, env = "DTCP_HANDSHAKE_TIMEOUT", default_value = "10", value_parser = parse_secs, value_name = "SECS")]
    pub handshake_timeout: Duration,

    /// Open client connections per node; beyond it new ones get `resource-constraint`.
    #[arg(
        long,
        env = "DTCP_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_name = "N"
    )]
    pub max_connections: usize,

    /// Pending CREATEs per source address.
    #[arg(
        long,
        env = "DTCP_MAX_PENDING_PER_IP",
        default_value_t = 100,
        value_name = "N"
    )]
    pub max_pending_per_ip: usize,

    /// Expect a PROXY protocol header (version 1 or 2) from the load
    /// balancers of `--proxy-protocol-from`: its source address is then the
    /// client's for every limit and log line.
    #[arg(long, env = "DTCP_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,

    /// A network whose connections must begin with a PROXY protocol header
    /// (repeatable; the environment variable takes a comma-separated list).
    /// Required with `--proxy-protocol`. A header from any other source is
    /// refused `forbidden`.
    #[arg(
        long = "proxy-protocol-from",
        env = "DTCP_PROXY_PROTOCOL_FROM",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub proxy_protocol_from: Vec<IpNet>,

    /// New connections per second from one client address (`N/s`; `0`: no
    /// limit); beyond it (and its burst) a connection gets
    /// `resource-constraint` at once. Counted when the connection is
    /// accepted (after the PROXY header, behind a trusted balancer), so that
    /// connections that never speak count too. The default lets one address
    /// fill its `--max-connections-per-ip` share in ten seconds at the
    /// earliest, about a handshake timeout: silent connections expire about
    /// as fast as one address can open them.
    // A path, not a bare `Option`, so that clap takes the parser's
    // `Option` as the value (`0` parses to `None`) and keeps the default.
    #[arg(long, env = "DTCP_MAX_CONNECTION_RATE_PER_IP", default_value = "20/s", value_parser = parse_rate, value_name = "N/s")]
    pub max_connection_rate_per_ip: std::option::Option<NonZeroU32>,

    /// Open connections one client address may hold at once, whatever their
    /// phase (handshaking, pending, waiting, paired). Beyond it a new
    /// connection gets `resource-constraint` at once. The default is twice
    /// `--max-pending-per-ip`'s (each CREATE of an address and its CONNECT
    /// from the same address) and 2 % of `--max-connections`: one address
    /// cannot take the node's slots, while many users behind one NAT still fit.
    #[arg(
        long,
        env = "DTCP_MAX_CONNECTIONS_PER_IP",
        default_value_t = 200,
        value_name = "N"
    )]
    pub max_connections_per_ip: u32,

    /// Paired sessions one client address may take part in at once (a
    /// session of two clients counts against each address, once against an
    /// address that is both). A pairing beyond it is refused
    /// `resource-constraint` to both clients, and a CREATE or CONNECT from an
    /// address at its share is refused at once. Bounds a client that pairs
    /// with itself again and again to hold slots for ever.
    #[arg(
        long,
        env = "DTCP_MAX_SESSIONS_PER_IP",
        default_value_t = 100,
        value_name = "N"
    )]
    pub max_sessions_per_ip: u32,

    /// The prefix length an IPv6 client is counted by in every per-address
    /// limit (connections, rate, pending CREATEs, sessions, and the
    /// cluster-wide count in the store): one subscriber usually holds a
    /// whole /64, and could otherwise take a share per address. IPv4 (an
    /// IPv4-mapped IPv6 address included) is always counted by address.
    #[arg(
        long,
        env = "DTCP_IPV6_PREFIX_LEN",
        default_value_t = 64,
        value_parser = clap::value_parser!(u8).range(1..=128),
        value_name = "BITS"
    )]
    pub ipv6_prefix_len: u8,

    /// Connections one client address may open at once above its rate.
    /// Default: one second's worth of the rate.
    #[arg(long, env = "DTCP_CONNECTION_BURST_PER_IP", value_name = "N")]
    pub connection_burst_per_ip: Option<NonZeroU32>,

    /// Bandwidth cap of each direction of a session, in bytes a second
    /// (`10M/s`: K, M, G are powers of 1000, Ki, Mi, Gi of 1024). A session
    /// over it is slowed down (the relay stops reading), never cut. Unset: none.
    #[arg(long, env = "DTCP_MAX_SESSION_RATE", value_parser = parse_bytes_rate, value_name = "BYTES/s")]
    pub max_session_rate: Option<u64>,

    /// Bandwidth cap of the whole node (every direction of every session),
    /// in bytes a second, as `--max-session-rate`. Unset: none.
    #[arg(long, env = "DTCP_MAX_NODE_RATE", value_parser = parse_bytes_rate, value_name = "BYTES/s")]
    pub max_node_rate: Option<u64>,

    /// Close (reset) a paired session after this many seconds with no bytes
    /// either way (0: never). On by default so that an idle session cannot
    /// hold two connection slots for ever; an application that keeps a
    /// quiet stream open longer must send something (a keepalive) within
    /// it, or the operator raises it.
    #[arg(long, env = "DTCP_IDLE_TIMEOUT", default_value = "300", value_parser = parse_secs, value_name = "SECS")]
    pub idle_timeout: Duration,

    /// On SIGTERM/SIGINT: answer new commands `shutting-down` and let paired
    /// sessions run this many seconds at most, then exit 0.
    #[arg(long, env = "DTCP_DRAIN_TIMEOUT", default_value = "30", value_parser = parse_secs, value_name = "SECS")]
    pub drain_timeout: Duration,

    /// Serve only sessions in which the Initiator's or the Target's JID is
    /// of one of these domains (repeatable; the environment variable takes a
    /// comma-separated list). Others get `forbidden`. Unset: any domain.
    #[arg(
        long = "allow-domain",
        env = "DTCP_ALLOW_DOMAINS",
        value_delimiter = ',',
        value_name = "DOMAIN"
    )]
    pub allow_domains: Vec<String>,

    /// Redis for the rendezvous store: turns on cluster mode. Repeat it (or
    /// give a comma-separated list) for the seed nodes of a Redis Cluster.
    /// `redis://` or `rediss://` (TLS). Unset: a lone node with an in-memory store.
    #[arg(
        long = "redis-url",
        env = "DTCP_REDIS_URL",
        value_delimiter = ',',
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis_urls: Vec<String>,

    /// Treat a single `--redis-url` as a Redis Cluster seed.
    #[arg(long, env = "DTCP_REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// Do not ask Redis to track this node's looks (`CLIENT TRACKING`): a
    /// CONNECT that comes before its CREATE then leaves a waiter entry,
    /// which costs two more commands a pair (for a proxy in front of Redis
    /// that refuses tracking). On a Redis Cluster every master tracks.
    #[arg(long, env = "DTCP_NO_REDIS_TRACKING")]
    pub no_redis_tracking: bool,

    /// A Redis Sentinel to ask for the master, instead of `--redis-url`:
    /// turns on cluster mode, and nodes follow the master through failovers.
    /// Repeat it (or give a comma-separated list) for every sentinel.
    /// `HOST:PORT`, or `rediss://HOST:PORT` for TLS (to the master too).
    #[arg(
        long = "redis-sentinel",
        env = "DTCP_REDIS_SENTINELS",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    pub redis_sentinels: Vec<String>,

    /// The name the sentinels monitor the master under (`sentinel monitor NAME ...`).
    #[arg(long, env = "DTCP_REDIS_SENTINEL_MASTER", value_name = "NAME")]
    pub redis_sentinel_master: Option<String>,

    /// Password of the Redis servers; `--redis-password-file` keeps it out
    /// of the process list.
    #[arg(
        long,
        env = "DTCP_REDIS_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD",
        conflicts_with = "redis_password_file"
    )]
    pub redis_password: Option<String>,

    /// File holding the password of the Redis servers (a trailing newline is ignored).
    #[arg(long, env = "DTCP_REDIS_PASSWORD_FILE", value_name = "PATH")]
    pub redis_password_file: Option<PathBuf>,

    /// Password of the sentinels themselves; `--redis-sentinel-password-file`
    /// keeps it out of the process list.
    #[arg(
        long,
        env = "DTCP_REDIS_SENTINEL_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD",
        conflicts_with = "redis_sentinel_password_file"
    )]
    pub redis_sentinel_password: Option<String>,

    /// File holding the password of the sentinels (a trailing newline is ignored).
    #[arg(long, env = "DTCP_REDIS_SENTINEL_PASSWORD_FILE", value_name = "PATH")]
    pub redis_sentinel_password_file: Option<PathBuf>,

    /// PEM CA that signs the Redis servers' certificates (a managed Redis
    /// with its own CA, or any private CA). Without it the relay trusts the
    /// web PKI roots built into it, not the system's trust store. For `rediss://`.
    #[arg(long, env = "DTCP_REDIS_CA", value_name = "PEM")]
    pub redis_ca: Option<PathBuf>,

    /// PEM client certificate presented to Redis (`tls-auth-clients`). For `rediss://`.
    #[arg(
        long,
        env = "DTCP_REDIS_CLIENT_CERT",
        value_name = "PEM",
        requires = "redis_client_key"
    )]
    pub redis_client_cert: Option<PathBuf>,

    /// PEM private key of `--redis-client-cert`.
    #[arg(
        long,
        env = "DTCP_REDIS_CLIENT_KEY",
        value_name = "PEM",
        requires = "redis_client_cert"
    )]
    pub redis_client_key: Option<PathBuf>,

    /// Seconds connecting to one Redis server may take.
    #[arg(long, env = "DTCP_REDIS_CONNECT_TIMEOUT", default_value = "1", value_parser = parse_secs, value_name = "SECS")]
    pub redis_connect_timeout: Duration,

    /// Seconds one Redis reply may take.
    #[arg(long, env = "DTCP_REDIS_RESPONSE_TIMEOUT", default_value = "1.5", value_parser = parse_secs, value_name = "SECS")]
    pub redis_response_timeout: Duration,

    /// Seconds one store operation may take in all, reconnections and
    /// retries included; past it the client gets `unavailable`.
    #[arg(long, env = "DTCP_REDIS_OPERATION_TIMEOUT", default_value = "3", value_parser = parse_secs, value_name = "SECS")]
    pub redis_operation_timeout: Duration,

    /// Prefix of every Redis key this cluster uses.
    #[arg(
        long,
        env = "DTCP_REDIS_PREFIX",
        default_value = "dtcp:",
        value_name = "P"
    )]
    pub redis_prefix: String,

    /// The newest cluster format this node speaks (1 or 2). For upgrades
    /// only (docs/RUNBOOK.md): 1 makes it speak and present itself as a
    /// node of the release before format versions. A node speaks the
    /// newest format every live node speaks in any case (in the store),
    /// and on each Bridge the newest it and that peer speak.
    #[arg(
        long,
        env = "DTCP_CLUSTER_FORMAT_VERSION",
        default_value_t = dtcp_store::FORMAT_NEWEST,
        value_parser = clap::value_parser!(u32).range(1..=2),
        value_name = "N"
    )]
    pub cluster_format_version: u32,

    /// gRPC forwarding plane and gRPC health (cluster mode).
    #[arg(long, env = "DTCP_FORWARD_LISTEN", default_value = "0.0.0.0:7778")]
    pub forward_listen: SocketAddr,

    /// Connections the forwarding plane's port holds at once (cluster mode).
    /// A node needs one per peer node, kept open. A new connection is on
    /// probation until its first authenticated call (a few seconds); when
    /// the port is full, the oldest connection still on probation is closed
    /// to make room, and a connection finds no room only when every one is
    /// a peer's.
    #[arg(
        long,
        env = "DTCP_PLANE_MAX_CONNECTIONS",
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub plane_max_connections: u32,

    /// Concurrent HTTP/2 streams per forwarding plane connection (cluster
    /// mode): each is one session forwarded from the peer node, so a peer
    /// never needs more than its own `--max-connections` (the default).
    #[arg(
        long,
        env = "DTCP_PLANE_MAX_STREAMS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub plane_max_streams: u32,

    /// `HOST:PORT` other nodes dial to reach this node's forwarding plane (in
    /// Kubernetes, the pod IP). Default: the forward listener's address, if it
    /// is a concrete one.
    #[arg(long, env = "DTCP_ADVERTISE_ADDR", value_name = "HOST:PORT")]
    pub advertise_addr: Option<String>,

    /// This node's id in the store: this value and a suffix of 8 hex digits
    /// drawn at each start (`<ID>-<suffix>`), so that a restarted process is a
    /// new node. Default: a fresh UUID v4 per start.
    #[arg(long, env = "DTCP_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,

    /// Shared by all nodes: it signs every Bridge call and every store record
    /// (it never leaves the node). For development; prefer `--cluster-secret-file`.
    #[arg(
        long,
        env = "DTCP_CLUSTER_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub cluster_secret: Option<String>,
    /// A file of cluster secrets, one per line: the first signs, all verify
    /// (a rotation is add, roll, remove). Re-read when it changes.
    #[arg(long, env = "DTCP_CLUSTER_SECRET_FILE", value_name = "PATH")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Accept only keys signed with this secret (docs/PROTOCOL.md section 5;
    /// repeatable, any may verify). For development; prefer `--key-secret-file`.
    #[arg(
        long = "key-secret",
        env = "DTCP_KEY_SECRETS",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub key_secrets: Vec<String>,
    /// A file of key secrets, one per line, all of which verify
    /// (repeatable). Re-read when it changes.
    #[arg(
        long = "key-secret-file",
        env = "DTCP_KEY_SECRET_FILES",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    pub key_secret_files: Vec<PathBuf>,
    /// Longest lifetime of a signed key: an expiry further ahead is `forbidden`.
    #[arg(long, env = "DTCP_MAX_KEY_LIFETIME", default_value = "86400", value_parser = parse_secs, value_name = "SECS")]
    pub max_key_lifetime: Duration,

    /// Allow cluster mode without a cluster secret (anyone who can reach the
    /// forwarding port can then take over pending sessions).
    #[arg(long, env = "DTCP_INSECURE_PLANE")]
    pub insecure_plane: bool,

    /// PEM certificate (chain) this node presents on the forwarding plane: turns on TLS.
    #[arg(
        long,
        env = "DTCP_FORWARD_TLS_CERT",
        value_name = "PEM",
        requires = "forward_tls_key"
    )]
    pub forward_tls_cert: Option<PathBuf>,

    /// PEM private key of `--forward-tls-cert`.
    #[arg(
        long,
        env = "DTCP_FORWARD_TLS_KEY",
        value_name = "PEM",
        requires = "forward_tls_cert"
    )]
    pub forward_tls_key: Option<PathBuf>,

    /// PEM CA that signs the nodes' certificates: nodes must then present one
    /// (mutual TLS). Without it, nodes trust `--forward-tls-cert` itself (one
    /// certificate shared by all nodes) and do not authenticate callers by TLS.
    #[arg(
        long,
        env = "DTCP_FORWARD_TLS_CA",
        value_name = "PEM",
        requires = "forward_tls_cert"
    )]
    pub forward_tls_ca: Option<PathBuf>,

    /// The name the nodes' certificates carry, checked when dialing.
    #[arg(
        long,
        env = "DTCP_FORWARD_TLS_SERVER_NAME",
        default_value = "dtcp-relay",
        value_name = "NAME"
    )]
    pub forward_tls_server_name: String,

    /// Longest key, in bytes.
    #[arg(long, env = "DTCP_MAX_KEY_LEN", default_value_t = Limits::default().max_key_len, value_name = "BYTES")]
    pub max_key_len: usize,

    /// Longest JID, in bytes.
    #[arg(long, env = "DTCP_MAX_JID_LEN", default_value_t = Limits::default().max_jid_len, value_name = "BYTES")]
    pub max_jid_len: usize,

    /// Longest whole command, in bytes.
    #[arg(long, env = "DTCP_MAX_COMMAND_LEN", default_value_t = Limits::default().max_command_len, value_name = "BYTES")]
    pub max_command_len: usize,

    /// Move bytes through a user-space buffer rather than with splice(2)
    /// (Linux only; the portable way, for comparison or a kernel that misbehaves).
    #[arg(long, env = "DTCP_NO_SPLICE")]
    pub no_splice: bool,

    /// Cluster mode: neither offer nor dial lanes, so that every forwarded
    /// session's bytes cross on its gRPC Bridge, as a node of a version
    /// without lanes does (under plane TLS, lanes are TLS too).
    #[arg(long, env = "DTCP_NO_LANES")]
    pub no_lanes: bool,

    /// Cluster mode: lanes kept dialed ahead per peer node (0, the
    /// default: none), so that a claim takes one instead of dialing it
    /// (under plane TLS, its handshake done): for nodes whose round trip
    /// between them is long. Filled by demand only: each claim offered a
    /// lane dials one more, up to N; one unused for 3 s is closed and not
    /// replaced, so an idle cluster dials nothing.
    #[arg(
        long,
        env = "DTCP_LANE_POOL",
        default_value_t = 0,
        value_parser = clap::value_parser!(u32).range(0..=dtcp_forward::LANE_POOL_MAX as i64),
        value_name = "N"
    )]
    pub lane_pool: u32,

    /// Log format.
    #[arg(long, env = "DTCP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// XEP-0065 mode's XMPP component (config/xmpp.rs).
    #[command(flatten)]
    pub xmpp: XmppFlags,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}
