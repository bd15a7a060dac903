//! What the relay says to a client on its own account: `OK` when a session
//! pairs, `ERROR` when it refuses one (then a graceful close); and in
//! XEP-0065 mode, the SOCKS5 success and error replies.

use std::future::Future;
use std::io;
use std::pin::Pin;

use dtcp_duplex::{write_all, write_and_linger};
use dtcp_wire::socks5::{Method, ReplyCode, StreamHash, error_reply, success_reply};
use dtcp_wire::{Condition, OK, Reply};
use metrics::counter;
use tokio::net::TcpStream;

use crate::metrics::{COMMANDS, ERRORS};
use crate::protocol::Protocol;

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
pub(crate) fn refuse_dtcp<'a>(
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

/// A SOCKS5 refusal: the reply that is written, in one write, before the close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Socks5Refusal {
    /// The greeting offered no method the relay accepts: `05 FF`.
    NoAcceptableMethod,
    /// The request is answered with this code.
    Reply(ReplyCode),
}

impl Socks5Refusal {
    /// The bytes of the reply.
    pub(crate) fn bytes(self) -> Vec<u8> {
        match self {
            Socks5Refusal::NoAcceptableMethod => Method::NoneAcceptable.reply().to_vec(),
            Socks5Refusal::Reply(code) => error_reply(code).to_vec(),
        }
    }

    /// The `outcome` label of `dtcp_commands_total`.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Socks5Refusal::NoAcceptableMethod => "no-acceptable-method",
            Socks5Refusal::Reply(code) => code.label(),
        }
    }
}

/// Sends a SOCKS5 client its success reply, `05 00 00 03 28 <hash> 00 00`,
/// in one write (XMPP clients read each segment as one message); like
/// [`send_ok`], a socket that has sent nothing yet takes it at once.
pub(crate) async fn send_socks5_ok(stream: &TcpStream, hash: &StreamHash) {
    let reply = success_reply(hash);
    match stream.try_write(&reply) {
        Ok(n) if n == reply.len() => {}
        Ok(n) => {
            let _ = Box::pin(write_all(stream, &reply[n..])).await;
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            let _ = Box::pin(write_all(stream, &reply)).await;
        }
        Err(_) => {}
    }
}

/// Answers a SOCKS5 client `refusal` in one write and closes gracefully;
/// `verb` is its role in `dtcp_commands_total{protocol="socks5"}`. Boxed,
/// as [`refuse_dtcp`] is.
pub(crate) fn refuse_socks5(
    stream: TcpStream,
    verb: &'static str,
    refusal: Socks5Refusal,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        counter!(COMMANDS, "protocol" => Protocol::Socks5.label(), "verb" => verb, "outcome" => refusal.label())
            .increment(1);
        write_and_linger(stream, &refusal.bytes()).await;
    })
}
