//! Lanes: once a Bridge has paired a session, its bytes cross between the
//! two nodes on a TCP connection of their own, joined at both ends to the
//! client socket like a local session's (spliced on Linux).
//!
//! The owner offers a lane in its `paired` frame with a single-use token;
//! the claimant, which dialed the owner's forwarding port while the claim
//! was in flight, writes the lane's preamble, then the session's bytes:
//!
//! ```text
//! preamble = "DTCPLANE" version(1 byte) token-length(u16 BE) token
//! token    = registration id(32) expiry(unix ms, u64 BE) nonce(16)
//!            claimant-id-length(1) claimant node id  mac(32)
//! mac      = HMAC-SHA256 under the signing cluster secret of
//!            [tag, version, registration id, owner node id, claimant node id, expiry, nonce]
//! ```
//!
//! The owner keeps the lanes it expects in [`Lanes`], a bounded table keyed
//! by nonce: a lane attaches once, to the session that offered it, before
//! its expiry. A token whose MAC fails is `lane_token`, one past its expiry
//! `lane_expired`, one whose nonce is not (or no longer) expected
//! `lane_replay`: the lane is reset and nothing is read or written on it.
//! On an insecure plane (`--insecure-plane`) the MAC is zeros and is not
//! checked: the token's 128-bit nonce, which crossed in the Bridge, is what
//! binds the lane, as the plane checks nothing else either.
//!
//! Under plane TLS a lane is TLS too ([`LaneStream`]): the claimant makes
//! the plane's handshake (its certificates, in force now) offering the
//! lane's own protocol ([`ALPN_LANE`](crate::tls::ALPN_LANE)), which is how
//! the owner's port tells it from HTTP/2, and writes the preamble and the
//! session's bytes inside it. Nothing of a TLS lane can be spliced.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::auth::{AuthFailure, PlaneAuth, unix_ms};
use crate::tls::{ALPN_LANE, PlaneTls};

mod stream;
mod token;

pub use stream::LaneStream;
use token::{Token, after_head, token_parts};
pub use token::{is_lane_start, mint_token, preamble};

/// The first bytes of a lane, on the forwarding port: told apart from the
/// HTTP/2 client preface (`PRI * ...`) and a TLS handshake (0x16) by the first.
pub const LANE_MAGIC: &[u8; 8] = b"DTCPLANE";
/// The lane format version this node speaks.
pub const LANE_VERSION: u8 = 1;
/// How long a lane token is good for, from the owner's `paired`.
pub const LANE_TOKEN_TTL: Duration = Duration::from_secs(5);
/// How long the claimant's lane dial may take (connect included) before the
/// session falls back to the Bridge's data path.
pub const LANE_DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the owner waits, after its `paired`, for the lane it offered
/// (the claimant dials it within [`LANE_DIAL_TIMEOUT`] of its `open`, or
/// says on the Bridge that it could not). Only a claimant that asked for a
/// lane is offered one, so past this wait its lane was dialed but lost on
/// the way (a middlebox that swallows it) or its node stalled: its Target
/// is already pumping into that lane, and the Bridge cannot take the
/// session over. The session is cut.
pub const LANE_WAIT: Duration = Duration::from_secs(3);
/// How long a connection on the forwarding port that began like a lane may
/// take to send the rest of its preamble.
pub const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most lanes an owner expects at once: beyond it, no lane is offered
/// (the session's bytes cross on the Bridge).
pub const EXPECTED_LANES_CAPACITY: usize = 65_536;
/// The domain-separation tag of a lane token's MAC.
const LANE_TAG: &[u8] = b"dtcp-lane-v1";
/// Fixed part of a preamble before the token: magic, version, token length.
const HEAD: usize = 8 + 1 + 2;
/// Longest token: every field at its largest.
const MAX_TOKEN: usize = 32 + 8 + 16 + 1 + 255 + 32;
const NONCE: usize = 16;

