//! Test processes shared by the store's tests and the whole-system tests:
//! one child-process guard ([`Process`]: started again with the same
//! arguments, signalled, waited for, its output kept as [`Lines`] or sent
//! where [`Output`] says, killed and reaped when dropped), polling until a
//! condition holds ([`wait_until`], [`poll_until`], [`poll_every`]), and `redis-server`
//! deployments on loopback built on the guard ([`Server`], [`SentinelSet`],
//! [`Cluster`]).
//!
//! It depends on no crate of the workspace, so that the store can take it as
//! a dev-dependency while the system tests, which depend on the store, use
//! it too.

mod output;
mod process;
mod redis;

pub use output::{Lines, Output};
pub use process::{Process, poll_every, poll_until, wait_until};
pub use redis::{
    CLUSTER_NODE_TIMEOUT_MS, Cluster, DOWN_AFTER_MS, MASTER_NAME, REDIS_PASSWORD,
    SENTINEL_PASSWORD, START_TIMEOUT, SentinelSet, Server, free_port,
};
