//! Tracked looks: a `CONNECT` that finds no record yet is told when one is
//! written by Redis itself, without a waiter entry, a swap or a `PUBLISH`.
//!
//! A node keeps one connection of its own (RESP3) with `CLIENT TRACKING ON`
//! and makes its `CONNECT`s' looks on it with a plain read (`GETRANGE`,
//! bounded as every look is: `bounded.rs`). Redis then
//! remembers that this connection read the key, and pushes an
//! `invalidate` message on it when anyone writes or deletes the key: the
//! registering `SET NX GET` included. The node wakes the `CONNECT`s that
//! wait for that registration, which look again (the read finds the
//! record, and tracks the key again). A pair whose `CONNECT` comes first
//! then costs Redis four commands (`GETRANGE`, `SET NX GET`, `GETRANGE`,
//! `GETDEL`), as
//! `INFO commandstats` counts them: the push is not a command.
//!
//! Redis bounds what it remembers (`tracking-table-max-keys`, a million
//! keys by default, about 100 bytes each with this store's key names): past
//! it, it forgets the oldest keys by invalidating them, which only makes
//! their `CONNECT`s look again early.
//!
//! On a Redis Cluster the key lives on one shard, and only that shard's
//! master can push its invalidation: the node keeps a cluster connection
//! of its own (RESP3) whose connection to every master has tracking on
//! ([`ClusterKeeper`]), and looks on it go to the master of the key's slot
//! like any command. So the race path is four commands there too, spread
//! over the shards with the keys.
//!
//! Whenever the connection (or, on a Cluster, one of its masters') is
//! down, or a look on it fails, looks leave waiter entries instead
//! (`pairing.rs`), so a node of an earlier version and a broken connection
//! both keep pairing; what the connection missed while it was down is
//! found by the `CONNECT`'s next look (`connect.rs` in the relay looks
//! again within 0.5-2 s).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::BackoffBuilder;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc;
use tracing::debug;

use super::bounded::record_range;
use super::config::RedisConfig;
use super::conn::cluster_builder;
use super::keys::Keys;
use super::source::{Source, within};
use crate::rendezvous::Registered;

/// How often a quiet tracking connection checks that its server still
/// answers (as the subscriptions do).
const TRACKING_CHECK: Duration = Duration::from_secs(2);

/// A connection whose reads are tracked.
#[derive(Clone)]
pub(crate) enum TrackedConn {
    /// One server, or the Sentinel master.
    One(MultiplexedConnection),
    /// A Redis Cluster: each master's connection has tracking on.
    Cluster(ClusterConnection),
}

/// The tracking connection, when it is up; shared by the looks and the
/// task that keeps it.
#[derive(Default)]
pub(crate) struct Tracking {
    /// The connection, and how many times tracking broke so far: a look
    /// during which it broke is not trusted ([`Tracking::look`]).
    state: Mutex<(Option<TrackedConn>, u64)>,
}

impl Tracking {
    fn state(&self) -> std::sync::MutexGuard<'_, (Option<TrackedConn>, u64)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether looks are tracked now.
    pub(crate) fn is_up(&self) -> bool {
        self.state().0.is_some()
    }

    fn set(&self, conn: TrackedConn) {
        self.state().0 = Some(conn);
    }

    /// How many times tracking broke so far.
    fn generation(&self) -> u64 {
        self.state().1
    }

    /// Sets `conn` unless tracking broke since `generation`.
    fn set_since(&self, conn: TrackedConn, generation: u64) {
        let mut state = self.state();
        if state.1 == generation {
            state.0 = Some(conn);
        }
    }

    /// Tracking is off (a connection dropped, a look failed): looks leave
    /// waiter entries until the task has made it again, or found at its
    /// next check (2 s) that the connection still answers.
    fn broken(&self) {
        let mut state = self.state();
        state.0 = None;
        state.1 += 1;
    }

