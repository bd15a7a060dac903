//! The local pending table: CREATEs of this node waiting for their CONNECT,
//! and the per-address limit on them.
//!
//! A claim is the removal of the table entry: whoever removes it (a CONNECT on
//! this node, or a Bridge from another node) is the one pairing, so pairing is
//! exactly-once without a lock held across an await. The entry holds the
//! sending half of a oneshot channel through which the claimant hands its side
//! of the session to the task that holds the Initiator's socket.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use dtcp_forward::{Inbound, Outbound};
use dtcp_store::{NodeInfo, Registered};
use dtcp_wire::RegistrationId;
use metrics::{Gauge, gauge};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::metrics::PENDING;
use crate::server::Slot;

/// The Target's side of a session, handed to the Initiator's task by a claim.
#[derive(Debug)]
pub(crate) enum Claim {
    /// The Target is connected to this node.
    Local(LocalClaim),
    /// The Target is connected to another node, which opened a Bridge.
    Remote(RemoteClaim),
}

/// A Target on another node, reached through the Bridge it opened.
#[derive(Debug)]
pub(crate) struct RemoteClaim {
    /// Frames toward the Target's node (the Bridge's response body).
    pub outbound: Outbound,
    /// Frames from it. Boxed: it is large, and every pending CREATE's claim
    /// channel makes room for a claim.
    pub inbound: Box<Inbound>,
}

/// A Target connected to this node.
#[derive(Debug)]
pub(crate) struct LocalClaim {
    /// The Target's socket, its `OK` not yet sent.
    pub target: TcpStream,
    /// Bytes the Target sent behind its command, to be delivered first.
    pub early: BytesMut,
    /// The Target's connection slot, released when the session ends.
    pub slot: Slot,
    /// When the Target's command was complete: pairing latency starts here.
    pub connect_started: Instant,
}

#[derive(Debug)]
struct Entry {
    /// Tells this registration apart from a later one with the same id, so a
    /// CREATE task never removes an entry it does not own.
    token: u64,
    tx: oneshot::Sender<Claim>,
}

/// CREATEs waiting on this node, by registration id.
#[derive(Debug)]
pub(crate) struct PendingTable {
    entries: DashMap<RegistrationId, Entry>,
    /// CONNECTs on this node waiting for a CREATE that has not arrived yet.
    waiters: DashMap<RegistrationId, Arc<Arrival>>,
    tokens: AtomicU64,
    /// `dtcp_pending_registrations`.
    gauge: Gauge,
}

/// What a CREATE task holds while its registration is in the table.
#[derive(Debug)]
pub(crate) struct Pending {
    pub token: u64,
    pub rx: oneshot::Receiver<Claim>,
}

impl PendingTable {
    /// An empty table (its gauge taken from the recorder installed now).
    pub fn new() -> Self {
        PendingTable {
            entries: DashMap::new(),
            waiters: DashMap::new(),
            tokens: AtomicU64::new(0),
            gauge: gauge!(PENDING),
        }
    }

    /// Registers a pending CREATE; `None` if one with the same id is pending.
    pub fn insert(&self, id: RegistrationId) -> Option<Pending> {
        match self.entries.entry(id) {
            MapEntry::Occupied(_) => None,
            MapEntry::Vacant(slot) => {
                let (tx, rx) = oneshot::channel();
                let token = self.tokens.fetch_add(1, Ordering::Relaxed);
                slot.insert(Entry { token, tx });
                self.gauge.increment(1.0);
                Some(Pending { token, rx })
            }
        }
    }

    /// Wakes CONNECTs on this node waiting for `id`.
    pub fn notify(&self, id: &RegistrationId) {
        if let Some(waiter) = self.waiters.get(id) {
            waiter.notify.notify_waiters();
        }
    }

    /// Another node registered a CREATE: CONNECTs here waiting for it learn
    /// its owner, and go to it without asking the store again.
    pub fn announce(&self, registered: Registered) {
        if let Some(waiter) = self.waiters.get(&registered.id) {
            *waiter.owner.lock().unwrap_or_else(PoisonError::into_inner) = Some(registered.owner);
            waiter.notify.notify_waiters();
        }
    }

    /// Claims `id`: removes it and returns the channel to the CREATE's task.
    pub fn take(&self, id: &RegistrationId) -> Option<oneshot::Sender<Claim>> {
        let (_, entry) = self.entries.remove(id)?;
        self.gauge.decrement(1.0);
        Some(entry.tx)
    }

    /// Withdraws the CREATE's own entry. `false` means it was claimed already
    /// and the claim is on its way through the channel.
    pub fn withdraw(&self, id: &RegistrationId, token: u64) -> bool {
        let removed = self
            .entries
            .remove_if(id, |_, e| e.token == token)
            .is_some();
        if removed {
            self.gauge.decrement(1.0);
        }
        removed
    }

