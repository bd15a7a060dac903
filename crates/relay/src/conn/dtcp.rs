//! The DTCP protocol's handshake (docs/PROTOCOL.md section 1): one `CREATE` or
//! `CONNECT` command, decoded by `wire`, then the node's policy.

use std::io;

use bytes::BytesMut;
use dtcp_wire::{Command, CommandDecoder, Condition, Verb, WireError};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::node::{Node, SHUTTING_DOWN};
use crate::pairing::request::{DtcpRefusal, Role};

/// First allocation of the handshake buffer; it grows up to the command limit.
pub(crate) const HANDSHAKE_BUF: usize = 512;

/// Why no command could be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The bytes cannot become a command.
    Wire(WireError),
    /// The socket failed.
    Io(io::Error),
}

/// Reads until a command is complete (`Some`), the client closes (`None`), or
/// the bytes cannot become a command. What `buf` already holds is decoded
/// first; what follows the command stays in `buf`.
pub(crate) async fn read_command(
    node: &Node,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Option<Command>, ReadError> {
    let limits = node.config.limits();
    let mut decoder = CommandDecoder::new(limits);
    loop {
        if let Some(command) = decoder.decode(buf).map_err(ReadError::Wire)? {
            return Ok(Some(command));
        }
        if buf.len() == buf.capacity() {
            // Grow by doubling, never far past the command limit.
            let room = buf.len().clamp(HANDSHAKE_BUF, limits.max_command_len);
            buf.reserve(room);
        }
        if stream.read_buf(buf).await.map_err(ReadError::Io)? == 0 {
            return Ok(None);
        }
    }
}

/// The node's policy on a complete command: which side it asks for (and,
/// for a signed key, its expiry), or why it is refused.
pub(crate) fn admit(node: &Node, command: &Command) -> Result<(Role, Option<u64>), DtcpRefusal> {
    let role = match command.verb {
        Verb::Create => Role::Register,
        Verb::Connect => Role::Claim,
    };
    if node.drain.is_cancelled() {
        return Err(DtcpRefusal::new(
            role.verb(),
            Condition::ShuttingDown,
            SHUTTING_DOWN,
        ));
    }
    let (initiator, target) = (command.triple.initiator(), command.triple.target());
    if !node.config.allows(initiator, target) {
        let text = "neither JID's domain is served by this relay";
        return Err(DtcpRefusal::new(role.verb(), Condition::Forbidden, text));
    }
    // docs/PROTOCOL.md section 5: both commands are checked. Whether the key was
    // used already is the store's to say (`create.rs`, `connect.rs`).
    let expiry = node
        .trust
        .check_key(&command.triple)
        .map_err(|e| DtcpRefusal::new(role.verb(), Condition::Forbidden, e.to_string()))?;
    Ok((role, expiry))
}
