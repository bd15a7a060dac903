//! How the generator gets a connected pair of sockets: through a relay
//! (CREATE and CONNECT), through a plain TCP proxy in front of the
//! generator's own sink, or directly to that sink (the physical limit).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dtcp_wire::{Command, Reply, Triple, Verb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How long the bench's signed keys are valid.
const SIGNED_KEY_TTL: u64 = 3600;

/// `name` as a key: as it is, or signed with `secret` (with `name` as the nonce).
pub(crate) fn signed_key(
    secret: Option<&str>,
    name: &str,
    initiator: &str,
    target: &str,
) -> io::Result<String> {
    let Some(secret) = secret else {
        return Ok(name.to_owned());
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(io::Error::other)?
        .as_secs();
    dtcp_wire::sign(
        secret.as_bytes(),
        now + SIGNED_KEY_TTL,
        name,
        initiator,
        target,
    )
    .map_err(io::Error::other)
}

/// Where pairs come from.
#[derive(Debug)]
pub(crate) enum Endpoint {
    /// A DTCP relay (or cluster): CREATE on one list, CONNECT on the other.
    Relay {
        create_on: Vec<SocketAddr>,
        connect_on: Vec<SocketAddr>,
        /// Makes keys unique to this run.
        run: u64,
        /// Sign every key with this secret (a relay started with `--key-secret`).
        key_secret: Option<String>,
    },
    /// Connections to `addr` arrive at `sink` (a proxy in front of it, or the
    /// sink itself for the direct measurement).
    Sink { addr: SocketAddr, sink: Arc<Sink> },
}

/// A pair: `.0` is the Initiator's end (or the proxy client), `.1` the
/// Target's (or the sink's accepted socket), and the pairing latency.
pub(crate) type Pair = (TcpStream, TcpStream, Duration);

impl Endpoint {
    /// Opens pair number `n`.
    pub(crate) async fn pair(&self, n: u64) -> io::Result<Pair> {
        match self {
            Endpoint::Relay {
                create_on,
                connect_on,
                run,
                key_secret,
            } => {
                let (initiator, target) = (
                    "initiator@bench.example/load",
                    format!("target@bench.example/{n}"),
                );
                let key = signed_key(
                    key_secret.as_deref(),
                    &format!("bench-{run}-{n}"),
                    initiator,
                    &target,
                )?;
                let triple = Triple::new(key, initiator, target).map_err(io::Error::other)?;
                let create = Command::new(Verb::Create, triple.clone()).encode();
                let connect = Command::new(Verb::Connect, triple).encode();
                let mut i = connect_to(create_on[n as usize % create_on.len()]).await?;
                i.write_all(&create).await?;
                let mut t = connect_to(connect_on[n as usize % connect_on.len()]).await?;
                let started = Instant::now();
                t.write_all(&connect).await?;
                let (a, b) = tokio::join!(read_ok(&mut i), read_ok(&mut t));
                a?;
                b?;
                Ok((i, t, started.elapsed()))
            }
            Endpoint::Sink { addr, sink } => {
                let started = Instant::now();
                let (id, rx) = sink.expect();
                let mut c = connect_to(*addr).await?;
                c.write_all(&id.to_le_bytes()).await?;
                let t = tokio::time::timeout(Duration::from_secs(10), rx)
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "sink never saw the connection")
                    })?
                    .map_err(|_| io::Error::other("sink gone"))?;
                Ok((c, t, started.elapsed()))
            }
        }
    }
}

async fn connect_to(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Reads the relay's reply (with the client library's parser); anything
/// but `OK` is an error.
pub(crate) async fn read_ok(s: &mut TcpStream) -> io::Result<()> {
    match dtcp_client::read_reply(s).await {
        Ok(Reply::Ok) => Ok(()),
        Ok(Reply::Error { condition, text }) => Err(io::Error::other(format!(
            "relay refused: {condition}: {text}"
        ))),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// The generator's own sink: accepts connections, reads the 8-byte id each
/// one starts with, and hands the socket to whoever waits for that id.
#[derive(Debug)]
pub(crate) struct Sink {
    waiting: DashMap<u64, oneshot::Sender<TcpStream>>,
    next: AtomicU64,
}

impl Sink {
    /// Listens on `addr`; returns the sink and the bound address.
    pub(crate) async fn start(addr: SocketAddr) -> io::Result<(Arc<Sink>, SocketAddr)> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let sink = Arc::new(Sink {
            waiting: DashMap::new(),
            next: AtomicU64::new(0),
        });
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = conn.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let mut id = [0u8; 8];
                    if conn.read_exact(&mut id).await.is_ok()
                        && let Some((_, tx)) = s.waiting.remove(&u64::from_le_bytes(id))
                    {
                        let _ = tx.send(conn);
                    }
                });
            }
        });
        Ok((sink, bound))
    }

    fn expect(&self) -> (u64, oneshot::Receiver<TcpStream>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(id, tx);
        (id, rx)
    }
}
