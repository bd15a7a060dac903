//! Bandwidth caps (`--max-session-rate` per direction of a session,
//! `--max-node-rate` for the node's total): token buckets asked once per
//! read, never per byte. A direction over its cap stops reading until the
//! bucket has refilled, so TCP's flow control slows the sender down; the
//! session is never cut.
//!
//! Every pump asks them through [`dtcp_duplex::Gate`], which [`Throttle`]
//! implements: a local session's and the forwarding plane's, so the buckets
//! stay here and the pumps know only the trait.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::Histogram;
use tokio::time::{Instant, Sleep};

/// How much a bucket holds, as time at its rate: long enough that a
/// direction woken late (a busy machine) loses no tokens to the bucket's
/// brim, short enough that the first burst adds about 1 % to a ten-second
/// transfer.
const BURST: Duration = Duration::from_millis(100);
/// The least a bucket holds, whatever the rate: one read's worth.
const MIN_BURST: f64 = 16.0 * 1024.0;
/// The most one read takes from the node's shared bucket.
const NODE_GRANT: f64 = 64.0 * 1024.0;
/// A throttled direction waits until this share of the burst has refilled,
/// so that it wakes for a useful read rather than for a few bytes.
const WAKE_SHARE: f64 = 0.25;

/// A token bucket: `rate` bytes a second, holding at most `burst`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        let rate = rate as f64;
        let burst = (rate * BURST.as_secs_f64()).max(MIN_BURST);
        Bucket {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// How long until the bucket holds `want` bytes.
    fn wait_for(&self, want: f64) -> Duration {
        Duration::from_secs_f64(((want - self.tokens) / self.rate).max(0.0))
    }
}

/// The node's bucket, shared by every direction of every session.
#[derive(Debug)]
pub(crate) struct NodeRate(Mutex<Bucket>);

impl NodeRate {
    /// A cap of `rate` bytes a second for the whole node.
    pub(crate) fn new(rate: u64) -> Arc<Self> {
        let mut bucket = Bucket::new(rate);
        // One grant's worth, not a tenth of a second's: a burst goes to
        // whichever direction asks first, and the shared bucket loses
        // nothing to its brim anyway while directions wait in debt.
        bucket.burst = NODE_GRANT;
        bucket.tokens = NODE_GRANT;
        Arc::new(NodeRate(Mutex::new(bucket)))
    }
}

/// The caps one direction of a session is under, and its wait.
#[derive(Debug)]
pub(crate) struct Throttle {
    session: Option<Bucket>,
    node: Option<Arc<NodeRate>>,
    /// While throttled: the wake-up, and since when.
    sleep: Option<(Pin<Box<Sleep>>, Instant)>,
    /// Bytes granted for the read in progress, not yet accounted for.
    granted: usize,
    /// Bytes reserved in the node's bucket, granted when the sleep ends.
    reserved: usize,
    /// How much to reserve from the node's bucket per read.
    grant_size: f64,
    throttled: Histogram,
}

impl Throttle {
    /// A throttle under `session` bytes a second for this direction and
    /// the node's shared cap; `None` when neither is set.
    pub(crate) fn new(
        session: Option<u64>,
        node: Option<Arc<NodeRate>>,
        throttled: Histogram,
    ) -> Option<Box<Self>> {
        if session.is_none() && node.is_none() {
            return None;
        }
        Some(Box::new(Throttle {
            session: session.map(Bucket::new),
            node,
            sleep: None,
            granted: 0,
            reserved: 0,
            grant_size: NODE_GRANT,
            throttled,
        }))
    }

    /// How many bytes the next read may take, at most `want`; `Pending`
    /// (with a timer armed) while the caps allow none.
    ///
    /// The session's own bucket is waited on until it holds a useful read.
    /// The node's shared bucket is different: a direction *reserves* its
    /// grant there at once, taking the bucket into debt if it must, and
    /// sleeps until the debt ahead of it is repaid. So directions that share
    /// the node are served in the order they asked, one grant each: had
    /// they all slept until the bucket refilled, the one whose timer fires
    /// first would take the refill every time.
    pub(crate) fn poll_grant(&mut self, want: usize, cx: &mut Context<'_>) -> Poll<usize> {
        loop {
            if let Some((sleep, since)) = &mut self.sleep {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.throttled.record(since.elapsed());
                self.sleep = None;
                if self.reserved > 0 {
                    // Its turn at the node's bucket has come.
                    let n = std::mem::take(&mut self.reserved);
                    self.granted = n;
                    return Poll::Ready(n);
                }
            }
            let now = Instant::now();
            let mut allowed = want as f64;
            if let Some(b) = &mut self.session {
                b.refill(now);
                // A bucket with less than a useful read in it holds the
                // direction back until it has one (else a refill of a few
                // bytes every microsecond would be read a few bytes at a time).
                let useful = (b.burst * WAKE_SHARE).min(want as f64);
                if b.tokens < useful {
                    let wait = b.wait_for(useful);
                    self.sleep = Some((Box::pin(tokio::time::sleep(wait)), now));
                    continue;
                }
                allowed = allowed.min(b.tokens);
            }
            let mut wait = Duration::ZERO;
            if let Some(node) = &self.node {
                // One read's worth at a time from the shared bucket, sized by
                // what this direction's last read took: what a read leaves
                // comes back to the bucket for whoever asks next, so a
                // direction whose reads come up short would otherwise hand
                // its share to the others.
                allowed = allowed.min(self.grant_size);
                let mut b = node.0.lock().expect("poisoned");
                b.refill(now);
                b.tokens -= allowed.floor();
                if b.tokens < 0.0 {
                    wait = Duration::from_secs_f64(-b.tokens / b.rate);
                }
            }
            let n = allowed as usize;
            if n == 0 {
                // Asked for nothing: nothing to wait for.
                return Poll::Ready(0);
            }
            if let Some(b) = &mut self.session {
                b.tokens -= n as f64;
            }
            if wait.is_zero() {
                self.granted = n;
                return Poll::Ready(n);
            }
            self.reserved = n;
            self.sleep = Some((Box::pin(tokio::time::sleep(wait)), now));
        }
    }

