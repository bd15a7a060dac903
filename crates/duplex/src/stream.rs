//! The pump between a socket and a stream over another socket (TLS on TCP,
//! whose bytes user space must encrypt and decrypt, so that nothing can be
//! spliced): both directions at once, each half-closed on its own, no
//! buffer held while nothing is in flight.
//!
//! [`Duplex`](crate::Duplex)'s sibling, with the same rules: early bytes
//! first, a FIN passed on as a FIN (toward the stream: its own close, e.g.
//! a TLS `close_notify`, then the FIN of the socket under it), a failure on
//! either side ends the pump with that error, and each direction asks its
//! [`Gate`] once per read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::gate::{self, Gate};
use crate::pool::{BUF_SIZE, Buf};
use crate::socket::pass_fin;

/// A byte stream carried by a TCP socket of its own (a TLS stream): the
/// pump reads and writes the stream, and sets how the socket under it
/// closes.
pub trait OverTcp: AsyncRead + AsyncWrite + Unpin {
    /// The socket under the stream.
    fn tcp(&self) -> &TcpStream;

    /// Whether the stream holds bytes (or its end) to be read without the
    /// socket's readiness: a TLS stream's records already decrypted. The
    /// pump asks a direction's [`Gate`] only once there is something to
    /// read, as it does for a socket.
    fn buffered(&self) -> bool {
        false
    }
}

/// A socket is a stream over itself (what the unit tests pump through).
impl OverTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// One direction's bytes in hand: read, not yet written on.
#[derive(Debug)]
struct Way<'a, G: ?Sized> {
    /// Bytes sent before pairing, delivered first.
    early: &'a [u8],
    /// Held only while there is data in flight.
    buf: Option<Buf>,
    start: usize,
    end: usize,
    /// The FIN has been passed on.
    done: bool,
    moved: u64,
    gate: Option<Box<G>>,
}

impl<'a, G: ?Sized> Way<'a, G> {
    fn new(early: &'a [u8], gate: Option<Box<G>>) -> Self {
        Way {
            early,
            buf: None,
            start: 0,
            end: 0,
            done: false,
            moved: 0,
            gate,
        }
    }
}

/// The socket to the stream, and what that takes beyond [`Way`]: a flush
/// of the stream once what was in hand is written (TLS records wait in
/// the stream until then), and its close, which may take more than one poll.
#[derive(Debug)]
struct ToStream<'a, G: ?Sized> {
    way: Way<'a, G>,
    /// Written to the stream and not flushed yet.
    unflushed: bool,
    /// The socket's FIN came: the stream is being closed.
    closing: bool,
}

