//! The limits a node keeps on its clients: connection slots (the
//! connection limit, fitted to the open-file limit by `crate::descriptors`),
//! and each client
//! address's share: open connections, paired sessions, pending `CREATE`s
//! and new connections per second.
//!
//! A client address is what [`client_key`] makes of it: an IPv4 address
//! itself, an IPv6 address by its prefix (whoever holds one address of a
//! `/64` usually holds them all).

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use dtcp_store::Rendezvous;
use governor::clock::MonotonicClock;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use metrics::{Gauge, gauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

/// The address every per-address limit counts `ip` against: an IPv4
/// address (an IPv4-mapped IPv6 one included) as it is, an IPv6 address
/// masked to its first `v6_prefix` bits. The result is an address too, so
/// that it keys the store's per-source count in the same bounded format.
pub(crate) fn client_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u32::from(v6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// A connection slot: one permit of the connection limit, held for as long
/// as the socket is open (it moves with the socket when a session pairs).
/// `dtcp_connections_open` is the count of these, read off the limit when
/// the metrics are scraped ([`Slots::open`]).
#[derive(Debug)]
pub(crate) struct Slot {
    #[expect(dead_code, reason = "held, never read: dropping it frees the slot")]
    permit: OwnedSemaphorePermit,
    /// This connection counted against its client's address, once the
    /// address is known (at accept, or after a trusted PROXY header); none
    /// for a trusted balancer's own connections. Boxed: a slot is part of
    /// every pending CREATE's and every idle session's state.
    client: Option<Box<AddrGuard>>,
}

impl Slot {
    /// Counts this connection against its client's address from now on.
    pub(crate) fn count_against(&mut self, guard: AddrGuard) {
        self.client = Some(Box::new(guard));
    }
}

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
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(Slot {
            permit,
            client: None,
        })
    }

    /// Client connections open now.
    pub(crate) fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }
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
    /// The prefix length an IPv6 client is counted by ([`client_key`]).
    v6_prefix: u8,
    /// The shared store, in cluster mode: uncounted there too on drop.
    store: Option<Arc<dyn Rendezvous>>,
    /// The next CREATE's entry in the store's count: from a random start,
    /// so that no two nodes' entries meet.
    next_entry: AtomicU64,
    /// Pending CREATEs an address may hold on this node before the store
    /// counts them, and the limit of the store's count beyond those, from
    /// the live nodes ([`PerIpLimit::set_nodes`]).
    shares: Mutex<(usize, usize)>,
}

impl PerIpLimit {
    /// A limit of `max` pending CREATEs per address; `store` is the shared
    /// store of a cluster.
    pub(crate) fn new(max: usize, v6_prefix: u8, store: Option<Arc<dyn Rendezvous>>) -> Arc<Self> {
        Arc::new(PerIpLimit {
            counts: DashMap::new(),
            max,
            v6_prefix,
            store,
            next_entry: AtomicU64::new(uuid::Uuid::new_v4().as_u64_pair().0),
            shares: Mutex::new((0, max)),
        })
    }

    /// `nodes` are alive: each may hold `max / (2 * nodes)` pending CREATEs
    /// of an address without the store (no Redis command on a pair's path),
    /// and the store counts those beyond against what the shares leave, at
    /// least half of `max`, so that the whole cluster stays within `max`.
    pub(crate) fn set_nodes(&self, nodes: usize) {
        let share = self.max / (2 * nodes.max(1));
        let shares = (share, self.max - share * nodes.max(1));
        *self.shares.lock().unwrap_or_else(PoisonError::into_inner) = shares;
    }

    /// The limit of the store's count of an address.
    pub(crate) fn store_max(&self) -> usize {
        self.shares.lock().unwrap_or_else(PoisonError::into_inner).1
    }

