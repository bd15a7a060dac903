//! The rendezvous store: which node holds the pending Initiator of each
//! registration, and which nodes are alive.
//!
//! The [`Rendezvous`] trait is what the relay programs against. [`MemoryStore`]
//! is the embedded default (one node, no Redis); a shared store lets a
//! `CONNECT` landing on any node find the node that owns the `CREATE`.
//!
//! [`RedisStore`] is the shared store of a cluster.
//!
//! Every operation names one key, so a store can be sharded (Redis Cluster).

mod memory;
mod redis_store;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use dtcp_wire::RegistrationId;

pub use memory::MemoryStore;
pub use redis_store::{RedisConfig, RedisStore};

/// A relay node as other nodes see it: its id and the address of its
/// forwarding plane.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// Unique per process start (a UUID by default), so that a node restarted
    /// at the same address is a different owner.
    pub id: String,
    /// `host:port` other nodes dial to open a Bridge; empty for a lone node.
    pub forward_addr: String,
    /// A MAC the relay computes over the record (registration id, node id,
    /// address) under the cluster secret, stored with it, so that whoever
    /// can write the store cannot redirect a claim. The store keeps it
    /// opaque (no spaces); `None` on an insecure plane.
    pub seal: Option<String>,
}

/// The node id of the marker a signed key's registration leaves behind
/// once it has paired (see [`Rendezvous::retire_if_owner`]); no relay
/// node may have it (node ids are UUIDs or checked to be other words).
pub const USED_MARKER: &str = "-";

impl NodeInfo {
    /// The marker of a used signed key.
    pub fn used() -> Self {
        NodeInfo {
            id: USED_MARKER.to_owned(),
            ..NodeInfo::default()
        }
    }

    /// Whether this is the marker of a used signed key, not a node.
    pub fn is_used(&self) -> bool {
        self.id == USED_MARKER
    }
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.id, self.forward_addr)
    }
}

/// A store operation failed: the store cannot be reached or answered nonsense.
/// The relay reports it to clients as `unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or refused the operation.
    #[error("rendezvous store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with a value this version does not understand.
    #[error("rendezvous store holds a malformed value: {0}")]
    Malformed(String),
}

/// The rendezvous store.
///
/// Registrations expire by themselves after their TTL, so a crashed node
/// leaves nothing behind for longer than that.
#[async_trait]
pub trait Rendezvous: Send + Sync + fmt::Debug + 'static {
    /// Records `owner` as the holder of `id` for `ttl`, unless `id` is already
    /// registered. Returns `false` on such a conflict.
    async fn register(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// The owner of `id`, if it is registered.
    async fn lookup(&self, id: &RegistrationId) -> Result<Option<NodeInfo>, StoreError>;

    /// Removes `id` if, and only if, `owner` still holds it. Returns whether
    /// it removed anything.
    async fn remove_if_owner(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
    ) -> Result<bool, StoreError>;

    /// Replaces `id`'s record by the marker [`NodeInfo::used`] for
    /// `keep_for` if, and only if, `owner` still holds it: a signed key that
    /// paired stays void until it expires, with no extra round trip (this
    /// replaces the removal). A `register` of `id` meanwhile is a conflict
    /// and a `lookup` returns the marker. Returns whether it replaced it.
    async fn retire_if_owner(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
        keep_for: Duration,
    ) -> Result<bool, StoreError>;

    /// Announces that `node` is alive for the next `ttl`.
    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), StoreError>;

    /// Withdraws `node`'s heartbeat (a clean shutdown).
    async fn remove_node(&self, node: &NodeInfo) -> Result<(), StoreError>;

    /// How many nodes have a live heartbeat.
    async fn nodes_alive(&self) -> Result<usize, StoreError>;

    /// Registrations made by any node, and by whom, as they are made, when
    /// the store can tell (Redis pub/sub). Best effort: a CONNECT that waits for its CREATE
    /// is woken at once instead of at its next look; a missed one only waits
    /// for that look. `None`: the store cannot tell (one node needs no help).
    fn watch_registrations(&self) -> Option<tokio::sync::mpsc::Receiver<Registered>> {
        None
    }
}

/// A registration another node announced: a CONNECT waiting for it can open
/// its Bridge to `owner` without asking the store again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The registration.
    pub id: RegistrationId,
    /// The node that holds its Initiator.
    pub owner: NodeInfo,
}
