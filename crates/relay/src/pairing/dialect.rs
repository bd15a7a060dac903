//! What differs between the client protocols where pairing meets the
//! client that registers, as methods of its [`Protocol`] (which the first
//! byte of its handshake chose): how it is refused, how its socket waits
//! and is watched, how it goes to its session once claimed, and how it ends
//! when no claim came. Registering (`create.rs`) asks these of the
//! protocol and tells none apart itself.
//!
//! DTCP speaks in words: `ERROR` for a refusal, `OK` once paired. A
//! XEP-0065 waiter (the first SOCKS5 connection of a stream hash) has its
//! success reply as soon as it is registered: before that a refusal is a
//! reply code, after it a cut is a reset.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use dtcp_wire::socks5::ReplyCode;
use dtcp_wire::{Condition, RegistrationId};
use metrics::counter;
use tokio::net::TcpStream;
use tracing::debug;

use crate::claim::Claim;
use crate::limits::IpGuard;
use crate::metrics::COMMANDS;
use crate::node::Node;
use crate::pairing::early::{self, Held, poll_hung_up};
use crate::pairing::record::StoreRecord;
use crate::pairing::request::SOCKS5_WAITER;
use crate::protocol::Protocol;
use crate::reply::{Socks5Refusal, refuse_dtcp, refuse_socks5};
use crate::session;
use crate::socket::{poll_gone_unread, reset};

/// The `verb` label of a DTCP registration.
const CREATE: Option<&str> = Some("create");

impl Protocol {
    /// Refuses a registering client in its own protocol: DTCP `ERROR`, or
    /// a SOCKS5 reply (`02` for a conflict, `01` for everything else: SOCKS5
    /// has no finer code for a relay's trouble).
    pub(crate) async fn refuse_registrant(
        self,
        stream: TcpStream,
        condition: Condition,
        text: &str,
    ) {
        match self {
            Protocol::Dtcp => refuse_dtcp(stream, CREATE, condition, text).await,
            Protocol::Socks5 => {
                let code = match condition {
                    Condition::Conflict => ReplyCode::NotAllowed,
                    _ => ReplyCode::GeneralFailure,
                };
                debug!(
                    condition = condition.as_str(),
                    text, "SOCKS5 target refused"
                );
                refuse_socks5(stream, SOCKS5_WAITER, Socks5Refusal::Reply(code)).await;
            }
        }
    }

    /// Readies a registering client's socket for its wait, in which nothing
    /// is read from it: a DTCP Initiator's receive buffer is made small
    /// ([`early::hold`]); a XEP-0065 waiter's is left as it is (nothing is
    /// read from it before its activation either).
    pub(crate) fn hold(self, stream: &TcpStream) -> Held {
        match self {
            Protocol::Dtcp => early::hold(stream),
            Protocol::Socks5 => Held::NOTHING,
        }
    }

    /// Whether a waiting registering client has gone: a DTCP Initiator that
    /// hung up ([`poll_hung_up`]); a XEP-0065 waiter that closed without a
    /// byte or reset ([`poll_gone_unread`]: one that sent bytes and its FIN
    /// is kept, as its bytes are).
    pub(crate) fn poll_gone(self, stream: &TcpStream, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Protocol::Dtcp => poll_hung_up(stream, cx),
            Protocol::Socks5 => poll_gone_unread(stream, cx),
        }
    }

    /// The registering client of a claimed registration, ready for its
    /// session: a DTCP Initiator's wait released ([`early::release`]); a
    /// XEP-0065 waiter stays unread until its activation. `None` if the
    /// socket could not be kept.
    pub(crate) fn release(self, stream: TcpStream, held: Held) -> Option<TcpStream> {
        match self {
            Protocol::Dtcp => early::release(stream, held),
            Protocol::Socks5 => Some(stream),
        }
    }

    /// The session of a claimed registration, whose `record` is marked
    /// paired. A DTCP pair lets go of the Initiator's pending count and of
    /// the record as it starts. A XEP-0065 pair stays counted against its
    /// waiter's address until its activation, and keeps the record until it
    /// ends: an activation on any node finds this owner through it, and a
    /// third connection on any node is told `02`.
    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of a claimed registration, handed over at once"
    )]
    pub(crate) fn start_session(
        self,
        node: Arc<Node>,
        stream: TcpStream,
        early: BytesMut,
        mut claim: Claim,
        id: RegistrationId,
        waited: Duration,
        per_ip: IpGuard,
        record: StoreRecord,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let client = per_ip.ip();
        match &mut claim {
            Claim::Socks5(pair) => pair.ticket.count_against(per_ip),
            _ => drop(per_ip),
        }
        let session = session::start(node, stream, early, claim, id, waited, client);
        match self {
            Protocol::Dtcp => {
                drop(record);
                session
            }
            Protocol::Socks5 => Box::pin(async move {
                session.await;
                drop(record);
            }),
        }
    }

    /// Notes a registering client that hung up while it waited unclaimed.
    pub(crate) fn hung_up_unclaimed(self, id: RegistrationId) {
        match self {
            Protocol::Dtcp => {
                debug!(registration = %id, "initiator hung up while pending");
                counter!(COMMANDS, "verb" => "create", "outcome" => "abandoned").increment(1);
            }
            Protocol::Socks5 => {
                debug!(registration = %id, "SOCKS5 target hung up while pending");
            }
        }
    }

    /// Closes a registering client whose wait ended unclaimed (the pending
    /// TTL, the node shutting down): a DTCP Initiator is told why; a
    /// XEP-0065 waiter, which has its success reply, is reset.
    pub(crate) async fn close_unclaimed(
        self,
        stream: TcpStream,
        id: RegistrationId,
        condition: Condition,
        text: &str,
    ) {
        match self {
            Protocol::Dtcp => refuse_dtcp(stream, CREATE, condition, text).await,
            Protocol::Socks5 => {
                debug!(registration = %id, why = text, "SOCKS5 target closed unpaired");
                reset(stream);
            }
        }
    }
}
