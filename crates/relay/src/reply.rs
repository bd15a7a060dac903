//! What the relay says to a client on its own account: `OK` when a session
//! pairs, `ERROR` when it refuses one (then a graceful close).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use dtcp_forward::write_all;
use dtcp_wire::{Condition, OK, Reply};
use metrics::counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::metrics::{COMMANDS, ERRORS};

/// How long an `ERROR` reply may take to write.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// After an `ERROR`, how long the relay keeps reading (and discarding) what
/// the client still sends, so that closing does not turn into a reset that
/// could destroy the reply before the client has read it.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes discarded while lingering.
const LINGER_BYTES: usize = 64 * 1024;
/// The buffer bytes are discarded through while lingering.
const LINGER_CHUNK: usize = 1024;

/// Sends `OK` to a client. A socket that has sent nothing yet takes three
/// bytes at once; waiting for room (boxed, as it is all but never needed)
/// would otherwise make every session's state larger.
pub(crate) async fn send_ok(stream: &TcpStream) {
    match stream.try_write(OK) {
        Ok(n) if n == OK.len() => {}
        Ok(n) => {
            let _ = Box::pin(write_all(stream, &OK[n..])).await;
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            let _ = Box::pin(write_all(stream, OK)).await;
        }
        // A failed write shows up at once in the pump as a reset.
        Err(_) => {}
    }
}

/// Answers `ERROR` and closes the connection gracefully; `verb` names the
/// command refused in `dtcp_commands_total` (none when no command was read).
///
/// Boxed: refusing takes timers and buffers that would otherwise be part of
/// the state of every connection task, refused or not.
pub(crate) fn refuse<'a>(
    stream: TcpStream,
    verb: Option<&'static str>,
    condition: Condition,
    text: &'a str,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        counter!(ERRORS, "condition" => condition.as_str()).increment(1);
        if let Some(verb) = verb {
            counter!(COMMANDS, "verb" => verb, "outcome" => condition.as_str()).increment(1);
        }
        write_and_linger(stream, &Reply::error(condition, text).to_vec()).await;
    })
}

async fn write_and_linger(mut stream: TcpStream, reply: &[u8]) {
    if timeout(REPLY_WRITE_TIMEOUT, stream.write_all(reply))
        .await
        .is_err()
    {
        return;
    }
    let _ = stream.shutdown().await;
    let discard = async {
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
