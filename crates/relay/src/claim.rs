//! What a claim hands over: the claimant's side of the session, sent
//! through the pending table's channel to the task that holds the
//! registering client's socket.

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use dtcp_forward::{Inbound, Outbound};
use dtcp_wire::socks5::StreamHash;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::limits::Slot;
use crate::protocol::Protocol;
use crate::xep0065::activation::PairTicket;

/// The Target's side of a session, handed to the Initiator's task by a claim.
#[derive(Debug)]
pub(crate) enum Claim {
    /// The Target is connected to this node.
    Local(LocalClaim),
    /// The Target is connected to another node, which opened a Bridge.
    Remote(RemoteClaim),
    /// XEP-0065: the requester's side (local or remote), paired with the
    /// pending Target but not yet activated. Boxed: rare, and every pending
    /// CREATE's claim channel makes room for a claim.
    Socks5(Box<Socks5Claim>),
}

/// A XEP-0065 requester's side, handed to the Target's task by its claim.
///
/// The naming of the two sides is DTCP's: the SOCKS5 Target connects first
/// and registers (the role of a DTCP Initiator); the requester connects
/// second and claims (the role of a DTCP Target).
#[derive(Debug)]
pub(crate) struct Socks5Claim {
    /// The requester.
    pub(crate) requester: Requester,
    /// The pair's entry in the activation table, entered by the claimant.
    pub(crate) ticket: PairTicket,
}

/// Where a XEP-0065 requester is connected.
#[derive(Debug)]
pub(crate) enum Requester {
    /// To this node; the hash is for its success reply, which the Target's
    /// task sends.
    Local(LocalClaim, StreamHash),
    /// To another node, which answers it once this node says `paired`.
    Remote(RemoteClaim),
}

/// A Target on another node, reached through the Bridge it opened.
#[derive(Debug)]
pub(crate) struct RemoteClaim {
    /// Frames toward the Target's node (the Bridge's response body).
    pub(crate) outbound: Outbound,
    /// Frames from it. Boxed: it is large, and every pending CREATE's claim
    /// channel makes room for a claim.
    pub(crate) inbound: Box<Inbound>,
    /// The Target's client address, as its node sent it (for logs only).
    pub(crate) target: Option<SocketAddr>,
}

/// A Target connected to this node.
#[derive(Debug)]
pub(crate) struct LocalClaim {
    /// The Target's socket, its `OK` not yet sent.
    pub(crate) target: TcpStream,
    /// Bytes the Target sent behind its command, to be delivered first.
    pub(crate) early: BytesMut,
    /// The Target's connection slot, released when the session ends.
    pub(crate) slot: Slot,
    /// When the Target's command was complete: pairing latency starts here.
    pub(crate) connect_started: Instant,
    /// The Target's client address, for the session's log line.
    pub(crate) client: IpAddr,
    /// The protocol both sides speak.
    pub(crate) protocol: Protocol,
}
