//! The DTCP relay handshake codec (docs/PROTOCOL.md, section 1), and the SOCKS5
//! codec of XEP-0065 mode in [`socks5`] (section 6).
//!
//! Pure: bytes in, values out, no sockets. A relay feeds the bytes it has read
//! so far to a [`CommandDecoder`], which answers "need more" (`Ok(None)`), a
//! [`Command`], or a [`WireError`] that the relay reports as `bad-request`.
//! Clients encode commands with [`Command::encode`] and read the relay's answer
//! with [`decode_reply`].
//!
//! ```
//! use bytes::BytesMut;
//! use dtcp_wire::{Command, CommandDecoder, Limits, Triple, Verb};
//!
//! let triple = Triple::new("k3y", "romeo@montague.lit/orchard", "juliet@capulet.lit/balcony")?;
//! let mut buf = BytesMut::from(&Command::new(Verb::Create, triple.clone()).encode()[..]);
//! buf.extend_from_slice(b"early bytes");
//! let command = CommandDecoder::new(Limits::default()).decode(&mut buf)?.expect("complete");
//! assert_eq!(command.verb, Verb::Create);
//! assert_eq!(command.triple, triple);
//! assert_eq!(&buf[..], b"early bytes"); // what follows the command stays in the buffer
//! # Ok::<(), dtcp_wire::WireError>(())
//! ```

#![forbid(unsafe_code)]

mod command;
mod condition;
mod error;
mod id;
mod jid;
mod limits;
mod reply;
mod signed;
pub mod socks5;

pub use command::{Command, CommandDecoder, Triple, Verb};
pub use condition::{Condition, UnknownCondition};
pub use error::{Field, WireError};
pub use id::{ParseIdError, RegistrationId};
pub use jid::{JidError, Part, check_jid, domainpart};
pub use limits::{Limits, MAX_JID_PART_LEN};
pub use reply::{MAX_REPLY_LEN, OK, Reply, decode_reply};
pub use signed::{
    DEFAULT_MAX_KEY_LIFETIME, KEY_VERSION, KeyError, Keyring, MAC_FIELD_LEN, MAX_NONCE_LEN,
    MIN_NONCE_LEN, Secrets, sign, verify as verify_key,
};
