//! The rendezvous store on Redis: one server, a Sentinel deployment, or a
//! Redis Cluster.
//!
//! Keys, all under a configurable prefix, and every command on one key so
//! that Redis Cluster can shard them:
//!
//! | key | value | TTL |
//! | --- | --- | --- |
//! | `<prefix>reg:<registration id>` | `<node id> <forward addr>[ <seal>]` of the owner, or `- ` for a used signed key | pending TTL, or the key's expiry |
//! | `<prefix>node:<node id>` | the node's forward addr[ and its heartbeat seal] | heartbeat TTL |
//! | `<prefix>src:<address>` | pending CREATEs from that client address, cluster-wide (`sources.rs`) | pending TTL and a margin, from its last increase |
//! | `<prefix>nodes` | sorted set: `<node id> <forward addr>[ <heartbeat seal>]` scored by the heartbeat's expiry (ms) | none; expired members are trimmed |
//!
//! Registrations are announced on the channel `<prefix>registered` (sharded
//! pub/sub on a Redis Cluster, which needs Redis 7).
//!
//! Only registration ids (hashes) and client addresses go into keys, never
//! a key or a JID.

mod sources;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use dtcp_wire::RegistrationId;
use futures_util::{StreamExt, TryStreamExt};
use redis::{Cmd, FromRedisValue, Pipeline, RedisResult, Script, Value};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::announce;
use crate::redis_conn::{Conn, ConnRef, Health, retryable, unavailable};
use crate::{Beat, NodeInfo, Registered, Rendezvous, StoreError};

/// Deletes a key only if it still holds the caller's value.
const COMPARE_AND_DELETE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Replaces a key's value only if it still holds the expected one.
const COMPARE_AND_SET: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

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
}

/// What a node presents and trusts on TLS connections to Redis (a managed
/// Redis that signs its servers with its own CA, or asks clients for a
/// certificate).
#[derive(Clone, Default)]
pub struct RedisTls {
    /// PEM certificates of the CA(s) that sign the servers, instead of the
    /// system's roots.
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

/// The Redis rendezvous store.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    config: RedisConfig,
    cas: (Script, Script),
    health: Arc<Health>,
    backoff: ExponentialBuilder,
}

/// Registrations per pipeline when they are written again: large enough to
/// write thousands in a few round trips, small enough that a command sent
/// meanwhile on the same connection waits for at most this many replies.
const REWRITE_BATCH: usize = 256;
/// Registrations written again at once on a Redis Cluster, where a pipeline
/// cannot span slots: each is its own command, pipelined by the per-node
/// connections.
const REWRITE_IN_FLIGHT: usize = 256;
/// Rounds of "write if absent, else read whose" for a registration that
/// expires between the two.
const REWRITE_ROUNDS: usize = 3;

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("kind", &self.inner.conn.kind())
            .field("prefix", &self.inner.config.prefix)
            .finish()
    }
}

