//! Lanes dialed ahead: a small pool per owner node of lanes already
//! connected (and, under plane TLS, handshaken), so that a claim takes one
//! instead of dialing its own.
//!
//! A lane begins with its magic and version, sent at the dial; its token
//! follows once the owner's `paired` has given it. The owner's port holds
//! such a connection for [`PREAMBLE_TIMEOUT`] while it waits for the
//! token, so a lane dialed ahead and used within [`POOL_MAX_AGE`] is, to
//! the owner, a lane dialed at the claim.
//!
//! The pool is filled by demand only: each lane a claim takes (from the
//! pool or dialed at the claim) dials one more into its peer's pool, up to
//! the pool's size. A lane not taken within [`POOL_MAX_AGE`] is dropped
//! (reset) and not replaced, so an idle cluster dials nothing. A peer that
//! declines lanes, cannot be reached, or fails a dial ahead loses its pool;
//! so do all peers when the node drains.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};

use crate::lane::{LaneStream, PREAMBLE_TIMEOUT, dial};
use crate::tls::PlaneTls;

/// How long a lane dialed ahead may wait in its pool: well under the
/// owner's [`PREAMBLE_TIMEOUT`], which also has to cover the claim's round
/// trip and the preamble's write.
pub const POOL_MAX_AGE: Duration = Duration::from_secs(3);
/// The oldest a lane taken from the pool may be once the owner's `paired`
/// has come (a claim slow to be answered): older, it is dropped and a lane
/// is dialed then, so that the token never reaches a port that gave up on
/// the lane.
pub(crate) const POOLED_USE_MAX: Duration = PREAMBLE_TIMEOUT.saturating_sub(Duration::from_secs(1));
/// The largest pool per peer node a node may be configured with.
pub const LANE_POOL_MAX: usize = 64;
/// Most peer nodes pooled at once: past it, a claim to a peer without a
/// pool dials its lane at the claim, as without a pool.
pub const POOLED_PEERS_MAX: usize = 256;
/// Most dials ahead in flight at once, over all peers.
pub const POOL_DIALS_MAX: usize = 64;
/// Most lanes in all pools at once, idle and being dialed: each holds a
/// descriptor outside the connection limit, within the node's reserve.
pub const POOL_LANES_MAX: usize = 64;

/// What the pool counts: the handles are the caller's, so that the metric
/// names stay the node's.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    /// Lanes idle in pools, now.
    pub idle: Gauge,
    /// Claims that took a lane from the pool.
    pub taken: Counter,
    /// Claims that dialed their lane at the claim (no pooled lane to take).
    pub dialed: Counter,
    /// Pooled lanes dropped unused, past [`POOL_MAX_AGE`].
    pub aged_out: Counter,
    /// Pooled lanes found closed (the owner's port reset them, its process
    /// gone) and dropped.
    pub closed: Counter,
    /// Dials ahead that failed (the peer's pool is then dropped).
    pub failed: Counter,
    /// Pooled lanes dropped with their peer's pool: the peer declined a
    /// lane or could not be reached, or this node drains.
    pub drained: Counter,
}

impl Default for PoolMetrics {
    fn default() -> Self {
        PoolMetrics {
            idle: Gauge::noop(),
            taken: Counter::noop(),
            dialed: Counter::noop(),
            aged_out: Counter::noop(),
            closed: Counter::noop(),
            failed: Counter::noop(),
            drained: Counter::noop(),
        }
    }
}

/// A lane taken from the pool, with the time it was dialed.
#[derive(Debug)]
pub(crate) struct Pooled {
    pub(crate) stream: LaneStream,
    pub(crate) dialed: Instant,
}

/// The pools of one node, one per owner address. Clones share them.
#[derive(Debug, Clone)]
pub(crate) struct LanePool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Most lanes per peer, idle and being dialed; 0: no pool.
    size: usize,
    max_age: Duration,
    tls: Option<PlaneTls>,
    metrics: PoolMetrics,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    peers: HashMap<String, Peer>,
    /// Dials ahead in flight, over all peers.
    dialing: usize,
    /// The node drains: nothing is pooled any more.
    closed: bool,
    /// The next id of a pooled lane or of a peer's pool.
    next: u64,
}

