//! XEP-0065 mode's pairing (docs/PROTOCOL.md section 6): the first SOCKS5
//! connection with a stream hash is the waiter (the bytestream's Target in
//! XEP-0065's words) and registers, like a `CREATE`; the second is its
//! requester and claims it, like a `CONNECT` (on this node, or through a
//! Bridge to the node that holds the waiter); a third is refused `02`. The
//! claim pairs the two without starting their session: that waits for the
//! activation ([`crate::activation`]).
//!
//! Which of the two a connection is, is found by registering: a
//! registration of its stream hash already there, on this node or in the
//! store, makes it the requester.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use dtcp_forward::LaneAt;
use dtcp_forward::proto::frame::Kind;
use dtcp_wire::socks5::{ReplyCode, StreamHash};
use metrics::counter;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tracing::{Instrument, debug};

use crate::claim::{Claim, LocalClaim, Requester, Socks5Claim};
use crate::limits::{SessionGuard, Slot};
use crate::metrics::COMMANDS;
use crate::node::{Node, SHUTTING_DOWN};
use crate::pairing::create::{self, Enrolment, Here, Pending};
use crate::pairing::locate::{Located, locate};
use crate::pairing::request::{Request, SOCKS5_REQUESTER, SOCKS5_WAITER};
use crate::pending::Taken;
use crate::protocol::Protocol;
use crate::reply::{Socks5Refusal, refuse_socks5, send_socks5_ok};
use crate::session::{self, forwarded};
use crate::socket;

/// How often a connection may find its hash's waiter gone between looking
/// and claiming (it left, or another arrival was in the middle of
/// registering) and look again, before it is refused.
const ATTEMPTS: usize = 3;

/// How long after its own reckoning of the SOCKS5 wait a requester whose
/// waiter is on another node still waits for that node's word: the owner
/// cuts an unactivated pair and tells this node, and a backstop that fired
/// at the same moment would race it (the pair would then look abandoned by
/// its requester rather than expired).
const BACKSTOP_MARGIN: Duration = Duration::from_secs(1);

/// Refuses a requester (or a third connection) with `code`.
async fn refuse_requester(stream: TcpStream, code: ReplyCode) {
    refuse_socks5(stream, SOCKS5_REQUESTER, Socks5Refusal::Reply(code)).await;
}

/// Registers or claims a SOCKS5 connection by its stream hash.
pub(crate) async fn arrive(
    node: Arc<Node>,
    stream: TcpStream,
    slot: Slot,
    request: Request,
    hash: StreamHash,
) -> Option<Pending> {
    let id = request.id;
    for _ in 0..ATTEMPTS {
        // A pair of this hash, waiting or running, is held here: this is a
        // third connection.
        if node.activations.contains(&id) {
            debug!(registration = %id, "a third SOCKS5 connection for this stream");
            refuse_requester(stream, ReplyCode::NotAllowed).await;
            return None;
        }
        if let Some(taken) = node.pending.take_entry(&id) {
            claim_here(&node, taken, stream, slot, request, hash).await;
            return None;
        }
        match create::enrol(&node, &stream, &request).await {
            Enrolment::Pending(entered) => {
                // The waiter has its success reply at once; nothing is read
                // from it until its pair is activated.
                send_socks5_ok(&stream, &hash).await;
                counter!(COMMANDS, "protocol" => Protocol::Socks5.label(), "verb" => SOCKS5_WAITER, "outcome" => "ok")
                    .increment(1);
                return Some(entered.wait(stream, slot, request.early));
            }
            Enrolment::Refused(condition, text, leftover) => {
                Protocol::Socks5
                    .refuse_registrant(stream, condition, text)
                    .await;
                drop(leftover);
                return None;
            }
            // Another connection registered a moment ago: claim it.
            Enrolment::Taken(Here::Local, _) => {}
            // Another node's waiter has this hash: claim it there.
            Enrolment::Taken(Here::Elsewhere, leftover) => {
                drop(leftover);
                match locate(&node, &id, request.client, None, false, LaneAt::Activated).await {
                    Located::Bridged(bridge, share) => {
                        claimed_elsewhere(node, stream, slot, request, hash, bridge, share).await;
                        return None;
                    }
                    // Gone since: look again (it may be this connection's
                    // turn to register).
                    Located::Unknown => {}
                    // Ours: its removal is on its way, or a pair of it runs here.
                    Located::Ours => {
                        if node.activations.contains(&id) {
                            refuse_requester(stream, ReplyCode::NotAllowed).await;
                            return None;
                        }
                        tokio::task::yield_now().await;
                    }
                    // Claimed already (this is a third connection), or its
                    // waiter left.
                    Located::Gone => {
                        debug!(registration = %id, "no SOCKS5 target to claim on its node");
                        refuse_requester(stream, ReplyCode::NotAllowed).await;
                        return None;
                    }
                    Located::Refused(..) => {
                        refuse_requester(stream, ReplyCode::GeneralFailure).await;
                        return None;
                    }
                }
            }
        }
    }
    refuse_requester(stream, ReplyCode::GeneralFailure).await;
    None
}

