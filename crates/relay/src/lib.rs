//! A DTCP relay node (the wire protocol is `docs/PROTOCOL.md`, the design
//! `docs/ARCHITECTURE.md`): it pairs an Initiator's `CREATE` with a Target's
//! `CONNECT` by key and JIDs, answers `OK` to both, and pipes bytes between
//! them.
//!
//! The `dtcp-relay` binary parses a [`Config`], installs the metrics recorder
//! ([`metrics::install`]) and calls [`Relay::bind`] then [`Relay::run`].
//!
//! One connection goes down the modules in this order: `server` (wiring and
//! the drain), `accept` (a slot, a task, a span), `conn` (the handshake, and
//! the task that carries the connection to its end), `pairing` (registering
//! or claiming), `pending` (the table where claims happen) and `claim` (what
//! a claim hands over), `session` (the paired session and its pump).
//! Beside them: `plane` (the Bridge service, where another node's claim
//! arrives), `membership` (the heartbeat, and writing pending registrations
//! again when the store lost them), `admin` (the HTTP endpoints), and below
//! everything `node`, `limits`, `throttle` (the bandwidth caps), `reply`,
//! `socket` (helpers on a client's socket), `outcome`, `trust` (secrets and
//! their files), `metrics` and `config`.
//! XEP-0065 mode adds `xep0065` (its SOCKS5 handshake, its arrival between
//! `conn` and `pairing`, the XMPP component), `activation` (the table of its
//! pairs, below the node that holds it) and `protocol`.

pub mod config;
pub mod metrics;

mod accept;
mod activation;
mod admin;
mod claim;
mod conn;
mod descriptors;
mod formats;
mod limits;
mod membership;
mod node;
mod outcome;
mod pairing;
mod peers;
mod pending;
mod plane;
mod protocol;
mod reply;
mod server;
mod session;
mod sniff;
mod socket;
mod throttle;
mod trust;
mod xep0065;

pub use config::{Config, LogFormat};
pub use server::{Relay, RunError};
pub use trust::TrustError;
