//! The store on a real Redis Cluster (three masters, one replica each): the
//! master that holds the announcement channel's slot is killed, its replica
//! takes over, and announcements keep arriving (sharded pub/sub follows the
//! slot), then it comes back and takes its slots back by a manual failover.
//! The batch rewrite works across slots, and goes through the failover: a
//! node that starts writing its pending registrations again the moment the
//! master dies gets them all written soon after the replica takes over.

mod common;

use std::time::{Duration, Instant};

use common::{
    Cluster, StoreConfig, TOLD_WITHIN, announcements_flow, calls, delta, node, reg, store,
    tracked_race_pairs,
};
use dtcp_store::{RedisConfig, Rendezvous};

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
    // Looks leave waiters, answered on the watcher's channel: that channel's
    // shard is the one that fails over (tracked looks have a test below).
    let config = RedisConfig {
        tracking: false,
        ..cluster.config(prefix)
    };
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

/// Tracked looks on a Redis Cluster: the node's looks are tracked on every
/// master, a `CONNECT` that comes first leaves nothing and is told by the
/// shard that holds its key, and that race path costs four commands a pair
/// over all the masters (no script, no `PUBLISH`), spread over them with
/// the keys. A master's tracked connection killed: its looks leave waiters
/// or are tracked again, the next registration is told either way, and
/// tracking comes back on that master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_looks_on_a_cluster_cost_four_commands_over_the_shards() {
    let cluster = Cluster::start(3, 0);
    let config = cluster.config("tr:");
    let (a, b) = (store(&config), store(&config));
    let (owner, grace) = (node("owner"), Duration::from_secs(5));
    let ttl = Duration::from_secs(300);
    let mut told = b.watch_registrations("b").expect("a subscription");
    let tracked = || {
        cluster
            .nodes
            .iter()
            .all(|master| master.tracking_clients().len() == 1)
    };
    common::wait_until(TOLD_WITHIN, "tracking on every master", tracked);
    common::wait_until(TOLD_WITHIN, "the store to track its looks", || {
        b.looks_tracked() == Some(true)
    });
    // Scripts loaded, connections made: not what a pair costs.
    for i in 0..30 {
        assert!(a.register(&reg(i), &owner, ttl).await.unwrap());
        assert!(a.remove_if_owner(&reg(i), &owner).await.unwrap());
    }

    let n = 60;
    let before: Vec<_> = cluster.nodes.iter().map(calls).collect();
    tracked_race_pairs(&a, &b, &mut told, &owner, (100..100 + n).map(reg)).await;
    let used: Vec<_> = cluster
        .nodes
        .iter()
        .zip(&before)
        .map(|(master, before)| delta(before, &calls(master)))
        .collect();
    let per_master: Vec<u64> = used.iter().map(|u| u.values().sum()).collect();
    eprintln!("{n} pairs, CONNECT first, per master: {per_master:?} {used:?}");
    for u in &used {
        assert_eq!(u.get("publish"), None, "{used:?}");
        assert_eq!(u.get("spublish"), None, "{used:?}");
        assert_eq!(u.get("evalsha"), None, "{used:?}");
    }
    let total: u64 = per_master.iter().sum();
    assert!(
        total <= 4 * n as u64,
        "{total} commands for {n} pairs: {used:?}"
    );
    assert!(
        per_master.iter().all(|&k| k > 0),
        "every shard holds some of the keys: {per_master:?}"
    );

    // Each master's tracked connection killed in turn: the next
    // registration of a key on that master is still told to b.
    for (m, master) in cluster.nodes.iter().enumerate() {
        for id in master.tracking_clients() {
            master.cli(&["CLIENT", "KILL", "ID", &id]);
        }
        let id = (1_000..)
            .map(reg)
            .find(|id| cluster.master_of(&format!("tr:reg:{id}")) == m)
            .unwrap();
        assert_eq!(b.lookup_or_wait(&id, "b", grace).await.unwrap(), None);
        assert!(a.register(&id, &owner, ttl).await.unwrap());
        let message = tokio::time::timeout(TOLD_WITHIN, async {
            loop {
                match told.recv().await {
                    Some(r) if r.id == id => return Some(r),
                    Some(_) => {}
                    None => return None,
                }
            }
        })
        .await;
        assert!(
            matches!(message, Ok(Some(_))),
            "master {m}: told after its tracked connection was killed"
        );
    }
    common::wait_until(TOLD_WITHIN, "tracking on every master again", tracked);
    common::wait_until(TOLD_WITHIN, "the store to track its looks again", || {
        b.looks_tracked() == Some(true)
    });
}
