use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dtcp_wire::RegistrationId;
use tokio::time::Instant;

use crate::rendezvous::{Beat, NodeInfo, Rendezvous, StoreError};

/// The in-memory store of a lone node: no Redis, no other nodes.
///
/// Expired entries are dropped when they are next touched and by a sweep in
/// `register`, so the map never holds more than the live registrations plus
/// those that expired since the last registration.
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Owners are shared, not copied: a lone node registers everything under
    /// one owner, and a copy per registration would be two strings each.
    registrations: Mutex<HashMap<RegistrationId, (Arc<NodeInfo>, Instant)>>,
    last_owner: Mutex<Option<Arc<NodeInfo>>>,
    nodes: Mutex<HashMap<String, Instant>>,
    /// The one used-key marker every retired registration shares.
    used: std::sync::OnceLock<Arc<NodeInfo>>,
    /// Pending CREATEs per source address, by entry (one node: no expiry
    /// needed, every entry is uncounted by the node that made it).
    sources: Mutex<HashMap<IpAddr, HashSet<u64>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn shared(&self, owner: &NodeInfo) -> Arc<NodeInfo> {
        let mut last = self.last_owner.lock().expect("poisoned");
        match &*last {
            Some(o) if **o == *owner => o.clone(),
            _ => {
                let o = Arc::new(owner.clone());
                *last = Some(o.clone());
                o
            }
        }
    }

    /// Live registrations (for metrics and tests).
    pub fn len(&self) -> usize {
        let now = Instant::now();
        let map = self.registrations.lock().expect("poisoned");
        map.values().filter(|(_, exp)| *exp > now).count()
    }

    /// Whether no registration is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl Rendezvous for MemoryStore {
    async fn register(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let owner = self.shared(owner);
        let mut map = self.registrations.lock().expect("poisoned");
        // Amortised sweep: at most one pass per doubling of the map.
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, (_, exp)| *exp > now);
        }
        match map.get(id) {
            Some((_, exp)) if *exp > now => Ok(false),
            _ => {
                map.insert(*id, (owner, now + ttl));
                Ok(true)
            }
        }
    }

    async fn count_source(
        &self,
        source: IpAddr,
        entry: u64,
        max: usize,
        _ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut map = self.sources.lock().expect("poisoned");
        let entries = map.entry(source).or_default();
        if entries.contains(&entry) {
            return Ok(true);
        }
        if entries.len() >= max {
            if entries.is_empty() {
                map.remove(&source);
            }
            return Ok(false);
        }
        entries.insert(entry);
        Ok(true)
    }

    async fn uncount_source(&self, source: IpAddr, entry: u64) -> Result<(), StoreError> {
        let mut map = self.sources.lock().expect("poisoned");
        if let Entry::Occupied(mut o) = map.entry(source) {
            o.get_mut().remove(&entry);
            if o.get().is_empty() {
                o.remove();
            }
        }
        Ok(())
    }

    async fn lookup(&self, id: &RegistrationId) -> Result<Option<NodeInfo>, StoreError> {
        let now = Instant::now();
        let map = self.registrations.lock().expect("poisoned");
        Ok(map
            .get(id)
            .filter(|(_, exp)| *exp > now)
            .map(|(owner, _)| NodeInfo::clone(owner)))
    }

    async fn remove_if_owner(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
    ) -> Result<bool, StoreError> {
        let mut map = self.registrations.lock().expect("poisoned");
        match map.get(id) {
            Some((held, _)) if held.id == owner.id => {
                map.remove(id);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn retire_if_owner(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
        keep_for: Duration,
    ) -> Result<bool, StoreError> {
        let used = self.used.get_or_init(|| Arc::new(NodeInfo::used())).clone();
        let mut map = self.registrations.lock().expect("poisoned");
        match map.get_mut(id) {
            Some(entry) if entry.0.id == owner.id => {
                *entry = (used, Instant::now() + keep_for);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn register_many(
        &self,
        owner: &NodeInfo,
        registrations: &[(RegistrationId, Duration, Option<String>)],
    ) -> Result<Vec<bool>, StoreError> {
        let now = Instant::now();
        let shared = self.shared(owner);
        let mut map = self.registrations.lock().expect("poisoned");
        Ok(registrations
            .iter()
            .map(|(id, ttl, seal)| match map.get(id) {
                Some((held, exp)) if *exp > now => held.id == owner.id,
                _ => {
                    // A lone node seals nothing; a seal given is kept as given.
                    let held = match seal {
                        None => shared.clone(),
                        Some(seal) => Arc::new(NodeInfo {
                            seal: Some(seal.clone()),
                            ..owner.clone()
                        }),
                    };
                    map.insert(*id, (held, now + *ttl));
                    true
                }
            })
            .collect())
    }

    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<Beat, StoreError> {
        let now = Instant::now();
        let mut nodes = self.nodes.lock().expect("poisoned");
        match nodes.insert(node.id.clone(), now + ttl) {
            Some(exp) if exp > now => Ok(Beat::Renewed),
            _ => Ok(Beat::Lost),
        }
    }

    async fn remove_node(&self, node: &NodeInfo) -> Result<(), StoreError> {
        self.nodes.lock().expect("poisoned").remove(&node.id);
        Ok(())
    }

    async fn nodes_alive(&self) -> Result<usize, StoreError> {
        let now = Instant::now();
        let nodes = self.nodes.lock().expect("poisoned");
        Ok(nodes.values().filter(|exp| **exp > now).count())
    }

    async fn live_nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        // A lone node: no plane, nothing sealed.
        let now = Instant::now();
        let nodes = self.nodes.lock().expect("poisoned");
        Ok(nodes
            .iter()
            .filter(|(_, exp)| **exp > now)
            .map(|(id, _)| NodeInfo {
                id: id.clone(),
                ..NodeInfo::default()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            ..NodeInfo::default()
        }
    }

    #[tokio::test]
    async fn a_retired_registration_stays_as_a_used_marker() {
        let s = MemoryStore::new();
        let id = RegistrationId::of("k", "a@b", "c@d");
        let ttl = Duration::from_secs(10);
        let keep = Duration::from_millis(100);
        assert!(s.register(&id, &node("a"), ttl).await.unwrap());
        assert!(!s.retire_if_owner(&id, &node("b"), keep).await.unwrap());
        assert!(s.retire_if_owner(&id, &node("a"), keep).await.unwrap());
        assert!(s.lookup(&id).await.unwrap().unwrap().is_used());
        assert!(!s.register(&id, &node("a"), ttl).await.unwrap(), "used");
        tokio::time::sleep(keep * 2).await;
        assert_eq!(s.lookup(&id).await.unwrap(), None);
        assert!(s.register(&id, &node("a"), ttl).await.unwrap());
    }

    #[tokio::test]
    async fn register_lookup_remove() {
        let s = MemoryStore::new();
        let id = RegistrationId::of("k", "a@b", "c@d");
        let ttl = Duration::from_secs(10);
        assert!(s.register(&id, &node("a"), ttl).await.unwrap());
        assert!(!s.register(&id, &node("b"), ttl).await.unwrap(), "conflict");
        assert_eq!(s.lookup(&id).await.unwrap(), Some(node("a")));
        assert!(!s.remove_if_owner(&id, &node("b")).await.unwrap());
        assert_eq!(s.len(), 1);
        assert!(s.remove_if_owner(&id, &node("a")).await.unwrap());
        assert!(s.is_empty());
        assert_eq!(s.lookup(&id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn register_many_writes_the_absent_and_keeps_its_own() {
        let s = MemoryStore::new();
        let ttl = Duration::from_secs(10);
        let ids: Vec<_> = (0..3)
            .map(|i| RegistrationId::of("k", &format!("a{i}@b"), "c@d"))
            .collect();
        assert!(s.register(&ids[0], &node("a"), ttl).await.unwrap());
        assert!(s.register(&ids[1], &node("b"), ttl).await.unwrap());
        let batch: Vec<_> = ids.iter().map(|id| (*id, ttl, None)).collect();
        let written = s.register_many(&node("a"), &batch).await.unwrap();
        assert_eq!(written, [true, false, true]);
        assert_eq!(s.lookup(&ids[1]).await.unwrap(), Some(node("b")));
        assert_eq!(s.lookup(&ids[2]).await.unwrap(), Some(node("a")));
        assert_eq!(s.len(), 3);
    }

    #[tokio::test]
    async fn registrations_and_heartbeats_expire() {
        let s = MemoryStore::new();
        let id = RegistrationId::of("k", "a@b", "c@d");
        let ttl = Duration::from_millis(100);
        assert!(s.register(&id, &node("a"), ttl).await.unwrap());
        assert_eq!(s.heartbeat(&node("a"), ttl).await.unwrap(), Beat::Lost);
        assert_eq!(s.heartbeat(&node("a"), ttl).await.unwrap(), Beat::Renewed);
        assert_eq!(s.nodes_alive().await.unwrap(), 1);
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(s.lookup(&id).await.unwrap(), None);
        assert_eq!(s.nodes_alive().await.unwrap(), 0);
        assert_eq!(
            s.heartbeat(&node("a"), ttl).await.unwrap(),
            Beat::Lost,
            "an expired beat"
        );
        assert!(
            s.register(&id, &node("b"), Duration::from_secs(5))
                .await
                .unwrap()
        );
        assert_eq!(s.lookup(&id).await.unwrap(), Some(node("b")));
    }
}
