//! Direct first, relay as fallback.
//!
//! The protocol lets a Target reach its Initiator either directly or through
//! a relay without telling the two apart: it sends the same
//! `CONNECT\0key\0initiator\0target\0` to whichever candidate answers, and an
//! Initiator reached directly answers `OK\0` itself, just as a relay would.
//!
//! # The Initiator: [`Offer`]
//!
//! [`Offer::bind`] (or [`Initiator::offer`](crate::Initiator::offer)) binds
//! one or more listeners; [`Offer::candidates`] is the list to hand the Target
//! (the listeners in the order given, then the relay, marked `relay@`).
//! [`Offer::accept`] registers at the relay with `CREATE` and, at the same
//! time, checks every connection on the listeners exactly as a relay would
//! (the same [`CommandDecoder`](dtcp_wire::CommandDecoder) and
//! [`Limits`](dtcp_wire::Limits)):
//!
//! | what arrives on a listener | answer |
//! | --- | --- |
//! | `CONNECT` with this session's key and JIDs | `OK\0`: this path wins |
//! | `CONNECT` with another key or other JIDs | `ERROR\0not-found\0…`, and the listener keeps waiting |
//! | `CREATE` with this session's triple | `ERROR\0conflict\0…` (it is already pending here) |
//! | `CREATE` with another triple | `ERROR\0forbidden\0…` (a listener holds one session, it registers none) |
//! | bytes that cannot become a command | `ERROR\0bad-request\0…` at the first byte that shows it, as the relay |
//! | a command not complete within [`DIRECT_HANDSHAKE_TIMEOUT`] | `ERROR\0timeout\0…` |
//! | more than [`MAX_DIRECT_HANDSHAKES`] connections still sending their command | `ERROR\0resource-constraint\0…` |
//!
//! The first path to complete wins, and the other is withdrawn at once: the
//! `CREATE` connection is closed (the relay drops the registration), the
//! listeners are closed (later connections are refused), and connections
//! still sending their command are answered
//! `ERROR\0not-found\0the session was claimed through another path\0`.
//!
//! ## Races
//!
//! Exactly one path carries data: the Initiator decides alone, in one place,
//! and writes to one stream only.
//!
//! - The relay's `OK` arrives while a direct `CONNECT` is still being read or
//!   checked: the relay wins (its Target already holds `OK` and may be
//!   sending). The direct connection is answered `not-found` as above, at
//!   once, without waiting for the rest of its command, and closed.
//! - A direct `CONNECT` is checked first while the relay's `OK` is on its way:
//!   the direct path wins and the `CREATE` connection is closed. If the relay
//!   had already paired it with a Target, that Target sees its stream end
//!   without a byte (the relay ends the session when its Initiator goes).
//! - Both are complete at the same instant: the direct path wins.
//! - A direct `CONNECT` whose sender already hung up (a Target whose reply
//!   timeout ran out and moved on) is not taken: the Initiator keeps waiting.
//!
//! The relay path failing (the relay unreachable, refusing, or its pending
//! TTL ending) does not end an [`Offer`] with listeners: it goes on waiting on
//! them ([`OfferEvent::RelayFailed`] says so). An offer without listeners
//! fails as [`Initiator::connect`](crate::Initiator::connect) does.
//!
//! # The Target: [`connect_any`]
//!
//! Tries the candidates in order, each with a connect timeout and a reply
//! timeout ([`Timeouts`]), and moves on after a refused or failed connection,
//! a timeout, an `ERROR` or a malformed reply. When all fail, [`AllFailed`]
//! lists every attempt. The stream returned is a plain `TcpStream` on either
//! path, so [`tls::connect`](crate::tls::connect) and
//! [`tls::accept`](crate::tls::accept) work the same on both.
//!
//! # The files
//!
//! - `offer.rs`: the Initiator's [`Offer`], its relay registration and the
//!   choice of the winning path;
//! - `listener.rs`: what the Offer's listeners do with each connection (read
//!   one command exactly, judge it, answer `ERROR` as the relay would);
//! - `connect_any.rs`: the Target's side, [`connect_any`], its [`Timeouts`]
//!   and the report of every failed [`Attempt`];
//! - `route.rs`: what both sides share: the [`Route`] a pairing took, the
//!   [`Paired`] stream, and dialing a candidate;
//! - `interfaces.rs`: [`interface_addrs`], the machine's own addresses that an
//!   Initiator can listen on.

mod connect_any;
mod interfaces;
mod listener;
mod offer;
mod route;

pub use connect_any::{
    AllFailed, Attempt, AttemptError, DEFAULT_CONNECT_TIMEOUT, DEFAULT_RELAY_REPLY_TIMEOUT,
    DEFAULT_REPLY_TIMEOUT, Timeouts, connect_any, connect_any_with,
};
pub use interfaces::interface_addrs;
pub use listener::{DIRECT_HANDSHAKE_TIMEOUT, MAX_DIRECT_HANDSHAKES};
pub use offer::{Offer, OfferError, OfferEvent};
pub use route::{Paired, Route};
