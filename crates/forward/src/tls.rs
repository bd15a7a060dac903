//! TLS on the plane, reloadable: the certificate a node presents, the key,
//! and the CA it trusts come from files that may be replaced while the node
//! runs (a renewal by cert-manager). [`PlaneTls::reload`] reads them again
//! and swaps the server's and the dialer's rustls configurations; every
//! handshake from then on uses the new ones, while connections already
//! established keep what they were made with.
//!
//! tonic's own TLS settings are fixed when the server or the channel is
//! built, so the plane does its TLS itself: [`PlaneTls::accept`] makes a
//! server-side TLS stream of a connection the node accepted, and the dialer
//! connects through [`PlaneTls::connect`].

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};
use tonic::transport::server::Connected;

use crate::TCP_KEEPALIVE;
use crate::admission::{Admission, Probation};

/// The protocol both sides must agree on: gRPC is HTTP/2.
const ALPN_H2: &[u8] = b"h2";
/// The protocol of a lane under plane TLS (docs/PROTOCOL.md section 7.5):
/// how the owner's port tells a lane from HTTP/2 once the handshake is
/// done. A lane's dialer offers it before `h2`, and a node's server prefers
/// it, so a node that does not know it agrees on `h2` and the dialer, seeing
/// that, closes and leaves the session on the Bridge.
pub const ALPN_LANE: &[u8] = b"dtcp-lane/1";
/// How long a TLS handshake may take, either side.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a ClientHello looked at to tell a lane from HTTP/2 (a
/// node's is a few hundred).
const CLIENT_HELLO_MAX: usize = 4096;
/// How long to wait for the rest of a ClientHello not whole yet.
const HELLO_RETRY: Duration = Duration::from_millis(5);
/// The longest pause between two looks at a ClientHello still coming.
const HELLO_RETRY_MAX: Duration = Duration::from_millis(160);

/// Where the plane's TLS files are, and the name the nodes' certificates carry.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain this node presents.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM CA that signs every node's certificate (mutual TLS). Without it,
    /// nodes share one certificate and trust exactly it.
    pub ca: Option<PathBuf>,
    /// The name checked in the certificate of a node dialed.
    pub server_name: String,
}

impl TlsFiles {
    /// The files to watch for a change.
    pub fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        paths.extend(self.ca.as_deref());
        paths
    }
}

/// Why the plane's TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file holds no usable PEM certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the certificates (a key that does not match the
    /// certificate, an unusable CA, a bad server name).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The configurations in force, swapped as a whole on reload.
#[derive(Debug)]
struct Current {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// The dialer's configuration for a lane: the same certificates,
    /// offering the lane's protocol first.
    lane_client: Arc<ClientConfig>,
    /// Without a CA: the shared certificate trusted now, kept one reload
    /// longer so that nodes that have not reloaded yet still verify.
    shared: Option<CertificateDer<'static>>,
}

/// The plane's TLS, as both the server and the dialer use it; clones share
/// the configuration, so one reload serves both sides.
#[derive(Debug, Clone)]
pub struct PlaneTls {
    files: Arc<TlsFiles>,
    server_name: ServerName<'static>,
    current: Arc<RwLock<Current>>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no certificate".into(),
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        what: e.to_string(),
    })
}

fn config_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

