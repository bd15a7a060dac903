//! One client connection: the handshake, then CREATE or CONNECT, then (for
//! the task that holds the Initiator) the paired session.

use std::future::Future;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use dtcp_forward::proto::Frame;
use dtcp_forward::write_all;
use dtcp_wire::{
    Command, CommandDecoder, Condition, RegistrationId, Reply, Triple, Verb, WireError,
};
use metrics::counter;
use pin_project_lite::pin_project;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep, sleep_until, timeout};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, info, warn};

use crate::forwarded;
use crate::metrics::{COMMANDS, ERRORS, PathSeries};
use crate::node::Node;
use crate::pairing::{Claim, IpGuard, LocalClaim, Pending};
use crate::pump::{self, Pump};
use crate::server::Slot;

/// First allocation of the handshake buffer; it grows up to the command limit.
const HANDSHAKE_BUF: usize = 512;
/// Most bytes kept from a client before its session is paired. Past this the
/// relay stops reading (TCP pushes back) until pairing.
const EARLY_CAP: usize = 64 * 1024;
/// How long an `ERROR` reply may take to write.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// After an `ERROR`, how long the relay keeps reading (and discarding) what
/// the client still sends, so that closing does not turn into a reset that
/// could destroy the reply before the client has read it.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes discarded while lingering.
const LINGER_BYTES: usize = 64 * 1024;
/// How soon a waiting CONNECT first asks the shared store again (cluster
/// mode); the wait doubles up to [`STORE_POLL_MAX`]. A CONNECT usually comes
/// a moment after its CREATE, so the first looks are quick.
const STORE_POLL_MIN: Duration = Duration::from_millis(1);
/// The longest wait between two looks at the shared store.
const STORE_POLL_MAX: Duration = Duration::from_millis(100);

/// A boxed future of one phase of a connection.
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Serves one accepted connection to its end: the future of its task.
pub(crate) fn handle(
    node: Arc<Node>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
) -> Connection {
    Connection {
        held: None,
        phase: Phase::Start {
            fut: Box::pin(start(node, stream, peer, slot)),
        },
    }
}

pin_project! {
    /// A connection task's future.
    ///
    /// A task's memory is the size of its future's largest state, held for
    /// the task's whole life, and every pending CREATE and every idle
    /// session is one task. So the phases that come and go (the handshake,
    /// registering, a CONNECT, a refusal, the session) are each boxed, and
    /// only a pending CREATE's wait is inline, in a hand-written state that
    /// keeps just what the wait needs. `state_size` below keeps it small.
    pub(crate) struct Connection {
        // The Initiator's connection slot and drain token, from the wait to
        // the session's end.
        held: Option<Held>,
        #[pin]
        phase: Phase,
    }
}

pin_project! {
    #[project = PhaseProj]
    enum Phase {
        // The handshake, then a CREATE's registration or a whole CONNECT.
        Start { fut: BoxFuture<Next> },
        // A pending CREATE.
        Waiting { #[pin] wait: Waiting },
        // What follows the wait: the session, or a refusal.
        Finish { fut: BoxFuture<()> },
        Done,
    }
}

/// How the start of a connection ended.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once, then moved into the task's state, where a box would cost an allocation per pending CREATE"
)]
enum Next {
    /// Nothing more to do: refused, or a CONNECT handed over or served.
    Done,
    /// A CREATE is pending.
    Wait { held: Held, wait: Waiting },
}

/// What a pending CREATE holds until its session ends.
struct Held {
    _slot: Slot,
    /// A draining node waits for this.
    _tracked: TaskTrackerToken,
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            let next = match this.phase.as_mut().project() {
                PhaseProj::Start { fut } => match ready!(fut.as_mut().poll(cx)) {
                    Next::Done => Phase::Done,
                    Next::Wait { held, wait } => {
                        *this.held = Some(held);
                        Phase::Waiting { wait }
                    }
                },
                PhaseProj::Waiting { wait } => {
                    let (parked, waited) = ready!(wait.poll_wait(cx));
                    Phase::Finish {
                        fut: finish(parked, waited),
                    }
                }
                PhaseProj::Finish { fut } => {
                    ready!(fut.as_mut().poll(cx));
                    Phase::Done
                }
                PhaseProj::Done => {
                    *this.held = None;
                    return Poll::Ready(());
                }
            };
            this.phase.set(next);
        }
    }
}

