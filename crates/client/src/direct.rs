//! Direct first, relay as fallback.
//!
//! The protocol lets a Target reach its Initiator either directly or through
//! a relay without telling the two apart: it sends the same
//! `CONNECT\0key\0initiator\0target\0` to whichever candidate answers, and an
//! Initiator reached directly answers `OK\0` itself, just as a relay would.
//!
//! # The Initiator: [`Offer`]
//!
//! [`Offer::bind`] (or [`Initiator::offer`](crate::Initiator::offer)) binds
//! one or more listeners; [`Offer::candidates`] is the list to hand the Target
//! (the listeners in the order given, then the relay, marked `relay@`).
//! [`Offer::accept`] registers at the relay with `CREATE` and, at the same
//! time, checks every connection on the listeners exactly as a relay would
//! (the same [`CommandDecoder`] and [`Limits`]):
//!
//! | what arrives on a listener | answer |
//! | --- | --- |
//! | `CONNECT` with this session's key and JIDs | `OK\0`: this path wins |
//! | `CONNECT` with another key or other JIDs | `ERROR\0not-found\0…`, and the listener keeps waiting |
//! | `CREATE` with this session's triple | `ERROR\0conflict\0…` (it is already pending here) |
//! | `CREATE` with another triple | `ERROR\0forbidden\0…` (a listener holds one session, it registers none) |
//! | bytes that cannot become a command | `ERROR\0bad-request\0…` at the first byte that shows it, as the relay |
//! | a command not complete within [`DIRECT_HANDSHAKE_TIMEOUT`] | `ERROR\0timeout\0…` |
//! | more than [`MAX_DIRECT_HANDSHAKES`] connections still sending their command | `ERROR\0resource-constraint\0…` |
//!
//! The first path to complete wins, and the other is withdrawn at once: the
//! `CREATE` connection is closed (the relay drops the registration), the
//! listeners are closed (later connections are refused), and connections
//! still sending their command are answered
//! `ERROR\0not-found\0the session was claimed through another path\0`.
//!
//! ## Races
//!
//! Exactly one path carries data: the Initiator decides alone, in one place,
//! and writes to one stream only.
//!
//! - The relay's `OK` arrives while a direct `CONNECT` is still being read or
//!   checked: the relay wins (its Target already holds `OK` and may be
//!   sending). The direct connection is answered `not-found` as above, at
//!   once, without waiting for the rest of its command, and closed.
//! - A direct `CONNECT` is checked first while the relay's `OK` is on its way:
//!   the direct path wins and the `CREATE` connection is closed. If the relay
//!   had already paired it with a Target, that Target sees its stream end
//!   without a byte (the relay ends the session when its Initiator goes).
//! - Both are complete at the same instant: the direct path wins.
//! - A direct `CONNECT` whose sender already hung up (a Target whose reply
//!   timeout ran out and moved on) is not taken: the Initiator keeps waiting.
//!
//! The relay path failing (the relay unreachable, refusing, or its pending
//! TTL ending) does not end an [`Offer`] with listeners: it goes on waiting on
//! them ([`OfferEvent::RelayFailed`] says so). An offer without listeners
//! fails as [`Initiator::connect`](crate::Initiator::connect) does.
//!
//! # The Target: [`connect_any`]
//!
//! Tries the candidates in order, each with a connect timeout and a reply
//! timeout ([`Timeouts`]), and moves on after a refused or failed connection,
//! a timeout, an `ERROR` or a malformed reply. When all fail, [`AllFailed`]
//! lists every attempt. The stream returned is a plain `TcpStream` on either
//! path, so [`tls::connect`](crate::tls::connect) and
//! [`tls::accept`](crate::tls::accept) work the same on both.

