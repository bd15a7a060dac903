//! `redis-server` processes of the tests' own: a standalone server and a
//! three-master Redis Cluster, on free loopback ports. The processes are
//! `dtcp-testkit`'s (shared with the store's tests; re-exported as
//! [`crate::testkit`] for the Sentinel and replicated Cluster deployments).

use dtcp_testkit::{Cluster, Server};

pub use dtcp_testkit::free_port;

/// A `redis-server` process of the test's own, on a free loopback port,
/// without persistence; killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    server: Server,
    /// Its port.
    pub port: u16,
}

impl From<Server> for RedisServer {
    fn from(server: Server) -> Self {
        RedisServer {
            port: server.port,
            server,
        }
    }
}

impl RedisServer {
    /// Starts a standalone Redis with no persistence.
    pub fn start() -> RedisServer {
        Self::start_with(free_port(), &[])
    }

    /// Starts one on `port` with `extra` arguments.
    pub fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        Server::start_on(port, extra, None).into()
    }

    /// The process id, while it runs (for signals such as SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Sends it a signal (SIGSTOP and SIGCONT to stall it).
    pub fn signal(&self, signal: i32) {
        self.server.signal(signal);
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Runs `redis-cli` against it; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        self.server.cli(args)
    }

    /// Calls per command, from `INFO commandstats` (the calls scripts make
    /// included, and this `INFO` too).
    pub fn command_calls(&self) -> std::collections::HashMap<String, u64> {
        self.server.command_calls()
    }

    /// The ids of its clients with tracking on: each node's tracked
    /// connection.
    pub fn tracking_clients(&self) -> Vec<String> {
        self.server.tracking_clients()
    }

    /// Every key (the test Redis holds only this cluster's).
    pub fn keys(&self) -> Vec<String> {
        self.server.keys()
    }

    /// Stops the server (SIGKILL): clients see the connection drop.
    pub fn stop(&mut self) {
        self.server.kill();
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.server.restart();
    }
}

/// A three-master Redis Cluster on loopback.
#[derive(Debug)]
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three `--cluster-enabled` servers (Redis's default node
    /// timeout) and joins them.
    pub fn start() -> RedisCluster {
        let cluster = Cluster::start_args(3, 0, &[]);
        RedisCluster {
            nodes: cluster.nodes.into_iter().map(RedisServer::from).collect(),
        }
    }

    /// Every key on every master.
    pub fn keys(&self) -> Vec<String> {
        self.nodes.iter().flat_map(|n| n.keys()).collect()
    }
}
