//! XEP-0065 mode's pairing (docs/PROTOCOL.md section 6): the first SOCKS5
//! connection with a stream hash is the bytestream's Target and registers,
//! like a `CREATE`; the second is its requester and claims it, like a
//! `CONNECT` (on this node, or through a Bridge to the node that holds the
//! Target); a third is refused `02`. The claim pairs the two without
//! starting their session: that waits for the activation
//! ([`crate::activation`]).

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use dtcp_forward::proto::frame::Kind;
use dtcp_wire::socks5::{ReplyCode, StreamHash};
use metrics::counter;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tracing::{Instrument, debug, warn};

use crate::conn::Next;
use crate::conn::create::{self, Here, Registration};
use crate::conn::request::{Request, SOCKS5_REQUESTER};
use crate::limits::{SessionGuard, Slot};
use crate::metrics::CONNECTIONS_REFUSED;
use crate::node::Node;
use crate::pending::{Claim, LocalClaim, Requester, Socks5Claim, Taken};
use crate::protocol::Protocol;
use crate::reply::{Socks5Refusal, refuse_socks5, send_socks5_ok};
use crate::session::{self, forwarded};

/// How often a connection may find its hash's Target gone between looking
/// and claiming (it left, or another arrival was in the middle of
/// registering) and look again, before it is refused.
const ATTEMPTS: usize = 3;

/// How long after its own reckoning of the SOCKS5 wait a requester whose
/// Target is on another node still waits for that node's word: the owner
/// cuts an unactivated pair and tells this node, and a backstop that fired
/// at the same moment would race it (the pair would then look abandoned by
/// its requester rather than expired).
const BACKSTOP_MARGIN: Duration = Duration::from_secs(1);

/// Refuses a requester (or a third connection) with `code`.
async fn refuse(stream: TcpStream, code: ReplyCode) {
    refuse_socks5(stream, SOCKS5_REQUESTER, Socks5Refusal::Reply(code)).await;
}

/// Registers or claims a SOCKS5 connection by its stream hash.
pub(crate) async fn arrive(
    node: Arc<Node>,
    stream: TcpStream,
    slot: Slot,
    request: Request,
    hash: StreamHash,
) -> Next {
    let id = request.id;
    let (mut stream, mut slot, mut request) = (stream, slot, request);
    for _ in 0..ATTEMPTS {
        // A pair of this hash, waiting or running, is held here: this is a
        // third connection.
        if node.activations.contains(&id) {
            debug!(registration = %id, "a third SOCKS5 connection for this stream");
            refuse(stream, ReplyCode::NotAllowed).await;
            return Next::Done;
        }
        if let Some(taken) = node.pending.take_entry(&id) {
            claim_here(&node, taken, stream, slot, request, hash).await;
            return Next::Done;
        }
        match create::register(node.clone(), stream, slot, request).await {
            Registration::Pending(admission, wait) => return Next::Wait { admission, wait },
            Registration::Refused => return Next::Done,
            // Another connection registered a moment ago: claim it.
            Registration::Taken(s, sl, r, Here::Local) => (stream, slot, request) = (s, sl, r),
            Registration::Taken(s, sl, r, Here::Elsewhere) => {
                match claim_elsewhere(&node, s, sl, r, hash).await {
                    Some((s, sl, r)) => (stream, slot, request) = (s, sl, r),
                    None => return Next::Done,
                }
            }
        }
    }
    refuse(stream, ReplyCode::GeneralFailure).await;
    Next::Done
}

/// The requester, on the node holding its Target: enters the pair in the
/// activation table and hands the requester to the Target's task, which
/// answers it.
async fn claim_here(
    node: &Node,
    taken: Taken,
    stream: TcpStream,
    slot: Slot,
    request: Request,
    hash: StreamHash,
) {
    let id = request.id;
    let Some(ticket) = node.activations.pair(id, taken.record_expires) else {
        // A Target registered while the previous pair of this hash still
        // runs: not one we can pair (dropping `tx` cuts that Target too).
        refuse(stream, ReplyCode::NotAllowed).await;
        return;
    };
    let requester = LocalClaim {
        target: stream,
        early: request.early,
        slot,
        connect_started: request.received,
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
        // The Target's task ended in the meantime.
        refuse(requester.target, ReplyCode::GeneralFailure).await;
    }
}

