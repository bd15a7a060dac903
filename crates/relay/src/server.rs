//! The listeners, the connection limit, and the drain.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use dtcp_forward::{Dialer, PlaneTls, Secret};
use dtcp_store::{MemoryStore, NodeInfo, RedisStore, StoreError};
use dtcp_wire::Condition;
use metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::conn;
use crate::http;
use crate::metrics::{CONNECTIONS_MAX, CONNECTIONS_REFUSED, DRAINING};
use crate::node::Node;
use crate::plane;

/// Descriptors kept free beyond the connection limit: listeners, the metrics
/// endpoint's connections, refusals in flight, store and forwarding sockets.
const FD_RESERVE: u64 = 256;
/// Connections being refused at once when the limit is reached; beyond this
/// they are closed without a reply.
const REFUSALS_IN_FLIGHT: usize = 64;
/// Pause after an `accept` that failed for lack of descriptors, so that the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long the forwarding plane may take, once every session has ended, to
/// send what they left queued toward other nodes and close.
const PLANE_SHUTDOWN: Duration = Duration::from_secs(5);

/// Errors that stop a relay from starting.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is inconsistent or refers to unreadable files.
    #[error("configuration: {0}")]
    Config(String),
    /// The rendezvous store could not be set up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// A connection slot: one permit of the connection limit, held for as long
/// as the socket is open (it moves with the socket when a session pairs).
/// `dtcp_connections_open` is the count of these, read off the limit when
/// the metrics are scraped ([`Slots::open`]).
#[derive(Debug)]
pub(crate) struct Slot(#[allow(dead_code)] pub(crate) OwnedSemaphorePermit);

/// The connection limit: one [`Slot`] per open client connection.
#[derive(Debug)]
pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Slots {
    pub fn new(max: usize) -> Self {
        Slots {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot, or `None` at the limit.
    pub fn take(&self) -> Option<Slot> {
        self.permits.clone().try_acquire_owned().ok().map(Slot)
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

/// A relay node with its listeners bound, ready to [`run`](Relay::run).
#[derive(Debug)]
pub struct Relay {
    node: Arc<Node>,
    listener: TcpListener,
    metrics_listener: TcpListener,
    plane: Option<PlaneParts>,
    metrics: PrometheusHandle,
}

/// What serving the forwarding plane takes (cluster mode).
#[derive(Debug)]
struct PlaneParts {
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    secret: Secret,
}

impl Relay {
    /// Raises the open-file limit, binds the listeners and logs what it bound.
    pub async fn bind(mut config: Config, metrics: PrometheusHandle) -> Result<Relay, RunError> {
        config.validate().map_err(RunError::Config)?;
        let nofile = raise_nofile_limit();
        let max_connections = effective_max_connections(config.max_connections, nofile);
        if max_connections < config.max_connections {
            warn!(
                requested = config.max_connections,
                effective = max_connections,
                nofile,
                "--max-connections lowered to fit the open-file limit"
            );
        }
        gauge!(CONNECTIONS_MAX).set(max_connections as f64);
        // From here on, the limit in force.
        config.max_connections = max_connections;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Bind { addr, source })
        };
        let listener = bind(config.listen).await?;
        let metrics_listener = bind(config.metrics_listen).await?;
        let id = config
            .node_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let (node, plane) = if config.cluster() {
            let forward_listener = bind(config.forward_listen).await?;
            let forward_addr = match &config.advertise_addr {
                Some(addr) => addr.clone(),
                None => forward_listener
                    .local_addr()
                    .map_err(|source| RunError::Bind {
                        addr: config.forward_listen,
                        source,
                    })?
                    .to_string(),
            };
            let tls = load_tls(&config)?;
            let secret = Secret::new(config.cluster_secret.as_deref());
            let store = RedisStore::new(&config.redis_config().map_err(RunError::Config)?)?;
            let (client_tls, server_tls) = match tls {
                Some(PlaneTls { client, server }) => (Some(client), Some(server)),
                None => (None, None),
            };
            let dialer = Dialer::new(client_tls, secret.clone());
            let info = NodeInfo { id, forward_addr };
            let node = Node::new(config, info, Arc::new(store), None, Some(dialer));
            let plane = PlaneParts {
                listener: forward_listener,
                tls: server_tls,
                secret,
            };
            (node, Some(plane))
        } else {
            let memory = Arc::new(MemoryStore::new());
            let info = NodeInfo {
                id,
                forward_addr: String::new(),
            };
            (
                Node::new(config, info, memory.clone(), Some(memory), None),
                None,
            )
        };
        let relay = Relay {
            node: Arc::new(node),
            listener,
            metrics_listener,
            plane,
            metrics,
        };
        info!(
            listen = %relay.local_addr(),
            metrics = %relay.metrics_addr(),
            forward = relay.forward_addr().map(|a| a.to_string()),
            advertise = %relay.node.info.forward_addr,
            node_id = %relay.node.info.id,
            max_connections,
            nofile,
            mode = if relay.node.cluster { "cluster" } else { "standalone" },
            plane_tls = relay.plane.as_ref().is_some_and(|p| p.tls.is_some()),
            "dtcp-relay listening"
        );
        Ok(relay)
    }

    /// The bound client address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener.local_addr().expect("bound listener")
    }

    /// The bound forwarding plane address (cluster mode).
    pub fn forward_addr(&self) -> Option<SocketAddr> {
        self.plane
            .as_ref()
            .and_then(|p| p.listener.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then drains: new commands get
    /// `shutting-down`, and paired sessions get up to the drain timeout to
    /// finish before the ones still open are closed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        let Relay {
            node,
            listener,
            metrics_listener,
            plane,
            metrics,
        } = self;
        let heartbeat = tokio::spawn(plane::heartbeat(node.clone()));
        let mut tasks = vec![
            tokio::spawn(http::serve(metrics_listener, metrics, node.clone())),
            tokio::spawn(accept_loop(node.clone(), listener)),
        ];
        if let Some(mut registered) = node.store.watch_registrations() {
            // Another node registered a CREATE: a CONNECT here waiting for
            // it looks again now rather than at its next poll.
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(announced) = registered.recv().await {
                    node.pending.announce(announced);
                }
            }));
        }
        // The plane outlives the sessions: it is stopped last, gracefully.
        let plane_stop = CancellationToken::new();
        let (health, plane_task) = match plane {
            Some(PlaneParts {
                listener,
                tls,
                secret,
            }) => {
                let (reporter, service) = tonic_health::server::health_reporter();
                plane::set_health(&reporter, true).await;
                let task = tokio::spawn(plane::serve(
                    node.clone(),
                    listener,
                    tls,
                    secret,
                    service,
                    plane_stop.clone().cancelled_owned(),
                ));
                (Some(reporter), Some(task))
            }
            None => (None, None),
        };

        shutdown.await;
        info!(
            pending = node.pending.len(),
            timeout_s = node.config.drain_timeout.as_secs_f64(),
            "draining: new commands get shutting-down"
        );
        gauge!(DRAINING).set(1.0);
        node.drain.cancel();
        if let Some(reporter) = &health {
            plane::set_health(reporter, false).await;
        }
        node.sessions.close();
        if tokio::time::timeout(node.config.drain_timeout, node.sessions.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = node.sessions.len(),
                "drain timeout: closing the sessions still open"
            );
            node.stop.cancel();
            // Sessions end at once when told to; give them a moment to log.
            let _ = tokio::time::timeout(Duration::from_secs(1), node.sessions.wait()).await;
        }
        if node.cluster {
            // Leave the cluster: the heartbeat goes now, not when it expires.
            heartbeat.abort();
            let leave = node.store.remove_node(&node.info);
            match tokio::time::timeout(Duration::from_secs(2), leave).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "could not remove the heartbeat; it expires by itself")
                }
                Err(_) => warn!("removing the heartbeat timed out; it expires by itself"),
            }
        }
        heartbeat.abort();
        if let Some(task) = plane_task {
            // A session that has ended here may still have its last frames
            // (data, fin) queued toward the other node: cutting the plane now
            // would make that node reset its client. A graceful shutdown
            // sends them, then closes.
            plane_stop.cancel();
            let abort = task.abort_handle();
            if tokio::time::timeout(PLANE_SHUTDOWN, task).await.is_err() {
                warn!("the forwarding plane did not close in time; closing it now");
                abort.abort();
            }
        }
        for task in tasks {
            task.abort();
        }
        info!("drained, exiting");
        Ok(())
    }
}

