//! What the store's tests share beyond the Redis processes of
//! `dtcp-testkit` (shared with the system tests): a store configuration for
//! each deployment, nodes, registration ids, announcements.

#![allow(dead_code, unused_imports)] // each test binary uses part of it

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dtcp_store::{NodeInfo, RedisConfig, RedisStore, Registered};
pub(crate) use dtcp_testkit::{
    Cluster, DOWN_AFTER_MS, MASTER_NAME, REDIS_PASSWORD, SENTINEL_PASSWORD, SentinelSet, Server,
    wait_until,
};
use dtcp_wire::RegistrationId;

/// A store configuration for a deployment of the test's own.
pub(crate) trait StoreConfig {
    /// The configuration of a store on it, its keys under `prefix`.
    fn config(&self, prefix: &str) -> RedisConfig;
}

impl StoreConfig for SentinelSet {
    fn config(&self, prefix: &str) -> RedisConfig {
        RedisConfig {
            sentinel: Some(dtcp_store::SentinelConfig {
                master: MASTER_NAME.into(),
                sentinels: self.sentinel_addrs(),
                password: Some(SENTINEL_PASSWORD.into()),
            }),
            password: Some(REDIS_PASSWORD.into()),
            prefix: prefix.into(),
            ..RedisConfig::default()
        }
    }
}

impl StoreConfig for Cluster {
    fn config(&self, prefix: &str) -> RedisConfig {
        RedisConfig {
            urls: self.urls(),
            prefix: prefix.into(),
            ..RedisConfig::default()
        }
    }
}

/// A node as the store sees it.
pub(crate) fn node(id: &str) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        forward_addr: format!("127.0.0.1:{}", 7000 + id.len()),
        seal: None,
    }
}

/// A distinct registration id.
pub(crate) fn reg(n: usize) -> RegistrationId {
    RegistrationId::of(
        "key",
        &format!("initiator{n}@a.example"),
        "target@b.example",
    )
}

/// A store on `config`, panicking if it cannot be made.
/// It speaks the newest format at once, as a node does once its first
/// heartbeat finds every live node speaks it.
pub(crate) fn store(config: &RedisConfig) -> RedisStore {
    use dtcp_store::Rendezvous;
    let store = RedisStore::new(config).expect("store");
    store.use_format(dtcp_store::FORMAT_NEWEST);
    store
}

/// The node id the tests' waiting store waits as.
pub(crate) const WAITER: &str = "watcher";

/// Leaves a waiter for fresh ids through `waiter` (as node [`WAITER`]), and
/// registers each through `publisher`, until `watcher` (the subscription of
/// node [`WAITER`]) is told of one of them, for at most `limit`; returns how
/// long it took.
pub(crate) async fn announcements_flow(
    publisher: &RedisStore,
    waiter: &RedisStore,
    watcher: &mut tokio::sync::mpsc::Receiver<Registered>,
    first_id: usize,
    limit: Duration,
) -> Option<Duration> {
    use dtcp_store::Rendezvous;
    let started = Instant::now();
    let owner = node("publisher");
    let mut n = first_id;
    while started.elapsed() < limit {
        let id = reg(n);
        n += 1;
        let _ = waiter
            .lookup_or_wait(&id, WAITER, Duration::from_secs(60))
            .await;
        let _ = publisher
            .register(&id, &owner, Duration::from_secs(60))
            .await;
        let wait = tokio::time::timeout(Duration::from_millis(200), async {
            while let Some(r) = watcher.recv().await {
                if r.id == id {
                    return true;
                }
            }
            false
        })
        .await;
        if wait == Ok(true) {
            return Some(started.elapsed());
        }
    }
    None
}

/// Calls per command since the server started, from `INFO commandstats`.
pub(crate) fn calls(redis: &Server) -> HashMap<String, u64> {
    redis.command_calls()
}

/// The calls of `after` past `before`, per command, leaving out those of
/// the test's own `redis-cli` (`INFO`, `CLIENT LIST`) and the checks that
/// subscriptions and the tracking connection make every 2 s (`PING`; on a
/// Redis Cluster, the subscription's `EXISTS`, and `CLUSTER SLOTS`, `CLIENT
/// TRACKING ON` and `CLUSTER MYID` on every master).
pub(crate) fn delta(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> HashMap<String, u64> {
    after
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "info"
                    | "ping"
                    | "client|list"
                    | "client|tracking"
                    | "cluster|slots"
                    | "cluster|myid"
                    | "exists"
            )
        })
        .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// How long a store test waits for a message it expects.
pub(crate) const TOLD_WITHIN: Duration = Duration::from_secs(5);

/// Pairs each of `ids` as a `CONNECT` that comes first does, with tracked
/// looks: node b's look through `b` finds nothing, `a` registers it for
/// `owner`, Redis's push tells b (on `told`, naming the id, not its owner),
/// b looks again and finds `owner`, and `a` removes it, whose push (b read
/// the key again) is drained here.
pub(crate) async fn tracked_race_pairs(
    a: &RedisStore,
    b: &RedisStore,
    told: &mut tokio::sync::mpsc::Receiver<Registered>,
    owner: &NodeInfo,
    ids: impl IntoIterator<Item = RegistrationId>,
) {
    use dtcp_store::Rendezvous;
    let (ttl, grace) = (Duration::from_secs(300), Duration::from_secs(5));
    for id in ids {
        assert_eq!(b.lookup_or_wait(&id, "b", grace).await.unwrap(), None);
        assert!(a.register(&id, owner, ttl).await.unwrap());
        let message = tokio::time::timeout(TOLD_WITHIN, told.recv()).await;
        let message = message.expect("told in time").expect("a message");
        assert_eq!((message.id, message.owner), (id, None));
        assert_eq!(
            b.lookup_or_wait(&id, "b", grace).await.unwrap(),
            Some(owner.clone())
        );
        assert!(a.remove_if_owner(&id, owner).await.unwrap());
        let message = tokio::time::timeout(TOLD_WITHIN, told.recv()).await;
        assert_eq!(message.expect("told").expect("a message").id, id);
    }
}
