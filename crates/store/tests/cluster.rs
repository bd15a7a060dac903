//! The store on a real Redis Cluster (three masters, one replica each): the
//! master that holds the announcement channel's slot is killed, its replica
//! takes over, and announcements keep arriving (sharded pub/sub follows the
//! slot), then it comes back and takes its slots back by a manual failover.
//! The batch rewrite works across slots, and goes through the failover: a
//! node that starts writing its pending registrations again the moment the
//! master dies gets them all written soon after the replica takes over.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, StoreConfig, announcements_flow, node, reg, store};
use dtcp_store::Rendezvous;

/// How long announcements may take to flow again after a failover.
const ANNOUNCEMENTS_BACK: Duration = Duration::from_secs(30);
/// How long a batch rewrite started at the master's death may take to go
/// through, from that death: the failover itself (about 3 s with
/// `cluster-node-timeout 1000`), and one reply's time for a wedged cluster
/// connection to be noticed and replaced. 13 runs took 2.1 to 4.3 s; before
/// wedged connections were replaced, it never went through (three runs of
/// three).
const REWRITE_BACK: Duration = Duration::from_secs(15);
/// Pending registrations of one busy node, as the issue counts them.
const PENDING: usize = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_survive_the_failover_of_their_shard() {
    let mut cluster = Cluster::start(3, 1);
    let prefix = "cl:";
    let config = cluster.config(prefix);
    let writer = store(&config);
    let watcher = store(&config);
    let mut announced = watcher
        .watch_registrations(common::WAITER)
        .expect("announcements");
    assert!(
        announcements_flow(&writer, &watcher, &mut announced, 1_000, ANNOUNCEMENTS_BACK)
            .await
            .is_some(),
        "announcements before the failover"
    );

    let me = node("writer");
    let ttl = Duration::from_secs(60);
    let batch: Vec<_> = (60_000..60_000 + PENDING)
        .map(|i| (reg(i), ttl, None))
        .collect();
    let started = Instant::now();
    let written = writer.register_many(&me, &batch).await.unwrap();
    eprintln!(
        "Redis Cluster: rewrite of {} registrations {:?}",
        batch.len(),
        started.elapsed()
    );
    assert!(written.iter().all(|w| *w));
    for (id, _, _) in batch.iter().step_by(500) {
        assert_eq!(watcher.lookup(id).await.unwrap(), Some(me.clone()));
    }

    let channel = format!("{prefix}wake:{}", common::WAITER);
    let holder = cluster.master_of(&channel);
    // A seed is not special: the one killed may be the first one.
    cluster.nodes[holder].kill();
    let killed = Instant::now();
    // Meanwhile, a node writes its pending registrations again from the
    // moment its store fails, as it would after noticing the loss: each
    // failed batch is tried again until one goes through. This is what used
    // to wedge the cluster connection for good.
    let rewriter = {
        let (writer, me) = (writer.clone(), me.clone());
        let batch: Vec<_> = (100_000..100_000 + PENDING)
            .map(|i| (reg(i), ttl, None))
            .collect();
        tokio::spawn(async move {
            let mut failures = 0;
            loop {
                match writer.register_many(&me, &batch).await {
                    Ok(written) => return (killed.elapsed(), failures, written),
                    Err(e) if killed.elapsed() < REWRITE_BACK => {
                        failures += 1;
                        eprintln!("Redis Cluster: rewrite during the failover failed: {e}");
                        // The poll's interval: the failover is over once a rewrite succeeds.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("no rewrite within {REWRITE_BACK:?} of the death: {e}"),
                }
            }
        })
    };
    let back = announcements_flow(
        &writer,
        &watcher,
        &mut announced,
        10_000,
        ANNOUNCEMENTS_BACK,
    )
    .await;
    eprintln!(
        "Redis Cluster: the channel's master killed; announcements again after {:?}",
        back.map(|_| killed.elapsed())
    );
    assert!(back.is_some(), "announcements after the failover");
    let (took, failures, written) = rewriter.await.unwrap();
    eprintln!(
        "Redis Cluster: rewrite of {PENDING} registrations started at the master's death \
         went through {took:?} after it ({failures} failed tries before)"
    );
    assert!(written.iter().all(|w| *w), "all still ours");
    cluster.wait_ok();
    let promoted = cluster.master_of(&channel);
    assert_ne!(promoted, holder, "a replica holds the channel now");

    // Right after the failover, a rewrite goes through at the first try, and
    // every slot answers lookups again (the promoted shard's included).
    let batch: Vec<_> = (200_000..200_000 + PENDING)
        .map(|i| (reg(i), ttl, None))
        .collect();
    let started = Instant::now();
    let written = writer.register_many(&me, &batch).await.unwrap();
    eprintln!(
        "Redis Cluster: rewrite of {PENDING} registrations right after the failover {:?}",
        started.elapsed()
    );
    assert!(written.iter().all(|w| *w));
    for (id, _, _) in batch.iter().step_by(50) {
        assert_eq!(watcher.lookup(id).await.unwrap(), Some(me.clone()));
    }

    // The killed node comes back as a replica of the promoted one, and takes
    // the slot back by a manual failover: no connection of ours drops, the
    // demoted master ends the subscription itself.
    cluster.nodes[holder].restart();
    let restarted = &cluster.nodes[holder];
    common::wait_until(Duration::from_secs(30), "the old master to resync", || {
        restarted
            .info("replication", "master_link_status")
            .as_deref()
            == Some("up")
    });
    assert_eq!(restarted.cli(&["CLUSTER", "FAILOVER"]).trim(), "OK");
    common::wait_until(Duration::from_secs(30), "the manual failover", || {
        cluster.master_of(&channel) == holder
    });
    let switched = Instant::now();
    let back = announcements_flow(
        &writer,
        &watcher,
        &mut announced,
        80_000,
        ANNOUNCEMENTS_BACK,
    )
    .await;
    eprintln!(
        "Redis Cluster: manual failover of the channel's shard; announcements again after {:?}",
        back.map(|_| switched.elapsed())
    );
    assert!(back.is_some(), "announcements after the manual failover");
}
