//! The relay's configuration: command-line flags, each also settable by an
//! environment variable (`DTCP_LISTEN` for `--listen`, and so on).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dtcp_store::{RedisConfig, SentinelConfig};
use dtcp_wire::Limits;

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

    /// Close a paired session after this many seconds with no bytes either way (0: never).
    #[arg(long, env = "DTCP_IDLE_TIMEOUT", default_value = "0", value_parser = parse_secs, value_name = "SECS")]
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

    /// gRPC forwarding plane and gRPC health (cluster mode).
    #[arg(long, env = "DTCP_FORWARD_LISTEN", default_value = "0.0.0.0:7778")]
    pub forward_listen: SocketAddr,

    /// `HOST:PORT` other nodes dial to reach this node's forwarding plane (in
    /// Kubernetes, the pod IP). Default: the forward listener's address, if it
    /// is a concrete one.
    #[arg(long, env = "DTCP_ADVERTISE_ADDR", value_name = "HOST:PORT")]
    pub advertise_addr: Option<String>,

    /// This node's id in the store. Default: a fresh UUID v4 per start.
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
    /// Accept only keys signed with this secret (PROTOCOL.md section 5;
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

    /// Log format.
    #[arg(long, env = "DTCP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl Config {
    /// The command limits of the wire codec.
    pub fn limits(&self) -> Limits {
        Limits {
            max_key_len: self.max_key_len,
            max_jid_len: self.max_jid_len,
            max_command_len: self.max_command_len,
        }
    }

    /// Whether the node runs as part of a cluster (a shared store is configured).
    pub fn cluster(&self) -> bool {
        !self.redis_urls.is_empty() || !self.redis_sentinels.is_empty()
    }

    /// The shared store's configuration, passwords read from their files.
    pub fn redis_config(&self) -> Result<RedisConfig, String> {
        let secret = |value: &Option<String>, file: &Option<PathBuf>, flag: &str| match file {
            Some(path) => read_secret(path, flag).map(Some),
            None => Ok(value.clone()),
        };
        let sentinel = match &self.redis_sentinel_master {
            Some(master) if !self.redis_sentinels.is_empty() => Some(SentinelConfig {
                master: master.clone(),
                sentinels: self.redis_sentinels.clone(),
                password: secret(
                    &self.redis_sentinel_password,
                    &self.redis_sentinel_password_file,
                    "--redis-sentinel-password-file",
                )?,
            }),
            _ => None,
        };
        Ok(RedisConfig {
            urls: self.redis_urls.clone(),
            cluster: self.redis_cluster,
            sentinel,
            password: secret(
                &self.redis_password,
                &self.redis_password_file,
                "--redis-password-file",
            )?,
            prefix: self.redis_prefix.clone(),
            connect_timeout: self.redis_connect_timeout,
            response_timeout: self.redis_response_timeout,
            operation_timeout: self.redis_operation_timeout,
            ..RedisConfig::default()
        })
    }

    /// The Redis flags that contradict each other.
    fn validate_redis(&self) -> Result<(), String> {
        let sentinel = !self.redis_sentinels.is_empty();
        if sentinel && !self.redis_urls.is_empty() {
            return Err("--redis-sentinel and --redis-url exclude each other: give one".into());
        }
        if sentinel && self.redis_cluster {
            return Err("--redis-cluster does not apply to --redis-sentinel".into());
        }
        if sentinel != self.redis_sentinel_master.is_some() {
            return Err("--redis-sentinel and --redis-sentinel-master go together".into());
        }
        if self.redis_sentinel_master.as_deref() == Some("") {
            return Err("--redis-sentinel-master is empty".into());
        }
        if !sentinel
            && (self.redis_sentinel_password.is_some()
                || self.redis_sentinel_password_file.is_some())
        {
            return Err("a sentinel password needs --redis-sentinel".into());
        }
        if let Some(bad) = self
            .redis_sentinels
            .iter()
            .find(|a| !a.contains("://") && !is_host_port(a))
        {
            return Err(format!("--redis-sentinel {bad:?} is not HOST:PORT"));
        }
        let timeouts = [
            ("--redis-connect-timeout", self.redis_connect_timeout),
            ("--redis-response-timeout", self.redis_response_timeout),
            ("--redis-operation-timeout", self.redis_operation_timeout),
        ];
        if let Some((flag, _)) = timeouts.iter().find(|(_, t)| t.is_zero()) {
            return Err(format!("{flag} must be more than 0"));
        }
        if self.redis_response_timeout > self.redis_operation_timeout
            || self.redis_connect_timeout > self.redis_operation_timeout
        {
            return Err(
                "--redis-operation-timeout bounds the others: it must be at least \
                 --redis-connect-timeout and --redis-response-timeout"
                    .into(),
            );
        }
        Ok(())
    }

    /// Refuses inconsistent combinations before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_redis()?;
        let has_secret = self.cluster_secret.is_some() || self.cluster_secret_file.is_some();
        if self.cluster() && !has_secret && !self.insecure_plane {
            return Err(
                "cluster mode needs --cluster-secret-file or --cluster-secret (or --insecure-plane to run without one)"
                    .into(),
            );
        }
        if self.cluster_secret.is_some() && self.cluster_secret_file.is_some() {
            return Err("give --cluster-secret or --cluster-secret-file, not both".into());
        }
        if self.key_secrets.iter().any(String::is_empty) {
            return Err("a --key-secret is empty".into());
        }
        if self.cluster_secret.as_deref() == Some("") {
            return Err("--cluster-secret is empty".into());
        }
        if let Some(id) = &self.node_id
            && (id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err("--node-id must be non-empty and without spaces".into());
        }
        if self.advertise_addr.is_none()
            && self.cluster()
            && self.forward_listen.ip().is_unspecified()
        {
            return Err(format!(
                "--forward-listen {} is not an address other nodes can dial: set --advertise-addr",
                self.forward_listen
            ));
        }
        Ok(())
    }

    /// Whether the domain policy lets a session between these JIDs through.
    pub fn allows(&self, initiator: &str, target: &str) -> bool {
        self.allow_domains.is_empty()
            || [initiator, target].iter().any(|jid| {
                let domain = dtcp_wire::domainpart(jid);
                self.allow_domains
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(domain))
            })
    }

    /// Whether only signed keys are accepted.
    pub fn signed_keys(&self) -> bool {
        !self.key_secrets.is_empty() || !self.key_secret_files.is_empty()
    }

    /// The idle timeout, if one is set.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (!self.idle_timeout.is_zero()).then_some(self.idle_timeout)
    }
}

