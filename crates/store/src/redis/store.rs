//! The Redis store itself: the [`Rendezvous`] operations on the keys and
//! values of `keys.rs` and `record.rs`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dtcp_wire::RegistrationId;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use super::announce::{self, WATCH_QUEUE};
use super::bounded::{checked_range, get_record, live_members};
use super::cluster_tracking;
use super::config::RedisConfig;
use super::conn::is_tls_error;
use super::health::Health;
use super::keys::Keys;
use super::pairing::{compare_and_delete, compare_and_set, compare_and_swap, set_nx_get};
use super::record::{
    announcement, beat_value, owner_value, parse_owner, parse_waiter, record_value, waiter_value,
};
use super::rewrite;
use super::run::{Runner, ms, now_ms};
use super::sources;
use super::tracking::{self, Tracking};
use crate::rendezvous::{
    Beat, FORMAT_LEGACY, FORMAT_NEWEST, NodeInfo, Registered, Rendezvous, StoreError,
};

/// Rounds of "register, else replace the waiter found" for a waiter that
/// changes in between (it expired, and another CONNECT left one).
const REGISTER_ROUNDS: usize = 3;

/// How long a node that moved off the legacy format keeps publishing
/// registrations on its channel too: the other nodes move at their own
/// next heartbeat (every 2 s), and until then their `CONNECT`s look up
/// without a waiter and learn of a registration only from that channel.
const LEGACY_LINGER: Duration = Duration::from_secs(5);

/// A member of the `formats` set: a node id and the formats it speaks.
fn parse_formats(member: &str) -> Option<(String, Vec<u32>)> {
    let (id, list) = member.split_once(' ')?;
    let formats = list
        .split(',')
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    Some((id.to_owned(), formats))
}

/// The owner a value names: nobody for no value or a waiter entry.
fn owner_of(value: Option<&str>) -> Result<Option<NodeInfo>, StoreError> {
    match value {
        Some(v) if parse_waiter(v).is_none() => parse_owner(v).map(Some),
        _ => Ok(None),
    }
}

