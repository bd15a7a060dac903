//! The admin listener (`--metrics-listen`): `/metrics` (Prometheus text),
//! `/healthz` (the process answers) and `/readyz` (it takes new sessions:
//! not draining).
//!
//! It serves operators, not the public, and is bounded as such: at most
//! [`ADMIN_MAX_CONNECTIONS`] connections, each closed if it sends no whole
//! request head within [`ADMIN_HEADER_TIMEOUT`] (a new connection as an
//! idle keep-alive one), each request answered within
//! [`ADMIN_REQUEST_TIMEOUT`], and no connection kept past
//! [`ADMIN_CONNECTION_LIFETIME`]. When it is full, the oldest connection not
//! in a request makes room for the new one, so that a crowd of silent
//! connections cannot keep a scraper out. Also here: the accept loop the
//! node's own listeners share ([`Acceptor`]), which backs off when
//! descriptors run out.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use dtcp_duplex::ACCEPT_BACKOFF;
use dtcp_forward::{ConnectionGate, Cut, Probation};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusHandle;
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::metrics::{
    ACCEPT_FAILURES, CONNECTION_RATE_SOURCES, CONNECTIONS_OPEN, LANES_ATTACHING,
    LISTENER_CONNECTIONS_CLOSED, LISTENER_CONNECTIONS_OPEN, STORE_LOOKS_TRACKED,
    STORE_REGISTRATIONS, UPKEEP_INTERVAL,
};
use crate::node::Node;

/// Connections the metrics listener holds at once: a few scrapers and
/// probes need a few each; the rest of the descriptors are the clients'.
pub(crate) const ADMIN_MAX_CONNECTIONS: usize = 64;
/// How long a connection has to send its first request (probation): a
/// scraper or a probe sends it at once.
const ADMIN_PROBATION: Duration = Duration::from_secs(5);
/// How long a request head may take to arrive, on a new connection as on
/// an idle keep-alive one (hyper's timer starts when it waits for a head):
/// a slow sender holds a slot no longer than this.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request may take to be answered (a scrape renders in
/// milliseconds).
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection is kept, however busy: then it is closed
/// gracefully (the request in progress is answered), and after
/// [`ADMIN_REQUEST_TIMEOUT`] more, closed.
const ADMIN_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Largest request head buffered (hyper's minimum; a scrape's is a few
/// hundred bytes).
const ADMIN_MAX_HEAD: usize = 8 * 1024;

#[derive(Clone)]
struct Http {
    metrics: PrometheusHandle,
    node: Arc<Node>,
    /// The `process_*` series (descriptors, RSS, CPU), read at each scrape.
    process: Arc<metrics_process::Collector>,
    /// This listener's gate and the plane's, counted at each scrape.
    gates: Vec<(&'static str, ConnectionGate)>,
}

/// How often a listener's accept failures are logged at most: out of
/// descriptors, an accept fails and succeeds again many times a second, as
/// connections come and go.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// An accept loop for the node's own listeners: a failed accept (out of
/// descriptors) is counted in `dtcp_listener_accept_failures_total`, backed
/// off rather than retried at once, and logged once per run of failures,
/// [`ACCEPT_LOG_EVERY`] apart at most.
#[derive(Debug)]
pub(crate) struct Acceptor {
    listener: TcpListener,
    /// The `listener` label.
    name: &'static str,
    /// Failures since the last line logged about them.
    failures: u64,
    /// When a run of failures was last logged, and whether the current
    /// run was (its end is then logged too).
    warned: Option<(Instant, bool)>,
}

impl Acceptor {
    /// Accepts on `listener`, named `name` in metrics and logs.
    pub(crate) fn new(listener: TcpListener, name: &'static str) -> Self {
        Acceptor {
            listener,
            name,
            failures: 0,
            warned: None,
        }
    }

    /// The next connection, however long it takes.
    pub(crate) async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    if let Some((at, true)) = self.warned {
                        info!(
                            listener = self.name,
                            failures = self.failures,
                            "accepting again"
                        );
                        self.failures = 0;
                        self.warned = Some((at, false));
                    }
                    return accepted;
                }
                // That one connection's trouble (it reset before it was taken).
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    counter!(ACCEPT_FAILURES, "listener" => self.name).increment(1);
                    let quiet = match self.warned {
                        Some((_, true)) => true,
                        Some((at, false)) => at.elapsed() < ACCEPT_LOG_EVERY,
                        None => false,
                    };
                    if !quiet {
                        warn!(
                            listener = self.name,
                            error = %e,
                            "accept failed; backing off until it succeeds again (logged once)"
                        );
                        self.warned = Some((Instant::now(), true));
                    }
                    self.failures += 1;
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// Closes a connection refused at a gate with a reset: no FIN handshake and
/// no TIME_WAIT kept here for a connection that was never served.
pub(crate) fn reset(tcp: TcpStream) {
    let _ = SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
    drop(tcp);
}

/// Counts a connection the metrics listener's gate closed.
fn metrics_cut(cut: Cut) {
    counter!(LISTENER_CONNECTIONS_CLOSED, "listener" => "metrics", "reason" => cut.as_str())
        .increment(1);
}

/// Serves the admin endpoints on `listener` for ever; `plane` is the
/// forwarding plane's gate (cluster mode), whose connections are counted at
/// each scrape.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    node: Arc<Node>,
    plane: Option<ConnectionGate>,
) {
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
    let gate = ConnectionGate::new(ADMIN_MAX_CONNECTIONS, ADMIN_PROBATION, metrics_cut);
    let mut gates = vec![("metrics", gate.clone())];
    gates.extend(plane.map(|plane| ("plane", plane)));
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Http {
            metrics,
            node,
            process: Arc::new(process),
            gates,
        });
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT)
        .max_buf_size(ADMIN_MAX_HEAD)
        .keep_alive(true);
    let mut acceptor = Acceptor::new(listener, "metrics");
    loop {
        let (tcp, _) = acceptor.accept().await;
        match gate.enter(tcp) {
            Ok(io) => {
                tokio::spawn(serve_connection(io, app.clone(), http1.clone()));
            }
            Err(tcp) => {
                counter!(LISTENER_CONNECTIONS_CLOSED, "listener" => "metrics", "reason" => "max_connections")
                    .increment(1);
                reset(tcp);
            }
        }
    }
}

