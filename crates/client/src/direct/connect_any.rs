//! The Target's side: [`connect_any`] tries the candidates in order, each
//! with its [`Timeouts`], and reports every [`Attempt`] that failed.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use dtcp_wire::{Condition, Triple, Verb, WireError};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use super::route::{Paired, connect_to};
use crate::candidates::{Candidate, Candidates, Role};
use crate::handshake::{ClientError, pair};

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
    use tokio::net::TcpListener;

    fn triple() -> Triple {
        Triple::new("k", "a@example.org/x", "b@example.net/y").unwrap()
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
}