/// The Redis rendezvous store.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    runner: Runner,
    config: RedisConfig,
    keys: Keys,
    /// The cluster format written and asked in ([`Rendezvous::use_format`]).
    format: AtomicU32,
    /// Until when registrations are still broadcast after this node left
    /// the legacy format ([`LEGACY_LINGER`]).
    /// (Unix ms; 0: never.)
    legacy_until_ms: AtomicU64,
    /// The connection `CONNECT`s look on, when it is up (`tracking.rs`).
    tracking: Arc<Tracking>,
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
                // Until the first heartbeat says who is alive: none, which
                // is spoken as the legacy format every node speaks.
                format: AtomicU32::new(0),
                legacy_until_ms: AtomicU64::new(0),
                tracking: Arc::default(),
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

    /// `node`'s member of the `formats` set: its id and the formats it
    /// speaks, `1,2`; none for a node that speaks only the legacy one (as
    /// a node of that release writes none).
    fn formats_member(&self, node: &NodeInfo) -> Option<String> {
        let max = self.inner.config.max_format;
        (max >= FORMAT_NEWEST).then(|| {
            let spoken: Vec<String> = (FORMAT_LEGACY..=max).map(|v| v.to_string()).collect();
            format!("{} {}", node.id, spoken.join(","))
        })
    }

    /// Whether the store speaks the legacy format now (some live node
    /// speaks nothing newer).
    fn legacy(&self) -> bool {
        self.inner.format.load(Ordering::Relaxed) < FORMAT_NEWEST
    }

    /// Publishes a registration to every node, as [`FORMAT_LEGACY`] does:
    /// only while some live node speaks nothing newer, or may still think
    /// so ([`LEGACY_LINGER`]).
    fn broadcast(&self, id: &RegistrationId, value: &str) {
        let lingering = || now_ms() < self.inner.legacy_until_ms.load(Ordering::Relaxed);
        if self.legacy() || lingering() {
            self.publish(self.keys().registered_channel(), announcement(id, value));
        }
    }

    /// Publishes `payload` on `channel`, without making the caller wait.
    /// On a Redis Cluster the channel is sharded (`SPUBLISH`, Redis 7): it
    /// lives on the shard of its slot, where its subscribers are.
    fn publish(&self, channel: String, payload: Vec<u8>) {
        let store = self.clone();
        let verb = if self.inner.config.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        tokio::spawn(async move {
            let _: Result<i64, _> = store
                .runner()
                .query(redis::cmd(verb).arg(channel).arg(payload))
                .await;
        });
    }

    /// `key` is held by the record `current`, not ours: `false` (taken),
    /// unless its node's heartbeat is gone (it crashed), which makes its
    /// registration dead: taken over then, rather than answering
    /// `conflict` until the old record expires. Not the common path.
    async fn held_elsewhere(
        &self,
        key: &str,
        current: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let holder = parse_owner(current)?;
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
        compare_and_set(self.runner(), key, current, value, ttl).await
    }

    /// Tells node `waiter`, which left a waiter entry for `id`, that `id`
    /// is registered and by whom (the 32-byte id, then the record's value),
    /// on its own channel, without making the CREATE wait for it: the
    /// registration itself is already done. A waiter of this node is woken
    /// by its own pending table.
    pub(crate) fn wake(&self, waiter: &str, me: &str, id: &RegistrationId, value: &str) {
        if waiter != me {
            self.publish(self.keys().wake_channel(waiter), announcement(id, value));
        }
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
        for _ in 0..REGISTER_ROUNDS {
            // The common path: one command, the key was free.
            let Some(current) = set_nx_get(self.runner(), &key, &value, ttl).await? else {
                self.broadcast(id, &value);
                return Ok(true);
            };
            if current == value {
                // Our own write, answered late (a retried command).
                return Ok(true);
            }
            if let Some(waiter) = parse_waiter(&current) {
                // A CONNECT came first and waits: the record takes its
                // place, and its node is told. Changed meanwhile: again.
                if compare_and_swap(self.runner(), &key, &current, &value, ttl).await? {
                    self.wake(waiter, &owner.id, id, &value);
                    self.broadcast(id, &value);
                    return Ok(true);
                }
                continue;
            }
            return self.held_elsewhere(&key, &current, &value, ttl).await;
        }
        // A waiter that keeps changing under us: as if taken.
        Ok(false)
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
        owner_of(value.as_deref())
    }

    async fn lookup_or_wait(
        &self,
        id: &RegistrationId,
        waiter: &str,
        grace: Duration,
    ) -> Result<Option<NodeInfo>, StoreError> {
        if self.legacy() {
            // Nodes of the legacy format would not answer a waiter.
            return self.lookup(id).await;
        }
        let key = self.keys().reg(id);
        // Tracked: Redis tells this node when the key is written.
        let limit = self.inner.config.response_timeout;
        match self.inner.tracking.look(&key, limit).await {
            Some(Ok(bytes)) => {
                let value = checked_range(self.runner(), &key, bytes).await?;
                return owner_of(value.as_deref());
            }
            Some(Err(e)) => debug!(error = %e, "tracked look failed; leaving a waiter instead"),
            None => {}
        }
        // One command whatever it finds: the record, or a waiter left.
        let value = set_nx_get(self.runner(), &key, &waiter_value(waiter), grace).await?;
        owner_of(value.as_deref())
    }

    async fn remove_if_owner(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
    ) -> Result<bool, StoreError> {
        compare_and_delete(self.runner(), &self.keys().reg(id), &owner_value(owner)).await
    }

    async fn retire_if_owner(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
        keep_for: Duration,
    ) -> Result<bool, StoreError> {
        let (value, used) = (owner_value(owner), owner_value(&NodeInfo::used()));
        let key = self.keys().reg(id);
        compare_and_swap(self.runner(), &key, &value, &used, keep_for).await
    }

    async fn register_many(
        &self,
        owner: &NodeInfo,
        registrations: &[(RegistrationId, Duration, Option<String>)],
    ) -> Result<Vec<bool>, StoreError> {
        let (held, woken) =
            rewrite::register_many(self.runner(), self.keys(), owner, registrations).await?;
        for (i, waiter) in woken {
            let (id, _, seal) = &registrations[i];
            self.wake(
                &waiter,
                &owner.id,
                id,
                &record_value(owner, seal.as_deref()),
            );
        }
        Ok(held)
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
        if let Some(member) = self.formats_member(node) {
            // Its own key: on a Cluster, its own slot.
            let mut formats = redis::pipe();
            formats
                .cmd("ZADD")
                .arg(self.keys().formats())
                .arg(now + ms(ttl))
                .arg(member)
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(self.keys().formats())
                .arg("-inf")
                .arg(now)
                .ignore();
            let () = self.runner().pipeline(&formats).await?;
        }
        // Read (and reset) the recovery flag whatever the key said.
        let recovered = self.inner.health.take_recovered();
        Ok(if existed && !recovered {
            Beat::Renewed
        } else {
            Beat::Lost
        })
    }

    async fn node_formats(&self) -> Result<Vec<(String, Vec<u32>)>, StoreError> {
        let members = live_members(self.runner(), &self.keys().formats(), now_ms()).await?;
        Ok(members.iter().filter_map(|m| parse_formats(m)).collect())
    }

    fn use_format(&self, version: u32) {
        let version = version.min(self.inner.config.max_format);
        let was = self.inner.format.swap(version, Ordering::Relaxed);
        if was != version {
            info!(format = version, "cluster format in use");
        }
        // From the legacy format: the others may not have moved yet.
        if was == FORMAT_LEGACY && version >= FORMAT_NEWEST {
            let until = now_ms() + ms(LEGACY_LINGER);
            self.inner.legacy_until_ms.store(until, Ordering::Relaxed);
        }
    }

    async fn remove_node(&self, node: &NodeInfo) -> Result<(), StoreError> {
        if let Some(member) = self.formats_member(node) {
            let _: i64 = self
                .runner()
                .query(redis::cmd("ZREM").arg(self.keys().formats()).arg(member))
                .await?;
        }
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

    fn watch_registrations(&self, node_id: &str) -> Option<mpsc::Receiver<Registered>> {
        // The legacy channel too, where nodes of FORMAT_LEGACY publish
        // every registration: silent once every node speaks a newer one.
        let mut channels = vec![self.keys().registered_channel()];
        let config = &self.inner.config;
        if config.max_format >= FORMAT_NEWEST {
            channels.push(self.keys().wake_channel(node_id));
        }
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        if !announce::watch(config, channels, self.inner.health.clone(), tx.clone()) {
            return None;
        }
        // Nodes of an earlier version still answer this node's waiter
        // entries on its channel; looks leave them while tracking is down.
        if config.tracking && config.max_format >= FORMAT_NEWEST {
            let keeper = tracking::Keeper {
                config: config.clone(),
                keys: self.keys().clone(),
                tracking: self.inner.tracking.clone(),
                tx,
            };
            if config.is_cluster() {
                cluster_tracking::start(keeper);
            } else {
                tracking::start(keeper);
            }
        }
        Some(rx)
    }

    fn watch_recoveries(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.health.subscribe())
    }

    fn looks_tracked(&self) -> Option<bool> {
        Some(self.inner.tracking.is_up())
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