    /// How many CREATEs are pending.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Subscribes to the arrival of `id` on this node.
    pub fn waiter(&self, id: RegistrationId) -> Waiter<'_> {
        let arrival = self.waiters.entry(id).or_default().clone();
        Waiter {
            table: self,
            id,
            arrival,
        }
    }
}

/// What wakes the CONNECTs waiting for one registration.
#[derive(Debug, Default)]
pub(crate) struct Arrival {
    pub notify: Notify,
    /// The owner another node announced, if one did.
    owner: Mutex<Option<NodeInfo>>,
}

/// A CONNECT's subscription to the arrival of its CREATE; unsubscribes on drop.
#[derive(Debug)]
pub(crate) struct Waiter<'a> {
    table: &'a PendingTable,
    id: RegistrationId,
    pub arrival: Arc<Arrival>,
}

impl Waiter<'_> {
    /// The owner announced since the last call, if any.
    pub fn announced_owner(&self) -> Option<NodeInfo> {
        let owner = self.arrival.owner.lock();
        owner.unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        // Two references: ours and the map's. More means another CONNECT for
        // the same id still waits. Both clones happen under the shard lock.
        self.table
            .waiters
            .remove_if(&self.id, |_, n| Arc::strong_count(n) <= 2);
    }
}

/// Pending CREATEs per source address.
#[derive(Debug)]
pub(crate) struct PerIpLimit {
    counts: DashMap<IpAddr, usize>,
    max: usize,
}

impl PerIpLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(PerIpLimit {
            counts: DashMap::new(),
            max,
        })
    }

    /// One more pending CREATE from `ip`, or `None` at the limit.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpGuard> {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        let mut count = self.counts.entry(ip).or_insert(0);
        if *count >= self.max {
            drop(count);
            self.release(ip, 0);
            return None;
        }
        *count += 1;
        Some(IpGuard {
            limit: self.clone(),
            ip,
        })
    }

    fn release(&self, ip: IpAddr, by: usize) {
        if let MapEntry::Occupied(mut o) = self.counts.entry(ip) {
            *o.get_mut() -= by;
            if *o.get() == 0 {
                o.remove();
            }
        }
    }

    /// Addresses with a pending CREATE (for tests).
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.counts.len()
    }
}

/// One pending CREATE counted against its address; uncounted on drop.
#[derive(Debug)]
pub(crate) struct IpGuard {
    limit: Arc<PerIpLimit>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        self.limit.release(self.ip, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_conflict_take_withdraw() {
        let t = PendingTable::new();
        let id = RegistrationId::of("k", "a@b", "c@d");
        let p = t.insert(id).expect("first");
        assert!(t.insert(id).is_none(), "same id pending: conflict");
        assert!(t.take(&id).is_some());
        assert!(!t.withdraw(&id, p.token), "already claimed");
        let p2 = t.insert(id).expect("free again");
        assert!(!t.withdraw(&id, p.token), "an old token removes nothing");
        assert!(t.withdraw(&id, p2.token));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn waiters_are_removed_by_the_last_one() {
        let t = PendingTable::new();
        let id = RegistrationId::of("k", "a@b", "c@d");
        let w1 = t.waiter(id);
        let w2 = t.waiter(id);
        drop(w1);
        assert_eq!(t.waiters.len(), 1);
        drop(w2);
        assert_eq!(t.waiters.len(), 0);
    }

    #[test]
    fn an_announcement_wakes_its_waiters_with_the_owner() {
        let t = PendingTable::new();
        let id = RegistrationId::of("k", "a@b", "c@d");
        let owner = NodeInfo {
            id: "node-a".into(),
            forward_addr: "10.0.0.1:7780".into(),
        };
        let w = t.waiter(id);
        let notified = w.arrival.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let other = RegistrationId::of("k2", "a@b", "c@d");
        t.announce(Registered {
            id: other,
            owner: owner.clone(),
        });
        assert_eq!(w.announced_owner(), None, "not ours");
        t.announce(Registered {
            id,
            owner: owner.clone(),
        });
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(notified.as_mut().poll(&mut cx).is_ready(), "woken");
        assert_eq!(w.announced_owner(), Some(owner));
        assert_eq!(w.announced_owner(), None, "taken once");
    }

    #[test]
    fn per_ip_limit_counts_and_forgets() {
        let l = PerIpLimit::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let a = l.acquire(ip).unwrap();
        let b = l.acquire(mapped).unwrap();
        assert!(l.acquire(ip).is_none(), "mapped and plain are one address");
        assert!(l.acquire("192.0.2.2".parse().unwrap()).is_some());
        drop(a);
        let c = l.acquire(ip).unwrap();
        drop((b, c));
        assert_eq!(l.addresses(), 0);
    }
}
