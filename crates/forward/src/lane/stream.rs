//! A lane's connection: plain TCP, or TLS under plane TLS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{client, server};

/// A lane's connection, at either end: plain TCP (spliced), or TLS under
/// plane TLS (copied through user space: rustls encrypts and decrypts).
#[derive(Debug)]
pub enum LaneStream {
    /// Plain TCP (a plane without TLS).
    Plain(TcpStream),
    /// TLS, the claimant's end (it dialed).
    TlsClient(Box<client::TlsStream<TcpStream>>),
    /// TLS, the owner's end (accepted on the forwarding port, told apart
    /// by its ClientHello before the plane's gate, which it never enters).
    TlsServer(Box<server::TlsStream<TcpStream>>),
}

impl LaneStream {
    /// Whether the lane is TLS (it cannot be spliced).
    pub fn is_tls(&self) -> bool {
        !matches!(self, LaneStream::Plain(_))
    }

    /// Whether a dialed lane is still open: the owner sends no byte of its
    /// own on it, so anything to read (its end, a reset) says it is not.
    /// A TLS lane is read without waiting (what the TLS layer sends after
    /// its handshake, session tickets, is taken in and is no byte).
    pub(crate) fn is_open(&mut self) -> bool {
        match self {
            LaneStream::Plain(tcp) => dtcp_duplex::peek_now(tcp).is_pending(),
            tls => {
                let mut byte = [0u8; 1];
                let mut buf = ReadBuf::new(&mut byte);
                let mut cx = Context::from_waker(std::task::Waker::noop());
                Pin::new(tls).poll_read(&mut cx, &mut buf).is_pending()
            }
        }
    }
}

impl dtcp_duplex::OverTcp for LaneStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            LaneStream::Plain(tcp) => tcp,
            LaneStream::TlsClient(tls) => tls.get_ref().0,
            LaneStream::TlsServer(tls) => tls.get_ref().0,
        }
    }

    /// rustls wants no more of the socket while it holds plaintext (or the
    /// peer's `close_notify`) not read yet.
    fn buffered(&self) -> bool {
        match self {
            LaneStream::Plain(_) => false,
            LaneStream::TlsClient(tls) => !tls.get_ref().1.wants_read(),
            LaneStream::TlsServer(tls) => !tls.get_ref().1.wants_read(),
        }
    }
}

impl AsyncRead for LaneStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LaneStream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            LaneStream::TlsClient(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
            LaneStream::TlsServer(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LaneStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LaneStream::Plain(io) => Pin::new(io).poll_write(cx, buf),
            LaneStream::TlsClient(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
            LaneStream::TlsServer(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LaneStream::Plain(io) => Pin::new(io).poll_flush(cx),
            LaneStream::TlsClient(io) => Pin::new(io.as_mut()).poll_flush(cx),
            LaneStream::TlsServer(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    /// TLS: a `close_notify`, then the FIN of the TCP connection under it.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LaneStream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            LaneStream::TlsClient(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
            LaneStream::TlsServer(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