use std::future::{Future, pending};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use dtcp_wire::{
    Command, CommandDecoder, Condition, Limits, OK, RegistrationId, Reply, Triple, Verb, WireError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::candidates::{Candidate, CandidateError, Candidates, Host, Role};
use crate::{ClientError, pair};

/// How long the Target waits for a candidate to accept its connection
/// (name resolution included) before it moves on.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the Target waits for an Initiator's listener to answer its
/// `CONNECT` before it moves on. An Initiator answers at once.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the Target waits for a relay (`relay@`) to answer: twice the
/// relay's default connect grace (5 s), which it may wait for the `CREATE`
/// before answering `not-found`.
pub const DEFAULT_RELAY_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an Initiator's listener waits for a connection's whole command,
/// as the relay's default `--handshake-timeout`.
pub const DIRECT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections an Offer reads commands from at once; more are answered
/// `resource-constraint`.
pub const MAX_DIRECT_HANDSHAKES: usize = 64;

/// How long an `ERROR` or `OK` may take to write.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// After an `ERROR`, how long to read and discard what the peer still sends,
/// so that closing does not become a reset that destroys the reply (as the
/// relay does).
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes discarded while lingering.
const LINGER_BYTES: usize = 64 * 1024;
/// Wait after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Largest read while looking for the end of a command.
const PEEK_BUF: usize = 4096;

/// The text of the `not-found` for a wrong key or JIDs.
const NOT_HERE: &str = "no session with this key and JIDs here";
/// The text of the `not-found` once another path won.
const CLAIMED: &str = "the session was claimed through another path";

/// Which path a paired stream took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Target to the Initiator's own listener.
    Direct,
    /// Both through a relay.
    Relay,
}

impl Route {
    /// "directly" or "through the relay", for a sentence.
    pub fn adverb(self) -> &'static str {
        match self {
            Route::Direct => "directly",
            Route::Relay => "through the relay",
        }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Route::Direct => "direct",
            Route::Relay => "relay",
        })
    }
}

impl From<Role> for Route {
    fn from(role: Role) -> Self {
        match role {
            Role::Direct => Route::Direct,
            Role::Relay => Route::Relay,
        }
    }
}

/// A paired stream and the path it took.
#[derive(Debug)]
pub struct Paired {
    /// The stream; its next byte is the peer's.
    pub stream: TcpStream,
    /// Direct or through the relay.
    pub route: Route,
    /// The other end of this TCP connection: the relay, or (direct) the
    /// Target's address as the Initiator sees it and the Initiator's
    /// listener as the Target sees it.
    pub peer: SocketAddr,
}

// ---------------------------------------------------------------------------
// The Initiator.

/// Why an [`Offer`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A wildcard address (`0.0.0.0`, `[::]`) cannot be handed to the Target.
    #[error(
        "cannot offer {0}: the receiver cannot connect to a wildcard address (name the interface's address, or use auto)"
    )]
    Wildcard(SocketAddr),
    /// The relay is not `HOST:PORT`.
    #[error("the relay: {0}")]
    Relay(#[from] CandidateError),
    /// Neither a listener nor a relay.
    #[error("nothing to offer: give a listener, a relay, or both")]
    Nothing,
}

/// What happened while an [`Offer`] waits, for a progress display.
#[derive(Debug)]
pub enum OfferEvent<'a> {
    /// The relay path ended without a pairing; the offer goes on waiting on
    /// its listeners.
    RelayFailed(&'a ClientError),
    /// A connection on a listener was answered `ERROR`; the listener keeps
    /// waiting.
    DirectRefused {
        /// Who connected.
        peer: SocketAddr,
        /// The answer's condition.
        condition: Condition,
    },
}

