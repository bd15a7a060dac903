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
//! (`cluster_tracking.rs`), and looks on it go to the master of the key's slot
//! like any command. So the race path is four commands there too, spread
//! over the shards with the keys.
//!
//! Whenever the connection (or, on a Cluster, one of its masters') is
//! down, or a look on it fails, looks leave waiter entries instead
//! (`pairing.rs`), so a node of an earlier version and a broken connection
//! both keep pairing; what the connection missed while it was down is
//! found by the `CONNECT`'s next look (`connect.rs` in the relay looks
//! again within 0.5-2 s).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::BackoffBuilder;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, RedisResult, RetryMethod, Value,
};
use tokio::sync::mpsc;
use tracing::debug;

use super::bounded::record_range;
use super::config::RedisConfig;
use super::keys::Keys;
use super::source::{Source, within};
use crate::rendezvous::Registered;

/// How often a quiet tracking connection checks that its server still
/// answers (as the subscriptions do).
pub(super) const TRACKING_CHECK: Duration = Duration::from_secs(2);

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
    pub(super) fn generation(&self) -> u64 {
        self.state().1
    }

    /// Sets `conn` unless tracking broke since `generation`.
    pub(super) fn set_since(&self, conn: TrackedConn, generation: u64) {
        let mut state = self.state();
        if state.1 == generation {
            state.0 = Some(conn);
        }
    }

    /// Tracking is off (a connection dropped, a look failed): looks leave
    /// waiter entries until the task has made it again, or found at its
    /// next check (2 s) that the connection still answers.
    pub(super) fn broken(&self) {
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
            TrackedConn::Cluster(mut conn) => {
                // A cluster look dropped mid-flight (its client gone) may
                // have had the connection connect anew (a `MOVED` read
                // again the slots): tracking is off until checked.
                let mut pending = BreakOnDrop(Some(self));
                let found = within(limit, read.query_async(&mut conn)).await;
                pending.0 = None;
                found
            }
        };
        match &found {
            // A slot being moved (`ASK`) or busy (`TRYAGAIN`): nothing was
            // connected anew, tracking stays on.
            Err(e)
                if matches!(
                    e.retry_method(),
                    RetryMethod::AskRedirect | RetryMethod::WaitAndRetry
                ) => {}
            Err(_) => self.broken(),
            Ok(_) if self.state().1 != generation => {
                return Some(Err(std::io::Error::from(
                    std::io::ErrorKind::ConnectionReset,
                )
                .into()));
            }
            Ok(_) => {}
        }
        Some(found)
    }
}

/// Turns tracking off when dropped, unless emptied first.
struct BreakOnDrop<'a>(Option<&'a Tracking>);

impl Drop for BreakOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(tracking) = self.0.take() {
            tracking.broken();
        }
    }
}

/// Starts the task that keeps one server's (or the Sentinel master's)
/// tracking connection up; nothing where the client cannot be made: looks
/// leave waiter entries there. (A Redis Cluster's: `cluster_tracking.rs`.)
pub(super) fn start(keeper: Keeper) {
    let source = match Source::new(&keeper.config, ProtocolVersion::RESP3) {
        Ok(source) => source,
        Err(e) => {
            debug!(error = %e, "no tracked looks: the client cannot be made");
            return;
        }
    };
    tokio::spawn(keeper.run(source));
}

/// What keeps a tracking connection: where it connects, and whom it tells
/// of the registrations whose records changed.
pub(super) struct Keeper {
    pub(super) config: RedisConfig,
    pub(super) keys: Keys,
    pub(super) tracking: Arc<Tracking>,
    pub(super) tx: mpsc::Sender<Registered>,
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
                    Some(PushInfo { kind: PushKind::Invalidate, data }) => {
                        invalidated(&self.keys, &self.tx, data);
                    }
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
}

/// Keys written or deleted since a tracked connection read them: the
/// registrations among them are told to the relay (`tx`), whose `CONNECT`s
/// waiting for them look again. (A flush sends no key: those look at their
/// next poll.)
pub(super) fn invalidated(keys: &Keys, tx: &mpsc::Sender<Registered>, data: Vec<Value>) {
    let Some(Value::Array(names)) = data.into_iter().next() else {
        return;
    };
    for name in names {
        let Value::BulkString(name) = name else {
            continue;
        };
        let Some(id) = std::str::from_utf8(&name).ok().and_then(|k| keys.reg_id(k)) else {
            continue;
        };
        // Full: the relay is behind; those CONNECTs find theirs by looking.
        let _ = tx.try_send(Registered { id, owner: None });
    }
}

#[cfg(test)]
mod tests {
    use dtcp_wire::RegistrationId;

    use super::*;

    #[test]
    fn a_registration_key_names_its_id() {
        let keys = Keys::new("dtcp:");
        let id = RegistrationId::of("k", "a@b", "c@d");
        assert_eq!(keys.reg_id(&keys.reg(&id)), Some(id));
        assert_eq!(keys.reg_id("dtcp:node:x"), None);
        assert_eq!(keys.reg_id("other:reg:00"), None);
    }
}
