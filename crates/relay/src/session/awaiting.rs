//! XEP-0065 mode: a pair on the node that holds its waiter (the first
//! connection of its stream hash, XEP-0065's Target), from the claim to the
//! activation, then the session.
//!
//! The waiter has had its success reply since it registered; the requester
//! gets its own now (from this node when it is connected here, from its own
//! node once the Bridge says `paired`). Nothing is read from either socket
//! until the activation: what a client sends early waits in the kernel and
//! is the first thing the pump reads. A pair not activated within the
//! SOCKS5 wait (`--socks5-activation-timeout`, counted from the waiter's
//! registration), or one of whose sides goes, is cut: both sockets are
//! reset. Until its wait ends the pair counts against its waiter's address
//! (`--max-pending-per-ip`).
//!
//! In the session's metrics and log line the roles are DTCP's: the waiter
//! is the initiator, the requester the target.

use std::future::{Future, poll_fn};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dtcp_duplex::reset_on_close;
use dtcp_forward::proto::Frame;
use dtcp_wire::{Condition, RegistrationId};
use metrics::counter;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tracing::debug;

use crate::activation::PairTicket;
use crate::claim::{RemoteClaim, Requester, Socks5Claim};
use crate::metrics::{COMMANDS, SOCKS5_EXPIRED};
use crate::node::{Node, SHUTTING_DOWN};
use crate::protocol::Protocol;
use crate::reply::send_socks5_ok;
use crate::session::{forwarded, lane, local};
use crate::socket::{poll_gone_unread, rearm, reset};

/// What ended a pair's wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    Activated,
    /// The SOCKS5 wait (`--socks5-activation-timeout`) ran out.
    Expired,
    /// The waiter closed or reset.
    WaiterGone,
    /// The requester (or its node) went.
    RequesterGone,
    /// The node's drain timeout ran out.
    Stopped,
}

impl Woke {
    /// Why the pair was cut, for the log line and the Bridge's error frame.
    const fn why(self) -> &'static str {
        match self {
            Woke::Activated => "activated",
            Woke::Expired => "not activated within the SOCKS5 activation timeout",
            Woke::WaiterGone => "the target hung up",
            Woke::RequesterGone => "the requester hung up",
            Woke::Stopped => SHUTTING_DOWN,
        }
    }

    /// The condition of the error frame that tells the requester's node.
    const fn condition(self) -> Condition {
        match self {
            Woke::Expired => Condition::Timeout,
            Woke::Stopped => Condition::ShuttingDown,
            _ => Condition::NotFound,
        }
    }
}

