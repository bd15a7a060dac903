//! XEP-0065 mode (docs/PROTOCOL.md section 6): what a node that relays SOCKS5
//! bytestreams adds to DTCP's pairing, in one place.
//!
//! A SOCKS5 connection is read by [`socks5`] (the greeting and the CONNECT
//! by stream hash), and pairs by [`arrive`]: the first connection of a
//! stream hash registers and waits, the second claims it, here or through
//! a Bridge. The pair then waits for its activation in the node's
//! activation table ([`crate::activation`]), which the XMPP [`component`]
//! (or another node's `Activate` call) flips, exactly once.
//!
//! The table is not in this folder because the node holds it and a claim
//! carries its ticket: it sits below them, beside the pending table, so
//! that this folder can sit above pairing and the node, and the relay's
//! folders run one way down.

pub(crate) mod arrive;
pub(crate) mod component;
pub(crate) mod socks5;
