//! The commands of a pair: register, look up (leaving a waiter entry when
//! there is nothing yet), remove. One command each on the common path, so
//! that a pair whose `CREATE` comes first costs Redis three: `SET NX GET`
//! to register, `SET NX GET` to look up, and a `GETDEL` to remove (or a
//! script of one `SET XX GET` to retire a signed key into its used marker).
//! What is read back is only checked once it is read: a value planted past
//! [`MAX_RECORD_LEN`] is refused, not parsed.
//!
//! A `CONNECT` that finds no record leaves `? <node id>` in its place for
//! the connect grace (`record.rs`): the same key, so the same slot on a
//! Redis Cluster, and the registering `SET NX GET` reads it back at no
//! extra cost. Only then does the registering node replace it (a script,
//! compare-and-set) and tell the waiting node on that node's own channel:
//! a `CREATE` nobody waits for publishes nothing. That race path is six
//! commands as `INFO commandstats` counts them. Where a node's looks are
//! tracked (`tracking.rs`) they leave no waiter, and the race path is four.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::record::{MAX_RECORD_LEN, owner_value};
use super::run::{Runner, ms};
use crate::rendezvous::{NodeInfo, StoreError};
use crate::text::shown;

/// How long a value a removal or a swap took away by mistake is put back
/// for: a record of another node (one that took over a registration this
/// node's lapsed heartbeat left), or a waiter, found where this node's
/// record was. Its TTL is gone with it; this is the default pending TTL,
/// and the owner of such a record removes it itself anyway.
const RESTORED_TTL: Duration = Duration::from_secs(300);

/// Replaces a key's value only if it still holds the expected one.
pub(crate) static COMPARE_AND_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0",
    )
});

/// Replaces ARGV[1] by ARGV[2] for ARGV[3] ms: one `SET XX GET`, and only
/// when the value was another's, a `SET` that puts it back for ARGV[4] ms
/// (ARGV[6] ms if it was ARGV[5], a used key's marker: [`restored_ttl`]).
static COMPARE_AND_SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('SET', KEYS[1], ARGV[2], 'XX', 'GET', 'PX', ARGV[3])
if v == ARGV[1] then return 1 end
if v == ARGV[5] then redis.call('SET', KEYS[1], v, 'PX', ARGV[6]); return 0 end
if v then redis.call('SET', KEYS[1], v, 'PX', ARGV[4]) end
return 0",
    )
});

/// A value read whole (a `SET ... GET` reply) as a record: refused past
/// [`MAX_RECORD_LEN`] or if it is not text.
pub(crate) fn checked(bytes: Option<Vec<u8>>) -> Result<Option<String>, StoreError> {
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    if bytes.len() > MAX_RECORD_LEN {
        return Err(StoreError::Malformed(format!(
            "record of {} bytes, over the {MAX_RECORD_LEN} a relay writes",
            bytes.len()
        )));
    }
    String::from_utf8(bytes).map(Some).map_err(|e| {
        StoreError::Malformed(format!(
            "record {}",
            shown(&String::from_utf8_lossy(e.as_bytes()))
        ))
    })
}

/// `SET key value NX GET PX ttl`: `None` if the key was free and now holds
/// `value`, else what it holds (unchanged).
pub(crate) async fn set_nx_get(
    runner: &Runner,
    key: &str,
    value: &str,
    ttl: Duration,
) -> Result<Option<String>, StoreError> {
    let ttl = ms(ttl);
    let current: Option<Vec<u8>> = runner
        .query(
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(ttl),
        )
        .await?;
    checked(current)
}

/// Replaces `current` at `key` by `value` for `ttl`: whether it was still
/// there to replace.
pub(crate) async fn compare_and_set(
    runner: &Runner,
    key: &str,
    current: &str,
    value: &str,
    ttl: Duration,
) -> Result<bool, StoreError> {
    let ttl_ms = ms(ttl).to_string();
    let replaced: i64 = runner
        .run(|mut c| {
            let ttl_ms = &ttl_ms;
            async move {
                COMPARE_AND_SET
                    .key(key)
                    .arg(current)
                    .arg(value)
                    .arg(ttl_ms)
                    .invoke_async(&mut c)
                    .await
            }
        })
        .await?;
    Ok(replaced == 1)
}

/// Deletes `key` if it holds `value`: whether it did. One `GETDEL`, no
/// script (a script costs Redis several times a plain command's time, and
/// this is on every pair's path). A value that was not `value` (another
/// node's record, taken over once this node's heartbeat had lapsed, or a
/// waiter left after the store lost this node's record) is put back if
/// the key is still free: a rare path, on which a look in between finds
/// nothing for a moment.
pub(crate) async fn compare_and_delete(
    runner: &Runner,
    key: &str,
    value: &str,
) -> Result<bool, StoreError> {
    let taken: Option<Vec<u8>> = runner.query(redis::cmd("GETDEL").arg(key)).await?;
    match taken {
        None => Ok(false),
        Some(taken) if taken == value.as_bytes() => Ok(true),
        Some(taken) => {
            let _: Option<String> = runner
                .query(
                    redis::cmd("SET")
                        .arg(key)
                        .arg(&taken)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms(restored_ttl(&taken))),
                )
                .await?;
            Ok(false)
        }
    }
}

/// How long a value taken by mistake is put back for. A used signed key's
/// marker must outlive the key, or the key would register again: its own
/// TTL is gone with it, so it gets the longest a key may live by default
/// (`--max-key-lifetime`); a key the relay checks is refused past its
/// expiry anyway, so a marker kept longer costs only its bytes.
fn restored_ttl(taken: &[u8]) -> Duration {
    let used = owner_value(&NodeInfo::used());
    if taken == used.as_bytes() {
        Duration::from_secs(dtcp_wire::DEFAULT_MAX_KEY_LIFETIME).max(RESTORED_TTL)
    } else {
        RESTORED_TTL
    }
}

/// Replaces `value` at `key` by `by` for `keep_for`: whether it did. Two
/// commands where [`compare_and_set`] costs three: a record retired into
/// its used marker, a waiter replaced by its record.
pub(crate) async fn compare_and_swap(
    runner: &Runner,
    key: &str,
    value: &str,
    by: &str,
    keep_for: Duration,
) -> Result<bool, StoreError> {
    let (keep, restore) = (ms(keep_for).to_string(), ms(RESTORED_TTL).to_string());
    let used = owner_value(&NodeInfo::used());
    let used_restore = ms(restored_ttl(used.as_bytes())).to_string();
    let replaced: i64 = runner
        .run(|mut c| {
            let (keep, restore, used, used_restore) = (&keep, &restore, &used, &used_restore);
            async move {
                COMPARE_AND_SWAP
                    .key(key)
                    .arg(value)
                    .arg(by)
                    .arg(keep)
                    .arg(restore)
                    .arg(used)
                    .arg(used_restore)
                    .invoke_async(&mut c)
                    .await
            }
        })
        .await?;
    Ok(replaced == 1)
}