/// Why a connection that began like a lane did not attach ([`Lanes::attach`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAttached {
    /// Its token was refused: forged, expired or replayed (an
    /// authentication failure).
    Refused(AuthFailure),
    /// Its preamble was not whole within [`PREAMBLE_TIMEOUT`]: someone who
    /// sent a lane's first bytes and stalled.
    Stalled,
    /// It closed or failed before its preamble was whole (a peer's lane
    /// dialed ahead, dropped unused, among them), or the session that
    /// offered it had stopped waiting.
    Gone,
}

/// Where to dial a lane the owner may offer at a XEP-0065 activation.
#[derive(Debug, Clone)]
pub struct LaneAddr {
    addr: String,
    tls: Option<PlaneTls>,
}

impl LaneAddr {
    pub(crate) fn new(addr: &str, tls: Option<PlaneTls>) -> Self {
        LaneAddr {
            addr: addr.to_owned(),
            tls,
        }
    }
}

/// A lane the claimant dialed and the owner offered, ready for the session.
#[derive(Debug)]
pub struct Lane {
    /// The connection to the owner's forwarding port.
    pub stream: LaneStream,
    /// What to write on it before any byte of the session (the rest of
    /// the preamble: its magic and version went at the dial).
    pub preamble: Vec<u8>,
}

impl Lane {
    /// Writes the rest of the preamble (and, under TLS, flushes it out).
    pub async fn send_preamble(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.preamble).await?;
        self.stream.flush().await
    }
}

/// Which step of a claim the owner offers its lane at, and so when the
/// claimant dials it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneAt {
    /// A DTCP claim: the owner offers it in `paired`; the lane is dialed
    /// while the claim is in flight.
    Paired,
    /// A XEP-0065 pair: the owner offers it in `activated`, which may come
    /// a minute later; the lane is dialed then (a dial held that long would
    /// outlive its token and hold a descriptor for nothing).
    Activated,
}

/// What became of the claimant's lane for a Bridge it opened.
#[derive(Debug, Default)]
pub enum LaneDial {
    /// No lane was asked for, or none was dialed: the Bridge carries the
    /// bytes.
    #[default]
    NotOffered,
    /// A lane was dialed while the claim was in flight, but the owner
    /// offered none (it does not do lanes, or had no connection slot for
    /// one): the dial was closed, and the Bridge carries the bytes.
    Declined,
    /// The owner may offer a lane at the activation (see
    /// [`Halves::take_activation_offer`](crate::Halves::take_activation_offer)):
    /// the owner's forwarding address to dial then.
    AtActivation(LaneAddr),
    /// The owner offered one and the dial succeeded.
    Ready(Box<Lane>),
    /// The owner offered one but the dial failed (refused, reset, or not
    /// done within [`LANE_DIAL_TIMEOUT`]): the Bridge carries the bytes,
    /// and the owner has been told so.
    Failed(&'static str),
}

impl crate::Halves {
    /// Takes the lane `dialed` for the owner's offer of `token`, or, if the
    /// dial failed, tells the owner to stop waiting for it (an empty data
    /// frame: the bytes cross on the Bridge).
    pub(crate) fn attach_lane(&mut self, dialed: Result<LaneStream, &'static str>, token: &[u8]) {
        self.lane = match dialed {
            Ok(mut stream) => {
                if stream.is_open() {
                    LaneDial::Ready(Box::new(Lane {
                        stream,
                        preamble: after_head(token),
                    }))
                } else {
                    // Closed by the owner's port before the token came (a
                    // burst of new connections made it evict this one): the
                    // Bridge can still carry the session.
                    LaneDial::Failed("reset")
                }
            }
            Err(reason) => LaneDial::Failed(reason),
        };
        if let LaneDial::Failed(_) = self.lane {
            self.outbound
                .try_send(crate::proto::Frame::data(bytes::Bytes::new()));
        }
    }

