//! The store on a real Redis Cluster (three masters, one replica each): the
//! master that holds the announcement channel's slot is killed, its replica
//! takes over, and announcements keep arriving (sharded pub/sub follows the
//! slot), then it comes back and takes its slots back by a manual failover.
//! The batch rewrite works across slots.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, announcements_flow, node, reg, store};
use dtcp_store::Rendezvous;

/// How long announcements may take to flow again after a failover.
const ANNOUNCEMENTS_BACK: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_survive_the_failover_of_their_shard() {
    let mut cluster = Cluster::start(3, 1);
    let prefix = "cl:";
    let config = cluster.config(prefix);
    let writer = store(&config);
    let watcher = store(&config);
    let mut announced = watcher.watch_registrations().expect("announcements");
    assert!(
        announcements_flow(&writer, &mut announced, 1_000, ANNOUNCEMENTS_BACK)
            .await
            .is_some(),
        "announcements before the failover"
    );

    let me = node("writer");
    let ttl = Duration::from_secs(60);
    let batch: Vec<_> = (60_000..65_000).map(|i| (reg(i), ttl, None)).collect();
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

    let channel = format!("{prefix}registered");
    let holder = cluster.master_of(&channel);
    // A seed is not special: the one killed may be the first one.
    cluster.nodes[holder].kill();
    let killed = Instant::now();
    let back = announcements_flow(&writer, &mut announced, 10_000, ANNOUNCEMENTS_BACK).await;
    eprintln!(
        "Redis Cluster: the channel's master killed; announcements again after {:?}",
        back.map(|_| killed.elapsed())
    );
    assert!(back.is_some(), "announcements after the failover");
    cluster.wait_ok();
    let promoted = cluster.master_of(&channel);
    assert_ne!(promoted, holder, "a replica holds the channel now");

    // Not asserted here: a batch rewrite right after this failover. It kept
    // failing ("no answer within 3s") for 30 s in one run of four, as if the
    // connection kept routing the dead master's slots to it: an open bug of
    // the Cluster store, noted in the README's failure table.

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
    let back = announcements_flow(&writer, &mut announced, 80_000, ANNOUNCEMENTS_BACK).await;
    eprintln!(
        "Redis Cluster: manual failover of the channel's shard; announcements again after {:?}",
        back.map(|_| switched.elapsed())
    );
    assert!(back.is_some(), "announcements after the manual failover");
}
