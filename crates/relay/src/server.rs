//! The node's wiring: what [`Relay::bind`] sets up (listeners, store,
//! forwarding plane) and what [`Relay::run`] runs, then the drain.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dtcp_forward::{Dialer, PlaneTls, TlsFiles};
use dtcp_store::{MemoryStore, NodeInfo, RedisStore, StoreError};
use metrics::gauge;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::accept::accept_loop;
use crate::admin;
use crate::config::Config;
use crate::descriptors::{effective_max_connections, lanes_attaching_max, raise_nofile_limit};
use crate::limits::RATE_EVICTION_INTERVAL;
use crate::membership;
use crate::metrics::{CONNECTIONS_MAX, DRAINING, LANES_ATTACHING_MAX, NODES_ALIVE};
use crate::node::Node;
use crate::plane;
use crate::trust::{self, Trust, TrustError};
use crate::xep0065::component;

/// After the drain timeout has cut the sessions still open, how long they
/// get to write their log lines and metrics before the node goes on.
const CUT_SESSIONS_GRACE: Duration = Duration::from_secs(1);
/// How long removing this node's heartbeat from the store may take when it
/// leaves the cluster.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the forwarding plane may take, once every session has ended, to
/// send what they left queued toward other nodes and close.
const PLANE_SHUTDOWN: Duration = Duration::from_secs(5);
/// How long the XMPP component link may take to close when the node drains.
const COMPONENT_SHUTDOWN: Duration = Duration::from_secs(3);

