//! The side that registers (a `CREATE`): into the local pending table, then
//! into the store; then the wait for a claim, and what follows it.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use dtcp_forward::proto::Frame;
use dtcp_wire::socks5::ReplyCode;
use dtcp_wire::{Condition, RegistrationId};
use metrics::counter;
use pin_project_lite::pin_project;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{Instrument, debug, warn};

use crate::claim::Claim;
use crate::conn::early::{self, Held, poll_hung_up};
use crate::conn::locate::REUSED;
use crate::conn::request::{Request, SOCKS5_TARGET, Side};
use crate::limits::{IpGuard, Slot};
use crate::metrics::{AUTH_FAILURES, COMMANDS, CONNECTIONS_REFUSED};
use crate::node::{Node, SHUTTING_DOWN};
use crate::pending::{InsertError, Ticket};
use crate::protocol::Protocol;
use crate::reply::{Socks5Refusal, refuse, refuse_socks5, send_socks5_ok};
use crate::session;
use crate::socket;

/// The `verb` label of this side.
const VERB: Option<&str> = Some("create");
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

/// How registering ended.
pub(crate) enum Registration {
    /// Pending: what the connection task keeps, and its wait.
    Pending(Pending),
    /// Refused, and answered.
    Refused,
    /// A SOCKS5 Target with this stream hash is already there (`Here`: in
    /// this node's pending table; otherwise the store names its node): this
    /// connection is its requester. Given back, unanswered.
    Taken(TcpStream, Slot, Request, Here),
}

/// Where [`Registration::Taken`] found the Target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Here {
    /// In this node's pending table.
    Local,
    /// In the store, registered by another node.
    Elsewhere,
}

/// Refuses a registering client in its own protocol: DTCP `ERROR`, or a
/// SOCKS5 reply (`02` for a conflict, `01` for everything else: SOCKS5 has
/// no finer code for a relay's trouble).
async fn decline(stream: TcpStream, protocol: Protocol, condition: Condition, text: &str) {
    match protocol {
        Protocol::Dtcp => refuse(stream, VERB, condition, text).await,
        Protocol::Socks5 => {
            let code = match condition {
                Condition::Conflict => ReplyCode::NotAllowed,
                _ => ReplyCode::GeneralFailure,
            };
            debug!(
                condition = condition.as_str(),
                text, "SOCKS5 target refused"
            );
            refuse_socks5(stream, SOCKS5_TARGET, Socks5Refusal::Reply(code)).await;
        }
    }
}

