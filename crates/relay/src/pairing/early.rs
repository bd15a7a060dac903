//! What a client sends before its session is paired stays in the kernel
//! until it is (docs/PROTOCOL.md: pipelined bytes are not lost, and are delivered
//! first, in order).
//!
//! A waiting connection (a pending `CREATE`, a `CONNECT` waiting for its
//! `CREATE`) is never read from: its socket's receive buffer is made small
//! ([`WAITING_RCVBUF`]) and the wait only peeks, to see the client hang up.
//! When TCP's window fills, the client's kernel holds the rest. What a
//! waiting connection costs the node is then the handful of bytes the
//! handshake read behind the command (bounded by the command limit) and a
//! small, fixed amount of kernel memory, whatever the client sends. Once
//! paired, [`release`] gives the socket its ordinary buffer back and the
//! pump reads the waiting bytes first.

use std::io;
use std::mem::MaybeUninit;
use std::task::{Context, Poll};

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tracing::debug;

use crate::socket::rearm;

/// The receive buffer asked for on a waiting socket (Linux doubles it for
/// its bookkeeping, so the kernel holds about twice this). Small enough
/// that 10,000 waiting connections hold some 80 MiB of kernel memory at
/// most rather than over a GiB at the default (`net.ipv4.tcp_rmem`'s
/// 128 KiB), large enough for the first segments a client pipelines behind
/// its command. Bytes beyond it wait in the client's kernel: its window is
/// closed until the session is paired, and reopened at once then.
pub(crate) const WAITING_RCVBUF: usize = 4 * 1024;

/// TCP keepalive on a waiting socket: the first probe after this much
/// silence from the client's kernel. A client that filled its window and
/// then closed cannot be told from one that is still sending (its FIN
/// waits behind its bytes in its own kernel, which probes the closed window
/// until it gives up: about a minute on Linux); once its kernel has given
/// up, the next probe is answered with a reset, and the wait ends then
/// rather than at the pending TTL. It finds clients whose host or NAT
/// vanished the same way.
const WAITING_KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Between two keepalive probes that got no answer.
const WAITING_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Keepalive probes without an answer before the kernel drops the socket.
const WAITING_KEEPALIVE_PROBES: u32 = 3;

/// The socket option (Linux 5.14 and later) that locks or unlocks a
/// socket's buffer sizes; 0 gives the receive buffer back to the kernel's
/// autotuning after [`WAITING_RCVBUF`] locked it.
#[cfg(target_os = "linux")]
const SO_BUF_LOCK: libc::c_int = if cfg!(any(target_arch = "sparc", target_arch = "sparc64")) {
    0x0051
} else {
    72
};

/// `TCP_ESTABLISHED` of Linux's `tcp_states.h`: the only state in which a
/// waiting client has not hung up.
#[cfg(target_os = "linux")]
const TCP_ESTABLISHED: u8 = 1;

/// What a waiting socket's receive buffer was before [`hold`] made it
/// small, for [`release`] to put back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    /// The receive buffer as the kernel reported it (already doubled), or
    /// 0 if it was left alone. (A `u32`: every pending CREATE keeps one.)
    rcvbuf: u32,
}

impl Held {
    /// A socket whose buffer was left alone: [`release`] only rearms it.
    pub(crate) const NOTHING: Held = Held { rcvbuf: 0 };
}

/// Makes `stream`'s receive buffer small while it waits (what the client
/// sends beyond it stays in the client's kernel), and has the kernel probe
/// a silent client ([`WAITING_KEEPALIVE_IDLE`]). Best effort: a socket
/// whose options cannot be set waits as it is.
pub(crate) fn hold(stream: &TcpStream) -> Held {
    let sock = SockRef::from(stream);
    let keepalive = TcpKeepalive::new()
        .with_time(WAITING_KEEPALIVE_IDLE)
        .with_interval(WAITING_KEEPALIVE_INTERVAL)
        .with_retries(WAITING_KEEPALIVE_PROBES);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        debug!(error = %e, "cannot set keepalive on a waiting socket");
    }
    let Some(rcvbuf) = sock
        .recv_buffer_size()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
    else {
        return Held::NOTHING;
    };
    match sock.set_recv_buffer_size(WAITING_RCVBUF) {
        Ok(()) => Held { rcvbuf },
        Err(e) => {
            debug!(error = %e, "cannot shrink a waiting socket's receive buffer");
            Held::NOTHING
        }
    }
}