/// Errors that stop a relay from starting.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is inconsistent or refers to unreadable files.
    #[error("configuration: {0}")]
    Config(String),
    /// A secret file could not be used.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The forwarding plane's TLS files could not be used.
    #[error("forwarding plane TLS: {0}")]
    Tls(#[from] dtcp_forward::TlsError),
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

/// A relay node with its listeners bound, ready to [`run`](Relay::run).
#[derive(Debug)]
pub struct Relay {
    node: Arc<Node>,
    listener: TcpListener,
    metrics_listener: TcpListener,
    plane: Option<PlaneParts>,
    metrics: PrometheusHandle,
    /// The secret files, watched while the node runs.
    watched: trust::Watched,
    /// XEP-0065 mode's component, if configured.
    xmpp: Option<dtcp_xmpp::XmppConfig>,
}

/// What serving the forwarding plane takes (cluster mode).
#[derive(Debug)]
struct PlaneParts {
    listener: TcpListener,
    tls: Option<PlaneTls>,
}

impl Relay {
    /// Raises the open-file limit, binds the listeners and logs what it bound.
    pub async fn bind(mut config: Config, metrics: PrometheusHandle) -> Result<Relay, RunError> {
        config.validate().map_err(RunError::Config)?;
        let nofile = raise_nofile_limit();
        // A node that offers lanes keeps descriptors for those attaching
        // (their token not read yet) out of the clients' connection limit.
        let lanes_attaching = lanes_attaching_max(nofile, config.cluster() && !config.no_lanes);
        let max_connections = effective_max_connections(
            config.max_connections,
            nofile,
            !config.no_splice,
            lanes_attaching,
        );
        if max_connections < config.max_connections {
            warn!(
                requested = config.max_connections,
                effective = max_connections,
                nofile,
                lanes_attaching,
                "--max-connections lowered to fit the open-file limit"
            );
        }
        gauge!(CONNECTIONS_MAX).set(max_connections as f64);
        gauge!(LANES_ATTACHING_MAX).set(lanes_attaching as f64);
        // From here on, the limit in force.
        config.max_connections = max_connections;
        let bind = |addr: SocketAddr, backlog: u32| {
            listen(addr, backlog).map_err(|source| RunError::Bind { addr, source })
        };
        let listener = bind(config.listen, BACKLOG)?;
        let metrics_listener = bind(config.metrics_listen, BACKLOG)?;
        // A configured id gets a suffix of its own per start, so that a
        // process restarted with the same configuration (a container
        // restarted in its pod) is a new node and its predecessor's
        // registrations are seen as a dead node's, not as its own.
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let id = match &config.node_id {
            Some(configured) => format!("{configured}-{}", &fresh[..8]),
            None => uuid::Uuid::new_v4().to_string(),
        };
        let (trust, mut watched) = Trust::load(&config)?;
        let xmpp = config.xmpp.xmpp_config().map_err(RunError::Config)?;
        let (node, plane) = if config.cluster() {
            let forward_listener = bind(config.forward_listen, FORWARD_BACKLOG)?;
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
            let tls = tls_files(&config).map(PlaneTls::load).transpose()?;
            if let Some(tls) = &tls {
                // One configuration for both sides, reloaded when its files change.
                watched.tls(tls.clone());
            }
            let store = RedisStore::new(&config.redis_config().map_err(RunError::Config)?)?;
            if let Some(why) = store.tls_refusal().await {
                // A certificate refused now is refused at every reconnection:
                // better a node that does not start than one that never pairs.
                return Err(RunError::Config(format!(
                    "Redis refused this node's TLS: {why}"
                )));
            }
            // Lanes carry forwarded sessions' bytes: plain TCP (spliced) on a
            // plain plane, TLS with the plane's certificates under plane TLS.
            let lanes = !config.no_lanes;
            let dialer = Dialer::new(tls.clone(), trust.plane.clone(), &id)
                .with_lanes(lanes)
                .with_lane_pool(config.lane_pool as usize, crate::metrics::lane_pool());
            let info = NodeInfo {
                id,
                forward_addr,
                seal: None,
            };
            let node = Node::new(config, info, trust, Arc::new(store), None, Some(dialer))
                .with_lanes_attaching(lanes_attaching);
            let plane = PlaneParts {
                listener: forward_listener,
                tls,
            };
            (node, Some(plane))
        } else {
            let memory = Arc::new(MemoryStore::new());
            let info = NodeInfo {
                id,
                ..NodeInfo::default()
            };
            (
                Node::new(config, info, trust, memory.clone(), Some(memory), None),
                None,
            )
        };
        let relay = Relay {
            node: Arc::new(node),
            listener,
            metrics_listener,
            plane,
            metrics,
            watched,
            xmpp,
        };
        info!(
            listen = %relay.local_addr(),
            metrics = %relay.metrics_addr(),
            forward = relay.forward_addr().map(|a| a.to_string()),
            advertise = %relay.node.info.forward_addr,
            node_id = %relay.node.info.id,
            max_connections,
            nofile,
            lanes_attaching = relay.node.lanes_attaching.max(),
            mode = if relay.node.cluster { "cluster" } else { "standalone" },
            plane_tls = relay.plane.as_ref().is_some_and(|p| p.tls.is_some()),
            xmpp_component = relay.xmpp.as_ref().map(|x| x.component.to_string()),
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
            watched,
            xmpp,
        } = self;
        // A lone node has nobody to tell it is alive; it counts itself, so
        // that "nodes scraped minus nodes alive" stays 0 for it too.
        let heartbeat = node
            .cluster
            .then(|| tokio::spawn(membership::run(node.clone())));
        if !node.cluster {
            gauge!(NODES_ALIVE).set(1.0);
        }
        // The plane's gate, made here so that the metrics count its connections.
        let plane_gate = plane
            .as_ref()
            .map(|_| plane::gate(node.config.plane_max_connections));
        let mut tasks = vec![
            tokio::spawn(admin::serve(
                metrics_listener,
                metrics,
                node.clone(),
                plane_gate.clone(),
            )),
            tokio::spawn(accept_loop(node.clone(), listener)),
            tokio::spawn(watched.run()),
        ];
        if node.rate.is_some() {
            // Addresses quiet for long enough are as good as new: forget them.
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(RATE_EVICTION_INTERVAL);
                loop {
                    tick.tick().await;
                    if let Some(rate) = &node.rate {
                        rate.evict_idle();
                    }
                }
            }));
        }
        if node.lanes.is_some() {
            // The peers' addresses, for the plane port to tell their
            // connections apart before their first byte.
            tasks.push(tokio::spawn(node.peers.clone().run()));
        }
        if let Some(mut registered) = node.store.watch_registrations(&node.info.id) {
            // Another node registered a CREATE a CONNECT here left a waiter
            // for: it looks again now rather than at its next poll.
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(announced) = registered.recv().await {
                    node.pending.announce(announced);
                }
            }));
        }
        // The plane outlives the sessions: it is stopped last, gracefully.
        let plane_stop = CancellationToken::new();
        let (health, plane_task) = match plane.zip(plane_gate) {
            Some((PlaneParts { listener, tls }, gate)) => {
                let (reporter, service) = tonic_health::server::health_reporter();
                plane::set_health(&reporter, true).await;
                let task = tokio::spawn(plane::serve(
                    node.clone(),
                    listener,
                    tls,
                    gate,
                    service,
                    plane_stop.clone().cancelled_owned(),
                ));
                (Some(reporter), Some(task))
            }
            None => (None, None),
        };

        // Started once the plane serves: an activation may need it at once.
        let component = xmpp.map(|config| component::start(node.clone(), config));

        shutdown.await;
        info!(
            pending = node.pending.len(),
            timeout_s = node.config.drain_timeout.as_secs_f64(),
            "draining: new commands get shutting-down"
        );
        gauge!(DRAINING).set(1.0);
        node.drain.cancel();
        if let Some(dialer) = &node.dialer {
            // New claims get shutting-down: no lane dialed ahead is wanted.
            dialer.close_lane_pool();
        }
        if let Some(component) = component {
            // Another node (a standby) takes the component over; this node's
            // pairs can still be activated through it, over the plane.
            if tokio::time::timeout(COMPONENT_SHUTDOWN, component.stop())
                .await
                .is_err()
            {
                warn!("the XMPP component link did not close in time");
            }
        }
        if !node.cluster {
            // A lone node: nobody can claim a pending CREATE once it drains.
            // In a cluster other nodes still can, until the drain timeout.
            node.pending.close();
        }
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
            node.pending.close();
            // Sessions end at once when told to; give them a moment to log.
            let _ = tokio::time::timeout(CUT_SESSIONS_GRACE, node.sessions.wait()).await;
        }
        if let Some(heartbeat) = heartbeat {
            // Leave the cluster: the heartbeat goes now, not when it expires.
            heartbeat.abort();
            // The heartbeat as written (its seal names its member of the set).
            let beating = node.trust.beating(&node.info);
            let leave = node.store.remove_node(&beating);
            match tokio::time::timeout(LEAVE_TIMEOUT, leave).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "could not remove the heartbeat; it expires by itself")
                }
                Err(_) => warn!("removing the heartbeat timed out; it expires by itself"),
            }
        }
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