/// Registers a `CREATE`, or the first SOCKS5 connection of a stream hash.
pub(crate) async fn register(
    node: Arc<Node>,
    stream: TcpStream,
    slot: Slot,
    request: Request,
) -> Registration {
    let protocol = request.side.protocol();
    // An address at its share of sessions could not pair anyway.
    if node.per_address.sessions_full(request.client.ip()) {
        counter!(CONNECTIONS_REFUSED, "reason" => "per_ip_sessions").increment(1);
        let text = session::TOO_MANY_SESSIONS;
        decline(stream, protocol, Condition::ResourceConstraint, text).await;
        return Registration::Refused;
    }
    // From here on nothing more is read from a DTCP Initiator until it is
    // paired (a XEP-0065 Target is never read before its activation).
    let held = match protocol {
        Protocol::Dtcp => early::hold(&stream),
        Protocol::Socks5 => Held::NOTHING,
    };
    let Some(mut per_ip) = node.per_ip.acquire(request.client.ip()) else {
        decline(stream, protocol, Condition::ResourceConstraint, TOO_MANY).await;
        return Registration::Refused;
    };
    let id = request.id;
    let ticket = match node.pending.insert(id, protocol) {
        Ok(ticket) => ticket,
        Err(InsertError::Conflict) if protocol == Protocol::Socks5 => {
            return Registration::Taken(stream, slot, request, Here::Local);
        }
        Err(InsertError::Conflict) => {
            refuse(stream, VERB, Condition::Conflict, CONFLICT).await;
            return Registration::Refused;
        }
        Err(InsertError::Closed) => {
            decline(stream, protocol, Condition::ShuttingDown, SHUTTING_DOWN).await;
            return Registration::Refused;
        }
    };
    // Held until the session ends, so a draining node waits for it.
    let tracked = node.sessions.token();
    let mut record = StoreRecord {
        node: node.clone(),
        id,
        // On a secure plane the record carries the cluster's seal.
        sealed: node.trust.sealed(&id, &node.info).map(Box::new),
        armed: false,
        paired: false,
        key_expiry: request.key_expiry.unwrap_or(0),
        protocol,
    };
    let key_expiry = request.key_expiry;
    let ttl = node.config.pending_ttl;
    let registering = node.store.register(&id, record.owner(), ttl);
    let (registered, counted) = if node.cluster {
        // The cluster-wide count of this address goes out beside the
        // registration, on the store's one multiplexed connection: it costs
        // a second command, not a second round trip.
        let counting = node.store.count_source(
            per_ip.key(),
            per_ip.entry(),
            node.per_ip.max,
            ttl + SOURCE_COUNT_MARGIN,
        );
        let (registered, counted) = tokio::join!(registering, counting);
        (registered, counted)
    } else {
        (registering.await, Ok(true))
    };
    let over_cluster_limit = match counted {
        Ok(true) => {
            per_ip.counted_in_store();
            false
        }
        Ok(false) => true,
        // The store is down: the limit holds on this node alone.
        Err(e) => {
            warn!(registration = %id, error = %e, "store count failed; the per-node limit holds");
            // Redis may have counted it all the same (a reply lost): an
            // entry uncounted that is not there is nothing, so uncount it
            // on drop rather than leave it to expire.
            per_ip.counted_in_store();
            false
        }
    };
    let refusal = match registered {
        Ok(true) => {
            // Ours to remove, whatever follows.
            record.armed = true;
            over_cluster_limit.then_some((Condition::ResourceConstraint, TOO_MANY))
        }
        Ok(false) if key_expiry.is_some() && used(&node, &id).await => {
            counter!(AUTH_FAILURES, "reason" => "reused").increment(1);
            Some((Condition::Forbidden, REUSED))
        }
        // Another node's SOCKS5 Target has this hash: claim it there.
        Ok(false) if protocol == Protocol::Socks5 => {
            if node.pending.withdraw(&id, ticket.token) {
                drop((record, per_ip));
                return Registration::Taken(stream, slot, request, Here::Elsewhere);
            }
            // A local connection claimed it meanwhile: pair with it.
            None
        }
        Ok(false) => Some((Condition::Conflict, CONFLICT)),
        Err(e) => {
            warn!(registration = %id, error = %e, "store register failed");
            let text = "the rendezvous store is unavailable";
            Some((Condition::Unavailable, text))
        }
    };
    if let Some((condition, text)) = refusal {
        if node.pending.withdraw(&id, ticket.token) {
            decline(stream, protocol, condition, text).await;
            return Registration::Refused;
        }
        // A local CONNECT claimed it meanwhile: pair anyway.
    } else {
        // The TTL is counted from the write, a moment before `since`: a
        // rewrite then errs on the short side.
        let expires = Instant::now() + node.config.pending_ttl;
        node.pending.recorded(&id, ticket.token, expires);
        node.pending.notify(&id);
    }
    debug!(registration = %id, protocol = protocol.label(), "pending");
    if let Side::Arrive(hash) = request.side {
        // XEP-0065: the Target has its success reply at once; nothing is
        // read from it until its pair is activated.
        send_socks5_ok(&stream, &hash).await;
        counter!(COMMANDS, "protocol" => protocol.label(), "verb" => SOCKS5_TARGET, "outcome" => "ok")
            .increment(1);
    }

    let since = Instant::now();
    let admission = Admission {
        _slot: slot,
        _tracked: tracked,
    };
    let wait = Wait {
        // A SOCKS5 Target waits the (shorter) SOCKS5 wait.
        expiry: sleep_until(since + node.pending_wait(protocol)),
        registered: Some(Registered {
            stream,
            early: request.early,
            held,
            ticket,
            record,
            _per_ip: per_ip,
            since,
        }),
    };
    Registration::Pending(Pending { admission, wait })
}

pin_project! {
    /// A pending CREATE's wait, for: its claim, the pending TTL, the node
    /// shutting down (which closes the pending table, and so the ticket's
    /// channel), or the Initiator sending early bytes or hanging up.
    ///
    /// Written by hand, not as an `async` block: this is the state of every
    /// pending CREATE, and it keeps only what the wait needs.
    #[derive(Debug)]
    pub(crate) struct Wait {
        #[pin]
        expiry: Sleep,
        // Taken when the wait ends.
        registered: Option<Registered>,
    }
}

