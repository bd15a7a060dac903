//! The cluster-wide count of pending CREATEs per address, against a real
//! `redis-server` and the embedded store: an entry counted twice (what a
//! retry after a lost reply sends) is counted once, uncounting is
//! idempotent too, and on Redis an entry expires on its own.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{Server, store};
use dtcp_store::{MemoryStore, RedisConfig, Rendezvous};

const TTL: Duration = Duration::from_secs(30);

/// What both stores must do, at a limit of two per address.
async fn counts_each_entry_once(s: &dyn Rendezvous) {
    let (ip, other): (IpAddr, IpAddr) =
        ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
    assert!(s.count_source(ip, 1, 2, TTL).await.unwrap());
    assert!(
        s.count_source(ip, 1, 2, TTL).await.unwrap(),
        "a retry is still counted"
    );
    assert!(
        s.count_source(ip, 2, 2, TTL).await.unwrap(),
        "the retry took no room"
    );
    assert!(
        !s.count_source(ip, 3, 2, TTL).await.unwrap(),
        "at the limit"
    );
    assert!(
        s.count_source(ip, 2, 2, TTL).await.unwrap(),
        "counted already"
    );
    assert!(
        s.count_source(other, 3, 2, TTL).await.unwrap(),
        "per address"
    );
    s.uncount_source(ip, 1).await.unwrap();
    s.uncount_source(ip, 1).await.unwrap();
    assert!(
        s.count_source(ip, 4, 2, TTL).await.unwrap(),
        "one room, not two"
    );
    assert!(!s.count_source(ip, 5, 2, TTL).await.unwrap());
    for (addr, entry) in [(ip, 2), (ip, 4), (other, 3)] {
        s.uncount_source(addr, entry).await.unwrap();
    }
}

#[tokio::test]
async fn the_embedded_store_counts_each_entry_once() {
    counts_each_entry_once(&MemoryStore::new()).await;
}

/// How long past its TTL a dead entry may still be counted (Redis's
/// clock, the script's own trim; generous for a loaded machine).
const EXPIRY_SLACK: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_counts_each_entry_once_and_forgets_it_in_time() {
    let redis = Server::start(&[]);
    let config = RedisConfig {
        urls: vec![redis.url()],
        prefix: "src-test:".into(),
        ..RedisConfig::default()
    };
    let s = store(&config);
    counts_each_entry_once(&s).await;
    assert_eq!(
        redis.cli(&["DBSIZE"]).trim(),
        "0",
        "every key went with its last entry"
    );

    // An entry left behind (its node died) expires on its own, though
    // others keep the address's key alive.
    let ip: IpAddr = "192.0.2.3".parse().unwrap();
    let short = Duration::from_millis(300);
    assert!(s.count_source(ip, 10, 2, short).await.unwrap());
    assert!(s.count_source(ip, 11, 2, TTL).await.unwrap());
    assert!(!s.count_source(ip, 12, 2, TTL).await.unwrap());
    // Polled: a refused count counts nothing, so asking again is harmless.
    let deadline = std::time::Instant::now() + short + EXPIRY_SLACK;
    while !s.count_source(ip, 12, 2, TTL).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead entry is gone within {EXPIRY_SLACK:?} of its TTL"
        );
        // The poll's interval.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for entry in [11, 12] {
        s.uncount_source(ip, entry).await.unwrap();
    }
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0");
}
