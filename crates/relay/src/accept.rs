//! The accept loop: a connection slot for every client connection (each in
//! its own task and tracing span), a back-off when descriptors run out, and
//! a quick refusal past the connection limit.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use dtcp_wire::Condition;
use metrics::counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info_span, warn};

use crate::conn;
use crate::metrics::CONNECTIONS_REFUSED;
use crate::node::Node;
use crate::reply::refuse;

/// Connections being refused at once when the limit is reached; beyond this
/// they are closed without a reply.
const REFUSALS_IN_FLIGHT: usize = 64;
/// Pause after an `accept` that failed for lack of descriptors, so that the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts client connections for ever.
pub(crate) async fn accept_loop(node: Arc<Node>, listener: TcpListener) {
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if is_out_of_descriptors(&e) => {
                counter!(CONNECTIONS_REFUSED, "reason" => "descriptors").increment(1);
                warn!(error = %e, "accept failed: out of descriptors; backing off");
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
        // Every line this connection logs carries its peer and, once known,
        // the client's address (the peer's, or the one a trusted PROXY
        // protocol header names), the protocol it speaks and its
        // registration id.
        let span = info_span!(
            "connection",
            peer = %peer,
            client = tracing::field::Empty,
            protocol = tracing::field::Empty,
            registration = tracing::field::Empty
        );
        match node.slots.take() {
            Some(slot) => {
                let connection = conn::handle(node.clone(), stream, peer, slot);
                tokio::spawn(connection.instrument(span));
            }
            None => {
                counter!(CONNECTIONS_REFUSED, "reason" => "max_connections").increment(1);
                refuse_over_limit(stream, &refusals, span);
            }
        }
    }
}

fn refuse_over_limit(stream: TcpStream, refusals: &Arc<Semaphore>, span: tracing::Span) {
    // Past this many refusals in flight, close without a word.
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    let refusal = async move {
        let text = "the relay is at its connection limit";
        refuse(stream, None, Condition::ResourceConstraint, text).await;
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
