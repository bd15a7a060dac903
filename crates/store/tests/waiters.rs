//! Pairing through waiter entries, against a real `redis-server`: a
//! `CREATE` nobody waits for publishes nothing, a `CONNECT` that came
//! first is told on its node's own channel, a rewrite after a flush
//! answers the waiters left meanwhile, and a pair costs Redis four
//! commands (`INFO commandstats`, the calls scripts make included). With
//! tracked looks, a `CONNECT` that came first leaves no waiter at all and
//! is told by Redis, and that pair costs four commands too.

mod common;

use std::time::Duration;

use common::{Server, TOLD_WITHIN, calls, delta, node, reg, store, tracked_race_pairs};
use dtcp_store::{NodeInfo, RedisConfig, Rendezvous};

fn config(redis: &Server, prefix: &str) -> RedisConfig {
    RedisConfig {
        urls: vec![redis.url()],
        prefix: prefix.into(),
        ..RedisConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_nobody_waits_for_publishes_nothing_and_a_waiter_is_told() {
    let redis = Server::start(&[]);
    // Waiter entries, as a Redis Cluster (or a node whose tracking
    // connection is down) makes them.
    let config = RedisConfig {
        tracking: false,
        ..config(&redis, "w:")
    };
    let (a, b) = (store(&config), store(&config));
    let (owner, grace) = (node("owner"), Duration::from_secs(5));
    let mut told = b.watch_registrations("b").expect("a subscription");
    // The subscription is made in the background: wait until it is.
    common::wait_until(TOLD_WITHIN, "the subscription", || {
        redis.cli(&["PUBSUB", "NUMSUB", "w:wake:b"]).contains("\n1")
    });

    // Nobody waits: registered, looked up, removed; nothing published.
    let before = calls(&redis);
    assert!(a.register(&reg(1), &owner, grace).await.unwrap());
    assert_eq!(
        b.lookup_or_wait(&reg(1), "b", grace).await.unwrap(),
        Some(owner.clone())
    );
    assert!(a.remove_if_owner(&reg(1), &owner).await.unwrap());
    let used = delta(&before, &calls(&redis));
    assert_eq!(used.get("publish"), None, "{used:?}");
    assert_eq!(a.lookup(&reg(1)).await.unwrap(), None, "removed");

    // B's CONNECT comes first: it leaves a waiter (which a plain lookup
    // reads as nothing), A's CREATE replaces it and tells B alone.
    assert_eq!(b.lookup_or_wait(&reg(2), "b", grace).await.unwrap(), None);
    assert_eq!(a.lookup(&reg(2)).await.unwrap(), None);
    assert_eq!(
        b.lookup_or_wait(&reg(2), "b", grace).await.unwrap(),
        None,
        "a second look leaves the waiter as it is"
    );
    assert!(a.register(&reg(2), &owner, grace).await.unwrap());
    let message = tokio::time::timeout(TOLD_WITHIN, told.recv()).await;
    let message = message.expect("told in time").expect("a message");
    assert_eq!((message.id, message.owner), (reg(2), Some(owner.clone())));
    assert_eq!(a.lookup(&reg(2)).await.unwrap(), Some(owner.clone()));
    // A second CREATE of it is a conflict, as ever (its owner is alive).
    a.heartbeat(&owner, Duration::from_secs(60)).await.unwrap();
    assert!(!b.register(&reg(2), &node("other"), grace).await.unwrap());

    // A waiter of the registering node itself is replaced, no message.
    assert_eq!(
        a.lookup_or_wait(&reg(3), "owner", grace).await.unwrap(),
        None
    );
    let before = calls(&redis);
    assert!(a.register(&reg(3), &owner, grace).await.unwrap());
    assert_eq!(delta(&before, &calls(&redis)).get("publish"), None);

    // The store lost a record; a CONNECT left a waiter in its place; the
    // owner's rewrite replaces it and tells the waiting node.
    redis.cli(&["FLUSHALL"]);
    assert_eq!(b.lookup_or_wait(&reg(2), "b", grace).await.unwrap(), None);
    let rewritten = a
        .register_many(&owner, &[(reg(2), grace, None)])
        .await
        .unwrap();
    assert_eq!(rewritten, [true]);
    let message = tokio::time::timeout(TOLD_WITHIN, told.recv()).await;
    let message = message.expect("told in time").expect("a message");
    assert_eq!(message.id, reg(2));

    // Removal and retirement leave another's value as it was.
    let other = node("other");
    assert!(!a.remove_if_owner(&reg(2), &other).await.unwrap());
    assert!(!a.retire_if_owner(&reg(2), &other, grace).await.unwrap());
    assert_eq!(a.lookup(&reg(2)).await.unwrap(), Some(owner.clone()));
    assert!(a.retire_if_owner(&reg(2), &owner, grace).await.unwrap());
    let marker = a.lookup(&reg(2)).await.unwrap();
    assert!(marker.is_some_and(|m| m.is_used()), "a used marker");
    assert!(!a.register(&reg(2), &owner, grace).await.unwrap(), "void");
}

/// A pair as the relay makes one across two nodes (the per-source count is
/// not on this path: a node counts an address in the store only past its
/// share of the limit), `n` times: at most four commands each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_costs_redis_four_commands() {
    let redis = Server::start(&[]);
    let config = config(&redis, "n:");
    let (a, b) = (store(&config), store(&config));
    let owner = NodeInfo {
        seal: Some("c2VhbA".into()),
        ..node("owner")
    };
    let (ttl, grace) = (Duration::from_secs(300), Duration::from_secs(5));
    // Scripts loaded, connections made: not what a pair costs.
    assert!(a.register(&reg(0), &owner, ttl).await.unwrap());
    assert!(a.remove_if_owner(&reg(0), &owner).await.unwrap());
    assert!(a.register(&reg(0), &owner, ttl).await.unwrap());
    assert!(a.retire_if_owner(&reg(0), &owner, ttl).await.unwrap());
    let n = 200;
    let before = calls(&redis);
    for i in 1..=n {
        let id = reg(i);
        assert!(a.register(&id, &owner, ttl).await.unwrap());
        assert_eq!(
            b.lookup_or_wait(&id, "b", grace).await.unwrap(),
            Some(owner.clone())
        );
        // Half plain keys, half signed keys that stay void once used.
        let removed = if i % 2 == 0 {
            a.remove_if_owner(&id, &owner).await.unwrap()
        } else {
            a.retire_if_owner(&id, &owner, ttl).await.unwrap()
        };
        assert!(removed);
    }
    let used = delta(&before, &calls(&redis));
    let total: u64 = used.values().sum();
    eprintln!("{n} pairs: {total} commands {used:?}");
    assert!(
        total <= 4 * n as u64,
        "{total} commands for {n} pairs: {used:?}"
    );
}

/// A `CONNECT` that comes first leaves nothing in Redis; the registering
/// `SET NX GET` is what tells its node (a tracking push, no `PUBLISH`);
/// the pair costs four commands; and with the tracking connection killed,
/// looks leave waiters again until it is back, and are still told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_look_leaves_no_waiter_and_is_told_by_redis() {
    let redis = Server::start(&[]);
    let config = config(&redis, "t:");
    let (a, b) = (store(&config), store(&config));
    let (owner, grace) = (node("owner"), Duration::from_secs(5));
    let ttl = Duration::from_secs(300);
    let mut told = b.watch_registrations("b").expect("a subscription");
    common::wait_until(TOLD_WITHIN, "the tracking connection", || {
        redis.tracking_clients().len() == 1
    });
    // Scripts loaded, connections made: not what a pair costs.
    assert!(a.register(&reg(0), &owner, ttl).await.unwrap());
    assert!(a.remove_if_owner(&reg(0), &owner).await.unwrap());

    let n = 50;
    let before = calls(&redis);
    tracked_race_pairs(&a, &b, &mut told, &owner, (1..=n).map(reg)).await;
    let used = delta(&before, &calls(&redis));
    let total: u64 = used.values().sum();
    eprintln!("{n} pairs, CONNECT first: {total} commands {used:?}");
    assert_eq!(used.get("publish"), None, "{used:?}");
    assert_eq!(used.get("evalsha"), None, "{used:?}");
    assert!(
        total <= 4 * n as u64,
        "{total} commands for {n} pairs: {used:?}"
    );

    // The tracking connection killed: the next look may leave a waiter
    // (the connection is being made again) or be tracked once more; either
    // way the registration is told to b.
    for id in redis.tracking_clients() {
        redis.cli(&["CLIENT", "KILL", "ID", &id]);
    }
    let id = reg(n + 1);
    assert_eq!(b.lookup_or_wait(&id, "b", grace).await.unwrap(), None);
    assert!(a.register(&id, &owner, ttl).await.unwrap());
    let message = tokio::time::timeout(TOLD_WITHIN, told.recv()).await;
    assert_eq!(message.expect("told in time").expect("a message").id, id);
    common::wait_until(TOLD_WITHIN, "the tracking connection again", || {
        redis.tracking_clients().len() == 1
    });
}
