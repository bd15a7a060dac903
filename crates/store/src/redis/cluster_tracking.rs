//! Tracking on a Redis Cluster: one cluster connection of the node's own
//! (RESP3), whose connection to every master has `CLIENT TRACKING ON`.
//!
//! The redis crate's cluster connection makes a master's connection again
//! by itself (a dropped one, a replica promoted in a failover), and that
//! one is not tracked. So:
//! - its push sender turns tracking off the moment a drop is pushed (before
//!   the connection is made again), and tells invalidations to the relay at
//!   once, whatever the keeper is doing;
//! - it retries nothing: a look sent on a dropped connection fails, rather
//!   than going over a new one ([`Tracking::look`] does not trust a look
//!   during which tracking broke either);
//! - at once after a drop, then every [`TRACKING_CHECK`], tracking is
//!   turned on again on every master (it is idempotent), and the masters
//!   that said `OK` are checked, by node id, against those `CLUSTER SLOTS`
//!   names: the connection skips a master it has no connection to, and
//!   learns of a promoted replica only when a command fails.
//!
//! A master's connection the crate is still making again fails a check:
//! the check is made again on the same connection, and a new connection
//! (which reads the slots afresh) is made only after [`REBUILD_AFTER`]
//! failures in a row, or one that got no answer at all (a cluster
//! connection can wedge for good: `ClusterConn` in conn.rs).
//!
//! A key read on a master that is then killed, or whose slot is migrated,
//! is not invalidated by its new holder: its `CONNECT` finds the record at
//! its next look (0.5-2 s), as when the single server's connection is lost.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use backon::BackoffBuilder;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::{ProtocolVersion, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::Notify;
use tracing::debug;

use super::conn::cluster_builder;
use super::source::within;
use super::tracking::{Keeper, TRACKING_CHECK, TrackedConn, invalidated};

/// Failed checks in a row on one cluster connection before a new one is
/// made: the crate repairs a dropped master's connection in a few round
/// trips, during which a check fails.
const REBUILD_AFTER: u32 = 3;

/// Starts the task that keeps tracking on every master of the cluster.
pub(super) fn start(keeper: Keeper) {
    let dropped = Arc::new(Notify::new());
    let (tracking, keys, tx) = (
        keeper.tracking.clone(),
        keeper.keys.clone(),
        keeper.tx.clone(),
    );
    let on_drop = dropped.clone();
    let client = match cluster_builder(&keeper.config)
        .use_protocol(ProtocolVersion::RESP3)
        // Called by the connection's own task, before it takes the command
        // to make a dropped master's connection again.
        .push_sender(move |push: PushInfo| {
            match push.kind {
                PushKind::Invalidate => invalidated(&keys, &tx, push.data),
                PushKind::Disconnection => {
                    tracking.broken();
                    on_drop.notify_one();
                }
                _ => {}
            }
            Ok::<(), redis::aio::SendError>(())
        })
        // A look sent on a dropped connection fails rather than going over
        // a new one, not tracked yet; a slot moved (`MOVED`) too: the look
        // is then made the other way.
        .retries(0)
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            debug!(error = %e, "no tracked looks: the cluster client cannot be made");
            return;
        }
    };
    tokio::spawn(run(keeper, client, dropped));
}

