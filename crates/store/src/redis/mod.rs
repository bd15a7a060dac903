//! The rendezvous store on Redis: one server, a Sentinel deployment, or a
//! Redis Cluster.
//!
//! Keys, all under a configurable prefix, and every command on one key so
//! that Redis Cluster can shard them (`keys.rs`; the values in `record.rs`):
//!
//! | key | value | TTL |
//! | --- | --- | --- |
//! | `<prefix>reg:<registration id>` | `<node id> <forward addr>[ <seal>]` of the owner, or `- ` for a used signed key | pending TTL, or the key's expiry |
//! | `<prefix>node:<node id>` | the node's forward addr[ and its heartbeat seal] | heartbeat TTL |
//! | `<prefix>srcset:<address>` | sorted set: the pending CREATEs from that client address, cluster-wide, scored by their expiry (`sources.rs`) | the pending TTL, from its last member |
//! | `<prefix>nodes` | sorted set: `<node id> <forward addr>[ <heartbeat seal>]` scored by the heartbeat's expiry (ms) | none; expired members are trimmed |
//!
//! Registrations are announced on the channel `<prefix>registered` (sharded
//! pub/sub on a Redis Cluster, which needs Redis 7; `announce.rs`).
//!
//! Only registration ids (hashes) and client addresses go into keys, never
//! a key or a JID.
//!
//! Redis is not trusted with sizes: records and `nodes` members are read
//! only up to a bound (`bounded.rs`), announcements parsed only up to one
//! (`record.rs`), and a value is shown in errors and logs cut short and
//! escaped.
//!
//! The files depend on each other one way: `store` on the others; `rewrite`
//! on `bounded`; `bounded`, `rewrite` and `sources` on `run`; `run` and `announce` on `conn` and `health`;
//! `conn` on `config`; `keys` and `record` on nothing here. This file only
//! names them.

mod announce;
mod bounded;
mod config;
mod conn;
mod health;
mod keys;
mod record;
mod rewrite;
mod run;
mod sources;
mod store;

pub use config::{RedisConfig, RedisTls, SentinelConfig};
pub use store::RedisStore;
