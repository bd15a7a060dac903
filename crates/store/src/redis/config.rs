//! Where to find Redis and how long to wait for it: the store's
//! configuration, as the relay's flags fill it in.

use std::fmt;
use std::time::Duration;

use backon::ExponentialBuilder;

/// Where to find Redis, and how long to wait for it.
///
/// `RedisConfig { urls, ..Default::default() }` is a single Redis with the
/// default timeouts.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URLs; several are the seeds of a Redis
    /// Cluster. Unused with [`RedisConfig::sentinel`].
    pub urls: Vec<String>,
    /// Treat a single URL as a Redis Cluster seed too.
    pub cluster: bool,
    /// Find the master through Redis Sentinel instead of `urls`.
    pub sentinel: Option<SentinelConfig>,
    /// Password of the Redis servers (the `default` user), unless the URLs
    /// carry one. With Sentinel: of the master (and replicas).
    pub password: Option<String>,
    /// Certificates for `rediss://` (TLS) connections: to the servers, and
    /// to the sentinels when they are reached over TLS. `None`: the system's
    /// CA roots and no client certificate.
    pub tls: Option<RedisTls>,
    /// Prefix of every key.
    pub prefix: String,
    /// How long connecting to one server may take.
    pub connect_timeout: Duration,
    /// How long one reply may take (one command or one pipeline). On a
    /// Redis Cluster, one attempt with its redirections; a Cluster
    /// connection that lets one pass without any answer is replaced.
    pub response_timeout: Duration,
    /// How long one store operation may take in all, reconnections and
    /// retries included: past it the operation fails (the client gets
    /// `unavailable`) rather than wait.
    pub operation_timeout: Duration,
    /// Retries of one operation after a connection failure (a drop, a
    /// refused connection, a timeout, a demoted master), within
    /// `operation_timeout`. Few: a Redis that is down is reported to clients
    /// at once rather than after the whole timeout.
    pub retries: usize,
    /// Shortest wait before retrying after a connection failure; each retry
    /// waits up to twice as long as the last, with random jitter.
    pub retry_min_delay: Duration,
    /// Longest wait between two retries (and between two attempts to
    /// subscribe again to the announcements).
    pub retry_max_delay: Duration,
    /// The newest cluster format this node speaks ([`crate::FORMAT_NEWEST`]
    /// by default). [`crate::FORMAT_LEGACY`] makes it speak, and present
    /// itself, as a node of the release before format versions: for
    /// upgrades (docs/RUNBOOK.md) and their tests.
    pub max_format: u32,
    /// Whether a node's `CONNECT`s look on a connection Redis tracks for
    /// them (`CLIENT TRACKING`), so that the registering node need not be
    /// told of a waiter (one server or Sentinel; `true` by default). Off,
    /// or while that connection is down, they leave waiter entries.
    pub tracking: bool,
}

/// What a node presents and trusts on TLS connections to Redis (a managed
/// Redis that signs its servers with its own CA, or asks clients for a
/// certificate).
#[derive(Clone, Default)]
pub struct RedisTls {
    /// PEM certificates of the CA(s) that sign the servers, instead of the
    /// web PKI roots built into the Redis client (never the system's trust
    /// store).
    pub ca: Option<Vec<u8>>,
    /// A PEM client certificate chain and its PEM private key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// The key is never printed.
impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

/// A Redis Sentinel deployment: the sentinels to ask and the master's name.
#[derive(Clone)]
pub struct SentinelConfig {
    /// The name the sentinels monitor the master under.
    pub master: String,
    /// The sentinels: `HOST:PORT`, or `redis://` / `rediss://` URLs (TLS to
    /// the sentinels then means TLS to the master too).
    pub sentinels: Vec<String>,
    /// Password of the sentinels themselves (`requirepass` in sentinel.conf).
    pub password: Option<String>,
}

impl RedisConfig {
    /// Default time to connect to one server.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
    /// Default time for one reply.
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1500);
    /// Default time for one operation, retries included.
    pub const OPERATION_TIMEOUT: Duration = Duration::from_millis(3000);
    /// Default shortest retry delay.
    pub const RETRY_MIN_DELAY: Duration = Duration::from_millis(20);
    /// Default longest retry delay.
    pub const RETRY_MAX_DELAY: Duration = Duration::from_millis(1000);
    /// Default retries of one operation.
    pub const RETRIES: usize = 2;

    /// Whether `urls` name a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.sentinel.is_none() && (self.cluster || self.urls.len() > 1)
    }

    /// The delays between attempts to subscribe again: exponential, with
    /// jitter, for ever.
    pub(crate) fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.retry_min_delay)
            .with_max_delay(self.retry_max_delay)
            .with_jitter()
            .without_max_times()
    }

    /// The retry delays of one operation: as [`RedisConfig::backoff`],
    /// [`RedisConfig::retries`] of them.
    pub(crate) fn operation_backoff(&self) -> ExponentialBuilder {
        self.backoff().with_max_times(self.retries)
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            urls: Vec::new(),
            cluster: false,
            sentinel: None,
            password: None,
            tls: None,
            prefix: "dtcp:".into(),
            connect_timeout: Self::CONNECT_TIMEOUT,
            response_timeout: Self::RESPONSE_TIMEOUT,
            operation_timeout: Self::OPERATION_TIMEOUT,
            retries: Self::RETRIES,
            retry_min_delay: Self::RETRY_MIN_DELAY,
            retry_max_delay: Self::RETRY_MAX_DELAY,
            max_format: crate::FORMAT_NEWEST,
            tracking: true,
        }
    }
}

/// Passwords are never printed, nor the user part of a URL.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("RedisConfig")
            .field("urls", &urls)
            .field("cluster", &self.cluster)
            .field("sentinel", &self.sentinel)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("prefix", &self.prefix)
            .field("tracking", &self.tracking)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("retries", &self.retries)
            .field("retry_min_delay", &self.retry_min_delay)
            .field("retry_max_delay", &self.retry_max_delay)
            .finish()
    }
}

impl fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sentinels: Vec<String> = self.sentinels.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("SentinelConfig")
            .field("master", &self.master)
            .field("sentinels", &sentinels)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `scheme://user:pass@host` as `scheme://<redacted>@host`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}<redacted>{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
