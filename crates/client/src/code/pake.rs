//! Code mode's handshake inside the paired stream (docs/PROTOCOL.md, "Code
//! mode"): end-to-end TLS first, then SPAKE2 on the code inside it, then
//! each side proves it holds the same key *and* sits on the same TLS
//! session.
//!
//! ```text
//! receiver -> sender:  STARTTLS\0           sender -> receiver: OK\0
//! TLS 1.3 handshake (the sender serves a fresh self-signed certificate;
//!                    the receiver takes any, the binding below decides)
//! inside TLS, both at once:
//!   0x01, SPAKE2 message (33 bytes, Ed25519 group, symmetric)
//!   (or the sender alone: 0x02 "this code is burned", then close)
//! K = the SPAKE2 key (password: the whole code; identity: "dtcp code mode v1")
//! E = TLS exporter, 32 bytes, label "EXPORTER-dtcp-code-mode-v1", no context
//! inside TLS, both at once:
//!   HMAC-SHA256(K, "dtcp code mode v1: sender\0" || E)    from the sender
//!   HMAC-SHA256(K, "dtcp code mode v1: receiver\0" || E)  from the receiver
//! ```
//!
//! A wrong code gives each side a different K, so both confirmations fail
//! and both sides stop before a byte of the file moves. Whoever terminates
//! TLS in between (a relay) sees two different E, so the confirmations fail
//! the same way: the certificate needs no pinning by hand.

use std::io;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity as PakeIdentity, Password, Spake2};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{client, server};

use super::Code;
use crate::handshake::ClientError;
use crate::tls;

/// A SPAKE2 message follows.
const PAKE: u8 = 0x01;
/// The sender will not run SPAKE2 again for this code.
const BURNED: u8 = 0x02;
/// SPAKE2 message length for the Ed25519 group: a side byte and a point.
const PAKE_MSG_LEN: usize = 33;
const IDENTITY: &[u8] = b"dtcp code mode v1";
const EXPORTER_LABEL: &[u8] = b"EXPORTER-dtcp-code-mode-v1";
const SENDER_CONFIRMS: &[u8] = b"dtcp code mode v1: sender\0";
const RECEIVER_CONFIRMS: &[u8] = b"dtcp code mode v1: receiver\0";