/// What a pending CREATE keeps while it waits.
#[derive(Debug)]
pub(crate) struct Registered {
    stream: TcpStream,
    /// What the handshake read behind the command; the rest waits in the kernel.
    early: BytesMut,
    /// The receive buffer to give back at the pairing.
    held: Held,
    ticket: Ticket<Claim>,
    record: StoreRecord,
    _per_ip: IpGuard,
    since: Instant,
}

/// Why a pending CREATE stopped waiting without a claim.
#[derive(Debug)]
pub(crate) enum Unclaimed {
    /// The Initiator closed its connection.
    HungUp,
    /// Answer the Initiator this.
    Refuse(Condition, &'static str),
    /// The ticket's channel closed unsent (the table was closed, or a
    /// claimant gave up): answer the Initiator this. No claim can follow.
    Dropped(Condition, &'static str),
}

impl Wait {
    /// Polls the wait; once it ends, gives back what it kept and why.
    pub(crate) fn poll_wait(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<(Registered, Result<Claim, Unclaimed>)> {
        let this = self.project();
        let r = this
            .registered
            .as_mut()
            .expect("a pending CREATE polled after its wait");
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
            Err(Unclaimed::Refuse(Condition::Timeout, text))
        } else if r.record.protocol == Protocol::Socks5 {
            // Nothing is read before activation: the bytes wait in the kernel.
            if socket::poll_gone_unread(&r.stream, cx).is_ready() {
                Err(Unclaimed::HungUp)
            } else {
                return Poll::Pending;
            }
        } else if poll_hung_up(&r.stream, cx).is_ready() {
            Err(Unclaimed::HungUp)
        } else {
            return Poll::Pending;
        };
        let registered = this.registered.take().expect("checked above");
        Poll::Ready((registered, waited))
    }
}

/// What follows a pending CREATE's wait: the session, or a refusal.
pub(crate) fn finish(
    registered: Registered,
    waited: Result<Claim, Unclaimed>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let Registered {
        stream,
        early,
        held,
        ticket,
        record,
        _per_ip,
        since,
    } = registered;
    match waited {
        Ok(claim) => {
            let Some(stream) = paired(stream, held, record.protocol) else {
                return Box::pin(abandon_claim(claim));
            };
            let mut record = record;
            record.paired = true;
            let (node, id, client) = (record.node.clone(), record.id, _per_ip.ip());
            let mut claim = claim;
            match &mut claim {
                // A XEP-0065 pair stays counted against its Target's
                // address until its activation.
                Claim::Socks5(pair) => pair.ticket.count_against(_per_ip),
                _ => drop(_per_ip),
            }
            drop(ticket);
            let session = session::start(node, stream, early, claim, id, since.elapsed(), client);
            if record.protocol == Protocol::Socks5 {
                // The record stays until the pair ends: an activation on any
                // node finds this owner through it, and a third connection
                // on any node is told `02`.
                return Box::pin(async move {
                    session.await;
                    drop(record);
                });
            }
            drop(record);
            session
        }
        Err(unclaimed) => {
            let client = _per_ip.ip();
            Box::pin(give_up(
                stream, early, held, ticket, record, since, unclaimed, client,
            ))
        }
    }
}

/// The Initiator of a claimed registration, ready for its session: a DTCP
/// Initiator's wait released ([`early::release`]); a XEP-0065 Target stays
/// unread until its activation. `None` if the socket could not be kept.
fn paired(stream: TcpStream, held: Held, protocol: Protocol) -> Option<TcpStream> {
    match protocol {
        Protocol::Dtcp => early::release(stream, held),
        Protocol::Socks5 => Some(stream),
    }
}

/// A claim that cannot be served because its Initiator is gone: its
/// claimant is told.
async fn abandon_claim(claim: Claim) {
    let text = "the initiator hung up";
    match claim {
        Claim::Local(c) => refuse(c.target, Some("connect"), Condition::NotFound, text).await,
        Claim::Remote(r) => r.outbound.try_send(Frame::error(Condition::NotFound, text)),
        Claim::Socks5(c) => session::abandon(*c, "the target hung up"),
    }
}

/// A pending CREATE that stopped waiting without a claim: withdraws it,
/// unless a claim got there first and is in the channel.
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of a Registered, moved out of it one by one"
)]
async fn give_up(
    stream: TcpStream,
    early: BytesMut,
    held: Held,
    mut ticket: Ticket<Claim>,
    record: StoreRecord,
    since: Instant,
    unclaimed: Unclaimed,
    client: IpAddr,
) {
    let (node, id) = (record.node.clone(), record.id);
    // A channel that has closed must not be polled again.
    let closed = matches!(unclaimed, Unclaimed::Dropped(..));
    let late = if closed || node.pending.withdraw(&id, ticket.token) {
        None
    } else {
        (&mut ticket.rx).await.ok()
    };
    match (late, unclaimed) {
        (Some(claim), Unclaimed::Refuse(..) | Unclaimed::Dropped(..)) => {
            let Some(stream) = paired(stream, held, record.protocol) else {
                return abandon_claim(claim).await;
            };
            let mut record = record;
            record.paired = true;
            drop((record, ticket));
            session::start(node, stream, early, claim, id, since.elapsed(), client).await;
        }
        (Some(claim), Unclaimed::HungUp) => abandon_claim(claim).await,
        (None, Unclaimed::HungUp) if record.protocol == Protocol::Socks5 => {
            debug!(registration = %id, "SOCKS5 target hung up while pending");
        }
        (None, Unclaimed::HungUp) => {
            debug!(registration = %id, "initiator hung up while pending");
            counter!(COMMANDS, "verb" => "create", "outcome" => "abandoned").increment(1);
        }
        (None, Unclaimed::Refuse(_, text) | Unclaimed::Dropped(_, text))
            if record.protocol == Protocol::Socks5 =>
        {
            // It has its success reply: a cut is a reset.
            debug!(registration = %id, why = text, "SOCKS5 target closed unpaired");
            drop(record);
            socket::reset(stream);
        }
        (None, Unclaimed::Refuse(condition, text) | Unclaimed::Dropped(condition, text)) => {
            drop(record);
            refuse(stream, VERB, condition, text).await;
        }
    }
}

