//! The node's standing in a cluster's store: its heartbeat (and so how many
//! nodes are alive), and writing its pending registrations again when the
//! store has lost them (docs/PROTOCOL.md section 3: a pending `CREATE` stays
//! claimable through a Redis restart or failover).

use std::sync::Arc;
use std::time::Duration;

use dtcp_store::Beat;
use metrics::{counter, gauge};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

use crate::formats::common_format;
use crate::metrics::{NODES_ALIVE, STORE_REWRITES, STORE_REWRITTEN};
use crate::node::Node;

/// How often a node renews its heartbeat in the store.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// How long a heartbeat lasts: three missed renewals and the node counts as gone.
pub(crate) const HEARTBEAT_TTL: Duration = Duration::from_secs(6);

/// Renews the heartbeat, for ever; writes the pending registrations again
/// whenever the store says it may have lost them: at once when its
/// connection comes back, and whenever a heartbeat finds the node's own
/// heartbeat gone (a Redis restarted empty, a failover to a replica that
/// lagged).
pub(crate) async fn run(node: Arc<Node>) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut recoveries = node.store.watch_recoveries();
    let mut healthy = true;
    loop {
        let recovered = async {
            match &mut recoveries {
                Some(r) => r.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            ok = recovered => {
                if ok {
                    rewrite(&node, "the store's connection came back").await;
                } else {
                    recoveries = None;
                }
                continue;
            }
        }
        let result = async {
            // Sealed with the signing secret in force now.
            let beat = node.trust.beating(&node.info);
            let beat = node.store.heartbeat(&beat, HEARTBEAT_TTL).await?;
            let live = node.store.live_nodes().await?;
            let formats = node.store.node_formats().await?;
            let sealed = node.trust.sealed_nodes(&live);
            node.store.use_format(common_format(&sealed, &formats));
            // Before the gauge below, which tells that the node knows them;
            // as for the store's format, only heartbeats whose seal checks
            // out count (a Redis writer cannot pick a peer's format).
            let formats: Vec<_> = formats
                .into_iter()
                .filter(|(id, _)| sealed.contains(id.as_str()))
                .collect();
            node.formats.learn(&formats);
            // The peers' addresses, resolved by a task of their own (the
            // heartbeat does not wait): only records whose own seal checks
            // out (not any record of a sealed id: a Redis writer could add
            // one naming its own address beside a node's), so that a Redis
            // writer cannot make an address a peer's.
            let peers = live
                .iter()
                .filter(|n| n.id != node.info.id && node.trust.is_sealed(n));
            node.peers
                .heard(peers.map(|n| n.forward_addr.clone()).collect());
            Ok::<_, dtcp_store::StoreError>((beat, sealed.len()))
        }
        .await;
        match result {
            Ok((beat, alive)) => {
                // Read on this timer, never on a pair's path (and before
                // the gauge, which tells that the node sees them).
                node.per_ip.set_nodes(alive);
                gauge!(NODES_ALIVE).set(alive as f64);
                if !healthy {
                    info!("rendezvous store reachable again");
                }
                healthy = true;
                if beat == Beat::Lost {
                    rewrite(&node, "the store had lost this node's heartbeat").await;
                }
            }
            Err(e) => {
                if healthy {
                    warn!(error = %e, "heartbeat failed: rendezvous store unreachable");
                }
                healthy = false;
            }
        }
    }
}

/// Writes every pending registration (and XEP-0065 pair) of this node to the store again, each
/// with the time its record had left. A registration that another node
/// registered meanwhile stays this node's locally (a CONNECT here still
/// pairs with it) and expires with its TTL.
async fn rewrite(node: &Node, why: &'static str) {
    let started = Instant::now();
    let mut records = node.pending.records();
    // XEP-0065 pairs keep their record until they end (component.rs finds
    // their owner through it).
    records.extend(node.activations.records());
    // Each sealed for its own registration with the signing secret in
    // force now, as a new CREATE's record is.
    let records: Vec<_> = records
        .into_iter()
        .map(|(id, ttl)| (id, ttl, node.trust.seal(&id, &node.info)))
        .collect();
    if records.is_empty() {
        return;
    }
    match node.store.register_many(&node.info, &records).await {
        Ok(held) => {
            let taken = held.iter().filter(|h| !**h).count();
            counter!(STORE_REWRITES).increment(1);
            counter!(STORE_REWRITTEN).increment((held.len() - taken) as u64);
            info!(
                registrations = held.len() - taken,
                held_elsewhere = taken,
                elapsed_ms = started.elapsed().as_millis() as u64,
                why,
                "pending registrations written to the store again"
            );
        }
        // The next recovery or heartbeat tries again.
        Err(e) => {
            warn!(error = %e, registrations = records.len(), why, "rewriting pending registrations failed")
        }
    }
}
