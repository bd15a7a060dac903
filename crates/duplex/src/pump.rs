//! The pump between two sockets: both directions at once, each half-closed
//! on its own, no buffer or pipe held while nothing is in flight.
//!
//! Written as one hand-made future rather than two `async` copy loops: its
//! state is a few words per direction, which is most of what an idle
//! session costs, and a relay holds many idle sessions.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::net::TcpStream;

use crate::gate::{self, Gate};
#[cfg(target_os = "linux")]
use crate::pipe::{self, Pipe};
use crate::pool::{BUF_SIZE, Buf};
use crate::socket::pass_fin;

/// One direction: bytes read from one socket, not yet written to the other.
#[derive(Debug)]
struct Way<'a, G: ?Sized> {
    /// Bytes sent before pairing, delivered first.
    early: &'a [u8],
    /// Held only while there is data in flight.
    buf: Option<Buf>,
    start: usize,
    end: usize,
    /// Linux: the pipe the bytes pass through, kernel to kernel, and how
    /// many are in it. Held only while there is data in flight.
    #[cfg(target_os = "linux")]
    pipe: Option<Pipe>,
    #[cfg(target_os = "linux")]
    in_pipe: usize,
    /// The FIN has been passed on.
    done: bool,
    moved: u64,
    /// The bandwidth caps of this direction, if any (boxed: most sessions
    /// have none, and every idle session holds its pump).
    gate: Option<Box<G>>,
}

