//! The store on Redis Sentinel, with real processes: a master, a replica and
//! three sentinels (passwords on both). Through a manual failover and then
//! the new master killed, the store writes to whichever server is master and
//! announcements keep arriving.

mod common;

use std::time::{Duration, Instant};

use common::{SentinelSet, StoreConfig, announcements_flow, node, reg, store};
use dtcp_store::{Beat, RedisStore, Rendezvous};

/// How long announcements may take to flow again after a failover.
const ANNOUNCEMENTS_BACK: Duration = Duration::from_secs(20);
/// How long a failover may take before the store writes again.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);

/// Registers fresh ids until one succeeds; how long that took.
async fn first_register(s: &RedisStore, from: usize) -> Duration {
    let started = Instant::now();
    let me = node("writer");
    for n in from.. {
        if matches!(
            s.register(&reg(n), &me, Duration::from_secs(60)).await,
            Ok(true)
        ) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < FAILOVER_BOUND,
            "no write accepted within {FAILOVER_BOUND:?}"
        );
        // The poll's interval: the next write tries again.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_follows_the_master_through_failovers() {
    let mut set = SentinelSet::start();
    let config = set.config("sent:");
    let writer = store(&config);
    let watcher = store(&config);
    let mut announced = watcher
        .watch_registrations(common::WAITER)
        .expect("announcements");
    let me = node("writer");
    let ttl = Duration::from_secs(60);

    assert!(
        announcements_flow(&writer, &watcher, &mut announced, 1_000, ANNOUNCEMENTS_BACK)
            .await
            .is_some(),
        "announcements before any failover"
    );
    assert_eq!(writer.heartbeat(&me, ttl).await.unwrap(), Beat::Lost);
    assert_eq!(writer.heartbeat(&me, ttl).await.unwrap(), Beat::Renewed);
    let first_master = set.master_port();
    assert_eq!(first_master, set.servers[0].port);
    let key = |n: usize| format!("sent:reg:{}", reg(n));
    assert!(writer.register(&reg(1), &me, ttl).await.unwrap());
    assert!(
        !set.server(first_master)
            .cli(&["GET", &key(1)])
            .trim()
            .is_empty()
    );

    // 1. A manual failover: both servers stay up, roles swap.
    let out = set.sentinels[0].cli(&["SENTINEL", "FAILOVER", common::MASTER_NAME]);
    assert_eq!(out.trim(), "OK", "SENTINEL FAILOVER");
    common::wait_until(FAILOVER_BOUND, "the sentinels to name a new master", || {
        set.master_port() != first_master
    });
    let second_master = set.master_port();
    // Writes that reach the old master before the sentinels demote it are
    // lost with it (Sentinel's own window): the node learns of it from a
    // recovery, below. Once it is demoted, every write lands on the new one.
    common::wait_until(FAILOVER_BOUND, "the old master to be demoted", || {
        set.server(first_master)
            .info("replication", "role")
            .as_deref()
            == Some("slave")
    });
    let gap = first_register(&writer, 2_000).await;
    eprintln!("manual failover: first register {gap:?} after the old master was demoted");
    assert!(writer.register(&reg(2), &me, ttl).await.unwrap());
    let new = set.server(second_master);
    assert_eq!(new.info("replication", "role").as_deref(), Some("master"));
    assert!(
        new.cli(&["GET", &key(2)]).contains("writer"),
        "the write is on the new master"
    );
    let back =
        announcements_flow(&writer, &watcher, &mut announced, 3_000, ANNOUNCEMENTS_BACK).await;
    eprintln!("manual failover: announcements again after {back:?}");
    assert!(back.is_some(), "announcements after the manual failover");

    // Let the old master resync as a replica before the next failover.
    common::wait_until(FAILOVER_BOUND, "the old master to replicate", || {
        set.server(first_master)
            .info("replication", "master_link_status")
            .as_deref()
            == Some("up")
    });
    set.wait_settled();
    let mut recoveries = writer.watch_recoveries().unwrap();
    recoveries.borrow_and_update();

    // 2. The master killed: the sentinels promote the replica.
    set.server(second_master).kill();
    let killed = Instant::now();
    let gap = first_register(&writer, 10_000).await;
    eprintln!(
        "master killed: first successful register {gap:?} after the kill \
         (sentinel down-after-milliseconds {} ms)",
        common::DOWN_AFTER_MS
    );
    assert!(gap < FAILOVER_BOUND);
    assert_eq!(
        set.master_port(),
        first_master,
        "the old master is back in charge"
    );
    assert!(writer.register(&reg(3), &me, ttl).await.unwrap());
    assert!(
        set.server(first_master)
            .cli(&["GET", &key(3)])
            .contains("writer")
    );
    assert!(
        recoveries.has_changed().unwrap(),
        "the failover is a recovery"
    );
    assert_eq!(
        writer.heartbeat(&me, ttl).await.unwrap(),
        Beat::Lost,
        "after a failover the node writes its registrations again"
    );
    let back = announcements_flow(
        &writer,
        &watcher,
        &mut announced,
        20_000,
        ANNOUNCEMENTS_BACK,
    )
    .await;
    eprintln!(
        "master killed: announcements again {:?} after the kill",
        back.map(|_| killed.elapsed())
    );
    assert!(back.is_some(), "announcements after the master was killed");

    // The batch rewrite lands on the new master too.
    let batch: Vec<_> = (50_000..50_500).map(|i| (reg(i), ttl, None)).collect();
    let written = writer.register_many(&me, &batch).await.unwrap();
    assert!(written.iter().all(|w| *w));
    assert_eq!(
        watcher.lookup(&reg(50_499)).await.unwrap(),
        Some(me.clone())
    );
}
