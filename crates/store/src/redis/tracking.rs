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
//! One server or a Sentinel master only: on a Redis Cluster each shard would
//! need a connection of its own, and looks leave waiter entries there
//! (`pairing.rs`). Whenever this connection is down, or a look on it fails,
//! looks leave waiter entries too, so a node of an earlier version and a
//! broken connection both keep pairing; what the connection missed while
//! it was down is found by the `CONNECT`'s next look (`connect.rs` in the
//! relay looks again within 0.5-2 s).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::BackoffBuilder;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc;
use tracing::debug;

use super::bounded::record_range;
use super::config::RedisConfig;
use super::keys::Keys;
use super::source::{Source, within};
use crate::rendezvous::Registered;

/// How often a quiet tracking connection checks that its server still
/// answers (as the subscriptions do).
const TRACKING_CHECK: Duration = Duration::from_secs(2);

/// The tracking connection, when it is up; shared by the looks and the
/// task that keeps it.
#[derive(Default)]
pub(crate) struct Tracking {
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl Tracking {
    /// The connection to look on, if it is up.
    pub(crate) fn conn(&self) -> Option<MultiplexedConnection> {
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, conn: Option<MultiplexedConnection>) {
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = conn;
    }

    /// A look on the connection failed: looks leave waiter entries until
    /// the task has made a new one, or found at its next check (2 s) that
    /// this one still answers.
    pub(crate) fn broken(&self) {
        self.set(None);
    }
}

/// Starts the task that keeps `tracking`'s connection up, telling `tx` of
/// the registrations whose records changed; nothing where `config` cannot
/// track (a Redis Cluster, or a client that cannot be made): looks leave
/// waiter entries there.
pub(crate) fn start(
    config: &RedisConfig,
    keys: Keys,
    tracking: Arc<Tracking>,
    tx: mpsc::Sender<Registered>,
) {
    if config.is_cluster() {
        return;
    }
    let source = match Source::new(config, ProtocolVersion::RESP3) {
        Ok(source) => source,
        Err(e) => {
            debug!(error = %e, "no tracked looks: the client cannot be made");
            return;
        }
    };
    let keeper = Keeper {
        config: config.clone(),
        keys,
        tracking,
        tx,
    };
    tokio::spawn(keeper.run(source));
}

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
        self.tracking.set(Some(conn.clone()));
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
                    if self.tracking.conn().is_none() {
                        self.tracking.set(Some(conn.clone()));
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

/// A look on the tracking connection: what a bounded read of `key` finds
/// ([`record_range`]), within `limit`. `Err` leaves the caller to look the
/// other way.
pub(crate) async fn tracked_look(
    mut conn: MultiplexedConnection,
    key: &str,
    limit: Duration,
) -> RedisResult<Vec<u8>> {
    within(limit, record_range(key).query_async(&mut conn)).await
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