async fn run(keeper: Keeper, client: ClusterClient, dropped: Arc<Notify>) {
    let mut delays = keeper.config.backoff().build();
    let mut conn: Option<ClusterConnection> = None;
    let mut failures = 0;
    let mut next_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            // A master's connection dropped (tracking is off already): the
            // one made in its place is not tracked until turned on there.
            () = dropped.notified() => next_check = tokio::time::Instant::now(),
            () = tokio::time::sleep_until(next_check) => {
                // A drop during the check may have left a master's
                // connection made again after its `CLIENT TRACKING ON`.
                let generation = keeper.tracking.generation();
                let wait = match track_every_master(&keeper, &client, &mut conn).await {
                    Ok(conn) => {
                        if !keeper.tracking.is_up() {
                            keeper.tracking.set_since(TrackedConn::Cluster(conn), generation);
                        }
                        failures = 0;
                        delays = keeper.config.backoff().build();
                        TRACKING_CHECK
                    }
                    Err(e) => {
                        debug!(error = %e, "tracking not on every master yet");
                        keeper.tracking.broken();
                        failures += 1;
                        if e.is_timeout() || failures >= REBUILD_AFTER {
                            conn = None;
                            failures = 0;
                        }
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
/// there is none): the connection, once every master `CLUSTER SLOTS` names
/// now said `OK`.
async fn track_every_master(
    keeper: &Keeper,
    client: &ClusterClient,
    conn: &mut Option<ClusterConnection>,
) -> RedisResult<ClusterConnection> {
    let config = &keeper.config;
    let current = match conn.take() {
        Some(current) => current,
        // It connects to every seed and every node the slots name.
        None => within(config.operation_timeout, client.get_async_connection()).await?,
    };
    *conn = Some(current.clone());
    let all_masters = || RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
    let ask = |command: redis::Cmd, routing: RoutingInfo| {
        let mut current = current.clone();
        async move {
            within(
                config.response_timeout,
                current.route_command(command, routing),
            )
            .await
        }
    };
    let slots = ask(
        redis::cmd("CLUSTER").arg("SLOTS").clone(),
        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
    )
    .await?;
    let on = ask(
        redis::cmd("CLIENT").arg("TRACKING").arg("ON").clone(),
        all_masters(),
    )
    .await?;
    let ids = ask(redis::cmd("CLUSTER").arg("MYID").clone(), all_masters()).await?;
    let (masters, tracked) = (master_ids(&slots), tracked_ids(&on, &ids));
    if masters.is_empty() {
        return Err((redis::ErrorKind::Io, "no master serves a slot").into());
    }
    match masters.into_iter().find(|m| !tracked.contains(m)) {
        None => Ok(current),
        Some(missed) => Err((redis::ErrorKind::Io, "a master is not tracked", missed).into()),
    }
}

/// The node ids of the masters a `CLUSTER SLOTS` reply names.
fn master_ids(slots: &Value) -> BTreeSet<String> {
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
            text(master.get(2)?)
        })
        .collect()
}

/// The node ids of the masters whose answer to `CLIENT TRACKING ON` (`on`)
/// was `OK`, from their answers to `CLUSTER MYID` (`ids`): both maps of a
/// command sent to every master, keyed by its address.
fn tracked_ids(on: &Value, ids: &Value) -> BTreeSet<String> {
    let (Value::Map(on), Value::Map(ids)) = (on, ids) else {
        return BTreeSet::new();
    };
    let ids: HashMap<String, String> = ids
        .iter()
        .filter_map(|(addr, id)| Some((text(addr)?, text(id)?)))
        .collect();
    on.iter()
        .filter(|(_, answer)| matches!(answer, Value::Okay))
        .filter_map(|(addr, _)| ids.get(&text(addr)?).cloned())
        .collect()
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn every_master_of_the_slots_must_have_said_ok() {
        // A host may be empty or null (`cluster-preferred-endpoint-type`):
        // masters are told by their ids.
        let node =
            |host: Value, port: i64, id: &str| Value::Array(vec![host, Value::Int(port), bulk(id)]);
        let range = |first: i64, last: i64, master: Value, replica: Value| {
            Value::Array(vec![Value::Int(first), Value::Int(last), master, replica])
        };
        let slots = Value::Array(vec![
            range(
                0,
                8000,
                node(bulk("127.0.0.1"), 7000, "a"),
                node(bulk(""), 7003, "c"),
            ),
            range(
                8001,
                16383,
                node(Value::Nil, 7001, "b"),
                node(bulk("?"), 7004, "d"),
            ),
        ]);
        let masters = master_ids(&slots);
        assert_eq!(
            masters.iter().map(String::as_str).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let on = Value::Map(vec![
            (bulk("127.0.0.1:7000"), Value::Okay),
            (bulk("127.0.0.1:7001"), Value::SimpleString("ERR".into())),
        ]);
        let ids = Value::Map(vec![
            (bulk("127.0.0.1:7000"), bulk("a")),
            (bulk("127.0.0.1:7001"), bulk("b")),
        ]);
        let tracked = tracked_ids(&on, &ids);
        assert_eq!(
            tracked.iter().map(String::as_str).collect::<Vec<_>>(),
            ["a"]
        );
    }
}
