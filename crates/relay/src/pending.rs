//! The pending table: registrations of this node waiting for their claim,
//! and the claims that complete them.
//!
//! A claim is the removal of the table entry: whoever removes it (a CONNECT on
//! this node, or a Bridge from another node) is the one pairing, so pairing is
//! exactly-once without a lock held across an await. The entry holds the
//! sending half of a oneshot channel through which the claimant hands its side
//! of the session (a `C`: the node's is [`crate::claim::Claim`]) to the task
//! that holds the registering client's socket. What a claim carries is not
//! the table's business: it only passes it on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use dtcp_store::{NodeInfo, Registered};
use dtcp_wire::RegistrationId;
use metrics::{Gauge, gauge};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::metrics::PENDING;
use crate::protocol::Protocol;

#[derive(Debug)]
struct Entry<C> {
    /// Tells this registration apart from a later one with the same id, so a
    /// CREATE task never removes an entry it does not own.
    token: u64,
    tx: oneshot::Sender<C>,
    /// When its store record expires, once it has one
    /// ([`PendingTable::recorded`]): what a rewrite of the store gives it.
    record_expires: Option<Instant>,
    /// What the registering client speaks: a claim from another node
    /// pairs a XEP-0065 waiter without starting its session.
    protocol: Protocol,
}

/// CREATEs waiting on this node, by registration id; a claim hands over a `C`.
#[derive(Debug)]
pub(crate) struct PendingTable<C> {
    entries: DashMap<RegistrationId, Entry<C>>,
    /// CONNECTs on this node expecting a CREATE that has not arrived yet.
    expected: DashMap<RegistrationId, Arc<Expected>>,
    tokens: AtomicU64,
    /// Set once the node takes no more claims: see [`PendingTable::close`].
    closed: AtomicBool,
    /// `dtcp_pending_registrations`.
    gauge: Gauge,
}

/// Why a registration was not entered in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InsertError {
    /// One with the same id is pending.
    Conflict,
    /// The table is closed: the node is shutting down.
    Closed,
}

/// A claimed entry: the channel to its registering task, and what it knew.
#[derive(Debug)]
pub(crate) struct Taken<C> {
    /// Where the claimant sends its side.
    pub(crate) tx: oneshot::Sender<C>,
    /// What the registering client speaks.
    pub(crate) protocol: Protocol,
    /// When its store record expires, if it has one: a SOCKS5 pair keeps it,
    /// and writes it again if the store loses it.
    pub(crate) record_expires: Option<Instant>,
}

/// What a CREATE task holds while its registration is in the table: the
/// claim comes through it.
#[derive(Debug)]
pub(crate) struct Ticket<C> {
    /// Tells this entry apart from a later one with the same id.
    pub(crate) token: u64,
    /// Where the claimant's side comes.
    pub(crate) rx: oneshot::Receiver<C>,
}

impl<C> PendingTable<C> {
    /// An empty table (its gauge taken from the recorder installed now).
    pub(crate) fn new() -> Self {
        PendingTable {
            entries: DashMap::new(),
            expected: DashMap::new(),
            tokens: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            gauge: gauge!(PENDING),
        }
    }

    /// Registers a pending CREATE (or XEP-0065 waiter).
    pub(crate) fn insert(
        &self,
        id: RegistrationId,
        protocol: Protocol,
    ) -> Result<Ticket<C>, InsertError> {
        match self.entries.entry(id) {
            // Checked under the shard's lock, which `close` takes after
            // setting the flag: an entry is either refused or cleared.
            _ if self.closed.load(Ordering::SeqCst) => Err(InsertError::Closed),
            MapEntry::Occupied(_) => Err(InsertError::Conflict),
            MapEntry::Vacant(slot) => {
                let (tx, rx) = oneshot::channel();
                let token = self.tokens.fetch_add(1, Ordering::Relaxed);
                slot.insert(Entry {
                    token,
                    tx,
                    record_expires: None,
                    protocol,
                });
                self.gauge.increment(1.0);
                Ok(Ticket { token, rx })
            }
        }
    }

    /// Notes that the entry `token` of `id` has a store record until
    /// `expires`, so that it is written again if the store loses it.
    pub(crate) fn recorded(&self, id: &RegistrationId, token: u64, expires: Instant) {
        if let Some(mut entry) = self.entries.get_mut(id)
            && entry.token == token
        {
            entry.record_expires = Some(expires);
        }
    }