/// An Initiator's offer: listeners of its own and a relay registration,
/// whichever the Target completes first.
///
/// ```no_run
/// use dtcp_client::{Initiator, Route, tls};
/// use dtcp_client::dtcp_wire::Triple;
/// use tokio::io::AsyncWriteExt;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let triple = Triple::new("s3cret", "alice@example.org/laptop", "bob@example.net/phone")?;
/// let offer = Initiator::offer(
///     &["192.168.1.5:7001".parse()?],
///     Some("relay.example.org:7777"),
///     &triple,
/// )
/// .await?;
/// // Hand this to the Target out of band:
/// // dtcp://192.168.1.5:7001,relay@relay.example.org:7777
/// println!("{}", offer.candidates());
/// let identity = tls::Identity::generate()?; // and its fingerprint, too
/// let paired = offer.accept().await?;
/// println!("paired {} with {}", paired.route.adverb(), paired.peer);
/// let mut stream = tls::accept(paired.stream, &identity).await?;
/// stream.write_all(b"hello").await?;
/// stream.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Offer {
    listeners: Vec<TcpListener>,
    local: Vec<SocketAddr>,
    relay: Option<Candidate>,
    triple: Triple,
    limits: Limits,
    handshake_timeout: Duration,
}

impl Offer {
    /// Binds a listener on each of `listen` (port 0: one the system picks)
    /// and remembers the relay (`HOST:PORT`), if any. Registration happens in
    /// [`Offer::accept`].
    pub async fn bind(
        listen: &[SocketAddr],
        relay: Option<&str>,
        triple: &Triple,
    ) -> Result<Offer, OfferError> {
        let relay = relay.map(Candidate::relay).transpose()?;
        if listen.is_empty() && relay.is_none() {
            return Err(OfferError::Nothing);
        }
        let mut listeners = Vec::with_capacity(listen.len());
        let mut local = Vec::with_capacity(listen.len());
        for &addr in listen {
            if addr.ip().is_unspecified() {
                return Err(OfferError::Wildcard(addr));
            }
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| OfferError::Bind { addr, source })?;
            local.push(
                l.local_addr()
                    .map_err(|source| OfferError::Bind { addr, source })?,
            );
            listeners.push(l);
        }
        Ok(Offer {
            listeners,
            local,
            relay,
            triple: triple.clone(),
            limits: Limits::default(),
            handshake_timeout: DIRECT_HANDSHAKE_TIMEOUT,
        })
    }

    /// Checks direct commands against these limits (the protocol's by default).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Waits this long for a direct connection's command
    /// ([`DIRECT_HANDSHAKE_TIMEOUT`] by default).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The addresses the listeners are bound to, in order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// What to hand the Target: the listeners in order, then the relay.
    pub fn candidates(&self) -> Candidates {
        let mut list: Vec<Candidate> = self.local.iter().copied().map(Candidate::direct).collect();
        list.extend(self.relay.clone());
        Candidates::new(list)
    }

    /// Registers at the relay and waits on the listeners; returns the first
    /// path the Target completes and withdraws the other.
    pub async fn accept(self) -> Result<Paired, ClientError> {
        self.accept_with(|_| {}).await
    }

    /// [`Offer::accept`], telling `on_event` what happens on the way.
    pub async fn accept_with(
        self,
        mut on_event: impl FnMut(OfferEvent<'_>),
    ) -> Result<Paired, ClientError> {
        let Offer {
            listeners,
            relay,
            triple,
            limits,
            handshake_timeout,
            ..
        } = self;
        let has_listeners = !listeners.is_empty();
        let decided = CancellationToken::new();
        // Dropped with this future (decided or cancelled): stop every check.
        let _stop_checks = decided.clone().drop_guard();
        // The acceptor keeps a sender, so `recv` never ends: one branch of
        // the select below is always live.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let checker = Arc::new(Checker {
            id: triple.registration_id(),
            limits,
            handshake_timeout,
            decided: decided.clone(),
            tx: tx.clone(),
            permits: Arc::new(Semaphore::new(MAX_DIRECT_HANDSHAKES)),
        });
        // Dropping the set (here or when this future is dropped) aborts the
        // loops, and so closes the listeners.
        let mut loops = JoinSet::new();
        for listener in listeners {
            loops.spawn(accept_loop(listener, checker.clone()));
        }
        drop(checker);

        let mut relay_path: Option<Pin<Box<dyn Future<Output = RelayResult> + Send>>> =
            relay.map(|r| Box::pin(register(r, triple.clone())) as _);
        let won = loop {
            tokio::select! {
                biased;
                Some(msg) = rx.recv() => match msg {
                    Msg::Verified { stream, peer } => break Won::Direct(stream, peer),
                    Msg::Refused { peer, condition } => {
                        on_event(OfferEvent::DirectRefused { peer, condition });
                    }
                },
                r = async {
                    match relay_path.as_mut() {
                        Some(f) => f.await,
                        None => pending().await,
                    }
                } => {
                    relay_path = None;
                    match r {
                        Ok((stream, peer)) => break Won::Relay(stream, peer),
                        Err(e) if !has_listeners => return Err(e),
                        Err(e) => on_event(OfferEvent::RelayFailed(&e)),
                    }
                }
            }
        };

        // Withdraw everything else: the CREATE connection, the listeners, the
        // connections still being checked, and any checked one queued.
        drop(relay_path);
        decided.cancel();
        loops.shutdown().await;
        drop(tx);
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Verified { stream, .. } = msg {
                tokio::spawn(refuse(stream, Condition::NotFound, CLAIMED.into()));
            }
        }
        match won {
            Won::Relay(stream, peer) => Ok(Paired {
                stream,
                route: Route::Relay,
                peer,
            }),
            Won::Direct(mut stream, peer) => {
                timeout(REPLY_WRITE_TIMEOUT, stream.write_all(OK))
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                Ok(Paired {
                    stream,
                    route: Route::Direct,
                    peer,
                })
            }
        }
    }
}

