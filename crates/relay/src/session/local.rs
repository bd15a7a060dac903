//! A session whose Initiator and Target are both connected to this node.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dtcp_duplex::reset_on_close;
use dtcp_wire::RegistrationId;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::claim::LocalClaim;
use crate::node::Node;
use crate::outcome::Outcome;
use crate::protocol::Protocol;
use crate::reply::send_ok;
use crate::session::pump::Pump;
use crate::session::report::{Ended, Side, finished};

/// `OK` to both (DTCP; a XEP-0065 pair has had its replies), then the pump
/// until the session ends.
///
/// A plain fn returning an `async move` block, which uses what it captures in
/// place: an `async fn` keeps a second copy of each argument (216 bytes
/// here), and every idle session would hold it.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice"
)]
pub(crate) fn run(
    node: Arc<Node>,
    initiator: TcpStream,
    i_early: BytesMut,
    claim: LocalClaim,
    id: RegistrationId,
    waited: Duration,
    client: IpAddr,
) -> impl Future<Output = ()> + Send {
    async move {
        // Released when the session ends.
        let _target_slot = &claim.slot;
        // From OK on, a socket closed by anything but a passed-on FIN (the
        // process killed included: the kernel then closes it) is reset, never
        // ended with a FIN the client could take for its peer's.
        reset_on_close(&initiator);
        reset_on_close(&claim.stream);
        let series = node.hot.local(claim.protocol);
        if claim.protocol == Protocol::Dtcp {
            send_ok(&initiator).await;
            send_ok(&claim.stream).await;
            node.hot.create_ok.increment(1);
            node.hot.connect_ok.increment(1);
            // A XEP-0065 pair's was recorded at its claim: the wait for
            // the activation is the clients', not the relay's.
            series.pairing_latency.record(claim.received.elapsed());
        }
        series.active.increment(1.0);
        let paired_at = Instant::now();
        let mut pump = Pump::new(
            (&initiator, &i_early, series.initiator_to_target.clone()),
            (
                &claim.stream,
                &claim.early,
                series.target_to_initiator.clone(),
            ),
            node.config.idle_timeout(),
            !node.config.no_splice,
            [node.throttle(), node.throttle()],
        );
        let outcome = tokio::select! {
            outcome = &mut pump => outcome,
            () = node.stop.cancelled() => Outcome::Drained,
        };
        if outcome != Outcome::Closed {
            // A reset is passed on, and a cut is one: close with RST, so that
            // neither client mistakes it for its peer's FIN. (Set since OK;
            // again here, where the reason is.)
            reset_on_close(&initiator);
            reset_on_close(&claim.stream);
        }
        let moved = pump.moved();
        series.active.decrement(1.0);
        let ended = Ended {
            side: Side::Local,
            id,
            paired_at,
            waited,
            moved,
            outcome,
            detail: None,
            clients: [Some(client), Some(claim.client)],
            via: None,
        };
        finished(series, ended);
    }
}
