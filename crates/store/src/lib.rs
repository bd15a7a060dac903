//! The rendezvous store: which node holds the pending Initiator of each
//! registration, and which nodes are alive.
//!
//! The [`Rendezvous`] trait is what the relay programs against. [`MemoryStore`]
//! is the embedded default (one node, no Redis); a shared store lets a
//! `CONNECT` landing on any node find the node that owns the `CREATE`.
//!
//! [`RedisStore`] is the shared store of a cluster: one Redis, a Redis
//! Sentinel deployment (it follows the master through failovers), or a Redis
//! Cluster.
//!
//! Every operation names one key, so a store can be sharded (Redis Cluster).
//!
//! A shared store can lose what it was given (a Redis restarted empty, a
//! failover to a replica that had not yet received the last writes). A node
//! learns of it from [`Rendezvous::heartbeat`] ([`Beat::Lost`]) or at once
//! from [`Rendezvous::watch_recoveries`], and writes its pending registrations
//! again with [`Rendezvous::register_many`].

#![forbid(unsafe_code)]

mod memory;
mod redis;
mod rendezvous;
mod text;

pub use memory::MemoryStore;
pub use redis::{RedisConfig, RedisStore, RedisTls, SentinelConfig};
pub use rendezvous::{
    Beat, FORMAT_LEGACY, FORMAT_NEWEST, NodeInfo, Registered, Rendezvous, StoreError, USED_MARKER,
};
