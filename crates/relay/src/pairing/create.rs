//! The side that registers (a DTCP `CREATE`, or the first SOCKS5 connection
//! of a stream hash): into the local pending table, then into the store;
//! then the wait for a claim, and what follows it. Where the protocols
//! differ, the client's [`Protocol`] says how (`dialect.rs`).
//!
//! Registering ([`enrol`]) never takes the socket: it answers how it went,
//! and the caller, which keeps the connection, answers the client. For a
//! `CREATE` that is [`register`]; the XEP-0065 arrival enrols its first
//! connection the same way, and claims when a registration of its stream
//! hash is there already.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use dtcp_wire::{Condition, RegistrationId};
use metrics::counter;
use pin_project_lite::pin_project;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, warn};

use crate::claim::Claim;
use crate::limits::{IpGuard, Slot};
use crate::metrics::{AUTH_FAILURES, CONNECTIONS_REFUSED};
use crate::node::{Node, SHUTTING_DOWN};
use crate::pairing::early::Held;
use crate::pairing::locate::REUSED;
use crate::pairing::record::StoreRecord;
use crate::pairing::request::Request;
use crate::pending::{InsertError, Ticket};
use crate::protocol::Protocol;
use crate::session;

/// The text of a refused duplicate.
const CONFLICT: &str = "a CREATE with the same key and JIDs is already pending";
/// The text of a refusal at the per-address pending limit.
const TOO_MANY: &str = "too many pending sessions from this address";
/// How long a cluster-wide count outlives the pending TTL of the CREATE
/// that raised it last, should its node die without lowering it.
const SOURCE_COUNT_MARGIN: Duration = Duration::from_secs(30);

/// What admitted a registering connection, kept until its session ends:
/// its connection slot, and the token a draining node waits for.
#[derive(Debug)]
pub(crate) struct Admission {
    _slot: Slot,
    _tracked: TaskTrackerToken,
}

/// A registration pending: what its connection task keeps, and its wait.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Kept until the session ends.
    pub(crate) admission: Admission,
    /// The wait for a claim.
    pub(crate) wait: Wait,
}

/// How [`enrol`] went.
#[derive(Debug)]
pub(crate) enum Enrolment {
    /// In the pending table, and in the store unless a claim came first:
    /// answer the client if its protocol does so now, then [`Entered::wait`].
    Pending(Entered),
    /// A registration of this id is there already: nothing of this one
    /// stays, once its client is answered (or claims).
    Taken(Here, Leftover),
    /// Refused: answer the client this, then let go of what it held.
    Refused(Condition, &'static str, Leftover),
}

/// Where [`Enrolment::Taken`] found the registration already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Here {
    /// In this node's pending table.
    Local,
    /// In the store, registered by another node.
    Elsewhere,
}

/// A registration entered in the pending table (and counted against its
/// client's address), not waiting yet.
#[derive(Debug)]
pub(crate) struct Entered {
    protocol: Protocol,
    held: Held,
    per_ip: IpGuard,
    ticket: Ticket<Claim>,
    record: StoreRecord,
    tracked: TaskTrackerToken,
}

/// What a registration that is not pending still holds until its client is
/// answered (so a draining node waits for the answer, and the address stays
/// counted until then); dropped after the answer.
#[derive(Debug, Default)]
pub(crate) struct Leftover {
    _per_ip: Option<IpGuard>,
    _entered: Option<Entered>,
}