/// The handshake, then the command.
async fn start(node: Arc<Node>, mut stream: TcpStream, peer: SocketAddr, slot: Slot) -> Next {
    let mut buf = BytesMut::with_capacity(HANDSHAKE_BUF);
    let read = read_command(&mut stream, &mut buf, &node);
    let command = match timeout(node.config.handshake_timeout, read).await {
        Ok(Ok(Some(command))) => command,
        Ok(Ok(None)) if buf.is_empty() => return Next::Done, // connected and left without a word
        Ok(Ok(None)) => {
            let text = "connection closed in the middle of a command";
            return refused(stream, "unknown", Condition::BadRequest, text).await;
        }
        Ok(Err(ReadError::Wire(e))) => {
            debug!(%peer, error = %e, "bad command");
            return refused(stream, "unknown", e.condition(), &e.to_string()).await;
        }
        Ok(Err(ReadError::Io(e))) => {
            debug!(%peer, error = %e, "read failed during handshake");
            return Next::Done;
        }
        Err(_) => {
            let text = "command not complete within the handshake timeout";
            return refused(stream, "unknown", Condition::Timeout, text).await;
        }
    };
    let started = Instant::now();
    let verb = command.verb.label();
    if node.drain.is_cancelled() {
        let text = "the relay is shutting down";
        return refused(stream, verb, Condition::ShuttingDown, text).await;
    }
    let (initiator, target) = (command.triple.initiator(), command.triple.target());
    if !node.config.allows(initiator, target) {
        let text = "neither JID's domain is served by this relay";
        return refused(stream, verb, Condition::Forbidden, text).await;
    }
    // Free the handshake buffer: keep only what came behind the command.
    let early = if buf.is_empty() {
        BytesMut::new()
    } else {
        BytesMut::from(&buf[..])
    };
    drop(buf);
    let Command { verb, triple } = command;
    match verb {
        Verb::Create => create(node, stream, peer, slot, triple, early).await,
        Verb::Connect => {
            connect(node, stream, slot, triple, early, started).await;
            Next::Done
        }
    }
}

/// [`refuse`], for a phase that ends with it.
async fn refused(stream: TcpStream, verb: &'static str, condition: Condition, text: &str) -> Next {
    refuse(stream, verb, condition, text).await;
    Next::Done
}

enum ReadError {
    Wire(WireError),
    Io(io::Error),
}

/// Reads until a command is complete (`Some`), the client closes (`None`), or
/// the bytes cannot become a command.
async fn read_command(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    node: &Node,
) -> Result<Option<Command>, ReadError> {
    let limits = node.config.limits();
    let mut decoder = CommandDecoder::new(limits);
    loop {
        if buf.len() == buf.capacity() {
            // Grow by doubling, never far past the command limit.
            let room = buf.len().clamp(HANDSHAKE_BUF, limits.max_command_len);
            buf.reserve(room);
        }
        if stream.read_buf(buf).await.map_err(ReadError::Io)? == 0 {
            return Ok(None);
        }
        if let Some(command) = decoder.decode(buf).map_err(ReadError::Wire)? {
            return Ok(Some(command));
        }
    }
}

/// Answers `ERROR` and closes the connection gracefully.
///
/// Boxed: refusing takes timers and buffers that would otherwise be part of
/// the state of every connection task, refused or not.
pub(crate) fn refuse<'a>(
    stream: TcpStream,
    verb: &'static str,
    condition: Condition,
    text: &'a str,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(refuse_now(stream, verb, condition, text))
}

