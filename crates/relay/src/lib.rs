//! A DTCP relay node (see PROTOCOL.md and DESIGN.md in the project's shared
//! documents): it pairs an Initiator's `CREATE` with a Target's `CONNECT` by
//! key and JIDs, answers `OK` to both, and pipes bytes between them.
//!
//! The `dtcp-relay` binary parses a [`Config`], installs the metrics recorder
//! ([`metrics::install`]) and calls [`Relay::bind`] then [`Relay::run`].

pub mod config;
mod conn;
mod forwarded;
mod http;
pub mod metrics;
mod node;
mod pairing;
mod plane;
mod pump;
mod server;
mod store_metrics;

pub use config::{Config, LogFormat};
pub use server::{Relay, RunError};