    /// The registrations with a store record, each with the time its record
    /// has left: what to write again when the store has lost them.
    pub(crate) fn records(&self) -> Vec<(RegistrationId, Duration)> {
        let now = Instant::now();
        self.entries
            .iter()
            .filter_map(|e| Some((*e.key(), record_left(e.record_expires, now)?)))
            .collect()
    }

    /// Wakes CONNECTs on this node expecting `id`.
    pub(crate) fn notify(&self, id: &RegistrationId) {
        if let Some(expected) = self.expected.get(id) {
            expected.notify.notify_waiters();
        }
    }

    /// Another node registered a CREATE: CONNECTs here expecting it learn
    /// its owner, and go to it without asking the store again; or, when
    /// the store only knows that its record changed, look again now.
    pub(crate) fn announce(&self, registered: Registered) {
        if let Some(expected) = self.expected.get(&registered.id) {
            if let Some(owner) = registered.owner {
                *expected
                    .owner
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(owner);
            }
            expected.notify.notify_waiters();
        }
    }

    /// Claims `id`: removes it and returns the channel to the CREATE's task.
    pub(crate) fn take(&self, id: &RegistrationId) -> Option<oneshot::Sender<C>> {
        self.take_entry(id).map(|taken| taken.tx)
    }

    /// Claims `id`, with what its entry knew.
    pub(crate) fn take_entry(&self, id: &RegistrationId) -> Option<Taken<C>> {
        let (_, entry) = self.entries.remove(id)?;
        self.gauge.decrement(1.0);
        Some(Taken {
            tx: entry.tx,
            protocol: entry.protocol,
            record_expires: entry.record_expires,
        })
    }

    /// Withdraws the CREATE's own entry. `false` means it was claimed already
    /// and the claim is on its way through the channel.
    pub(crate) fn withdraw(&self, id: &RegistrationId, token: u64) -> bool {
        let removed = self
            .entries
            .remove_if(id, |_, e| e.token == token)
            .is_some();
        if removed {
            self.gauge.decrement(1.0);
        }
        removed
    }

    /// Closes the table when the node takes no more claims: every entry is
    /// removed, so that its CREATE's ticket sees its channel close and the
    /// wait ends (with `shutting-down`), and later inserts are refused.
    ///
    /// This is how a node's shutdown reaches its pending CREATEs: through
    /// the channel each already waits on, rather than through a shutdown
    /// future in every pending CREATE's state.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let mut removed = 0;
        self.entries.retain(|_, _| {
            removed += 1;
            false
        });
        self.gauge.decrement(f64::from(removed));
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// How many CREATEs are pending.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Subscribes to the arrival of `id` on this node (a CONNECT expecting
    /// its CREATE).
    pub(crate) fn expect(&self, id: RegistrationId) -> Expectation<'_, C> {
        let expected = self.expected.entry(id).or_default().clone();
        Expectation {
            table: self,
            id,
            expected,
        }
    }
}

/// The time a store record good until `expires` has left at `now`, if it
/// has a record and any time left: what a rewrite gives it again.
pub(crate) fn record_left(expires: Option<Instant>, now: Instant) -> Option<Duration> {
    let left = expires?.checked_duration_since(now)?;
    (!left.is_zero()).then_some(left)
}

/// What wakes the CONNECTs expecting one registration.
#[derive(Debug, Default)]
pub(crate) struct Expected {
    /// Woken when the registration arrives here or is announced elsewhere.
    pub(crate) notify: Notify,
    /// The owner another node announced, if one did.
    owner: Mutex<Option<NodeInfo>>,
}

/// A CONNECT's subscription to the arrival of its CREATE; unsubscribes on drop.
#[derive(Debug)]
pub(crate) struct Expectation<'a, C> {
    table: &'a PendingTable<C>,
    id: RegistrationId,
    /// Shared with the table and with other CONNECTs for the same id.
    pub(crate) expected: Arc<Expected>,
}

