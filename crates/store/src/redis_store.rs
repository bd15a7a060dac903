//! The rendezvous store on Redis (or Redis Cluster).
//!
//! Keys, all under a configurable prefix, and every command on one key so
//! that Redis Cluster can shard them:
//!
//! | key | value | TTL |
//! | --- | --- | --- |
//! | `<prefix>reg:<registration id>` | `<node id> <forward addr>` of the owner | pending TTL |
//! | `<prefix>node:<node id>` | the node's forward addr | heartbeat TTL |
//! | `<prefix>src:<address>` | pending CREATEs from that client address, cluster-wide (`sources.rs`) | pending TTL and a margin, from its last increase |
//! | `<prefix>nodes` | sorted set: node id scored by its heartbeat's expiry (ms) | none; expired members are trimmed |
//!
//! Only registration ids (hashes) and client addresses go into keys, never
//! a key or a JID.

mod sources;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use dtcp_wire::RegistrationId;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisError, Script};
use tokio::sync::{OnceCell, mpsc};
use tokio_stream::StreamExt;
use tracing::debug;

use crate::{NodeInfo, Registered, Rendezvous, StoreError};

/// How long a Redis command may take before the operation fails (and the
/// client gets `unavailable` rather than a hang).
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long connecting to Redis may take.
pub(crate) const CONNECTION_TIMEOUT: Duration = Duration::from_millis(1000);

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

/// Where to find Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URLs; several are the seeds of a Redis Cluster.
    pub urls: Vec<String>,
    /// Treat a single URL as a Redis Cluster seed too.
    pub cluster: bool,
    /// Prefix of every key.
    pub prefix: String,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use, and made again on the next use
/// after it could not be made.
struct LazyCluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

/// The Redis rendezvous store.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: Arc<str>,
    cas: Arc<(Script, Script)>,
    /// Where the pub/sub subscription connects: any node of a Redis Cluster
    /// will do, as a classic PUBLISH reaches every node.
    pubsub_url: Arc<str>,
}

/// How long the subscriber waits before reconnecting after Redis went away.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);
/// Announcements queued for the relay before the oldest are dropped.
const WATCH_QUEUE: usize = 4096;

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.conn {
            Conn::Single(_) => "single",
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// A store on the Redis at `config.urls`. Connects lazily: a node starts
    /// while Redis is down and works as soon as it is up.
    pub fn new(config: &RedisConfig) -> Result<Self, StoreError> {
        let conn = if config.cluster || config.urls.len() > 1 {
            let client = ClusterClient::builder(config.urls.iter().map(String::as_str))
                .connection_timeout(CONNECTION_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(1)
                .build()
                .map_err(unavailable)?;
            Conn::Cluster(Arc::new(LazyCluster {
                client,
                conn: OnceCell::new(),
            }))
        } else {
            let url = config
                .urls
                .first()
                .ok_or_else(|| StoreError::Unavailable("no Redis URL".into()))?;
            let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECTION_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            Conn::Single(
                ConnectionManager::new_lazy_with_config(client, manager_config)
                    .map_err(unavailable)?,
            )
        };
        Ok(RedisStore {
            conn,
            pubsub_url: Arc::from(config.urls.first().map(String::as_str).unwrap_or_default()),
            prefix: Arc::from(config.prefix.as_str()),
            cas: Arc::new((
                Script::new(COMPARE_AND_DELETE),
                Script::new(COMPARE_AND_SET),
            )),
        })
    }

    fn reg_key(&self, id: &RegistrationId) -> String {
        format!("{}reg:{id}", self.prefix)
    }

    fn node_key(&self, node_id: &str) -> String {
        format!("{}node:{node_id}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    fn registered_channel(&self) -> String {
        format!("{}registered", self.prefix)
    }

    /// Tells every node that `id` is registered and by whom (the 32-byte id,
    /// then the record's value), without making the CREATE wait for it: the
    /// registration itself is already done.
    fn announce(&self, id: &RegistrationId, value: &str) {
        let store = self.clone();
        let (channel, payload) = (self.registered_channel(), announcement(id, value));
        tokio::spawn(async move {
            let _: Result<i64, _> = store
                .query(redis::cmd("PUBLISH").arg(channel).arg(payload))
                .await;
        });
    }

    /// Runs one command, retrying once if the connection had dropped (the
    /// connection manager fails the first command after a drop, then
    /// reconnects). Every command here is safe to run twice. A timeout is not
    /// retried: the client is waiting, and gets `unavailable` instead.
    async fn query<T: FromRedisValue + Send>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.retrying(|mut conn| async move { conn.query(cmd).await })
            .await
    }

    async fn retrying<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(ConnRef) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        match f(self.conn_ref().await?).await {
            Ok(v) => Ok(v),
            Err(e) if e.is_io_error() || e.is_connection_dropped() => {
                f(self.conn_ref().await?).await.map_err(unavailable)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn conn_ref(&self) -> Result<ConnRef, StoreError> {
        Ok(match &self.conn {
            Conn::Single(m) => ConnRef::Single(m.clone()),
            Conn::Cluster(lazy) => {
                let conn = lazy
                    .conn
                    .get_or_try_init(|| lazy.client.get_async_connection())
                    .await
                    .map_err(unavailable)?;
                ConnRef::Cluster(conn.clone())
            }
        })
    }

    /// `SET key value NX PX ttl`: whether the key was free and is now ours.
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let set: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms(ttl)),
            )
            .await?;
        Ok(set.is_some())
    }

    fn owner_value(owner: &NodeInfo) -> String {
        format!("{} {}", owner.id, owner.forward_addr)
    }

    fn parse_owner(value: &str) -> Result<NodeInfo, StoreError> {
        let (id, addr) = value
            .split_once(' ')
            .ok_or_else(|| StoreError::Malformed(format!("owner {value:?}")))?;
        Ok(NodeInfo {
            id: id.to_owned(),
            forward_addr: addr.to_owned(),
        })
    }
}