/// Where the forwarding plane's TLS files are, if TLS is on.
fn tls_files(config: &Config) -> Option<TlsFiles> {
    let (Some(cert), Some(key)) = (&config.forward_tls_cert, &config.forward_tls_key) else {
        return None;
    };
    Some(TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        ca: config.forward_tls_ca.clone(),
        server_name: config.forward_tls_server_name.clone(),
    })
}

/// Connections a listener's kernel queue holds until they are accepted
/// (the runtime's own default): a burst of clients past it is slowed, not
/// failed.
const BACKLOG: u32 = 1024;

/// The forwarding port's queue (the kernel caps it at `net.core.somaxconn`,
/// 4,096 by default). A burst of pairings across nodes dials a lane per
/// session at once: with [`BACKLOG`], lanes past it had their handshake
/// dropped, were retried by the kernel only after a second, and timed out,
/// their sessions crossing on the Bridge. (The client port keeps
/// [`BACKLOG`]: given this one, a benchmark's burst of clients came in at
/// once and left the nodes more fragmented heap per held session.)
const FORWARD_BACKLOG: u32 = 4096;

/// A listener on `addr` queueing `backlog` connections (with
/// `SO_REUSEADDR`, as the runtime's own binding, so that a restarted node
/// binds its port again at once).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
