//! A refusal's last write: the reply, then a graceful close that waits for
//! the peer. The relay ends every refusal so (docs/PROTOCOL.md section 1,
//! "How a refusal ends"), and a client's direct listener its own.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long a reply may take to write (a refusal's, in [`write_and_linger`]).
pub const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// After a refusal, how long the peer's bytes are still read (and
/// discarded), so that closing does not turn into a reset that could
/// destroy the reply before the peer has read it.
pub const LINGER: Duration = Duration::from_secs(1);
/// Most bytes discarded while lingering.
pub const LINGER_BYTES: usize = 64 * 1024;
/// The buffer bytes are discarded through while lingering.
const LINGER_CHUNK: usize = 1024;

/// Writes `reply` (within [`REPLY_WRITE_TIMEOUT`]; past it the socket is
/// just closed), half-closes, then reads and discards what the peer still
/// sends, for at most [`LINGER`] and [`LINGER_BYTES`], before closing.
pub async fn write_and_linger(mut stream: TcpStream, reply: &[u8]) {
    if timeout(REPLY_WRITE_TIMEOUT, stream.write_all(reply))
        .await
        .is_err()
    {
        return;
    }
    let _ = stream.shutdown().await;
    let discard = async {
        // On the heap: callers box this future, and it is rarely polled.
        let mut sink = vec![0u8; LINGER_CHUNK];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = timeout(LINGER, discard).await;
}
