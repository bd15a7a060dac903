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
    /// Bytes this direction has taken from the node's bucket (its turn
    /// came) and not yet read: spent by its next reads before it queues
    /// again.
    credit: usize,
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
            credit: 0,
            throttled,
        }))
    }

    /// How many bytes the next read may take, at most `want`; `Pending`
    /// (with a timer armed) while the caps allow none.
    ///
    /// The session's own bucket is waited on until it holds a useful read.
    /// The node's shared bucket is different: a direction *reserves* a
    /// whole grant there at once, taking the bucket into debt if it must,
    /// and sleeps until the debt ahead of it is repaid. So directions that
    /// share the node are served in the order they asked, one grant each:
    /// had they all slept until the bucket refilled, the one whose timer
    /// fires first would take the refill every time. A grant is always the
    /// same size and what a short read leaves of it stays with the direction
    /// for its next read, so every turn is worth the same bytes whatever
    /// size the direction's reads come in.
    pub(crate) fn poll_grant(&mut self, want: usize, cx: &mut Context<'_>) -> Poll<usize> {
        loop {
            if let Some((sleep, since)) = &mut self.sleep {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.throttled.record(since.elapsed());
                self.sleep = None;
                // Its turn at the node's bucket has come.
                self.credit += std::mem::take(&mut self.reserved);
            }
            let now = Instant::now();
            let mut allowed = want;
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
                allowed = allowed.min(b.tokens as usize);
            }
            if let Some(node) = &self.node {
                if self.credit == 0 {
                    let grant = NODE_GRANT as usize;
                    let mut b = node.0.lock().expect("poisoned");
                    b.refill(now);
                    b.tokens -= NODE_GRANT;
                    if b.tokens < 0.0 {
                        let wait = Duration::from_secs_f64(-b.tokens / b.rate);
                        drop(b);
                        self.reserved = grant;
                        self.sleep = Some((Box::pin(tokio::time::sleep(wait)), now));
                        continue;
                    }
                    self.credit = grant;
                }
                allowed = allowed.min(self.credit);
                self.credit -= allowed;
            }
            if allowed == 0 {
                // Asked for nothing: nothing to wait for.
                return Poll::Ready(0);
            }
            if let Some(b) = &mut self.session {
                b.tokens -= allowed as f64;
            }
            self.granted = allowed;
            return Poll::Ready(allowed);
        }
    }

    /// The read took `used` of the bytes granted: the rest goes back.
    ///
    /// To the session's bucket at once. To the node's only when the read
    /// took nothing (the socket is drained, ended or failed): until then it
    /// is this direction's credit for its next read, paid for by its turn.
    pub(crate) fn used(&mut self, used: usize) {
        let unused = std::mem::take(&mut self.granted).saturating_sub(used);
        if let Some(b) = &mut self.session {
            b.tokens += unused as f64;
        }
        if self.node.is_some() {
            self.credit += unused;
            if used == 0 {
                self.give_back_credit();
            }
        }
    }

    /// Returns this direction's unread credit to the node's bucket, for
    /// whoever asks next: an idle direction keeps nothing of the node's.
    fn give_back_credit(&mut self) {
        let credit = std::mem::take(&mut self.credit);
        if credit > 0
            && let Some(n) = &self.node
        {
            n.0.lock().expect("poisoned").tokens += credit as f64;
        }
    }
}

impl Drop for Throttle {
    /// A direction that ends while it waits for its turn (or with a grant
    /// or credit unread) pays back what it took from the node's bucket.
    fn drop(&mut self) {
        self.credit += std::mem::take(&mut self.reserved) + std::mem::take(&mut self.granted);
        self.give_back_credit();
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

    /// Four directions share a node cap for 600 ms, each reading at most
    /// `reads[k]` bytes at a time; returns the bytes each moved.
    async fn share(reads: [usize; 4]) -> Vec<f64> {
        const RATE: u64 = 4_000_000;
        let node = NodeRate::new(RATE);
        let deadline = Instant::now() + Duration::from_millis(600);
        let runs: Vec<_> = reads
            .into_iter()
            .map(|read| {
                let node = node.clone();
                tokio::spawn(async move {
                    let mut t = Throttle::new(None, Some(node), Histogram::noop()).unwrap();
                    let mut moved = 0usize;
                    while Instant::now() < deadline {
                        let n = std::future::poll_fn(|cx| t.poll_grant(256 * 1024, cx)).await;
                        let n = n.min(read);
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
        moved
    }

    fn assert_even(moved: &[f64]) {
        let mean = moved.iter().sum::<f64>() / moved.len() as f64;
        for m in moved {
            assert!((m - mean).abs() / mean < 0.2, "{moved:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn directions_sharing_the_node_get_equal_turns() {
        assert_even(&share([usize::MAX; 4]).await);
    }

    /// A direction whose reads come up short (a socket that holds less than
    /// a grant, a pipe that takes less) gets as many bytes as one whose
    /// reads take whole grants: a turn is worth a grant, not a read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_reads_get_an_equal_share_of_the_node() {
        assert_even(&share([usize::MAX, 20_000, usize::MAX, 9_000]).await);
    }

    #[tokio::test]
    async fn a_drained_direction_keeps_no_credit() {
        let node = NodeRate::new(1_000_000);
        let mut t = Throttle::new(None, Some(node.clone()), Histogram::noop()).unwrap();
        let n = std::future::poll_fn(|cx| t.poll_grant(usize::MAX, cx)).await;
        t.used(1000);
        assert_eq!(t.credit, n - 1000, "a short read keeps the rest");
        let again = std::future::poll_fn(|cx| t.poll_grant(usize::MAX, cx)).await;
        assert_eq!(again, n - 1000, "the next read spends the credit first");
        t.used(0);
        assert_eq!(t.credit, 0, "a read that took nothing gives it all back");
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
