//! One client connection, from its handshake to the end of its session.
//!
//! This folder reads the connection until its request is known: the
//! [`handshake`] (the preamble, [`proxy`], then the protocol the first byte
//! names: [`dtcp`], or in XEP-0065 mode SOCKS5, [`crate::xep0065::socks5`]),
//! which produces a [`Request`](crate::pairing::request::Request) to
//! register or to claim. The task then hands it down: to
//! [`crate::pairing`] for DTCP (`CREATE` registers and waits, `CONNECT`
//! claims), or for SOCKS5 to [`crate::xep0065::arrive`], which pairs through
//! the same steps. The paired session itself is in [`crate::session`].
//!
//! # Memory
//!
//! A task's memory is the size of its future's largest state, held for the
//! task's whole life, and every pending CREATE and every idle session is one
//! task. So the policy, which `state_size` below enforces:
//!
//! - the phases that come and go (the handshake, registering, a CONNECT, a
//!   refusal, the session) are each boxed, and only a pending CREATE's wait
//!   ([`create::Wait`]) is inline, in a hand-written state that keeps just
//!   what the wait needs;
//! - rarely taken branches inside a phase are boxed too (a refusal's linger,
//!   `OK` written in pieces, the Bridge call of a forwarded CONNECT), and so
//!   is the Bridge once open;
//! - a session's future is built by a plain fn returning an `async move`
//!   block (`session::start`), since an `async fn` keeps a second copy of
//!   every argument; and what a session holds until it ends is held beside
//!   its future (`session::Holding`), not by an `async` block that awaits
//!   it, which keeps the awaited future twice;
//! - the pump and the forwarding plane hold copy buffers and pipes only while
//!   data is in flight (`dtcp_duplex`'s pools: one of buffers for the
//!   process, pipes per thread), never while a session is idle.
//! - no log subscriber state per connection at the default level: the
//!   connection's tracing span is `debug` (an enabled span is a registry
//!   record with its formatted fields, about 500 bytes for the connection's
//!   life), so the lines a connection writes at `info` carry their
//!   registration and client addresses as fields instead.

mod dtcp;
mod handshake;
mod proxy;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::net::TcpStream;

use crate::limits::Slot;
use crate::node::Node;
use crate::pairing::connect;
use crate::pairing::create::{self, Admission, Pending, Wait};
use crate::pairing::request::{Refusal, Role, SOCKS5_UNKNOWN};
use crate::reply::{refuse_dtcp, refuse_socks5};
use crate::xep0065::arrive::arrive;

/// A boxed future of one phase of a connection.
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Serves one accepted connection to its end: the future of its task.
pub(crate) fn handle(
    node: Arc<Node>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
) -> Connection {
    Connection {
        admission: None,
        phase: Phase::Start {
            fut: Box::pin(start(node, stream, peer, slot)),
        },
    }
}

pin_project! {
    /// A connection task's future (see the module's memory policy).
    #[derive(Debug)]
    pub(crate) struct Connection {
        // A registering connection's slot and drain token, from the wait to
        // the session's end.
        admission: Option<Admission>,
        #[pin]
        phase: Phase,
    }
}

pin_project! {
    #[project = PhaseProj]
    enum Phase {
        // The handshake, then a CREATE's registration or a whole CONNECT.
        Start { fut: BoxFuture<Next> },
        // A pending CREATE.
        Waiting { #[pin] wait: Wait },
        // What follows the wait: the session, or a refusal.
        Finish { fut: BoxFuture<()> },
        Done,
    }
}

impl std::fmt::Debug for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Start { .. } => "Start",
            Phase::Waiting { .. } => "Waiting",
            Phase::Finish { .. } => "Finish",
            Phase::Done => "Done",
        })
    }
}

/// How the start of a connection ended.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once, then moved into the task's state, where a box would cost an allocation per pending CREATE"
)]
enum Next {
    /// Nothing more to do: refused, or a CONNECT handed over or served.
    Done,
    /// A registration is pending.
    Wait(Pending),
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            let next = match this.phase.as_mut().project() {
                PhaseProj::Start { fut } => match ready!(fut.as_mut().poll(cx)) {
                    Next::Done => Phase::Done,
                    Next::Wait(Pending { admission, wait }) => {
                        *this.admission = Some(admission);
                        Phase::Waiting { wait }
                    }
                },
                PhaseProj::Waiting { wait } => {
                    let (registered, waited) = ready!(wait.poll_wait(cx));
                    Phase::Finish {
                        fut: create::finish(registered, waited),
                    }
                }
                PhaseProj::Finish { fut } => {
                    ready!(fut.as_mut().poll(cx));
                    Phase::Done
                }
                PhaseProj::Done => {
                    *this.admission = None;
                    return Poll::Ready(());
                }
            };
            this.phase.set(next);
        }
    }
}

