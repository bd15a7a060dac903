//! Helpers on a client's socket that the connection phases and the
//! sessions share: a close with a reset, a fresh registration with the
//! runtime, and a watch for a client that must not be read from yet.

use std::io;
use std::task::{Context, Poll};

use dtcp_duplex::reset_on_close;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tracing::debug;

/// Closes a client connection with a reset (SOCKS5 has no reply once the
/// success reply is sent: a cut is a reset).
pub(crate) fn reset(stream: TcpStream) {
    reset_on_close(&stream);
    drop(stream);
}

/// Registers a socket with the runtime anew, so that bytes its client sent
/// while it waited unread wake the pump: a wait that leaves bytes unread
/// ([`poll_gone_unread`], and `pairing::early`'s) clears the socket's readiness,
/// and an edge-triggered poller reports nothing more until new bytes
/// arrive, which a client that sent everything early never sends. A fresh
/// registration reports what is waiting at once. `None` (and the socket
/// closed, with a reset) if the runtime refuses it.
pub(crate) fn rearm(stream: TcpStream) -> Option<TcpStream> {
    let std = stream.into_std().ok()?;
    match TcpStream::from_std(std) {
        Ok(stream) => Some(stream),
        Err(e) => {
            debug!(error = %e, "an activated socket could not be registered again");
            None
        }
    }
}

/// Whether a client that must not be read from yet (a XEP-0065 connection
/// before its activation) has gone: `Ready` once it closed without sending
/// anything, reset, or its socket failed; `Pending` otherwise, woken by what
/// it does next. Bytes it sends stay in the kernel, unread (TCP pushes back
/// when they fill its window), and are delivered after the activation; a
/// client that sends bytes and then its FIN is kept, as its bytes are.
pub(crate) fn poll_gone_unread(stream: &TcpStream, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        match stream.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(())) => {}
        }
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
        let peeked = stream.try_io(Interest::READABLE, || {
            match SockRef::from(stream).peek(&mut byte) {
                // Bytes are waiting: leave them, and clear the readiness so
                // that only the client's next move wakes this task.
                Ok(n) if n > 0 => Err(io::ErrorKind::WouldBlock.into()),
                other => other,
            }
        });
        match peeked {
            // Stale readiness, or bytes left waiting: wait again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // End of stream with nothing before it, or a reset.
            Ok(_) | Err(_) => return Poll::Ready(()),
        }
    }
}
