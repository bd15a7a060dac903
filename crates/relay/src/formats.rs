//! Which cluster format to speak (docs/PROTOCOL.md section 8.1): to the
//! store, the newest every live node speaks; on a Bridge to one peer, the
//! newest the two speak. Both come from the heartbeats' format lists, read
//! on the heartbeat timer (`membership`), never per pair.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use dtcp_store::{FORMAT_LEGACY, FORMAT_NEWEST};

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
pub(crate) fn common_format(live: &HashSet<&str>, formats: &[(String, Vec<u32>)]) -> u32 {
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
