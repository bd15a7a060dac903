//! Client library for DTCP relays.
//!
//! An Initiator and a Target agree out of band on a key and their two JIDs
//! (a [`Triple`]), then each calls [`Initiator::connect`] or
//! [`Target::connect`] against the relay. Both get back a plain `TcpStream`
//! whose next byte is the peer's.
//!
//! The stream can then be secured end to end, protecting it from the relay
//! too ([`tls`]): the Target sends `STARTTLS\0`, the Initiator answers `OK\0`,
//! and a TLS 1.3 handshake follows with the Initiator as server (a
//! self-signed certificate, whose SHA-256 fingerprint it tells the Target out
//! of band) and the Target as client pinning that fingerprint.
//!
//! # Direct first, relay as fallback
//!
//! An Initiator can also listen itself and let the Target come straight to
//! it, with the relay as the fallback: [`Initiator::offer`] binds listeners
//! and gives the [`Candidates`] to hand the Target (text such as
//! `dtcp://192.168.1.5:7001,relay@relay.example.org:7777`), and
//! [`Offer::accept`] takes whichever path the Target completes first.
//! [`Target::connect_any`] tries the candidates in order. Both get back a
//! plain `TcpStream` on either path, so TLS works the same on both. See
//! [`direct`] for what is answered when, and the races.
//!
//! ```no_run
//! use dtcp_client::{Initiator, Target};
//! use dtcp_client::dtcp_wire::Triple;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let triple = Triple::new("s3cret", "alice@example.org", "bob@example.net")?;
//! // Initiator:
//! let offer = Initiator::offer(&["192.168.1.5:0".parse()?], Some("relay.example.org:7777"), &triple)
//!     .await?;
//! let text = offer.candidates().to_string(); // out of band to the Target
//! let initiator = tokio::spawn(offer.accept());
//! // Target:
//! let paired = Target::connect_any(&text.parse()?, &triple).await?;
//! println!("{} via {}", paired.route, paired.peer);
//! let _initiator_side = initiator.await??.stream;
//! # Ok(())
//! # }
//! ```
//!
//! [`transfer`] holds the framing the `dtcp` tool uses to send one file.
//!
//! # Code mode
//!
//! Instead of a key and two JIDs agreed out of band, the sender makes a
//! short [`code::Code`] and the receiver types it: [`code::Code::triple`]
//! gives both the same [`Triple`] (what the relay sees), and
//! [`code::sender`] / [`code::receiver`] secure the paired stream with TLS
//! authenticated by SPAKE2 on the code.
//!
//! # Where things are
//!
//! This file holds the two roles, [`Initiator`] and [`Target`];
//! `handshake.rs` the exchange they both make (one command, exactly its
//! reply: [`pair`], [`read_reply`], [`ClientError`]); [`candidates`] the
//! candidate list; [`code`] code mode; [`direct`] the direct-first offer
//! and its fallback, one file per part; [`tls`] end-to-end TLS; [`transfer`] the file framing.
//! `main.rs` and `cmd/` are the `dtcp` tool, built on this library and not
//! part of it.

#![forbid(unsafe_code)]

pub mod candidates;
pub mod code;
pub mod direct;
mod handshake;
pub mod tls;
pub mod transfer;

use std::net::SocketAddr;

use dtcp_wire::{Triple, Verb};
use tokio::net::{TcpStream, ToSocketAddrs};

use handshake::connect_relay;

pub use candidates::{Candidate, CandidateError, Candidates, Role};
pub use direct::{
    AllFailed, Attempt, AttemptError, DEFAULT_CONNECT_TIMEOUT, DEFAULT_RELAY_REPLY_TIMEOUT,
    DEFAULT_REPLY_TIMEOUT, Offer, OfferError, OfferEvent, Paired, Route, Timeouts,
};
pub use dtcp_wire;
pub use handshake::{ClientError, pair, read_reply};

/// The side that asks for a bytestream (sends `CREATE`).
#[derive(Debug, Clone, Copy)]
pub struct Initiator;

/// The side that accepts it (sends `CONNECT`).
#[derive(Debug, Clone, Copy)]
pub struct Target;

impl Initiator {
    /// Registers the session and waits until the Target claims it.
    pub async fn connect(
        relay: impl ToSocketAddrs,
        triple: &Triple,
    ) -> Result<TcpStream, ClientError> {
        pair(connect_relay(relay).await?, Verb::Create, triple).await
    }

    /// Listens on `listen` (port 0: one the system picks) and, once
    /// [accepted](Offer::accept), also registers at `relay` (`HOST:PORT`):
    /// direct first, relay as fallback. [`Offer::candidates`] is what to hand
    /// the Target.
    pub async fn offer(
        listen: &[SocketAddr],
        relay: Option<&str>,
        triple: &Triple,
    ) -> Result<Offer, OfferError> {
        Offer::bind(listen, relay, triple).await
    }
}

impl Target {
    /// Claims the session the Initiator registered.
    pub async fn connect(
        relay: impl ToSocketAddrs,
        triple: &Triple,
    ) -> Result<TcpStream, ClientError> {
        pair(connect_relay(relay).await?, Verb::Connect, triple).await
    }

    /// Tries the candidates in order (the Initiator's listeners, then the
    /// relay) with the default [`Timeouts`]; see [`direct::connect_any`].
    pub async fn connect_any(
        candidates: &Candidates,
        triple: &Triple,
    ) -> Result<Paired, AllFailed> {
        direct::connect_any(candidates, triple).await
    }

    /// [`Target::connect_any`] with these timeouts, telling `on_failure`
    /// about each candidate that failed as soon as it did.
    pub async fn connect_any_with(
        candidates: &Candidates,
        triple: &Triple,
        timeouts: &Timeouts,
        on_failure: impl FnMut(&Attempt),
    ) -> Result<Paired, AllFailed> {
        direct::connect_any_with(candidates, triple, timeouts, on_failure).await
    }
}
