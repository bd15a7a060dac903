//! The one thing the component asks of the relay: activate a bytestream.

use dtcp_wire::socks5::StreamHash;
use tokio::sync::{mpsc, oneshot};

/// An activation request, sent by the component to the relay for each
/// `<activate>` IQ that passed the component's own checks.
///
/// The relay pairs the two SOCKS5 connections that presented `hash` (the
/// Target's first, the requester's second), answers both with the success
/// reply's forwarding, and sends the outcome on `reply`. The requester gets
/// `result` or the stanza error of the [`ActivateError`]. If `reply` is
/// dropped unanswered, or not answered within the activation timeout, the
/// requester gets `internal-server-error`.
#[derive(Debug)]
pub struct Activation {
    /// SHA1(sid + requester + target): the address both SOCKS5 connections sent.
    pub hash: StreamHash,
    /// The bytestream's session id, for logs.
    pub sid: String,
    /// The requester's full JID, normalised (the IQ's `from`).
    pub requester: String,
    /// The Target's JID, normalised (the `<activate>` text).
    pub target: String,
    /// Where the relay answers.
    pub reply: oneshot::Sender<Result<(), ActivateError>>,
}

/// Why the relay could not activate a bytestream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivateError {
    /// The two connections with this hash are not both there (one never came,
    /// hung up, or its node is gone), or the bytestream was activated before:
    /// `item-not-found`.
    #[error("no pair of connections for this bytestream")]
    NotFound,
    /// The pair exists but could not be joined (the forwarding plane failed,
    /// the relay is draining): `internal-server-error`.
    #[error("the relay could not join the connections")]
    Failed,
}

/// The sending end the component is given; the relay keeps the receiver.
pub type Activator = mpsc::Sender<Activation>;

/// The channel between the component and the relay, with room for `capacity`
/// activations not yet picked up (each waits there for at most the activation
/// timeout).
pub fn channel(capacity: usize) -> (Activator, mpsc::Receiver<Activation>) {
    mpsc::channel(capacity)
}
