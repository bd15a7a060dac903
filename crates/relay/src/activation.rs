//! XEP-0065 pairs waiting for their activation on the node that holds the
//! waiter (the registration's owner), and the one place where an activation
//! happens.
//!
//! When the requester's connection claims the pending waiter (on this node,
//! or over a Bridge from another), the claimant enters the pair here before
//! anyone answers the requester, so that an activation that follows the
//! requester's success reply always finds it. An activation flips the entry
//! from awaiting to active under the map's shard lock: whoever flips it is
//! the only one that starts the session, so activation is exactly-once
//! without a lock held across an await. The active entry stays until the
//! session ends, so that a second activation is told apart from a pair that
//! is not there.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use dtcp_wire::RegistrationId;
use metrics::{Gauge, gauge};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::limits::IpGuard;
use crate::metrics::SOCKS5_AWAITING;
use crate::pending::record_left;

/// Pairs of this node, by registration id.
#[derive(Debug)]
pub(crate) struct Activations {
    entries: Arc<DashMap<RegistrationId, Pair>>,
    tokens: AtomicU64,
    /// `dtcp_socks5_pairs_awaiting_activation`.
    awaiting: Gauge,
}

#[derive(Debug)]
struct Pair {
    /// Tells this pair apart from a later one with the same id.
    token: u64,
    /// `Some` until activated: fired to start the session.
    start: Option<oneshot::Sender<()>>,
    /// When the store record of its registration expires (it stays until
    /// the pair ends): what a rewrite of the store gives it.
    record_expires: Option<Instant>,
}

/// What an activation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activated {
    /// This call activated the pair: its session starts.
    Now,
    /// No pair with this id here (one side never came, or left).
    NotFound,
    /// The pair was activated before.
    Already,
}

impl Activated {
    /// The `outcome` label of `dtcp_xmpp_activations_total`.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Activated::Now => "activated",
            Activated::NotFound => "not_found",
            Activated::Already => "already_activated",
        }
    }
}

/// A pair's hold on its entry: the signal that starts its session, and the
/// guard that removes the entry when the pair ends, however it ends.
#[derive(Debug)]
pub(crate) struct PairTicket {
    /// Fires once the pair is activated.
    pub(crate) start: oneshot::Receiver<()>,
    /// Removes the entry when dropped.
    pub(crate) guard: PairGuard,
    /// The pending count of the waiter's address, which the pair keeps
    /// until its wait ends ([`PairTicket::count_against`]).
    pub(crate) counted: Option<IpGuard>,
}

impl PairTicket {
    /// Keeps the waiter's pending count (`--max-pending-per-ip`, on this
    /// node and across the cluster) until the pair's wait ends. A pair
    /// waiting for its activation holds two connections and needs no key:
    /// were it uncounted once its requester came, one address could pair
    /// with itself and hold any number of them.
    pub(crate) fn count_against(&mut self, guard: IpGuard) {
        self.counted = Some(guard);
    }
}

/// Removes its pair's entry when dropped (see [`PairTicket`]).
#[derive(Debug)]
pub(crate) struct PairGuard {
    entries: Arc<DashMap<RegistrationId, Pair>>,
    id: RegistrationId,
    token: u64,
    /// The gauge to lower if the pair never got activated.
    awaiting: Gauge,
}

impl Activations {
    /// An empty table (its gauge taken from the recorder installed now).
    pub(crate) fn new() -> Self {
        Activations {
            entries: Arc::default(),
            tokens: AtomicU64::new(0),
            awaiting: gauge!(SOCKS5_AWAITING),
        }
    }

