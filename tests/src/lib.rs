//! The whole-system test harness: real `dtcp-relay` processes on loopback
//! (and, for the cluster, real `redis-server` processes), driven by real TCP
//! clients.
//!
//! Binaries are taken from the same target directory as the test itself, so
//! `cargo build --release --bins` must have run first (`scripts/test` does).
//!
//! By concern: [`relay`] (nodes as processes, [`NodeOptions`]), [`redis`]
//! (Redis servers and clusters), [`client`] (commands, replies, pairs),
//! [`pattern`] (checked byte streams), [`metrics`] (scraping a node),
//! [`trust`] (signed keys and sealed records), [`xmpp`] (Prosody and XMPP
//! clients), [`ejabberd`] (the other XMPP server),
//! [`haproxy`] (a real HAProxy sending the PROXY protocol),
//! [`chaos`] (seeded randomness, fixed ports, descriptor counts),
//! [`abuse`] (attack sources, a legitimate prober, a node's footprint).
//! [`containers`] (a private container engine, stand-in images, compose).

pub mod abuse;
pub mod chaos;
pub mod client;
pub mod containers;
pub mod ejabberd;
pub mod haproxy;
pub mod metrics;
pub mod pattern;
pub mod redis;
pub mod relay;
pub mod trust;
pub mod xmpp;

/// The test processes shared with the store's tests: Sentinel deployments,
/// replicated Redis Clusters, the child-process guard.
pub use dtcp_testkit as testkit;

pub use chaos::*;
pub use client::*;
pub use haproxy::*;
pub use metrics::*;
pub use pattern::*;
pub use redis::*;
pub use relay::*;
pub use trust::*;