    /// XEP-0065 mode, the requester's node: the owner's `activated` came
    /// with `token`. If it offers a lane and the halves carry the address
    /// to dial ([`LaneDial::AtActivation`]), dials it now (within
    /// [`LANE_DIAL_TIMEOUT`]); else the Bridge carries the pair's bytes.
    pub async fn take_activation_offer(&mut self, token: &[u8]) {
        let LaneDial::AtActivation(to) = std::mem::take(&mut self.lane) else {
            return;
        };
        if !token.is_empty() {
            let dialed = dial(to.addr, to.tls).await;
            self.attach_lane(dialed, token);
        }
    }
}

/// Dials a lane to the owner's forwarding port at `addr`, within
/// [`LANE_DIAL_TIMEOUT`] (the TLS handshake included, under plane TLS);
/// the reason label of a failure (a new one goes into the relay's
/// `LANE_DIAL_OUTCOMES` too, which starts each series at zero).
pub(crate) async fn dial(addr: String, tls: Option<PlaneTls>) -> Result<LaneStream, &'static str> {
    let connect = async {
        let stream = TcpStream::connect(addr.as_str()).await?;
        tune(&stream)?;
        // Its first bytes at once: the owner's port tells it from HTTP/2
        // by them (under TLS, by the protocol the handshake agreed on), and
        // holds silent connections on probation only.
        let mut head = LANE_MAGIC.to_vec();
        head.push(LANE_VERSION);
        let Some(tls) = tls else {
            dtcp_duplex::write_all(&stream, &head).await?;
            return Ok(Ok(LaneStream::Plain(stream)));
        };
        let mut stream = tls.connect_lane(stream).await?;
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_LANE) {
            // A node that does not know TLS lanes agreed on HTTP/2.
            return Ok(Err("alpn"));
        }
        stream.write_all(&head).await?;
        stream.flush().await?;
        Ok::<_, io::Error>(Ok(LaneStream::TlsClient(Box::new(stream))))
    };
    match tokio::time::timeout(LANE_DIAL_TIMEOUT, connect).await {
        Ok(Ok(dialed)) => dialed,
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Err("refused"),
        // rustls's refusals (a certificate not trusted, no protocol in
        // common) come as invalid data.
        Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => Err("tls"),
        // The owner reset it (past its bound on lanes attaching, say).
        Ok(Err(e))
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ) =>
        {
            Err("reset")
        }
        Ok(Err(_)) => Err("error"),
        Err(_) => Err("timeout"),
    }
}

/// A lane's socket options, at both ends. From here on a lane that closes
/// other than by a passed-on FIN (its process killed included) is reset,
/// as a client socket is. No Bridge stays open beside the lane to notice a
/// node gone without a word (its machine lost): keepalive probes notice it
/// on an idle lane within 16 s, and [`LANE_USER_TIMEOUT`] on one with bytes
/// unacknowledged (where Linux sends no probe, and would otherwise retry
/// for about 15 minutes).
fn tune(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let socket = socket2::SockRef::from(stream);
    socket.set_linger(Some(Duration::ZERO))?;
    #[cfg(target_os = "linux")]
    socket.set_tcp_user_timeout(Some(LANE_USER_TIMEOUT))?;
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(crate::TCP_KEEPALIVE)
            .with_interval(crate::KEEPALIVE_INTERVAL)
            .with_retries(3),
    )
}

/// How long a lane's sent bytes may go unacknowledged before the lane
/// fails (a reset at both clients), Linux's `TCP_USER_TIMEOUT`.
pub const LANE_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// The lanes an owner node expects: offered in `paired`, attached once by
/// the claimant's preamble. Clones share the table.
#[derive(Debug, Clone)]
pub struct Lanes {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    auth: PlaneAuth,
    node_id: Box<str>,
    expected: Mutex<HashMap<[u8; NONCE], Expected>>,
}

#[derive(Debug)]
struct Expected {
    registration: [u8; 32],
    claimant: Box<str>,
    tx: oneshot::Sender<LaneStream>,
}

/// A lane offered to a claimant: its token (for `paired`), and the wait for
/// it. Dropping the offer withdraws it.
#[derive(Debug)]
pub struct Offer {
    /// The token to send in `paired`.
    pub token: Bytes,
    /// Completes with the lane once it has attached.
    pub arrival: oneshot::Receiver<LaneStream>,
    nonce: [u8; NONCE],
    lanes: Lanes,
}

