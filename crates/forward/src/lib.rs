//! The forwarding plane of a dtcp-relay cluster.
//!
//! A `CONNECT` that lands on a node that does not hold the Initiator opens a
//! gRPC `Bridge` stream (see `proto/forward.proto`) to the node that does.
//! This crate holds the messages generated from it, the Bridge call framed
//! by hand so that data crosses without copies ([`BridgeService`] on the
//! owner, [`Dialer`] on the caller, one HTTP/2 connection per peer node),
//! the cluster-secret check, and [`join()`], which pumps bytes between a TCP
//! socket and a Bridge in both directions with half-close and backpressure
//! (the buffers, rate caps and socket ends it shares with a local session's
//! pump are `dtcp-duplex`'s).

#![forbid(unsafe_code)]

mod activate;
mod admission;
mod auth;
mod call;
mod claimer;
mod codec;
mod dialer;
mod health;
mod join;
mod lane;
mod pool;
mod service;
mod tls;

/// The messages of `proto/forward.proto` (the service is framed by hand: see [`BridgeService`]).
#[expect(
    missing_docs,
    reason = "generated from proto/forward.proto, whose comments become its docs where it has them"
)]
pub mod proto {
    tonic::include_proto!("dtcp.forward.v1");
}

use std::net::SocketAddr;
use std::time::Duration;

pub use activate::{ActivationError, binding as activation_binding};
pub use admission::{Admission, ConnectionGate, Cut, Probation};
pub use auth::{AUTH_HEADER, AUTH_WINDOW, AuthFailure, Claimed, PlaneAuth, REPLAY_CACHE_CAPACITY};
pub use claimer::Claimer;
pub use codec::{Halves, Inbound, Outbound, SERVICE};
pub use dialer::{BridgeError, Dialer};
pub use health::{Authenticated, HEALTH_CALL_TIMEOUT, HEALTH_MAX_MESSAGE, health_binding};
pub use join::{End, Report, join};
pub use lane::{
    EXPECTED_LANES_CAPACITY, LANE_DIAL_TIMEOUT, LANE_MAGIC, LANE_TOKEN_TTL, LANE_USER_TIMEOUT,
    LANE_VERSION, LANE_WAIT, Lane, LaneAddr, LaneAt, LaneDial, LaneStream, Lanes, NotAttached,
    Offer, PREAMBLE_TIMEOUT, is_lane_start, mint_token, preamble,
};
pub use pool::{
    LANE_POOL_MAX, POOL_DIALS_MAX, POOL_LANES_MAX, POOL_MAX_AGE, POOLED_PEERS_MAX, PoolMetrics,
};
pub use service::BridgeService;
pub use tls::{ALPN_LANE, PlaneIo, PlaneTls, TlsError, TlsFiles};

/// Largest data frame: big enough to amortise HTTP/2 and protobuf framing,
/// small enough to keep per-stream buffering modest.
pub const FRAME_SIZE: usize = 256 * 1024;
/// Largest HTTP/2 frame the plane sends and accepts (16 KiB by default):
/// a data message then crosses in a few frames rather than sixteen.
pub const H2_MAX_FRAME: u32 = 1024 * 1024 - 1;
/// Frames queued toward the gRPC stream per direction: with HTTP/2 flow
/// control, this bounds what a stalled reader can make a node buffer.
pub const FRAMES_IN_FLIGHT: usize = 4;
/// HTTP/2 stream window: how much one session may have in flight.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 connection window, shared by all sessions between two nodes.
///
/// It is also what any connection to the plane port can make a node
/// buffer before its calls are refused (a refused call's body is still
/// received up to the window): 8 MiB, two sessions at their full stream
/// window, keeps a crowd of unauthenticated connections to the plane's cap
/// within the node's memory budget. Sessions' bytes cross on lanes; the
/// Bridge's data path is their fallback, and on a LAN 8 MiB in flight is
/// still gigabytes a second.
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// HTTP/2 PING interval and timeout, and TCP keepalive: a dead peer node is
/// noticed within seconds.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a PING may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// TCP keepalive idle time on plane connections.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(10);
/// How long dialing a peer node may take before the CONNECT gets `unavailable`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The `condition` of an error frame sent because a client connection reset
/// (every other error frame carries a docs/PROTOCOL.md condition).
pub const RESET: &str = "reset";

/// The cluster format a node of a release before the Bridge carried one
/// speaks on it: what a `format` field of 0 (absent) means.
pub const UNNUMBERED_FORMAT: u32 = 1;

/// The cluster format a frame's `format` field names: the field itself,
/// or [`UNNUMBERED_FORMAT`] from a node that sends none (0).
pub fn spoken_format(field: u32) -> u32 {
    if field == 0 { UNNUMBERED_FORMAT } else { field }
}

impl proto::Open {
    /// The Target's client address, if the CONNECT node sent one that
    /// parses (it is only ever logged).
    pub fn target(&self) -> Option<SocketAddr> {
        self.target_addr.parse().ok()
    }
}

impl proto::Frame {
    /// The first frame of a Bridge, for the Target at `target`; `lane`:
    /// the caller is dialing a lane for the session's bytes; `format`: the
    /// cluster format the caller writes to the owner.
    pub fn open(
        registration_id: &[u8; 32],
        owner_node_id: &str,
        target: SocketAddr,
        lane: bool,
        format: u32,
    ) -> Self {
        Self::of(proto::frame::Kind::Open(proto::Open {
            registration_id: bytes::Bytes::copy_from_slice(registration_id),
            owner_node_id: owner_node_id.to_owned(),
            target_addr: target.to_string(),
            lane,
            format,
        }))
    }

    /// The claim succeeded; the owner uses cluster format `format`.
    pub fn paired(format: u32) -> Self {
        Self::paired_with(bytes::Bytes::new(), format)
    }

    /// The claim succeeded, and the owner offers a lane with this token
    /// (empty: none); it uses cluster format `format`.
    pub fn paired_with(lane_token: bytes::Bytes, format: u32) -> Self {
        Self::of(proto::frame::Kind::Paired(proto::Paired {
            lane_token,
            format,
        }))
    }

    /// XEP-0065 mode: the pair is activated, the session starts.
    pub fn activated() -> Self {
        Self::activated_with(bytes::Bytes::new())
    }

    /// XEP-0065 mode: the pair is activated, and the owner offers a lane
    /// with this token (empty: none).
    pub fn activated_with(lane_token: bytes::Bytes) -> Self {
        Self::of(proto::frame::Kind::Activated(proto::Activated {
            lane_token,
        }))
    }

    /// Bytes of the session.
    pub fn data(bytes: bytes::Bytes) -> Self {
        Self::of(proto::frame::Kind::Data(bytes))
    }

    /// A half-close.
    pub fn fin() -> Self {
        Self::of(proto::frame::Kind::Fin(proto::Fin {}))
    }

    /// An abnormal end, with the docs/PROTOCOL.md condition the peer's client
    /// would be told.
    pub fn error(condition: dtcp_wire::Condition, text: &str) -> Self {
        Self::abnormal(condition.as_str(), text)
    }

    /// An abnormal end because the sender's client connection reset or
    /// failed.
    pub fn reset(text: &str) -> Self {
        Self::abnormal(RESET, text)
    }

    fn abnormal(condition: &str, text: &str) -> Self {
        Self::of(proto::frame::Kind::Error(proto::Error {
            condition: condition.to_owned(),
            text: text.to_owned(),
        }))
    }

    fn of(kind: proto::frame::Kind) -> Self {
        proto::Frame { kind: Some(kind) }
    }
}
