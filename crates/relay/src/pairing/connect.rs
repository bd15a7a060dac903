//! The side that claims (a `CONNECT`): from the local pending table when
//! the registration is here, else through the store and a Bridge to the node
//! that holds it; within the connect grace.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use dtcp_forward::LaneAt;
use dtcp_wire::Condition;
use metrics::counter;
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until};
use tracing::Instrument;

use crate::claim::{Claim, LocalClaim};
use crate::limits::Slot;
use crate::metrics::{COMMANDS, CONNECTIONS_REFUSED};
use crate::node::{Node, SHUTTING_DOWN};
use crate::pairing::early::{self, poll_hung_up};
use crate::pairing::locate::{Located, locate};
use crate::pairing::request::Request;
use crate::protocol::Protocol;
use crate::reply::refuse_dtcp;
use crate::session;
use crate::session::forwarded;

/// The `verb` label of this side.
const VERB: Option<&str> = Some("connect");
/// How soon a waiting CONNECT asks the shared store again (cluster mode),
/// should the registering node not have told it; the wait doubles, with up
/// to as much again of jitter, up to [`STORE_POLL_MAX`].
///
/// A CONNECT that finds no record leaves a waiter entry in the same look,
/// and the node whose CREATE registers within the grace tells this node on
/// its own channel (pending table: one look, no polling). Looking again is
/// the fallback for a message that was lost (the subscription broke, the
/// node fell behind reading them, the store lost the waiter), so it is
/// rare: with the default 5 s connect grace, about four lookups per
/// waiting CONNECT rather than the forty of a 1 ms to 100 ms backoff, which
/// let one address with thousands of waiting CONNECTs drive tens of
/// thousands of Redis commands a second. Each look leaves the waiter again
/// if the store lost it.
const STORE_POLL_MIN: Duration = Duration::from_millis(500);
/// The longest wait between two looks at the shared store without being
/// told (twice this with jitter): what bounds, within the connect grace,
/// how late a CONNECT finds a CREATE whose message was lost.
const STORE_POLL_MAX: Duration = Duration::from_secs(2);

/// What woke a waiting CONNECT.
enum Wake {
    /// Look for the CREATE again.
    Look,
    /// The connect grace ran out.
    Expired,
    /// The node started draining.
    Drain,
    /// The Target closed its connection.
    HungUp,
}