type RelayResult = Result<(TcpStream, SocketAddr), ClientError>;

enum Won {
    Direct(TcpStream, SocketAddr),
    Relay(TcpStream, SocketAddr),
}

/// From a listener's check to the acceptor.
enum Msg {
    /// A `CONNECT` for this session, not yet answered.
    Verified { stream: TcpStream, peer: SocketAddr },
    /// A connection answered `ERROR`.
    Refused {
        peer: SocketAddr,
        condition: Condition,
    },
}

/// Connects to the relay and sends `CREATE`; ready with `OK`.
async fn register(relay: Candidate, triple: Triple) -> RelayResult {
    let stream = connect_to(&relay).await.map_err(ClientError::Connect)?;
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    Ok((pair(stream, Verb::Create, &triple).await?, peer))
}

async fn connect_to(c: &Candidate) -> io::Result<TcpStream> {
    match c.host() {
        Host::Ip(ip) => TcpStream::connect(SocketAddr::new(*ip, c.port())).await,
        Host::Name(name) => TcpStream::connect((name.as_str(), c.port())).await,
    }
}

/// What each listener's checks share.
struct Checker {
    id: RegistrationId,
    limits: Limits,
    handshake_timeout: Duration,
    /// Cancelled once a path won.
    decided: CancellationToken,
    tx: mpsc::UnboundedSender<Msg>,
    permits: Arc<Semaphore>,
}

async fn accept_loop(listener: TcpListener, checker: Arc<Checker>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match checker.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let checker = checker.clone();
                tokio::spawn(async move {
                    check(&checker, stream, peer).await;
                    drop(permit);
                });
            }
            Err(_) => {
                let condition = Condition::ResourceConstraint;
                let _ = checker.tx.send(Msg::Refused { peer, condition });
                let text = "too many connections are sending their command to this Initiator";
                tokio::spawn(refuse(stream, condition, text.into()));
            }
        }
    }
}

