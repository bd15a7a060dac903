//! The byte pump of a paired session: both directions at once, each
//! half-closed on its own, no buffer held while a session is idle.
//!
//! Written as one hand-made future rather than two `async` copy loops: its
//! state is a few words per direction, which is most of what an idle session
//! costs, and a relay holds many idle sessions.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use metrics::Counter;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Size of one copy buffer.
const BUF_SIZE: usize = 64 * 1024;
/// Buffers kept for reuse per worker thread: enough for the sessions a
/// thread moves data for at once, few enough that idle memory stays small.
const POOL_MAX: usize = 4;

thread_local! {
    /// Copy buffers are taken when a socket turns readable and given back
    /// when it has been drained, so an idle session holds none.
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; BUF_SIZE].into_boxed_slice())
}

fn give_buf(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(buf);
        }
    });
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Both directions finished with a FIN.
    Closed,
    /// A side reset or failed; the other was closed.
    Reset,
    /// No byte moved for the idle timeout.
    IdleTimeout,
    /// The node's drain timeout ran out.
    Drained,
}

impl End {
    pub fn label(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Reset => "reset",
            End::IdleTimeout => "idle_timeout",
            End::Drained => "drained",
        }
    }
}

/// One direction: bytes read from one socket, not yet written to the other.
#[derive(Debug)]
struct Way<'a> {
    /// Bytes sent before pairing, delivered first.
    early: &'a [u8],
    /// Held only while there is data in flight.
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    /// The FIN has been passed on.
    done: bool,
    moved: u64,
    counter: Counter,
}

/// Moves bytes between `a` and `b` until both directions end (a FIN each
/// way), one side fails, or no byte moves for the idle timeout.
#[derive(Debug)]
pub(crate) struct Pump<'a> {
    ends: [&'a TcpStream; 2],
    /// `ways[0]` carries `a` to `b`, `ways[1]` `b` to `a`.
    ways: [Way<'a>; 2],
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl<'a> Pump<'a> {
    /// A pump between `a` and `b`; `early` bytes of each go first, and each
    /// direction's bytes are counted on its counter.
    pub fn new(
        a: (&'a TcpStream, &'a [u8], Counter),
        b: (&'a TcpStream, &'a [u8], Counter),
        idle: Option<Duration>,
    ) -> Self {
        let way = |early, counter| Way {
            early,
            buf: None,
            start: 0,
            end: 0,
            done: false,
            moved: 0,
            counter,
        };
        Pump {
            ends: [a.0, b.0],
            ways: [way(a.1, a.2), way(b.1, b.2)],
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
        }
    }

    /// Bytes moved `a` to `b`, and `b` to `a`.
    pub fn moved(&self) -> [u64; 2] {
        [self.ways[0].moved, self.ways[1].moved]
    }

    /// Drives direction `i`; `Ready(Ok)` once its FIN is passed on.
    fn poll_way(&mut self, i: usize, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (from, to) = (self.ends[i], self.ends[1 - i]);
        let way = &mut self.ways[i];
        loop {
            if way.done {
                return Poll::Ready(Ok(()));
            }
            // Write out what is in hand: the early bytes, then the buffer.
            while !way.early.is_empty() || way.start < way.end {
                ready!(to.poll_write_ready(cx))?;
                let data = if way.early.is_empty() {
                    &way.buf.as_ref().expect("data in hand")[way.start..way.end]
                } else {
                    way.early
                };
                match to.try_write(data) {
                    Ok(n) => {
                        if way.early.is_empty() {
                            way.start += n;
                        } else {
                            way.early = &way.early[n..];
                        }
                        way.moved += n as u64;
                        way.counter.increment(n as u64);
                    }
                    // Readiness was stale; the next poll registers interest.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            ready!(from.poll_read_ready(cx))?;
            let buf = way.buf.get_or_insert_with(take_buf);
            match from.try_read(buf) {
                Ok(0) => {
                    // Everything before the FIN is delivered: pass the FIN
                    // on. The other direction keeps flowing.
                    if let Some(buf) = way.buf.take() {
                        give_buf(buf);
                    }
                    way.done = true;
                    SockRef::from(to).shutdown(Shutdown::Write)?;
                }
                Ok(n) => (way.start, way.end) = (0, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Drained: give the buffer back until data comes again.
                    if let Some(buf) = way.buf.take() {
                        give_buf(buf);
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Future for Pump<'_> {
    type Output = End;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let this = self.get_mut();
        let before = this.moved();
        let a = this.poll_way(0, cx);
        let b = this.poll_way(1, cx);
        match (a, b) {
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => return Poll::Ready(End::Reset),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(End::Closed),
            _ => {}
        }
        let active = this.moved() != before;
        if let Some((idle, sleep)) = &mut this.idle {
            if active {
                sleep.as_mut().reset(Instant::now() + *idle);
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::IdleTimeout);
            }
        }
        Poll::Pending
    }
}

/// Closes `s` with a reset rather than a FIN when it is dropped.
pub(crate) fn reset_on_close(s: &TcpStream) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
}