#[derive(Debug)]
struct Peer {
    /// Which pool of this address this is: a dial ahead that completes
    /// after its pool was dropped joins no newer one.
    epoch: u64,
    /// Oldest first.
    idle: VecDeque<Idle>,
    dialing: usize,
}

#[derive(Debug)]
struct Idle {
    id: u64,
    lane: Pooled,
}

impl LanePool {
    /// Pools of `size` lanes per peer (0: none), dialed with `tls`, each
    /// lane kept at most `max_age`.
    pub(crate) fn new(
        size: usize,
        max_age: Duration,
        tls: Option<PlaneTls>,
        metrics: PoolMetrics,
    ) -> Self {
        LanePool {
            inner: Arc::new(Inner {
                size: size.min(LANE_POOL_MAX),
                max_age,
                tls,
                metrics,
                state: Mutex::default(),
            }),
        }
    }

    pub(crate) fn metrics(&self) -> &PoolMetrics {
        &self.inner.metrics
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lanes idle in all pools.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.state().peers.values().map(|p| p.idle.len()).sum()
    }

    /// The newest pooled lane to `addr` that is still open (the most time
    /// left before the owner's port gives up on it); closed ones met on the
    /// way, and any past [`POOL_MAX_AGE`], are dropped (reset).
    pub(crate) fn take(&self, addr: &str) -> Option<Pooled> {
        let metrics = &self.inner.metrics;
        let mut dropped = Vec::new();
        let taken = {
            let mut state = self.state();
            let peer = state.peers.get_mut(addr)?;
            let mut taken = None;
            while let Some(Idle { mut lane, .. }) = peer.idle.pop_back() {
                metrics.idle.decrement(1.0);
                if lane.dialed.elapsed() >= self.inner.max_age {
                    metrics.aged_out.increment(1);
                } else if !lane.stream.is_open() {
                    metrics.closed.increment(1);
                } else {
                    taken = Some(lane);
                    break;
                }
                dropped.push(lane);
            }
            state.forget_if_empty(addr);
            taken
        };
        drop(dropped);
        if taken.is_some() {
            metrics.taken.increment(1);
        }
        taken
    }

    /// A lane was taken for a claim to `addr`: dials one into its pool,
    /// unless the pool (idle and being dialed) is at its size, too many
    /// peers are pooled, or too many dials ahead are in flight.
    pub(crate) fn refill(&self, addr: &str) {
        let size = self.inner.size;
        if size == 0 {
            return;
        }
        let (epoch, id) = {
            let mut state = self.state();
            let held = state.dialing + state.peers.values().map(|p| p.idle.len()).sum::<usize>();
            if state.closed || state.dialing >= POOL_DIALS_MAX || held >= POOL_LANES_MAX {
                return;
            }
            if !state.peers.contains_key(addr) {
                if state.peers.len() >= POOLED_PEERS_MAX {
                    return;
                }
                let epoch = state.id();
                let peer = Peer {
                    epoch,
                    idle: VecDeque::new(),
                    dialing: 0,
                };
                state.peers.insert(addr.to_owned(), peer);
            }
            let id = state.id();
            let peer = state.peers.get_mut(addr).expect("just made");
            if peer.idle.len() + peer.dialing >= size {
                return;
            }
            peer.dialing += 1;
            let epoch = peer.epoch;
            state.dialing += 1;
            (epoch, id)
        };
        let pool = self.clone();
        let addr = addr.to_owned();
        tokio::spawn(async move {
            // Its age counts from before the connect: the owner's wait for
            // the token starts later, at its accept.
            let started = Instant::now();
            let dialed = dial(addr.clone(), pool.inner.tls.clone()).await;
            if pool.arrive(&addr, epoch, id, dialed, started) {
                tokio::time::sleep(pool.inner.max_age).await;
                pool.expire(&addr, id);
            }
        });
    }

