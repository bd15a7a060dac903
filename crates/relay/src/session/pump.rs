//! The byte pump of a paired session: both directions at once, each
//! half-closed on its own, no buffer held while a session is idle.
//!
//! Written as one hand-made future rather than two `async` copy loops: its
//! state is a few words per direction, which is most of what an idle session
//! costs, and a relay holds many idle sessions.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use metrics::Counter;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::outcome::Outcome;
#[cfg(target_os = "linux")]
use crate::session::splice;
use crate::throttle::Throttle;

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

/// One direction: bytes read from one socket, not yet written to the other.
#[derive(Debug)]
struct Way<'a> {
    /// Bytes sent before pairing, delivered first.
    early: &'a [u8],
    /// Held only while there is data in flight.
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    /// Linux: the pipe the bytes pass through, kernel to kernel, and how
    /// many are in it. Held only while there is data in flight.
    #[cfg(target_os = "linux")]
    pipe: Option<splice::Pipe>,
    #[cfg(target_os = "linux")]
    in_pipe: usize,
    /// The FIN has been passed on.
    done: bool,
    moved: u64,
    counter: Counter,
    /// The bandwidth caps of this direction, if any (boxed: most sessions
    /// have none, and every idle session holds its pump).
    throttle: Option<Box<Throttle>>,
}

