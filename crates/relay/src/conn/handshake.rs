//! The first phase of every connection, within the handshake timeout: the
//! preamble, then the protocol that the first byte names, read to the one
//! [`Request`] that pairing understands.

use std::net::SocketAddr;

use bytes::BytesMut;
use dtcp_wire::socks5::{ReplyCode, StreamHash};
use dtcp_wire::{Command, Condition, RegistrationId};
use metrics::counter;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tracing::debug;

use crate::conn::dtcp::{self, HANDSHAKE_BUF, ReadError};
use crate::conn::proxy::{self, PreambleError};
use crate::limits::Slot;
use crate::metrics::CONNECTIONS_REFUSED;
use crate::node::Node;
use crate::pairing::request::{DtcpRefusal, Refusal, Request, Role};
use crate::protocol::Protocol;
use crate::reply::Socks5Refusal;
use crate::xep0065::socks5;

/// The `verb` label of a handshake refused before its command was known.
const UNKNOWN_VERB: &str = "unknown";

/// The protocol a connection speaks, from its first byte: `05` is SOCKS5
/// (RFC 1928's version byte) on a node that serves XEP-0065; DTCP judges
/// every other first byte itself (anything that cannot begin a command gets
/// `bad-request` at once).
fn protocol_of(node: &Node, first: u8) -> Protocol {
    if first == dtcp_wire::socks5::VERSION && node.socks5 {
        Protocol::Socks5
    } else {
        Protocol::Dtcp
    }
}

/// A complete handshake, in the protocol it was spoken in.
enum Spoken {
    Dtcp(Command),
    Socks5(StreamHash),
}

/// How a handshake ended without a command.
enum Unfinished {
    /// The client left, or its socket failed, before a word.
    Gone,
    /// Refused by the preamble or the connection rate.
    Refused(DtcpRefusal),
    /// The command could not be read.
    Read(ReadError),
    /// The SOCKS5 handshake is refused with this reply.
    Socks5(Socks5Refusal),
}

