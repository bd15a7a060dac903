//! The Redis store itself: the [`Rendezvous`] operations on the keys and
//! values of `keys.rs` and `record.rs`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dtcp_wire::RegistrationId;
use redis::Script;
use tokio::sync::{mpsc, watch};

use super::announce;
use super::bounded::{get_record, live_members};
use super::config::RedisConfig;
use super::conn::is_tls_error;
use super::health::Health;
use super::keys::Keys;
use super::record::{announcement, beat_value, owner_value, parse_owner};
use super::rewrite::{self, set_nx};
use super::run::{Runner, ms, now_ms};
use super::sources;
use crate::rendezvous::{Beat, NodeInfo, Registered, Rendezvous, StoreError};

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

/// The Redis rendezvous store.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    runner: Runner,
    config: RedisConfig,
    keys: Keys,
    cas: (Script, Script),
    health: Arc<Health>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("kind", &self.inner.runner.conn().kind())
            .field("prefix", &self.inner.config.prefix)
            .finish()
    }
}

impl RedisStore {
    /// A store on the Redis that `config` names. Connects lazily: a node
    /// starts while Redis is down and works as soon as it is up.
    pub fn new(config: &RedisConfig) -> Result<Self, StoreError> {
        let health = Arc::new(Health::new());
        Ok(RedisStore {
            inner: Arc::new(Inner {
                runner: Runner::new(config, health.clone())?,
                config: config.clone(),
                keys: Keys::new(&config.prefix),
                cas: (
                    Script::new(COMPARE_AND_DELETE),
                    Script::new(COMPARE_AND_SET),
                ),
                health,
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
            let mut conn = inner.runner.conn().get().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(inner.config.operation_timeout, ping).await {
            Ok(Err(e)) if is_tls_error(&e) => Some(e.to_string()),
            _ => None,
        }
    }

    fn runner(&self) -> &Runner {
        &self.inner.runner
    }

    fn keys(&self) -> &Keys {
        &self.inner.keys
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
        let (channel, payload) = (self.keys().registered_channel(), announcement(id, value));
        tokio::spawn(async move {
            let _: Result<i64, _> = store
                .runner()
                .query(redis::cmd(verb).arg(channel).arg(payload))
                .await;
        });
    }
}

#[async_trait]
impl Rendezvous for RedisStore {
    async fn register(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.keys().reg(id);
        let value = owner_value(owner);
        if set_nx(self.runner(), &key, &value, ttl).await? {
            self.announce(id, &value);
            return Ok(true);
        }
        let current = get_record(self.runner(), &key).await?;
        let Some(current) = current else {
            // Expired in between: try once more.
            return set_nx(self.runner(), &key, &value, ttl).await;
        };
        if current == value {
            // Our own write, answered late (a retried command).
            return Ok(true);
        }
        // Held by another node. If that node's heartbeat is gone (it crashed),
        // its registration is dead: take it over rather than answer `conflict`
        // until the old record expires.
        let holder = parse_owner(&current)?;
        if holder.is_used() {
            // A signed key that already paired: void until it expires.
            return Ok(false);
        }
        let alive: bool = self
            .runner()
            .query(redis::cmd("EXISTS").arg(self.keys().node(&holder.id)))
            .await?;
        if alive {
            return Ok(false);
        }
        let ttl_ms = ms(ttl).to_string();
        let cas = &self.inner.cas.1;
        let replaced: i64 = self
            .runner()
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
        sources::count(self.runner(), &self.keys().source(source), entry, max, ttl).await
    }

    async fn uncount_source(&self, source: std::net::IpAddr, entry: u64) -> Result<(), StoreError> {
        sources::uncount(self.runner(), &self.keys().source(source), entry).await
    }

    async fn lookup(&self, id: &RegistrationId) -> Result<Option<NodeInfo>, StoreError> {
        let value = get_record(self.runner(), &self.keys().reg(id)).await?;
        value.as_deref().map(parse_owner).transpose()
    }

    async fn remove_if_owner(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
    ) -> Result<bool, StoreError> {
        let key = self.keys().reg(id);
        let value = owner_value(owner);
        let cad = &self.inner.cas.0;
        let removed: i64 = self
            .runner()
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
        let key = self.keys().reg(id);
        let (value, used) = (owner_value(owner), owner_value(&NodeInfo::used()));
        let ttl_ms = ms(keep_for).to_string();
        let cas = &self.inner.cas.1;
        let replaced: i64 = self
            .runner()
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
        rewrite::register_many(self.runner(), self.keys(), owner, registrations).await
    }

    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<Beat, StoreError> {
        // Whether the beat was there, and the new one, in one round trip (the
        // same key, so the same slot on a Cluster; only this node writes it).
        let key = self.keys().node(&node.id);
        let mut beat = redis::pipe();
        beat.cmd("EXISTS")
            .arg(&key)
            .cmd("SET")
            .arg(&key)
            .arg(beat_value(node))
            .arg("PX")
            .arg(ms(ttl))
            .ignore();
        let (existed,): (bool,) = self.runner().pipeline(&beat).await?;
        let now = now_ms();
        let mut nodes = redis::pipe();
        nodes
            .cmd("ZADD")
            .arg(self.keys().nodes())
            .arg(now + ms(ttl))
            .arg(owner_value(node))
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.keys().nodes())
            .arg("-inf")
            .arg(now)
            .ignore();
        let () = self.runner().pipeline(&nodes).await?;
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
            .runner()
            .query(redis::cmd("DEL").arg(self.keys().node(&node.id)))
            .await?;
        let _: i64 = self
            .runner()
            .query(
                redis::cmd("ZREM")
                    .arg(self.keys().nodes())
                    .arg(owner_value(node)),
            )
            .await?;
        Ok(())
    }

    fn watch_registrations(&self) -> Option<mpsc::Receiver<Registered>> {
        announce::watch(
            &self.inner.config,
            self.keys().registered_channel(),
            self.inner.health.clone(),
        )
    }

    fn watch_recoveries(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.health.subscribe())
    }

    async fn live_nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        // Bounded: the set is whatever a Redis writer made it.
        let members = live_members(self.runner(), &self.keys().nodes(), now_ms()).await?;
        // A member of another format (an older node's bare id) names no node.
        Ok(members.iter().filter_map(|m| parse_owner(m).ok()).collect())
    }

    async fn nodes_alive(&self) -> Result<usize, StoreError> {
        let n: usize = self
            .runner()
            .query(
                redis::cmd("ZCOUNT")
                    .arg(self.keys().nodes())
                    .arg(now_ms())
                    .arg("+inf"),
            )
            .await?;
        Ok(n)
    }
}
