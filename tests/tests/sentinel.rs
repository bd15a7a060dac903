//! A cluster on Redis Sentinel (a master, a replica, three sentinels, all
//! with passwords, given to the nodes as files): the master dies with
//! sessions paired and pending on three nodes. Paired sessions keep flowing
//! without a byte lost, pending ones pair after the failover, and new pairs
//! work again within a bound measured here.

use std::path::Path;
use std::time::{Duration, Instant};

use dtcp_client::{Initiator, Target};
use dtcp_tests::testkit::{MASTER_NAME, REDIS_PASSWORD, SENTINEL_PASSWORD, SentinelSet};
use dtcp_tests::*;
use sha2::Digest;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Sessions paired across the failover, and CREATEs left pending across it.
const PAIRED: usize = 3;
const PENDING: usize = 30;
/// Each paired session sends this much each way, paced over [`PACED_FOR`],
/// so that it is in full flow while the master dies.
const PACED_BYTES: usize = 4 << 20;
const PACED_FOR: Duration = Duration::from_secs(6);
/// The most a new pair may take after the master's death: the sentinels'
/// down-after time (1 s), their election and the nodes finding the new
/// master (about 2 s measured), with room for a busy machine.
const NEW_PAIR_BOUND: Duration = Duration::from_secs(15);

fn sentinel_node(set: &SentinelSet, dir: &Path) -> Relay {
    let redis_pw = dir.join("redis-password");
    let sentinel_pw = dir.join("sentinel-password");
    std::fs::write(&redis_pw, format!("{REDIS_PASSWORD}\n")).unwrap();
    std::fs::write(&sentinel_pw, format!("{SENTINEL_PASSWORD}\n")).unwrap();
    let mut options = NodeOptions::new()
        .arg("--cluster-secret", SECRET)
        .forward_listen("127.0.0.1:0")
        .arg("--redis-sentinel-master", MASTER_NAME)
        .arg("--redis-password-file", redis_pw.display())
        .arg("--redis-sentinel-password-file", sentinel_pw.display())
        .max_pending_per_ip(10_000)
        .connect_grace(10.0);
    for s in &set.sentinels {
        options = options.arg("--redis-sentinel", s.addr());
    }
    options.start()
}

/// Writes `PACED_BYTES` of `Pattern::new(seed)` over [`PACED_FOR`], then
/// half-closes; returns their SHA-256.
async fn paced_send<W: AsyncWriteExt + Unpin>(w: &mut W, seed: u64) -> [u8; 32] {
    const CHUNK: usize = 64 * 1024;
    let pause = PACED_FOR / (PACED_BYTES / CHUNK) as u32;
    let mut p = Pattern::new(seed);
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    for _ in 0..PACED_BYTES / CHUNK {
        p.fill(&mut buf);
        h.update(&buf);
        w.write_all(&buf).await.expect("send during the failover");
        // A sleep: the pace that spreads the transfer over the failover.
        tokio::time::sleep(pause).await;
    }
    w.shutdown().await.unwrap();
    h.finalize().into()
}

/// Both directions of a paired session, paced, every byte checked.
async fn paced_exchange(i: TcpStream, tg: TcpStream, seed: u64) {
    let (mut ir, mut iw) = i.into_split();
    let (mut tr, mut tw) = tg.into_split();
    let (a, b, got_t, got_i) = tokio::join!(
        paced_send(&mut iw, seed),
        paced_send(&mut tw, seed + 1),
        recv_digest(&mut tr),
        recv_digest(&mut ir),
    );
    assert_eq!(got_t, (PACED_BYTES as u64, a), "initiator -> target");
    assert_eq!(got_i, (PACED_BYTES as u64, b), "target -> initiator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_loses_no_session() {
    let mut set = SentinelSet::start();
    let dir = std::env::temp_dir().join(format!("dtcp-sentinel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let nodes = [0, 1, 2].map(|_| sentinel_node(&set, &dir));
    nodes[0].wait_for("dtcp_nodes_alive", 3.0).await;

    // Sessions in flow, each across two nodes.
    let mut flowing = Vec::new();
    for k in 0..PAIRED {
        let t = triple(&format!("sentinel-paired-{k}"));
        let (i, tg) = pair(nodes[k % 3].addr, nodes[(k + 1) % 3].addr, &t).await;
        flowing.push(tokio::spawn(paced_exchange(i, tg, 10 * k as u64 + 1)));
    }
    // CREATEs waiting, on every node.
    let mut pending = Vec::new();
    for k in 0..PENDING {
        let addr = nodes[k % 3].addr;
        pending.push(tokio::spawn(async move {
            Initiator::connect(addr, &triple(&format!("sentinel-pending-{k}"))).await
        }));
    }
    eventually(Duration::from_secs(10), "every CREATE pending", || async {
        let mut total = 0.0;
        for node in &nodes {
            total += node.metric("dtcp_pending_registrations").await;
        }
        total == PENDING as f64
    })
    .await;

    // The master dies.
    let old = set.master_port();
    set.server(old).kill();
    let killed = Instant::now();

    // A new pair works again within the bound.
    let mut attempt = 0;
    let gap = loop {
        attempt += 1;
        let t = triple(&format!("sentinel-new-{attempt}"));
        let i = tokio::spawn({
            let (addr, t) = (nodes[0].addr, t.clone());
            async move { Initiator::connect(addr, &t).await }
        });
        let tg = Target::connect(nodes[1].addr, &t).await;
        match (i.await.unwrap(), tg) {
            (Ok(i), Ok(tg)) => {
                exchange(i, tg, 1024, 7).await;
                break killed.elapsed();
            }
            _ => {
                assert!(
                    killed.elapsed() < NEW_PAIR_BOUND,
                    "no new pair within {NEW_PAIR_BOUND:?} of the master's death"
                );
                // A sleep: the pause between two attempts, each a pair of its own.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_ne!(set.master_port(), old, "the sentinels named a new master");
    eprintln!("a new pair worked {gap:?} after the master was killed ({attempt} attempts)");

    // Every pending CREATE pairs, from another node than its own.
    for (k, initiator) in pending.into_iter().enumerate() {
        let t = triple(&format!("sentinel-pending-{k}"));
        let tg = Target::connect(nodes[(k + 1) % 3].addr, &t)
            .await
            .unwrap_or_else(|e| panic!("pending CREATE {k} after the failover: {e}"));
        let i = initiator.await.unwrap().expect("its Initiator paired");
        exchange(i, tg, 1024, 100 + k as u64).await;
    }
    // And every session in flow arrived whole.
    for session in flowing {
        session.await.unwrap();
    }
    for node in &nodes {
        node.wait_for("dtcp_pending_registrations", 0.0).await;
        node.wait_for("dtcp_sessions_active{path=\"forwarded\"}", 0.0)
            .await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