    /// The read took `used` of the bytes granted: the rest goes back.
    pub(crate) fn used(&mut self, used: usize) {
        let unused = self.granted.saturating_sub(used);
        // A read that took nothing (an end, an error) says nothing of size.
        if self.granted > 0 && used > 0 {
            self.grant_size = (2.0 * used as f64).clamp(MIN_BURST, NODE_GRANT);
        }
        self.granted = 0;
        if unused > 0 {
            let unused = unused as f64;
            if let Some(b) = &mut self.session {
                b.tokens += unused;
            }
            if let Some(n) = &self.node {
                n.0.lock().expect("poisoned").tokens += unused;
            }
        }
    }
}

impl Drop for Throttle {
    /// A direction that ends while it waits for its turn (or with a grant
    /// unread) pays back what it took from the node's bucket.
    fn drop(&mut self) {
        let unused = self.reserved + self.granted;
        if unused > 0
            && let Some(n) = &self.node
        {
            n.0.lock().expect("poisoned").tokens += unused as f64;
        }
    }
}

impl dtcp_duplex::Gate for Throttle {
    fn poll_grant(&mut self, want: usize, cx: &mut Context<'_>) -> Poll<usize> {
        Throttle::poll_grant(self, want, cx)
    }

    fn used(&mut self, used: usize) {
        Throttle::used(self, used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_capped_direction_gets_its_rate_and_waits_between() {
        const RATE: u64 = 2_000_000;
        let mut t = Throttle::new(Some(RATE), None, Histogram::noop()).unwrap();
        let started = Instant::now();
        let mut moved = 0usize;
        while moved < 1_000_000 {
            let n = std::future::poll_fn(|cx| t.poll_grant(64 * 1024, cx)).await;
            assert!(n <= 64 * 1024);
            t.used(n);
            moved += n;
        }
        let secs = started.elapsed().as_secs_f64();
        // 1 MB at 2 MB/s, less the first burst (200 kB): 0.4 s.
        assert!((0.37..0.55).contains(&secs), "{secs} s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn directions_sharing_the_node_get_equal_turns() {
        const RATE: u64 = 4_000_000;
        let node = NodeRate::new(RATE);
        let deadline = Instant::now() + Duration::from_millis(600);
        let runs: Vec<_> = (0..4)
            .map(|_| {
                let node = node.clone();
                tokio::spawn(async move {
                    let mut t = Throttle::new(None, Some(node), Histogram::noop()).unwrap();
                    let mut moved = 0usize;
                    while Instant::now() < deadline {
                        let n = std::future::poll_fn(|cx| t.poll_grant(256 * 1024, cx)).await;
                        t.used(n);
                        moved += n;
                    }
                    moved
                })
            })
            .collect();
        let mut moved = Vec::new();
        for run in runs {
            moved.push(run.await.unwrap() as f64);
        }
        let mean = moved.iter().sum::<f64>() / moved.len() as f64;
        for m in &moved {
            assert!((m - mean).abs() / mean < 0.2, "{moved:?}");
        }
    }

    #[tokio::test]
    async fn unused_grants_go_back() {
        let node = NodeRate::new(100_000);
        let mut t = Throttle::new(None, Some(node.clone()), Histogram::noop()).unwrap();
        let n = std::future::poll_fn(|cx| t.poll_grant(usize::MAX, cx)).await;
        t.used(0);
        let again = std::future::poll_fn(|cx| t.poll_grant(usize::MAX, cx)).await;
        assert_eq!(n, again, "nothing was spent");
        assert!(Throttle::new(None, None, Histogram::noop()).is_none());
    }
}
