//! Rate caps as a pump sees them: asked once per socket read or write,
//! never per byte. The caps live with the caller (the relay's token
//! buckets); a pump only asks.

use std::task::{Context, Poll};

/// A bandwidth limit on one direction of a pump.
pub trait Gate: Send {
    /// How many bytes the next read or write may move, at most `want`
    /// (never 0); `Pending`, with a wake-up arranged, while the limit
    /// allows none. A direction held here stops reading, and the sender is
    /// slowed down by flow control (TCP's, or the Bridge's HTTP/2 window).
    fn poll_grant(&mut self, want: usize, cx: &mut Context<'_>) -> Poll<usize>;

    /// The read or write moved `used` of the bytes just granted; the rest
    /// goes back.
    fn used(&mut self, used: usize);
}

/// The limits on the two directions of one client socket; `None`: unlimited.
#[derive(Default)]
pub struct Gates {
    /// What is read from the socket.
    pub read: Option<Box<dyn Gate>>,
    /// What is written to the socket.
    pub write: Option<Box<dyn Gate>>,
}

impl std::fmt::Debug for Gates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gates")
            .field("read", &self.read.is_some())
            .field("write", &self.write.is_some())
            .finish()
    }
}

/// Asks `gate` for up to `want` bytes; all of them when there is none.
pub(crate) fn poll_grant<G: Gate + ?Sized>(
    gate: &mut Option<Box<G>>,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<usize> {
    match gate {
        Some(g) => g.poll_grant(want, cx),
        None => Poll::Ready(want),
    }
}

/// Tells `gate`, if any, how many of the granted bytes were moved.
pub(crate) fn used<G: Gate + ?Sized>(gate: &mut Option<Box<G>>, n: usize) {
    if let Some(g) = gate {
        g.used(n);
    }
}
