//! `redis-server` processes on loopback: a single server, a master with a
//! replica and three sentinels, a Redis Cluster. Each process is killed
//! when dropped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{Process, wait_until};

/// How long a server or a deployment may take to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Redis Cluster's bus port is the client port plus this.
const CLUSTER_BUS_OFFSET: u16 = 10_000;
/// Ports at or above this have no room for their bus port.
const MAX_CLIENT_PORT: u16 = 55_000;

/// A free loopback TCP port whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().unwrap().port();
        if port < MAX_CLIENT_PORT
            && std::net::TcpListener::bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET)).is_ok()
        {
            return port;
        }
    }
}

/// One `redis-server` (or `redis-server --sentinel`) process.
#[derive(Debug)]
pub struct Server {
    process: Process,
    /// Its port.
    pub port: u16,
    /// Password clients give (`-a`), if any.
    pub password: Option<String>,
    dir: PathBuf,
}

impl Server {
    /// A Redis without persistence on a free port, with `extra` arguments.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_on(free_port(), extra, None)
    }

    /// As [`Server::start`], on `port`, with `password` for the test's own
    /// `redis-cli` calls.
    pub fn start_on(port: u16, extra: &[&str], password: Option<&str>) -> Server {
        let dir = scratch_dir(port);
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Server {
            process: Process::new("redis-server", args),
            port,
            password: password.map(str::to_owned),
            dir,
        };
        s.spawn();
        s
    }

    /// A sentinel on a free port with `conf` (it rewrites its file, so each
    /// has its own).
    pub fn sentinel(conf_lines: &[String], password: Option<&str>) -> Server {
        let port = free_port();
        let dir = scratch_dir(port);
        let conf = dir.join("sentinel.conf");
        let mut text = format!("port {port}\nbind 127.0.0.1\ndir {}\n", dir.display());
        for line in conf_lines {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&conf, text).unwrap();
        let mut s = Server {
            process: Process::new("redis-server", [conf.as_os_str(), "--sentinel".as_ref()]),
            port,
            password: password.map(str::to_owned),
            dir,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let (port, password) = (self.port, self.password.clone());
        self.process.start(START_TIMEOUT, || {
            cli(port, password.as_deref(), &["PING"]).trim() == "PONG"
        });
    }

    /// The process id, while it runs (for signals such as SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Sends it a signal (SIGSTOP and SIGCONT to stall it).
    pub fn signal(&self, signal: i32) {
        self.process.signal(signal);
    }

    /// Whether it runs (it was not killed, or was restarted since).
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Every key (a test's Redis holds only that test's).
    pub fn keys(&self) -> Vec<String> {
        self.cli(&["--scan"]).lines().map(str::to_owned).collect()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against it; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, self.password.as_deref(), args)
    }

    /// Calls per command since the server started (or since `CONFIG
    /// RESETSTAT`), from `INFO commandstats`: the calls scripts make
    /// included, and this `INFO` too.
    pub fn command_calls(&self) -> HashMap<String, u64> {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let n = rest
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), n))
            })
            .collect()
    }

    /// The ids of its clients with tracking on (`CLIENT LIST`, flag `t`):
    /// each relay node's tracked connection.
    pub fn tracking_clients(&self) -> Vec<String> {
        self.cli(&["CLIENT", "LIST"])
            .lines()
            .filter(|line| {
                line.split(' ')
                    .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('t')))
            })
            .filter_map(|line| {
                let id = line.split(' ').find_map(|f| f.strip_prefix("id="))?;
                Some(id.to_owned())
            })
            .collect()
    }

    /// Runs `redis-cli` in the background (for `DEBUG SLEEP`).
    pub fn cli_background(&self, args: &[&str]) -> Child {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(p) = &self.password {
            cmd.args(["--no-auth-warning", "-a", p]);
        }
        cmd.args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-cli")
    }

    /// The `field:value` of `INFO <section>`.
    pub fn info(&self, section: &str, field: &str) -> Option<String> {
        let prefix = format!("{field}:");
        self.cli(&["INFO", section])
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_owned()))
    }

    /// SIGKILL: clients see their connections drop.
    pub fn kill(&mut self) {
        self.process.stop();
    }

    /// Starts it again, same port and arguments, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `redis-cli` against the server on `port`; returns stdout.