/// Whether the store holds `id` as a used signed key (asked only once a
/// register found `id` taken: a pairing costs no extra round trip).
async fn used(node: &Node, id: &RegistrationId) -> bool {
    matches!(node.store.lookup(id).await, Ok(Some(owner)) if owner.is_used())
}

/// This node's store record of a registration: removed when dropped, or,
/// for a signed key that paired, left as a used marker until the key expires.
#[derive(Debug)]
struct StoreRecord {
    node: Arc<Node>,
    id: RegistrationId,
    /// The record as written on a secure plane (with its seal); boxed, as
    /// every pending CREATE keeps it.
    sealed: Option<Box<dtcp_store::NodeInfo>>,
    /// Whether the record was written (and so is ours to remove).
    armed: bool,
    /// Whether the registration paired.
    paired: bool,
    /// A signed key's expiry (Unix seconds), or 0.
    key_expiry: u64,
    /// What the registering client speaks.
    protocol: Protocol,
}

impl StoreRecord {
    /// The owner as the record names it.
    fn owner(&self) -> &dtcp_store::NodeInfo {
        self.sealed.as_deref().unwrap_or(&self.node.info)
    }
}

impl Drop for StoreRecord {
    fn drop(&mut self) {
        if self.armed {
            let (node, id) = (self.node.clone(), self.id);
            let owner = self.sealed.take();
            let now = crate::trust::unix_now();
            // A signed key that paired stays void until it expires.
            let retire = (self.paired && self.key_expiry > now)
                .then(|| Duration::from_secs(self.key_expiry - now));
            let mut remove = Box::pin(async move {
                let owner = owner.as_deref().unwrap_or(&node.info);
                let removed = match retire {
                    Some(keep) => node.store.retire_if_owner(&id, owner, keep).await,
                    None => node.store.remove_if_owner(&id, owner).await,
                };
                if let Err(e) = removed {
                    warn!(registration = %id, error = %e, "store remove failed; the record expires with its TTL");
                }
            });
            // The in-memory store of a lone node answers at once: no task for
            // that. Redis does not, and pairing does not wait for it: the rest
            // runs in a task of its own (which polls with its own waker).
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if remove.as_mut().poll(&mut cx).is_pending() {
                tokio::spawn(remove.in_current_span());
            }
        }
    }
}