    /// A dial ahead completed: its lane joins its pool, if that pool is
    /// still there. A failed dial drops the peer's pool. Whether it joined.
    fn arrive(
        &self,
        addr: &str,
        epoch: u64,
        id: u64,
        dialed: Result<LaneStream, &'static str>,
        started: Instant,
    ) -> bool {
        let metrics = &self.inner.metrics;
        let mut dropped = Vec::new();
        let joined = {
            let mut state = self.state();
            state.dialing -= 1;
            let closed = state.closed;
            match state.peers.get_mut(addr).filter(|p| p.epoch == epoch) {
                Some(peer) => {
                    peer.dialing -= 1;
                    match dialed {
                        Ok(stream) if !closed => {
                            let lane = Pooled {
                                stream,
                                dialed: started,
                            };
                            peer.idle.push_back(Idle { id, lane });
                            metrics.idle.increment(1.0);
                            true
                        }
                        Ok(stream) => {
                            dropped.push(stream);
                            false
                        }
                        Err(reason) => {
                            metrics.failed.increment(1);
                            tracing::debug!(peer = addr, reason, "a lane dialed ahead failed");
                            dropped.extend(state.drop_peer(addr, metrics));
                            false
                        }
                    }
                }
                None => {
                    if let Ok(stream) = dialed {
                        metrics.drained.increment(1);
                        dropped.push(stream);
                    }
                    false
                }
            }
        };
        if !joined {
            self.state().forget_if_empty(addr);
        }
        drop(dropped);
        joined
    }

    /// The pooled lane `id` to `addr` is past its age: dropped, if still idle.
    fn expire(&self, addr: &str, id: u64) {
        let lane = {
            let mut state = self.state();
            let Some(peer) = state.peers.get_mut(addr) else {
                return;
            };
            let Some(at) = peer.idle.iter().position(|idle| idle.id == id) else {
                return;
            };
            let lane = peer.idle.remove(at);
            self.inner.metrics.idle.decrement(1.0);
            self.inner.metrics.aged_out.increment(1);
            state.forget_if_empty(addr);
            lane
        };
        drop(lane);
    }

    /// Drops the pool of `addr` (its lanes reset): the peer declined a
    /// lane, or cannot be reached.
    pub(crate) fn drain(&self, addr: &str) {
        let dropped = self.state().drop_peer(addr, &self.inner.metrics);
        drop(dropped);
    }

    /// Drops every pool and pools nothing more: the node drains.
    pub(crate) fn close(&self) {
        let dropped: Vec<_> = {
            let mut state = self.state();
            state.closed = true;
            let addrs: Vec<_> = state.peers.keys().cloned().collect();
            addrs
                .iter()
                .flat_map(|addr| state.drop_peer(addr, &self.inner.metrics))
                .collect()
        };
        drop(dropped);
    }
}

impl State {
    fn id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Removes the pool of `addr`, counting its idle lanes drained; the
    /// lanes, to be dropped once the lock is released.
    fn drop_peer(&mut self, addr: &str, metrics: &PoolMetrics) -> Vec<LaneStream> {
        let Some(peer) = self.peers.remove(addr) else {
            return Vec::new();
        };
        let n = peer.idle.len();
        metrics.idle.decrement(n as f64);
        metrics.drained.increment(n as u64);
        peer.idle.into_iter().map(|i| i.lane.stream).collect()
    }

