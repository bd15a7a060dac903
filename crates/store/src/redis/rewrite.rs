//! The rewrite of a node's pending registrations after the store may have
//! lost them: `SET NX` each, and a waiter entry found in a record's place
//! replaced by it (its node is told by the caller).

use std::time::Duration;

use dtcp_wire::RegistrationId;
use futures_util::{StreamExt, TryStreamExt};
use redis::{Cmd, Value};

use super::keys::Keys;
use super::pairing::{compare_and_set, set_nx_get};
use super::record::{MAX_RECORD_LEN, parse_waiter, record_value};
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
fn set_nx_cmd(key: &str, value: &str, ttl: Duration) -> Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(value).arg("NX").arg("PX").arg(ms(ttl));
    cmd
}

/// What a rewrite did: whether `owner` holds each registration now, and
/// the waiters it replaced (the registration's index, the waiting node).
pub(crate) type Rewritten = (Vec<bool>, Vec<(usize, String)>);

/// Writes again registrations `owner` holds ([`crate::Rendezvous::register_many`]).
pub(crate) async fn register_many(
    runner: &Runner,
    keys: &Keys,
    owner: &NodeInfo,
    registrations: &[(RegistrationId, Duration, Option<String>)],
) -> Result<Rewritten, StoreError> {
    if runner.conn().pipelines_span_keys() {
        let mut written = Vec::with_capacity(registrations.len());
        let mut woken = Vec::new();
        for (n, chunk) in registrations.chunks(REWRITE_BATCH).enumerate() {
            let (held, replaced) = rewrite_chunk(runner, keys, owner, chunk).await?;
            written.extend(held);
            woken.extend(
                replaced
                    .into_iter()
                    .map(|(i, w)| (n * REWRITE_BATCH + i, w)),
            );
        }
        return Ok((written, woken));
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
    let outcomes: Vec<(bool, Option<String>)> = futures_util::stream::iter(rewrites)
        .buffered(REWRITE_IN_FLIGHT)
        .try_collect()
        .await?;
    let woken = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, (_, w))| w.clone().map(|w| (i, w)))
        .collect();
    Ok((outcomes.into_iter().map(|(held, _)| held).collect(), woken))
}

/// Writes again one chunk of registrations in pipelines: all `SET NX`,
/// then a `GET` of those that were there, to tell ours from another
/// node's.
async fn rewrite_chunk(
    runner: &Runner,
    keys: &Keys,
    owner: &NodeInfo,
    chunk: &[(RegistrationId, Duration, Option<String>)],
) -> Result<Rewritten, StoreError> {
    let keys: Vec<String> = chunk.iter().map(|(id, ..)| keys.reg(id)).collect();
    // One value per record: each seal covers its own registration.
    let values: Vec<String> = chunk
        .iter()
        .map(|(_, _, seal)| record_value(owner, seal.as_deref()))
        .collect();
    let mut outcome: Vec<Option<bool>> = vec![None; chunk.len()];
    let mut woken = Vec::new();
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
            // A CONNECT waits for it: the record takes the waiter's place
            // (rare: one script each). Changed meanwhile: the next round.
            if let Some(waiter) = std::str::from_utf8(&holder).ok().and_then(parse_waiter) {
                let current = String::from_utf8_lossy(&holder);
                if compare_and_set(runner, &keys[i], &current, &values[i], chunk[i].1).await? {
                    outcome[i] = Some(true);
                    woken.push((i, waiter.to_owned()));
                }
                continue;
            }
            // Empty: it expired in between (no record is empty); the next
            // round writes it.
            outcome[i] = (!holder.is_empty()).then(|| holder == values[i].as_bytes());
        }
    }
    // Still open after every round: it keeps expiring under us; not ours.
    let held = outcome.into_iter().map(|o| o.unwrap_or(false)).collect();
    Ok((held, woken))
}

/// Writes again one registration on its own (Redis Cluster): whether
/// `owner` holds it now, and the node of the waiter it replaced.
async fn rewrite_one(
    runner: &Runner,
    key: &str,
    value: &str,
    ttl: Duration,
) -> Result<(bool, Option<String>), StoreError> {
    for _ in 0..REWRITE_ROUNDS {
        let current = match set_nx_get(runner, key, value, ttl).await {
            Ok(None) => return Ok((true, None)),
            Ok(Some(current)) => current,
            // Planted past the bound, or not text: not ours.
            Err(StoreError::Malformed(_)) => return Ok((false, None)),
            Err(e) => return Err(e),
        };
        let Some(waiter) = parse_waiter(&current) else {
            return Ok((current == value, None));
        };
        if compare_and_set(runner, key, &current, value, ttl).await? {
            return Ok((true, Some(waiter.to_owned())));
        }
    }
    Ok((false, None))
}