/// The pair of `waiter`, claimed by `pair`'s requester: waits for the
/// activation, then runs the session. `waited`: how long the waiter waited
/// for its requester.
///
/// A plain fn returning an `async move` block, as `local::run` is: an
/// `async fn` would keep a second copy of its arguments.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice"
)]
pub(crate) fn run(
    node: Arc<Node>,
    waiter: TcpStream,
    w_early: BytesMut,
    pair: Socks5Claim,
    id: RegistrationId,
    waited: Duration,
    client: IpAddr,
) -> impl Future<Output = ()> + Send {
    async move {
        let Socks5Claim { requester, ticket } = pair;
        let PairTicket {
            mut start,
            guard,
            counted,
        } = ticket;
        // The SOCKS5 wait counts from the waiter's registration.
        let deadline = Instant::now() + node.config.socks5_wait().saturating_sub(waited);
        // From here on a cut is a reset: both have had a success reply.
        reset_on_close(&waiter);
        match requester {
            Requester::Local(requester, hash) => {
                reset_on_close(&requester.stream);
                send_socks5_ok(&requester.stream, &hash).await;
                counted_requester();
                // The relay's part of the pairing ends here: the rest is the
                // clients' wait for their activation.
                node.hot
                    .socks5_local
                    .pairing_latency
                    .record(requester.received.elapsed());
                debug!(registration = %id, "SOCKS5 pair awaiting activation");
                let woke = tokio::select! {
                    biased;
                    r = &mut start => if r.is_ok() { Woke::Activated } else { Woke::Expired },
                    () = node.stop.cancelled() => Woke::Stopped,
                    () = sleep_until(deadline) => Woke::Expired,
                    () = poll_fn(|cx| poll_gone_unread(&waiter, cx)) => Woke::WaiterGone,
                    () = poll_fn(|cx| poll_gone_unread(&requester.stream, cx)) => Woke::RequesterGone,
                };
                let woke = settled(woke, &mut start);
                // Waiting is over: the waiter's address is no longer charged.
                drop(counted);
                if woke != Woke::Activated {
                    cut(id, woke);
                    return;
                }
                debug!(registration = %id, "SOCKS5 pair activated");
                let mut requester = requester;
                let (Some(waiter), Some(requester_stream)) =
                    (rearm(waiter), rearm(requester.stream))
                else {
                    return;
                };
                requester.stream = requester_stream;
                local::run(node, waiter, w_early, requester, id, waited, client).await;
            }
            Requester::Remote(requester) => {
                // The requester's node answers its client on this frame.
                if requester
                    .outbound
                    .send(Frame::paired(requester.format))
                    .await
                    .is_err()
                {
                    debug!(registration = %id, "the requester's node went before the pair was made");
                    return;
                }
                debug!(registration = %id, "SOCKS5 pair awaiting activation (requester on another node)");
                let mut inbound = requester.inbound;
                let woke = tokio::select! {
                    biased;
                    r = &mut start => if r.is_ok() { Woke::Activated } else { Woke::Expired },
                    () = node.stop.cancelled() => Woke::Stopped,
                    () = sleep_until(deadline) => Woke::Expired,
                    () = poll_fn(|cx| poll_gone_unread(&waiter, cx)) => Woke::WaiterGone,
                    // Before activation the requester's node sends nothing
                    // but an error frame (its client went) or its end.
                    _ = inbound.next() => Woke::RequesterGone,
                };
                let woke = settled(woke, &mut start);
                drop(counted);
                if woke != Woke::Activated {
                    cut(id, woke);
                    if woke != Woke::RequesterGone {
                        requester
                            .outbound
                            .try_send(Frame::error(woke.condition(), woke.why()));
                    }
                    return;
                }
                // The activation offers the requester's node a lane, if
                // it takes one and a connection slot is free for it.
                let offered = requester
                    .lane_peer
                    .as_deref()
                    .and_then(|peer| lane::offer(&node, &id, peer));
                let activated = match &offered {
                    Some(o) => Frame::activated_with(o.offer.token.clone()),
                    None => Frame::activated(),
                };
                if requester.outbound.send(activated).await.is_err() {
                    debug!(registration = %id, "the requester's node went at the activation");
                    return;
                }
                debug!(registration = %id, "SOCKS5 pair activated (requester on another node)");
                let Some(waiter) = rearm(waiter) else {
                    return;
                };
                let claim = RemoteClaim {
                    outbound: requester.outbound,
                    inbound,
                    client: requester.client,
                    lane_peer: None,
                    format: requester.format,
                };
                forwarded::run_owner_side(
                    node,
                    waiter,
                    w_early,
                    claim,
                    id,
                    waited,
                    client,
                    Protocol::Socks5,
                    offered,
                )
                .await;
            }
        }
        // The pair's entry goes only now: until the session ends, another
        // activation is told it came too late.
        drop(guard);
    }
}

/// Logs (and, for an expiry, counts) a pair cut before its activation.
fn cut(id: RegistrationId, woke: Woke) {
    debug!(registration = %id, why = woke.why(), "SOCKS5 pair cut before activation");
    if woke == Woke::Expired {
        counter!(SOCKS5_EXPIRED).increment(1);
    }
}

/// How a pair's wait really ended: one that woke for anything but its
/// activation shuts its start channel, and if an activation got in before
/// that (answered `result` to its client), the pair is activated after all
/// and its session runs (and ends at once if a client has gone).
fn settled(woke: Woke, start: &mut tokio::sync::oneshot::Receiver<()>) -> Woke {
    if woke == Woke::Activated {
        return woke;
    }
    start.close();
    if start.try_recv().is_ok() {
        Woke::Activated
    } else {
        woke
    }
}

/// Counts a requester answered with its success reply.
pub(crate) fn counted_requester() {
    counter!(COMMANDS, "protocol" => "socks5", "verb" => "requester", "outcome" => "ok")
        .increment(1);
}

/// A pair whose waiter went before it could start: its requester is cut
/// (reset here, or told through its Bridge).
pub(crate) fn cut_requester(pair: Socks5Claim, why: &str) {
    match pair.requester {
        Requester::Local(requester, _) => reset(requester.stream),
        Requester::Remote(requester) => requester
            .outbound
            .try_send(Frame::error(Condition::NotFound, why)),
    }
}