    /// Forgets the pool of `addr` once it has nothing idle or being dialed.
    fn forget_if_empty(&mut self, addr: &str) {
        if self
            .peers
            .get(addr)
            .is_some_and(|p| p.idle.is_empty() && p.dialing == 0)
        {
            self.peers.remove(addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A listener that keeps what it accepts (as an owner's port holds a
    /// lane while it waits for its token).
    async fn owner() -> (String, tokio::task::JoinHandle<Vec<tokio::net::TcpStream>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok(Ok((mut tcp, _))) =
                tokio::time::timeout(Duration::from_millis(500), listener.accept()).await
            {
                let mut magic = [0u8; 9];
                let _ = tcp.read_exact(&mut magic).await;
                held.push(tcp);
            }
            held
        });
        (addr, held)
    }

    async fn settle(pool: &LanePool, idle: usize) {
        for _ in 0..200 {
            if pool.idle() == idle {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} lanes idle, not {idle}", pool.idle());
    }

    #[tokio::test]
    async fn a_pool_fills_by_demand_up_to_its_size() {
        let (addr, _held) = owner().await;
        let pool = LanePool::new(2, Duration::from_secs(30), None, PoolMetrics::default());
        assert!(pool.take(&addr).is_none(), "nothing is dialed unasked");
        pool.refill(&addr);
        settle(&pool, 1).await;
        for _ in 0..5 {
            pool.refill(&addr);
        }
        settle(&pool, 2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pool.idle(), 2, "no more than its size");
        let lane = pool.take(&addr).expect("a pooled lane");
        assert!(lane.dialed.elapsed() < Duration::from_secs(30));
        assert_eq!(pool.idle(), 1);
        pool.take(&addr).expect("another");
        assert!(pool.take(&addr).is_none());
        assert!(pool.state().peers.is_empty(), "an empty pool is forgotten");
    }

    #[tokio::test]
    async fn an_unused_lane_ages_out_and_is_not_replaced() {
        let (addr, _held) = owner().await;
        let pool = LanePool::new(4, Duration::from_millis(200), None, PoolMetrics::default());
        pool.refill(&addr);
        settle(&pool, 1).await;
        settle(&pool, 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(pool.idle(), 0, "nothing dialed in its place");
        assert!(pool.take(&addr).is_none());
    }

    #[tokio::test]
    async fn a_closed_lane_is_skipped() {
        let (addr, held) = owner().await;
        let pool = LanePool::new(2, Duration::from_secs(30), None, PoolMetrics::default());
        pool.refill(&addr);
        pool.refill(&addr);
        settle(&pool, 2).await;
        // The owner's port closes them (its process gone).
        drop(held.await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(pool.take(&addr).is_none(), "closed lanes are not taken");
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn a_failed_dial_a_drain_and_a_close_drop_pools() {
        let (addr, _held) = owner().await;
        let pool = LanePool::new(3, Duration::from_secs(30), None, PoolMetrics::default());
        pool.refill(&addr);
        pool.refill(&addr);
        settle(&pool, 2).await;
        pool.drain(&addr);
        assert_eq!(pool.idle(), 0);
        // Nobody listens there: the dial fails, and leaves no pool.
        let gone = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().to_string()
        };
        pool.refill(&gone);
        for _ in 0..100 {
            if pool.state().dialing == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!pool.state().peers.contains_key(&gone));
        pool.refill(&addr);
        settle(&pool, 1).await;
        pool.close();
        assert_eq!(pool.idle(), 0);
        pool.refill(&addr);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pool.idle(), 0, "a closed pool dials nothing");
        assert_eq!(pool.state().dialing, 0);
    }

    #[tokio::test]
    async fn a_pool_of_zero_dials_nothing_and_peers_are_bounded() {
        let (addr, _held) = owner().await;
        let off = LanePool::new(0, Duration::from_secs(30), None, PoolMetrics::default());
        off.refill(&addr);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(off.idle(), 0);
        assert_eq!(off.state().dialing, 0);
        let pool = LanePool::new(1, Duration::from_secs(30), None, PoolMetrics::default());
        {
            let mut state = pool.state();
            for n in 0..POOLED_PEERS_MAX {
                let peer = Peer {
                    epoch: 0,
                    idle: VecDeque::new(),
                    dialing: 1,
                };
                state.peers.insert(format!("10.0.0.1:{n}"), peer);
            }
        }
        pool.refill(&addr);
        assert_eq!(pool.state().dialing, 0, "no pool past the peers' bound");
        pool.state().peers.clear();
        pool.state().dialing = POOL_DIALS_MAX;
        pool.refill(&addr);
        assert!(
            !pool.state().peers.contains_key(&addr),
            "no dial past the bound of dials in flight"
        );
    }
}