/// Reads the forwarding plane's TLS files.
fn load_tls(config: &Config) -> Result<Option<PlaneTls>, RunError> {
    let (Some(cert), Some(key)) = (&config.forward_tls_cert, &config.forward_tls_key) else {
        return Ok(None);
    };
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| RunError::Config(format!("reading {}: {e}", p.display())))
    };
    let identity = Identity::from_pem(read(cert)?, read(key)?);
    let mut server = ServerTlsConfig::new().identity(identity.clone());
    let mut client = ClientTlsConfig::new().domain_name(config.forward_tls_server_name.clone());
    match &config.forward_tls_ca {
        Some(ca) => {
            // Mutual TLS: every node presents a certificate signed by the CA.
            let ca = Certificate::from_pem(read(ca)?);
            server = server.client_ca_root(ca.clone());
            client = client.ca_certificate(ca).identity(identity);
        }
        // One certificate shared by all nodes: trust exactly it.
        None => client = client.ca_certificate(Certificate::from_pem(read(cert)?)),
    }
    Ok(Some(PlaneTls { client, server }))
}

/// Raises the soft open-file limit to the hard one; returns the limit in force.
fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    }
}

/// The connection limit, lowered if need be so that the relay refuses
/// connections before it runs out of descriptors.
fn effective_max_connections(requested: usize, nofile: u64) -> usize {
    let fits = nofile.saturating_sub(FD_RESERVE).max(1);
    requested.min(usize::try_from(fits).unwrap_or(usize::MAX))
}

async fn accept_loop(node: Arc<Node>, listener: TcpListener) {
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if is_out_of_descriptors(&e) => {
                counter!(CONNECTIONS_REFUSED, "reason" => "descriptors").increment(1);
                warn!(error = %e, "accept failed: out of descriptors; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
            Err(e) => {
                debug!(error = %e, "accept failed");
                continue;
            }
        };
        node.hot.connections_accepted.increment(1);
        let _ = stream.set_nodelay(true);
        match node.slots.take() {
            Some(slot) => {
                tokio::spawn(conn::handle(node.clone(), stream, peer, slot));
            }
            None => {
                counter!(CONNECTIONS_REFUSED, "reason" => "max_connections").increment(1);
                refuse_over_limit(stream, &refusals);
            }
        }
    }
}

fn refuse_over_limit(stream: TcpStream, refusals: &Arc<Semaphore>) {
    // Past this many refusals in flight, close without a word.
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let text = "the relay is at its connection limit";
        conn::refuse(stream, "", Condition::ResourceConstraint, text).await;
        drop(permit);
    });
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limit_fits_the_descriptor_limit() {
        assert_eq!(effective_max_connections(10_000, 1_048_576), 10_000);
        assert_eq!(effective_max_connections(10_000, 1024), 1024 - 256);
        assert_eq!(effective_max_connections(10_000, 10), 1);
    }
}
