//! Where a connection of its own (a subscription, the tracking connection)
//! connects: the single server, or the master the sentinels name at each
//! (re)connection. A Redis Cluster's are made by the cluster client.

use std::time::Duration;

use redis::sentinel::SentinelClient;
use redis::{Client, ProtocolVersion, RedisResult};

use super::config::RedisConfig;
use super::conn::{sentinel_client, single_client, timed_out};
use crate::rendezvous::StoreError;

/// The server a connection of its own is made to.
pub(crate) enum Source {
    Fixed(Client),
    /// The master the sentinels name at each (re)connection.
    Sentinel(SentinelClient),
}

impl Source {
    /// The source `config` names, its connections speaking `protocol`; not
    /// for a Redis Cluster.
    pub(crate) fn new(config: &RedisConfig, protocol: ProtocolVersion) -> Result<Self, StoreError> {
        match &config.sentinel {
            Some(sentinel) => sentinel_client(config, sentinel, protocol).map(Source::Sentinel),
            None => single_client(config, protocol).map(Source::Fixed),
        }
    }

    /// A client of the server to connect to now.
    pub(crate) async fn client(&mut self, config: &RedisConfig) -> RedisResult<Client> {
        match self {
            Source::Fixed(client) => Ok(client.clone()),
            Source::Sentinel(sentinel) => {
                within(config.operation_timeout, sentinel.async_get_client()).await
            }
        }
    }
}

/// `f` within `limit`, a timeout being an I/O error like the others.
pub(crate) async fn within<T>(
    limit: Duration,
    f: impl Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| timed_out())?
}
