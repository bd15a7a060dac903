//! What a client sends before its session is paired: read and kept, to be
//! delivered first once it is (PROTOCOL.md: pipelined bytes are not lost).

use std::io;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::net::TcpStream;

/// Most bytes kept from a client before its session is paired. Past this the
/// relay stops reading (TCP pushes back) until pairing.
pub(crate) const EARLY_CAP: usize = 64 * 1024;
/// Room made in the early buffer before each read.
const EARLY_READ_CHUNK: usize = 4096;

/// Reads what a waiting client sends into `early`, while there is room.
/// `Ready` when the client hung up (or its socket failed); `Pending`
/// otherwise, woken when it sends more. Once `early` is full it reads no
/// more until the session is paired.
pub(crate) fn poll_hung_up(
    stream: &TcpStream,
    early: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<()> {
    while early.len() < EARLY_CAP {
        match stream.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(())) => {
                early.reserve(EARLY_READ_CHUNK.min(EARLY_CAP - early.len()));
                match stream.try_read_buf(early) {
                    Ok(0) => return Poll::Ready(()),
                    Ok(_) => {}
                    // Readiness was stale; the next poll registers interest.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(()),
                }
            }
        }
    }
    Poll::Pending
}