/// One admin connection, within its bounds (see the module's documentation).
async fn serve_connection(
    io: Probation<TcpStream>,
    app: Router,
    http1: hyper::server::conn::http1::Builder,
) {
    let admission = io.admission().clone();
    let service = hyper::service::service_fn(move |request: axum::http::Request<Incoming>| {
        // In a request: not to be evicted until it is answered.
        admission.admit();
        let (app, admission) = (app.clone(), admission.clone());
        async move {
            let answer = tokio::time::timeout(ADMIN_REQUEST_TIMEOUT, app.oneshot(request)).await;
            admission.revoke();
            Ok::<_, Infallible>(match answer {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timed out\n").into_response(),
            })
        }
    });
    let mut connection = pin!(http1.serve_connection(TokioIo::new(io), service));
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(e) = served {
                debug!(error = %e, "metrics connection ended");
            }
        }
        () = tokio::time::sleep(ADMIN_CONNECTION_LIFETIME) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(ADMIN_REQUEST_TIMEOUT, connection).await;
        }
    }
}

async fn render(State(http): State<Http>) -> String {
    // Counted where they are kept, not on every change.
    gauge!(CONNECTIONS_OPEN).set(http.node.slots.open() as f64);
    gauge!(LANES_ATTACHING).set(http.node.lanes_attaching.open() as f64);
    if let Some(rate) = &http.node.rate {
        gauge!(CONNECTION_RATE_SOURCES).set(rate.sources() as f64);
    }
    if let Some(memory) = &http.node.memory {
        gauge!(STORE_REGISTRATIONS).set(memory.len() as f64);
    }
    if let Some(tracked) = http.node.store.looks_tracked() {
        gauge!(STORE_LOOKS_TRACKED).set(f64::from(u8::from(tracked)));
    }
    for (listener, gate) in &http.gates {
        gauge!(LISTENER_CONNECTIONS_OPEN, "listener" => *listener).set(gate.open() as f64);
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