    /// A tracked look: what a bounded read of `key` finds ([`record_range`]),
    /// within `limit`; `None` while tracking is off. An `Err` (the look
    /// failed, or tracking broke while it was in flight) leaves the caller
    /// to look the other way. The second matters on a Redis Cluster, whose
    /// connection makes a master's connection again by itself: a read that
    /// went over the new one, not tracked yet, would find nothing and never
    /// be told.
    pub(crate) async fn look(&self, key: &str, limit: Duration) -> Option<RedisResult<Vec<u8>>> {
        let (conn, generation) = {
            let state = self.state();
            (state.0.clone()?, state.1)
        };
        let read = record_range(key);
        let found = match conn {
            TrackedConn::One(mut conn) => within(limit, read.query_async(&mut conn)).await,
            TrackedConn::Cluster(mut conn) => within(limit, read.query_async(&mut conn)).await,
        };
        if found.is_err() {
            self.broken();
        } else if self.state().1 != generation {
            return Some(Err(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            )
            .into()));
        }
        Some(found)
    }
}

/// Starts the task that keeps `tracking`'s connection up, telling `tx` of
/// the registrations whose records changed; nothing where the client cannot
/// be made: looks leave waiter entries there.
pub(crate) fn start(
    config: &RedisConfig,
    keys: Keys,
    tracking: Arc<Tracking>,
    tx: mpsc::Sender<Registered>,
) {
    let keeper = Keeper {
        config: config.clone(),
        keys,
        tracking,
        tx,
    };
    if config.is_cluster() {
        return ClusterKeeper::start(keeper);
    }
    let source = match Source::new(config, ProtocolVersion::RESP3) {
        Ok(source) => source,
        Err(e) => {
            debug!(error = %e, "no tracked looks: the client cannot be made");
            return;
        }
    };
    tokio::spawn(keeper.run(source));
}

/// What keeps a tracking connection: where it connects, and whom it tells.
struct Keeper {
    config: RedisConfig,
    keys: Keys,
    tracking: Arc<Tracking>,
    tx: mpsc::Sender<Registered>,
}

impl Keeper {
    async fn run(self, mut source: Source) {
        let mut delays = self.config.backoff().build();
        while !self.tx.is_closed() {
            if let Err(e) = self.once(&mut source, &mut delays).await {
                debug!(error = %e, "tracking connection lost; connecting again");
            }
            self.tracking.broken();
            let delay = delays.next().unwrap_or(self.config.retry_max_delay);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.tx.closed() => break,
            }
        }
        self.tracking.broken();
    }

    /// One connection, until it breaks (`Err`) or the relay stops listening.
    async fn once(
        &self,
        source: &mut Source,
        delays: &mut backon::ExponentialBackoff,
    ) -> RedisResult<()> {
        let client = source.client(&self.config).await?;
        let (push_tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.response_timeout))
            .set_push_sender(push_tx);
        let mut conn = within(
            self.config.connect_timeout,
            client.get_multiplexed_async_connection_with_config(&connection),
        )
        .await?;
        let () = within(
            self.config.response_timeout,
            redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .query_async(&mut conn),
        )
        .await?;
        self.tracking.set(TrackedConn::One(conn.clone()));
        *delays = self.config.backoff().build();
        let mut check = tokio::time::interval(TRACKING_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        loop {
            tokio::select! {
                push = pushes.recv() => match push {
                    Some(PushInfo { kind: PushKind::Invalidate, data }) => self.invalidated(data),
                    Some(PushInfo { kind: PushKind::Disconnection, .. }) | None => {
                        return Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into());
                    }
                    Some(_) => {}
                },
                _ = check.tick() => {
                    let _: Value = within(
                        self.config.response_timeout,
                        redis::cmd("PING").query_async(&mut conn),
                    )
                    .await?;
                    // A look that failed took the connection out of use;
                    // it answers, so it is put back (its tracking is on).
                    if !self.tracking.is_up() {
                        self.tracking.set(TrackedConn::One(conn.clone()));
                    }
                }
                () = self.tx.closed() => return Ok(()),
            }
        }
    }

    /// Keys written or deleted since this connection read them: the
    /// registrations among them are told to the relay, whose `CONNECT`s
    /// waiting for them look again. (A flush sends no key: those look at
    /// their next poll.)
    fn invalidated(&self, data: Vec<Value>) {
        let Some(Value::Array(keys)) = data.into_iter().next() else {
            return;
        };
        for key in keys {
            let Value::BulkString(key) = key else {
                continue;
            };
            let Some(id) = std::str::from_utf8(&key)
                .ok()
                .and_then(|k| self.keys.reg_id(k))
            else {
                continue;
            };
            // Full: the relay is behind; those CONNECTs find theirs by looking.
            let _ = self.tx.try_send(Registered { id, owner: None });
        }
    }
}

