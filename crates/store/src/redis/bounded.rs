//! Reads whose size Redis does not choose: whoever can write the store must
//! not make every node read megabytes on each look. A record is measured
//! (`STRLEN`) before it is read, and the `nodes` set is read a bounded
//! number of members at a time, each of a bounded length, by scripts that
//! run where the data is.

use std::sync::LazyLock;

use redis::Value;

use super::record::MAX_RECORD_LEN;
use super::run::Runner;
use crate::rendezvous::StoreError;
use crate::text::shown;

/// The most members of the `nodes` set read by one look: a cluster has a
/// few nodes, tens at most; a set larger than this was planted (a writer's
/// 300,000 members read every heartbeat took a node from 12 to 500 MB).
pub(crate) const MAX_NODES: usize = 1024;

/// `GET` of a record no longer than ARGV[1]: its value, nil if absent, or
/// its length (an integer) if it is longer.
static GET_RECORD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local n = redis.call('STRLEN', KEYS[1])
if n > tonumber(ARGV[1]) then
  return n
end
return redis.call('GET', KEYS[1])
",
    )
});

/// The members of sorted set KEYS[1] scored from ARGV[1] on, at most
/// ARGV[2] of them, leaving out those longer than ARGV[3] bytes.
static LIVE_MEMBERS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local found = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'LIMIT', 0, tonumber(ARGV[2]))
local kept = {}
local longest = tonumber(ARGV[3])
for _, m in ipairs(found) do
  if string.len(m) <= longest then
    kept[#kept + 1] = m
  end
end
return kept
",
    )
});

/// The record at `key`, if any; an error naming its length if it is longer
/// than [`MAX_RECORD_LEN`] (it is not read).
pub(crate) async fn get_record(runner: &Runner, key: &str) -> Result<Option<String>, StoreError> {
    let reply: Value = runner
        .run(|mut c| async move {
            GET_RECORD
                .key(key)
                .arg(MAX_RECORD_LEN)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    match reply {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => String::from_utf8(bytes).map(Some).map_err(|e| {
            StoreError::Malformed(format!(
                "record {}",
                shown(&String::from_utf8_lossy(e.as_bytes()))
            ))
        }),
        Value::Int(n) => Err(StoreError::Malformed(format!(
            "record of {n} bytes, over the {MAX_RECORD_LEN} a relay writes"
        ))),
        _ => Err(StoreError::Malformed("record of another type".into())),
    }
}

/// The members of the sorted set at `key` scored `from` on: at most
/// [`MAX_NODES`], each no longer than [`MAX_RECORD_LEN`] (longer ones are
/// left out).
pub(crate) async fn live_members(
    runner: &Runner,
    key: &str,
    from: u64,
) -> Result<Vec<String>, StoreError> {
    let reply: Vec<Value> = runner
        .run(|mut c| async move {
            LIVE_MEMBERS
                .key(key)
                .arg(from)
                .arg(MAX_NODES)
                .arg(MAX_RECORD_LEN)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    // A member that is not text names no node.
    Ok(reply
        .into_iter()
        .filter_map(|v| match v {
            Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
            _ => None,
        })
        .collect())
}