    /// Enters the pair of `id`, awaiting its activation, its store record
    /// good until `record_expires`; `None` when a pair with this id is here
    /// already (a later connection of a bytestream that is paired or running).
    pub(crate) fn pair(
        &self,
        id: RegistrationId,
        record_expires: Option<Instant>,
    ) -> Option<PairTicket> {
        match self.entries.entry(id) {
            Entry::Occupied(_) => None,
            Entry::Vacant(slot) => {
                let (tx, rx) = oneshot::channel();
                let token = self.tokens.fetch_add(1, Ordering::Relaxed);
                slot.insert(Pair {
                    token,
                    start: Some(tx),
                    record_expires,
                });
                self.awaiting.increment(1.0);
                Some(PairTicket {
                    counted: None,
                    start: rx,
                    guard: PairGuard {
                        entries: self.entries.clone(),
                        id,
                        token,
                        awaiting: self.awaiting.clone(),
                    },
                })
            }
        }
    }

    /// Activates the pair of `id`, if it is here and waits.
    pub(crate) fn activate(&self, id: &RegistrationId) -> Activated {
        let Some(mut pair) = self.entries.get_mut(id) else {
            return Activated::NotFound;
        };
        let Some(start) = pair.start.take() else {
            return Activated::Already;
        };
        self.awaiting.decrement(1.0);
        if start.send(()).is_err() {
            // The pair ended a moment ago; its guard is on its way.
            drop(pair);
            return Activated::NotFound;
        }
        Activated::Now
    }

    /// The pairs with a store record, each with the time it has left: what
    /// to write again when the store has lost them (as the pending table's).
    pub(crate) fn records(&self) -> Vec<(RegistrationId, Duration)> {
        let now = Instant::now();
        self.entries
            .iter()
            .filter_map(|e| Some((*e.key(), record_left(e.record_expires, now)?)))
            .collect()
    }

    /// Whether a pair of `id` is here (awaiting or running).
    pub(crate) fn contains(&self, id: &RegistrationId) -> bool {
        self.entries.contains_key(id)
    }
}

impl Drop for PairGuard {
    fn drop(&mut self) {
        let awaiting = &self.awaiting;
        self.entries.remove_if(&self.id, |_, pair| {
            let ours = pair.token == self.token;
            if ours && pair.start.is_some() {
                awaiting.decrement(1.0);
            }
            ours
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_activated_once_and_removed_by_its_guard() {
        let table = Activations::new();
        let id = RegistrationId::of("k", "a@b", "c@d");
        assert_eq!(table.activate(&id), Activated::NotFound);
        let mut ticket = table.pair(id, None).expect("first pair");
        assert!(table.pair(id, None).is_none(), "one pair per id");
        assert!(ticket.start.try_recv().is_err(), "not activated yet");
        assert_eq!(table.activate(&id), Activated::Now);
        assert!(ticket.start.try_recv().is_ok(), "activated");
        assert_eq!(table.activate(&id), Activated::Already);
        assert!(table.contains(&id));
        drop(ticket);
        assert!(!table.contains(&id));
        assert_eq!(table.activate(&id), Activated::NotFound);
    }

    #[test]
    fn records_are_the_pairs_with_a_store_record() {
        let table = Activations::new();
        let a = RegistrationId::of("k", "a@b", "c@d");
        let b = RegistrationId::of("k2", "a@b", "c@d");
        let _ta = table.pair(a, Some(Instant::now() + Duration::from_secs(60)));
        let _tb = table.pair(b, None);
        let records = table.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].0, a);
        assert!(records[0].1 > Duration::from_secs(59));
    }

    #[test]
    fn a_pair_that_ended_is_not_activated() {
        let table = Activations::new();
        let id = RegistrationId::of("k", "a@b", "c@d");
        let PairTicket { start, guard, .. } = table.pair(id, None).unwrap();
        drop(start);
        assert_eq!(table.activate(&id), Activated::NotFound);
        // An old guard removes nothing of a later pair.
        let old = guard;
        let removed_by_old = {
            let entries = old.entries.clone();
            drop(old);
            !entries.contains_key(&id)
        };
        assert!(removed_by_old);
        let later = table.pair(id, None).unwrap();
        let stale = PairGuard {
            entries: table.entries.clone(),
            id,
            token: later.guard.token + 1,
            awaiting: table.awaiting.clone(),
        };
        drop(stale);
        assert!(table.contains(&id), "a stale guard leaves a later pair");
    }
}
