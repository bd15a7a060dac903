//! Pending CREATEs per client address across the cluster: one sorted set
//! per address, a member per CREATE (its entry number) scored by when it
//! expires, changed by scripts so that the check and the count are one
//! step. Keyed by entry, both are idempotent: a retry after a lost reply
//! (every command is retried) counts or uncounts nothing twice. An INCR
//! counter could not tell a retry from a second CREATE.

use std::sync::LazyLock;
use std::time::Duration;

use super::run::{Runner, ms};
use crate::rendezvous::StoreError;

/// Drops the members past their time (Redis's clock, the same for every
/// node), then adds ARGV[3] to expire in ARGV[2] ms unless ARGV[1] others
/// are there already: 1 if counted (now or before), 0 at the limit. The
/// key itself expires with its last member.
static COUNT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[3])
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
",
    )
});

/// Removes member ARGV[1]; the key goes with its last member.
static UNCOUNT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
end
return 1
",
    )
});

/// Counts pending CREATE `entry` in `key` (one address's set) unless
/// `max` others are counted there: whether it is counted.
pub(crate) async fn count(
    runner: &Runner,
    key: &str,
    entry: u64,
    max: usize,
    ttl: Duration,
) -> Result<bool, StoreError> {
    let (max, ttl, entry) = (max.to_string(), ms(ttl).to_string(), entry.to_string());
    // Retried like every command, and safe to: the entry is counted once.
    let (max, ttl, entry) = (&max, &ttl, &entry);
    let counted: i64 = runner
        .run(|mut c| async move {
            COUNT
                .key(key)
                .arg(max)
                .arg(ttl)
                .arg(entry)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    Ok(counted == 1)
}

/// Uncounts pending CREATE `entry` in `key`.
pub(crate) async fn uncount(runner: &Runner, key: &str, entry: u64) -> Result<(), StoreError> {
    let entry = entry.to_string();
    let entry = &entry;
    let _: i64 = runner
        .run(|mut c| async move { UNCOUNT.key(key).arg(entry).invoke_async(&mut c).await })
        .await?;
    Ok(())
}