impl PlaneTls {
    /// Reads the files and builds both configurations.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let server_name = ServerName::try_from(files.server_name.clone()).map_err(config_error)?;
        let current = build(&files, None)?;
        Ok(PlaneTls {
            files: Arc::new(files),
            server_name,
            current: Arc::new(RwLock::new(current)),
        })
    }

    /// The files this configuration comes from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again and, if they make a good configuration, puts it
    /// in force for every new handshake. On an error nothing changes: the
    /// node keeps serving with what it had (a file caught half-written).
    pub fn reload(&self) -> Result<(), TlsError> {
        let previous = self.lock().shared.clone();
        let next = build(&self.files, previous)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    fn lock(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.lock().server.clone())
    }

    fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.lock().client.clone())
    }

    /// Server side, before the plane's gate: whether the TLS ClientHello
    /// that `tcp` sent offers the lane's protocol ([`ALPN_LANE`]), read
    /// with rustls from the bytes that have come, left in the socket for the
    /// handshake. Waits for the ClientHello to come whole (the caller
    /// bounds the wait); `false` for anything that is not a ClientHello
    /// (its handshake fails in the gate, as it did before lanes).
    pub async fn offers_lane(tcp: &TcpStream) -> io::Result<bool> {
        let mut hello = vec![0u8; CLIENT_HELLO_MAX];
        // Bytes parsed last time, and the pause before the next look: a
        // ClientHello trickled in is parsed again only when it has grown,
        // and looked at less and less often.
        let (mut parsed, mut pause) = (0, HELLO_RETRY);
        loop {
            let n = tcp.peek(&mut hello).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if n == parsed {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(HELLO_RETRY_MAX);
                continue;
            }
            parsed = n;
            let mut acceptor = tokio_rustls::rustls::server::Acceptor::default();
            let mut rest = &hello[..n];
            while !rest.is_empty() {
                if acceptor.read_tls(&mut rest).is_err() {
                    return Ok(false);
                }
                match acceptor.accept() {
                    Ok(Some(accepted)) => {
                        let alpn = accepted.client_hello().alpn();
                        return Ok(alpn.is_some_and(|mut offered| offered.any(|p| p == ALPN_LANE)));
                    }
                    Ok(None) => {}
                    Err(_) => return Ok(false),
                }
            }
            if n == hello.len() {
                return Ok(false);
            }
            // Not whole yet (it is one segment from a node): a moment more.
            tokio::time::sleep(HELLO_RETRY).await;
        }
    }

    /// Server side of a lane (a connection whose ClientHello offered
    /// [`ALPN_LANE`]): the handshake, with the configuration in force now,
    /// within [`HANDSHAKE_TIMEOUT`]; an error unless it agreed on the lane's
    /// protocol.
    pub async fn accept_lane(&self, tcp: TcpStream) -> io::Result<server::TlsStream<TcpStream>> {
        tune(&tcp);
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor().accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_LANE) {
            return Err(io::Error::other(
                "a lane that did not agree on the lane's protocol",
            ));
        }
        Ok(stream)
    }

    /// Client side of a lane: a TLS handshake on `tcp`, a connection to a
    /// node's forwarding port, with the certificates in force now (client
    /// certificate and server name as the plane's own calls), offering the
    /// lane's protocol ([`ALPN_LANE`]) before HTTP/2, within
    /// [`HANDSHAKE_TIMEOUT`]. Which one the node agreed on is the caller's
    /// to check.
    pub async fn connect_lane(&self, tcp: TcpStream) -> io::Result<client::TlsStream<TcpStream>> {
        let connector = TlsConnector::from(self.lock().lane_client.clone());
        let handshake = connector.connect(self.server_name.clone(), tcp);
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }

    /// Server side: a TLS handshake on a connection a [`ConnectionGate`](crate::ConnectionGate)
    /// let in, with the configuration in force now, within
    /// [`HANDSHAKE_TIMEOUT`] (and the connection's probation).
    pub async fn accept(&self, tcp: Probation<TcpStream>) -> io::Result<PlaneIo> {
        tune(tcp.get_ref());
        let admission = tcp.admission().clone();
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor().accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(PlaneIo::Tls(Box::new(stream), admission))
    }

    /// Client side: connects to `uri`'s host and port and makes a TLS
    /// handshake with the configuration in force now, checking that the
    /// peer speaks HTTP/2.
    pub async fn connect(&self, uri: Uri) -> io::Result<TokioIo<client::TlsStream<TcpStream>>> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
        // A bracketed IPv6 literal is a host name to the URI, an address here.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => TcpStream::connect(SocketAddr::new(ip, port)).await?,
            Err(_) => TcpStream::connect((host, port)).await?,
        };
        tune(&tcp);
        let handshake = self.connector().connect(self.server_name.clone(), tcp);
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(io::Error::other("the peer node did not agree on HTTP/2"));
        }
        Ok(TokioIo::new(stream))
    }
}

