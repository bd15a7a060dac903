//! The Initiator's side: an [`Offer`] binds listeners of its own, registers
//! at the relay, and takes whichever path the Target completes first (see
//! the [module documentation](super) for the answers and the races).

use std::future::{Future, pending};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dtcp_duplex::REPLY_WRITE_TIMEOUT;
use dtcp_wire::{Condition, Limits, OK, Triple, Verb};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::listener::{CLAIMED, Checker, DIRECT_HANDSHAKE_TIMEOUT, Msg, accept_loop, refuse};
use super::route::{Paired, Route, connect_to};
use crate::candidates::{Candidate, CandidateError, Candidates};
use crate::handshake::{ClientError, pair};

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
        let checker = Arc::new(Checker::new(
            triple.registration_id(),
            limits,
            handshake_timeout,
            decided.clone(),
            tx.clone(),
        ));
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

/// The relay path's outcome: the paired stream and the relay's address.
type RelayResult = Result<(TcpStream, SocketAddr), ClientError>;

/// The path that won, with its stream and the other end's address.
enum Won {
    Direct(TcpStream, SocketAddr),
    Relay(TcpStream, SocketAddr),
}

/// Connects to the relay and sends `CREATE`; ready with `OK`.
async fn register(relay: Candidate, triple: Triple) -> RelayResult {
    let stream = connect_to(&relay).await.map_err(ClientError::Connect)?;
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    Ok((pair(stream, Verb::Create, &triple).await?, peer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use dtcp_wire::{Command, Reply, decode_reply};
    use tokio::io::AsyncReadExt;

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
}