/// Reads one connection's command and judges it.
async fn check(c: &Checker, mut stream: TcpStream, peer: SocketAddr) {
    let verdict = tokio::select! {
        biased;
        _ = c.decided.cancelled() => Err((Condition::NotFound, CLAIMED.to_owned())),
        read = timeout(c.handshake_timeout, read_command_exact(&mut stream, c.limits)) => {
            match read {
                Err(_) => Err((
                    Condition::Timeout,
                    "command not complete within the handshake timeout".to_owned(),
                )),
                Ok(Err(ReadError::Io)) | Ok(Ok(Read::Silent)) => return,
                Ok(Err(ReadError::Wire(e))) => Err((e.condition(), e.to_string())),
                Ok(Ok(Read::Partial)) => Err((
                    Condition::BadRequest,
                    "connection closed in the middle of a command".to_owned(),
                )),
                Ok(Ok(Read::Command(command))) => judge(c.id, &command),
            }
        }
    };
    match verdict {
        Ok(()) => {
            if hung_up(&stream) {
                return;
            }
            if let Err(mpsc::error::SendError(Msg::Verified { stream, .. })) =
                c.tx.send(Msg::Verified { stream, peer })
            {
                refuse(stream, Condition::NotFound, CLAIMED.into()).await;
            }
        }
        Err((condition, text)) => {
            let _ = c.tx.send(Msg::Refused { peer, condition });
            refuse(stream, condition, text).await;
        }
    }
}

/// What a listener answers to a complete command.
fn judge(id: RegistrationId, command: &Command) -> Result<(), (Condition, String)> {
    // Compared as registration ids (SHA-256 of the triple), as the relay does.
    let ours = command.triple.registration_id() == id;
    match (command.verb, ours) {
        (Verb::Connect, true) => Ok(()),
        (Verb::Connect, false) => Err((Condition::NotFound, NOT_HERE.to_owned())),
        (Verb::Create, true) => Err((
            Condition::Conflict,
            "a CREATE with the same key and JIDs is already pending".to_owned(),
        )),
        (Verb::Create, false) => Err((
            Condition::Forbidden,
            "this is an Initiator's listener: it takes only the CONNECT for its own session"
                .to_owned(),
        )),
    }
}

/// Whether the peer has already closed (or reset) without a byte after its
/// command: a Target that gave up waiting.
fn hung_up(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        stream.poll_peek(&mut cx, &mut buf),
        Poll::Ready(Ok(0)) | Poll::Ready(Err(_))
    )
}

enum Read {
    Command(Command),
    /// Closed before the first byte.
    Silent,
    /// Closed in the middle of a command.
    Partial,
}

enum ReadError {
    Wire(WireError),
    /// Reading failed: the peer is gone, there is no one to answer.
    Io,
}

/// Reads one command and not a byte past it: what the Target sends behind
/// its `CONNECT` stays in the socket for whoever reads the stream next.
///
/// Peeks at what has arrived, finds where the command's fourth NUL is, and
/// reads up to there (or everything, when it is not there yet: all of it
/// belongs to the command). The bytes go through the relay's decoder, so
/// they are judged exactly as the relay judges them.
async fn read_command_exact(stream: &mut TcpStream, limits: Limits) -> Result<Read, ReadError> {
    let mut decoder = CommandDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut peeked = [0u8; PEEK_BUF];
    let mut nuls = 0;
    loop {
        let n = stream.peek(&mut peeked).await.map_err(|_| ReadError::Io)?;
        if n == 0 {
            return Ok(if buf.is_empty() {
                Read::Silent
            } else {
                Read::Partial
            });
        }
        let mut take = n;
        for (i, b) in peeked[..n].iter().enumerate() {
            if *b == 0 {
                nuls += 1;
                if nuls == 4 {
                    take = i + 1;
                    break;
                }
            }
        }
        stream
            .read_exact(&mut peeked[..take])
            .await
            .map_err(|_| ReadError::Io)?;
        buf.extend_from_slice(&peeked[..take]);
        if let Some(command) = decoder.decode(&mut buf).map_err(ReadError::Wire)? {
            return Ok(Read::Command(command));
        }
    }
}

