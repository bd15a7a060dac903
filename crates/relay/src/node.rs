//! What every connection task of a node shares.

use std::sync::Arc;

use dtcp_store::{MemoryStore, NodeInfo, Rendezvous};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::pairing::{PendingTable, PerIpLimit};

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
}

impl Node {
    /// A lone node with the embedded in-memory store.
    pub fn standalone(config: Config) -> Self {
        let memory = Arc::new(MemoryStore::new());
        let per_ip = PerIpLimit::new(config.max_pending_per_ip);
        Node {
            config,
            info: NodeInfo {
                id: uuid::Uuid::new_v4().to_string(),
                forward_addr: String::new(),
            },
            store: memory.clone(),
            memory: Some(memory),
            cluster: false,
            pending: PendingTable::default(),
            per_ip,
            drain: CancellationToken::new(),
            stop: CancellationToken::new(),
            sessions: TaskTracker::new(),
        }
    }
}
