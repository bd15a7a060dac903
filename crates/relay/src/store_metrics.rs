//! Counts and times every rendezvous store operation, whatever the store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dtcp_store::{NodeInfo, Registered, Rendezvous, StoreError};
use dtcp_wire::RegistrationId;
use metrics::{counter, histogram};
use tokio::time::Instant;

use crate::metrics::{STORE_ERRORS, STORE_LATENCY, STORE_OPERATIONS};

/// A store whose operations are recorded in metrics by `op`.
#[derive(Debug)]
pub(crate) struct Instrumented(pub Arc<dyn Rendezvous>);

async fn record<T>(
    op: &'static str,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = f.await;
    counter!(STORE_OPERATIONS, "op" => op).increment(1);
    histogram!(STORE_LATENCY, "op" => op).record(started.elapsed());
    if result.is_err() {
        counter!(STORE_ERRORS, "op" => op).increment(1);
    }
    result
}

#[async_trait]
impl Rendezvous for Instrumented {
    async fn register(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        record("register", self.0.register(id, owner, ttl)).await
    }

    async fn lookup(&self, id: &RegistrationId) -> Result<Option<NodeInfo>, StoreError> {
        record("lookup", self.0.lookup(id)).await
    }

    async fn remove_if_owner(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
    ) -> Result<bool, StoreError> {
        record("remove", self.0.remove_if_owner(id, owner)).await
    }

    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), StoreError> {
        record("heartbeat", self.0.heartbeat(node, ttl)).await
    }

    async fn remove_node(&self, node: &NodeInfo) -> Result<(), StoreError> {
        record("remove_node", self.0.remove_node(node)).await
    }

    async fn nodes_alive(&self) -> Result<usize, StoreError> {
        record("nodes_alive", self.0.nodes_alive()).await
    }

    fn watch_registrations(&self) -> Option<tokio::sync::mpsc::Receiver<Registered>> {
        self.0.watch_registrations()
    }
}
