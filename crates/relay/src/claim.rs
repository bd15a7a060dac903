//! What a claim hands over: the claimant's side of the session, sent
//! through the pending table's channel to the task that holds the
//! registering client's socket.

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use dtcp_forward::{Inbound, Outbound};
use dtcp_wire::socks5::StreamHash;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::activation::PairTicket;
use crate::limits::Slot;
use crate::protocol::Protocol;

/// The claimant's side of a session (a DTCP Target's, a XEP-0065
/// requester's), handed by its claim to the task of the registering client.
#[derive(Debug)]
pub(crate) enum Claim {
    /// A DTCP Target connected to this node.
    Local(LocalClaim),
    /// A DTCP Target connected to another node, which opened a Bridge.
    Remote(RemoteClaim),
    /// XEP-0065: the requester's side (local or remote), paired with the
    /// pending waiter but not yet activated. Boxed: rare, and every pending
    /// registration's claim channel makes room for a claim.
    Socks5(Box<Socks5Claim>),
}

/// A XEP-0065 requester's side, handed to its waiter's task by its claim.
///
/// The waiter (XEP-0065's Target) connects first and registers; the
/// requester connects second and claims. In the session's metrics and log
/// line the roles are DTCP's: the waiter is the initiator, the requester
/// the target.
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
    /// To this node; the hash is for its success reply, which the waiter's
    /// task sends.
    Local(LocalClaim, StreamHash),
    /// To another node, which answers it once this node says `paired`.
    Remote(RemoteClaim),
}

/// A claimant on another node, reached through the Bridge it opened.
#[derive(Debug)]
pub(crate) struct RemoteClaim {
    /// Frames toward the claimant's node (the Bridge's response body).
    pub(crate) outbound: Outbound,
    /// Frames from it. Boxed: it is large, and every pending registration's
    /// claim channel makes room for a claim.
    pub(crate) inbound: Box<Inbound>,
    /// The claimant's client address, as its node sent it (for logs only).
    pub(crate) client: Option<SocketAddr>,
    /// The claimant's node id, when it is dialing a lane for the session
    /// (and this node offers lanes): see `session::lane`.
    pub(crate) lane_peer: Option<Box<str>>,
    /// The cluster format this node answers the claimant's node in (its
    /// `paired` frame): the one its `open` asked, or this node's newest if
    /// that is older.
    pub(crate) format: u32,
}

/// A claimant connected to this node.
#[derive(Debug)]
pub(crate) struct LocalClaim {
    /// The claimant's socket, its `OK` (or success reply) not yet sent.
    pub(crate) stream: TcpStream,
    /// Bytes the claimant sent behind its handshake, to be delivered first.
    pub(crate) early: BytesMut,
    /// The claimant's connection slot, released when the session ends.
    pub(crate) slot: Slot,
    /// When the claimant's handshake was complete: pairing latency starts here.
    pub(crate) received: Instant,
    /// The claimant's client address, for the session's log line.
    pub(crate) client: IpAddr,
    /// The protocol both sides speak.
    pub(crate) protocol: Protocol,
}