/// Tracking on a Redis Cluster: one cluster connection of the node's own,
/// whose connection to every master has `CLIENT TRACKING ON`. The redis
/// crate makes a master's connection again by itself (a dropped one, a
/// replica promoted in a failover): every such drop is pushed here, looks
/// leave waiters until tracking is on again on every master, and it is
/// turned on again every [`TRACKING_CHECK`] anyway (it is idempotent),
/// which also reaches a master the connection met since without a drop.
/// A look that went to a master whose connection is not tracked yet finds
/// what is there; if nothing, its `CONNECT` finds the record at its next
/// look, as when the single server's connection is lost.
struct ClusterKeeper {
    keeper: Keeper,
    client: ClusterClient,
}

impl ClusterKeeper {
    fn start(keeper: Keeper) {
        let (push_tx, pushes) = mpsc::unbounded_channel::<PushInfo>();
        let tracking = keeper.tracking.clone();
        let client = match cluster_builder(&keeper.config)
            .use_protocol(ProtocolVersion::RESP3)
            // Called before the connection takes the command to make a
            // dropped master's connection again: from here on, a look
            // that was in flight is not trusted.
            .push_sender(move |push: PushInfo| {
                if push.kind == PushKind::Disconnection {
                    tracking.broken();
                }
                push_tx.send(push)
            })
            // A look sent on a dropped connection fails rather than going
            // over a new one, not tracked yet; a slot moved (`MOVED`) too:
            // the look is then made the other way.
            .retries(0)
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                debug!(error = %e, "no tracked looks: the cluster client cannot be made");
                return;
            }
        };
        tokio::spawn(ClusterKeeper { keeper, client }.run(pushes));
    }

    async fn run(self, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
        let keeper = &self.keeper;
        let mut delays = keeper.config.backoff().build();
        let mut conn: Option<ClusterConnection> = None;
        let mut next_check = tokio::time::Instant::now();
        loop {
            tokio::select! {
                push = pushes.recv() => match push {
                    Some(PushInfo { kind: PushKind::Invalidate, data }) => keeper.invalidated(data),
                    Some(PushInfo { kind: PushKind::Disconnection, .. }) => {
                        // A master's connection dropped (tracking is off
                        // already: the push sender): the one made in its
                        // place, maybe to a promoted replica, is not
                        // tracked until tracking is turned on there.
                        next_check = tokio::time::Instant::now();
                    }
                    Some(_) => {}
                    None => break,
                },
                () = tokio::time::sleep_until(next_check) => {
                    // A drop during the check may have left a master's
                    // connection made again after its `CLIENT TRACKING ON`.
                    let generation = keeper.tracking.generation();
                    let wait = match self.track_every_master(&mut conn).await {
                        Ok(conn) => {
                            if !keeper.tracking.is_up() {
                                keeper.tracking.set_since(TrackedConn::Cluster(conn), generation);
                            }
                            delays = keeper.config.backoff().build();
                            TRACKING_CHECK
                        }
                        Err(e) => {
                            debug!(error = %e, "tracking not on every master; connecting again");
                            keeper.tracking.broken();
                            // A new connection reads the slots afresh: this
                            // one, which retries nothing, may still route
                            // to a dead master, or be wedged for good
                            // (`ClusterConn` in conn.rs).
                            conn = None;
                            delays.next().unwrap_or(keeper.config.retry_max_delay)
                        }
                    };
                    next_check = tokio::time::Instant::now() + wait;
                }
                () = keeper.tx.closed() => break,
            }
        }
        keeper.tracking.broken();
    }

    /// `CLIENT TRACKING ON` on every master, through `conn` (made first if
    /// there is none): the connection, once every master the cluster names
    /// now (`CLUSTER SLOTS`) said `OK`. The connection sends a command to
    /// every master it knows and has a connection to: it skips one it
    /// cannot reach, and learns of a replica promoted since only when a
    /// command fails, so what answered is checked against the cluster's
    /// own view.
    async fn track_every_master(
        &self,
        conn: &mut Option<ClusterConnection>,
    ) -> RedisResult<ClusterConnection> {
        let config = &self.keeper.config;
        let mut current = match conn.take() {
            Some(current) => current,
            None => within(config.connect_timeout, self.client.get_async_connection()).await?,
        };
        *conn = Some(current.clone());
        let slots = within(
            config.response_timeout,
            current.route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            ),
        )
        .await?;
        let all_masters = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let answers = within(
            config.response_timeout,
            current.route_command(
                redis::cmd("CLIENT").arg("TRACKING").arg("ON").clone(),
                all_masters,
            ),
        )
        .await?;
        let (masters, tracked) = (masters(&slots), tracked_masters(&answers));
        if masters.is_empty() {
            return Err((redis::ErrorKind::Io, "no master serves a slot").into());
        }
        match masters.into_iter().find(|m| !tracked.contains(m)) {
            None => Ok(current),
            Some(missed) => Err((redis::ErrorKind::Io, "a master is not tracked", missed).into()),
        }
    }
}