/// What keeps a registration entered in the table from waiting.
enum Stop {
    /// Refused with this.
    Refused(Condition, &'static str),
    /// Another node registered its id first.
    Taken,
}

/// Registers a `CREATE`: one with the same key and JIDs already there, on
/// this node or another, is a conflict.
pub(crate) async fn register(
    node: Arc<Node>,
    stream: TcpStream,
    slot: Slot,
    request: Request,
) -> Option<Pending> {
    let protocol = request.role.protocol();
    let (condition, text, leftover) = match enrol(&node, &stream, &request).await {
        Enrolment::Pending(entered) => return Some(entered.wait(stream, slot, request.early)),
        Enrolment::Taken(_, leftover) => (Condition::Conflict, CONFLICT, leftover),
        Enrolment::Refused(condition, text, leftover) => (condition, text, leftover),
    };
    protocol.refuse_registrant(stream, condition, text).await;
    drop(leftover);
    None
}

/// Enters `request` in the pending table and the store, the client's
/// socket readied for its wait ([`Protocol::hold`]).
pub(crate) async fn enrol(node: &Arc<Node>, stream: &TcpStream, request: &Request) -> Enrolment {
    let protocol = request.role.protocol();
    // An address at its share of sessions could not pair anyway.
    if node.per_address.sessions_full(request.client.ip()) {
        counter!(CONNECTIONS_REFUSED, "reason" => "per_ip_sessions").increment(1);
        let text = session::TOO_MANY_SESSIONS;
        return Enrolment::Refused(Condition::ResourceConstraint, text, Leftover::default());
    }
    // From here on nothing more is read from the client until it is paired.
    let held = protocol.hold(stream);
    let Some(mut per_ip) = node.per_ip.acquire(request.client.ip()) else {
        return Enrolment::Refused(Condition::ResourceConstraint, TOO_MANY, Leftover::default());
    };
    let id = request.id;
    let ticket = match node.pending.insert(id, protocol) {
        Ok(ticket) => ticket,
        Err(error) => {
            let leftover = Leftover {
                _per_ip: Some(per_ip),
                _entered: None,
            };
            return match error {
                InsertError::Conflict => Enrolment::Taken(Here::Local, leftover),
                InsertError::Closed => {
                    Enrolment::Refused(Condition::ShuttingDown, SHUTTING_DOWN, leftover)
                }
            };
        }
    };
    // Held until the session ends, so a draining node waits for it.
    let tracked = node.sessions.token();
    let mut record = StoreRecord::new(node.clone(), id, request.key_expiry);
    let ttl = node.config.pending_ttl;
    let registering = node.store.register(&id, record.owner(), ttl);
    // `None`: not counted in the store, nothing to uncount there.
    let (registered, counted) = if node.cluster && per_ip.needs_store_count() {
        // Past this node's share of the address's limit, the cluster-wide
        // count goes out beside the registration, on the store's one
        // multiplexed connection: it costs more commands, not a second
        // round trip. Within the share (the common case) it costs nothing.
        let counting = node.store.count_source(
            per_ip.key(),
            per_ip.entry(),
            node.per_ip.store_max(),
            ttl + SOURCE_COUNT_MARGIN,
        );
        let (registered, counted) = tokio::join!(registering, counting);
        (registered, Some(counted))
    } else {
        (registering.await, None)
    };
    let over_cluster_limit = match counted {
        None => false,
        Some(Ok(true)) => {
            per_ip.counted_in_store();
            false
        }
        Some(Ok(false)) => true,
        // The store is down: the limit holds on this node alone.
        Some(Err(e)) => {
            warn!(registration = %id, error = %e, "store count failed; the per-node limit holds");
            // Redis may have counted it all the same (a reply lost): an
            // entry uncounted that is not there is nothing, so uncount it
            // on drop rather than leave it to expire.
            per_ip.counted_in_store();
            false
        }
    };
    let stop = match registered {
        Ok(true) => {
            // Ours to remove, whatever follows.
            record.written();
            over_cluster_limit.then_some(Stop::Refused(Condition::ResourceConstraint, TOO_MANY))
        }
        Ok(false) if request.key_expiry.is_some() && used(node, &id).await => {
            counter!(AUTH_FAILURES, "reason" => "reused").increment(1);
            Some(Stop::Refused(Condition::Forbidden, REUSED))
        }
        // Another node registered this id.
        Ok(false) => Some(Stop::Taken),
        Err(e) => {
            warn!(registration = %id, error = %e, "store register failed");
            let text = "the rendezvous store is unavailable";
            Some(Stop::Refused(Condition::Unavailable, text))
        }
    };
    let entered = Entered {
        protocol,
        held,
        per_ip,
        ticket,
        record,
        tracked,
    };
    if let Some(stop) = stop {
        if node.pending.withdraw(&id, entered.ticket.token) {
            let leftover = Leftover {
                _per_ip: None,
                _entered: Some(entered),
            };
            return match stop {
                Stop::Refused(condition, text) => Enrolment::Refused(condition, text, leftover),
                Stop::Taken => Enrolment::Taken(Here::Elsewhere, leftover),
            };
        }
        // A claim came meanwhile: pair with it.
    } else {
        // The TTL is counted from the write, a moment before `since`: a
        // rewrite then errs on the short side.
        let expires = Instant::now() + node.config.pending_ttl;
        node.pending.recorded(&id, entered.ticket.token, expires);
        node.pending.notify(&id);
    }
    debug!(registration = %id, protocol = protocol.label(), "pending");
    Enrolment::Pending(entered)
}

impl Entered {
    /// The wait of this registration, its client answered (if its protocol
    /// answers a registration): `stream` and what the handshake read behind
    /// it wait for the claim, `slot` for the session's end.
    pub(crate) fn wait(self, stream: TcpStream, slot: Slot, early: BytesMut) -> Pending {
        let Entered {
            protocol,
            held,
            per_ip,
            ticket,
            record,
            tracked,
        } = self;
        let since = Instant::now();
        let admission = Admission {
            _slot: slot,
            _tracked: tracked,
        };
        let wait = Wait {
            // A XEP-0065 waiter waits the (shorter) SOCKS5 wait.
            expiry: sleep_until(since + record.node.pending_wait(protocol)),
            registrant: Some(Registrant {
                stream,
                early,
                held,
                ticket,
                record,
                per_ip,
                since,
                protocol,
            }),
        };
        Pending { admission, wait }
    }
}

pin_project! {
    /// A pending registration's wait, for: its claim, the pending TTL, the
    /// node shutting down (which closes the pending table, and so the
    /// ticket's channel), or the client hanging up.
    ///
    /// Written by hand, not as an `async` block: this is the state of every
    /// pending CREATE, and it keeps only what the wait needs.
    #[derive(Debug)]
    pub(crate) struct Wait {
        #[pin]
        expiry: Sleep,
        // Taken when the wait ends.
        registrant: Option<Registrant>,
    }
}

/// What a pending registration keeps while it waits.
#[derive(Debug)]
pub(crate) struct Registrant {
    stream: TcpStream,
    /// What the handshake read behind the command; the rest waits in the kernel.
    early: BytesMut,
    /// The receive buffer to give back at the pairing.
    held: Held,
    ticket: Ticket<Claim>,
    record: StoreRecord,
    per_ip: IpGuard,
    since: Instant,
    /// What the client speaks: how it is watched and answered.
    protocol: Protocol,
}

/// Why a pending registration stopped waiting without a claim.
#[derive(Debug)]
pub(crate) enum Unclaimed {
    /// The client closed its connection.
    HungUp,
    /// The pending TTL ran out: close the client with this.
    Expired(Condition, &'static str),
    /// The ticket's channel closed unsent (the table was closed, or a
    /// claimant gave up): close the client with this. No claim can follow.
    Dropped(Condition, &'static str),
}

impl Wait {
    /// Polls the wait; once it ends, gives back what it kept and why.
    pub(crate) fn poll_wait(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<(Registrant, Result<Claim, Unclaimed>)> {
        let this = self.project();
        let r = this
            .registrant
            .as_mut()
            .expect("a pending registration polled after its wait");
        let waited = if let Poll::Ready(claim) = Pin::new(&mut r.ticket.rx).poll(cx) {
            claim.map_err(|_| {
                if r.record.node.pending.is_closed() {
                    Unclaimed::Dropped(Condition::ShuttingDown, SHUTTING_DOWN)
                } else {
                    // The claimant dropped its half unsent, so nothing can pair us now.
                    Unclaimed::Dropped(Condition::Unavailable, "pairing failed")
                }
            })
        } else if this.expiry.poll(cx).is_ready() {
            let text = "no CONNECT within the pending TTL";
            Err(Unclaimed::Expired(Condition::Timeout, text))
        } else if r.protocol.poll_gone(&r.stream, cx).is_ready() {
            Err(Unclaimed::HungUp)
        } else {
            return Poll::Pending;
        };
        let registrant = this.registrant.take().expect("checked above");
        Poll::Ready((registrant, waited))
    }
}

/// What follows a pending registration's wait: the session, or its end.
pub(crate) fn finish(
    registrant: Registrant,
    waited: Result<Claim, Unclaimed>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let claim = match waited {
        Ok(claim) => claim,
        Err(unclaimed) => return Box::pin(give_up(registrant, unclaimed)),
    };
    let Registrant {
        stream,
        early,
        held,
        ticket,
        mut record,
        per_ip,
        since,
        protocol,
    } = registrant;
    let Some(stream) = protocol.release(stream, held) else {
        return Box::pin(session::abandon(claim));
    };
    record.paired();
    let (node, id) = (record.node.clone(), record.id);
    drop(ticket);
    let waited = since.elapsed();
    protocol.start_session(node, stream, early, claim, id, waited, per_ip, record)
}

/// A pending registration that stopped waiting without a claim: withdraws
/// it, unless a claim got there first and is in the channel.
async fn give_up(registrant: Registrant, unclaimed: Unclaimed) {
    let Registrant {
        stream,
        early,
        held,
        mut ticket,
        record,
        per_ip,
        since,
        protocol,
    } = registrant;
    // A late claim's session counts the client's address itself.
    let client = per_ip.ip();
    drop(per_ip);
    let (node, id) = (record.node.clone(), record.id);
    // A channel that has closed must not be polled again.
    let closed = matches!(unclaimed, Unclaimed::Dropped(..));
    let late = if closed || node.pending.withdraw(&id, ticket.token) {
        None
    } else {
        (&mut ticket.rx).await.ok()
    };
    match (late, unclaimed) {
        (Some(claim), Unclaimed::Expired(..) | Unclaimed::Dropped(..)) => {
            let Some(stream) = protocol.release(stream, held) else {
                return session::abandon(claim).await;
            };
            let mut record = record;
            record.paired();
            drop((record, ticket));
            session::start(node, stream, early, claim, id, since.elapsed(), client).await;
        }
        (Some(claim), Unclaimed::HungUp) => session::abandon(claim).await,
        (None, Unclaimed::HungUp) => protocol.hung_up_unclaimed(id),
        (None, Unclaimed::Expired(condition, text) | Unclaimed::Dropped(condition, text)) => {
            drop(record);
            protocol.close_unclaimed(stream, id, condition, text).await;
        }
    }
}

/// Whether the store holds `id` as a used signed key (asked only once a
/// register found `id` taken: a pairing costs no extra round trip).
async fn used(node: &Node, id: &RegistrationId) -> bool {
    matches!(node.store.lookup(id).await, Ok(Some(owner)) if owner.is_used())
}