impl RedisStore {
    /// A store on the Redis that `config` names. Connects lazily: a node
    /// starts while Redis is down and works as soon as it is up.
    pub fn new(config: &RedisConfig) -> Result<Self, StoreError> {
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn: Conn::new(config)?,
                config: config.clone(),
                cas: (
                    Script::new(COMPARE_AND_DELETE),
                    Script::new(COMPARE_AND_SET),
                ),
                health: Arc::new(Health::new()),
                backoff: config.operation_backoff(),
            }),
        })
    }

    /// Connects once, if the store is reached over TLS with certificates
    /// of its own ([`RedisConfig::tls`]), and tells why if the TLS handshake
    /// was refused (a client certificate missing or not trusted, a server
    /// certificate this node does not trust): a configuration error a node
    /// should not start with. `None` when the server answered, or failed in
    /// another way: a Redis that is down at start is no error, the store
    /// connects lazily.
    pub async fn tls_refusal(&self) -> Option<String> {
        let inner = &*self.inner;
        inner.config.tls.as_ref()?;
        let ping = async {
            let mut conn = inner.conn.get().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(inner.config.operation_timeout, ping).await {
            Ok(Err(e)) if is_tls_error(&e) => Some(e.to_string()),
            _ => None,
        }
    }

    fn reg_key(&self, id: &RegistrationId) -> String {
        format!("{}reg:{id}", self.inner.config.prefix)
    }

    fn node_key(&self, node_id: &str) -> String {
        format!("{}node:{node_id}", self.inner.config.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}nodes", self.inner.config.prefix)
    }

    fn registered_channel(&self) -> String {
        format!("{}registered", self.inner.config.prefix)
    }

    /// Tells every node that `id` is registered and by whom (the 32-byte id,
    /// then the record's value), without making the CREATE wait for it: the
    /// registration itself is already done. On a Redis Cluster the channel
    /// is sharded (`SPUBLISH`, Redis 7): it lives on the shard of its slot,
    /// where the subscribers are.
    fn announce(&self, id: &RegistrationId, value: &str) {
        let store = self.clone();
        let verb = if self.inner.config.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let (channel, payload) = (self.registered_channel(), announcement(id, value));
        tokio::spawn(async move {
            let _: Result<i64, _> = store
                .query(redis::cmd(verb).arg(channel).arg(payload))
                .await;
        });
    }

    /// Runs one command under [`RedisStore::run`].
    async fn query<T: FromRedisValue + Send>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.run(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Runs one pipeline under [`RedisStore::run`].
    async fn pipeline<T: FromRedisValue + Send>(&self, pipe: &Pipeline) -> Result<T, StoreError> {
        self.run(|mut c| async move { pipe.query_async(&mut c).await })
            .await
    }

    /// Runs `f` on a connection until it succeeds, fails for good, has been
    /// retried [`RedisConfig::retries`] times, or the operation's time is up.
    /// A connection failure (a drop, a timeout, a demoted master) is retried
    /// after a backoff with jitter; every command here is safe to run twice.
    /// The whole is bounded by
    /// [`RedisConfig::operation_timeout`], so a client waits that long at
    /// most before it gets `unavailable`.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(ConnRef) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let inner = &*self.inner;
        // The connection of the latest attempt, told if the whole times out.
        let latest = std::sync::Mutex::new(None);
        let attempt = || async {
            let conn = inner.conn.get().await?;
            let generation = conn.generation();
            *latest.lock().expect("poisoned") = generation;
            let result = f(conn).await;
            if let Err(e) = &result
                && retryable(e)
            {
                inner.conn.failed(generation, e);
            }
            result
        };
        let retried = attempt
            .retry(inner.backoff)
            .sleep(tokio::time::sleep)
            .when(retryable)
            .notify(|e, after| {
                inner.health.trouble();
                debug!(error = %e, ?after, "rendezvous store command failed; retrying");
            });
        match tokio::time::timeout(inner.config.operation_timeout, retried).await {
            Ok(Ok(v)) => {
                inner.health.answered();
                Ok(v)
            }
            Ok(Err(e)) => {
                if retryable(&e) {
                    inner.health.trouble();
                }
                Err(unavailable(e))
            }
            Err(_) => {
                inner.health.trouble();
                let generation = *latest.lock().expect("poisoned");
                inner.conn.failed(generation, &timed_out());
                Err(StoreError::Unavailable(format!(
                    "no answer within {:?}",
                    inner.config.operation_timeout
                )))
            }
        }
    }

    /// `SET key value NX PX ttl`: whether the key was free and is now ours.
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let set: Option<String> = self.query(&set_nx_cmd(key, value, ttl)).await?;
        Ok(set.is_some())
    }

    /// Writes again one chunk of registrations in pipelines: all `SET NX`,
    /// then a `GET` of those that were there, to tell ours from another
    /// node's.
    async fn rewrite_chunk(
        &self,
        owner: &NodeInfo,
        chunk: &[(RegistrationId, Duration, Option<String>)],
    ) -> Result<Vec<bool>, StoreError> {
        let keys: Vec<String> = chunk.iter().map(|(id, ..)| self.reg_key(id)).collect();
        // One value per record: each seal covers its own registration.
        let values: Vec<String> = chunk
            .iter()
            .map(|(_, _, seal)| Self::record_value(owner, seal.as_deref()))
            .collect();
        let mut outcome: Vec<Option<bool>> = vec![None; chunk.len()];
        for _ in 0..REWRITE_ROUNDS {
            let open: Vec<usize> = (0..chunk.len()).filter(|i| outcome[*i].is_none()).collect();
            if open.is_empty() {
                break;
            }
            let mut set = redis::pipe();
            for &i in &open {
                set.add_command(set_nx_cmd(&keys[i], &values[i], chunk[i].1));
            }
            let replies: Vec<Value> = self.pipeline(&set).await?;
            let held: Vec<usize> = open
                .iter()
                .zip(&replies)
                .filter_map(|(&i, reply)| match reply {
                    Value::Nil => Some(i),
                    _ => {
                        outcome[i] = Some(true);
                        None
                    }
                })
                .collect();
            if held.is_empty() {
                break;
            }
            let mut get = redis::pipe();
            for &i in &held {
                get.cmd("GET").arg(&keys[i]);
            }
            let holders: Vec<Option<String>> = self.pipeline(&get).await?;
            for (&i, holder) in held.iter().zip(holders) {
                // None: it expired in between; the next round writes it.
                outcome[i] = holder.map(|h| h == values[i]);
            }
        }
        // Still open after every round: it keeps expiring under us; not ours.
        Ok(outcome.into_iter().map(|o| o.unwrap_or(false)).collect())
    }

    /// Writes again one registration on its own (Redis Cluster).
    async fn rewrite_one(
        &self,
        value: &str,
        id: &RegistrationId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.reg_key(id);
        for _ in 0..REWRITE_ROUNDS {
            if self.set_nx(&key, value, ttl).await? {
                return Ok(true);
            }
            let holder: Option<String> = self.query(redis::cmd("GET").arg(&key)).await?;
            if let Some(holder) = holder {
                return Ok(holder == value);
            }
        }
        Ok(false)
    }

    fn owner_value(owner: &NodeInfo) -> String {
        Self::record_value(owner, owner.seal.as_deref())
    }

    /// A record naming `owner`'s id and address, with `seal`.
    fn record_value(owner: &NodeInfo, seal: Option<&str>) -> String {
        match seal {
            Some(seal) => format!("{} {} {seal}", owner.id, owner.forward_addr),
            None => format!("{} {}", owner.id, owner.forward_addr),
        }
    }

    pub(crate) fn parse_owner(value: &str) -> Result<NodeInfo, StoreError> {
        let (id, rest) = value
            .split_once(' ')
            .ok_or_else(|| StoreError::Malformed(format!("owner {value:?}")))?;
        let (addr, seal) = match rest.split_once(' ') {
            Some((addr, seal)) => (addr, Some(seal.to_owned())),
            None => (rest, None),
        };
        Ok(NodeInfo {
            id: id.to_owned(),
            forward_addr: addr.to_owned(),
            seal,
        })
    }
}

