//! The node's descriptor budget: the open-file limit, raised to its hard
//! limit, holds a reserve ([`FD_RESERVE`]), the places of lanes attaching
//! on the plane port, and the connection limit, each connection counted
//! with the pipe it may hold ([`effective_max_connections`]).
//!
//! Lanes attaching are connections told to be lanes whose preamble and
//! token have not been read yet (under plane TLS, whose handshake comes
//! first). Each is a descriptor of a connection nobody has authenticated,
//! so their number is fitted to the open-file limit beside the connection
//! limit ([`lanes_attaching_max`]), and when every place is held the
//! oldest not from a live peer's address goes ([`LanesAttaching`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use tracing::warn;

/// Descriptors kept free beyond the connection limit: listeners, the metrics
/// endpoint's connections, refusals in flight, store and forwarding sockets
/// (lanes dialed ahead among them: at most `dtcp_forward::POOL_LANES_MAX`).
/// A node that offers lanes keeps the places of its lanes attaching
/// ([`lanes_attaching_max`]) beside it.
const FD_RESERVE: u64 = 256;
/// The open-file limit assumed when it can be neither raised nor read.
const FALLBACK_NOFILE: u64 = 1024;

/// Raises the soft open-file limit to the hard one; returns the limit in force.
pub(crate) fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(FALLBACK_NOFILE)
        }
    }
}

/// Descriptors one client connection may hold at once when sessions are
/// spliced: its socket, and the pipe (two descriptors) its bytes pass
/// through while they wait for the other side to take them. A session whose
/// two clients both stopped reading holds a full pipe each way: six
/// descriptors for its two connections. (The few pipes pooled per worker
/// thread while idle are within [`FD_RESERVE`].)
const FDS_PER_SPLICED_CONNECTION: u64 = 3;

/// The connection limit, lowered if need be so that the relay refuses
/// connections before it runs out of descriptors: with `splice`, each
/// connection is counted with the pipe it may hold, so that sessions that
/// all stall at once still fit; `lanes_attaching` descriptors (the places
/// of [`lanes_attaching_max`]) are kept beside [`FD_RESERVE`].
pub(crate) fn effective_max_connections(
    requested: usize,
    nofile: u64,
    splice: bool,
    lanes_attaching: usize,
) -> usize {
    let per_connection = if splice && cfg!(target_os = "linux") {
        FDS_PER_SPLICED_CONNECTION
    } else {
        1
    };
    let kept = FD_RESERVE.saturating_add(u64::try_from(lanes_attaching).unwrap_or(u64::MAX));
    let fits = (nofile.saturating_sub(kept) / per_connection).max(1);
    requested.min(usize::try_from(fits).unwrap_or(usize::MAX))
}

/// Most lanes attaching at once on a node's plane port (their preamble and
/// token being read, under plane TLS their handshake first), when the
/// open-file limit has room for them: what a burst of 2,000 pairings
/// across two nodes needs most of the time (by hand, on 2026-12-07, such a
/// burst filled them in 13 runs of 74; [`LanesAttaching`] says which lane
/// goes then).
pub(crate) const MAX_LANES_ATTACHING: usize = 1024;
/// Below [`MAX_LANES_ATTACHING`], lanes attaching hold at most one
/// descriptor in this many of those beyond [`FD_RESERVE`].
const LANES_ATTACHING_SHARE: u64 = 8;

/// The places of lanes attaching on a node that offers lanes (`lanes`;
/// none on one that does not), fitted to the open-file limit `nofile`:
/// [`MAX_LANES_ATTACHING`], or an eighth of the descriptors beyond the
/// reserve when that is fewer, and one at least.
///
/// An attaching lane is one descriptor (its socket, no pipe yet) of a
/// connection nobody has authenticated: whoever reaches the plane port can
/// send a lane's first bytes and stall, so these places are kept out of the
/// connection limit (which they would otherwise take from the clients) and
/// counted beside the reserve instead. A lane that attaches moves to the
/// connection slot its session took when it offered the lane.
pub(crate) fn lanes_attaching_max(nofile: u64, lanes: bool) -> usize {
    if !lanes {
        return 0;
    }
    let share = nofile.saturating_sub(FD_RESERVE) / LANES_ATTACHING_SHARE;
    usize::try_from(share)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_LANES_ATTACHING)
}