impl Drop for Offer {
    fn drop(&mut self) {
        self.lanes.table().remove(&self.nonce);
    }
}

impl Lanes {
    /// The table of the owner node `node_id`, minting tokens under `auth`.
    pub fn new(auth: PlaneAuth, node_id: &str) -> Self {
        Lanes {
            inner: Arc::new(Inner {
                auth,
                node_id: node_id.into(),
                expected: Mutex::default(),
            }),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; NONCE], Expected>> {
        self.inner
            .expected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Lanes offered and not yet attached or withdrawn.
    pub fn expected(&self) -> usize {
        self.table().len()
    }

    /// Offers the node `claimant` a lane for `registration`; `None` when the
    /// table is full or the claimant's id is too long for a token.
    pub fn offer(&self, registration: &[u8; 32], claimant: &str) -> Option<Offer> {
        if claimant.len() > usize::from(u8::MAX) {
            return None;
        }
        let nonce = *uuid::Uuid::new_v4().as_bytes();
        let expires = unix_ms() + LANE_TOKEN_TTL.as_millis() as u64;
        let token = mint_token(
            &self.inner.auth,
            &self.inner.node_id,
            claimant,
            registration,
            expires,
            nonce,
        );
        let (tx, arrival) = oneshot::channel();
        {
            let mut table = self.table();
            if table.len() >= EXPECTED_LANES_CAPACITY {
                return None;
            }
            let expected = Expected {
                registration: *registration,
                claimant: claimant.into(),
                tx,
            };
            table.insert(nonce, expected);
        }
        Some(Offer {
            token,
            arrival,
            nonce,
            lanes: self.clone(),
        })
    }

    /// A connection on the forwarding port whose first byte is a lane's
    /// (or, under TLS, whose handshake agreed on the lane's protocol):
    /// reads its preamble (within [`PREAMBLE_TIMEOUT`]), checks its token
    /// and hands it to the session that offered it. Otherwise the
    /// connection is dropped with a reset, nothing written to it, and the
    /// error says why (to be counted).
    pub async fn attach(&self, mut stream: LaneStream) -> Result<(), NotAttached> {
        tune(dtcp_duplex::OverTcp::tcp(&stream)).map_err(|_| NotAttached::Gone)?;
        let mut head = [0u8; HEAD];
        let mut token = [0u8; MAX_TOKEN];
        let read = async {
            stream.read_exact(&mut head).await?;
            let len = usize::from(u16::from_be_bytes([head[9], head[10]]));
            if &head[..8] != LANE_MAGIC || head[8] != LANE_VERSION || len > MAX_TOKEN {
                return Ok(None);
            }
            stream.read_exact(&mut token[..len]).await?;
            Ok::<_, std::io::Error>(Some(len))
        };
        let len = match tokio::time::timeout(PREAMBLE_TIMEOUT, read).await {
            Ok(Ok(Some(len))) => len,
            Ok(Ok(None)) => return Err(NotAttached::Refused(AuthFailure::LaneToken)),
            Ok(Err(_)) => return Err(NotAttached::Gone),
            Err(_) => return Err(NotAttached::Stalled),
        };
        let expected = self
            .check(&token[..len], unix_ms())
            .map_err(|failure| failure.map_or(NotAttached::Gone, NotAttached::Refused))?;
        expected.tx.send(stream).map_err(|_| NotAttached::Gone)
    }

    /// Checks a token at Unix time `now_ms` and takes its entry.
    fn check(&self, token: &[u8], now_ms: u64) -> Result<Expected, Option<AuthFailure>> {
        let token = Token::parse(token).ok_or(Some(AuthFailure::LaneToken))?;
        let owner = &*self.inner.node_id;
        if self.inner.auth.is_secure() {
            let expires = token.expires_ms.to_be_bytes();
            let parts = token_parts(owner, &token, &expires);
            if !self.inner.auth.verify(&parts, &token.mac) {
                return Err(Some(AuthFailure::LaneToken));
            }
        }
        if now_ms > token.expires_ms {
            return Err(Some(AuthFailure::LaneExpired));
        }
        let mut table = self.table();
        let Some(entry) = table.get(&token.nonce) else {
            // Attached before (or withdrawn): a lane carries one session.
            return Err(Some(AuthFailure::LaneReplay));
        };
        if entry.registration != token.registration || *entry.claimant != *token.claimant {
            return Err(Some(AuthFailure::LaneToken));
        }
        Ok(table.remove(&token.nonce).expect("just seen"))
    }
}

#[cfg(test)]
mod tests {
    use dtcp_wire::{Keyring, Secrets};

    use super::*;

    fn auth(secret: &str) -> PlaneAuth {
        PlaneAuth::new(Some(Keyring::new(Secrets::from_lines(secret))))
    }

    fn body(preamble: &[u8]) -> &[u8] {
        &preamble[HEAD..]
    }

    #[tokio::test]
    async fn a_token_attaches_once_to_its_registration_and_claimant() {
        let lanes = Lanes::new(auth("s1"), "owner");
        let reg = [7; 32];
        let offer = lanes.offer(&reg, "claimant").unwrap();
        assert_eq!(lanes.expected(), 1);
        let token = offer.token.clone();
        let pre = preamble(&token);
        assert!(is_lane_start(pre[0]));
        assert!(!is_lane_start(b'P') && !is_lane_start(0x16));
        // A changed byte anywhere in the token fails its MAC.
        let mut forged = token.to_vec();
        forged[40] ^= 1;
        assert_eq!(
            lanes.check(&forged, unix_ms()).unwrap_err(),
            Some(AuthFailure::LaneToken)
        );
        // Past its expiry.
        let late = unix_ms() + LANE_TOKEN_TTL.as_millis() as u64 + 1;
        assert_eq!(
            lanes.check(body(&pre), late).unwrap_err(),
            Some(AuthFailure::LaneExpired)
        );
        // Another secret's token.
        let other = mint_token(&auth("s2"), "owner", "claimant", &reg, late, [1; 16]);
        assert_eq!(
            lanes.check(&other, unix_ms()).unwrap_err(),
            Some(AuthFailure::LaneToken)
        );
        let entry = lanes.check(body(&pre), unix_ms()).unwrap();
        assert_eq!(entry.registration, reg);
        assert_eq!(
            lanes.check(body(&pre), unix_ms()).unwrap_err(),
            Some(AuthFailure::LaneReplay),
            "a token attaches once"
        );
        drop(offer);
        assert_eq!(lanes.expected(), 0);
    }

    #[tokio::test]
    async fn a_withdrawn_offer_is_a_replay_and_the_table_is_bounded() {
        let lanes = Lanes::new(auth("s1"), "owner");
        let offer = lanes.offer(&[1; 32], "c").unwrap();
        let pre = preamble(&offer.token);
        drop(offer);
        assert_eq!(
            lanes.check(body(&pre), unix_ms()).unwrap_err(),
            Some(AuthFailure::LaneReplay)
        );
        assert!(lanes.offer(&[1; 32], &"x".repeat(256)).is_none());
        let offers: Vec<_> = (0..EXPECTED_LANES_CAPACITY)
            .map(|_| lanes.offer(&[2; 32], "c").unwrap())
            .collect();
        assert!(lanes.offer(&[2; 32], "c").is_none(), "the table is full");
        drop(offers);
        assert_eq!(lanes.expected(), 0);
    }

    #[tokio::test]
    async fn attach_reads_the_preamble_and_hands_the_lane_over() {
        use tokio::io::AsyncWriteExt;
        let lanes = Lanes::new(auth("s1"), "owner");
        let mut offer = lanes.offer(&[3; 32], "c").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut client = dial(addr, None).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut bytes = after_head(&offer.token);
        bytes.extend_from_slice(b"early");
        client.write_all(&bytes).await.unwrap();
        lanes.attach(LaneStream::Plain(server)).await.unwrap();
        let mut lane = (&mut offer.arrival).await.unwrap();
        let mut got = [0; 5];
        lane.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"early", "the session's bytes follow the preamble");
    }
}
