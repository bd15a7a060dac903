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

#![forbid(unsafe_code)]

mod memory;
mod redis_store;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use dtcp_wire::RegistrationId;

pub use memory::MemoryStore;
pub use redis_store::{RedisConfig, RedisStore};

/// A relay node as other nodes see it: its id and the address of its
/// forwarding plane.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// Unique per process start (a UUID by default), so that a node restarted
    /// at the same address is a different owner.
    pub id: String,
    /// `host:port` other nodes dial to open a Bridge; empty for a lone node.
    pub forward_addr: String,
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

    /// Announces that `node` is alive for the next `ttl`.
    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), StoreError>;

    /// Withdraws `node`'s heartbeat (a clean shutdown).
    async fn remove_node(&self, node: &NodeInfo) -> Result<(), StoreError>;

    /// How many nodes have a live heartbeat.
    async fn nodes_alive(&self) -> Result<usize, StoreError>;

    /// Counts one more pending CREATE from `source`, across every node that
    /// shares the store, unless `max` are counted already: returns whether
    /// it was counted. The count expires `ttl` after its last increase, so
    /// a node that died holding counts leaves them for that long at most.
    async fn count_source(
        &self,
        source: IpAddr,
        max: usize,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Uncounts one pending CREATE from `source` (one that
    /// [`count_source`](Self::count_source) counted).
    async fn uncount_source(&self, source: IpAddr) -> Result<(), StoreError>;

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
