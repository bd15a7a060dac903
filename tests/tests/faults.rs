//! The store loses what it held: pending `CREATE`s stay claimable
//! (docs/PROTOCOL.md section 3), because their owners write them again.

use std::time::{Duration, Instant};

use dtcp_client::dtcp_wire::Condition;
use dtcp_client::{ClientError, Initiator, Target};
use dtcp_tests::testkit::Process;
use dtcp_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Pending CREATEs in the restart test, spread over three nodes. For a run by
/// hand, `DTCP_RESTART_PENDING` sets another count and `DTCP_RESTART_OWNERS`
/// the number of nodes they are on (the README's numbers: 5,000 on one).
const PENDING: usize = 500;
/// Targets connecting at once.
const CONCURRENCY: usize = 50;

fn from_env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn registrations(redis: &RedisServer) -> usize {
    redis.keys().iter().filter(|k| k.contains("reg:")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_creates_survive_a_redis_restart_without_persistence() {
    raise_fd_limit();
    let n = from_env("DTCP_RESTART_PENDING", PENDING);
    let owners = from_env("DTCP_RESTART_OWNERS", 3).clamp(1, 3);
    let mut redis = RedisServer::start();
    let urls = [redis.url()];
    let nodes = [0, 1, 2].map(|_| {
        NodeOptions::cluster(&urls)
            .max_pending_per_ip(n + 1)
            .connect_grace(10.0)
            .start()
    });
    nodes[0].wait_for("dtcp_nodes_alive", 3.0).await;

    // n CREATEs, spread over the owners.
    let mut initiators = JoinSet::new();
    for k in 0..n {
        let addr = nodes[k % owners].addr;
        initiators.spawn(async move {
            let t = triple(&format!("restart-{k}"));
            (k, Initiator::connect(addr, &t).await)
        });
    }
    eventually(Duration::from_secs(30), "every CREATE pending", || async {
        let mut total = 0.0;
        for node in &nodes {
            total += node.metric("dtcp_pending_registrations").await;
        }
        total == n as f64
    })
    .await;
    assert_eq!(registrations(&redis), n);

    // Redis dies and comes back empty at the same address.
    redis.restart();
    // (Not asserted empty: the nodes may have written everything again by
    // the time a look could tell.)
    let back = Instant::now();
    eventually(
        Duration::from_secs(15),
        "every CREATE written again",
        || async { registrations(&redis) == n },
    )
    .await;
    eprintln!(
        "{n} pending registrations on {owners} node(s) written again {:?} after Redis answered",
        back.elapsed()
    );
    let mut rewritten = 0.0;
    for node in &nodes {
        rewritten += node
            .metric("dtcp_store_rewritten_registrations_total")
            .await;
    }
    assert!(rewritten >= n as f64, "rewritten {rewritten}");

    // Every one pairs from another node than its CREATE's, every byte checked.
    let mut targets = JoinSet::new();
    let mut by_key = std::collections::HashMap::new();
    for k in 0..n {
        if targets.len() >= CONCURRENCY {
            let (k, tg) = targets.join_next().await.unwrap().unwrap();
            by_key.insert(k, tg);
        }
        let addr = nodes[(k % owners + 1) % 3].addr;
        targets.spawn(async move {
            let t = triple(&format!("restart-{k}"));
            let tg = Target::connect(addr, &t)
                .await
                .unwrap_or_else(|e| panic!("CONNECT {k} after the restart: {e}"));
            (k, tg)
        });
    }
    while let Some(joined) = targets.join_next().await {
        let (k, tg) = joined.unwrap();
        by_key.insert(k, tg);
    }
    while let Some(joined) = initiators.join_next().await {
        let (k, i) = joined.unwrap();
        let i = i.unwrap_or_else(|e| panic!("CREATE {k}: {e}"));
        let tg = by_key.remove(&k).unwrap();
        exchange(i, tg, 1024, k as u64 + 1).await;
    }
    for node in &nodes {
        node.wait_for("dtcp_pending_registrations", 0.0).await;
        node.wait_for("dtcp_bridge_streams_active{role=\"server\"}", 0.0)
            .await;
    }
}

/// A Redis that stops answering (`DEBUG SLEEP`): every client still gets an
/// answer, `unavailable`, within the connect grace plus the store's
/// operation timeout, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_answers_every_client_within_its_bounds() {
    /// The store's operation timeout (`--redis-operation-timeout`).
    const OPERATION: Duration = Duration::from_secs(1);
    /// The connect grace.
    const GRACE: Duration = Duration::from_secs(1);
    /// Slack for a busy machine.
    const SLACK: Duration = Duration::from_secs(2);
    let redis = RedisServer::start_with(free_port(), &["--enable-debug-command", "local"]);
    let node = || {
        NodeOptions::cluster(&[redis.url()])
            .connect_grace(GRACE.as_secs_f64())
            .arg("--redis-connect-timeout", 0.5)
            .arg("--redis-response-timeout", 0.5)
            .arg("--redis-operation-timeout", OPERATION.as_secs_f64())
            .start()
    };
    let (a, b) = (node(), node());
    a.wait_for("dtcp_nodes_alive", 2.0).await;
    let port = redis.port.to_string();
    let mut stall = Process::new("redis-cli", ["-p", &port, "DEBUG", "SLEEP", "6"]);
    stall.spawn();
    eventually(Duration::from_secs(5), "Redis stalled", || {
        unanswered_ping(redis.port)
    })
    .await;
    let bound = GRACE + OPERATION + SLACK;
    let started = Instant::now();
    let (tc, tt) = (triple("stall-c"), triple("stall-t"));
    let create = tokio::time::timeout(bound, Initiator::connect(a.addr, &tc));
    let connect = tokio::time::timeout(bound, Target::connect(b.addr, &tt));
    let (create, connect) = tokio::join!(create, connect);
    let took = started.elapsed();
    let condition = |r: Result<Result<TcpStream, ClientError>, _>, who: &str| match r {
        Ok(Err(e)) => e.condition(),
        Ok(Ok(_)) => panic!("{who} paired with nobody"),
        Err(_) => panic!("{who} got no answer within {bound:?}"),
    };
    assert_eq!(condition(create, "CREATE"), Some(Condition::Unavailable));
    assert_eq!(condition(connect, "CONNECT"), Some(Condition::Unavailable));
    eprintln!("both answered unavailable within {took:?} of a stalled Redis");
    let _ = stall.wait_exit(Duration::from_secs(10));
    // Once Redis answers again, pairing works.
    eventually(
        Duration::from_secs(10),
        "a pair after the stall",
        || async {
            let t = triple(&format!("stall-after-{:?}", Instant::now()));
            let i = tokio::spawn({
                let (addr, t) = (a.addr, t.clone());
                async move { Initiator::connect(addr, &t).await }
            });
            let tg = Target::connect(b.addr, &t).await;
            matches!((i.await.unwrap(), tg), (Ok(_), Ok(_)))
        },
    )
    .await;
}

/// Whether the Redis on `port` leaves a PING unanswered for a quarter of a
/// second, which an idle one on loopback answers in well under a
/// millisecond: it is stalled.
async fn unanswered_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 16];
    tokio::time::timeout(Duration::from_millis(250), s.read(&mut reply))
        .await
        .is_err()
}