/// Why code mode's handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum PakeError {
    /// The two sides do not hold the same code (or something between them
    /// terminated TLS).
    #[error(
        "wrong code: the other side does not hold the same code (a typo, or someone else tried this code); nothing was transferred, start again with a new code"
    )]
    WrongCode,
    /// The sender already saw a wrong guess for this code and refuses to
    /// run the exchange again.
    #[error(
        "this code was already tried once with a wrong code (a typo, or someone else), so the sender stopped using it: nothing was transferred, ask the sender for a new code"
    )]
    Burned,
    /// End-to-end TLS failed.
    #[error(transparent)]
    Tls(#[from] ClientError),
    /// The peer sent something code mode does not have.
    #[error("the other side does not speak code mode: {0}")]
    Protocol(&'static str),
    /// The stream failed or ended during the handshake.
    #[error("the stream failed during the code exchange: {0}")]
    Io(#[from] io::Error),
}

/// The sender's (Initiator's) side: serves TLS, runs SPAKE2 and checks the
/// receiver's confirmation. Returns the stream to send the file on.
pub async fn sender(
    stream: TcpStream,
    code: &Code,
) -> Result<server::TlsStream<TcpStream>, PakeError> {
    let identity = tls::Identity::generate()?;
    let mut s = tls::accept(stream, &identity).await?;
    let exporter = exporter(
        s.get_ref()
            .1
            .export_keying_material([0u8; 32], EXPORTER_LABEL, None),
    )?;
    exchange(&mut s, code, &exporter, Side::Sender).await?;
    Ok(s)
}

/// The receiver's (Target's) side: TLS client, SPAKE2, and the sender's
/// confirmation checked. Returns the stream to receive the file on.
pub async fn receiver(
    stream: TcpStream,
    code: &Code,
) -> Result<client::TlsStream<TcpStream>, PakeError> {
    let mut s = tls::connect_unpinned(stream).await?;
    let exporter = exporter(
        s.get_ref()
            .1
            .export_keying_material([0u8; 32], EXPORTER_LABEL, None),
    )?;
    exchange(&mut s, code, &exporter, Side::Receiver).await?;
    Ok(s)
}

/// The sender's answer to whoever claims a code after a wrong guess: TLS,
/// then "burned", then close. No SPAKE2 runs, so no second guess is given.
pub async fn burned(stream: TcpStream) -> Result<(), PakeError> {
    let identity = tls::Identity::generate()?;
    let mut s = tls::accept(stream, &identity).await?;
    s.write_all(&[BURNED]).await?;
    s.shutdown().await?;
    Ok(())
}

fn exporter(r: Result<[u8; 32], rustls::Error>) -> Result<[u8; 32], PakeError> {
    r.map_err(|e| PakeError::Tls(ClientError::Tls(format!("exporter: {e}"))))
}

/// Which end of the exchange this is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Sender,
    Receiver,
}

/// Trades SPAKE2 messages, then confirmations bound to the TLS session.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    code: &Code,
    exporter: &[u8; 32],
    side: Side,
) -> Result<(), PakeError> {
    let (state, msg) = Spake2::<Ed25519Group>::start_symmetric(
        &Password::new(code.password()),
        &PakeIdentity::new(IDENTITY),
    );
    s.write_all(&[PAKE]).await?;
    s.write_all(&msg).await?;
    s.flush().await?;
    let mut tag = [0u8; 1];
    s.read_exact(&mut tag).await?;
    match (tag[0], side) {
        (PAKE, _) => {}
        (BURNED, Side::Receiver) => return Err(PakeError::Burned),
        _ => return Err(PakeError::Protocol("an unknown first message")),
    }
    let mut peer = [0u8; PAKE_MSG_LEN];
    s.read_exact(&mut peer).await?;
    let key = state
        .finish(&peer)
        .map_err(|_| PakeError::Protocol("a malformed SPAKE2 message"))?;
    let (ours, theirs) = match side {
        Side::Sender => (SENDER_CONFIRMS, RECEIVER_CONFIRMS),
        Side::Receiver => (RECEIVER_CONFIRMS, SENDER_CONFIRMS),
    };
    s.write_all(&confirmation(&key, ours, exporter).finalize().into_bytes())
        .await?;
    s.flush().await?;
    let mut got = [0u8; 32];
    s.read_exact(&mut got).await?;
    confirmation(&key, theirs, exporter)
        .verify_slice(&got)
        .map_err(|_| PakeError::WrongCode)
}

fn confirmation(key: &[u8], label: &[u8], exporter: &[u8; 32]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(label);
    mac.update(exporter);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap());
        let (a, b) = tokio::join!(a, l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn the_same_code_pairs_and_moves_bytes() {
        let code = Code::generate();
        let (i, t) = pair().await;
        let (s, r) = tokio::join!(sender(i, &code), receiver(t, &code));
        let (mut s, mut r) = (s.unwrap(), r.unwrap());
        s.write_all(b"file").await.unwrap();
        s.flush().await.unwrap();
        let mut got = [0u8; 4];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"file");
    }

    #[tokio::test]
    async fn a_wrong_code_fails_both_sides() {
        let code: Code = "7-aardvark-adroitness-absurd".parse().unwrap();
        let typo: Code = "7-aardvark-adroitness-accrue".parse().unwrap();
        let (i, t) = pair().await;
        let (s, r) = tokio::join!(sender(i, &code), receiver(t, &typo));
        assert!(matches!(s.unwrap_err(), PakeError::WrongCode));
        assert!(matches!(r.unwrap_err(), PakeError::WrongCode));
    }

    #[tokio::test]
    async fn a_burned_code_is_told() {
        let code = Code::generate();
        let (i, t) = pair().await;
        let (s, r) = tokio::join!(burned(i), receiver(t, &code));
        s.unwrap();
        assert!(matches!(r.unwrap_err(), PakeError::Burned));
    }
}