fn cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(p) = password {
        cmd.args(["--no-auth-warning", "-a", p]);
    }
    let out = cmd.args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn scratch_dir(port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dtcp-redis-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "dtcp-test";
/// How long the sentinels wait before they call a silent master down.
pub const DOWN_AFTER_MS: u64 = 1000;

/// A master, one replica and three sentinels, all with passwords.
#[derive(Debug)]
pub struct SentinelSet {
    /// The servers: `servers[0]` is the first master.
    pub servers: Vec<Server>,
    /// The three sentinels.
    pub sentinels: Vec<Server>,
}

/// Password of the Redis servers in [`SentinelSet`].
pub const REDIS_PASSWORD: &str = "redis-pw";
/// Password of the sentinels in [`SentinelSet`].
pub const SENTINEL_PASSWORD: &str = "sentinel-pw";

impl SentinelSet {
    /// A master, a replica and three sentinels agreed on them.
    pub fn start() -> SentinelSet {
        Self::start_with(DOWN_AFTER_MS, &[])
    }

    /// As [`SentinelSet::start`], with the sentinels' down-after time and
    /// more arguments for the servers.
    pub fn start_with(down_after_ms: u64, server_args: &[&str]) -> SentinelSet {
        let mut auth = vec![
            "--requirepass",
            REDIS_PASSWORD,
            "--masterauth",
            REDIS_PASSWORD,
        ];
        auth.extend(server_args);
        let master = Server::start_on(free_port(), &auth, Some(REDIS_PASSWORD));
        let mut replica_args = auth.clone();
        let master_port = master.port.to_string();
        replica_args.extend(["--replicaof", "127.0.0.1", &master_port]);
        let replica = Server::start_on(free_port(), &replica_args, Some(REDIS_PASSWORD));
        wait_until(START_TIMEOUT, "the replica to sync", || {
            replica.info("replication", "master_link_status").as_deref() == Some("up")
        });
        let conf = vec![
            format!("sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2", master.port),
            format!("sentinel auth-pass {MASTER_NAME} {REDIS_PASSWORD}"),
            format!("sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}"),
            format!("sentinel failover-timeout {MASTER_NAME} 10000"),
            format!("requirepass {SENTINEL_PASSWORD}"),
            format!("sentinel sentinel-pass {SENTINEL_PASSWORD}"),
        ];
        let sentinels: Vec<Server> = (0..3)
            .map(|_| Server::sentinel(&conf, Some(SENTINEL_PASSWORD)))
            .collect();
        let set = SentinelSet {
            servers: vec![master, replica],
            sentinels,
        };
        set.wait_settled();
        set
    }

    /// Until every sentinel knows the replica and the other two sentinels,
    /// so that a failover can be agreed on.
    pub fn wait_settled(&self) {
        for s in &self.sentinels {
            wait_until(START_TIMEOUT, "the sentinels to find each other", || {
                s.cli(&["SENTINEL", "CKQUORUM", MASTER_NAME])
                    .starts_with("OK")
                    && s.cli(&["SENTINEL", "SENTINELS", MASTER_NAME])
                        .lines()
                        .filter(|l| l.trim() == "name")
                        .count()
                        == 2
                    && s.cli(&["SENTINEL", "REPLICAS", MASTER_NAME])
                        .lines()
                        .any(|l| l.trim() == "name")
            });
        }
    }

    /// The port the first sentinel names as the master.
    pub fn master_port(&self) -> u16 {
        let out = self.sentinels[0].cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME]);
        out.lines()
            .nth(1)
            .unwrap_or("0")
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// The sentinels' `127.0.0.1:<port>` addresses.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(Server::addr).collect()
    }

    /// The server on `port`.
    pub fn server(&mut self, port: u16) -> &mut Server {
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .expect("a server of the set")
    }
}

/// A Redis Cluster on loopback: `masters` masters with `replicas` each.
#[derive(Debug)]
pub struct Cluster {
    /// Its servers, masters first as `redis-cli --cluster create` took them.
    pub nodes: Vec<Server>,
}

/// How long cluster nodes wait before they call a silent node failed.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1000;

impl Cluster {
    /// `masters` masters with `replicas` each, a short node timeout.
    pub fn start(masters: usize, replicas: usize) -> Cluster {
        Self::start_with(masters, replicas, CLUSTER_NODE_TIMEOUT_MS)
    }

    /// As [`Cluster::start`], with the nodes' `cluster-node-timeout` (and
    /// `DEBUG` allowed from loopback).
    pub fn start_with(masters: usize, replicas: usize, node_timeout_ms: u64) -> Cluster {
        let timeout = node_timeout_ms.to_string();
        let extra = [
            "--cluster-node-timeout",
            &timeout,
            "--enable-debug-command",
            "local",
        ];
        Self::start_args(masters, replicas, &extra)
    }

    /// `masters` masters with `replicas` each, every server started with
    /// `extra` arguments too (Redis's own defaults otherwise).
    pub fn start_args(masters: usize, replicas: usize, extra: &[&str]) -> Cluster {
        let nodes: Vec<Server> = (0..masters * (1 + replicas))
            .map(|_| {
                let port = free_port();
                let conf = format!("nodes-{port}.conf");
                let mut args = vec!["--cluster-enabled", "yes", "--cluster-config-file", &conf];
                args.extend(extra);
                Server::start_on(port, &args, None)
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(Server::addr).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Cluster { nodes };
        cluster.wait_ok();
        wait_until(START_TIMEOUT, "the replicas to sync", || {
            cluster
                .nodes
                .iter()
                .filter(|n| n.info("replication", "role").as_deref() == Some("slave"))
                .all(|n| n.info("replication", "master_link_status").as_deref() == Some("up"))
        });
        cluster
    }

    /// Until every live node says `cluster_state:ok`.
    pub fn wait_ok(&self) {
        wait_until(START_TIMEOUT, "the Redis Cluster to be ok", || {
            self.nodes
                .iter()
                .filter(|n| n.is_running())
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
    }

    /// Every key on every master.
    pub fn keys(&self) -> Vec<String> {
        self.nodes.iter().flat_map(Server::keys).collect()
    }

    /// The seeds' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Server::url).collect()
    }

    /// The index of the master serving `key`'s slot, as a live node sees it.
    pub fn master_of(&self, key: &str) -> usize {
        let live = self.nodes.iter().find(|n| n.is_running()).unwrap();
        let slot: u16 = live
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        for line in live.cli(&["CLUSTER", "NODES"]).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let port: u16 = f[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap();
            for range in &f[8..] {
                let (lo, hi) = match range.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap_or(u16::MAX), b.parse().unwrap_or(0)),
                    None => {
                        let s = range.parse().unwrap_or(u16::MAX);
                        (s, s)
                    }
                };
                if (lo..=hi).contains(&slot) {
                    return self.nodes.iter().position(|n| n.port == port).unwrap();
                }
            }
        }
        panic!("no master serves slot {slot}");
    }
}
