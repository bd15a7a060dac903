//! What every connection task of a node shares.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dtcp_store::{MemoryStore, NodeInfo, Rendezvous};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use dtcp_duplex::Gates;
use dtcp_forward::{Dialer, Lanes};

use crate::activation::Activations;
use crate::claim::Claim;
use crate::config::Config;
use crate::descriptors::LanesAttaching;
use crate::formats::PeerFormats;
use crate::limits::{AddrGuard, ConnectionRate, PerAddress, PerIpLimit, Slots};
use crate::metrics::{Hot, Instrumented};
use crate::peers::PeerAddresses;
use crate::pending::PendingTable;
use crate::protocol::Protocol;
use crate::throttle::{NodeRate, Throttle};
use crate::trust::Trust;

/// What a client is told when the node, draining or stopping, takes no
/// more work or cuts what it has.
pub(crate) const SHUTTING_DOWN: &str = "the relay is shutting down";

/// The state of one relay node.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) config: Config,
    /// This node as the store and other nodes know it.
    pub(crate) info: NodeInfo,
    /// The secrets: signed keys, the plane's authenticators, record seals.
    pub(crate) trust: Trust,
    /// Where registrations are recorded.
    pub(crate) store: Arc<dyn Rendezvous>,
    /// The embedded store, when that is the store (for its gauge).
    pub(crate) memory: Option<Arc<MemoryStore>>,
    /// Whether other nodes can claim this node's CREATEs (cluster mode).
    pub(crate) cluster: bool,
    /// Opens Bridges to other nodes (cluster mode).
    pub(crate) dialer: Option<Dialer>,
    /// The lanes this node offers as an owner, when it does lanes.
    pub(crate) lanes: Option<Lanes>,
    /// The places of lanes attaching on the plane port, fitted to the
    /// open-file limit beside the connection limit (none until
    /// [`Node::with_lanes_attaching`]).
    pub(crate) lanes_attaching: LanesAttaching,
    /// The IP addresses of the live peer nodes, learned after each
    /// heartbeat: their connections to the plane port wait for their first
    /// byte among the lanes attaching.
    pub(crate) peers: PeerAddresses,
    /// CREATEs of this node waiting for their CONNECT.
    pub(crate) pending: PendingTable<Claim>,
    /// XEP-0065 pairs of this node waiting for (or past) their activation.
    pub(crate) activations: Activations,
    /// Whether a first byte `05` is SOCKS5 (XEP-0065 mode): on a node with
    /// the XMPP component, and on a cluster node started with
    /// `--accept-socks5` (whichever node holds the component activates pairs
    /// held by any). Elsewhere `05` is DTCP's `bad-request`: a SOCKS5 pair
    /// needs no key, so a node that serves only DTCP takes none.
    pub(crate) socks5: bool,
    /// Pending CREATEs per source address.
    pub(crate) per_ip: Arc<PerIpLimit>,
    /// Open connections and paired sessions per client address.
    pub(crate) per_address: Arc<PerAddress>,
    /// New connections per second per client address, if limited.
    pub(crate) rate: Option<ConnectionRate>,
    /// The node's bandwidth cap (`--max-node-rate`), shared by every session.
    pub(crate) node_rate: Option<Arc<NodeRate>>,
    /// Fires when the node starts draining: new commands get `shutting-down`.
    pub(crate) drain: CancellationToken,
    /// Fires when the drain timeout has run out: sessions still open end.
    pub(crate) stop: CancellationToken,
    /// Pending CREATEs and paired sessions; a drain waits for them.
    pub(crate) sessions: TaskTracker,
    /// The metric series every session touches.
    pub(crate) hot: Hot,
    /// The connection limit (`config.max_connections`, as lowered to fit
    /// the open-file limit).
    pub(crate) slots: Slots,
    /// The cluster format spoken to each peer node on the Bridge.
    pub(crate) formats: PeerFormats,
}

