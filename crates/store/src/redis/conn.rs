//! Connections to Redis however it is deployed (one server, a Sentinel
//! deployment, a Redis Cluster).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo,
    IntoConnectionInfo, Pipeline, ProtocolVersion, RedisError, RedisFuture, RedisResult,
    RetryMethod, TlsCertificates, TlsMode, Value,
};
use tracing::{debug, info, warn};

use super::config::{RedisConfig, RedisTls, SentinelConfig};
use crate::rendezvous::StoreError;
use crate::text::{SHOWN_ERROR_CHARS, shown_up_to};

/// A Redis error as the store reports it: its text cut short and escaped,
/// as the redis crate quotes a reply it could not convert.
pub(crate) fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(shown_up_to(&e.to_string(), SHOWN_ERROR_CHARS))
}

/// Whether an operation that failed with `e` may succeed if tried again: the
/// connection dropped or timed out, the server is a demoted master
/// (`READONLY`), loading, or in the middle of a failover. Not a wrong
/// password, a refused command or a malformed answer.
pub(crate) fn retryable(e: &RedisError) -> bool {
    !matches!(
        e.kind(),
        redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig
    ) && !matches!(
        e.retry_method(),
        RetryMethod::NoRetry | RetryMethod::AskRedirect | RetryMethod::MovedRedirect
    )
}

/// The connection of a store, whatever the deployment.
pub(crate) enum Conn {
    /// One Redis: the redis crate's connection manager reconnects by itself.
    Single(ConnectionManager),
    /// A master found through Sentinel, found again after each failure.
    Sentinel(Arc<SentinelConn>),
    /// A Redis Cluster, connected on first use, replaced when it stops
    /// answering.
    Cluster(Arc<ClusterConn>),
}

impl Conn {
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, StoreError> {
        if let Some(sentinel) = &config.sentinel {
            return Ok(Conn::Sentinel(Arc::new(SentinelConn {
                sentinel: tokio::sync::Mutex::new(sentinel_client(
                    config,
                    sentinel,
                    ProtocolVersion::RESP2,
                )?),
                current: Mutex::new(None),
                generation: AtomicU64::new(0),
                config: AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(config.response_timeout)),
            })));
        }
        if config.is_cluster() {
            let client = cluster_builder(config)
                // Retries of its own (MOVED, a node reconnecting) stay within
                // one reply's time: an attempt that gets no answer by then
                // is a timeout the store sees, retries, and replaces the
                // connection for ([`ClusterConn`]).
                .retries(CLUSTER_RETRIES)
                .min_retry_wait(ms(config.retry_min_delay))
                .max_retry_wait(ms(config.retry_max_delay))
                .overall_response_timeout(Some(config.response_timeout))
                .build()
                .map_err(unavailable)?;
            return Ok(Conn::Cluster(Arc::new(ClusterConn {
                client,
                current: Mutex::new(None),
                generation: AtomicU64::new(0),
                connecting: tokio::sync::Mutex::new(()),
                replacing: AtomicBool::new(false),
                replace_within: config.operation_timeout,
            })));
        }
        let client = single_client(config, ProtocolVersion::RESP2)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            // Its reconnection: backoff with jitter between these delays.
            .set_min_delay(config.retry_min_delay)
            .set_max_delay(config.retry_max_delay)
            .set_number_of_retries(MANAGER_RECONNECT_TRIES);
        Ok(Conn::Single(
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(unavailable)?,
        ))
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Conn::Single(_) => "single",
            Conn::Sentinel(_) => "sentinel",
            Conn::Cluster(_) => "cluster",
        }
    }

    /// Whether a pipeline may name keys of different slots (not on a Cluster).
    pub(crate) fn pipelines_span_keys(&self) -> bool {
        !matches!(self, Conn::Cluster(_))
    }

    /// A handle for one operation.
    pub(crate) async fn get(&self) -> RedisResult<ConnRef> {
        Ok(match self {
            Conn::Single(m) => ConnRef::Manager(m.clone()),
            Conn::Sentinel(s) => {
                let (generation, conn) = s.get().await?;
                ConnRef::Sentinel { conn, generation }
            }
            Conn::Cluster(c) => {
                let (generation, conn) = c.get().await?;
                ConnRef::Cluster { conn, generation }
            }
        })
    }

    /// The connection of `generation` ([`ConnRef::generation`]) failed with
    /// `e`, a retryable error: a Sentinel master is looked up again before
    /// the next command; a Cluster connection that gave no answer at all is
    /// replaced. (The others reconnect by themselves.)
    pub(crate) fn failed(&self, generation: Option<u64>, e: &RedisError) {
        match (self, generation) {
            (Conn::Sentinel(s), Some(generation)) => s.forget(generation),
            (Conn::Cluster(c), Some(generation)) if e.is_timeout() => c.replace(generation),
            _ => {}
        }
    }
}

/// Tries of the cluster connection's own for one command.
const CLUSTER_RETRIES: u32 = 2;
/// Reconnection tries of the connection manager before it fails the waiting
/// commands (and tries again on the next): one, as the store's own retries
/// come on top.
const MANAGER_RECONNECT_TRIES: usize = 1;

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

