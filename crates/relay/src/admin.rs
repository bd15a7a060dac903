//! The admin listener (`--metrics-listen`): `/metrics` (Prometheus text),
//! `/healthz` (the process answers) and `/readyz` (it takes new sessions:
//! not draining).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics::gauge;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tracing::warn;

use crate::metrics::{
    CONNECTION_RATE_SOURCES, CONNECTIONS_OPEN, STORE_REGISTRATIONS, UPKEEP_INTERVAL,
};
use crate::node::Node;

#[derive(Clone)]
struct Http {
    metrics: PrometheusHandle,
    node: Arc<Node>,
    /// The `process_*` series (descriptors, RSS, CPU), read at each scrape.
    process: Arc<metrics_process::Collector>,
}

/// Serves the admin endpoints on `listener` for ever.
pub(crate) async fn serve(listener: TcpListener, metrics: PrometheusHandle, node: Arc<Node>) {
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let process = metrics_process::Collector::default();
    process.describe();
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Http {
            metrics,
            node,
            process: Arc::new(process),
        });
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "metrics listener failed");
    }
}

async fn render(State(http): State<Http>) -> String {
    // Counted where they are kept, not on every change.
    gauge!(CONNECTIONS_OPEN).set(http.node.slots.open() as f64);
    if let Some(rate) = &http.node.rate {
        gauge!(CONNECTION_RATE_SOURCES).set(rate.sources() as f64);
    }
    if let Some(memory) = &http.node.memory {
        gauge!(STORE_REGISTRATIONS).set(memory.len() as f64);
    }
    http.process.collect();
    http.metrics.render()
}

async fn ready(State(http): State<Http>) -> (StatusCode, &'static str) {
    if http.node.drain.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}
