//! What both sides of a direct-or-relay pairing share: the [`Route`] a paired
//! stream took, the [`Paired`] stream itself, and dialing a [`Candidate`].

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::candidates::{Candidate, Host, Role};

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

/// Opens a TCP connection to a candidate, resolving its name if it has one.
pub(super) async fn connect_to(c: &Candidate) -> io::Result<TcpStream> {
    match c.host() {
        Host::Ip(ip) => TcpStream::connect(SocketAddr::new(*ip, c.port())).await,
        Host::Name(name) => TcpStream::connect((name.as_str(), c.port())).await,
    }
}