/// The single server's connection info, with the configured password.
pub(crate) fn single_info(config: &RedisConfig) -> Result<ConnectionInfo, StoreError> {
    let url = config
        .urls
        .first()
        .ok_or_else(|| StoreError::Unavailable("no Redis URL".into()))?;
    let info = url.as_str().into_connection_info().map_err(unavailable)?;
    Ok(match &config.password {
        Some(p) => {
            let redis = info.redis_settings().clone().set_password(p);
            info.set_redis_settings(redis)
        }
        None => info,
    })
}

/// The certificates of `tls` as the redis crate takes them.
fn certificates(tls: &RedisTls) -> TlsCertificates {
    TlsCertificates {
        client_tls: tls.client.as_ref().map(|(cert, key)| ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.clone(),
        }),
        root_cert: tls.ca.clone(),
    }
}

/// A client of the single server, with the configured password and TLS
/// certificates, speaking `protocol`.
pub(crate) fn single_client(
    config: &RedisConfig,
    protocol: ProtocolVersion,
) -> Result<Client, StoreError> {
    let info = single_info(config)?;
    let info = {
        let redis = info.redis_settings().clone().set_protocol(protocol);
        info.set_redis_settings(redis)
    };
    match &config.tls {
        Some(tls) => Client::build_with_tls(info, certificates(tls)),
        None => Client::open(info),
    }
    .map_err(unavailable)
}

/// A Cluster client's builder on the seeds, with the password, TLS
/// certificates and timeouts.
pub(crate) fn cluster_builder(config: &RedisConfig) -> redis::cluster::ClusterClientBuilder {
    let mut builder = ClusterClient::builder(config.urls.iter().map(String::as_str))
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.response_timeout);
    if let Some(p) = &config.password {
        builder = builder.password(p);
    }
    if let Some(tls) = &config.tls {
        builder = builder.certs(certificates(tls));
    }
    builder
}

/// A client of the Sentinel deployment that names the current master,
/// connecting to it in `protocol`.
pub(crate) fn sentinel_client(
    config: &RedisConfig,
    sentinel: &SentinelConfig,
    protocol: ProtocolVersion,
) -> Result<SentinelClient, StoreError> {
    let addrs = sentinel
        .sentinels
        .iter()
        .map(|a| sentinel_addr(a))
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(StoreError::Unavailable("no Sentinel address".into()));
    }
    let tls = addrs
        .iter()
        .filter(|a| matches!(a, ConnectionAddr::TcpTls { .. }))
        .count();
    if tls != 0 && tls != addrs.len() {
        return Err(StoreError::Unavailable(
            "Sentinel addresses mix rediss:// and plain ones".into(),
        ));
    }
    let mut builder =
        SentinelClientBuilder::new(addrs, &sentinel.master, SentinelServerType::Master)
            .map_err(unavailable)?;
    if tls != 0 {
        // Sentinels over TLS: the master is reached over TLS too.
        builder = builder
            .set_client_to_sentinel_tls_mode(TlsMode::Secure)
            .set_client_to_redis_tls_mode(TlsMode::Secure);
        if let Some(certs) = &config.tls {
            builder = builder
                .set_client_to_sentinel_certificates(certificates(certs))
                .set_client_to_redis_certificates(certificates(certs));
        }
    } else if config.tls.is_some() {
        return Err(StoreError::Unavailable(
            "Redis TLS certificates need rediss:// Sentinel addresses".into(),
        ));
    }
    if let Some(p) = &config.password {
        builder = builder.set_client_to_redis_password(p);
    }
    if let Some(p) = &sentinel.password {
        builder = builder.set_client_to_sentinel_password(p);
    }
    builder
        .set_client_to_redis_protocol(protocol)
        .build()
        .map_err(unavailable)
}