/// A connection handle for one command.
enum ConnRef {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnRef {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, RedisError> {
        match self {
            ConnRef::Single(c) => cmd.query_async(c).await,
            ConnRef::Cluster(c) => cmd.query_async(c).await,
        }
    }

    async fn script<T: FromRedisValue>(
        &mut self,
        script: &Script,
        key: &str,
        args: &[&str],
    ) -> Result<T, RedisError> {
        let mut invocation = script.key(key);
        for a in args {
            invocation.arg(*a);
        }
        match self {
            ConnRef::Single(c) => invocation.invoke_async(c).await,
            ConnRef::Cluster(c) => invocation.invoke_async(c).await,
        }
    }
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
        let alive: bool = self
            .query(redis::cmd("EXISTS").arg(self.node_key(&holder.id)))
            .await?;
        if alive {
            return Ok(false);
        }
        let ttl_ms = ms(ttl).to_string();
        let cas = &self.cas.1;
        let replaced: i64 = self
            .retrying(|mut c| {
                let (key, current, value, ttl_ms) = (&key, &current, &value, &ttl_ms);
                async move { c.script(cas, key, &[current, value, ttl_ms]).await }
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
        max: usize,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.count_source_script(source, max, ttl).await
    }

    async fn uncount_source(&self, source: std::net::IpAddr) -> Result<(), StoreError> {
        self.uncount_source_script(source).await
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
        let cad = &self.cas.0;
        let removed: i64 = self
            .retrying(|mut c| {
                let (key, value) = (&key, &value);
                async move { c.script(cad, key, &[value]).await }
            })
            .await?;
        Ok(removed == 1)
    }

    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), StoreError> {
        let () = self
            .query(
                redis::cmd("SET")
                    .arg(self.node_key(&node.id))
                    .arg(&node.forward_addr)
                    .arg("PX")
                    .arg(ms(ttl)),
            )
            .await?;
        let now = now_ms();
        let nodes = self.nodes_key();
        let _: i64 = self
            .query(
                redis::cmd("ZADD")
                    .arg(&nodes)
                    .arg(now + ms(ttl))
                    .arg(&node.id),
            )
            .await?;
        let _: i64 = self
            .query(
                redis::cmd("ZREMRANGEBYSCORE")
                    .arg(&nodes)
                    .arg("-inf")
                    .arg(now),
            )
            .await?;
        Ok(())
    }

    async fn remove_node(&self, node: &NodeInfo) -> Result<(), StoreError> {
        let _: i64 = self
            .query(redis::cmd("DEL").arg(self.node_key(&node.id)))
            .await?;
        let _: i64 = self
            .query(redis::cmd("ZREM").arg(self.nodes_key()).arg(&node.id))
            .await?;
        Ok(())
    }

    fn watch_registrations(&self) -> Option<mpsc::Receiver<Registered>> {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let (url, channel) = (self.pubsub_url.clone(), self.registered_channel());
        tokio::spawn(async move {
            // Resubscribe for as long as the relay listens, whatever Redis does.
            while !tx.is_closed() {
                if let Err(e) = forward_announcements(&url, &channel, &tx).await {
                    debug!(error = %e, "registration announcements interrupted; resubscribing");
                }
                tokio::time::sleep(RESUBSCRIBE_DELAY).await;
            }
        });
        Some(rx)
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
fn announcement(id: &RegistrationId, value: &str) -> Vec<u8> {
    [id.as_bytes(), value.as_bytes()].concat()
}

/// The announcement in a payload, if it is one.
fn parse_announcement(payload: &[u8]) -> Option<Registered> {
    let (id, value) = payload.split_first_chunk::<32>()?;
    let owner = RedisStore::parse_owner(std::str::from_utf8(value).ok()?).ok()?;
    Some(Registered {
        id: RegistrationId::from_bytes(*id),
        owner,
    })
}

/// Subscribes to the announcements and passes them on until the
/// subscription breaks.
async fn forward_announcements(
    url: &str,
    channel: &str,
    tx: &mpsc::Sender<Registered>,
) -> Result<(), RedisError> {
    let client = redis::Client::open(url)?;
    let mut pubsub = tokio::time::timeout(CONNECTION_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
    pubsub.subscribe(channel).await?;
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        if let Some(registered) = parse_announcement(msg.get_payload_bytes()) {
            // Full: the relay is behind; those CONNECTs find theirs by looking.
            let _ = tx.try_send(registered);
        }
    }
    Ok(())
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
        };
        let payload = announcement(&id, &RedisStore::owner_value(&owner));
        let parsed = parse_announcement(&payload);
        assert_eq!(parsed, Some(Registered { id, owner }));
        assert_eq!(parse_announcement(&payload[..31]), None, "too short");
        assert_eq!(parse_announcement(id.as_bytes()), None, "no owner");
    }
}