async fn refuse_now(mut stream: TcpStream, verb: &'static str, condition: Condition, text: &str) {
    counter!(ERRORS, "condition" => condition.as_str()).increment(1);
    if !verb.is_empty() {
        counter!(COMMANDS, "verb" => verb, "outcome" => condition.as_str()).increment(1);
    }
    let reply = Reply::error(condition, text).to_vec();
    if timeout(REPLY_WRITE_TIMEOUT, stream.write_all(&reply))
        .await
        .is_err()
    {
        return;
    }
    let _ = stream.shutdown().await;
    let discard = async {
        // On the heap: this future is part of every connection task's state.
        let mut sink = vec![0u8; 1024];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = timeout(LINGER, discard).await;
}

/// What reading a waiting client's socket found.
enum Early {
    More,
    Closed,
}

/// Reads what a client sends before its session is paired.
fn read_early(stream: &TcpStream, early: &mut BytesMut) -> Early {
    early.reserve(4096.min(EARLY_CAP - early.len()));
    match stream.try_read_buf(early) {
        Ok(0) => Early::Closed,
        Ok(_) => Early::More,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Early::More,
        Err(_) => Early::Closed,
    }
}

/// Why a pending CREATE stopped waiting without a claim.
enum GiveUp {
    HungUp,
    Refuse(Condition, &'static str),
}

/// Registers a CREATE: in the local pending table, then in the store.
async fn create(
    node: Arc<Node>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    triple: Triple,
    early: BytesMut,
) -> Next {
    let id = triple.registration_id();
    drop(triple); // the key is not needed past this point
    let Some(per_ip) = node.per_ip.acquire(peer.ip()) else {
        let text = "too many pending sessions from this address";
        return refused(stream, "create", Condition::ResourceConstraint, text).await;
    };
    let Some(pending) = node.pending.insert(id) else {
        let text = "a CREATE with the same key and JIDs is already pending";
        return refused(stream, "create", Condition::Conflict, text).await;
    };
    // Held until the session ends, so a draining node waits for it.
    let tracked = node.sessions.token();
    let mut store = StoreGuard {
        node: node.clone(),
        id,
        armed: false,
    };
    let registered = node
        .store
        .register(&id, &node.info, node.config.pending_ttl)
        .await;
    let refusal = match registered {
        Ok(true) => {
            store.armed = true;
            None
        }
        Ok(false) => Some((
            Condition::Conflict,
            "a CREATE with the same key and JIDs is already pending",
        )),
        Err(e) => {
            warn!(registration = %id, error = %e, "store register failed");
            Some((
                Condition::Unavailable,
                "the rendezvous store is unavailable",
            ))
        }
    };
    if let Some((condition, text)) = refusal {
        if node.pending.withdraw(&id, pending.token) {
            return refused(stream, "create", condition, text).await;
        }
        // A local CONNECT claimed it meanwhile: pair anyway.
    } else {
        node.pending.notify(&id);
    }
    debug!(registration = %id, "pending");

    let since = Instant::now();
    // A lone node: nobody can claim a pending CREATE once it drains. In a
    // cluster other nodes still can, until the drain timeout (which always
    // comes after the drain), so one token is enough to watch.
    let give_up_on = if node.cluster {
        &node.stop
    } else {
        &node.drain
    };
    Next::Wait {
        held: Held {
            _slot: slot,
            _tracked: tracked,
        },
        wait: Waiting {
            expiry: sleep_until(since + node.config.pending_ttl),
            shutdown: give_up_on.clone().cancelled_owned(),
            parked: Some(Parked {
                stream,
                early,
                pending,
                store,
                _per_ip: per_ip,
                since,
            }),
        },
    }
}

pin_project! {
    /// A pending CREATE, waiting for: its claim, the pending TTL, the node
    /// shutting down, or the Initiator sending early bytes or hanging up.
    struct Waiting {
        #[pin]
        expiry: Sleep,
        #[pin]
        shutdown: WaitForCancellationFutureOwned,
        // Taken when the wait ends.
        parked: Option<Parked>,
    }
}

/// What a pending CREATE keeps while it waits.
struct Parked {
    stream: TcpStream,
    early: BytesMut,
    pending: Pending,
    store: StoreGuard,
    _per_ip: IpGuard,
    since: Instant,
}

impl Waiting {
    fn poll_wait(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<(Parked, Result<Claim, GiveUp>)> {
        let this = self.project();
        let p = this
            .parked
            .as_mut()
            .expect("a pending CREATE polled after its wait");
        let waited = if let Poll::Ready(claim) = Pin::new(&mut p.pending.rx).poll(cx) {
            // An error: the claimant dropped its half unsent, so nothing can pair us now.
            claim.map_err(|_| GiveUp::Refuse(Condition::Unavailable, "pairing failed"))
        } else if this.expiry.poll(cx).is_ready() {
            let text = "no CONNECT within the pending TTL";
            Err(GiveUp::Refuse(Condition::Timeout, text))
        } else if this.shutdown.poll(cx).is_ready() {
            let text = "the relay is shutting down";
            Err(GiveUp::Refuse(Condition::ShuttingDown, text))
        } else {
            loop {
                if p.early.len() >= EARLY_CAP {
                    return Poll::Pending; // read again once paired
                }
                match p.stream.poll_read_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => break Err(GiveUp::HungUp),
                    Poll::Ready(Ok(())) => {
                        if matches!(read_early(&p.stream, &mut p.early), Early::Closed) {
                            break Err(GiveUp::HungUp);
                        }
                    }
                }
            }
        };
        let parked = this.parked.take().expect("checked above");
        Poll::Ready((parked, waited))
    }
}

/// What follows a pending CREATE's wait.
fn finish(parked: Parked, waited: Result<Claim, GiveUp>) -> BoxFuture<()> {
    let Parked {
        stream,
        early,
        pending,
        store,
        _per_ip,
        since,
    } = parked;
    match waited {
        Ok(claim) => {
            let (node, id) = (store.node.clone(), store.id);
            drop((store, _per_ip, pending));
            session(node, stream, early, claim, id, since.elapsed())
        }
        Err(give_up) => Box::pin(give_up_waiting(
            stream, early, pending, store, since, give_up,
        )),
    }
}

/// A pending CREATE that stopped waiting without a claim: withdraws it,
/// unless a claim got there first and is in the channel.
async fn give_up_waiting(
    stream: TcpStream,
    early: BytesMut,
    mut pending: Pending,
    store: StoreGuard,
    since: Instant,
    give_up: GiveUp,
) {
    let (node, id) = (store.node.clone(), store.id);
    let late = if node.pending.withdraw(&id, pending.token) {
        None
    } else {
        (&mut pending.rx).await.ok()
    };
    match (late, give_up) {
        (Some(claim), GiveUp::Refuse(..)) => {
            drop((store, pending));
            session(node, stream, early, claim, id, since.elapsed()).await;
        }
        (Some(claim), GiveUp::HungUp) => {
            let text = "the initiator hung up";
            match claim {
                Claim::Local(c) => refuse(c.target, "connect", Condition::NotFound, text).await,
                Claim::Remote(r) => r.outbound.try_send(Frame::error("not-found", text)),
            }
        }
        (None, GiveUp::HungUp) => {
            debug!(registration = %id, "initiator hung up while pending");
            counter!(COMMANDS, "verb" => "create", "outcome" => "abandoned").increment(1);
        }
        (None, GiveUp::Refuse(condition, text)) => {
            drop(store);
            refuse(stream, "create", condition, text).await;
        }
    }
}

/// Removes this node's store record of a registration when dropped.
struct StoreGuard {
    node: Arc<Node>,
    id: RegistrationId,
    armed: bool,
}

impl Drop for StoreGuard {
    fn drop(&mut self) {
        if self.armed {
            let (node, id) = (self.node.clone(), self.id);
            let mut remove = Box::pin(async move {
                if let Err(e) = node.store.remove_if_owner(&id, &node.info).await {
                    warn!(registration = %id, error = %e, "store remove failed; the record expires with its TTL");
                }
            });
            // The in-memory store of a lone node answers at once: no task for
            // that. Redis does not, and pairing does not wait for it: the rest
            // runs in a task of its own (which polls with its own waker).
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if remove.as_mut().poll(&mut cx).is_pending() {
                tokio::spawn(remove);
            }
        }
    }
}

async fn connect(
    node: Arc<Node>,
    stream: TcpStream,
    slot: Slot,
    triple: Triple,
    mut early: BytesMut,
    started: Instant,
) {
    let id = triple.registration_id();
    drop(triple);
    let deadline = started + node.config.connect_grace;
    let waiter = node.pending.waiter(id);
    let mut poll = STORE_POLL_MIN;
    let mut expiry = pin!(sleep_until(deadline));
    let mut drain = pin!(node.drain.cancelled());
    let bridge = loop {
        let notified = waiter.arrival.notify.notified();
        tokio::pin!(notified);
        // Subscribe before looking, so a CREATE that arrives in between wakes us.
        notified.as_mut().enable();
        if let Some(tx) = node.pending.take(&id) {
            let claim = Claim::Local(LocalClaim {
                target: stream,
                early,
                slot,
                connect_started: started,
            });
            if let Err(Claim::Local(c)) = tx.send(claim) {
                let text = "no pending CREATE matched";
                refuse(c.target, "connect", Condition::NotFound, text).await;
            }
            return;
        }
        // One store round trip per look, none when another node announced
        // the registration (and so its owner) since the last look.
        let owner = match waiter.announced_owner() {
            Some(owner) => Ok(Some(owner)),
            None => node.store.lookup(&id).await,
        };
        match owner {
            Ok(Some(owner)) if owner.id != node.info.id => {
                // Boxed: the Bridge call's state would otherwise enlarge the
                // start of every connection, forwarded or not.
                match Box::pin(forwarded::open(&node, &id, &owner)).await {
                    Ok(bridge) => break bridge,
                    // Claimed by another Target, withdrawn, or the record names an
                    // earlier process at that address: look again until the grace
                    // runs out, as a CREATE may be registering right now.
                    Err(forwarded::OpenError::NotFound) => {}
                    Err(forwarded::OpenError::Refuse(condition, text)) => {
                        return refuse(stream, "connect", condition, text).await;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!(registration = %id, error = %e, "store lookup failed");
                let text = "the rendezvous store is unavailable";
                return refuse(stream, "connect", Condition::Unavailable, text).await;
            }
        }
        // Wait for: the CREATE arriving here, the next look at the shared
        // store (cluster), the grace running out, the drain, or the Target
        // sending early bytes or hanging up. A hand-written poll: this is the
        // state of every waiting CONNECT, so it is kept small.
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
            while early.len() < EARLY_CAP {
                match stream.poll_read_ready(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(_)) => return Poll::Ready(Wake::HungUp),
                    Poll::Ready(Ok(())) => {
                        if matches!(read_early(&stream, &mut early), Early::Closed) {
                            return Poll::Ready(Wake::HungUp);
                        }
                    }
                }
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Look => poll = (poll * 2).min(STORE_POLL_MAX),
            Wake::Expired => {
                let text = "no pending CREATE matched within the connect grace";
                return refuse(stream, "connect", Condition::NotFound, text).await;
            }
            Wake::Drain => {
                let text = "the relay is shutting down";
                return refuse(stream, "connect", Condition::ShuttingDown, text).await;
            }
            Wake::HungUp => {
                counter!(COMMANDS, "verb" => "connect", "outcome" => "abandoned").increment(1);
                return;
            }
        }
    };
    drop(waiter);
    // Its own task, like a local session: this one's memory is freed.
    tokio::spawn(forwarded::run(
        node.clone(),
        stream,
        slot,
        id,
        early,
        started,
        bridge,
    ));
}

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

/// A paired session, from the side of the node holding the Initiator.
///
/// Returns the session's future boxed, and only that: an `async fn` here
/// would keep a second copy of every argument beside the inner future, and
/// every idle session would pay for it.
fn session(
    node: Arc<Node>,
    initiator: TcpStream,
    i_early: BytesMut,
    claim: Claim,
    id: RegistrationId,
    waited: Duration,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    node.hot.pending_wait.record(waited);
    match claim {
        Claim::Local(local) => Box::pin(local_session(node, initiator, i_early, local, id, waited)),
        Claim::Remote(remote) => Box::pin(forwarded::serve(
            node, initiator, i_early, remote, id, waited,
        )),
    }
}

/// A local session: `OK` to both, then the pump.
///
/// A plain fn returning an `async move` block, which uses what it captures in
/// place: an `async fn` keeps a second copy of each argument (216 bytes
/// here), and every idle session would hold it.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice"
)]
fn local_session(
    node: Arc<Node>,
    initiator: TcpStream,
    i_early: BytesMut,
    claim: LocalClaim,
    id: RegistrationId,
    waited: Duration,
) -> impl Future<Output = ()> + Send {
    async move {
        // Released when the session ends.
        let _target_slot = &claim.slot;
        // A failed write shows up at once in the pump as a reset.
        send_ok(&initiator).await;
        send_ok(&claim.target).await;
        let series = &node.hot.local;
        series
            .pairing_latency
            .record(claim.connect_started.elapsed());
        node.hot.create_ok.increment(1);
        node.hot.connect_ok.increment(1);
        series.active.increment(1.0);
        let paired_at = Instant::now();
        let mut pump = Pump::new(
            (&initiator, &i_early, series.initiator_to_target.clone()),
            (
                &claim.target,
                &claim.early,
                series.target_to_initiator.clone(),
            ),
            node.config.idle_timeout(),
            !node.config.no_splice,
        );
        let end = tokio::select! {
            end = &mut pump => end,
            () = node.stop.cancelled() => pump::End::Drained,
        };
        if end == pump::End::Reset {
            // Pass the reset on: close with RST rather than FIN.
            pump::reset_on_close(&initiator);
            pump::reset_on_close(&claim.target);
        }
        let moved = pump.moved();
        series.active.decrement(1.0);
        finished(series, id, paired_at, waited, moved, end.label());
    }
}

/// Sends `OK` to a client. A socket that has sent nothing yet takes three
/// bytes at once; waiting for room (boxed, as it is all but never needed)
/// would otherwise make every session's state larger.
pub(crate) async fn send_ok(stream: &TcpStream) {
    match stream.try_write(OK) {
        Ok(n) if n == OK.len() => {}
        Ok(n) => {
            let _ = Box::pin(write_all(stream, &OK[n..])).await;
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            let _ = Box::pin(write_all(stream, OK)).await;
        }
        Err(_) => {}
    }
}

/// The `OK` reply.
pub(crate) const OK: &[u8] = b"OK\0";

/// Metrics and the log line of a finished session.
pub(crate) fn finished(
    series: &PathSeries,
    id: RegistrationId,
    paired_at: Instant,
    waited: Duration,
    moved: [u64; 2],
    outcome: &'static str,
) {
    let duration = paired_at.elapsed();
    series.completed(outcome);
    series.duration.record(duration);
    info!(
        registration = %id,
        path = series.path,
        duration_ms = duration.as_millis() as u64,
        waited_ms = waited.as_millis() as u64,
        bytes_initiator_to_target = moved[0],
        bytes_target_to_initiator = moved[1],
        outcome,
        "session finished"
    );
}

/// Every pending CREATE is a [`Connection`], and every idle local session a
/// `Connection` and a boxed `local_session`, so their size is most of what
/// the relay holds per connection. These budgets catch a change that makes
/// them grow unnoticed (a large value held across an await, an unboxed
/// rarely-taken branch); raise them only knowingly.
#[cfg(test)]
mod state_size {
    use super::*;
    use clap::Parser;

    /// With tokio's task header and trailer (about 110 bytes), a task's
    /// memory comes in steps of 128 bytes on x86_64: this keeps a pending
    /// CREATE's task within 512.
    const CONNECTION_BUDGET: usize = 400;
    const SESSION_BUDGET: usize = 650;

    #[tokio::test]
    async fn connection_states_stay_within_budget() {
        let config = crate::config::Config::try_parse_from(["dtcp-relay"]).unwrap();
        let memory = Arc::new(dtcp_store::MemoryStore::new());
        let info = dtcp_store::NodeInfo {
            id: "n".into(),
            forward_addr: String::new(),
        };
        let node = Arc::new(Node::new(config, info, memory.clone(), Some(memory), None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let socket = || TcpStream::connect(addr);
        let permits = Arc::new(tokio::sync::Semaphore::new(8));
        let slot = || Slot(permits.clone().try_acquire_owned().unwrap());

        let connection_size = std::mem::size_of::<Connection>();
        let claim = LocalClaim {
            target: socket().await.unwrap(),
            early: BytesMut::new(),
            slot: slot(),
            connect_started: Instant::now(),
        };
        let id = RegistrationId::of("k", "a@b", "c@d");
        // What `session` boxes for a local pair.
        let session_state = local_session(
            node.clone(),
            socket().await.unwrap(),
            BytesMut::new(),
            claim,
            id,
            Duration::ZERO,
        );
        let session_size = std::mem::size_of_val(&session_state);
        drop(session_state);
        assert!(
            connection_size <= CONNECTION_BUDGET,
            "connection task state: {connection_size} bytes"
        );
        assert!(
            session_size <= SESSION_BUDGET,
            "session state: {session_size} bytes"
        );
    }
}