/// `HOST:PORT` with a port number.
fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// A secret from a file: its contents less a trailing newline.
fn read_secret(path: &std::path::Path, flag: &str) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!("{flag} {} is empty", path.display()));
    }
    Ok(secret.to_owned())
}

/// Seconds, whole or fractional (`0.5`), as a duration.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a valid number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::try_parse_from(["dtcp-relay"]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:7777".parse().unwrap());
        assert_eq!(c.metrics_listen, "0.0.0.0:9777".parse().unwrap());
        assert_eq!(c.pending_ttl, Duration::from_secs(300));
        assert_eq!(c.connect_grace, Duration::from_secs(5));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_pending_per_ip, 100);
        assert_eq!(c.idle_timeout(), None);
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.limits(), Limits::default());
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.allows("a@anything", "b@else"));
        assert!(!c.signed_keys());
        assert_eq!(c.max_key_lifetime, Duration::from_secs(86_400));
    }

    #[test]
    fn cluster_mode_needs_a_secret_and_a_dialable_address() {
        let parse =
            |args: &[&str]| Config::try_parse_from([&["dtcp-relay"], args].concat()).unwrap();
        assert!(!parse(&[]).cluster());
        assert!(parse(&[]).validate().is_ok());
        let no_secret = parse(&[
            "--redis-url",
            "redis://127.0.0.1",
            "--advertise-addr",
            "10.0.0.1:7778",
        ]);
        assert!(no_secret.cluster());
        assert!(
            no_secret
                .validate()
                .unwrap_err()
                .contains("--cluster-secret")
        );
        let insecure = parse(&[
            "--redis-url",
            "redis://127.0.0.1",
            "--insecure-plane",
            "--advertise-addr",
            "10.0.0.1:7778",
        ]);
        assert!(insecure.validate().is_ok());
        let unspecified = parse(&["--redis-url", "redis://127.0.0.1", "--cluster-secret", "s"]);
        assert!(
            unspecified
                .validate()
                .unwrap_err()
                .contains("--advertise-addr")
        );
        let concrete = parse(&[
            "--redis-url",
            "redis://127.0.0.1",
            "--cluster-secret",
            "s",
            "--forward-listen",
            "127.0.0.1:0",
        ]);
        assert!(concrete.validate().is_ok());
        let seeds = parse(&[
            "--redis-url",
            "redis://a:1,redis://b:2",
            "--redis-url",
            "redis://c:3",
        ]);
        assert_eq!(seeds.redis_urls.len(), 3);
        assert!(parse(&["--node-id", "a b"]).validate().is_err());
        assert!(
            Config::try_parse_from(["dtcp-relay", "--forward-tls-cert", "c.pem"]).is_err(),
            "cert needs a key"
        );
    }

    #[test]
    fn sentinel_flags_and_store_timeouts() {
        let parse =
            |args: &[&str]| Config::try_parse_from([&["dtcp-relay"], args].concat()).unwrap();
        let defaults = parse(&[]).redis_config().unwrap();
        let store = RedisConfig::default();
        assert_eq!(defaults.connect_timeout, store.connect_timeout);
        assert_eq!(defaults.response_timeout, store.response_timeout);
        assert_eq!(defaults.operation_timeout, store.operation_timeout);
        assert!(defaults.sentinel.is_none());

        let dir = std::env::temp_dir().join(format!("dtcp-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (redis_pw, sentinel_pw) = (dir.join("redis"), dir.join("sentinel"));
        std::fs::write(&redis_pw, "r-secret\n").unwrap();
        std::fs::write(&sentinel_pw, "s-secret").unwrap();
        let c = parse(&[
            "--redis-sentinel",
            "10.0.0.1:26379,10.0.0.2:26379",
            "--redis-sentinel",
            "[::1]:26379",
            "--redis-sentinel-master",
            "mymaster",
            "--redis-password-file",
            redis_pw.to_str().unwrap(),
            "--redis-sentinel-password-file",
            sentinel_pw.to_str().unwrap(),
            "--redis-operation-timeout",
            "2",
            "--redis-response-timeout",
            "0.5",
            "--cluster-secret",
            "s",
            "--advertise-addr",
            "10.0.0.9:7778",
        ]);
        assert!(c.cluster(), "Sentinel is cluster mode");
        assert_eq!(c.validate(), Ok(()));
        let r = c.redis_config().unwrap();
        let s = r.sentinel.as_ref().unwrap();
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.sentinels.len(), 3);
        assert_eq!(s.password.as_deref(), Some("s-secret"));
        assert_eq!(r.password.as_deref(), Some("r-secret"), "newline dropped");
        assert_eq!(r.operation_timeout, Duration::from_secs(2));
        assert_eq!(r.response_timeout, Duration::from_millis(500));
        assert!(
            !format!("{r:?}").contains("secret"),
            "passwords not printed"
        );
        std::fs::write(&redis_pw, "").unwrap();
        assert!(c.redis_config().unwrap_err().contains("empty"));
        std::fs::remove_dir_all(&dir).unwrap();

        let invalid = |args: &[&str], why: &str| {
            let err = parse(args).validate().unwrap_err();
            assert!(err.contains(why), "{args:?}: {err}");
        };
        invalid(&["--redis-sentinel", "a:1"], "--redis-sentinel-master");
        invalid(&["--redis-sentinel-master", "m"], "go together");
        invalid(
            &[
                "--redis-sentinel",
                "a:1",
                "--redis-sentinel-master",
                "m",
                "--redis-url",
                "redis://b",
            ],
            "exclude",
        );
        invalid(
            &["--redis-sentinel", "a", "--redis-sentinel-master", "m"],
            "HOST:PORT",
        );
        invalid(
            &["--redis-sentinel-password", "p"],
            "needs --redis-sentinel",
        );
        invalid(&["--redis-operation-timeout", "0"], "more than 0");
        invalid(
            &[
                "--redis-response-timeout",
                "5",
                "--redis-operation-timeout",
                "3",
            ],
            "bounds",
        );
        assert!(
            Config::try_parse_from([
                "dtcp-relay",
                "--redis-password",
                "p",
                "--redis-password-file",
                "f"
            ])
            .is_err(),
            "a password and its file exclude each other"
        );
    }

    #[test]
    fn domain_policy_needs_one_side_in_the_list() {
        let c = Config::try_parse_from([
            "dtcp-relay",
            "--allow-domain",
            "capulet.lit",
            "--allow-domain",
            "verona.lit",
        ])
        .unwrap();
        assert!(c.allows("romeo@montague.lit/x", "juliet@Capulet.lit"));
        assert!(c.allows("verona.lit", "x@y"));
        assert!(!c.allows("romeo@montague.lit", "tybalt@sub.capulet.lit"));
    }

    #[test]
    fn fractional_seconds_and_bad_values() {
        let c =
            Config::try_parse_from(["dtcp-relay", "--idle-timeout", "1.5", "--listen", "[::1]:0"])
                .unwrap();
        assert_eq!(c.idle_timeout(), Some(Duration::from_millis(1500)));
        assert!(Config::try_parse_from(["dtcp-relay", "--pending-ttl", "soon"]).is_err());
        assert!(Config::try_parse_from(["dtcp-relay", "--pending-ttl", "-1"]).is_err());
    }
}
