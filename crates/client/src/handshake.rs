//! The client's side of the DTCP handshake, with a relay or with an
//! Initiator's own listener (which answers as a relay would): send one
//! command, read exactly its reply and not a byte past it, and say why it
//! failed ([`ClientError`]).

use std::io;

use bytes::{BufMut, BytesMut};
use dtcp_wire::{Command, Condition, MAX_REPLY_LEN, Reply, Triple, Verb, WireError, decode_reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// Why a client could not get a paired stream.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The relay could not be reached.
    #[error("cannot reach the relay: {0}")]
    Connect(#[source] io::Error),
    /// The connection failed after it was made.
    #[error("connection to the relay failed: {0}")]
    Io(#[from] io::Error),
    /// The relay answered `ERROR`.
    #[error("relay refused: {condition}: {text}")]
    Refused {
        /// Why, in machine-readable form.
        condition: Condition,
        /// Why, for people.
        text: String,
    },
    /// The relay closed the connection without a reply.
    #[error("the relay closed the connection without a reply")]
    Closed,
    /// The relay answered with bytes that are not a reply.
    #[error("unexpected reply from the relay: {0}")]
    Protocol(#[from] WireError),
    /// End-to-end TLS failed.
    #[error("end-to-end TLS: {0}")]
    Tls(String),
}

impl ClientError {
    /// The relay's condition, when the relay refused.
    pub fn condition(&self) -> Option<Condition> {
        match self {
            ClientError::Refused { condition, .. } => Some(*condition),
            _ => None,
        }
    }
}

/// Connects to a relay, with Nagle's algorithm off (the handshake is a few
/// small writes each side waits on).
pub(crate) async fn connect_relay(relay: impl ToSocketAddrs) -> Result<TcpStream, ClientError> {
    let stream = TcpStream::connect(relay)
        .await
        .map_err(ClientError::Connect)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends `verb` for `triple` on a connection to the relay and reads the reply.
///
/// Reads exactly the reply and nothing past it, so the stream returned
/// starts with the peer's first byte.
pub async fn pair(
    mut stream: TcpStream,
    verb: Verb,
    triple: &Triple,
) -> Result<TcpStream, ClientError> {
    stream
        .write_all(&Command::new(verb, triple.clone()).encode())
        .await?;
    match read_reply(&mut stream).await? {
        Reply::Ok => Ok(stream),
        Reply::Error { condition, text } => Err(ClientError::Refused { condition, text }),
    }
}

/// Reads the relay's reply to a command, without reading past `OK\0` (what
/// follows is the peer's). An `ERROR` is returned as a reply, not an error.
pub async fn read_reply(stream: &mut TcpStream) -> Result<Reply, ClientError> {
    let mut head = [0u8; 3];
    if let Err(e) = stream.read_exact(&mut head).await {
        return Err(match e.kind() {
            io::ErrorKind::UnexpectedEof => ClientError::Closed,
            _ => ClientError::Io(e),
        });
    }
    let mut buf = BytesMut::from(&head[..]);
    if let Some(reply) = decode_reply(&mut buf)? {
        return Ok(reply);
    }
    // An ERROR: the relay closes after it, so reading on cannot steal peer bytes.
    loop {
        let room = MAX_REPLY_LEN + 1 - buf.len();
        let n = stream.read_buf(&mut (&mut buf).limit(room)).await?;
        if let Some(reply) = decode_reply(&mut buf)? {
            return Ok(reply);
        }
        if n == 0 {
            return Err(ClientError::Closed);
        }
    }
}
