//! Writing registrations: one `SET NX`, and the rewrite of a node's pending
//! registrations after the store may have lost them.

use std::time::Duration;

use dtcp_wire::RegistrationId;
use futures_util::{StreamExt, TryStreamExt};
use redis::{Cmd, Value};

use super::bounded::get_record;
use super::keys::Keys;
use super::record::{MAX_RECORD_LEN, record_value};
use super::run::{Runner, ms};
use crate::rendezvous::{NodeInfo, StoreError};

/// Registrations per pipeline when they are written again: large enough to
/// write thousands in a few round trips, small enough that a command sent
/// meanwhile on the same connection waits for at most this many replies.
const REWRITE_BATCH: usize = 256;
/// Registrations written again at once on a Redis Cluster, where a pipeline
/// cannot span slots: each is its own command, pipelined by the per-node
/// connections.
const REWRITE_IN_FLIGHT: usize = 256;
/// Rounds of "write if absent, else read whose" for a registration that
/// expires between the two.
const REWRITE_ROUNDS: usize = 3;

/// `SET key value NX PX ttl`.
pub(crate) fn set_nx_cmd(key: &str, value: &str, ttl: Duration) -> Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(value).arg("NX").arg("PX").arg(ms(ttl));
    cmd
}

/// `SET key value NX PX ttl`: whether the key was free and is now ours.
pub(crate) async fn set_nx(
    runner: &Runner,
    key: &str,
    value: &str,
    ttl: Duration,
) -> Result<bool, StoreError> {
    let set: Option<String> = runner.query(&set_nx_cmd(key, value, ttl)).await?;
    Ok(set.is_some())
}

/// Writes again registrations `owner` holds ([`crate::Rendezvous::register_many`]).
pub(crate) async fn register_many(
    runner: &Runner,
    keys: &Keys,
    owner: &NodeInfo,
    registrations: &[(RegistrationId, Duration, Option<String>)],
) -> Result<Vec<bool>, StoreError> {
    if runner.conn().pipelines_span_keys() {
        let mut written = Vec::with_capacity(registrations.len());
        for chunk in registrations.chunks(REWRITE_BATCH) {
            written.extend(rewrite_chunk(runner, keys, owner, chunk).await?);
        }
        return Ok(written);
    }
    // The futures are made first (they are lazy; `buffered` runs
    // REWRITE_IN_FLIGHT at a time): a closure inside the stream would not
    // be general enough for the `Send` bound `async_trait` needs.
    let rewrites: Vec<_> = registrations
        .iter()
        .map(|(id, ttl, seal)| {
            let value = record_value(owner, seal.as_deref());
            let key = keys.reg(id);
            async move { rewrite_one(runner, &key, &value, *ttl).await }
        })
        .collect();
    futures_util::stream::iter(rewrites)
        .buffered(REWRITE_IN_FLIGHT)
        .try_collect()
        .await
}

/// Writes again one chunk of registrations in pipelines: all `SET NX`,
/// then a `GET` of those that were there, to tell ours from another
/// node's.
async fn rewrite_chunk(
    runner: &Runner,
    keys: &Keys,
    owner: &NodeInfo,
    chunk: &[(RegistrationId, Duration, Option<String>)],
) -> Result<Vec<bool>, StoreError> {
    let keys: Vec<String> = chunk.iter().map(|(id, ..)| keys.reg(id)).collect();
    // One value per record: each seal covers its own registration.
    let values: Vec<String> = chunk
        .iter()
        .map(|(_, _, seal)| record_value(owner, seal.as_deref()))
        .collect();
    let mut outcome: Vec<Option<bool>> = vec![None; chunk.len()];
    for _ in 0..REWRITE_ROUNDS {
        let open: Vec<usize> = (0..chunk.len()).filter(|i| outcome[*i].is_none()).collect();
        if open.is_empty() {
            break;
        }
        let mut set = redis::pipe();
        for &i in &open {
            set.add_command(set_nx_cmd(&keys[i], &values[i], chunk[i].1));
        }
        let replies: Vec<Value> = runner.pipeline(&set).await?;
        let held: Vec<usize> = open
            .iter()
            .zip(&replies)
            .filter_map(|(&i, reply)| match reply {
                Value::Nil => Some(i),
                _ => {
                    outcome[i] = Some(true);
                    None
                }
            })
            .collect();
        if held.is_empty() {
            break;
        }
        // Whose: compared with ours only, so no more than one byte past the
        // longest record is read (a planted value cannot be read whole).
        let mut get = redis::pipe();
        for &i in &held {
            get.cmd("GETRANGE").arg(&keys[i]).arg(0).arg(MAX_RECORD_LEN);
        }
        let holders: Vec<Vec<u8>> = runner.pipeline(&get).await?;
        for (&i, holder) in held.iter().zip(holders) {
            // Empty: it expired in between (no record is empty); the next
            // round writes it.
            outcome[i] = (!holder.is_empty()).then(|| holder == values[i].as_bytes());
        }
    }
    // Still open after every round: it keeps expiring under us; not ours.
    Ok(outcome.into_iter().map(|o| o.unwrap_or(false)).collect())
}

/// Writes again one registration on its own (Redis Cluster).
async fn rewrite_one(
    runner: &Runner,
    key: &str,
    value: &str,
    ttl: Duration,
) -> Result<bool, StoreError> {
    for _ in 0..REWRITE_ROUNDS {
        if set_nx(runner, key, value, ttl).await? {
            return Ok(true);
        }
        if let Some(holder) = get_record(runner, key).await? {
            return Ok(holder == value);
        }
    }
    Ok(false)
}
