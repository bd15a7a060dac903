//! The accept loop: a connection slot for every client connection (each in
//! its own task and tracing span), a back-off when descriptors run out, and
//! a quick refusal past the connection limit, or past a direct client
//! address's connection rate or share of open connections.

use std::io;
use std::sync::Arc;

use dtcp_duplex::ACCEPT_BACKOFF;
use dtcp_wire::Condition;
use metrics::counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, debug_span, info, warn};

use crate::conn;
use crate::metrics::CONNECTIONS_REFUSED;
use crate::node::Node;
use crate::reply::refuse_dtcp;

/// Connections being refused at once when the limit is reached; beyond this
/// they are closed without a reply.
const REFUSALS_IN_FLIGHT: usize = 64;

/// Accepts client connections for ever.
pub(crate) async fn accept_loop(node: Arc<Node>, listener: TcpListener) {
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    // Failed accepts in the current run of them: logged once per run (each
    // is counted), so that a node out of descriptors does not flood its log.
    let mut failures: u64 = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                if failures > 0 {
                    info!(failures, "accepting client connections again");
                    failures = 0;
                }
                accepted
            }
            Err(e) if is_out_of_descriptors(&e) => {
                counter!(CONNECTIONS_REFUSED, "reason" => "descriptors").increment(1);
                if failures == 0 {
                    warn!(error = %e, "accept failed: out of descriptors; backing off until it succeeds again (logged once)");
                }
                failures += 1;
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
            Err(e) => {
                debug!(error = %e, "accept failed");
                continue;
            }
        };
        node.hot.connections_accepted.increment(1);
        let _ = stream.set_nodelay(true);
        // With debug logging on, every line this connection logs carries its
        // peer and, once known, the client's address (the peer's, or the one
        // a trusted PROXY protocol header names), the protocol it speaks, its
        // registration id and, on an Initiator's connection a Target on
        // another node claimed, that Target's client address.
        // Debug, not info: an enabled span lives in the log subscriber's
        // registry as long as the connection, measured at about 500 bytes
        // per pending CREATE and 700 per idle session; at info level the
        // lines name the registration and the clients themselves (see
        // `session::report`), and a disabled span costs nothing.
        let span = debug_span!(
            "connection",
            peer = %peer,
            client = tracing::field::Empty,
            protocol = tracing::field::Empty,
            registration = tracing::field::Empty,
            target_client = tracing::field::Empty
        );
        // A direct client's address is known now: its rate and its share
        // are checked before it costs anything more. A trusted balancer's
        // connections are checked on the client its PROXY header names
        // (`conn::handshake`), never on the balancer itself.
        let mut client = None;
        if !node.config.trusts(peer.ip()) {
            match node.admit_client(peer.ip()) {
                Ok(guard) => client = Some(guard),
                Err(refused) => {
                    counter!(CONNECTIONS_REFUSED, "reason" => refused.reason).increment(1);
                    refuse_over_limit(stream, &refusals, span, refused.text);
                    continue;
                }
            }
        }
        match node.slots.take() {
            Some(mut slot) => {
                if let Some(guard) = client {
                    slot.count_against(guard);
                }
                let connection = conn::handle(node.clone(), stream, peer, slot);
                tokio::spawn(connection.instrument(span));
            }
            None => {
                counter!(CONNECTIONS_REFUSED, "reason" => "max_connections").increment(1);
                let text = "the relay is at its connection limit";
                refuse_over_limit(stream, &refusals, span, text);
            }
        }
    }
}

fn refuse_over_limit(
    stream: TcpStream,
    refusals: &Arc<Semaphore>,
    span: tracing::Span,
    text: &'static str,
) {
    // Past this many refusals in flight, close without a word.
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    let refusal = async move {
        refuse_dtcp(stream, None, Condition::ResourceConstraint, text).await;
        drop(permit);
    };
    tokio::spawn(refusal.instrument(span));
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
