//! The rendezvous store on Redis: one server, a Sentinel deployment, or a
//! Redis Cluster.
//!
//! Keys, all under a configurable prefix, and every command on one key so
//! that Redis Cluster can shard them (`keys.rs`; the values in `record.rs`):
//!
//! | key | value | TTL |
//! | --- | --- | --- |
//! | `<prefix>reg:<registration id>` | `<node id> <forward addr>[ <seal>]` of the owner, `- ` for a used signed key, or `? <node id>`: a waiter, the node of a `CONNECT` that came before its `CREATE` (`pairing.rs`) | pending TTL, the key's expiry, or the connect grace |
//! | `<prefix>node:<node id>` | the node's forward addr[ and its heartbeat seal] | heartbeat TTL |
//! | `<prefix>srcset:<address>` | sorted set: the pending CREATEs from that client address, cluster-wide, scored by their expiry (`sources.rs`) | the pending TTL, from its last member |
//! | `<prefix>nodes` | sorted set: `<node id> <forward addr>[ <heartbeat seal>]` scored by the heartbeat's expiry (ms) | none; expired members are trimmed |
//! | `<prefix>formats` | sorted set: `<node id> <formats spoken, 1,2>` scored by the heartbeat's expiry (ms); a node of format 1 writes none | none; expired members are trimmed |
//!
//! A node's `CONNECT`s look on a connection of its own that Redis tracks
//! for it (`tracking.rs`; on a Redis Cluster, one whose connection to each
//! master is tracked): Redis pushes the node the keys it read that are
//! written since, so a look that finds nothing leaves nothing. Where looks
//! are not tracked (`tracking` off, that connection down), a node is told
//! of a registration
//! it waits for on its own channel,
//! `<prefix>wake:<node id>` (sharded pub/sub on a Redis Cluster, which
//! needs Redis 7; `announce.rs`); a registration nobody waits for is
//! published nowhere, unless a live node speaks only format 1
//! ([`crate::FORMAT_LEGACY`]): then every registration is published on
//! `<prefix>registered` too, as that format does.
//!
//! Only registration ids (hashes) and client addresses go into keys, never
//! a key or a JID.
//!
//! Redis is not trusted with sizes: records are refused past a bound
//! (read up to it by a plain look, `bounded.rs`; checked once read by the
//! `SET ... GET` of a pair, `pairing.rs`), `nodes` members read only up to
//! a bound, announcements parsed only up to one
//! (`record.rs`), and a value is shown in errors and logs cut short and
//! escaped.
//!
//! The files depend on each other one way: `store` on the others; `rewrite`
//! on `pairing`; `tracking` on `bounded` and `source`; `cluster_tracking`
//! (its part for a Redis Cluster) on `tracking`, `conn` and `source`; `bounded`,
//! `pairing`, `rewrite` and `sources` on `run`; `run` and `announce` on
//! `conn` and `health`, `announce` on `source` too; `source` on `conn`;
//! `conn` on `config`; `keys` and `record` on nothing here. This file only
//! names them.

mod announce;
mod bounded;
mod cluster_tracking;
mod config;
mod conn;
mod health;
mod keys;
mod pairing;
mod record;
mod rewrite;
mod run;
mod source;
mod sources;
mod store;
mod tracking;

pub use config::{RedisConfig, RedisTls, SentinelConfig};
pub use store::RedisStore;