/// The places of lanes attaching ([`lanes_attaching_max`]): one each, held
/// from the moment a connection on the plane port is told to be a lane
/// (from a live peer's address, from its accept when its first byte had
/// not come yet: it may be a lane) until its token has been read (or it is
/// closed, or told to be HTTP/2). When every place is held, a new lane
/// takes the oldest place not held from a live peer's address, and that
/// one is reset: a lane that stalls (whoever sends a lane's first bytes
/// and nothing more) is then the one to go, not a peer's lane that came
/// after it and would have its token within a round trip. A peer's place
/// is never taken: when every place is a peer's (a burst of lanes past
/// them), the new lane is refused, before its token is on its way, rather
/// than the oldest, whose token may be (its session would be cut, not
/// moved to the Bridge). `dtcp_lanes_attaching` is the count of places
/// held, read off at each scrape. Clones share the places.
#[derive(Debug, Clone)]
pub(crate) struct LanesAttaching {
    table: Arc<Mutex<Places>>,
    max: usize,
}

/// The places held, oldest first, each with what closes its lane.
#[derive(Debug, Default)]
struct Places {
    next: u64,
    /// From a live peer's address: never taken.
    peers: BTreeMap<u64, oneshot::Sender<()>>,
    /// From anyone else's: the oldest is taken when every place is held.
    anyone: BTreeMap<u64, oneshot::Sender<()>>,
}

impl Places {
    fn held(&self) -> usize {
        self.peers.len() + self.anyone.len()
    }
}

/// One place of the lanes attaching, given back on drop.
#[derive(Debug)]
pub(crate) struct Place {
    places: LanesAttaching,
    id: u64,
    /// Completes (its sender dropped) when a newer lane took this place.
    pub(crate) evicted: oneshot::Receiver<()>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut table = self.places.table();
        if table.anyone.remove(&self.id).is_none() {
            table.peers.remove(&self.id);
        }
    }
}

