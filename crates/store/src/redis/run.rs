//! One store operation on Redis: a command, a pipeline or a script, retried
//! after connection failures and bounded in time.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use redis::{Cmd, FromRedisValue, Pipeline, RedisResult};
use tracing::debug;

use super::config::RedisConfig;
use super::conn::{Conn, ConnRef, retryable, timed_out, unavailable};
use super::health::Health;
use crate::rendezvous::StoreError;

/// Runs the store's operations on its connection.
pub(crate) struct Runner {
    conn: Conn,
    health: Arc<Health>,
    backoff: ExponentialBuilder,
    operation_timeout: Duration,
}

impl Runner {
    /// A runner on the Redis that `config` names (connected lazily).
    pub(crate) fn new(config: &RedisConfig, health: Arc<Health>) -> Result<Self, StoreError> {
        Ok(Runner {
            conn: Conn::new(config)?,
            health,
            backoff: config.operation_backoff(),
            operation_timeout: config.operation_timeout,
        })
    }

    /// The connection the operations run on.
    pub(crate) fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Runs one command under [`Runner::run`].
    pub(crate) async fn query<T: FromRedisValue + Send>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.run(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Runs one pipeline under [`Runner::run`].
    pub(crate) async fn pipeline<T: FromRedisValue + Send>(
        &self,
        pipe: &Pipeline,
    ) -> Result<T, StoreError> {
        self.run(|mut c| async move { pipe.query_async(&mut c).await })
            .await
    }

    /// Runs `f` on a connection until it succeeds, fails for good, has been
    /// retried [`RedisConfig::retries`] times, or the operation's time is up.
    /// A connection failure (a drop, a timeout, a demoted master) is retried
    /// after a backoff with jitter; every command here is safe to run twice.
    /// The whole is bounded by
    /// [`RedisConfig::operation_timeout`], so a client waits that long at
    /// most before it gets `unavailable`.
    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(ConnRef) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        // The connection of the latest attempt, told if the whole times out.
        let latest = std::sync::Mutex::new(None);
        let attempt = || async {
            let conn = self.conn.get().await?;
            let generation = conn.generation();
            *latest.lock().expect("poisoned") = generation;
            let result = f(conn).await;
            if let Err(e) = &result
                && retryable(e)
            {
                self.conn.failed(generation, e);
            }
            result
        };
        let retried = attempt
            .retry(self.backoff)
            .sleep(tokio::time::sleep)
            .when(retryable)
            .notify(|e, after| {
                self.health.trouble();
                debug!(error = %e, ?after, "rendezvous store command failed; retrying");
            });
        match tokio::time::timeout(self.operation_timeout, retried).await {
            Ok(Ok(v)) => {
                self.health.answered();
                Ok(v)
            }
            Ok(Err(e)) => {
                if retryable(&e) {
                    self.health.trouble();
                }
                Err(unavailable(e))
            }
            Err(_) => {
                self.health.trouble();
                let generation = *latest.lock().expect("poisoned");
                self.conn.failed(generation, &timed_out());
                Err(StoreError::Unavailable(format!(
                    "no answer within {:?}",
                    self.operation_timeout
                )))
            }
        }
    }
}

/// The wall clock in milliseconds since the epoch (heartbeats' expiries).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A TTL in whole milliseconds, at least one (Redis refuses 0).
pub(crate) fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}