impl<C> Expectation<'_, C> {
    /// The owner announced since the last call, if any.
    pub(crate) fn announced_owner(&self) -> Option<NodeInfo> {
        let owner = self.expected.owner.lock();
        owner.unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl<C> Drop for Expectation<'_, C> {
    fn drop(&mut self) {
        // Two references: ours and the map's. More means another CONNECT for
        // the same id still waits. Both clones happen under the shard lock.
        self.table
            .expected
            .remove_if(&self.id, |_, n| Arc::strong_count(n) <= 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_conflict_take_withdraw() {
        let t = PendingTable::<()>::new();
        let id = RegistrationId::of("k", "a@b", "c@d");
        let p = t.insert(id, Protocol::Dtcp).expect("first");
        assert_eq!(
            t.insert(id, Protocol::Dtcp).unwrap_err(),
            InsertError::Conflict
        );
        assert!(t.take(&id).is_some());
        assert!(!t.withdraw(&id, p.token), "already claimed");
        let p2 = t.insert(id, Protocol::Dtcp).expect("free again");
        assert!(!t.withdraw(&id, p.token), "an old token removes nothing");
        assert!(t.withdraw(&id, p2.token));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn closing_ends_every_wait_and_refuses_more() {
        let t = PendingTable::<()>::new();
        let a = RegistrationId::of("k", "a@b", "c@d");
        let b = RegistrationId::of("k2", "a@b", "c@d");
        let mut ta = t.insert(a, Protocol::Dtcp).unwrap();
        let mut tb = t.insert(b, Protocol::Dtcp).unwrap();
        t.close();
        assert!(t.is_closed());
        assert_eq!(t.len(), 0);
        assert!(ta.rx.try_recv().is_err() && tb.rx.try_recv().is_err());
        assert!(!t.withdraw(&a, ta.token), "nothing left to withdraw");
        assert_eq!(
            t.insert(a, Protocol::Dtcp).unwrap_err(),
            InsertError::Closed
        );
    }

    #[test]
    fn records_are_the_entries_with_a_store_record_and_their_time_left() {
        let t = PendingTable::<()>::new();
        let a = RegistrationId::of("k", "a@b", "c@d");
        let b = RegistrationId::of("k2", "a@b", "c@d");
        let ta = t.insert(a, Protocol::Dtcp).unwrap();
        let _tb = t.insert(b, Protocol::Dtcp).unwrap();
        assert!(t.records().is_empty(), "no record written yet");
        let expires = Instant::now() + Duration::from_secs(60);
        t.recorded(&a, ta.token + 1, expires);
        assert!(t.records().is_empty(), "another entry's token");
        t.recorded(&a, ta.token, expires);
        let records = t.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].0, a);
        assert!(records[0].1 <= Duration::from_secs(60) && records[0].1 > Duration::from_secs(59));
    }

    #[test]
    fn expectations_are_removed_by_the_last_one() {
        let t = PendingTable::<()>::new();
        let id = RegistrationId::of("k", "a@b", "c@d");
        let w1 = t.expect(id);
        let w2 = t.expect(id);
        drop(w1);
        assert_eq!(t.expected.len(), 1);
        drop(w2);
        assert_eq!(t.expected.len(), 0);
    }

    #[test]
    fn an_announcement_wakes_its_waiters_with_the_owner() {
        let t = PendingTable::<()>::new();
        let id = RegistrationId::of("k", "a@b", "c@d");
        let owner = NodeInfo {
            id: "node-a".into(),
            forward_addr: "10.0.0.1:7780".into(),
            seal: None,
        };
        let w = t.expect(id);
        let notified = w.expected.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let other = RegistrationId::of("k2", "a@b", "c@d");
        t.announce(Registered {
            id: other,
            owner: Some(owner.clone()),
        });
        assert_eq!(w.announced_owner(), None, "not ours");
        t.announce(Registered {
            id,
            owner: Some(owner.clone()),
        });
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(notified.as_mut().poll(&mut cx).is_ready(), "woken");
        assert_eq!(w.announced_owner(), Some(owner));
        assert_eq!(w.announced_owner(), None, "taken once");

        // Told only that its record changed (a tracking push): woken, to
        // look again, with no owner.
        let notified = w.expected.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        t.announce(Registered { id, owner: None });
        assert!(notified.as_mut().poll(&mut cx).is_ready(), "woken again");
        assert_eq!(w.announced_owner(), None, "no owner to go to");
    }
}
