//! How a session's client socket ends, and writing to one that a reader
//! shares.
//!
//! From a session's start, its sockets close with a reset (zero linger), so
//! that a FIN only ever passes on the peer's FIN, even when the process dies
//! and the kernel closes them (docs/PROTOCOL.md section 2).

use std::io;
use std::net::Shutdown;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;

/// Closes `stream` with a reset rather than a FIN when it is dropped, or
/// when the process dies and the kernel closes it (zero linger).
pub fn reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Passes the peer's FIN on to `stream`: undoes [`reset_on_close`] first,
/// so that the bytes still queued toward this client are delivered before
/// the FIN (a zero-linger close would throw them away), then half-closes.
pub fn pass_fin(stream: &TcpStream) -> io::Result<()> {
    let sock = SockRef::from(stream);
    sock.set_linger(None)?;
    sock.shutdown(Shutdown::Write)
}

/// Peeks at `stream`'s next byte without waiting: `Pending` when nothing
/// is there yet, `Ready(Ok(None))` at its EOF, `Ready(Ok(Some(byte)))`
/// when a byte has come (left in the socket).
pub fn peek_now(stream: &TcpStream) -> std::task::Poll<io::Result<Option<u8>>> {
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    stream
        .poll_peek(&mut cx, &mut buf)
        .map_ok(|n| (n == 1).then_some(byte[0]))
}

/// Writes all of `data` to a socket shared with a reader, waiting whenever
/// its buffer is full.
pub async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
