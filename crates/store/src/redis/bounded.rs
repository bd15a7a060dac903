//! Reads whose size Redis does not choose: whoever can write the store must
//! not make every node read megabytes on each look. A record is read no
//! further than one byte past the longest a relay writes (`GETRANGE`: one
//! command, so a lookup costs Redis no more than a `GET`), and the `nodes`
//! set is read a bounded number of members at a time, each of a bounded
//! length, by a script that runs where the data is.

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
///
/// One `GETRANGE` of at most one byte past the bound ([`record_range`]): an
/// absent key and an empty value both read as nothing (a relay never writes
/// an empty record).
pub(crate) async fn get_record(runner: &Runner, key: &str) -> Result<Option<String>, StoreError> {
    let range = record_range(key);
    let bytes: Vec<u8> = runner
        .run(|mut c| {
            let range = &range;
            async move { range.query_async(&mut c).await }
        })
        .await?;
    checked_range(runner, key, bytes).await
}

/// The read of a record no further than one byte past the longest a relay
/// writes: one command, so a look costs Redis no more than a `GET`.
pub(crate) fn record_range(key: &str) -> redis::Cmd {
    let last = isize::try_from(MAX_RECORD_LEN).unwrap_or(isize::MAX);
    let mut cmd = redis::cmd("GETRANGE");
    cmd.arg(key).arg(0).arg(last);
    cmd
}

/// What a [`record_range`] of `key` read, as a record. Only a record found
/// too long costs a second command, `STRLEN`, for the error to name its
/// length: that is a writer's doing, never a relay's.
pub(crate) async fn checked_range(
    runner: &Runner,
    key: &str,
    bytes: Vec<u8>,
) -> Result<Option<String>, StoreError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.len() > MAX_RECORD_LEN {
        let len: u64 = runner
            .run(|mut c| async move { redis::cmd("STRLEN").arg(key).query_async(&mut c).await })
            .await?;
        return Err(StoreError::Malformed(format!(
            "record of {len} bytes, over the {MAX_RECORD_LEN} a relay writes"
        )));
    }
    String::from_utf8(bytes).map(Some).map_err(|e| {
        StoreError::Malformed(format!(
            "record {}",
            shown(&String::from_utf8_lossy(e.as_bytes()))
        ))
    })
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
