//! The first phase of every connection, within the handshake timeout: the
//! preamble, then the protocol that the first byte names, read to the one
//! [`Request`] that pairing understands.

use std::net::SocketAddr;

use bytes::BytesMut;
use dtcp_wire::Condition;
use metrics::counter;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tracing::debug;

use crate::conn::dtcp::{self, HANDSHAKE_BUF, ReadError};
use crate::conn::proxy::{self, PreambleError};
use crate::conn::request::{Refusal, Request};
use crate::metrics::CONNECTIONS_REFUSED;
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

/// How a handshake ended without a command.
enum Ended {
    /// The client left, or its socket failed, before a word.
    Gone,
    /// Refused by the preamble or the connection rate.
    Refused(Refusal),
    /// The command could not be read.
    Read(ReadError),
}

/// Reads a client's handshake. `Err(None)`: the client left, or its socket
/// failed, and there is nobody to answer.
pub(crate) async fn read(
    node: &Node,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<Request, Option<Refusal>> {
    let mut buf = BytesMut::with_capacity(HANDSHAKE_BUF);
    let trusted = node.config.trusts(peer.ip());
    let read = async {
        // The preamble comes first: a PROXY protocol header from a trusted
        // load balancer (PROTOCOL.md section 4), within the same timeout and
        // over the same buffer, names the client. Without one the client is
        // the socket's peer.
        let client = proxy::read(stream, &mut buf, peer, trusted, node.config.proxy_protocol)
            .await
            .map_err(|e| match e {
                PreambleError::Gone => Ended::Gone,
                PreambleError::Refused(r) => Ended::Refused(r),
            })?;
        tracing::Span::current().record("client", tracing::field::display(client));
        // Checked on the real client, not on the balancer in front of it.
        if let Some(rate) = &node.rate
            && !rate.check(client.ip())
        {
            counter!(CONNECTIONS_REFUSED, "reason" => "connection_rate").increment(1);
            let text = "too many new connections from this address";
            return Err(Ended::Refused(Refusal::new(
                UNKNOWN_VERB,
                Condition::ResourceConstraint,
                text,
            )));
        }
        if buf.is_empty() && stream.read_buf(&mut buf).await.map_err(|_| Ended::Gone)? == 0 {
            // A header and nothing behind it: a balancer's health check.
            return Err(Ended::Gone);
        }
        let command = match Protocol::of(buf[0]) {
            Protocol::Dtcp => dtcp::read_command(node, stream, &mut buf).await,
        };
        match command {
            Ok(Some(command)) => Ok((client, command)),
            // Closed in the middle of a command.
            Ok(None) => Err(Ended::Refused(Refusal::new(
                UNKNOWN_VERB,
                Condition::BadRequest,
                "connection closed in the middle of a command",
            ))),
            Err(e) => Err(Ended::Read(e)),
        }
    };
    let (client, command) = match timeout(node.config.handshake_timeout, read).await {
        Ok(Ok(done)) => done,
        // Connected and left without a word.
        Ok(Err(Ended::Gone)) => return Err(None),
        Ok(Err(Ended::Refused(refusal))) => {
            debug!(condition = %refusal.condition.as_str(), text = %refusal.text, "handshake refused");
            return Err(Some(refusal));
        }
        Ok(Err(Ended::Read(ReadError::Wire(e)))) => {
            debug!(error = %e, "bad command");
            let refusal = Refusal::new(UNKNOWN_VERB, e.condition(), e.to_string());
            return Err(Some(refusal));
        }
        Ok(Err(Ended::Read(ReadError::Io(e)))) => {
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