/// The handshake, then registering or claiming.
async fn start(node: Arc<Node>, mut stream: TcpStream, peer: SocketAddr, mut slot: Slot) -> Next {
    let request = match handshake::read(&node, &mut stream, peer, &mut slot).await {
        Ok(request) => request,
        Err(Some(Refusal::Dtcp(r))) => {
            refuse_dtcp(stream, Some(r.verb), r.condition, &r.text).await;
            return Next::Done;
        }
        Err(Some(Refusal::Socks5(r))) => {
            refuse_socks5(stream, SOCKS5_UNKNOWN, r).await;
            return Next::Done;
        }
        Err(None) => return Next::Done,
    };
    // Every later line of this connection names its registration.
    tracing::Span::current().record("registration", tracing::field::display(&request.id));
    let pending = match request.role {
        Role::Register => create::register(node, stream, slot, request).await,
        Role::Claim => {
            connect::claim(node, stream, slot, request).await;
            None
        }
        // Boxed: the SOCKS5 path's state stays out of every connection's.
        Role::Arrive(hash) => Box::pin(arrive(node, stream, slot, request, hash)).await,
    };
    match pending {
        Some(pending) => Next::Wait(pending),
        None => Next::Done,
    }
}

/// Every pending CREATE is a [`Connection`] (in its tracing span), and every
/// idle local session a `Connection` and a boxed local session, so their
/// size is most of what the relay holds per connection. These budgets catch a change that makes
/// them grow unnoticed (a large value held across an await, an unboxed
/// rarely-taken branch); raise them only knowingly.
#[cfg(test)]
mod state_size {
    use std::time::Duration;

    use bytes::BytesMut;
    use clap::Parser;
    use dtcp_wire::RegistrationId;
    use tokio::time::Instant;

    use super::*;
    use crate::claim::LocalClaim;
    use crate::limits::Slots;

    /// With tokio's task header and trailer (about 110 bytes), a task's
    /// memory comes in steps of 128 bytes on x86_64: this keeps a pending
    /// CREATE's task within 512.
    const CONNECTION_BUDGET: usize = 400;
    const SESSION_BUDGET: usize = 650;

    #[tokio::test]
    async fn connection_states_stay_within_budget() {
        let config = crate::config::Config::try_parse_from(["dtcp-relay"]).unwrap();
        let memory = Arc::new(dtcp_store::MemoryStore::new());
        let info = dtcp_store::NodeInfo {
            id: "n".into(),
            ..Default::default()
        };
        let trust = crate::trust::Trust::open();
        let node = Arc::new(Node::new(
            config,
            info,
            trust,
            memory.clone(),
            Some(memory),
            None,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let socket = || TcpStream::connect(addr);
        let slots = Slots::new(8);
        let slot = || slots.take().unwrap();

        // As spawned: inside the connection's tracing span.
        let connection_size = std::mem::size_of::<tracing::instrument::Instrumented<Connection>>();
        let claim = LocalClaim {
            stream: socket().await.unwrap(),
            early: BytesMut::new(),
            slot: slot(),
            received: Instant::now(),
            client: std::net::Ipv4Addr::LOCALHOST.into(),
            protocol: crate::protocol::Protocol::Dtcp,
        };
        let id = RegistrationId::of("k", "a@b", "c@d");
        // What `session::start` boxes for a local pair.
        let session_state = crate::session::local_run(
            node.clone(),
            socket().await.unwrap(),
            BytesMut::new(),
            claim,
            id,
            Duration::ZERO,
            std::net::Ipv4Addr::LOCALHOST.into(),
        );
        let session_size = std::mem::size_of_val(&session_state);
        drop(session_state);
        assert!(
            connection_size <= CONNECTION_BUDGET,
            "connection task state: {connection_size} bytes"
        );
        assert!(
            session_size <= SESSION_BUDGET,
            "session state: {session_size} bytes"
        );
    }
}