    /// One more pending CREATE from `ip`, or `None` at the limit.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpGuard> {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        let key = client_key(ip, self.v6_prefix);
        let mut count = self.counts.entry(key).or_insert(0);
        if *count >= self.max {
            drop(count);
            self.release(key, 0);
            return None;
        }
        // Within this node's share: the store need not count it.
        let share = self.shares.lock().unwrap_or_else(PoisonError::into_inner).0;
        let within_share = *count < share;
        *count += 1;
        Some(IpGuard {
            limit: self.clone(),
            ip,
            entry: self.next_entry.fetch_add(1, Ordering::Relaxed),
            in_store: false,
            within_share,
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
    /// Within the node's share of the address's limit: not counted in the
    /// store ([`PerIpLimit::set_nodes`]).
    within_share: bool,
}

impl IpGuard {
    /// The client's address (canonical form).
    pub(crate) fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The address this guard counts against ([`client_key`]): the key of
    /// the store's cluster-wide count too.
    pub(crate) fn key(&self) -> IpAddr {
        client_key(self.ip, self.limit.v6_prefix)
    }

    /// Whether the store's cluster-wide count must count this CREATE (it
    /// is past the node's share of its address's limit).
    pub(crate) fn needs_store_count(&self) -> bool {
        self.limit.store.is_some() && !self.within_share
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
        let key = self.key();
        self.limit.release(key, 1);
        if self.in_store
            && let Some(store) = self.limit.store.clone()
        {
            let (ip, entry) = (key, self.entry);
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
    /// The prefix length an IPv6 client is counted by ([`client_key`]).
    v6_prefix: u8,
}

impl ConnectionRate {
    /// `per_second` connections per second, and up to `burst` at once
    /// (default: one second's worth).
    pub(crate) fn new(per_second: NonZeroU32, burst: Option<NonZeroU32>, v6_prefix: u8) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst.unwrap_or(per_second));
        ConnectionRate {
            limiter: RateLimiter::dashmap_with_clock(quota, MonotonicClock),
            v6_prefix,
        }
    }

    /// Whether one more connection from `ip` is within its rate (and counts it).
    pub(crate) fn check(&self, ip: IpAddr) -> bool {
        self.limiter
            .check_key(&client_key(ip, self.v6_prefix))
            .is_ok()
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

/// Open connections and paired sessions per client address ([`client_key`]).
///
/// An address has an entry only while it holds a connection or a session,
/// and each is one open client connection at least, so the table never has
/// more entries than the connection limit: a spray of addresses cannot grow
/// it past that.
#[derive(Debug)]
pub(crate) struct PerAddress {
    shares: DashMap<IpAddr, Share>,
    /// Open connections one address may hold (`--max-connections-per-ip`).
    max_connections: u32,
    /// Paired sessions one address may take part in (`--max-sessions-per-ip`).
    max_sessions: u32,
    /// The prefix length an IPv6 client is counted by.
    v6_prefix: u8,
    /// `dtcp_client_addresses`: the table's entries.
    tracked: Gauge,
}

/// What one address holds now.
#[derive(Debug, Default)]
struct Share {
    connections: u32,
    sessions: u32,
}

/// Which count of a [`Share`] a guard holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    Connections,
    Sessions,
}

impl PerAddress {
    /// Limits of `max_connections` open connections and `max_sessions`
    /// paired sessions per address, IPv6 counted by `v6_prefix` bits.
    pub(crate) fn new(max_connections: u32, max_sessions: u32, v6_prefix: u8) -> Arc<Self> {
        Arc::new(PerAddress {
            shares: DashMap::new(),
            max_connections,
            max_sessions,
            v6_prefix,
            tracked: gauge!(crate::metrics::CLIENT_ADDRESSES),
        })
    }

    /// One more open connection from `ip`, or `None` at its share.
    pub(crate) fn connection(self: &Arc<Self>, ip: IpAddr) -> Option<AddrGuard> {
        let key = client_key(ip, self.v6_prefix);
        self.take(key, Count::Connections).then(|| AddrGuard {
            table: self.clone(),
            key,
            count: Count::Connections,
        })
    }

    /// One more paired session for the clients at `a` and `b` (the same
    /// address counted once: a client pairing with itself holds one
    /// session), or `None` if either is at its share.
    pub(crate) fn session(self: &Arc<Self>, a: IpAddr, b: Option<IpAddr>) -> Option<SessionGuard> {
        let a = client_key(a, self.v6_prefix);
        let b = b.map(|b| client_key(b, self.v6_prefix)).filter(|b| *b != a);
        if !self.take(a, Count::Sessions) {
            return None;
        }
        let first = AddrGuard {
            table: self.clone(),
            key: a,
            count: Count::Sessions,
        };
        let second = match b {
            Some(b) if !self.take(b, Count::Sessions) => return None,
            Some(b) => Some(AddrGuard {
                table: self.clone(),
                key: b,
                count: Count::Sessions,
            }),
            None => None,
        };
        Some(SessionGuard {
            _guards: (first, second),
        })
    }

    /// Whether `ip` is at its share of paired sessions now (a cheap look
    /// before a command is admitted; [`PerAddress::session`] decides).
    pub(crate) fn sessions_full(&self, ip: IpAddr) -> bool {
        let key = client_key(ip, self.v6_prefix);
        self.shares
            .get(&key)
            .is_some_and(|s| s.sessions >= self.max_sessions)
    }

    fn take(&self, key: IpAddr, count: Count) -> bool {
        let max = match count {
            Count::Connections => self.max_connections,
            Count::Sessions => self.max_sessions,
        };
        let mut share = match self.shares.entry(key) {
            Entry::Occupied(o) => o.into_ref(),
            Entry::Vacant(v) => {
                // A share of 0 takes nothing: no entry for it either.
                if max == 0 {
                    return false;
                }
                self.tracked.increment(1.0);
                v.insert(Share::default())
            }
        };
        let n = match count {
            Count::Connections => &mut share.connections,
            Count::Sessions => &mut share.sessions,
        };
        if *n >= max {
            // An entry holds something, or it would not be there.
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, key: IpAddr, count: Count) {
        if let Entry::Occupied(mut o) = self.shares.entry(key) {
            let share = o.get_mut();
            let n = match count {
                Count::Connections => &mut share.connections,
                Count::Sessions => &mut share.sessions,
            };
            *n = n.saturating_sub(1);
            if share.connections == 0 && share.sessions == 0 {
                o.remove();
                self.tracked.decrement(1.0);
            }
        }
    }

    /// Addresses with an entry now.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.shares.len()
    }
}

/// One connection, or one side of a session, counted against its client's
/// address; given back on drop.
#[derive(Debug)]
pub(crate) struct AddrGuard {
    table: Arc<PerAddress>,
    key: IpAddr,
    count: Count,
}

impl Drop for AddrGuard {
    fn drop(&mut self) {
        self.table.give_back(self.key, self.count);
    }
}

/// A paired session counted against its clients' addresses (once each).
#[derive(Debug)]
pub(crate) struct SessionGuard {
    _guards: (AddrGuard, Option<AddrGuard>),
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let l = PerIpLimit::new(2, 64, None);
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
    fn ipv4_is_keyed_by_address_and_ipv6_by_prefix() {
        let key = |s: &str, bits| client_key(s.parse().unwrap(), bits).to_string();
        assert_eq!(key("192.0.2.1", 64), "192.0.2.1");
        assert_eq!(key("::ffff:192.0.2.1", 64), "192.0.2.1", "mapped is IPv4");
        assert_eq!(key("2001:db8:1:2:3:4:5:6", 64), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff::1", 64), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:3:4:5:6", 48), "2001:db8:1::");
        assert_eq!(key("2001:db8:1:2:3:4:5:6", 128), "2001:db8:1:2:3:4:5:6");
        assert_eq!(key("2001:db8::1", 0), "::");
    }

    #[test]
    fn pending_limit_counts_an_ipv6_prefix_as_one() {
        let l = PerIpLimit::new(2, 64, None);
        let a = l.acquire("2001:db8::1".parse().unwrap()).unwrap();
        let _b = l.acquire("2001:db8::2".parse().unwrap()).unwrap();
        assert!(l.acquire("2001:db8::ffff:3".parse().unwrap()).is_none());
        assert!(l.acquire("2001:db8:0:1::1".parse().unwrap()).is_some());
        assert_eq!(a.ip().to_string(), "2001:db8::1", "the client, for logs");
        assert_eq!(a.key().to_string(), "2001:db8::", "the prefix, for counts");
    }

    #[test]
    fn per_address_shares_are_bounded_and_forgotten() {
        let t = PerAddress::new(2, 1, 64);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c1 = t.connection(a).unwrap();
        let c2 = t.connection(a).unwrap();
        assert!(t.connection(a).is_none(), "two connections per address");
        assert!(t.connection(b).is_some(), "another address is not affected");
        // A client pairing with itself holds one session.
        let s = t.session(a, Some(a)).unwrap();
        assert!(t.sessions_full(a));
        assert!(t.session(a, None).is_none(), "one session per address");
        assert!(t.session(b, Some(a)).is_none(), "either side at its share");
        assert!(!t.sessions_full(b), "a refused pair takes nothing");
        drop((c1, c2, s));
        assert_eq!(t.addresses(), 0, "nothing held, nothing kept");
        let v6 = PerAddress::new(1, 1, 64);
        let _x = v6.connection("2001:db8::1".parse().unwrap()).unwrap();
        assert!(v6.connection("2001:db8::2".parse().unwrap()).is_none());
    }

    #[test]
    fn connection_rate_is_per_address_and_forgets() {
        let rate = ConnectionRate::new(NonZeroU32::new(1000).unwrap(), NonZeroU32::new(3), 64);
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
        let rate = ConnectionRate::new(NonZeroU32::new(1).unwrap(), None, 64);
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
