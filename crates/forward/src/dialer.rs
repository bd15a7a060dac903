//! The dialing side of the plane: one HTTP/2 connection per peer node,
//! shared by every session forwarded to it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dtcp_wire::Condition;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::auth::PlaneAuth;
use crate::call::{self, CallTo};
use crate::codec::Halves;
use crate::lane::{LaneAt, LaneDial, LaneStream};
use crate::pool::{LanePool, POOL_MAX_AGE, POOLED_USE_MAX, PoolMetrics, Pooled};
use crate::proto::Frame;
use crate::proto::frame::Kind;
use crate::tls::PlaneTls;
use crate::{
    CONNECT_TIMEOUT, CONNECTION_WINDOW, H2_MAX_FRAME, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT,
    STREAM_WINDOW, TCP_KEEPALIVE,
};

/// How long the owner node may take to answer a Bridge with `paired`.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a node that offered no lane is not dialed one: a node of a
/// version without lanes (during a rolling upgrade), or run without them,
/// would otherwise cost a wasted connection on both nodes for every
/// session. Short, so that an owner that merely lacked a slot, or was
/// upgraded, gets its lanes back soon.
const NO_LANE_MEMORY: Duration = Duration::from_secs(10);

/// Why a Bridge could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The owner node could not be reached (down, partitioned, draining past its end).
    #[error("owner node unreachable: {0}")]
    Unreachable(String),
    /// The owner has no such pending registration (claimed, withdrawn, or it
    /// is a different process than the one that registered it).
    #[error("no such pending registration on the owner node")]
    NotFound,
    /// The owner refused this node's authenticator (another cluster secret).
    #[error("the owner node refused this node's authenticator")]
    Unauthenticated,
    /// The owner answered something this node does not understand.
    #[error("bridge protocol error: {0}")]
    Protocol(String),
    /// The owner refused the claim with this condition (a policy of its
    /// own, such as the Initiator's address being at its session share):
    /// the Target is told the same.
    #[error("the owner node refused the claim: {}", .0.as_str())]
    Refused(Condition),
}

impl From<Status> for BridgeError {
    fn from(status: Status) -> Self {
        match status.code() {
            Code::NotFound => BridgeError::NotFound,
            Code::Unauthenticated => BridgeError::Unauthenticated,
            Code::InvalidArgument | Code::Internal => {
                BridgeError::Protocol(status.message().to_owned())
            }
            _ => BridgeError::Unreachable(status.message().to_owned()),
        }
    }
}

/// Opens Bridges to other nodes, keeping one channel (one HTTP/2 connection,
/// re-established on demand) per node address.
#[derive(Debug)]
pub struct Dialer {
    channels: DashMap<String, Channel>,
    tls: Option<PlaneTls>,
    auth: PlaneAuth,
    /// This node's id, which every call names as its caller.
    node_id: String,
    /// Whether this node dials lanes for the sessions it forwards.
    lanes: bool,
    /// Owner addresses that lately offered no lane, until when they are
    /// not dialed one (at most one entry per peer node).
    no_lanes: DashMap<String, Instant>,
    /// Lanes dialed ahead, per owner address (none unless
    /// [`with_lane_pool`](Dialer::with_lane_pool) sized it).
    pool: LanePool,
}

/// Where a claim's lane comes from.
enum Source {
    /// Taken from the pool, dialed ahead.
    Pooled(Pooled),
    /// Being dialed while the claim is in flight.
    Dialing(tokio::task::JoinHandle<Result<LaneStream, &'static str>>),
}

impl Dialer {
    /// A dialer for the node `node_id`, authenticating its calls with
    /// `auth`, over TLS when `tls` is given.
    pub fn new(tls: Option<PlaneTls>, auth: PlaneAuth, node_id: &str) -> Self {
        Dialer {
            channels: DashMap::new(),
            tls,
            auth,
            node_id: node_id.to_owned(),
            lanes: false,
            no_lanes: DashMap::new(),
            pool: LanePool::new(0, POOL_MAX_AGE, None, PoolMetrics::default()),
        }
    }