/// Answers `ERROR` and closes gracefully, as the relay does.
async fn refuse(mut stream: TcpStream, condition: Condition, text: String) {
    let reply = Reply::error(condition, text).to_vec();
    if timeout(REPLY_WRITE_TIMEOUT, stream.write_all(&reply))
        .await
        .is_err()
    {
        return;
    }
    let _ = stream.shutdown().await;
    let discard = async {
        let mut sink = [0u8; 1024];
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

/// The machine's own addresses to listen on for `auto`: every address of an
/// interface that is up, except loopback, wildcard, multicast and IPv6
/// link-local ones (those need a zone, which a candidate cannot carry);
/// IPv4 first, then IPv6, each in the system's order.
pub fn interface_addrs() -> io::Result<Vec<IpAddr>> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for iface in if_addrs::get_if_addrs()? {
        let ip = iface.ip();
        if iface.is_loopback() || ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
            continue;
        }
        if !iface.is_oper_up() {
            continue;
        }
        match ip {
            IpAddr::V4(_) => v4.push(ip),
            IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => {}
            IpAddr::V6(_) => v6.push(ip),
        }
    }
    v4.extend(v6);
    let mut seen = std::collections::HashSet::new();
    v4.retain(|ip| seen.insert(*ip));
    Ok(v4)
}

// ---------------------------------------------------------------------------
// The Target.

/// The Target's per-candidate timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For the TCP connection (and name resolution).
    pub connect: Duration,
    /// For the answer to `CONNECT` from a direct candidate.
    pub reply: Duration,
    /// For the answer to `CONNECT` from a relay (`relay@`).
    pub relay_reply: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            reply: DEFAULT_REPLY_TIMEOUT,
            relay_reply: DEFAULT_RELAY_REPLY_TIMEOUT,
        }
    }
}

/// Why one candidate did not pair.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The connection was refused or failed (or the name did not resolve).
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    /// No connection within the connect timeout.
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// Connected, but no reply to `CONNECT` within the reply timeout.
    #[error("no reply within {0:?}")]
    ReplyTimeout(Duration),
    /// Answered `ERROR`.
    #[error("refused: {condition}: {text}")]
    Refused {
        /// Why, in machine-readable form.
        condition: Condition,
        /// Why, for people.
        text: String,
    },
    /// Closed without a reply.
    #[error("closed without a reply")]
    Closed,
    /// Answered with bytes that are not a reply.
    #[error("answered with bytes that are not a reply")]
    Protocol(#[source] WireError),
    /// The connection failed after it was made.
    #[error("{0}")]
    Io(#[source] io::Error),
}

impl AttemptError {
    /// The condition, when the candidate answered `ERROR`.
    pub fn condition(&self) -> Option<Condition> {
        match self {
            AttemptError::Refused { condition, .. } => Some(*condition),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: the peer may not have started
    /// yet (a refused connection, `not-found`), or was busy or slow. Not so
    /// for `bad-request`, `forbidden`, `conflict` or bytes that are not a
    /// reply.
    pub fn is_transient(&self) -> bool {
        match self {
            AttemptError::Refused { condition, .. } => !matches!(
                condition,
                Condition::BadRequest | Condition::Forbidden | Condition::Conflict
            ),
            AttemptError::Protocol(_) => false,
            _ => true,
        }
    }
}

impl From<ClientError> for AttemptError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Connect(e) => AttemptError::Connect(e),
            ClientError::Io(e) => AttemptError::Io(e),
            ClientError::Refused { condition, text } => AttemptError::Refused { condition, text },
            ClientError::Closed => AttemptError::Closed,
            ClientError::Protocol(e) => AttemptError::Protocol(e),
            ClientError::Tls(text) => AttemptError::Io(io::Error::other(text)),
        }
    }
}

/// One candidate that did not pair.
#[derive(Debug)]
pub struct Attempt {
    /// Which.
    pub candidate: Candidate,
    /// Why not.
    pub error: AttemptError,
    /// How long it took to give up on it.
    pub elapsed: Duration,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}, after {:.1?}",
            self.candidate.address(),
            self.candidate.role(),
            self.error,
            self.elapsed
        )
    }
}

