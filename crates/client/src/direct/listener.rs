//! What an [`Offer`](super::Offer)'s listeners do with each connection:
//! read exactly one command (not a byte past it), judge it as the relay
//! would, and either hand a `CONNECT` for this session to the Offer or
//! answer `ERROR` and linger so that the reply arrives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use dtcp_duplex::{ACCEPT_BACKOFF, write_and_linger};
use dtcp_wire::{
    Command, CommandDecoder, Condition, Limits, RegistrationId, Reply, Verb, WireError,
};
use tokio::io::{AsyncReadExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

/// How long an Initiator's listener waits for a connection's whole command,
/// as the relay's default `--handshake-timeout`.
pub const DIRECT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections an Offer reads commands from at once; more are answered
/// `resource-constraint`.
pub const MAX_DIRECT_HANDSHAKES: usize = 64;

/// Largest read while looking for the end of a command.
const PEEK_BUF: usize = 4096;

/// The text of the `not-found` for a wrong key or JIDs.
const NOT_HERE: &str = "no session with this key and JIDs here";
/// The text of the `not-found` once another path won.
pub(super) const CLAIMED: &str = "the session was claimed through another path";

/// From a listener's check to the acceptor.
pub(super) enum Msg {
    /// A `CONNECT` for this session, not yet answered.
    Verified { stream: TcpStream, peer: SocketAddr },
    /// A connection answered `ERROR`.
    Refused {
        peer: SocketAddr,
        condition: Condition,
    },
}

/// What each listener's checks share.
pub(super) struct Checker {
    id: RegistrationId,
    limits: Limits,
    handshake_timeout: Duration,
    /// Cancelled once a path won.
    decided: CancellationToken,
    tx: mpsc::UnboundedSender<Msg>,
    permits: Arc<Semaphore>,
}

impl Checker {
    /// The checks for the session `id`, allowing [`MAX_DIRECT_HANDSHAKES`]
    /// connections at once across every listener; verified connections and
    /// refusals go to `tx`.
    pub(super) fn new(
        id: RegistrationId,
        limits: Limits,
        handshake_timeout: Duration,
        decided: CancellationToken,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> Self {
        Checker {
            id,
            limits,
            handshake_timeout,
            decided,
            tx,
            permits: Arc::new(Semaphore::new(MAX_DIRECT_HANDSHAKES)),
        }
    }
}

/// Accepts connections on one listener until aborted, checking each (up to
/// the shared permits) in a task of its own.
pub(super) async fn accept_loop(listener: TcpListener, checker: Arc<Checker>) {
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

/// Answers `ERROR` and closes gracefully (lingering), as the relay does.
pub(super) async fn refuse(stream: TcpStream, condition: Condition, text: String) {
    write_and_linger(stream, &Reply::error(condition, text).to_vec()).await;
}