    /// Keep up to `size` lanes dialed ahead per owner node (0: none; at
    /// most [`LANE_POOL_MAX`](crate::LANE_POOL_MAX)), counted in `metrics`.
    /// A claim then takes one instead of dialing its lane (see
    /// [`Dialer::open`]).
    pub fn with_lane_pool(mut self, size: usize, metrics: PoolMetrics) -> Self {
        self.pool = LanePool::new(size, POOL_MAX_AGE, self.tls.clone(), metrics);
        self
    }

    /// Drops every lane dialed ahead (each reset) and dials no more: the
    /// node drains, and forwards no new claim.
    pub fn close_lane_pool(&self) {
        self.pool.close();
    }

    /// Dial lanes for the sessions this node forwards (`lanes`), or leave
    /// every session's bytes on its Bridge.
    pub fn with_lanes(mut self, lanes: bool) -> Self {
        self.lanes = lanes;
        self
    }

    /// Whether this node dials lanes.
    pub fn lanes(&self) -> bool {
        self.lanes
    }

    /// The node's id, which every call names as its caller.
    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The authenticator of this node's calls.
    pub(crate) fn auth(&self) -> &PlaneAuth {
        &self.auth
    }

    /// Whether to take a lane from the owner at `addr`: this node does
    /// lanes, and that owner did not lately decline one.
    fn wants_lane(&self, addr: &str) -> bool {
        if !self.lanes {
            return false;
        }
        let declined = self.no_lanes.get(addr).map(|until| Instant::now() < *until);
        match declined {
            Some(true) => false,
            Some(false) => {
                self.no_lanes.remove(addr);
                true
            }
            None => true,
        }
    }

