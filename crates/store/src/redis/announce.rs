//! The subscription to registration announcements, kept up whatever Redis
//! does: subscribed again after every break, with backoff and jitter, on the
//! server that holds the channel now (the current master under Sentinel; the
//! shard of the channel's slot on a Redis Cluster, through sharded pub/sub).

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use futures_util::StreamExt;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, RedisError, RedisResult, Value};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::config::RedisConfig;
use super::conn::cluster_builder;
use super::health::Health;
use super::record::parse_announcement;
use super::source::{Source, within};
use crate::rendezvous::Registered;

/// Announcements queued for the relay before the newest are dropped.
pub(crate) const WATCH_QUEUE: usize = 4096;
/// How often a quiet subscription checks that its server still answers: a
/// connection that died without a reset (a host gone, a stalled server)
/// is noticed within this, plus one reply's time.
const SUBSCRIPTION_CHECK: Duration = Duration::from_secs(2);

/// Starts one subscription per channel, all delivering to `tx`; `false`
/// if `config` cannot make them.
pub(crate) fn watch(
    config: &RedisConfig,
    channels: Vec<String>,
    health: Arc<Health>,
    tx: mpsc::Sender<Registered>,
) -> bool {
    for channel in channels {
        let sub = Subscriber {
            config: config.clone(),
            channel,
            tx: tx.clone(),
            health: health.clone(),
        };
        if config.is_cluster() {
            tokio::spawn(sub.sharded());
            continue;
        }
        match Source::new(config, ProtocolVersion::RESP2) {
            Ok(source) => {
                tokio::spawn(sub.classic(source));
            }
            Err(e) => {
                warn!(error = %e, "cannot subscribe to registration announcements");
                return false;
            }
        }
    }
    true
}

/// What a push of the cluster subscription means for it.
enum Pushed {
    /// An announcement, or nothing to act on.
    Message,
    /// A node connection dropped.
    Broken,
    /// The server ended the subscription.
    Unsubscribed,
}

struct Subscriber {
    config: RedisConfig,
    channel: String,
    tx: mpsc::Sender<Registered>,
    health: Arc<Health>,
}

impl Subscriber {
    fn backoff(&self) -> backon::ExponentialBackoff {
        self.config.backoff().build()
    }