/// Every candidate failed; each attempt, in order.
#[derive(Debug)]
pub struct AllFailed {
    /// What each candidate did.
    pub attempts: Vec<Attempt>,
}

impl AllFailed {
    /// Whether trying the list again later may succeed: every attempt failed
    /// in a transient way ([`AttemptError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        !self.attempts.is_empty() && self.attempts.iter().all(|a| a.error.is_transient())
    }
}

impl std::fmt::Display for AllFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.attempts.is_empty() {
            return f.write_str("no candidate to try");
        }
        f.write_str("every candidate failed: ")?;
        for (i, a) in self.attempts.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "[{}] {a}", i + 1)?;
        }
        Ok(())
    }
}

impl std::error::Error for AllFailed {}

/// Tries each candidate in order with the default [`Timeouts`].
///
/// ```no_run
/// use dtcp_client::{Candidates, Target, tls};
/// use dtcp_client::dtcp_wire::Triple;
/// use tokio::io::AsyncReadExt;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let triple = Triple::new("s3cret", "alice@example.org/laptop", "bob@example.net/phone")?;
/// // As printed by the Initiator's Offer::candidates:
/// let candidates: Candidates = "dtcp://192.168.1.5:7001,relay@relay.example.org:7777".parse()?;
/// let paired = Target::connect_any(&candidates, &triple).await?;
/// println!("paired {} with {}", paired.route.adverb(), paired.peer);
/// let fingerprint = tls::parse_fingerprint("…the Initiator's fingerprint…")?;
/// let mut stream = tls::connect(paired.stream, fingerprint).await?;
/// let mut text = String::new();
/// stream.read_to_string(&mut text).await?;
/// # Ok(())
/// # }
/// ```
pub async fn connect_any(candidates: &Candidates, triple: &Triple) -> Result<Paired, AllFailed> {
    connect_any_with(candidates, triple, &Timeouts::default(), |_| {}).await
}

/// [`connect_any`] with these timeouts, telling `on_failure` about each
/// candidate that failed as soon as it did.
pub async fn connect_any_with(
    candidates: &Candidates,
    triple: &Triple,
    timeouts: &Timeouts,
    mut on_failure: impl FnMut(&Attempt),
) -> Result<Paired, AllFailed> {
    let mut attempts = Vec::new();
    for candidate in candidates.iter() {
        let started = Instant::now();
        match try_one(candidate, triple, timeouts).await {
            Ok((stream, peer)) => {
                return Ok(Paired {
                    stream,
                    route: candidate.role().into(),
                    peer,
                });
            }
            Err(error) => {
                let attempt = Attempt {
                    candidate: candidate.clone(),
                    error,
                    elapsed: started.elapsed(),
                };
                on_failure(&attempt);
                attempts.push(attempt);
            }
        }
    }
    Err(AllFailed { attempts })
}