impl Node {
    /// A node with this identity, secrets and store. `memory` is the store
    /// too when the node runs alone; `dialer` is set in cluster mode.
    pub(crate) fn new(
        config: Config,
        info: NodeInfo,
        trust: Trust,
        store: Arc<dyn Rendezvous>,
        memory: Option<Arc<MemoryStore>>,
        dialer: Option<Dialer>,
    ) -> Self {
        let store: Arc<dyn Rendezvous> = Arc::new(Instrumented::new(store));
        let cluster = dialer.is_some();
        let lanes = dialer
            .as_ref()
            .filter(|d| d.lanes())
            .map(|_| Lanes::new(trust.plane.clone(), &info.id));
        let socks5 = config.xmpp.serves_socks5();
        // Counted across the cluster in the shared store, and here.
        let v6_prefix = config.ipv6_prefix_len;
        let per_ip = PerIpLimit::new(
            config.max_pending_per_ip,
            v6_prefix,
            cluster.then(|| store.clone()),
        );
        let per_address = PerAddress::new(
            config.max_connections_per_ip,
            config.max_sessions_per_ip,
            v6_prefix,
        );
        let node_rate = config.max_node_rate.map(NodeRate::new);
        let rate = config
            .max_connection_rate_per_ip
            .map(|n| ConnectionRate::new(n, config.connection_burst_per_ip, v6_prefix));
        let formats = PeerFormats::new(config.cluster_format_version);
        Node {
            slots: Slots::new(config.max_connections),
            cluster,
            config,
            info,
            trust,
            store,
            memory,
            dialer,
            lanes,
            lanes_attaching: LanesAttaching::new(0),
            peers: PeerAddresses::new(),
            pending: PendingTable::new(),
            activations: Activations::new(),
            socks5,
            per_ip,
            per_address,
            rate,
            node_rate,
            drain: CancellationToken::new(),
            stop: CancellationToken::new(),
            sessions: TaskTracker::new(),
            hot: Hot::new(),
            formats,
        }
    }

    /// The same node with `places` for its lanes attaching at once
    /// (`crate::descriptors::lanes_attaching_max`).
    pub(crate) fn with_lanes_attaching(mut self, places: usize) -> Self {
        self.lanes_attaching = LanesAttaching::new(places);
        self
    }
}

impl Node {
    /// How long a registration in `protocol` may wait for its partner: the
    /// pending TTL for a DTCP `CREATE`; for the first SOCKS5 connection of a
    /// stream hash, the (shorter) SOCKS5 wait, which also bounds its pair's
    /// wait for the activation.
    pub(crate) fn pending_wait(&self, protocol: Protocol) -> Duration {
        match protocol {
            Protocol::Dtcp => self.config.pending_ttl,
            Protocol::Socks5 => self.config.socks5_wait(),
        }
    }

    /// The bandwidth caps of one direction of a new session, if any.
    pub(crate) fn throttle(&self) -> Option<Box<Throttle>> {
        Throttle::new(
            self.config.max_session_rate,
            self.node_rate.clone(),
            self.hot.throttled.clone(),
        )
    }

    /// The caps of this node's side of a forwarded session.
    ///
    /// Each node of a forwarded session caps the bytes of its own client
    /// socket, so that each cap is asked once per byte it governs:
    /// - the session cap, per direction, on the node that reads that
    ///   direction from its client (the Initiator's bytes on the owner, the
    ///   Target's on the CONNECT node). Capped at its source, a direction
    ///   slows its sender through TCP at once and piles nothing up in the
    ///   Bridge, and no byte waits in two buckets of the same rate;
    /// - the node cap (the node's own total) on both directions here: this
    ///   node's client socket moves the bytes it reads and those it writes,
    ///   as a local session's two sockets do.
    pub(crate) fn gates(&self) -> Gates {
        let gate = |t: Box<Throttle>| -> Box<dyn dtcp_duplex::Gate> { t };
        let [read, write] = self.lane_throttles();
        Gates {
            read: read.map(gate),
            write: write.map(gate),
        }
    }
}

impl Node {
    /// The caps of this node's side of a session on a lane: its client
    /// socket to the lane, then the lane to its client socket (which node
    /// caps what: see [`Node::gates`]).
    pub(crate) fn lane_throttles(&self) -> [Option<Box<Throttle>>; 2] {
        let node_only = Throttle::new(None, self.node_rate.clone(), self.hot.throttled.clone());
        [self.throttle(), node_only]
    }
}

/// A connection refused for its client address's sake.
pub(crate) struct OverShare {
    /// The `reason` label of `dtcp_connections_refused_total`.
    pub(crate) reason: &'static str,
    /// The `ERROR` text.
    pub(crate) text: &'static str,
}

impl Node {
    /// Admits one more connection from the client at `ip`: within its
    /// connection rate (which counts it) and its share of open connections.
    pub(crate) fn admit_client(&self, ip: IpAddr) -> Result<AddrGuard, OverShare> {
        if let Some(rate) = &self.rate
            && !rate.check(ip)
        {
            return Err(OverShare {
                reason: "connection_rate",
                text: "too many new connections from this address",
            });
        }
        self.per_address.connection(ip).ok_or(OverShare {
            reason: "per_ip_connections",
            text: "too many open connections from this address",
        })
    }
}
