//! The node's standing in a cluster's store: its heartbeat (and so how many
//! nodes are alive), and writing its pending registrations again when the
//! store has lost them (docs/PROTOCOL.md section 3: a pending `CREATE` stays
//! claimable through a Redis restart or failover).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dtcp_store::{Beat, FORMAT_LEGACY, FORMAT_NEWEST};
use metrics::{counter, gauge};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

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
            // Before the gauge below, which tells that the node knows them.
            node.formats.learn(&formats);
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

/// The cluster format this node speaks to each peer on the Bridge: the
/// newest both speak, as the peers' heartbeats list them (read on the
/// heartbeat timer, never per pair). A peer they do not list (a release
/// before format versions, or one not seen yet) speaks [`FORMAT_LEGACY`].
#[derive(Debug)]
pub(crate) struct PeerFormats {
    /// The newest this node speaks (`--cluster-format-version`).
    newest: u32,
    /// By node id, the newest format both speak; only peers past the legacy one.
    peers: RwLock<HashMap<String, u32>>,
}

impl PeerFormats {
    /// No peer known yet; this node speaks up to `newest`.
    pub(crate) fn new(newest: u32) -> Self {
        PeerFormats {
            newest,
            peers: RwLock::new(HashMap::new()),
        }
    }

    /// The format to speak to the node `peer`.
    pub(crate) fn with(&self, peer: &str) -> u32 {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        peers.get(peer).copied().unwrap_or(FORMAT_LEGACY)
    }

    /// Takes the formats the live heartbeats list ([`dtcp_store::Rendezvous::node_formats`]),
    /// forgetting the nodes they no longer list.
    pub(crate) fn learn(&self, formats: &[(String, Vec<u32>)]) {
        let peers: HashMap<String, u32> = formats
            .iter()
            .filter_map(|(id, spoken)| {
                let best = spoken.iter().copied().filter(|v| *v <= self.newest).max()?;
                (best > FORMAT_LEGACY).then(|| (id.clone(), best))
            })
            .collect();
        *self.peers.write().unwrap_or_else(|e| e.into_inner()) = peers;
    }
}

/// The newest cluster format every node of `live` speaks, as `formats`
/// lists them; a node they do not list (a release before format versions)
/// speaks [`FORMAT_LEGACY`] only. A rolling upgrade so keeps pairing both
/// ways, and moves to the new format when the last old node is gone.
fn common_format(live: &HashSet<&str>, formats: &[(String, Vec<u32>)]) -> u32 {
    let spoken: HashMap<&str, &[u32]> = formats
        .iter()
        .map(|(id, f)| (id.as_str(), f.as_slice()))
        .collect();
    let mut common = FORMAT_NEWEST;
    for id in live {
        let best = spoken
            .get(id)
            .and_then(|f| f.iter().copied().filter(|v| *v <= common).max())
            .unwrap_or(FORMAT_LEGACY);
        common = common.min(best);
    }
    common
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_format_every_live_node_speaks() {
        let both = vec![FORMAT_LEGACY, FORMAT_NEWEST];
        let formats = vec![("a".to_owned(), both.clone()), ("b".to_owned(), both)];
        let live: HashSet<&str> = ["a", "b"].into();
        assert_eq!(common_format(&live, &formats), FORMAT_NEWEST);
        let live: HashSet<&str> = ["a", "b", "old"].into();
        assert_eq!(
            common_format(&live, &formats),
            FORMAT_LEGACY,
            "a node lists none"
        );
        let live: HashSet<&str> = HashSet::new();
        assert_eq!(
            common_format(&live, &formats),
            FORMAT_NEWEST,
            "no other node yet"
        );
    }

    #[test]
    fn each_peer_is_spoken_the_newest_format_both_speak() {
        let formats = vec![
            ("new".to_owned(), vec![FORMAT_LEGACY, FORMAT_NEWEST]),
            ("newer".to_owned(), vec![FORMAT_LEGACY, FORMAT_NEWEST, 9]),
            ("held".to_owned(), vec![FORMAT_LEGACY]),
        ];
        let current = PeerFormats::new(FORMAT_NEWEST);
        current.learn(&formats);
        assert_eq!(current.with("new"), FORMAT_NEWEST);
        assert_eq!(current.with("newer"), FORMAT_NEWEST, "not past its own");
        assert_eq!(current.with("held"), FORMAT_LEGACY);
        assert_eq!(current.with("unlisted"), FORMAT_LEGACY, "an older release");
        let old = PeerFormats::new(FORMAT_LEGACY);
        old.learn(&formats);
        assert_eq!(old.with("new"), FORMAT_LEGACY, "held on format 1");
        current.learn(&formats[2..]);
        assert_eq!(
            current.with("new"),
            FORMAT_LEGACY,
            "gone from the heartbeats"
        );
    }
}
