//! What a handshake produces, whatever protocol the client spoke: a
//! [`Request`] that pairing understands, or a [`Refusal`] in its protocol.

use std::borrow::Cow;
use std::net::SocketAddr;

use bytes::BytesMut;
use dtcp_wire::socks5::StreamHash;
use dtcp_wire::{Condition, RegistrationId};
use tokio::time::Instant;

use crate::protocol::Protocol;
use crate::reply::Socks5Refusal;

/// Which side of a pairing a client asks to be; with it, the protocol it
/// speaks ([`Role::protocol`]), which says how it is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The side that waits: it registers (a DTCP `CREATE`).
    Register,
    /// The side that completes a registration: it claims (a DTCP `CONNECT`).
    Claim,
    /// A SOCKS5 CONNECT of XEP-0065 mode: the first connection with this
    /// stream hash registers and waits (the waiter, XEP-0065's Target), the
    /// second claims (the requester), and the pair waits for its activation.
    Arrive(StreamHash),
}

impl Role {
    /// The `verb` label of `dtcp_commands_total`.
    pub(crate) const fn verb(self) -> &'static str {
        match self {
            Role::Register => "create",
            Role::Claim => "connect",
            Role::Arrive(_) => SOCKS5_UNKNOWN,
        }
    }

    /// The protocol the client speaks.
    pub(crate) const fn protocol(self) -> Protocol {
        match self {
            Role::Register | Role::Claim => Protocol::Dtcp,
            Role::Arrive(_) => Protocol::Socks5,
        }
    }
}

/// The `verb` label of a SOCKS5 connection's `dtcp_commands_total`
/// (`protocol="socks5"`) before it is known to be the waiter or the requester.
pub(crate) const SOCKS5_UNKNOWN: &str = "unknown";
/// The `verb` label of a SOCKS5 connection that registered: the waiter
/// (XEP-0065's word, `target`, in the metrics).
pub(crate) const SOCKS5_WAITER: &str = "target";
/// The `verb` label of a SOCKS5 connection that claimed: the requester.
pub(crate) const SOCKS5_REQUESTER: &str = "requester";

/// A client's complete, admitted handshake.
#[derive(Debug)]
pub(crate) struct Request {
    /// Register or claim.
    pub(crate) role: Role,
    /// The registration it names (the key itself is gone by now).
    pub(crate) id: RegistrationId,
    /// The client's address, as every limit and log line sees it.
    pub(crate) client: SocketAddr,
    /// Bytes the client sent behind its handshake, to be delivered first.
    pub(crate) early: BytesMut,
    /// When the handshake was complete: pairing latency starts here.
    pub(crate) received: Instant,
    /// A signed key's expiry (Unix seconds): it pairs once, and its
    /// registration stays void until then.
    pub(crate) key_expiry: Option<u64>,
}

/// Why a handshake is refused, in the protocol the client speaks.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Answered with a DTCP `ERROR`.
    Dtcp(DtcpRefusal),
    /// Answered with a SOCKS5 reply, then closed.
    Socks5(Socks5Refusal),
}

impl From<DtcpRefusal> for Refusal {
    fn from(r: DtcpRefusal) -> Self {
        Refusal::Dtcp(r)
    }
}

/// Why a handshake is answered with `ERROR`.
#[derive(Debug)]
pub(crate) struct DtcpRefusal {
    /// The `verb` label, once the command is known (`unknown` before).
    pub(crate) verb: &'static str,
    /// The condition on the wire.
    pub(crate) condition: Condition,
    /// The text on the wire.
    pub(crate) text: Cow<'static, str>,
}

impl DtcpRefusal {
    /// A refusal of a command whose verb is `verb`.
    pub(crate) fn new(
        verb: &'static str,
        condition: Condition,
        text: impl Into<Cow<'static, str>>,
    ) -> Self {
        DtcpRefusal {
            verb,
            condition,
            text: text.into(),
        }
    }
}