impl Way<'_> {
    /// How many bytes the next read may take, at most `want`: `Pending`
    /// while a cap holds the direction back.
    fn poll_grant(&mut self, want: usize, cx: &mut Context<'_>) -> Poll<usize> {
        match &mut self.throttle {
            Some(t) => t.poll_grant(want, cx),
            None => Poll::Ready(want),
        }
    }

    /// The read took `n` of the bytes granted.
    fn used(&mut self, n: usize) {
        if let Some(t) = &mut self.throttle {
            t.used(n);
        }
    }

    /// Counts `n` bytes delivered.
    fn note(&mut self, n: usize) {
        self.moved += n as u64;
        self.counter.increment(n as u64);
    }

    /// Writes the bytes sent before pairing; `Ready(Ok)` once none are left.
    fn poll_write_early(&mut self, to: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.early.is_empty() {
            ready!(to.poll_write_ready(cx))?;
            match to.try_write(self.early) {
                Ok(n) => {
                    self.early = &self.early[n..];
                    self.note(n);
                }
                // Readiness was stale; the next poll registers interest.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Moves bytes between `a` and `b` until both directions end (a FIN each
/// way: [`Outcome::Closed`]), one side fails ([`Outcome::Reset`]), or no
/// byte moves for the idle timeout ([`Outcome::IdleTimeout`]).
#[derive(Debug)]
pub(crate) struct Pump<'a> {
    ends: [&'a TcpStream; 2],
    /// `ways[0]` carries `a` to `b`, `ways[1]` `b` to `a`.
    ways: [Way<'a>; 2],
    /// Move bytes with splice(2) through a pipe rather than through a buffer.
    splice: bool,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl<'a> Pump<'a> {
    /// A pump between `a` and `b`; `early` bytes of each go first, and each
    /// direction's bytes are counted on its counter.
    pub(crate) fn new(
        a: (&'a TcpStream, &'a [u8], Counter),
        b: (&'a TcpStream, &'a [u8], Counter),
        idle: Option<Duration>,
        splice: bool,
        throttles: [Option<Box<Throttle>>; 2],
    ) -> Self {
        let [ta, tb] = throttles;
        let way = |early, counter, throttle| Way {
            early,
            buf: None,
            start: 0,
            end: 0,
            #[cfg(target_os = "linux")]
            pipe: None,
            #[cfg(target_os = "linux")]
            in_pipe: 0,
            done: false,
            moved: 0,
            counter,
            throttle,
        };
        Pump {
            ends: [a.0, b.0],
            ways: [way(a.1, a.2, ta), way(b.1, b.2, tb)],
            splice: splice && cfg!(target_os = "linux"),
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
        }
    }

    /// Bytes moved `a` to `b`, and `b` to `a`.
    pub(crate) fn moved(&self) -> [u64; 2] {
        [self.ways[0].moved, self.ways[1].moved]
    }

    /// Drives direction `i`; `Ready(Ok)` once its FIN is passed on.
    fn poll_way(&mut self, i: usize, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        #[cfg(target_os = "linux")]
        if self.splice {
            return self.poll_way_spliced(i, cx);
        }
        let (from, to) = (self.ends[i], self.ends[1 - i]);
        let way = &mut self.ways[i];
        loop {
            if way.done {
                return Poll::Ready(Ok(()));
            }
            // Write out what is in hand: the early bytes, then the buffer.
            ready!(way.poll_write_early(to, cx))?;
            while way.start < way.end {
                ready!(to.poll_write_ready(cx))?;
                let data = &way.buf.as_ref().expect("data in hand")[way.start..way.end];
                match to.try_write(data) {
                    Ok(n) => {
                        way.start += n;
                        way.note(n);
                    }
                    // Readiness was stale; the next poll registers interest.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            ready!(from.poll_read_ready(cx))?;
            // Asked once per read: a capped direction stops reading here.
            let max = ready!(way.poll_grant(BUF_SIZE, cx));
            let buf = way.buf.get_or_insert_with(take_buf);
            let read = from.try_read(&mut buf[..max]);
            way.used(*read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => {
                    // Everything before the FIN is delivered: pass the FIN
                    // on. The other direction keeps flowing.
                    if let Some(buf) = way.buf.take() {
                        give_buf(buf);
                    }
                    way.done = true;
                    pass_fin(to)?;
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

#[cfg(target_os = "linux")]
impl Pump<'_> {
    /// `poll_way` with splice(2): socket to pipe to socket, no copy through
    /// user space (as HAProxy does on Linux).
    fn poll_way_spliced(&mut self, i: usize, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        use std::os::fd::AsRawFd;
        use tokio::io::Interest;

        let (from, to) = (self.ends[i], self.ends[1 - i]);
        let way = &mut self.ways[i];
        loop {
            if way.done {
                return Poll::Ready(Ok(()));
            }
            // Bytes sent before pairing were read into user space: write them first.
            ready!(way.poll_write_early(to, cx))?;
            while way.in_pipe > 0 {
                ready!(to.poll_write_ready(cx))?;
                let pipe = way.pipe.as_ref().expect("bytes in a pipe");
                let out = to.as_raw_fd();
                // try_io clears the readiness on EAGAIN, so the next poll waits.
                match to.try_io(Interest::WRITABLE, || pipe.drain_to(out, way.in_pipe)) {
                    Ok(n) => {
                        way.in_pipe -= n;
                        way.note(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            ready!(from.poll_read_ready(cx))?;
            let max = ready!(way.poll_grant(usize::MAX, cx));
            let pipe = match &way.pipe {
                Some(p) => p,
                None => way.pipe.insert(splice::take_pipe()?),
            };
            let fd = from.as_raw_fd();
            let read = from.try_io(Interest::READABLE, || pipe.fill_from(fd, max));
            way.used(*read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => {
                    if let Some(p) = way.pipe.take() {
                        splice::give_pipe(p);
                    }
                    way.done = true;
                    pass_fin(to)?;
                }
                Ok(n) => way.in_pipe = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Drained: an empty pipe goes back to the pool.
                    if let Some(p) = way.pipe.take() {
                        splice::give_pipe(p);
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Future for Pump<'_> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        let before = this.moved();
        let a = this.poll_way(0, cx);
        let b = this.poll_way(1, cx);
        match (a, b) {
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => {
                return Poll::Ready(Outcome::Reset);
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(Outcome::Closed),
            _ => {}
        }
        let active = this.moved() != before;
        if let Some((idle, sleep)) = &mut this.idle {
            if active {
                sleep.as_mut().reset(Instant::now() + *idle);
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Outcome::IdleTimeout);
            }
        }
        Poll::Pending
    }
}

/// Closes `s` with a reset rather than a FIN when it is dropped.
pub(crate) use dtcp_forward::{pass_fin, reset_on_close};
