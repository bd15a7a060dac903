//! End-to-end TLS through the relay (docs/PROTOCOL.md, section 2).
//!
//! Right after `OK` the Target sends `STARTTLS\0`, the Initiator answers
//! `OK\0`, and a TLS 1.3 handshake follows with the Target as client and the
//! Initiator as server. The Initiator's certificate is self-signed; the
//! Target trusts exactly the certificate whose SHA-256 fingerprint it was
//! told out of band, so neither the relay nor anyone else can sit in between.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use crate::handshake::ClientError;

/// What the Target sends to start TLS.
pub const STARTTLS: &[u8] = b"STARTTLS\0";
/// What the Initiator answers.
pub const STARTTLS_OK: &[u8] = dtcp_wire::OK;

/// The name the Target asks for. Only the fingerprint is checked, so it is
/// just a well-formed placeholder.
const SERVER_NAME: &str = "dtcp-initiator";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The Initiator's throwaway TLS identity: a fresh self-signed certificate.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Generates a key pair and a self-signed certificate.
    pub fn generate() -> Result<Self, ClientError> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
            .map_err(|e| ClientError::Tls(format!("generating a certificate: {e}")))?;
        let cert = certified.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let fingerprint = fingerprint(&cert);
        Ok(Identity {
            cert,
            key,
            fingerprint,
        })
    }

    /// The certificate's SHA-256 fingerprint, lowercase hex: what the
    /// Target must be told.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// The SHA-256 fingerprint of a certificate, lowercase hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// Parses a fingerprint as people paste it: hex, with or without `:` between bytes.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], ClientError> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex.trim(), &mut out)
        .map_err(|_| ClientError::Tls("a fingerprint is 64 hex digits (SHA-256)".into()))?;
    Ok(out)
}

/// Initiator side: waits for `STARTTLS\0`, answers `OK\0`, and serves TLS.
pub async fn accept(
    mut stream: TcpStream,
    identity: &Identity,
) -> Result<server::TlsStream<TcpStream>, ClientError> {
    expect(
        &mut stream,
        STARTTLS,
        "the peer closed instead of sending STARTTLS",
        "the peer did not ask for STARTTLS (it must be given the fingerprint)",
    )
    .await?;
    stream.write_all(STARTTLS_OK).await?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(
            vec![identity.cert.clone()],
            PrivateKeyDer::Pkcs8(identity.key.clone_key()),
        )
        .map_err(tls_err)?;
    TlsAcceptor::from(Arc::new(config))
        .accept(stream)
        .await
        .map_err(|e| ClientError::Tls(format!("handshake: {e}")))
}

/// Target side: sends `STARTTLS\0`, waits for `OK\0`, and connects with TLS,
/// trusting only the certificate with this SHA-256 fingerprint.
pub async fn connect(
    stream: TcpStream,
    fingerprint: [u8; 32],
) -> Result<client::TlsStream<TcpStream>, ClientError> {
    connect_with(stream, Some(fingerprint)).await
}

/// Target side without a fingerprint: takes whatever certificate the
/// Initiator shows. Only for a caller that authenticates the session itself
/// afterwards, as code mode does by binding its key exchange to the TLS
/// exporter ([`crate::code::pake`]).
pub async fn connect_unpinned(
    stream: TcpStream,
) -> Result<client::TlsStream<TcpStream>, ClientError> {
    connect_with(stream, None).await
}

async fn connect_with(
    mut stream: TcpStream,
    fingerprint: Option<[u8; 32]>,
) -> Result<client::TlsStream<TcpStream>, ClientError> {
    stream.write_all(STARTTLS).await?;
    expect(
        &mut stream,
        STARTTLS_OK,
        "the peer closed instead of answering STARTTLS",
        "the peer did not answer STARTTLS (it must start with TLS enabled)",
    )
    .await?;
    let provider = provider();
    let verifier = Pinned {
        fingerprint,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let name = ServerName::try_from(SERVER_NAME).expect("valid name");
    TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|e| ClientError::Tls(format!("handshake: {e}")))
}

/// Reads exactly `want` from the peer, or fails with `closed` / `wrong`.
async fn expect(
    stream: &mut TcpStream,
    want: &[u8],
    closed: &str,
    wrong: &str,
) -> Result<(), ClientError> {
    let mut got = vec![0u8; want.len()];
    stream
        .read_exact(&mut got)
        .await
        .map_err(|_| ClientError::Tls(closed.into()))?;
    if got != want {
        return Err(ClientError::Tls(wrong.into()));
    }
    Ok(())
}

fn tls_err(e: rustls::Error) -> ClientError {
    ClientError::Tls(e.to_string())
}

/// Trusts one certificate, named by its SHA-256 fingerprint (`None`: any),
/// and checks the handshake signatures against it as usual.
#[derive(Debug)]
struct Pinned {
    fingerprint: Option<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        let trusted = match &self.fingerprint {
            Some(fp) => bool::from(seen.ct_eq(fp)),
            None => true,
        };
        if trusted {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let id = Identity::generate().unwrap();
        let plain = parse_fingerprint(id.fingerprint()).unwrap();
        let colons: Vec<String> = plain.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(parse_fingerprint(&colons.join(":")).unwrap(), plain);
        assert!(parse_fingerprint("abcd").is_err());
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap());
        let (a, b) = tokio::join!(a, l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn pinned_handshake_succeeds_and_moves_bytes() {
        let id = Identity::generate().unwrap();
        let fp = parse_fingerprint(id.fingerprint()).unwrap();
        let (i, t) = pair().await;
        let (server, client) = tokio::join!(accept(i, &id), connect(t, fp));
        let (mut server, mut client) = (server.unwrap(), client.unwrap());
        client.write_all(b"secret").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 6];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"secret");
    }

    #[tokio::test]
    async fn a_wrong_fingerprint_is_refused() {
        let id = Identity::generate().unwrap();
        let other = Identity::generate().unwrap();
        let fp = parse_fingerprint(other.fingerprint()).unwrap();
        let (i, t) = pair().await;
        let (_server, client) = tokio::join!(accept(i, &id), connect(t, fp));
        let err = client.unwrap_err().to_string();
        assert!(err.contains("handshake"), "{err}");
    }
}
