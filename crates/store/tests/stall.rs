//! A stalled Redis (`DEBUG SLEEP`, which Redis 7 allows only with
//! `--enable-debug-command local`): every store operation returns within the
//! configured operation timeout, on a single server and on a Redis Cluster,
//! and works again once Redis does.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cluster, SentinelSet, Server, StoreConfig, node, reg, store};
use dtcp_store::{RedisConfig, RedisStore, Rendezvous, StoreError};

/// What the timer and the scheduler may add to the operation timeout.
const SLACK: Duration = Duration::from_millis(300);
/// How long each server sleeps.
const STALL_SECS: &str = "2.5";

fn short_timeouts(config: RedisConfig) -> RedisConfig {
    RedisConfig {
        connect_timeout: Duration::from_millis(300),
        response_timeout: Duration::from_millis(400),
        operation_timeout: Duration::from_millis(1000),
        ..config
    }
}

/// Runs every operation at once; each one's result and time.
async fn every_operation(s: &Arc<RedisStore>) -> Vec<(&'static str, bool, Duration)> {
    type Op = std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;
    let me = node("me");
    let ttl = Duration::from_secs(30);
    let ops: Vec<(&'static str, Op)> = vec![
        ("register", {
            let (s, me) = (s.clone(), me.clone());
            Box::pin(async move { s.register(&reg(1), &me, ttl).await.map(drop) })
        }),
        ("lookup", {
            let s = s.clone();
            Box::pin(async move { s.lookup(&reg(2)).await.map(drop) })
        }),
        ("remove_if_owner", {
            let (s, me) = (s.clone(), me.clone());
            Box::pin(async move { s.remove_if_owner(&reg(3), &me).await.map(drop) })
        }),
        ("register_many", {
            let (s, me) = (s.clone(), me.clone());
            Box::pin(async move {
                let batch: Vec<_> = (10..600).map(|i| (reg(i), ttl, None)).collect();
                s.register_many(&me, &batch).await.map(drop)
            })
        }),
        ("heartbeat", {
            let (s, me) = (s.clone(), me.clone());
            Box::pin(async move { s.heartbeat(&me, ttl).await.map(drop) })
        }),
        ("nodes_alive", {
            let s = s.clone();
            Box::pin(async move { s.nodes_alive().await.map(drop) })
        }),
        ("remove_node", {
            let (s, me) = (s.clone(), me.clone());
            Box::pin(async move { s.remove_node(&me).await.map(drop) })
        }),
    ];
    let runs = ops.into_iter().map(|(name, op)| {
        tokio::spawn(async move {
            let started = Instant::now();
            let ok = op.await.is_ok();
            (name, ok, started.elapsed())
        })
    });
    let mut out = Vec::new();
    for run in runs.collect::<Vec<_>>() {
        out.push(run.await.unwrap());
    }
    out
}

fn check_bounded(results: &[(&str, bool, Duration)], limit: Duration, what: &str) {
    for (name, ok, took) in results {
        eprintln!(
            "{what}: {name} answered {} after {took:?}",
            if *ok { "ok" } else { "unavailable" }
        );
        assert!(*took <= limit + SLACK, "{what}: {name} took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_gets_an_answer_within_the_timeout() {
    let redis = Server::start(&["--enable-debug-command", "local"]);
    let config = short_timeouts(RedisConfig {
        urls: vec![redis.url()],
        prefix: "stall:".into(),
        ..RedisConfig::default()
    });
    let s = Arc::new(store(&config));
    assert!(every_operation(&s).await.iter().all(|(_, ok, _)| *ok));

    let mut sleeper = redis.cli_background(&["DEBUG", "SLEEP", STALL_SECS]);
    // Time for the background `DEBUG SLEEP` to reach the server: a server
    // asleep answers nothing, so its sleep cannot be polled for.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let results = every_operation(&s).await;
    check_bounded(&results, config.operation_timeout, "single");
    assert!(
        results.iter().all(|(_, ok, _)| !ok),
        "the server sleeps longer than the timeout"
    );
    sleeper.wait().unwrap();
    let after = every_operation(&s).await;
    assert!(after.iter().all(|(_, ok, _)| *ok), "awake again: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_cluster_gets_an_answer_within_the_timeout() {
    // Nodes wait longer than the stall before they call one failed.
    let cluster = Cluster::start_with(3, 0, 10_000);
    let config = short_timeouts(RedisConfig {
        prefix: "stall:".into(),
        ..cluster.config("stall:")
    });
    let s = Arc::new(store(&config));
    assert!(every_operation(&s).await.iter().all(|(_, ok, _)| *ok));

    let sleepers: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| n.cli_background(&["DEBUG", "SLEEP", STALL_SECS]))
        .collect();
    // Time for the background `DEBUG SLEEP` to reach the server: a server
    // asleep answers nothing, so its sleep cannot be polled for.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let results = every_operation(&s).await;
    check_bounded(&results, config.operation_timeout, "cluster");
    assert!(results.iter().any(|(_, ok, _)| !ok), "the stall is seen");
    for mut sleeper in sleepers {
        sleeper.wait().unwrap();
    }
    let started = Instant::now();
    loop {
        let after = every_operation(&s).await;
        if after.iter().all(|(_, ok, _)| *ok) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "awake again: {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sentinel_master_gets_an_answer_within_the_timeout() {
    // The sentinels wait longer than the stall before they fail over.
    let set = SentinelSet::start_with(10_000, &["--enable-debug-command", "local"]);
    let config = short_timeouts(set.config("stall:"));
    let s = Arc::new(store(&config));
    assert!(every_operation(&s).await.iter().all(|(_, ok, _)| *ok));

    let mut sleeper = set.servers[0].cli_background(&["DEBUG", "SLEEP", STALL_SECS]);
    // Time for the background `DEBUG SLEEP` to reach the server: a server
    // asleep answers nothing, so its sleep cannot be polled for.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let results = every_operation(&s).await;
    check_bounded(&results, config.operation_timeout, "sentinel");
    assert!(results.iter().all(|(_, ok, _)| !ok), "the master sleeps");
    sleeper.wait().unwrap();
    let started = Instant::now();
    loop {
        let after = every_operation(&s).await;
        if after.iter().all(|(_, ok, _)| *ok) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "awake again: {after:?}"
        );
    }
}
