//! A paired session: `OK` to both sides, then the byte pump until it ends.
//!
//! A session is [`local`] when both sides are on this node, [`forwarded`]
//! when a Bridge joins it to another node; either way it ends with one
//! [`Outcome`](crate::outcome::Outcome) in its metrics and its log line
//! ([`report`]).

mod awaiting;
mod beside;
pub(crate) mod forwarded;
mod lane;
mod local;
mod pump;
mod report;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use dtcp_forward::proto::Frame;
use dtcp_wire::{Condition, RegistrationId};
use pin_project_lite::pin_project;
use tokio::net::TcpStream;

use crate::claim::{Claim, Requester};
use crate::node::Node;
use crate::protocol::Protocol;
use crate::reply::refuse_dtcp;
use crate::socket::reset;

pub(crate) use awaiting::counted_requester;

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
    client: IpAddr,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    node.hot.pending_wait.record(waited);
    match claim {
        Claim::Local(local) => {
            // Each client's address takes part in one more session (an
            // address that is both sides, once); the guard lives as long
            // as the session.
            let Some(share) = node.per_address.session(client, Some(local.client)) else {
                return Box::pin(over_share(initiator, Some(local.stream), None));
            };
            let session = local::run(node, initiator, i_early, local, id, waited, client);
            Box::pin(Holding::new(session, share))
        }
        Claim::Remote(remote) => {
            // The Target's address is counted by its own node.
            let Some(share) = node.per_address.session(client, None) else {
                return Box::pin(over_share(initiator, None, Some(remote.outbound)));
            };
            let session = forwarded::run_owner_side(
                node,
                initiator,
                i_early,
                remote,
                id,
                waited,
                client,
                Protocol::Dtcp,
                None,
            );
            Box::pin(Holding::new(session, share))
        }
        Claim::Socks5(pair) => {
            // A XEP-0065 pair is a session from its claim on: each client's
            // address takes part in one more (a requester on another node is
            // counted there). Over a share the pair is cut, both reset: the
            // waiter has had its success reply already.
            let requester = match &pair.requester {
                Requester::Local(requester, _) => Some(requester.client),
                Requester::Remote(_) => None,
            };
            let Some(share) = node.per_address.session(client, requester) else {
                metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "per_ip_sessions")
                    .increment(1);
                awaiting::cut_requester(*pair, TOO_MANY_SESSIONS);
                reset(initiator);
                return Box::pin(std::future::ready(()));
            };
            let session = awaiting::run(node, initiator, i_early, *pair, id, waited, client);
            Box::pin(Holding::new(session, share))
        }
    }
}

pin_project! {
    /// A session's future and what it holds until it ends (its share of
    /// sessions, its connection slot): `guard` is dropped with the future,
    /// which its task drops once the session is over.
    ///
    /// In place of `async move { session.await; drop(guard) }`, which keeps
    /// the session's whole state twice (as captured, and as awaited): every
    /// idle session paid for both (a lane session's claimant side was a
    /// 2,536-byte box, now 944 with its own state made smaller).
    pub(crate) struct Holding<F, G> {
        #[pin]
        session: F,
        guard: G,
    }
}

impl<F, G> Holding<F, G> {
    pub(crate) fn new(session: F, guard: G) -> Self {
        Holding { session, guard }
    }
}

impl<F: Future, G> Future for Holding<F, G> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().session.poll(cx)
    }
}

/// A claim that cannot be served because the registering client is gone:
/// its claimant is told.
pub(crate) async fn abandon(claim: Claim) {
    let text = "the initiator hung up";
    match claim {
        Claim::Local(c) => refuse_dtcp(c.stream, Some("connect"), Condition::NotFound, text).await,
        Claim::Remote(r) => r.outbound.try_send(Frame::error(Condition::NotFound, text)),
        Claim::Socks5(c) => awaiting::cut_requester(*c, "the target hung up"),
    }
}

/// The text of a pairing refused at a client address's share of sessions.
pub(crate) const TOO_MANY_SESSIONS: &str = "too many paired sessions from this address";

/// A pairing refused because a client's address takes part in its share
/// of paired sessions (`--max-sessions-per-ip`): `resource-constraint` to
/// the Initiator, to a local Target, and to a remote Target's node. Neither
/// client has had its `OK`.
async fn over_share(
    initiator: TcpStream,
    target: Option<TcpStream>,
    remote: Option<dtcp_forward::Outbound>,
) {
    metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "per_ip_sessions")
        .increment(1);
    let condition = Condition::ResourceConstraint;
    if let Some(remote) = remote {
        remote.try_send(dtcp_forward::proto::Frame::error(
            condition,
            TOO_MANY_SESSIONS,
        ));
    }
    let refusing_target = async {
        if let Some(target) = target {
            refuse_dtcp(target, Some("connect"), condition, TOO_MANY_SESSIONS).await;
        }
    };
    tokio::join!(
        refuse_dtcp(initiator, Some("create"), condition, TOO_MANY_SESSIONS),
        refusing_target
    );
}

#[cfg(test)]
pub(crate) use local::run as local_run;
