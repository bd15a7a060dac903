//! The node's side of the forwarding plane: the `Bridge` service (where a
//! claim from another node happens, and in XEP-0065 mode an activation)
//! and gRPC health, both for nodes only (every call authenticated), on a
//! port bounded in connections (`--plane-max-connections`, each on
//! probation until its first authenticated call), streams
//! (`--plane-max-streams`), header size and resets. The port's
//! connections are told apart (HTTP/2 or a lane) in `sniff`.

use std::sync::Arc;
use std::time::Duration;

use dtcp_forward::proto::Open;
use dtcp_forward::{
    AuthFailure, Authenticated, BridgeService, CONNECTION_WINDOW, Claimer, ConnectionGate,
    H2_MAX_FRAME, HEALTH_MAX_MESSAGE, Halves, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, PlaneTls,
    STREAM_WINDOW, TCP_KEEPALIVE,
};
use dtcp_wire::RegistrationId;
use metrics::counter;
use tokio::net::TcpListener;
use tonic::Status;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tracing::warn;

use crate::activation::Activated;
use crate::claim::{Claim, RemoteClaim, Requester, Socks5Claim};
use crate::metrics::{BRIDGE_ERRORS, BRIDGE_FORMATS, bridge_format_label};
use crate::node::Node;
use crate::protocol::Protocol;
use crate::sniff::{LanePort, incoming, plane_cut, refused};

/// gRPC health service name that says the process is alive (liveness probe).
pub(crate) const LIVENESS: &str = "dtcp.liveness";
/// gRPC health service name that says the node takes new work (readiness probe).
pub(crate) const READINESS: &str = "dtcp.readiness";

/// The owner's side of a Bridge: where a claim from another node happens.
struct Plane {
    node: Arc<Node>,
}

impl Claimer for Plane {
    fn claim(&self, open: Open, caller: &str, bridge: Halves) -> Result<(), Status> {
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
        // The newest format both speak: the caller asked the newest it
        // knows this node to speak, from this node's heartbeat.
        let format =
            dtcp_forward::spoken_format(bridge.format).min(self.node.config.cluster_format_version);
        let remote = RemoteClaim {
            outbound: bridge.outbound,
            inbound: Box::new(bridge.inbound),
            client: open.target(),
            // The claimant is dialing a lane: it may be offered one.
            lane_peer: (open.lane && self.node.lanes.is_some()).then(|| caller.into()),
            format,
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
        // As the caller sent it: 0 from a node that sends none.
        counter!(BRIDGE_FORMATS, "role" => "server", "format" => bridge_format_label(open.format))
            .increment(1);
        Ok(())
    }

    fn refused(&self, failure: AuthFailure) {
        refused(failure);
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

/// How long a new plane connection has to make its first authenticated
/// call (probation); a peer node makes it as soon as it connects, since it
/// connects for a call.
const PLANE_PROBATION: Duration = Duration::from_secs(5);
/// Largest header list a plane call may send (HTTP/2 `SETTINGS`): a call's
/// headers, authenticator included, are a few hundred bytes.
const PLANE_MAX_HEADER_LIST: u32 = 8 * 1024;
/// Streams a peer may reset before the server has taken them, per
/// connection (h2's default, stated: the "rapid reset" bound).
const PLANE_MAX_PENDING_RESETS: usize = 20;
/// Streams this node may reset for a peer's protocol errors before the
/// connection is closed (h2's default, stated).
const PLANE_MAX_LOCAL_RESETS: usize = 1024;

/// The plane's gate: `--plane-max-connections`, each on probation until
/// its first authenticated call.
pub(crate) fn gate(max: u32) -> ConnectionGate {
    ConnectionGate::new(max as usize, PLANE_PROBATION, plane_cut)
}

/// Serves the Bridge service and gRPC health (for callers that authenticate
/// as nodes do) on `listener` until `shutdown` completes, then ends
/// gracefully: the Bridges still open are finished and flushed before the
/// connections close.
pub(crate) async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Option<PlaneTls>,
    gate: ConnectionGate,
    health: HealthServer<impl Health>,
    shutdown: impl Future<Output = ()> + Send,
) {
    // No `timeout` here: it would cut long-lived Bridges. Each call bounds
    // its own wait for its request (the Bridge's `open` frame, Activate's
    // request, a health request), and a connection with no authenticated
    // call is closed when its probation runs out.
    let mut builder = Server::builder()
        .tcp_nodelay(true)
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_concurrent_streams(node.config.plane_max_streams)
        .http2_max_header_list_size(PLANE_MAX_HEADER_LIST)
        .http2_max_pending_accept_reset_streams(Some(PLANE_MAX_PENDING_RESETS))
        .http2_max_local_error_reset_streams(Some(PLANE_MAX_LOCAL_RESETS));
    let (auth, addr) = (node.trust.plane.clone(), node.info.forward_addr.clone());
    let health = health.max_decoding_message_size(HEALTH_MAX_MESSAGE);
    let health = Authenticated::new(health, auth.clone(), &node.info.id, &addr, refused);
    let lanes = node.lanes.clone().map(|lanes| LanePort {
        lanes,
        attaching: node.lanes_attaching.clone(),
        peers: node.peers.clone(),
    });
    let silent_max = node.config.plane_max_connections as usize;
    let bridge = BridgeService::new(Plane { node }, auth, &addr);
    let router = builder.add_service(health).add_service(bridge);
    let incoming = incoming(listener, tls, gate, lanes, silent_max);
    if let Err(e) = router
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
