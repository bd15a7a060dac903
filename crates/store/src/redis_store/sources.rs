//! Pending CREATEs per client address across the cluster: one expiring
//! counter per address, raised and lowered by a script so that the check
//! and the increase are one step.

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use super::{RedisStore, ms};
use crate::StoreError;

/// `INCR` unless at the limit (ARGV[1]), then `PEXPIRE` (ARGV[2] ms):
/// 1 if counted, 0 at the limit.
static COUNT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local n = redis.call('INCR', KEYS[1])
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
",
    )
});

/// `DECR`, and the key goes at zero (or below, after it expired meanwhile).
static UNCOUNT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('DECR', KEYS[1]) <= 0 then
  redis.call('DEL', KEYS[1])
end
return 1
",
    )
});

impl RedisStore {
    fn source_key(&self, source: IpAddr) -> String {
        format!("{}src:{}", self.inner.config.prefix, source.to_canonical())
    }

    pub(super) async fn count_source_script(
        &self,
        source: IpAddr,
        max: usize,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.source_key(source);
        let (max, ttl) = (max.to_string(), ms(ttl).to_string());
        // Retried like every command. Unlike the others it is not safe to
        // run twice: a retry after a lost reply counts one CREATE twice,
        // until the count expires. That errs towards refusing, and only in
        // the moments the store is failing.
        let (key, max, ttl) = (&key, &max, &ttl);
        let counted: i64 = self
            .run(|mut c| async move { COUNT.key(key).arg(max).arg(ttl).invoke_async(&mut c).await })
            .await?;
        Ok(counted == 1)
    }

    pub(super) async fn uncount_source_script(&self, source: IpAddr) -> Result<(), StoreError> {
        let key = self.source_key(source);
        let key = &key;
        let _: i64 = self
            .run(|mut c| async move { UNCOUNT.key(key).invoke_async(&mut c).await })
            .await?;
        Ok(())
    }
}