impl<G: Gate + ?Sized> Way<'_, G> {
    /// Writes the bytes sent before pairing; `Ready(Ok)` once none are left.
    fn poll_write_early(&mut self, to: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.early.is_empty() {
            ready!(to.poll_write_ready(cx))?;
            match to.try_write(self.early) {
                Ok(n) => {
                    self.early = &self.early[n..];
                    self.moved += n as u64;
                }
                // Readiness was stale; the next poll registers interest.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Drives this direction, `from` to `to`, through a buffer of the pool;
    /// `Ready(Ok)` once its FIN is passed on.
    fn poll_copy(
        &mut self,
        from: &TcpStream,
        to: &TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            // Write out what is in hand: the early bytes, then the buffer.
            ready!(self.poll_write_early(to, cx))?;
            while self.start < self.end {
                ready!(to.poll_write_ready(cx))?;
                let data = &self.buf.as_ref().expect("data in hand")[self.start..self.end];
                match to.try_write(data) {
                    Ok(n) => {
                        self.start += n;
                        self.moved += n as u64;
                    }
                    // Readiness was stale; the next poll registers interest.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            ready!(from.poll_read_ready(cx))?;
            // Asked once per read: a capped direction stops reading here.
            let max = ready!(gate::poll_grant(&mut self.gate, BUF_SIZE, cx));
            let buf = self.buf.get_or_insert_with(Buf::take);
            let read = from.try_read(&mut buf[..max]);
            gate::used(&mut self.gate, *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => {
                    // Everything before the FIN is delivered: pass the FIN
                    // on. The other direction keeps flowing.
                    self.buf = None;
                    self.done = true;
                    pass_fin(to)?;
                }
                Ok(n) => (self.start, self.end) = (0, n),
                // Drained: the buffer goes back to the pool until data
                // comes again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.buf = None,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// `poll_copy` with splice(2): socket to pipe to socket, no copy through
    /// user space (as HAProxy does on Linux).
    #[cfg(target_os = "linux")]
    fn poll_splice(
        &mut self,
        from: &TcpStream,
        to: &TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        use std::os::fd::AsRawFd;
        use tokio::io::Interest;

        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            // Bytes sent before pairing were read into user space: write them first.
            ready!(self.poll_write_early(to, cx))?;
            while self.in_pipe > 0 {
                ready!(to.poll_write_ready(cx))?;
                let pipe = self.pipe.as_ref().expect("bytes in a pipe");
                let out = to.as_raw_fd();
                // try_io clears the readiness on EAGAIN, so the next poll waits.
                match to.try_io(Interest::WRITABLE, || pipe.drain_to(out, self.in_pipe)) {
                    Ok(n) => {
                        self.in_pipe -= n;
                        self.moved += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            ready!(from.poll_read_ready(cx))?;
            let max = ready!(gate::poll_grant(&mut self.gate, usize::MAX, cx));
            let pipe = match &self.pipe {
                Some(p) => p,
                None => self.pipe.insert(pipe::take_pipe()?),
            };
            let fd = from.as_raw_fd();
            let read = from.try_io(Interest::READABLE, || pipe.fill_from(fd, max));
            gate::used(&mut self.gate, *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => {
                    if let Some(p) = self.pipe.take() {
                        pipe::give_pipe(p);
                    }
                    self.done = true;
                    pass_fin(to)?;
                }
                Ok(n) => self.in_pipe = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Drained: an empty pipe goes back to the pool.
                    if let Some(p) = self.pipe.take() {
                        pipe::give_pipe(p);
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Moves bytes between two sockets, `a` and `b`, until both directions
/// have ended with a FIN, each passed on as it comes (`Ok`), or one side
/// fails (the first error). Neither socket is closed here: how a session
/// ends is its owner's to say.
///
/// Each direction asks its [`Gate`], if any, once per read; `G` is the
/// caller's gate type (`dyn Gate` will do).
#[derive(Debug)]
pub struct Duplex<'a, G: ?Sized> {
    ends: [&'a TcpStream; 2],
    /// `ways[0]` carries `a` to `b`, `ways[1]` `b` to `a`.
    ways: [Way<'a, G>; 2],
    /// Move bytes with splice(2) through a pipe rather than through a buffer.
    splice: bool,
}

impl<'a, G: Gate + ?Sized> Duplex<'a, G> {
    /// A pump between `a` and `b`; the early bytes given with each (what it
    /// sent before the pump started) are written to the other first.
    /// `gates` cap `a` to `b` and `b` to `a` (the early bytes are not held
    /// back). `splice` asks for splice(2), which only Linux has: elsewhere
    /// the bytes are copied.
    pub fn new(
        a: (&'a TcpStream, &'a [u8]),
        b: (&'a TcpStream, &'a [u8]),
        gates: [Option<Box<G>>; 2],
        splice: bool,
    ) -> Self {
        let [ga, gb] = gates;
        let way = |early, gate| Way {
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
            gate,
        };
        Duplex {
            ends: [a.0, b.0],
            ways: [way(a.1, ga), way(b.1, gb)],
            splice: splice && cfg!(target_os = "linux"),
        }
    }

    /// Bytes delivered `a` to `b`, and `b` to `a`, early bytes included.
    pub fn moved(&self) -> [u64; 2] {
        [self.ways[0].moved, self.ways[1].moved]
    }

    /// Drives direction `i`; `Ready(Ok)` once its FIN is passed on.
    fn poll_way(&mut self, i: usize, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (from, to) = (self.ends[i], self.ends[1 - i]);
        #[cfg(target_os = "linux")]
        if self.splice {
            return self.ways[i].poll_splice(from, to, cx);
        }
        self.ways[i].poll_copy(from, to, cx)
    }
}

impl<G: Gate + ?Sized> Future for Duplex<'_, G> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Both directions every time: each registers its own wake-ups. But
        // not past a failure: Linux reports a reset once per socket, to the
        // first call that asks, so once the first direction's write took
        // it, the second direction's read of that socket would see an EOF
        // and pass a FIN on for a peer that was reset.
        let a = this.poll_way(0, cx);
        if let Poll::Ready(Err(e)) = a {
            return Poll::Ready(Err(e));
        }
        match (a, this.poll_way(1, cx)) {
            (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::test_support::{Trickle, connection};

    /// Early bytes first, both directions at once, each FIN passed on as
    /// it comes; the gates asked for every byte read.
    async fn both_ways(splice: bool) {
        let _pool = crate::pool::TESTS.lock().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut a, a_end) = connection(&listener).await;
        let (mut b, b_end) = connection(&listener).await;
        let used = Arc::new(AtomicUsize::new(0));
        let gate = || {
            Some(Box::new(Trickle {
                max: 1000,
                used: used.clone(),
            }))
        };
        let gates = [gate(), gate()];
        let pump = tokio::spawn(async move {
            let mut duplex = Duplex::new(
                (&a_end, b"early a ".as_slice()),
                (&b_end, b"early b ".as_slice()),
                gates,
                splice,
            );
            let ended = (&mut duplex).await;
            (ended.is_ok(), duplex.moved())
        });
        let big = vec![7u8; 300_000];
        a.write_all(&big).await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..8], b"early a ");
        assert_eq!(&got[8..], &big[..], "a to b, then its FIN");
        // The other direction still flows after the first FIN.
        b.write_all(b"late").await.unwrap();
        b.shutdown().await.unwrap();
        let mut got = Vec::new();
        a.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early b late");
        let (ok, moved) = pump.await.unwrap();
        assert!(ok, "both FINs passed on");
        assert_eq!(moved, [300_008, 12]);
        assert_eq!(
            used.load(Ordering::Relaxed),
            300_004,
            "early bytes not gated"
        );
    }

    #[tokio::test]
    async fn both_ways_through_a_copy() {
        both_ways(false).await;
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn both_ways_through_splice() {
        both_ways(true).await;
    }

    /// Once what was read is written on, the direction holds no buffer or
    /// pipe; a reset on either side ends the pump with an error.
    async fn idle_holds_nothing(splice: bool) {
        let _pool = crate::pool::TESTS.lock().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut a, a_end) = connection(&listener).await;
        let (mut b, b_end) = connection(&listener).await;
        let mut duplex =
            Duplex::<dyn Gate>::new((&a_end, &[]), (&b_end, &[]), [None, None], splice);
        a.write_all(b"ping").await.unwrap();
        let mut got = [0; 4];
        tokio::select! {
            _ = &mut duplex => panic!("ended"),
            r = b.read_exact(&mut got) => r.unwrap(),
        };
        assert_eq!(&got, b"ping");
        // One more turn, to see the socket drained.
        let _ = tokio::time::timeout(Duration::from_millis(50), &mut duplex).await;
        for way in &duplex.ways {
            assert!(way.buf.is_none(), "no buffer held");
            #[cfg(target_os = "linux")]
            assert!(way.pipe.is_none(), "no pipe held");
        }
        crate::socket::reset_on_close(&b);
        drop(b);
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                // A reset shows on a write.
                let _ = a.write_all(b"more").await;
                if let Ok(r) = tokio::time::timeout(Duration::from_millis(20), &mut duplex).await {
                    return r;
                }
            }
        });
        assert!(ended.await.unwrap().is_err(), "a reset is an error");
    }

    /// A peer reset while bytes toward it wait is a reset for the other
    /// peer too, never a FIN: the write that meets the reset consumes the
    /// socket's error, and a read of that socket after it sees an EOF.
    async fn a_reset_met_on_a_write_is_no_fin(splice: bool) {
        let _pool = crate::pool::TESTS.lock().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut a, a_end) = connection(&listener).await;
        let (b, b_end) = connection(&listener).await;
        let mut duplex =
            Duplex::<dyn Gate>::new((&a_end, &[]), (&b_end, &[]), [None, None], splice);
        // `b` reads nothing: `a`'s bytes pile up until the pump holds some
        // it cannot write.
        let chunk = vec![1u8; 64 * 1024];
        let filled = async {
            loop {
                a.write_all(&chunk).await.unwrap();
            }
        };
        tokio::select! {
            _ = &mut duplex => panic!("ended"),
            () = filled => unreachable!(),
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        crate::socket::reset_on_close(&b);
        drop(b);
        let ended = tokio::time::timeout(Duration::from_secs(5), &mut duplex).await;
        assert!(ended.unwrap().is_err(), "a reset is an error");
        drop(duplex);
        // What the relay does with a pump that failed.
        crate::socket::reset_on_close(&a_end);
        drop(a_end);
        let mut got = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), a.read(&mut got)).await;
        match read.unwrap() {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            Ok(n) => panic!("the other peer saw {n} bytes and an EOF, not a reset"),
        }
    }

    #[tokio::test]
    async fn a_reset_met_on_a_copy_write_is_no_fin() {
        a_reset_met_on_a_write_is_no_fin(false).await;
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_reset_met_on_a_splice_write_is_no_fin() {
        a_reset_met_on_a_write_is_no_fin(true).await;
    }

    #[tokio::test]
    async fn an_idle_copy_holds_no_buffer() {
        idle_holds_nothing(false).await;
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_idle_splice_holds_no_pipe() {
        idle_holds_nothing(true).await;
    }
}
