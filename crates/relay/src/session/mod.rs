//! A paired session: `OK` to both sides, then the byte pump until it ends.
//!
//! A session is [`local`] when both sides are on this node, [`forwarded`]
//! when a Bridge joins it to another node; either way it ends with one
//! [`Outcome`](crate::outcome::Outcome) in its metrics and its log line
//! ([`report`]).

mod awaiting;
pub(crate) mod forwarded;
mod local;
mod pump;
mod report;
#[cfg(target_os = "linux")]
mod splice;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dtcp_wire::RegistrationId;
use tokio::net::TcpStream;

use crate::node::Node;
use crate::pending::Claim;
use crate::protocol::Protocol;

pub(crate) use awaiting::{abandon, counted_requester, poll_gone_unread, reset};

/// The session of a claimed registration, from the side of the node holding
/// the Initiator.
///
/// Returns the session's future boxed, and only that: an `async fn` here
/// would keep a second copy of every argument beside the inner future, and
/// every idle session would pay for it.
pub(crate) fn start(
    node: Arc<Node>,
    initiator: TcpStream,
    i_early: BytesMut,
    claim: Claim,
    id: RegistrationId,
    waited: Duration,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    node.hot.pending_wait.record(waited);
    match claim {
        Claim::Local(local) => Box::pin(local::run(node, initiator, i_early, local, id, waited)),
        Claim::Remote(remote) => Box::pin(forwarded::run_owner_side(
            node,
            initiator,
            i_early,
            remote,
            id,
            waited,
            Protocol::Dtcp,
        )),
        Claim::Socks5(pair) => Box::pin(awaiting::run(node, initiator, i_early, *pair, id, waited)),
    }
}

#[cfg(test)]
pub(crate) use local::run as local_run;
