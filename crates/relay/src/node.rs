//! What every connection task of a node shares.

use std::sync::Arc;

use dtcp_store::{MemoryStore, NodeInfo, Rendezvous};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Hot;
use crate::pairing::{PendingTable, PerIpLimit};
use crate::server::Slots;
use crate::store_metrics::Instrumented;
use dtcp_forward::Dialer;

/// The state of one relay node.
#[derive(Debug)]
pub(crate) struct Node {
    pub config: Config,
    /// This node as the store and other nodes know it.
    pub info: NodeInfo,
    /// Where registrations are recorded.
    pub store: Arc<dyn Rendezvous>,
    /// The embedded store, when that is the store (for its gauge).
    pub memory: Option<Arc<MemoryStore>>,
    /// Whether other nodes can claim this node's CREATEs (cluster mode).
    pub cluster: bool,
    /// Opens Bridges to other nodes (cluster mode).
    pub dialer: Option<Dialer>,
    /// CREATEs of this node waiting for their CONNECT.
    pub pending: PendingTable,
    /// Pending CREATEs per source address.
    pub per_ip: Arc<PerIpLimit>,
    /// Fires when the node starts draining: new commands get `shutting-down`.
    pub drain: CancellationToken,
    /// Fires when the drain timeout has run out: sessions still open end.
    pub stop: CancellationToken,
    /// Pending CREATEs and paired sessions; a drain waits for them.
    pub sessions: TaskTracker,
    /// The metric series every session touches.
    pub hot: Hot,
    /// The connection limit (`config.max_connections`, as lowered to fit
    /// the open-file limit).
    pub slots: Slots,
}

impl Node {
    /// A node with this identity and store. `memory` is the store too when
    /// the node runs alone; `dialer` is set in cluster mode.
    pub fn new(
        config: Config,
        info: NodeInfo,
        store: Arc<dyn Rendezvous>,
        memory: Option<Arc<MemoryStore>>,
        dialer: Option<Dialer>,
    ) -> Self {
        let per_ip = PerIpLimit::new(config.max_pending_per_ip);
        Node {
            slots: Slots::new(config.max_connections),
            cluster: dialer.is_some(),
            config,
            info,
            store: Arc::new(Instrumented::new(store)),
            memory,
            dialer,
            pending: PendingTable::new(),
            per_ip,
            drain: CancellationToken::new(),
            stop: CancellationToken::new(),
            sessions: TaskTracker::new(),
            hot: Hot::new(),
        }
    }
}