/// The requester, when the store names another node as its Target's: a
/// Bridge to that node claims it there; once the owner says `paired`, the
/// requester gets its success reply, and its side waits in a task of its
/// own for `activated`. Gives the connection back when the Target is not
/// (or no longer) there, to look again.
async fn claim_elsewhere(
    node: &Arc<Node>,
    stream: TcpStream,
    slot: Slot,
    request: Request,
    hash: StreamHash,
) -> Option<(TcpStream, Slot, Request)> {
    let id = request.id;
    let owner = match node.store.lookup(&id).await {
        // Gone since: look again (it may be this connection's turn to register).
        Ok(None) => return Some((stream, slot, request)),
        Ok(Some(owner)) if owner.id == node.info.id => {
            // Ours: its removal is on its way, or a pair of it runs here.
            if node.activations.contains(&id) {
                refuse(stream, ReplyCode::NotAllowed).await;
                return None;
            }
            tokio::task::yield_now().await;
            return Some((stream, slot, request));
        }
        Ok(Some(owner)) => owner,
        Err(e) => {
            warn!(registration = %id, error = %e, "store lookup failed");
            refuse(stream, ReplyCode::GeneralFailure).await;
            return None;
        }
    };
    if !node.trust.verify_record(&id, &owner) {
        warn!(registration = %id, owner = %owner, "the store's record of this registration is not sealed by the cluster: not dialing it");
        refuse(stream, ReplyCode::GeneralFailure).await;
        return None;
    }
    // The requester's address takes part in one more session (its Target's
    // is counted by the owner), held until the pair ends.
    let Some(share) = node.per_address.session(request.client.ip(), None) else {
        counter!(CONNECTIONS_REFUSED, "reason" => "per_ip_sessions").increment(1);
        refuse(stream, ReplyCode::GeneralFailure).await;
        return None;
    };
    let bridge = match Box::pin(forwarded::open_bridge(node, &id, &owner, request.client)).await {
        Ok(bridge) => bridge,
        // Claimed already (this is a third connection), or its Target left.
        Err(forwarded::OpenError::NotFound) => {
            debug!(registration = %id, owner = %owner, "no SOCKS5 target to claim on its node");
            refuse(stream, ReplyCode::NotAllowed).await;
            return None;
        }
        Err(forwarded::OpenError::Refuse(..)) => {
            refuse(stream, ReplyCode::GeneralFailure).await;
            return None;
        }
    };
    // From the success reply on, a cut is a reset.
    dtcp_duplex::reset_on_close(&stream);
    send_socks5_ok(&stream, &hash).await;
    session::counted_requester();
    // Pairing latency: from the request to the claim (as `session::awaiting`).
    node.hot
        .socks5_forwarded
        .pairing_latency
        .record(request.received.elapsed());
    // The owner cuts the pair at the SOCKS5 wait from its Target's
    // registration, which came before this request, and says so: this
    // deadline is a backstop for an owner that never does.
    let deadline = request.received + node.config.socks5_wait() + BACKSTOP_MARGIN;
    let task = await_activation(node.clone(), stream, slot, request, bridge, deadline, share);
    tokio::spawn(task.in_current_span());
    None
}

/// The requester's side on its own node, claimed by the Target's owner:
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
    enum Woke {
        Activated,
        Cut(&'static str),
        RequesterGone,
    }
    let woke = tokio::select! {
        biased;
        frame = bridge.inbound.next() => match frame {
            Ok(Some(Kind::Activated(_))) => Woke::Activated,
            _ => Woke::Cut("the target's node ended the pair"),
        },
        () = node.stop.cancelled() => Woke::Cut("the relay is shutting down"),
        () = sleep_until(deadline) => Woke::Cut("not activated within the SOCKS5 activation timeout"),
        () = poll_fn(|cx| session::poll_gone_unread(&stream, cx)) => Woke::RequesterGone,
    };
    match woke {
        Woke::Activated => {
            debug!(registration = %id, "SOCKS5 pair activated (target on another node)");
            let Some(stream) = session::rearm(stream) else {
                return;
            };
            forwarded::run_target_side(
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
        Woke::Cut(why) => {
            debug!(registration = %id, why, "SOCKS5 pair cut before activation");
            session::reset(stream);
        }
        Woke::RequesterGone => {
            debug!(registration = %id, "SOCKS5 requester hung up before activation");
            bridge
                .outbound
                .try_send(dtcp_forward::proto::Frame::reset("the requester hung up"));
            session::reset(stream);
        }
    }
}
