//! The limits a node keeps on its clients: connection slots (the
//! connection limit, fitted to the open-file limit), pending `CREATE`s
//! per source address, and new connections per second per source address.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use dtcp_store::Rendezvous;
use governor::clock::MonotonicClock;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

/// Descriptors kept free beyond the connection limit: listeners, the metrics
/// endpoint's connections, refusals in flight, store and forwarding sockets.
const FD_RESERVE: u64 = 256;
/// The open-file limit assumed when it can be neither raised nor read.
const FALLBACK_NOFILE: u64 = 1024;

/// A connection slot: one permit of the connection limit, held for as long
/// as the socket is open (it moves with the socket when a session pairs).
/// `dtcp_connections_open` is the count of these, read off the limit when
/// the metrics are scraped ([`Slots::open`]).
#[derive(Debug)]
pub(crate) struct Slot(
    #[expect(dead_code, reason = "held, never read: dropping it frees the slot")]
    OwnedSemaphorePermit,
);

/// The connection limit: one [`Slot`] per open client connection.
#[derive(Debug)]
pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Slots {
    /// A limit of `max` connections.
    pub(crate) fn new(max: usize) -> Self {
        Slots {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot, or `None` at the limit.
    pub(crate) fn take(&self) -> Option<Slot> {
        self.permits.clone().try_acquire_owned().ok().map(Slot)
    }

    /// Client connections open now.
    pub(crate) fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

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
/// all stall at once still fit.
pub(crate) fn effective_max_connections(requested: usize, nofile: u64, splice: bool) -> usize {
    let per_connection = if splice && cfg!(target_os = "linux") {
        FDS_PER_SPLICED_CONNECTION
    } else {
        1
    };
    let fits = (nofile.saturating_sub(FD_RESERVE) / per_connection).max(1);
    requested.min(usize::try_from(fits).unwrap_or(usize::MAX))
}

/// Pending CREATEs per source address: counted here, and in cluster mode in
/// the shared store too (by the CREATE, which then marks its guard with
/// [`IpGuard::counted_in_store`]), so that the limit holds across nodes and
/// still holds on each node when the store is down.
#[derive(Debug)]
pub(crate) struct PerIpLimit {
    counts: DashMap<IpAddr, usize>,
    /// The limit, per node and cluster-wide.
    pub(crate) max: usize,
    /// The shared store, in cluster mode: uncounted there too on drop.
    store: Option<Arc<dyn Rendezvous>>,
    /// The next CREATE's entry in the store's count: from a random start,
    /// so that no two nodes' entries meet.
    next_entry: AtomicU64,
}

impl PerIpLimit {
    /// A limit of `max` pending CREATEs per address; `store` is the shared
    /// store of a cluster.
    pub(crate) fn new(max: usize, store: Option<Arc<dyn Rendezvous>>) -> Arc<Self> {
        Arc::new(PerIpLimit {
            counts: DashMap::new(),
            max,
            store,
            next_entry: AtomicU64::new(uuid::Uuid::new_v4().as_u64_pair().0),
        })
    }

    /// One more pending CREATE from `ip`, or `None` at the limit.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpGuard> {
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
            entry: self.next_entry.fetch_add(1, Ordering::Relaxed),
            in_store: false,
        })
    }

    fn release(&self, ip: IpAddr, by: usize) {
        if let Entry::Occupied(mut o) = self.counts.entry(ip) {
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
    /// This CREATE's entry in the store's count of its address.
    entry: u64,
    /// Counted in the shared store as well (or perhaps).
    in_store: bool,
}

impl IpGuard {
    /// The address this guard counts against (canonical form).
    pub(crate) fn ip(&self) -> IpAddr {
        self.ip
    }

    /// This CREATE's entry in the store's count.
    pub(crate) fn entry(&self) -> u64 {
        self.entry
    }

    /// Records that the store counted this CREATE too: it is uncounted
    /// there on drop, in a task of its own (nobody waits for it).
    pub(crate) fn counted_in_store(&mut self) {
        self.in_store = self.limit.store.is_some();
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        self.limit.release(self.ip, 1);
        if self.in_store
            && let Some(store) = self.limit.store.clone()
        {
            let (ip, entry) = (self.ip, self.entry);
            tokio::spawn(async move {
                if let Err(e) = store.uncount_source(ip, entry).await {
                    warn!(error = %e, "store uncount failed; the count expires by itself");
                }
            });
        }
    }
}

/// How often the connection rate limiter forgets the addresses that have
/// been quiet long enough to be as good as new, so that a spray of source
/// addresses cannot grow its memory without bound.
pub(crate) const RATE_EVICTION_INTERVAL: Duration = Duration::from_secs(5);

/// New connections per second per client address: a keyed GCRA limiter on a
/// monotonic clock (one 8-byte state per recently seen address).
#[derive(Debug)]
pub(crate) struct ConnectionRate {
    limiter: RateLimiter<IpAddr, DashMapStateStore<IpAddr>, MonotonicClock>,
}

impl ConnectionRate {
    /// `per_second` connections per second, and up to `burst` at once
    /// (default: one second's worth).
    pub(crate) fn new(per_second: NonZeroU32, burst: Option<NonZeroU32>) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst.unwrap_or(per_second));
        ConnectionRate {
            limiter: RateLimiter::dashmap_with_clock(quota, MonotonicClock),
        }
    }

    /// Whether one more connection from `ip` is within its rate (and counts it).
    pub(crate) fn check(&self, ip: IpAddr) -> bool {
        self.limiter.check_key(&ip.to_canonical()).is_ok()
    }

    /// Forgets the addresses whose state is back to that of a fresh one, and
    /// gives the table's memory back.
    pub(crate) fn evict_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Addresses the limiter remembers now.
    pub(crate) fn sources(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limit_fits_the_descriptor_limit() {
        assert_eq!(effective_max_connections(10_000, 1_048_576, false), 10_000);
        assert_eq!(effective_max_connections(10_000, 1024, false), 1024 - 256);
        assert_eq!(effective_max_connections(10_000, 10, false), 1);
        // Spliced: a socket and a pipe per connection.
        assert_eq!(effective_max_connections(10_000, 1_048_576, true), 10_000);
        let spliced = effective_max_connections(10_000, 1024, true);
        assert_eq!(spliced, (1024 - 256) / 3);
        assert!(spliced as u64 * 3 + 256 <= 1024, "stalled sessions fit");
        assert_eq!(effective_max_connections(10_000, 10, true), 1);
    }

    #[test]
    fn slots_count_what_is_open() {
        let slots = Slots::new(2);
        let a = slots.take().unwrap();
        let _b = slots.take().unwrap();
        assert!(slots.take().is_none(), "at the limit");
        assert_eq!(slots.open(), 2);
        drop(a);
        assert_eq!(slots.open(), 1);
    }

    #[test]
    fn per_ip_limit_counts_and_forgets() {
        let l = PerIpLimit::new(2, None);
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

    #[test]
    fn connection_rate_is_per_address_and_forgets() {
        let rate = ConnectionRate::new(NonZeroU32::new(1000).unwrap(), NonZeroU32::new(3));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!((0..3).all(|_| rate.check(a)), "the burst passes");
        assert!(!rate.check(a), "then the rate holds");
        assert!(rate.check(b), "another address is not affected");
        assert_eq!(rate.sources(), 2);
        // After a few ms at 1,000/s both are as good as new.
        std::thread::sleep(Duration::from_millis(20));
        rate.evict_idle();
        assert_eq!(rate.sources(), 0);
        assert!(rate.check(a));
    }

    /// Resident memory of this process, in bytes (Linux).
    fn rss() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split(' ').nth(1).unwrap().parse().unwrap();
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        pages * usize::try_from(page).unwrap()
    }

    /// The limiter's memory while it remembers 100,000 addresses at once
    /// (the integration test sprays as many, but eviction keeps fewer).
    #[test]
    fn connection_rate_memory_at_100k_sources() {
        const SOURCES: u32 = 100_000;
        /// Generous: about 40 bytes an entry is expected.
        const BUDGET: usize = 16 << 20;
        let before = rss();
        let rate = ConnectionRate::new(NonZeroU32::new(1).unwrap(), None);
        for n in 0..SOURCES {
            assert!(rate.check(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))));
        }
        assert_eq!(rate.sources(), SOURCES as usize);
        let grown = rss().saturating_sub(before);
        eprintln!(
            "connection rate limiter: {SOURCES} sources, +{} KiB RSS",
            grown >> 10
        );
        assert!(grown < BUDGET, "{grown} bytes for {SOURCES} sources");
    }
}
