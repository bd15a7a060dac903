//! What a handshake produces, whatever protocol the client spoke: a
//! [`Request`] that pairing understands, or a [`Refusal`].

use std::borrow::Cow;
use std::net::SocketAddr;

use bytes::BytesMut;
use dtcp_wire::{Condition, RegistrationId};
use tokio::time::Instant;

/// Which side of a pairing a client asks to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The side that waits: it registers (a DTCP `CREATE`).
    Register,
    /// The side that completes a registration: it claims (a DTCP `CONNECT`).
    Claim,
}

impl Side {
    /// The `verb` label of `dtcp_commands_total`.
    pub(crate) const fn verb(self) -> &'static str {
        match self {
            Side::Register => "create",
            Side::Claim => "connect",
        }
    }
}

/// A client's complete, admitted handshake.
#[derive(Debug)]
pub(crate) struct Request {
    /// Register or claim.
    pub(crate) side: Side,
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

/// Why a handshake is answered with `ERROR`.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The `verb` label, once the command is known (`unknown` before).
    pub(crate) verb: &'static str,
    /// The condition on the wire.
    pub(crate) condition: Condition,
    /// The text on the wire.
    pub(crate) text: Cow<'static, str>,
}

impl Refusal {
    /// A refusal of a command whose verb is `verb`.
    pub(crate) fn new(
        verb: &'static str,
        condition: Condition,
        text: impl Into<Cow<'static, str>>,
    ) -> Self {
        Refusal {
            verb,
            condition,
            text: text.into(),
        }
    }
}