/// The requester, on the node holding its waiter: enters the pair in the
/// activation table and hands the requester to the waiter's task, which
/// answers it.
async fn claim_here(
    node: &Node,
    taken: Taken<Claim>,
    stream: TcpStream,
    slot: Slot,
    request: Request,
    hash: StreamHash,
) {
    let id = request.id;
    let Some(ticket) = node.activations.pair(id, taken.record_expires) else {
        // A waiter registered while the previous pair of this hash still
        // runs: not one we can pair (dropping `tx` cuts that waiter too).
        refuse_requester(stream, ReplyCode::NotAllowed).await;
        return;
    };
    let requester = LocalClaim {
        stream,
        early: request.early,
        slot,
        received: request.received,
        client: request.client.ip(),
        protocol: Protocol::Socks5,
    };
    let claim = Claim::Socks5(Box::new(Socks5Claim {
        requester: Requester::Local(requester, hash),
        ticket,
    }));
    if let Err(Claim::Socks5(pair)) = taken.tx.send(claim)
        && let Requester::Local(requester, _) = pair.requester
    {
        // The waiter's task ended in the meantime.
        refuse_requester(requester.stream, ReplyCode::GeneralFailure).await;
    }
}

/// The requester, claimed on its waiter's node through a Bridge, which
/// said `paired`: it gets its success reply, and its side waits in a task
/// of its own for `activated`.
async fn claimed_elsewhere(
    node: Arc<Node>,
    stream: TcpStream,
    slot: Slot,
    request: Request,
    hash: StreamHash,
    bridge: Box<dtcp_forward::Halves>,
    share: SessionGuard,
) {
    // From the success reply on, a cut is a reset.
    dtcp_duplex::reset_on_close(&stream);
    send_socks5_ok(&stream, &hash).await;
    session::counted_requester();
    // Pairing latency: from the request to the claim (as `session::awaiting`).
    node.hot
        .socks5_forwarded
        .pairing_latency
        .record(request.received.elapsed());
    // The owner cuts the pair at the SOCKS5 wait from its waiter's
    // registration, which came before this request, and says so: this
    // deadline is a backstop for an owner that never does.
    let deadline = request.received + node.config.socks5_wait() + BACKSTOP_MARGIN;
    let task = await_activation(node, stream, slot, request, bridge, deadline, share);
    tokio::spawn(task.in_current_span());
}

/// The requester's side on its own node, claimed by the waiter's owner:
/// waits for the owner's `activated` (or its giving up, or the requester
/// going), then joins the requester to the Bridge.
async fn await_activation(
    node: Arc<Node>,
    stream: TcpStream,
    slot: Slot,
    request: Request,
    mut bridge: Box<dtcp_forward::Halves>,
    deadline: Instant,
    share: SessionGuard,
) {
    let id = request.id;
    // Released when the pair ends, however it ends.
    let _share = share;
    let _tracked = node.sessions.token();
    enum Waited {
        Activated(bytes::Bytes),
        Cut(&'static str),
        RequesterGone,
    }
    let waited = tokio::select! {
        biased;
        frame = bridge.inbound.next() => match frame {
            Ok(Some(Kind::Activated(a))) => Waited::Activated(a.lane_token),
            _ => Waited::Cut("the target's node ended the pair"),
        },
        () = node.stop.cancelled() => Waited::Cut(SHUTTING_DOWN),
        () = sleep_until(deadline) => Waited::Cut("not activated within the SOCKS5 activation timeout"),
        () = poll_fn(|cx| socket::poll_gone_unread(&stream, cx)) => Waited::RequesterGone,
    };
    match waited {
        Waited::Activated(lane_token) => {
            debug!(registration = %id, "SOCKS5 pair activated (target on another node)");
            let Some(stream) = socket::rearm(stream) else {
                return;
            };
            // The owner may offer a lane now: it is dialed here, one round
            // trip after an activation that took an XMPP exchange.
            bridge.take_activation_offer(&lane_token).await;
            forwarded::run_claimant_side(
                node,
                stream,
                slot,
                id,
                request.early,
                request.received,
                bridge,
                request.client.ip(),
                Protocol::Socks5,
            )
            .await;
        }
        Waited::Cut(why) => {
            debug!(registration = %id, why, "SOCKS5 pair cut before activation");
            socket::reset(stream);
        }
        Waited::RequesterGone => {
            debug!(registration = %id, "SOCKS5 requester hung up before activation");
            bridge
                .outbound
                .try_send(dtcp_forward::proto::Frame::reset("the requester hung up"));
            socket::reset(stream);
        }
    }
}