/// Claims the registration a `CONNECT` names, and hands its side of the
/// session over: to the local `CREATE`'s task, or to a task of its own
/// joined to a Bridge.
pub(crate) async fn claim(node: Arc<Node>, stream: TcpStream, slot: Slot, request: Request) {
    let Request {
        id,
        client,
        early,
        received,
        ..
    } = request;
    // An address at its share of sessions could not pair anyway.
    if node.per_address.sessions_full(client.ip()) {
        counter!(CONNECTIONS_REFUSED, "reason" => "per_ip_sessions").increment(1);
        let text = session::TOO_MANY_SESSIONS;
        return refuse_dtcp(stream, VERB, Condition::ResourceConstraint, text).await;
    }
    // A drain waits for this claim as for a session: one whose Bridge is in
    // flight when the drain begins may already have its Initiator answered
    // by the owner, and must become a session here rather than be lost
    // with the process. A CONNECT still waiting for its CREATE is refused
    // `shutting-down` at once by the drain, which drops this.
    let _tracked = node.sessions.token();
    // Nothing more is read from the Target until it is paired: what it sends
    // meanwhile waits in the kernel. Held from its first wait on: a CONNECT
    // whose CREATE is there at the first look never waits, and pays nothing.
    let mut held = None;
    let deadline = received + node.config.connect_grace;
    let expectation = node.pending.expect(id);
    // Jittered, so that the CONNECTs of a burst do not all look at once.
    let mut looks = ExponentialBuilder::default()
        .with_min_delay(STORE_POLL_MIN)
        .with_max_delay(STORE_POLL_MAX)
        .with_jitter()
        .without_max_times()
        .build();
    let mut poll = looks.next().unwrap_or(STORE_POLL_MAX);
    let mut expiry = pin!(sleep_until(deadline));
    let mut drain = pin!(node.drain.cancelled());
    let (bridge, share) = loop {
        let notified = expectation.expected.notify.notified();
        tokio::pin!(notified);
        // Subscribe before looking, so a CREATE that arrives in between wakes us.
        notified.as_mut().enable();
        if let Some(tx) = node.pending.take(&id) {
            let Some(stream) = unhold(stream, held) else {
                // Its socket could not be kept: dropped unsent, the
                // channel tells the CREATE that pairing failed.
                drop(tx);
                return;
            };
            let claim = Claim::Local(LocalClaim {
                stream,
                early,
                slot,
                received,
                client: client.ip(),
                protocol: Protocol::Dtcp,
            });
            if let Err(Claim::Local(c)) = tx.send(claim) {
                let text = "no pending CREATE matched";
                refuse_dtcp(c.stream, VERB, Condition::NotFound, text).await;
            }
            return;
        }
        // One store round trip per look (leaving a waiter if there is no
        // record yet), none when the registering node told this one of the
        // registration (and so its owner) since the last look.
        match locate(
            &node,
            &id,
            client,
            expectation.announced_owner(),
            true,
            LaneAt::Paired,
        )
        .await
        {
            Located::Bridged(bridge, share) => break (bridge, share),
            Located::Refused(condition, text) => {
                return refuse_dtcp(stream, VERB, condition, text).await;
            }
            // Not registered yet, or claimed by another Target, withdrawn,
            // or the record names an earlier process at that address: look
            // again until the grace runs out, as a CREATE may be
            // registering right now.
            Located::Unknown | Located::Ours | Located::Gone => {}
        }
        // Wait for: the CREATE arriving here, the next look at the shared
        // store (cluster), the grace running out, the drain, or the Target
        // sending early bytes or hanging up. A hand-written poll: this is the
        // state of every waiting CONNECT, so it is kept small.
        held.get_or_insert_with(|| early::hold(&stream));
        let mut next_look = pin!(sleep(poll));
        let wake = poll_fn(|cx| {
            if notified.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Look);
            }
            if node.cluster && next_look.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Look);
            }
            if expiry.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Expired);
            }
            if drain.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Drain);
            }
            poll_hung_up(&stream, cx).map(|()| Wake::HungUp)
        })
        .await;
        match wake {
            Wake::Look => poll = looks.next().unwrap_or(STORE_POLL_MAX),
            Wake::Expired => {
                let text = "no pending CREATE matched within the connect grace";
                return refuse_dtcp(stream, VERB, Condition::NotFound, text).await;
            }
            Wake::Drain => {
                return refuse_dtcp(stream, VERB, Condition::ShuttingDown, SHUTTING_DOWN).await;
            }
            Wake::HungUp => {
                counter!(COMMANDS, "verb" => "connect", "outcome" => "abandoned").increment(1);
                return;
            }
        }
    };
    drop(expectation);
    let Some(stream) = unhold(stream, held) else {
        // The Bridge, dropped, tells the owner.
        return;
    };
    // Its own task, like a local session: this one's memory is freed.
    let session = forwarded::run_claimant_side(
        node.clone(),
        stream,
        slot,
        id,
        early,
        received,
        bridge,
        client.ip(),
        Protocol::Dtcp,
    );
    let session = async move {
        session.await;
        drop(share);
    };
    tokio::spawn(session.in_current_span());
}

/// A CONNECT's socket as it goes to its session: released from its wait if
/// it waited ([`early::release`]), as it is otherwise.
fn unhold(stream: TcpStream, held: Option<early::Held>) -> Option<TcpStream> {
    match held {
        Some(held) => early::release(stream, held),
        None => Some(stream),
    }
}