/// Reads a client's handshake. `Err(None)`: the client left, or its socket
/// failed, and there is nobody to answer.
/// Behind a trusted balancer, `slot` is counted against the client the
/// PROXY header names.
pub(crate) async fn read(
    node: &Node,
    stream: &mut TcpStream,
    peer: SocketAddr,
    slot: &mut Slot,
) -> Result<Request, Option<Refusal>> {
    let mut buf = BytesMut::with_capacity(HANDSHAKE_BUF);
    let trusted = node.config.trusts(peer.ip());
    // Which protocol the client began to speak, for the timeout's answer.
    let mut spoke = Protocol::Dtcp;
    let read = async {
        // The preamble comes first: a PROXY protocol header from a trusted
        // load balancer (docs/PROTOCOL.md section 4), within the same timeout and
        // over the same buffer, names the client. Without one the client is
        // the socket's peer.
        let client = proxy::read(stream, &mut buf, peer, trusted, node.config.proxy_protocol)
            .await
            .map_err(|e| match e {
                PreambleError::Gone => Unfinished::Gone,
                PreambleError::Refused(r) => Unfinished::Refused(r),
            })?;
        tracing::Span::current().record("client", tracing::field::display(client));
        // Behind a trusted balancer, the client's rate and share are checked
        // now, on the client the header names (a direct client's were at
        // accept). The balancer's own connections (a `LOCAL` header) are
        // not the client's and count against nobody.
        if trusted && client != peer {
            match node.admit_client(client.ip()) {
                Ok(guard) => slot.count_against(guard),
                Err(refused) => {
                    counter!(CONNECTIONS_REFUSED, "reason" => refused.reason).increment(1);
                    return Err(Unfinished::Refused(DtcpRefusal::new(
                        UNKNOWN_VERB,
                        Condition::ResourceConstraint,
                        refused.text,
                    )));
                }
            }
        }
        if buf.is_empty()
            && stream
                .read_buf(&mut buf)
                .await
                .map_err(|_| Unfinished::Gone)?
                == 0
        {
            // A header and nothing behind it: a balancer's health check.
            return Err(Unfinished::Gone);
        }
        spoke = protocol_of(node, buf[0]);
        tracing::Span::current().record("protocol", spoke.label());
        let command = match spoke {
            Protocol::Dtcp => dtcp::read_command(node, stream, &mut buf).await,
            Protocol::Socks5 => {
                return match socks5::read_request(stream, &mut buf).await {
                    Ok(hash) => Ok((client, Spoken::Socks5(hash))),
                    Err(socks5::Failed::Refused(r)) => Err(Unfinished::Socks5(r)),
                    Err(socks5::Failed::Gone) => Err(Unfinished::Gone),
                    Err(socks5::Failed::Io(e)) => Err(Unfinished::Read(ReadError::Io(e))),
                };
            }
        };
        match command {
            Ok(Some(command)) => Ok((client, Spoken::Dtcp(command))),
            // Closed in the middle of a command.
            Ok(None) => Err(Unfinished::Refused(DtcpRefusal::new(
                UNKNOWN_VERB,
                Condition::BadRequest,
                "connection closed in the middle of a command",
            ))),
            Err(e) => Err(Unfinished::Read(e)),
        }
    };
    let (client, command) = match timeout(node.config.handshake_timeout, read).await {
        Ok(Ok(done)) => done,
        // Connected and left without a word.
        Ok(Err(Unfinished::Gone)) => return Err(None),
        Ok(Err(Unfinished::Refused(refusal))) => {
            debug!(condition = %refusal.condition.as_str(), text = %refusal.text, "handshake refused");
            return Err(Some(refusal.into()));
        }
        Ok(Err(Unfinished::Read(ReadError::Wire(e)))) => {
            debug!(error = %e, "bad command");
            let refusal = DtcpRefusal::new(UNKNOWN_VERB, e.condition(), e.to_string());
            return Err(Some(refusal.into()));
        }
        Ok(Err(Unfinished::Socks5(refusal))) => {
            debug!(reply = refusal.label(), "SOCKS5 request refused");
            return Err(Some(Refusal::Socks5(refusal)));
        }
        Ok(Err(Unfinished::Read(ReadError::Io(e)))) => {
            debug!(error = %e, "read failed during handshake");
            return Err(None);
        }
        // SOCKS5 has no reply for a handshake that never ends: a close.
        Err(_) if spoke == Protocol::Socks5 => {
            debug!("SOCKS5 handshake not complete within the handshake timeout");
            return Err(None);
        }
        Err(_) => {
            let text = "command not complete within the handshake timeout";
            return Err(Some(
                DtcpRefusal::new(UNKNOWN_VERB, Condition::Timeout, text).into(),
            ));
        }
    };
    let received = Instant::now();
    let (role, id, key_expiry) = match command {
        Spoken::Dtcp(command) => {
            let (role, key_expiry) = dtcp::admit(node, &command).map_err(|r| Some(r.into()))?;
            // The key is not needed past this point.
            (role, command.triple.registration_id(), key_expiry)
        }
        Spoken::Socks5(hash) => {
            if node.drain.is_cancelled() {
                let refusal = Socks5Refusal::Reply(ReplyCode::GeneralFailure);
                return Err(Some(Refusal::Socks5(refusal)));
            }
            // No key and no JIDs: who may use a pair is the activation's
            // question (the component's `--xmpp-allow-domain`).
            (Role::Arrive(hash), RegistrationId::of_stream(&hash), None)
        }
    };
    // Free the handshake buffer: keep only what came behind the command.
    let early = if buf.is_empty() {
        BytesMut::new()
    } else {
        BytesMut::from(&buf[..])
    };
    Ok(Request {
        role,
        id,
        client,
        early,
        received,
        key_expiry,
    })
}