async fn try_one(
    candidate: &Candidate,
    triple: &Triple,
    timeouts: &Timeouts,
) -> Result<(TcpStream, SocketAddr), AttemptError> {
    let stream = timeout(timeouts.connect, connect_to(candidate))
        .await
        .map_err(|_| AttemptError::ConnectTimeout(timeouts.connect))?
        .map_err(AttemptError::Connect)?;
    stream.set_nodelay(true).map_err(AttemptError::Io)?;
    let peer = stream.peer_addr().map_err(AttemptError::Io)?;
    let wait = match candidate.role() {
        Role::Direct => timeouts.reply,
        Role::Relay => timeouts.relay_reply,
    };
    let stream = timeout(wait, pair(stream, Verb::Connect, triple))
        .await
        .map_err(|_| AttemptError::ReplyTimeout(wait))??;
    Ok((stream, peer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtcp_wire::decode_reply;

    fn triple() -> Triple {
        Triple::new("k", "a@example.org/x", "b@example.net/y").unwrap()
    }

    async fn offer() -> Offer {
        Offer::bind(&["127.0.0.1:0".parse().unwrap()], None, &triple())
            .await
            .unwrap()
    }

    async fn reply_to(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    }

    fn condition_of(reply: &[u8]) -> Condition {
        match decode_reply(&mut BytesMut::from(reply)) {
            Ok(Some(Reply::Error { condition, .. })) => condition,
            other => panic!("{other:?} from {reply:?}"),
        }
    }

    #[tokio::test]
    async fn a_listener_answers_as_the_relay_would_and_keeps_waiting() {
        let offer = offer()
            .await
            .with_handshake_timeout(Duration::from_millis(300));
        let addr = offer.local_addrs()[0];
        let accepted = tokio::spawn(offer.accept());
        let other = Triple::new("other", "a@example.org/x", "b@example.net/y").unwrap();
        let cases: Vec<(Vec<u8>, Condition)> = vec![
            (
                Command::new(Verb::Connect, other.clone()).encode(),
                Condition::NotFound,
            ),
            (
                Command::new(Verb::Create, triple()).encode(),
                Condition::Conflict,
            ),
            (
                Command::new(Verb::Create, other).encode(),
                Condition::Forbidden,
            ),
            (b"GET / HTTP/1.1\r\n".to_vec(), Condition::BadRequest),
            (b"CONNECT\0k\0a@\0".to_vec(), Condition::BadRequest),
            (b"CONNECT\0k\0a@example.org".to_vec(), Condition::Timeout),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                condition_of(&reply_to(addr, &bytes).await),
                want,
                "{bytes:?}"
            );
        }
        // Closing in the middle of a command.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"CONN").await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert_eq!(condition_of(&out), Condition::BadRequest);

        // Still listening: the right CONNECT wins, and the bytes behind it
        // stay in the stream.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut bytes = Command::new(Verb::Connect, triple()).encode();
        bytes.extend_from_slice(b"early");
        s.write_all(&bytes).await.unwrap();
        let mut paired = accepted.await.unwrap().unwrap();
        assert_eq!(paired.route, Route::Direct);
        let mut ok = [0u8; 3];
        s.read_exact(&mut ok).await.unwrap();
        assert_eq!(&ok, OK);
        let mut early = [0u8; 5];
        paired.stream.read_exact(&mut early).await.unwrap();
        assert_eq!(&early, b"early");
        // The listener is closed.
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn the_target_reports_every_attempt() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let list = Candidates::new(vec![
            Candidate::direct(closed),
            Candidate::direct(silent.local_addr().unwrap()),
        ]);
        let timeouts = Timeouts {
            connect: Duration::from_millis(500),
            reply: Duration::from_millis(200),
            relay_reply: Duration::from_millis(200),
        };
        let mut seen = 0;
        let err = connect_any_with(&list, &triple(), &timeouts, |_| seen += 1)
            .await
            .unwrap_err();
        assert_eq!(seen, 2);
        assert!(matches!(err.attempts[0].error, AttemptError::Connect(_)));
        assert!(matches!(
            err.attempts[1].error,
            AttemptError::ReplyTimeout(_)
        ));
        assert!(err.is_transient());
        let text = err.to_string();
        assert!(
            text.contains(&closed.to_string()) && text.contains("no reply"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn nothing_to_offer_and_wildcards_are_errors() {
        assert!(matches!(
            Offer::bind(&[], None, &triple()).await,
            Err(OfferError::Nothing)
        ));
        assert!(matches!(
            Offer::bind(&["0.0.0.0:0".parse().unwrap()], None, &triple()).await,
            Err(OfferError::Wildcard(_))
        ));
        assert!(matches!(
            Offer::bind(&[], Some("no port"), &triple()).await,
            Err(OfferError::Relay(_))
        ));
    }

    #[test]
    fn interface_addrs_are_never_loopback() {
        for ip in interface_addrs().unwrap() {
            assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
        }
    }
}
