//! Real `redis-server` processes on loopback for the store's tests: a single
//! server, a master with a replica and three sentinels, a Redis Cluster.
//! Each process is killed when dropped.

#![allow(dead_code)] // each test binary uses part of it

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dtcp_store::{NodeInfo, RedisConfig, RedisStore, Registered};
use dtcp_wire::RegistrationId;

/// How long a server or a deployment may take to come up.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A free loopback TCP port whose cluster bus port (+10000) is free too.
pub(crate) fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Polls `f` every 20 ms until it holds, for at most `limit`.
pub(crate) fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `redis-server` (or `redis-server --sentinel`) process.
#[derive(Debug)]
pub(crate) struct Server {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Password clients give (`-a`), if any.
    pub password: Option<String>,
    dir: PathBuf,
    args: Vec<String>,
}

impl Server {
    /// A Redis without persistence on a free port, with `extra` arguments.
    pub(crate) fn start(extra: &[&str]) -> Server {
        Self::start_on(free_port(), extra, None)
    }

    /// As [`Server::start`], on `port`, with `password` for the test's own
    /// `redis-cli` calls.
    pub(crate) fn start_on(port: u16, extra: &[&str], password: Option<&str>) -> Server {
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
            child: None,
            port,
            password: password.map(str::to_owned),
            dir,
            args,
        };
        s.spawn();
        s
    }

    /// A sentinel on a free port with `conf` (it rewrites its file, so each
    /// has its own).
    pub(crate) fn sentinel(conf_lines: &[String], password: Option<&str>) -> Server {
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
            child: None,
            port,
            password: password.map(str::to_owned),
            dir,
            args: vec![conf.to_str().unwrap().to_owned(), "--sentinel".into()],
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server is needed for the store tests (scripts/test installs it)");
        self.child = Some(child);
        wait_until(START_TIMEOUT, "redis-server to start", || {
            self.cli(&["PING"]).trim() == "PONG"
        });
    }

    /// `redis://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`.
    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against it; returns stdout.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(p) = &self.password {
            cmd.args(["--no-auth-warning", "-a", p]);
        }
        let out = cmd.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `redis-cli` in the background (for `DEBUG SLEEP`).
    pub(crate) fn cli_background(&self, args: &[&str]) -> Child {
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
    pub(crate) fn info(&self, section: &str, field: &str) -> Option<String> {
        let prefix = format!("{field}:");
        self.cli(&["INFO", section])
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_owned()))
    }

    /// SIGKILL: clients see their connections drop.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, same port and arguments, empty.
    pub(crate) fn restart(&mut self) {
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

fn scratch_dir(port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dtcp-store-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The name the sentinels monitor the master under.
pub(crate) const MASTER_NAME: &str = "dtcp-test";
/// How long the sentinels wait before they call a silent master down.
pub(crate) const DOWN_AFTER_MS: u64 = 1000;

/// A master, one replica and three sentinels, all with passwords.
#[derive(Debug)]
pub(crate) struct SentinelSet {
    /// The servers: `servers[0]` is the first master.
    pub servers: Vec<Server>,
    /// The three sentinels.
    pub sentinels: Vec<Server>,
}

/// Password of the Redis servers in [`SentinelSet`].
pub(crate) const REDIS_PASSWORD: &str = "redis-pw";
/// Password of the sentinels in [`SentinelSet`].
pub(crate) const SENTINEL_PASSWORD: &str = "sentinel-pw";

impl SentinelSet {
    pub(crate) fn start() -> SentinelSet {
        Self::start_with(DOWN_AFTER_MS, &[])
    }

    /// As [`SentinelSet::start`], with the sentinels' down-after time and
    /// more arguments for the servers.
    pub(crate) fn start_with(down_after_ms: u64, server_args: &[&str]) -> SentinelSet {
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
    pub(crate) fn wait_settled(&self) {
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
    pub(crate) fn master_port(&self) -> u16 {
        let out = self.sentinels[0].cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME]);
        out.lines()
            .nth(1)
            .unwrap_or("0")
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// The server on `port`.
    pub(crate) fn server(&mut self, port: u16) -> &mut Server {
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .expect("a server of the set")
    }

    /// A store configuration for this set.
    pub(crate) fn config(&self, prefix: &str) -> RedisConfig {
        RedisConfig {
            sentinel: Some(dtcp_store::SentinelConfig {
                master: MASTER_NAME.into(),
                sentinels: self.sentinels.iter().map(Server::addr).collect(),
                password: Some(SENTINEL_PASSWORD.into()),
            }),
            password: Some(REDIS_PASSWORD.into()),
            prefix: prefix.into(),
            ..RedisConfig::default()
        }
    }
}

/// A Redis Cluster on loopback: `masters` masters with `replicas` each.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub nodes: Vec<Server>,
}

/// How long cluster nodes wait before they call a silent node failed.
pub(crate) const CLUSTER_NODE_TIMEOUT_MS: u64 = 1000;

impl Cluster {
    pub(crate) fn start(masters: usize, replicas: usize) -> Cluster {
        Self::start_with(masters, replicas, CLUSTER_NODE_TIMEOUT_MS)
    }

    /// As [`Cluster::start`], with the nodes' `cluster-node-timeout`.
    pub(crate) fn start_with(masters: usize, replicas: usize, node_timeout_ms: u64) -> Cluster {
        let timeout = node_timeout_ms.to_string();
        let nodes: Vec<Server> = (0..masters * (1 + replicas))
            .map(|_| {
                let port = free_port();
                let conf = format!("nodes-{port}.conf");
                Server::start_on(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--cluster-node-timeout",
                        &timeout,
                        "--enable-debug-command",
                        "local",
                    ],
                    None,
                )
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
    pub(crate) fn wait_ok(&self) {
        wait_until(START_TIMEOUT, "the Redis Cluster to be ok", || {
            self.nodes
                .iter()
                .filter(|n| n.child.is_some())
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
    }

    /// The seeds' URLs.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Server::url).collect()
    }

    /// The index of the master serving `key`'s slot, as a live node sees it.
    pub(crate) fn master_of(&self, key: &str) -> usize {
        let live = self.nodes.iter().find(|n| n.child.is_some()).unwrap();
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

    /// A store configuration for this cluster.
    pub(crate) fn config(&self, prefix: &str) -> RedisConfig {
        RedisConfig {
            urls: self.urls(),
            prefix: prefix.into(),
            ..RedisConfig::default()
        }
    }
}

/// A node as the store sees it.
pub(crate) fn node(id: &str) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        forward_addr: format!("127.0.0.1:{}", 7000 + id.len()),
        seal: None,
    }
}

/// A distinct registration id.
pub(crate) fn reg(n: usize) -> RegistrationId {
    RegistrationId::of(
        "key",
        &format!("initiator{n}@a.example"),
        "target@b.example",
    )
}

/// A store on `config`, panicking if it cannot be made.
pub(crate) fn store(config: &RedisConfig) -> RedisStore {
    RedisStore::new(config).expect("store")
}

/// Registers fresh ids through `publisher` until `watcher` receives one of
/// them, for at most `limit`; returns how long it took.
pub(crate) async fn announcements_flow(
    publisher: &RedisStore,
    watcher: &mut tokio::sync::mpsc::Receiver<Registered>,
    first_id: usize,
    limit: Duration,
) -> Option<Duration> {
    use dtcp_store::Rendezvous;
    let started = Instant::now();
    let owner = node("publisher");
    let mut n = first_id;
    while started.elapsed() < limit {
        let id = reg(n);
        n += 1;
        let _ = publisher
            .register(&id, &owner, Duration::from_secs(60))
            .await;
        let wait = tokio::time::timeout(Duration::from_millis(200), async {
            while let Some(r) = watcher.recv().await {
                if r.id == id {
                    return true;
                }
            }
            false
        })
        .await;
        if wait == Ok(true) {
            return Some(started.elapsed());
        }
    }
    None
}
