//! Test processes shared by the store's tests and the whole-system tests:
//! one child-process guard ([`Process`]) and `redis-server` deployments on
//! loopback built on it ([`Server`], [`SentinelSet`], [`Cluster`]).
//!
//! It depends on no crate of the workspace, so that the store can take it as
//! a dev-dependency while the system tests, which depend on the store, use
//! it too.

mod process;
mod redis;

pub use process::{Process, wait_until};
pub use redis::{
    CLUSTER_NODE_TIMEOUT_MS, Cluster, DOWN_AFTER_MS, MASTER_NAME, REDIS_PASSWORD,
    SENTINEL_PASSWORD, START_TIMEOUT, SentinelSet, Server, free_port,
};