/// `HOST:PORT` (`[v6]:PORT`), or a `redis://` / `rediss://` URL.
fn sentinel_addr(s: &str) -> Result<ConnectionAddr, StoreError> {
    let bad = || StoreError::Unavailable(format!("Sentinel address {s:?} is not HOST:PORT"));
    if s.contains("://") {
        return Ok(s
            .into_connection_info()
            .map_err(unavailable)?
            .addr()
            .clone());
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok(ConnectionAddr::Tcp(host.to_owned(), port))
}

/// The current master of a Sentinel deployment, connected to; looked up
/// again through the sentinels after the connection failed.
pub(crate) struct SentinelConn {
    /// Looks the master up (it needs `&mut`; lookups are rare and serialised).
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// The connection in use and its generation.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
    config: AsyncConnectionConfig,
}

impl SentinelConn {
    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current.lock().expect("poisoned").clone()
    }

    async fn get(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut sentinel = self.sentinel.lock().await;
        // Another operation may have connected while this one waited.
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let conn = sentinel
            .get_async_connection_with_config(&self.config)
            .await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current.lock().expect("poisoned") = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Drops connection `generation` if it is still the current one.
    fn forget(&self, generation: u64) {
        let mut current = self.current.lock().expect("poisoned");
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }
}

/// A Redis Cluster connection: made on first use (again on the next use if
/// it could not be made), and replaced when an attempt on it gets no answer.
///
/// The redis crate's cluster connection can wedge for good when a master
/// dies: its task stops serving requests while it reads the slot map again,
/// and that refresh can wait for ever on the lock of its map of node
/// connections, which a request it no longer polls has been handed. Nothing
/// comes out of it then, neither answers nor errors, so nothing inside it
/// would ever refresh anything. A timeout is the only sign; on one, a new
/// connection (its own task, the slot map read afresh from the seeds) is
/// made in the background and takes over once it is up, while the old one
/// keeps serving the shards it still can (a single stalled shard must not
/// hold up the others during the reconnection).
pub(crate) struct ClusterConn {
    client: ClusterClient,
    /// The connection in use and its generation.
    current: Mutex<Option<(u64, ClusterConnection)>>,
    generation: AtomicU64,
    /// Serialises the first connection (and one after a failed attempt).
    connecting: tokio::sync::Mutex<()>,
    /// A replacement is being made.
    replacing: AtomicBool,
    /// How long making a replacement may take before it is given up.
    replace_within: std::time::Duration,
}

impl ClusterConn {
    fn cached(&self) -> Option<(u64, ClusterConnection)> {
        self.current.lock().expect("poisoned").clone()
    }

    async fn get(&self) -> RedisResult<(u64, ClusterConnection)> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        // Another operation may have connected while this one waited.
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let conn = self.client.get_async_connection().await?;
        Ok(self.install(conn))
    }

    fn install(&self, conn: ClusterConnection) -> (u64, ClusterConnection) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current.lock().expect("poisoned") = Some((generation, conn.clone()));
        (generation, conn)
    }

    /// Connection `generation` gave no answer: unless it has been replaced
    /// already, or a replacement is under way, connect a new one in the
    /// background and put it in its place once it is up. The old one ends
    /// when its last user drops it.
    fn replace(self: &Arc<Self>, generation: u64) {
        // The flag first, then the generation: checked the other way round,
        // a replacement finishing in between would let this one replace the
        // fresh connection it just installed.
        if self.replacing.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.cached().is_none_or(|(g, _)| g != generation) {
            self.replacing.store(false, Ordering::Release);
            return;
        }
        warn!(
            generation,
            "Redis Cluster connection not answering; replacing it"
        );
        let this = self.clone();
        tokio::spawn(async move {
            let made =
                tokio::time::timeout(this.replace_within, this.client.get_async_connection()).await;
            match made {
                Ok(Ok(conn)) => {
                    let (new, _) = this.install(conn);
                    info!(generation = new, "Redis Cluster connection replaced");
                }
                // The old one stays; the next timeout tries again.
                Ok(Err(e)) => debug!(error = %e, "Redis Cluster connection not replaced"),
                Err(_) => debug!("Redis Cluster connection not replaced: no answer in time"),
            }
            this.replacing.store(false, Ordering::Release);
        });
    }
}

/// A connection handle for one operation.
#[derive(Clone)]
pub(crate) enum ConnRef {
    Manager(ConnectionManager),
    Sentinel {
        conn: MultiplexedConnection,
        generation: u64,
    },
    Cluster {
        conn: ClusterConnection,
        generation: u64,
    },
}

impl ConnRef {
    /// Which Sentinel or Cluster connection this is, to forget or replace
    /// it if it fails.
    pub(crate) fn generation(&self) -> Option<u64> {
        match self {
            ConnRef::Sentinel { generation, .. } | ConnRef::Cluster { generation, .. } => {
                Some(*generation)
            }
            ConnRef::Manager(_) => None,
        }
    }
}

impl ConnectionLike for ConnRef {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            ConnRef::Manager(c) => c.req_packed_command(cmd),
            ConnRef::Sentinel { conn, .. } => conn.req_packed_command(cmd),
            ConnRef::Cluster { conn, .. } => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            ConnRef::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            ConnRef::Sentinel { conn, .. } => conn.req_packed_commands(pipeline, offset, count),
            ConnRef::Cluster { conn, .. } => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            ConnRef::Manager(c) => c.get_db(),
            ConnRef::Sentinel { conn, .. } => conn.get_db(),
            ConnRef::Cluster { conn, .. } => conn.get_db(),
        }
    }
}

/// A timeout as the redis crate reports one.
pub(crate) fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
}

/// Whether `e` comes from TLS: the TLS library reports a refused or
/// failed handshake as invalid data, which nothing else in connecting does
/// (a reply Redis sends that cannot be parsed is an error of its own kind).
pub(crate) fn is_tls_error(e: &redis::RedisError) -> bool {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        // The redis crate keeps the I/O error behind an `Arc`.
        let io = err.downcast_ref::<std::io::Error>().or_else(|| {
            err.downcast_ref::<Shared>()?
                .downcast_ref::<std::io::Error>()
        });
        if io.is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData) {
            return true;
        }
        source = err.source();
    }
    false
}