impl LanesAttaching {
    /// `max` places (none: every lane is reset).
    pub(crate) fn new(max: usize) -> Self {
        LanesAttaching {
            table: Arc::default(),
            max,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Places> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a connection from a live peer's address (`peer`) or
    /// anyone's, and whether the oldest of anyone's was evicted for it;
    /// `None` on a node with no places, or when every place is a peer's.
    pub(crate) fn take(&self, peer: bool) -> Option<(Place, bool)> {
        if self.max == 0 {
            return None;
        }
        let (tx, evicted) = oneshot::channel();
        let mut table = self.table();
        let full = table.held() >= self.max;
        // Dropping its sender tells the oldest of anyone's to go.
        if full && table.anyone.pop_first().is_none() {
            return None;
        }
        let id = table.next;
        table.next += 1;
        match peer {
            true => table.peers.insert(id, tx),
            false => table.anyone.insert(id, tx),
        };
        drop(table);
        let place = Place {
            places: self.clone(),
            id,
            evicted,
        };
        Some((place, full))
    }

    /// Places held now.
    pub(crate) fn open(&self) -> usize {
        self.table().held()
    }

    /// Places in all.
    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limit_fits_the_descriptor_limit() {
        assert_eq!(
            effective_max_connections(10_000, 1_048_576, false, 0),
            10_000
        );
        assert_eq!(
            effective_max_connections(10_000, 1024, false, 0),
            1024 - 256
        );
        assert_eq!(effective_max_connections(10_000, 10, false, 0), 1);
        // Spliced: a socket and a pipe per connection.
        assert_eq!(
            effective_max_connections(10_000, 1_048_576, true, 0),
            10_000
        );
        let spliced = effective_max_connections(10_000, 1024, true, 0);
        assert_eq!(spliced, (1024 - 256) / 3);
        assert!(spliced as u64 * 3 + 256 <= 1024, "stalled sessions fit");
        assert_eq!(effective_max_connections(10_000, 10, true, 0), 1);
        // Lanes attaching are kept beside the reserve.
        assert_eq!(
            effective_max_connections(10_000, 20_000, true, 1024),
            (20_000 - 256 - 1024) / 3
        );
    }

    #[test]
    fn lanes_attaching_fit_the_descriptor_limit() {
        assert_eq!(
            lanes_attaching_max(1_048_576, false),
            0,
            "no lanes, no places"
        );
        assert_eq!(lanes_attaching_max(1_048_576, true), MAX_LANES_ATTACHING);
        assert_eq!(lanes_attaching_max(20_000, true), MAX_LANES_ATTACHING);
        assert_eq!(lanes_attaching_max(1000, true), (1000 - 256) / 8);
        assert_eq!(lanes_attaching_max(300, true), (300 - 256) / 8);
        assert_eq!(lanes_attaching_max(10, true), 1, "one place at least");
        // From the smallest limit that holds the reserve, a place and a
        // spliced connection up: the places, the reserve and every
        // connection counted with its pipe fit within the limit.
        for nofile in (256 + 1 + 3..4096).chain([8_447, 8_448, 20_000, 1_048_576]) {
            for splice in [false, true] {
                let places = lanes_attaching_max(nofile, true);
                let max = effective_max_connections(usize::MAX, nofile, splice, places);
                let per = if splice && cfg!(target_os = "linux") {
                    3
                } else {
                    1
                };
                assert!(
                    256 + places as u64 + per * max as u64 <= nofile,
                    "{nofile} files: {places} places and {max} connections"
                );
                assert!(
                    places as u64 * 8 <= (nofile - 256).max(8),
                    "{nofile} files: lanes take an eighth of what the reserve leaves at most"
                );
            }
        }
    }

    #[test]
    fn lanes_attaching_count_what_is_held_and_evict_the_oldest() {
        let places = LanesAttaching::new(2);
        let (mut a, full) = places.take(false).unwrap();
        assert!(!full);
        let (b, _) = places.take(false).unwrap();
        assert_eq!((places.open(), places.max()), (2, 2));
        let (mut c, full) = places.take(false).unwrap();
        assert!(full, "every place held: the oldest made room");
        assert_eq!(places.open(), 2);
        assert!(
            matches!(
                a.evicted.try_recv(),
                Err(oneshot::error::TryRecvError::Closed)
            ),
            "the oldest is told to go"
        );
        assert!(
            matches!(
                c.evicted.try_recv(),
                Err(oneshot::error::TryRecvError::Empty)
            ),
            "the newest stays"
        );
        drop((a, b));
        assert_eq!(places.open(), 1, "an evicted place is not given back twice");
        drop(c);
        assert_eq!(places.open(), 0);
        assert!(LanesAttaching::new(0).take(false).is_none(), "no places");
        assert!(LanesAttaching::new(0).take(true).is_none(), "no places");
    }

    #[test]
    fn a_peers_place_is_never_taken() {
        let places = LanesAttaching::new(2);
        let (mut anyone, _) = places.take(false).unwrap();
        let (mut peer, _) = places.take(true).unwrap();
        // Full: a peer's new lane takes anyone's place, not the peer's
        // older one.
        let (mut newer, full) = places.take(true).unwrap();
        assert!(full);
        assert!(matches!(
            anyone.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(matches!(
            peer.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        // Every place a peer's: the new one is refused, whoever it is.
        assert!(places.take(true).is_none(), "a peer's refused");
        assert!(places.take(false).is_none(), "anyone's refused");
        assert!(matches!(
            newer.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        drop((anyone, peer));
        assert_eq!(places.open(), 1);
        let (_anyone, full) = places.take(false).unwrap();
        assert!(!full, "a peer's place given back is free");
        assert_eq!(places.open(), 2);
    }
}