/// The masters a `CLUSTER SLOTS` reply names, as `host:port`.
fn masters(slots: &Value) -> BTreeSet<String> {
    let Value::Array(ranges) = slots else {
        return BTreeSet::new();
    };
    ranges
        .iter()
        .filter_map(|range| {
            // [first slot, last slot, [host, port, id, ...], replicas...]
            let Value::Array(range) = range else {
                return None;
            };
            let Some(Value::Array(master)) = range.get(2) else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(host) => String::from_utf8_lossy(host).into_owned(),
                Value::SimpleString(host) => host.clone(),
                _ => return None,
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return None;
            };
            Some(format!("{host}:{port}"))
        })
        .collect()
}

/// The masters whose answer to a command sent to all of them was `OK`.
fn tracked_masters(answers: &Value) -> BTreeSet<String> {
    let Value::Map(answers) = answers else {
        return BTreeSet::new();
    };
    answers
        .iter()
        .filter(|(_, answer)| matches!(answer, Value::Okay))
        .filter_map(|(addr, _)| match addr {
            Value::BulkString(addr) => Some(String::from_utf8_lossy(addr).into_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use dtcp_wire::RegistrationId;

    use super::*;

    #[test]
    fn every_master_of_the_slots_must_have_said_ok() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.into()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |first: i64, last: i64, master: Value, replica: Value| {
            Value::Array(vec![Value::Int(first), Value::Int(last), master, replica])
        };
        let slots = Value::Array(vec![
            range(0, 8000, node("127.0.0.1", 7000), node("127.0.0.1", 7003)),
            range(
                8001,
                16383,
                node("127.0.0.1", 7001),
                node("127.0.0.1", 7004),
            ),
        ]);
        let found = masters(&slots);
        assert_eq!(
            found.iter().map(String::as_str).collect::<Vec<_>>(),
            ["127.0.0.1:7000", "127.0.0.1:7001"]
        );
        let answers = Value::Map(vec![
            (Value::BulkString(b"127.0.0.1:7000".to_vec()), Value::Okay),
            (
                Value::BulkString(b"127.0.0.1:7001".to_vec()),
                Value::SimpleString("ERR".into()),
            ),
        ]);
        let tracked = tracked_masters(&answers);
        assert_eq!(
            tracked.iter().map(String::as_str).collect::<Vec<_>>(),
            ["127.0.0.1:7000"]
        );
    }

    #[test]
    fn a_registration_key_names_its_id() {
        let keys = Keys::new("dtcp:");
        let id = RegistrationId::of("k", "a@b", "c@d");
        assert_eq!(keys.reg_id(&keys.reg(&id)), Some(id));
        assert_eq!(keys.reg_id("dtcp:node:x"), None);
        assert_eq!(keys.reg_id("other:reg:00"), None);
    }
}
