//! The first phase of every connection, within the handshake timeout: the
//! preamble, then the protocol that the first byte names, read to the one
//! [`Request`] that pairing understands.

use std::net::SocketAddr;

use bytes::BytesMut;
use dtcp_wire::Condition;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tracing::debug;

use crate::conn::dtcp::{self, HANDSHAKE_BUF, ReadError};
use crate::conn::request::{Refusal, Request};
use crate::node::Node;

/// The `verb` label of a handshake refused before its command was known.
const UNKNOWN_VERB: &str = "unknown";

/// The protocols a client connection may speak, told apart by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// PROTOCOL.md section 1: `CREATE` and `CONNECT`.
    Dtcp,
}

impl Protocol {
    /// The protocol a connection speaks, from its first byte. DTCP is the
    /// only one yet, and it judges every first byte itself (anything that
    /// cannot begin a command gets `bad-request` at once).
    fn of(_first: u8) -> Protocol {
        Protocol::Dtcp
    }
}

/// Reads a client's handshake. `Err(None)`: the client left, or its socket
/// failed, and there is nobody to answer.
pub(crate) async fn read(
    node: &Node,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<Request, Option<Refusal>> {
    let mut buf = BytesMut::with_capacity(HANDSHAKE_BUF);
    // The preamble comes first: a PROXY protocol header from a trusted load
    // balancer (PROTOCOL.md section 4) is read here, within the same timeout,
    // and names the client. Without one the client is the socket's peer.
    let client = peer;
    let read = async {
        if stream.read_buf(&mut buf).await.map_err(ReadError::Io)? == 0 {
            return Ok(None);
        }
        match Protocol::of(buf[0]) {
            Protocol::Dtcp => dtcp::read_command(node, stream, &mut buf).await,
        }
    };
    let command = match timeout(node.config.handshake_timeout, read).await {
        Ok(Ok(Some(command))) => command,
        // Connected and left without a word.
        Ok(Ok(None)) if buf.is_empty() => return Err(None),
        Ok(Ok(None)) => {
            let text = "connection closed in the middle of a command";
            return Err(Some(Refusal::new(
                UNKNOWN_VERB,
                Condition::BadRequest,
                text,
            )));
        }
        Ok(Err(ReadError::Wire(e))) => {
            debug!(error = %e, "bad command");
            let refusal = Refusal::new(UNKNOWN_VERB, e.condition(), e.to_string());
            return Err(Some(refusal));
        }
        Ok(Err(ReadError::Io(e))) => {
            debug!(error = %e, "read failed during handshake");
            return Err(None);
        }
        Err(_) => {
            let text = "command not complete within the handshake timeout";
            return Err(Some(Refusal::new(UNKNOWN_VERB, Condition::Timeout, text)));
        }
    };
    let received = Instant::now();
    let (side, key_expiry) = dtcp::admit(node, &command).map_err(Some)?;
    // Free the handshake buffer: keep only what came behind the command.
    let early = if buf.is_empty() {
        BytesMut::new()
    } else {
        BytesMut::from(&buf[..])
    };
    Ok(Request {
        side,
        // The key is not needed past this point.
        id: command.triple.registration_id(),
        client,
        early,
        received,
        key_expiry,
    })
}