/// A timeout as the redis crate reports one.
fn timed_out() -> redis::RedisError {
    std::io::Error::from(std::io::ErrorKind::TimedOut).into()
}

/// Whether `e` comes from TLS: the TLS library reports a refused or
/// failed handshake as invalid data, which nothing else in connecting does
/// (a reply Redis sends that cannot be parsed is an error of its own kind).
fn is_tls_error(e: &redis::RedisError) -> bool {
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

fn set_nx_cmd(key: &str, value: &str, ttl: Duration) -> Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(value).arg("NX").arg("PX").arg(ms(ttl));
    cmd
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

#[async_trait]
impl Rendezvous for RedisStore {
    async fn register(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.reg_key(id);
        let value = Self::owner_value(owner);
        if self.set_nx(&key, &value, ttl).await? {
            self.announce(id, &value);
            return Ok(true);
        }
        let current: Option<String> = self.query(redis::cmd("GET").arg(&key)).await?;
        let Some(current) = current else {
            // Expired in between: try once more.
            return self.set_nx(&key, &value, ttl).await;
        };
        if current == value {
            // Our own write, answered late (a retried command).
            return Ok(true);
        }
        // Held by another node. If that node's heartbeat is gone (it crashed),
        // its registration is dead: take it over rather than answer `conflict`
        // until the old record expires.
        let holder = Self::parse_owner(&current)?;
        if holder.is_used() {
            // A signed key that already paired: void until it expires.
            return Ok(false);
        }
        let alive: bool = self
            .query(redis::cmd("EXISTS").arg(self.node_key(&holder.id)))
            .await?;
        if alive {
            return Ok(false);
        }
        let ttl_ms = ms(ttl).to_string();
        let cas = &self.inner.cas.1;
        let replaced: i64 = self
            .run(|mut c| {
                let (key, current, value, ttl_ms) = (&key, &current, &value, &ttl_ms);
                async move {
                    cas.key(key)
                        .arg(current)
                        .arg(value)
                        .arg(ttl_ms)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        if replaced == 1 {
            self.announce(id, &value);
        }
        Ok(replaced == 1)
    }

    async fn count_source(
        &self,
        source: std::net::IpAddr,
        entry: u64,
        max: usize,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.count_source_script(source, entry, max, ttl).await
    }

    async fn uncount_source(&self, source: std::net::IpAddr, entry: u64) -> Result<(), StoreError> {
        self.uncount_source_script(source, entry).await
    }

    async fn lookup(&self, id: &RegistrationId) -> Result<Option<NodeInfo>, StoreError> {
        let value: Option<String> = self.query(redis::cmd("GET").arg(self.reg_key(id))).await?;
        value.as_deref().map(Self::parse_owner).transpose()
    }

    async fn remove_if_owner(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
    ) -> Result<bool, StoreError> {
        let key = self.reg_key(id);
        let value = Self::owner_value(owner);
        let cad = &self.inner.cas.0;
        let removed: i64 = self
            .run(|mut c| {
                let (key, value) = (&key, &value);
                async move { cad.key(key).arg(value).invoke_async(&mut c).await }
            })
            .await?;
        Ok(removed == 1)
    }

    async fn retire_if_owner(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
        keep_for: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.reg_key(id);
        let (value, used) = (
            Self::owner_value(owner),
            Self::owner_value(&NodeInfo::used()),
        );
        let ttl_ms = ms(keep_for).to_string();
        let cas = &self.inner.cas.1;
        let replaced: i64 = self
            .run(|mut c| {
                let (key, value, used, ttl_ms) = (&key, &value, &used, &ttl_ms);
                async move {
                    cas.key(key)
                        .arg(value)
                        .arg(used)
                        .arg(ttl_ms)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(replaced == 1)
    }

    async fn register_many(
        &self,
        owner: &NodeInfo,
        registrations: &[(RegistrationId, Duration, Option<String>)],
    ) -> Result<Vec<bool>, StoreError> {
        if self.inner.conn.pipelines_span_keys() {
            let mut written = Vec::with_capacity(registrations.len());
            for chunk in registrations.chunks(REWRITE_BATCH) {
                written.extend(self.rewrite_chunk(owner, chunk).await?);
            }
            return Ok(written);
        }
        // The futures are made first (they are lazy; `buffered` runs
        // REWRITE_IN_FLIGHT at a time): a closure inside the stream would not
        // be general enough for the `Send` bound `async_trait` needs.
        let rewrites: Vec<_> = registrations
            .iter()
            .map(|(id, ttl, seal)| {
                let value = Self::record_value(owner, seal.as_deref());
                async move { self.rewrite_one(&value, id, *ttl).await }
            })
            .collect();
        futures_util::stream::iter(rewrites)
            .buffered(REWRITE_IN_FLIGHT)
            .try_collect()
            .await
    }

    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<Beat, StoreError> {
        // Whether the beat was there, and the new one, in one round trip (the
        // same key, so the same slot on a Cluster; only this node writes it).
        let key = self.node_key(&node.id);
        let beat_value = match &node.seal {
            Some(seal) => format!("{} {seal}", node.forward_addr),
            None => node.forward_addr.clone(),
        };
        let mut beat = redis::pipe();
        beat.cmd("EXISTS")
            .arg(&key)
            .cmd("SET")
            .arg(&key)
            .arg(beat_value)
            .arg("PX")
            .arg(ms(ttl))
            .ignore();
        let (existed,): (bool,) = self.pipeline(&beat).await?;
        let now = now_ms();
        let mut nodes = redis::pipe();
        nodes
            .cmd("ZADD")
            .arg(self.nodes_key())
            .arg(now + ms(ttl))
            .arg(Self::owner_value(node))
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.nodes_key())
            .arg("-inf")
            .arg(now)
            .ignore();
        let () = self.pipeline(&nodes).await?;
        // Read (and reset) the recovery flag whatever the key said.
        let recovered = self.inner.health.take_recovered();
        Ok(if existed && !recovered {
            Beat::Renewed
        } else {
            Beat::Lost
        })
    }

    async fn remove_node(&self, node: &NodeInfo) -> Result<(), StoreError> {
        let _: i64 = self
            .query(redis::cmd("DEL").arg(self.node_key(&node.id)))
            .await?;
        let _: i64 = self
            .query(
                redis::cmd("ZREM")
                    .arg(self.nodes_key())
                    .arg(Self::owner_value(node)),
            )
            .await?;
        Ok(())
    }

    fn watch_registrations(&self) -> Option<mpsc::Receiver<Registered>> {
        announce::watch(
            &self.inner.config,
            self.registered_channel(),
            self.inner.health.clone(),
        )
    }

    fn watch_recoveries(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.health.subscribe())
    }

    async fn live_nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let members: Vec<String> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.nodes_key())
                    .arg(now_ms())
                    .arg("+inf"),
            )
            .await?;
        // A member of another format (an older node's bare id) names no node.
        Ok(members
            .iter()
            .filter_map(|m| Self::parse_owner(m).ok())
            .collect())
    }

    async fn nodes_alive(&self) -> Result<usize, StoreError> {
        let n: usize = self
            .query(
                redis::cmd("ZCOUNT")
                    .arg(self.nodes_key())
                    .arg(now_ms())
                    .arg("+inf"),
            )
            .await?;
        Ok(n)
    }
}

/// An announcement's payload: the id, then the owner as the record names it.
pub(crate) fn announcement(id: &RegistrationId, value: &str) -> Vec<u8> {
    [id.as_bytes(), value.as_bytes()].concat()
}

/// The announcement in a payload, if it is one.
pub(crate) fn parse_announcement(payload: &[u8]) -> Option<Registered> {
    let (id, value) = payload.split_first_chunk::<32>()?;
    let owner = RedisStore::parse_owner(std::str::from_utf8(value).ok()?).ok()?;
    Some(Registered {
        id: RegistrationId::from_bytes(*id),
        owner,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_carry_the_owner() {
        let id = RegistrationId::of("k", "a@b", "c@d");
        let owner = NodeInfo {
            id: "0b7c".into(),
            forward_addr: "10.0.0.1:7780".into(),
            seal: Some("c2VhbA".into()),
        };
        let payload = announcement(&id, &RedisStore::owner_value(&owner));
        let parsed = parse_announcement(&payload);
        assert_eq!(parsed, Some(Registered { id, owner }));
        assert_eq!(parse_announcement(&payload[..31]), None, "too short");
        assert_eq!(parse_announcement(id.as_bytes()), None, "no owner");
        let unsealed = RedisStore::parse_owner("0b7c 10.0.0.1:7780").unwrap();
        assert_eq!(unsealed.seal, None);
        let used = RedisStore::owner_value(&NodeInfo::used());
        assert!(RedisStore::parse_owner(&used).unwrap().is_used());
    }
}