/// A plane connection as the server serves it: through a [`ConnectionGate`](crate::ConnectionGate),
/// in clear or in TLS. Its [`Admission`] is in every request's extensions,
/// for the services to admit the connection once a call authenticates.
#[derive(Debug)]
pub enum PlaneIo {
    /// Plain text (`--insecure-plane` or no TLS files).
    Plain(Probation<TcpStream>, Admission),
    /// TLS, handshaken.
    Tls(Box<server::TlsStream<Probation<TcpStream>>>, Admission),
}

impl PlaneIo {
    /// A plain-text connection.
    pub fn plain(tcp: Probation<TcpStream>) -> Self {
        tune(tcp.get_ref());
        let admission = tcp.admission().clone();
        PlaneIo::Plain(tcp, admission)
    }

    /// Whether its TLS handshake agreed on the lane's protocol
    /// ([`ALPN_LANE`]): a lane, on a node that does none, or that did not
    /// tell it apart before its handshake.
    pub fn agreed_on_lane(&self) -> bool {
        match self {
            PlaneIo::Tls(tls, _) => tls.get_ref().1.alpn_protocol() == Some(ALPN_LANE),
            PlaneIo::Plain(..) => false,
        }
    }
}

impl Connected for PlaneIo {
    type ConnectInfo = Admission;

    fn connect_info(&self) -> Admission {
        match self {
            PlaneIo::Plain(_, a) | PlaneIo::Tls(_, a) => a.clone(),
        }
    }
}

impl AsyncRead for PlaneIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlaneIo::Plain(io, _) => Pin::new(io).poll_read(cx, buf),
            PlaneIo::Tls(io, _) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PlaneIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PlaneIo::Plain(io, _) => Pin::new(io).poll_write(cx, buf),
            PlaneIo::Tls(io, _) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PlaneIo::Plain(io, _) => Pin::new(io).poll_write_vectored(cx, bufs),
            PlaneIo::Tls(io, _) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PlaneIo::Plain(io, _) => io.is_write_vectored(),
            PlaneIo::Tls(io, _) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlaneIo::Plain(io, _) => Pin::new(io).poll_flush(cx),
            PlaneIo::Tls(io, _) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlaneIo::Plain(io, _) => Pin::new(io).poll_shutdown(cx),
            PlaneIo::Tls(io, _) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The plane's socket options, which tonic sets on the sockets it makes.
fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let _ = SockRef::from(tcp).set_tcp_keepalive(&TcpKeepalive::new().with_time(TCP_KEEPALIVE));
}

/// Both configurations from the files; `previous` is the shared certificate
/// trusted until now (no CA).
fn build(files: &TlsFiles, previous: Option<CertificateDer<'static>>) -> Result<Current, TlsError> {
    let chain = certs(&files.cert)?;
    let key = key(&files.key)?;
    let mut roots = RootCertStore::empty();
    let (server, shared) = match &files.ca {
        Some(ca) => {
            // Mutual TLS: every node presents a certificate signed by the CA.
            for cert in certs(ca)? {
                roots.add(cert).map_err(config_error)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider())
                    .build()
                    .map_err(config_error)?;
            let server = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(config_error)?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(config_error)?;
            (server, None)
        }
        None => {
            // One certificate shared by all nodes: trust exactly it, and
            // the one before it while the nodes reload one after another.
            let own = chain[0].clone();
            roots.add(own.clone()).map_err(config_error)?;
            if let Some(old) = previous.filter(|old| *old != own) {
                let _ = roots.add(old);
            }
            let server = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(config_error)?
                .with_no_client_auth()
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(config_error)?;
            (server, Some(own))
        }
    };
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots);
    let mut client = if files.ca.is_some() {
        client
            .with_client_auth_cert(chain, key)
            .map_err(config_error)?
    } else {
        client.with_no_client_auth()
    };
    let mut server = server;
    // The server's order decides: a lane's dialer offers both, gRPC only h2.
    server.alpn_protocols = vec![ALPN_LANE.to_vec(), ALPN_H2.to_vec()];
    let mut lane_client = client.clone();
    lane_client.alpn_protocols = vec![ALPN_LANE.to_vec(), ALPN_H2.to_vec()];
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Current {
        server: Arc::new(server),
        client: Arc::new(client),
        lane_client: Arc::new(lane_client),
        shared,
    })
}
