//! Writing pending registrations back after the store lost them, against a
//! real `redis-server`: the signals that tell a node to (heartbeat, recovery
//! count) and the batch rewrite itself, timed.

mod common;

use std::time::{Duration, Instant};

use common::{Server, node, reg, store};
use dtcp_store::{Beat, RedisConfig, Rendezvous};

/// The pending registrations of one busy node, as the issue counts them.
const PENDING: usize = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_registrations_are_written_back_after_a_flush() {
    let redis = Server::start(&[]);
    let config = RedisConfig {
        urls: vec![redis.url()],
        prefix: "rw:".into(),
        ..RedisConfig::default()
    };
    let s = store(&config);
    let owner = node("owner");
    let ttl = Duration::from_secs(300);
    let pending: Vec<_> = (0..PENDING)
        .map(|i| (reg(i), ttl - Duration::from_millis(i as u64), None))
        .collect();
    let first = s.register_many(&owner, &pending).await.unwrap();
    assert!(first.iter().all(|w| *w), "a fresh store takes them all");
    assert_eq!(
        s.register_many(&owner, &pending).await.unwrap(),
        first,
        "written again: still ours"
    );

    assert_eq!(redis.cli(&["FLUSHALL"]).trim(), "OK");
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0");

    // Lookups go on while the batch is written: none waits for the batch.
    let prober = s.clone();
    let probe = tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            let t = Instant::now();
            prober.lookup(&reg(PENDING + 1)).await.unwrap();
            worst = worst.max(t.elapsed());
        }
        worst
    });
    let started = Instant::now();
    let written = s.register_many(&owner, &pending).await.unwrap();
    let took = started.elapsed();
    let worst_lookup = probe.await.unwrap();
    eprintln!(
        "rewrite of {PENDING} registrations after FLUSHALL: {took:?}; \
         slowest concurrent lookup: {worst_lookup:?}"
    );
    assert_eq!(written.len(), PENDING);
    assert!(written.iter().all(|w| *w));
    assert!(took < Duration::from_secs(5), "{took:?} for {PENDING}");
    assert!(
        worst_lookup < Duration::from_millis(500),
        "a lookup waited {worst_lookup:?} behind the batch"
    );

    assert_eq!(redis.cli(&["DBSIZE"]).trim(), PENDING.to_string());
    for i in [0, 1, PENDING / 2, PENDING - 1] {
        assert_eq!(s.lookup(&reg(i)).await.unwrap(), Some(owner.clone()));
        let key = format!("rw:reg:{}", reg(i));
        let pttl: u64 = redis.cli(&["PTTL", &key]).trim().parse().unwrap();
        let want = pending[i].1.as_millis() as u64;
        assert!(
            pttl <= want && pttl + 10_000 > want,
            "TTL {pttl} ms, the remaining {want} ms"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_registration_is_left_alone() {
    let redis = Server::start(&[]);
    let config = RedisConfig {
        urls: vec![redis.url()],
        prefix: "own:".into(),
        ..RedisConfig::default()
    };
    let s = store(&config);
    let ttl = Duration::from_secs(60);
    assert!(s.register(&reg(1), &node("other"), ttl).await.unwrap());
    let batch: Vec<_> = (0..3).map(|i| (reg(i), ttl, None)).collect();
    let written = s.register_many(&node("me"), &batch).await.unwrap();
    assert_eq!(written, [true, false, true]);
    assert_eq!(s.lookup(&reg(1)).await.unwrap(), Some(node("other")));
    assert_eq!(s.lookup(&reg(2)).await.unwrap(), Some(node("me")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_shows_in_the_heartbeat_and_the_recovery_count() {
    let mut redis = Server::start(&[]);
    let config = RedisConfig {
        urls: vec![redis.url()],
        prefix: "hb:".into(),
        ..RedisConfig::default()
    };
    let s = store(&config);
    let me = node("me");
    let ttl = Duration::from_secs(6);
    let mut recoveries = s.watch_recoveries().expect("Redis can lose records");
    assert_eq!(
        s.heartbeat(&me, ttl).await.unwrap(),
        Beat::Lost,
        "first beat"
    );
    assert_eq!(s.heartbeat(&me, ttl).await.unwrap(), Beat::Renewed);
    assert_eq!(s.nodes_alive().await.unwrap(), 1);

    redis.restart();
    let started = Instant::now();
    // The first beat after the restart may fail (the old connection is
    // found dead); the next answers, and says what happened.
    let beat = loop {
        match s.heartbeat(&me, ttl).await {
            Ok(beat) => break beat,
            Err(e) => assert!(started.elapsed() < Duration::from_secs(10), "{e}"),
        }
    };
    assert_eq!(beat, Beat::Lost, "an emptied store");
    assert_eq!(s.heartbeat(&me, ttl).await.unwrap(), Beat::Renewed);
    tokio::time::timeout(Duration::from_secs(1), recoveries.changed())
        .await
        .expect("a recovery is signalled")
        .unwrap();
    assert!(*recoveries.borrow() >= 1);

    // FLUSHALL drops no connection: only the missing beat tells.
    assert_eq!(redis.cli(&["FLUSHALL"]).trim(), "OK");
    assert_eq!(s.heartbeat(&me, ttl).await.unwrap(), Beat::Lost);
}
