//! The node's side of the forwarding plane: the `Bridge` service (where a
//! claim from another node happens, and in XEP-0065 mode an activation)
//! and gRPC health.

use std::sync::Arc;

use dtcp_forward::proto::Open;
use dtcp_forward::{
    AuthFailure, BridgeService, CONNECTION_WINDOW, Claimer, H2_MAX_FRAME, Halves,
    KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, STREAM_WINDOW, TCP_KEEPALIVE,
};
use dtcp_wire::RegistrationId;
use metrics::counter;
use tokio::net::TcpListener;
use tonic::Status;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tracing::warn;

use crate::activation::Activated;
use crate::metrics::{AUTH_FAILURES, BRIDGE_ERRORS};
use crate::node::Node;
use crate::pending::{Claim, RemoteClaim, Requester, Socks5Claim};
use crate::protocol::Protocol;

/// gRPC health service name that says the process is alive (liveness probe).
pub(crate) const LIVENESS: &str = "dtcp.liveness";
/// gRPC health service name that says the node takes new work (readiness probe).
pub(crate) const READINESS: &str = "dtcp.readiness";

/// The owner's side of a Bridge: where a claim from another node happens.
struct Plane {
    node: Arc<Node>,
}

impl Claimer for Plane {
    fn claim(&self, open: Open, bridge: Halves) -> Result<(), Status> {
        let id = <[u8; 32]>::try_from(open.registration_id.as_ref())
            .map(RegistrationId::from_bytes)
            .map_err(|_| Status::invalid_argument("a registration id is 32 bytes"))?;
        if open.owner_node_id != self.node.info.id {
            // The store named an earlier process at this address.
            counter!(BRIDGE_ERRORS, "role" => "server", "reason" => "stale_owner").increment(1);
            return Err(Status::not_found("registered by another node"));
        }
        // The claim: only here, on the owner, can it happen.
        let Some(taken) = self.node.pending.take_entry(&id) else {
            return Err(Status::not_found("no such pending registration"));
        };
        let claimant = taken.tx;
        let remote = RemoteClaim {
            outbound: bridge.outbound,
            inbound: Box::new(bridge.inbound),
        };
        let claim = match taken.protocol {
            Protocol::Dtcp => Claim::Remote(remote),
            Protocol::Socks5 => {
                // A SOCKS5 pair: entered for its activation before the
                // requester's node can answer its client (see `activation`).
                let Some(ticket) = self.node.activations.pair(id, taken.record_expires) else {
                    return Err(Status::not_found("a pair of this stream is running"));
                };
                Claim::Socks5(Box::new(Socks5Claim {
                    requester: Requester::Remote(remote),
                    ticket,
                }))
            }
        };
        if claimant.send(claim).is_err() {
            return Err(Status::not_found("the initiator is gone"));
        }
        Ok(())
    }

    fn refused(&self, failure: AuthFailure) {
        counter!(AUTH_FAILURES, "reason" => failure.as_str()).increment(1);
    }

    fn activate(&self, id: &[u8; 32], owner_node_id: &str) -> Result<(), Status> {
        if owner_node_id != self.node.info.id {
            // The store named an earlier process at this address.
            return Err(Status::not_found("registered by another node"));
        }
        // Exactly once: decided here, on the owner, under the table's lock.
        match self
            .node
            .activations
            .activate(&RegistrationId::from_bytes(*id))
        {
            Activated::Now => Ok(()),
            Activated::NotFound => Err(Status::not_found("no such pair")),
            Activated::Already => Err(Status::already_exists("activated before")),
        }
    }
}

/// Serves the Bridge service and gRPC health on `listener` until `shutdown`
/// completes, then ends gracefully: the Bridges still open are finished and
/// flushed before the connections close.
pub(crate) async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    health: HealthServer<impl Health>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut builder = Server::builder()
        .tcp_nodelay(true)
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME);
    if let Some(tls) = tls {
        builder = match builder.tls_config(tls) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "forwarding plane TLS configuration refused");
                return;
            }
        };
    }
    let (auth, addr) = (node.trust.plane.clone(), node.info.forward_addr.clone());
    let bridge = BridgeService::new(Plane { node }, auth, &addr);
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE));
    if let Err(e) = builder
        .add_service(health)
        .add_service(bridge)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
    {
        warn!(error = %e, "forwarding plane stopped");
    }
}

/// Sets the health statuses: liveness always, readiness and the overall
/// status ("") by whether the node takes new work.
pub(crate) async fn set_health(reporter: &HealthReporter, ready: bool) {
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
    reporter.set_service_status(READINESS, status).await;
    reporter.set_service_status("", status).await;
}
