use std::fmt;

use crate::{Condition, JidError};

/// A field of a command, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// The command word, `CREATE` or `CONNECT`.
    Verb,
    /// The shared secret key.
    Key,
    /// The Initiator's JID.
    Initiator,
    /// The Target's JID.
    Target,
}

impl Field {
    pub(crate) const ORDER: [Field; 4] = [Field::Verb, Field::Key, Field::Initiator, Field::Target];
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Verb => "command",
            Field::Key => "key",
            Field::Initiator => "initiator JID",
            Field::Target => "target JID",
        })
    }
}

/// Bytes that are not (and can no longer become) a valid command or reply.
///
/// The `Display` text is short and safe to send to the client as the `<text>`
/// of an `ERROR` reply: it never contains the offending bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The first field is not (a prefix of) `CREATE` or `CONNECT`.
    #[error("unknown command (expected CREATE or CONNECT)")]
    UnknownCommand,
    /// A field is empty.
    #[error("empty {0}")]
    EmptyField(Field),
    /// A field is not valid UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(Field),
    /// A field is longer than its limit.
    #[error("{field} longer than {max} bytes")]
    FieldTooLong {
        /// Which field.
        field: Field,
        /// Its limit in bytes.
        max: usize,
    },
    /// The command as a whole is longer than the limit.
    #[error("command longer than {0} bytes")]
    CommandTooLong(usize),
    /// A JID is not shaped as RFC 7622 says.
    #[error("malformed {field}: {error}")]
    BadJid {
        /// Which JID.
        field: Field,
        /// What is wrong with it.
        error: JidError,
    },
    /// The relay's reply is not `OK\0` or `ERROR\0<condition>\0<text>\0`.
    #[error("malformed reply from the relay")]
    MalformedReply,
}

impl WireError {
    /// The condition a relay answers this error with: always `bad-request`.
    pub const fn condition(&self) -> Condition {
        Condition::BadRequest
    }
}