/// Writes `data` to a socket shared with a reader; the bytes written.
fn poll_write_socket(to: &TcpStream, data: &[u8], cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    loop {
        ready!(to.poll_write_ready(cx))?;
        match to.try_write(data) {
            Ok(n) => return Poll::Ready(Ok(n)),
            // Readiness was stale; the next poll registers interest.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// Writes `data` to `to`; `WriteZero` if it takes nothing.
fn poll_write_stream<S: OverTcp>(
    to: &mut S,
    data: &[u8],
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    match ready!(Pin::new(to).poll_write(cx, data))? {
        0 => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
        n => Poll::Ready(Ok(n)),
    }
}

impl<G: Gate + ?Sized> ToStream<'_, G> {
    /// Drives the socket-to-stream direction; `Ready(Ok)` once the socket's
    /// FIN is passed on as the stream's close.
    fn poll(
        &mut self,
        from: &TcpStream,
        to: &mut impl OverTcp,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let way = &mut self.way;
        loop {
            if way.done {
                return Poll::Ready(Ok(()));
            }
            while !way.early.is_empty() {
                let n = ready!(poll_write_stream(to, way.early, cx))?;
                way.early = &way.early[n..];
                way.moved += n as u64;
                self.unflushed = true;
            }
            while way.start < way.end {
                let data = &way.buf.as_ref().expect("data in hand")[way.start..way.end];
                let n = ready!(poll_write_stream(to, data, cx))?;
                way.start += n;
                way.moved += n as u64;
                self.unflushed = true;
            }
            // What was written may wait in the stream (TLS records): out
            // with it before waiting for the socket again.
            if self.unflushed {
                ready!(Pin::new(&mut *to).poll_flush(cx))?;
                self.unflushed = false;
            }
            if self.closing {
                // Everything before the FIN is delivered: the stream's own
                // close, then the FIN of the socket under it, queued bytes
                // first (its reset-on-close undone).
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                way.done = true;
                continue;
            }
            ready!(from.poll_read_ready(cx))?;
            // Asked once per read: a capped direction stops reading here.
            let max = ready!(gate::poll_grant(&mut way.gate, BUF_SIZE, cx));
            let buf = way.buf.get_or_insert_with(Buf::take);
            let read = from.try_read(&mut buf[..max]);
            gate::used(&mut way.gate, *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => {
                    way.buf = None;
                    socket2::SockRef::from(to.tcp()).set_linger(None)?;
                    self.closing = true;
                }
                Ok(n) => (way.start, way.end) = (0, n),
                // Drained: the buffer goes back to the pool until data
                // comes again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => way.buf = None,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<G: Gate + ?Sized> Way<'_, G> {
    /// Drives the stream-to-socket direction; `Ready(Ok)` once the
    /// stream's end (a TLS `close_notify`) is passed on as a FIN.
    fn poll_from_stream(
        &mut self,
        from: &mut impl OverTcp,
        to: &TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            while !self.early.is_empty() {
                let n = ready!(poll_write_socket(to, self.early, cx))?;
                self.early = &self.early[n..];
                self.moved += n as u64;
            }
            while self.start < self.end {
                let data = &self.buf.as_ref().expect("data in hand")[self.start..self.end];
                let n = ready!(poll_write_socket(to, data, cx))?;
                self.start += n;
                self.moved += n as u64;
            }
            if !from.buffered() && from.tcp().poll_read_ready(cx)?.is_pending() {
                // Drained: the buffer goes back to the pool until data
                // comes again.
                self.buf = None;
                return Poll::Pending;
            }
            // Asked once per read: a capped direction stops reading here.
            let max = ready!(gate::poll_grant(&mut self.gate, BUF_SIZE, cx));
            let buf = self.buf.get_or_insert_with(Buf::take);
            let mut read = ReadBuf::new(&mut buf[..max]);
            let mut polled = Pin::new(&mut *from).poll_read(cx, &mut read);
            // A TLS stream gives a record at a time: more while it comes at
            // once, for fewer and larger writes to the socket. Its end
            // comes again at the next read; a failure ends the pump now.
            while matches!(polled, Poll::Ready(Ok(()))) && !read.filled().is_empty() {
                let had = read.filled().len();
                if read.remaining() == 0 {
                    break;
                }
                match Pin::new(&mut *from).poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) if read.filled().len() > had => {}
                    Poll::Ready(Err(e)) => polled = Poll::Ready(Err(e)),
                    _ => break,
                }
            }
            let n = read.filled().len();
            gate::used(&mut self.gate, n);
            match polled {
                Poll::Ready(Ok(())) if n == 0 => {
                    // The stream ended cleanly (a TLS close_notify): pass
                    // the FIN on. The other direction keeps flowing.
                    self.buf = None;
                    self.done = true;
                    pass_fin(to)?;
                }
                Poll::Ready(Ok(())) => (self.start, self.end) = (0, n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Drained: the buffer goes back to the pool until data
                    // comes again.
                    self.buf = None;
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Moves bytes between a socket and a stream over another socket until
/// both directions have ended, each passed on as it comes (`Ok`), or one
/// side fails (the first error). A stream that ends without its own clean
/// close (a TLS stream whose socket closed without `close_notify`) is an
/// error, as a reset is: it may have been cut short. Neither end is closed
/// here: how a session ends is its owner's to say.
///
/// Each direction asks its [`Gate`], if any, once per read; `G` is the
/// caller's gate type (`dyn Gate` will do). At most one buffer of the pool
/// per direction is held, and only while bytes are in flight (the stream
/// may keep buffers of its own: rustls does).
#[derive(Debug)]
pub struct StreamDuplex<'a, S, G: ?Sized> {
    socket: &'a TcpStream,
    stream: &'a mut S,
    /// The socket to the stream.
    out: ToStream<'a, G>,
    /// The stream to the socket.
    back: Way<'a, G>,
}

impl<'a, S: OverTcp, G: Gate + ?Sized> StreamDuplex<'a, S, G> {
    /// A pump between `socket` and `stream`; the early bytes given with
    /// each (what it sent before the pump started) are written to the
    /// other first. `gates` cap `socket` to `stream` and `stream` to
    /// `socket` (the early bytes are not held back).
    pub fn new(
        socket: (&'a TcpStream, &'a [u8]),
        stream: (&'a mut S, &'a [u8]),
        gates: [Option<Box<G>>; 2],
    ) -> Self {
        let [out, back] = gates;
        StreamDuplex {
            socket: socket.0,
            stream: stream.0,
            out: ToStream {
                way: Way::new(socket.1, out),
                unflushed: false,
                closing: false,
            },
            back: Way::new(stream.1, back),
        }
    }

    /// Bytes delivered socket to stream, and stream to socket, early bytes
    /// included.
    pub fn moved(&self) -> [u64; 2] {
        [self.out.way.moved, self.back.moved]
    }
}

impl<S: OverTcp, G: Gate + ?Sized> Future for StreamDuplex<'_, S, G> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Both directions every time, but not past a failure (see `Duplex`).
        let out = this.out.poll(this.socket, this.stream, cx);
        if let Poll::Ready(Err(e)) = out {
            return Poll::Ready(Err(e));
        }
        match (
            out,
            this.back.poll_from_stream(this.stream, this.socket, cx),
        ) {
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
    /// it comes and the other direction flowing after it; the gates asked
    /// for every byte read.
    #[tokio::test]
    async fn both_ways_early_bytes_first_and_each_fin_on_its_own() {
        let _pool = crate::pool::TESTS.lock().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut a, a_end) = connection(&listener).await;
        let (mut b, mut b_end) = connection(&listener).await;
        // The stream's socket closes with a reset unless a FIN passes: the
        // pump must undo it before the stream's close.
        crate::reset_on_close(&b_end);
        let used = Arc::new(AtomicUsize::new(0));
        let gate = || {
            Some(Box::new(Trickle {
                max: 1000,
                used: used.clone(),
            }))
        };
        let gates = [gate(), gate()];
        let pump = tokio::spawn(async move {
            let mut duplex = StreamDuplex::new(
                (&a_end, b"early a ".as_slice()),
                (&mut b_end, b"early b ".as_slice()),
                gates,
            );
            let ended = (&mut duplex).await;
            let moved = duplex.moved();
            drop(duplex);
            // Dropped: its queued bytes must still be delivered.
            drop(b_end);
            (ended.is_ok(), moved)
        });
        let big = vec![7u8; 300_000];
        a.write_all(&big).await.unwrap();
        a.shutdown().await.unwrap();
        // The other direction still flows after the first FIN.
        let mut got = Vec::new();
        let mut partial = vec![0u8; 8 + big.len()];
        b.read_exact(&mut partial).await.unwrap();
        got.extend_from_slice(&partial);
        b.write_all(b"late").await.unwrap();
        b.shutdown().await.unwrap();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..8], b"early a ");
        assert_eq!(&got[8..], &big[..], "socket to stream, then its FIN");
        let mut back = Vec::new();
        a.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"early b late", "stream to socket, then its FIN");
        let (ok, moved) = pump.await.unwrap();
        assert!(ok, "both FINs passed on");
        assert_eq!(moved, [300_008, 12]);
        assert_eq!(
            used.load(Ordering::Relaxed),
            300_004,
            "early bytes not gated"
        );
    }

    /// Once what was read is written on, neither direction holds a buffer;
    /// a reset of the stream's peer ends the pump with an error, not an
    /// end of stream.
    #[tokio::test]
    async fn idle_holds_no_buffer_and_a_reset_is_an_error() {
        let _pool = crate::pool::TESTS.lock().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut a, a_end) = connection(&listener).await;
        let (mut b, mut b_end) = connection(&listener).await;
        let mut duplex =
            StreamDuplex::<_, dyn Gate>::new((&a_end, &[]), (&mut b_end, &[]), [None, None]);
        a.write_all(b"ping").await.unwrap();
        let mut got = [0; 4];
        tokio::select! {
            _ = &mut duplex => panic!("ended"),
            r = b.read_exact(&mut got) => r.unwrap(),
        };
        assert_eq!(&got, b"ping");
        b.write_all(b"pong").await.unwrap();
        tokio::select! {
            _ = &mut duplex => panic!("ended"),
            r = a.read_exact(&mut got) => r.unwrap(),
        };
        assert_eq!(&got, b"pong");
        // One more turn, to see both sides drained.
        let _ = tokio::time::timeout(Duration::from_millis(50), &mut duplex).await;
        assert!(
            duplex.out.way.buf.is_none(),
            "no buffer held toward the stream"
        );
        assert!(
            duplex.back.buf.is_none(),
            "no buffer held toward the socket"
        );
        crate::reset_on_close(&b);
        drop(b);
        let ended = tokio::time::timeout(Duration::from_secs(5), &mut duplex).await;
        let ended = ended.expect("the pump ended");
        assert!(ended.is_err(), "a reset is an error, not an EOF");
        // And nothing was passed on to the socket's peer as a FIN.
        drop(duplex);
        crate::reset_on_close(&a_end);
        drop(a_end);
        let read = tokio::time::timeout(Duration::from_secs(5), a.read(&mut got)).await;
        match read.unwrap() {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            Ok(n) => panic!("the socket's peer saw {n} bytes and an EOF, not a reset"),
        }
    }
}