/// Ends `stream`'s wait once it is paired: its receive buffer back (as it
/// was, and under the kernel's autotuning again), and the socket registered
/// with the runtime anew, so that bytes that arrived while it waited wake
/// the pump. (The wait cleared the socket's readiness to leave them unread,
/// and an edge-triggered poller reports nothing more until new bytes
/// arrive, which a client that sent everything early never sends; a fresh
/// registration reports what is waiting at once.) `None`, and the socket
/// closed, if the runtime refuses it.
pub(crate) fn release(stream: TcpStream, held: Held) -> Option<TcpStream> {
    let sock = SockRef::from(&stream);
    // A paired session's silence is its clients' business (and the idle
    // timeout's), not the kernel's: keepalive goes as it came.
    if let Err(e) = sock.set_keepalive(false) {
        debug!(error = %e, "cannot clear keepalive on a paired socket");
    }
    if held.rcvbuf > 0 {
        // The kernel reports the doubled size and doubles what it is given.
        if let Err(e) = sock.set_recv_buffer_size(held.rcvbuf as usize / 2) {
            debug!(error = %e, "cannot restore a paired socket's receive buffer");
        }
        unlock_buffer(&stream);
    }
    rearm(stream)
}

/// Gives the receive buffer back to the kernel's autotuning, which setting
/// its size switched off. Before Linux 5.14 this option does not exist and
/// the socket keeps the size [`release`] put back.
#[cfg(target_os = "linux")]
fn unlock_buffer(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let unlocked: libc::c_int = 0;
    // SAFETY: setsockopt on a socket we own, with a c_int it only reads.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_BUF_LOCK,
            (&raw const unlocked).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        debug!(error = %io::Error::last_os_error(), "cannot unlock a paired socket's receive buffer");
    }
}

#[cfg(not(target_os = "linux"))]
fn unlock_buffer(_stream: &TcpStream) {}

/// Whether a waiting client has hung up: `Ready` once it closed (a FIN,
/// whether or not bytes came before it), reset, or its socket failed;
/// `Pending` otherwise, woken by what it does next. Nothing is read: bytes
/// it sends stay in the kernel for the session.
///
/// A FIN behind waiting bytes cannot be seen by peeking (a peek returns the
/// bytes, not the end behind them), so when bytes are waiting the socket's
/// TCP state says whether the client is still there. A client that filled
/// its window and then closed is seen too: Linux accepts a bare FIN into a
/// full receive buffer (the socket goes to CLOSE_WAIT and wakes this task),
/// but a FIN behind bytes that did not fit stays in the client's kernel:
/// such a client is noticed once its kernel gives up on the closed window
/// and answers the next keepalive probe with a reset (about a minute and a
/// quarter on Linux), at the latest at the end of the wait (the pending TTL
/// or the connect grace).
pub(crate) fn poll_hung_up(stream: &TcpStream, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        match stream.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(())) => {}
        }
        let mut byte = [MaybeUninit::<u8>::uninit()];
        let peeked = stream.try_io(Interest::READABLE, || {
            match SockRef::from(stream).peek(&mut byte) {
                // Bytes are waiting and the client is still there: leave
                // them, and clear the readiness so that only the client's
                // next move wakes this task.
                Ok(n) if n > 0 && established(stream) => Err(io::ErrorKind::WouldBlock.into()),
                other => other,
            }
        });
        match peeked {
            // Stale readiness, or bytes left waiting: wait again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The end of the stream (with or without bytes before it), or
            // a reset.
            Ok(_) | Err(_) => return Poll::Ready(()),
        }
    }
}

/// Whether the connection is still established both ways: not once the
/// client has sent its FIN (CLOSE_WAIT) or reset it.
#[cfg(target_os = "linux")]
fn established(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut info = MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is
    // that large and zeroed (a short write leaves valid zeros).
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    // SAFETY: zero-initialised above and only written by the kernel since.
    r == 0 && unsafe { info.assume_init() }.tcpi_state == TCP_ESTABLISHED
}

/// Elsewhere only a FIN with nothing before it is seen before pairing.
#[cfg(not(target_os = "linux"))]
fn established(_stream: &TcpStream) -> bool {
    true
}