    /// Waits `delay`, or less if the relay stops listening. Whether it still listens.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => !self.tx.is_closed(),
            () = self.tx.closed() => false,
        }
    }

    fn forward(&self, payload: &[u8]) {
        if let Some(registered) = parse_announcement(payload) {
            // Full: the relay is behind; those CONNECTs find theirs by looking.
            let _ = self.tx.try_send(registered);
        }
    }

    /// `SUBSCRIBE` on one server (a single Redis, or the Sentinel master),
    /// again after each break.
    async fn classic(self, mut source: Source) {
        let mut delays = self.backoff();
        while !self.tx.is_closed() {
            match self.classic_once(&mut source, &mut delays).await {
                Ok(()) => {}
                Err(e) => {
                    debug!(error = %e, "registration announcements interrupted; subscribing again");
                }
            }
            let delay = delays.next().unwrap_or(self.config.retry_max_delay);
            if !self.pause(delay).await {
                break;
            }
        }
    }

    /// One subscription, until it breaks (`Err`) or the relay stops listening.
    async fn classic_once(
        &self,
        source: &mut Source,
        delays: &mut backon::ExponentialBackoff,
    ) -> RedisResult<()> {
        let client = source.client(&self.config).await?;
        let pubsub = within(self.config.connect_timeout, client.get_async_pubsub()).await?;
        let (mut sink, mut stream) = pubsub.split();
        within(self.config.response_timeout, sink.subscribe(&self.channel)).await?;
        // Subscribed: the next break starts again from the shortest delay.
        *delays = self.backoff();
        self.health.answered();
        let mut check = tokio::time::interval(SUBSCRIPTION_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => self.forward(msg.get_payload_bytes()),
                    None => {
                        self.health.trouble();
                        return Err(RedisError::from(std::io::Error::from(
                            std::io::ErrorKind::ConnectionReset,
                        )));
                    }
                },
                _ = check.tick() => {
                    let pong: RedisResult<Value> =
                        within(self.config.response_timeout, sink.ping()).await;
                    if let Err(e) = pong {
                        self.health.trouble();
                        return Err(e);
                    }
                }
                () = self.tx.closed() => return Ok(()),
            }
        }
    }

    /// `SSUBSCRIBE` on a Redis Cluster: the redis crate's cluster connection
    /// (RESP3) sends it to the shard that holds the channel's slot. The
    /// crate does not move it by itself when that shard's master dies, so
    /// after a node connection drops this checks the slot (a command routed
    /// there, which makes the connection look the slot up again) until it
    /// answers, then subscribes again: on the replica promoted in its place.
    /// The same check runs every [`SUBSCRIPTION_CHECK`] meanwhile; one that
    /// gets no answer at all makes a new connection (the old one may be
    /// wedged) and subscribes on it. A
    /// failover that drops no connection of ours (a manual one) ends the
    /// subscription with a `SUNSUBSCRIBE` push, and it is made again too.
    async fn sharded(self) {
        let (push_tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
        let client = match cluster_builder(&self.config)
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(push_tx)
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                warn!(error = %e, "cannot subscribe to registration announcements");
                return;
            }
        };
        let Some(mut conn) = self.cluster_connection(&client).await else {
            return;
        };
        let mut delays = self.backoff();
        let mut subscribed = false;
        // A node connection dropped or the check failed: the channel's
        // shard may have moved. Checked again soon, and once it answers,
        // subscribed again (on the slot's holder now; a second SSUBSCRIBE
        // where the first still holds is harmless).
        let mut stale = false;
        let mut next_check = tokio::time::Instant::now() + SUBSCRIPTION_CHECK;
        loop {
            if !subscribed {
                match within(
                    self.config.operation_timeout,
                    conn.ssubscribe(&self.channel),
                )
                .await
                {
                    Ok(()) => {
                        subscribed = true;
                        delays = self.backoff();
                        self.health.answered();
                    }
                    Err(e) => {
                        debug!(error = %e, "cannot subscribe to registration announcements yet");
                        let delay = delays.next().unwrap_or(self.config.retry_max_delay);
                        if !self.pause(delay).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            tokio::select! {
                push = pushes.recv() => match push {
                    Some(push) => match self.sharded_push(push) {
                        Pushed::Message => {}
                        Pushed::Broken => {
                            if !stale {
                                stale = true;
                                delays = self.backoff();
                                next_check = tokio::time::Instant::now();
                            }
                        }
                        Pushed::Unsubscribed => subscribed = false,
                    },
                    None => return,
                },
                () = tokio::time::sleep_until(next_check) => {
                    // Any command on the channel's slot: if its holder died,
                    // this fails and the connection looks the slot up again.
                    let probe: RedisResult<i64> = within(
                        self.config.operation_timeout,
                        redis::cmd("EXISTS").arg(&self.channel).query_async(&mut conn),
                    )
                    .await;
                    let wait = match probe {
                        Ok(_) => {
                            self.health.answered();
                            if std::mem::take(&mut stale) {
                                subscribed = false;
                            }
                            SUBSCRIPTION_CHECK
                        }
                        Err(e) => {
                            debug!(error = %e, "announcement shard not answering");
                            self.health.trouble();
                            stale = true;
                            if e.is_timeout() {
                                // No answer at all: the connection may be
                                // wedged for good (see `ClusterConn` in
                                // conn.rs); a new one subscribes anew.
                                let Some(new) = self.cluster_connection(&client).await else {
                                    return;
                                };
                                conn = new;
                                subscribed = false;
                            }
                            delays.next().unwrap_or(self.config.retry_max_delay)
                        }
                    };
                    next_check = tokio::time::Instant::now() + wait;
                }
                () = self.tx.closed() => return,
            }
        }
    }

    /// A connection of `client`, tried again with backoff until one is made;
    /// `None` if the relay stops listening first.
    async fn cluster_connection(&self, client: &ClusterClient) -> Option<ClusterConnection> {
        let mut delays = self.backoff();
        loop {
            match within(self.config.operation_timeout, client.get_async_connection()).await {
                Ok(conn) => return Some(conn),
                Err(e) => debug!(error = %e, "Redis Cluster not reachable for announcements"),
            }
            let delay = delays.next().unwrap_or(self.config.retry_max_delay);
            if !self.pause(delay).await {
                return None;
            }
        }
    }

    /// Handles one push of the cluster subscription.
    fn sharded_push(&self, push: PushInfo) -> Pushed {
        match push.kind {
            PushKind::SMessage => {
                // [channel, payload]
                if let Some(Value::BulkString(payload)) = push.data.get(1) {
                    self.forward(payload);
                }
                Pushed::Message
            }
            PushKind::Disconnection => {
                self.health.trouble();
                Pushed::Broken
            }
            // The server dropped the subscription (its slot moved away).
            PushKind::SUnsubscribe => Pushed::Unsubscribed,
            _ => Pushed::Message,
        }
    }
}
