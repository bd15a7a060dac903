//! Pairing: what a connection whose request is known does to meet its other
//! side, for DTCP and for XEP-0065 alike.
//!
//! [`create`] registers (here, then in the store through [`record`]) and
//! waits for the claim; [`connect`] is DTCP's claim, taken here or through a
//! Bridge to the node that [`locate`] finds (XEP-0065's arrival,
//! [`crate::xep0065::arrive`], uses `create` and `locate` the same way);
//! [`early`] holds what a client sends before it is paired; [`dialect`] is
//! what differs between the protocols where registering meets the client,
//! asked of its [`Protocol`](crate::protocol::Protocol); [`request`] is
//! what a handshake asked for. Above this folder are the connection task
//! ([`crate::conn`]) and XEP-0065 ([`crate::xep0065`]); below it the
//! session ([`crate::session`]) and the node's tables.

pub(crate) mod connect;
pub(crate) mod create;
mod dialect;
mod early;
pub(crate) mod locate;
mod record;
pub(crate) mod request;
