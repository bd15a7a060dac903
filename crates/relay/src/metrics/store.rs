//! Counts and times every rendezvous store operation, whatever the store.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dtcp_store::{Beat, NodeInfo, Registered, Rendezvous, StoreError};
use dtcp_wire::RegistrationId;
use metrics::{Counter, Histogram, counter, histogram};
use tokio::time::Instant;

use crate::metrics::names::{STORE_ERRORS, STORE_LATENCY, STORE_OPERATIONS};

/// The `op` label of every store operation, in the order of [`Instrumented`]'s fields.
pub(crate) const STORE_OPS: [&str; 9] = [
    "register",
    "lookup",
    "remove",
    "register_many",
    "heartbeat",
    "remove_node",
    "nodes_alive",
    "count_source",
    "uncount_source",
];

/// A store whose operations are recorded in metrics by `op`.
#[derive(Debug)]
pub(crate) struct Instrumented {
    store: Arc<dyn Rendezvous>,
    register: Op,
    lookup: Op,
    remove: Op,
    register_many: Op,
    heartbeat: Op,
    remove_node: Op,
    nodes_alive: Op,
    count_source: Op,
    uncount_source: Op,
}

impl Instrumented {
    pub(crate) fn new(store: Arc<dyn Rendezvous>) -> Self {
        let [
            register,
            lookup,
            remove,
            register_many,
            heartbeat,
            remove_node,
            nodes_alive,
            count_source,
            uncount_source,
        ] = STORE_OPS.map(Op::new);
        Instrumented {
            store,
            register,
            lookup,
            remove,
            register_many,
            heartbeat,
            remove_node,
            nodes_alive,
            count_source,
            uncount_source,
        }
    }
}

/// One operation's series, looked up once (as the hot series are).
#[derive(Debug)]
struct Op {
    name: &'static str,
    operations: Counter,
    latency: Histogram,
}

impl Op {
    fn new(name: &'static str) -> Self {
        Op {
            name,
            operations: counter!(STORE_OPERATIONS, "op" => name),
            latency: histogram!(STORE_LATENCY, "op" => name),
        }
    }

    async fn record<T>(
        &self,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = f.await;
        self.operations.increment(1);
        self.latency.record(started.elapsed());
        if result.is_err() {
            counter!(STORE_ERRORS, "op" => self.name).increment(1);
        }
        result
    }
}

#[async_trait]
impl Rendezvous for Instrumented {
    async fn register(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.register
            .record(self.store.register(id, owner, ttl))
            .await
    }

    async fn lookup(&self, id: &RegistrationId) -> Result<Option<NodeInfo>, StoreError> {
        self.lookup.record(self.store.lookup(id)).await
    }

    async fn lookup_or_wait(
        &self,
        id: &RegistrationId,
        waiter: &str,
        grace: Duration,
    ) -> Result<Option<NodeInfo>, StoreError> {
        self.lookup
            .record(self.store.lookup_or_wait(id, waiter, grace))
            .await
    }

    async fn remove_if_owner(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
    ) -> Result<bool, StoreError> {
        self.remove
            .record(self.store.remove_if_owner(id, owner))
            .await
    }

    async fn retire_if_owner(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
        keep_for: Duration,
    ) -> Result<bool, StoreError> {
        // It takes the removal's place: counted as one.
        self.remove
            .record(self.store.retire_if_owner(id, owner, keep_for))
            .await
    }

    async fn register_many(
        &self,
        owner: &NodeInfo,
        registrations: &[(RegistrationId, Duration, Option<String>)],
    ) -> Result<Vec<bool>, StoreError> {
        self.register_many
            .record(self.store.register_many(owner, registrations))
            .await
    }

    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<Beat, StoreError> {
        self.heartbeat.record(self.store.heartbeat(node, ttl)).await
    }

    async fn remove_node(&self, node: &NodeInfo) -> Result<(), StoreError> {
        self.remove_node.record(self.store.remove_node(node)).await
    }

    async fn live_nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        self.nodes_alive.record(self.store.live_nodes()).await
    }

    async fn nodes_alive(&self) -> Result<usize, StoreError> {
        self.nodes_alive.record(self.store.nodes_alive()).await
    }

    async fn count_source(
        &self,
        source: IpAddr,
        entry: u64,
        max: usize,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.count_source
            .record(self.store.count_source(source, entry, max, ttl))
            .await
    }

    async fn uncount_source(&self, source: IpAddr, entry: u64) -> Result<(), StoreError> {
        self.uncount_source
            .record(self.store.uncount_source(source, entry))
            .await
    }

    fn watch_registrations(
        &self,
        node_id: &str,
    ) -> Option<tokio::sync::mpsc::Receiver<Registered>> {
        self.store.watch_registrations(node_id)
    }

    async fn node_formats(&self) -> Result<Vec<(String, Vec<u32>)>, StoreError> {
        self.nodes_alive.record(self.store.node_formats()).await
    }

    fn use_format(&self, version: u32) {
        self.store.use_format(version);
    }

    fn watch_recoveries(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.store.watch_recoveries()
    }

    fn looks_tracked(&self) -> Option<bool> {
        self.store.looks_tracked()
    }
}