    /// Forgets the channel to `addr`, and its lanes dialed ahead (its node
    /// is gone).
    pub(crate) fn forget(&self, addr: &str) {
        self.channels.remove(addr);
        self.pool.drain(addr);
    }

    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, BridgeError> {
        if let Some(ch) = self.channels.get(addr) {
            return Ok(ch.clone());
        }
        // `http` even with TLS: the TLS is this crate's, made by the
        // connector below with the certificates in force at each connection.
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| BridgeError::Unreachable(format!("bad node address {addr:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(TCP_KEEPALIVE))
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(H2_MAX_FRAME);
        let channel = match &self.tls {
            Some(tls) => {
                let tls = tls.clone();
                endpoint.connect_with_connector_lazy(tower::service_fn(move |uri| {
                    let tls = tls.clone();
                    async move { tls.connect(uri).await }
                }))
            }
            None => endpoint.connect_lazy(),
        };
        self.channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Asks the node at `addr` to pair its pending registration `id` with a
    /// Target held here, whose client address is `target`. On success the
    /// owner has sent its Initiator `OK`.
    ///
    /// When this node does lanes, and `at` is [`LaneAt::Paired`], the
    /// claim takes a lane dialed ahead from the owner's pool (young enough
    /// and still open), or else dials one while the claim is in flight (no
    /// round trip added either way), and a lane is dialed into the pool in
    /// its place; if the owner offers one in its `paired`, the halves carry
    /// it ([`Halves::lane`]). If the dial fails the owner is told at once
    /// (an empty data frame), and the Bridge carries the session's bytes.
    /// With [`LaneAt::Activated`] nothing is dialed yet: the halves carry
    /// the address to dial if the activation offers a lane.
    ///
    /// `format` is the cluster format this node writes to the owner (the
    /// newest both speak); the owner's answer is in [`Halves::format`], and
    /// an owner that answers a newer one than asked is a protocol error.
    pub async fn open(
        &self,
        addr: &str,
        id: &[u8; 32],
        owner_node_id: &str,
        target: SocketAddr,
        at: LaneAt,
        format: u32,
    ) -> Result<Halves, BridgeError> {
        let lane = self.wants_lane(addr);
        let source = (lane && at == LaneAt::Paired).then(|| self.lane_source(addr));
        let result = self
            .try_open(addr, id, owner_node_id, target, lane, format)
            .await;
        if let Err(BridgeError::Unreachable(_)) = &result {
            // Forget the channel and the pool: a node that is gone for
            // good must not stay cached.
            self.forget(addr);
        }
        let (mut halves, token) = match result {
            Ok(opened) => opened,
            Err(e) => {
                if let Some(Source::Dialing(dialing)) = source {
                    dialing.abort();
                }
                // A pooled lane is dropped (reset) with `source`.
                return Err(e);
            }
        };
        match (source, token.is_empty()) {
            (Some(source), false) => {
                // Refilled only now: a node that is gone, or declines
                // lanes, is not dialed ahead for nothing.
                self.pool.refill(addr);
                let dialed = match source {
                    Source::Pooled(pooled) if pooled.dialed.elapsed() < POOLED_USE_MAX => {
                        Ok(pooled.stream)
                    }
                    Source::Pooled(stale) => {
                        // The claim took so long that the owner's port may
                        // give up on this lane before its token comes.
                        drop(stale);
                        self.pool.metrics().aged_out.increment(1);
                        self.pool.metrics().dialed.increment(1);
                        crate::lane::dial(addr.to_owned(), self.tls.clone()).await
                    }
                    // The dial is bounded by LANE_DIAL_TIMEOUT from its start.
                    Source::Dialing(dialing) => dialing.await.unwrap_or(Err("error")),
                };
                halves.attach_lane(dialed, &token);
            }
            (Some(source), true) => {
                // Closed with a reset (zero linger) when dropped.
                if let Source::Dialing(dialing) = source {
                    dialing.abort();
                }
                halves.lane = LaneDial::Declined;
                self.no_lanes
                    .insert(addr.to_owned(), Instant::now() + NO_LANE_MEMORY);
                self.pool.drain(addr);
            }
            (None, _) if lane && at == LaneAt::Activated => {
                halves.lane =
                    LaneDial::AtActivation(crate::lane::LaneAddr::new(addr, self.tls.clone()));
            }
            (None, _) => {}
        }
        Ok(halves)
    }

    /// A claim's lane to `addr`: from the pool, or dialed now. One more is
    /// dialed into the pool once the owner has offered the claim a lane.
    fn lane_source(&self, addr: &str) -> Source {
        match self.pool.take(addr) {
            Some(pooled) => Source::Pooled(pooled),
            None => {
                self.pool.metrics().dialed.increment(1);
                let dial = crate::lane::dial(addr.to_owned(), self.tls.clone());
                Source::Dialing(tokio::spawn(dial))
            }
        }
    }

    async fn try_open(
        &self,
        addr: &str,
        id: &[u8; 32],
        owner_node_id: &str,
        target: SocketAddr,
        lane: bool,
        format: u32,
    ) -> Result<(Halves, bytes::Bytes), BridgeError> {
        let channel = self.channel(addr)?;
        let to = CallTo {
            caller: &self.node_id,
            callee: owner_node_id,
            addr,
            registration: id,
        };
        let open = Frame::open(id, owner_node_id, target, lane, format);
        let call = call::call(channel, &self.auth, to, open);
        let mut halves = tokio::time::timeout(OPEN_TIMEOUT, call)
            .await
            .map_err(|_| BridgeError::Unreachable("no answer from the owner node".into()))??;
        let first = tokio::time::timeout(OPEN_TIMEOUT, halves.inbound.next())
            .await
            .map_err(|_| {
                BridgeError::Unreachable("the owner node did not confirm the claim".into())
            })??;
        match first {
            Some(Kind::Paired(paired)) => {
                let (asked, answered) = (
                    crate::spoken_format(format),
                    crate::spoken_format(paired.format),
                );
                // A newer format than asked is the owner's mistake, but its
                // claim is made and its Initiator has its OK: the session
                // goes on in the format asked rather than being lost.
                halves.format = if answered > asked {
                    tracing::warn!(
                        asked,
                        answered,
                        "the owner answered a newer cluster format than asked; using the one asked"
                    );
                    format
                } else {
                    paired.format
                };
                Ok((halves, paired.lane_token))
            }
            Some(Kind::Error(e)) if e.condition == Condition::NotFound.as_str() => {
                Err(BridgeError::NotFound)
            }
            Some(Kind::Error(e)) => match e.condition.parse::<Condition>() {
                Ok(condition) => Err(BridgeError::Refused(condition)),
                Err(_) => Err(BridgeError::Protocol("unknown error condition".into())),
            },
            None => Err(BridgeError::NotFound),
            Some(_) => Err(BridgeError::Protocol("expected paired".into())),
        }
    }
}
