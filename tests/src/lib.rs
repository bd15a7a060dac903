//! The whole-system test harness: real `dtcp-relay` processes on loopback
//! (and, for the cluster, real `redis-server` processes), driven by real TCP
//! clients.
//!
//! Binaries are taken from the same target directory as the test itself, so
//! `cargo build --release --bins` must have run first (`scripts/test` does).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use dtcp_client::dtcp_wire::{Command as WireCommand, Triple, Verb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
pub mod xmpp;

/// How long a relay may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of one of the workspace's binaries, next to the running test's directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --release --bins`; scripts/test does it)",
        path.display()
    );
    path
}

/// Raises this process's open-file limit, for tests that hold thousands of sockets.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).expect("raising the open-file limit")
}

/// A running `dtcp-relay` process, killed when dropped.
#[derive(Debug)]
pub struct Relay {
    child: Child,
    /// The client listener.
    pub addr: SocketAddr,
    /// The metrics listener.
    pub metrics: SocketAddr,
    /// The forwarding plane listener (cluster mode).
    pub forward: Option<SocketAddr>,
    /// The node id it announced.
    pub node_id: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Relay {
    /// Starts a relay on loopback ports chosen by the kernel, with `args` added.
    pub fn start(args: &[&str]) -> Relay {
        let mut child = Command::new(bin("dtcp-relay"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting dtcp-relay");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "dtcp-relay listening"
                {
                    let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                    let _ = tx.send((
                        field("listen"),
                        field("metrics"),
                        field("forward"),
                        field("node_id"),
                    ));
                }
                eprintln!("relay {}: {line}", std::process::id());
                sink.lock().unwrap().push(line);
            }
        });
        let (listen, metrics, forward, node_id) = rx
            .recv_timeout(START_TIMEOUT)
            .unwrap_or_else(|_| panic!("relay did not start: {:?}", logs.lock().unwrap()));
        Relay {
            child,
            addr: listen.parse().expect("listen address"),
            metrics: metrics.parse().expect("metrics address"),
            forward: forward.parse().ok(),
            node_id,
            logs,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, in bytes.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Log lines so far (JSON objects).
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The `/metrics` page.
    pub async fn scrape(&self) -> String {
        http_get(self.metrics, "/metrics").await.1
    }

    /// Waits (up to 10 s) until `sample` reads `value`; panics with the last
    /// reading otherwise.
    pub async fn wait_for(&self, sample: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.metric(sample).await;
            if now == value {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sample} is {now}, not {value}, after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The value of one sample, e.g. `dtcp_pending_registrations` or
    /// `dtcp_errors_total{condition="conflict"}`; 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        sample_value(&self.scrape().await, sample)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds a sample in a Prometheus text page; 0 when absent.
pub fn sample_value(page: &str, sample: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A minimal HTTP/1.1 GET: status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect to metrics");
    let req = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let status = resp[9..12].parse().expect("status");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `cond` until it holds, or panics with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A triple unique to `name`.
pub fn triple(name: &str) -> Triple {
    Triple::new(
        format!("key-{name}"),
        format!("initiator@a.example/{name}"),
        "target@b.example/res",
    )
    .expect("valid triple")
}

/// Opens a raw connection and sends `bytes`.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("send");
    s
}

/// The command bytes for `verb` and `triple`.
pub fn command(verb: Verb, triple: &Triple) -> Vec<u8> {
    WireCommand::new(verb, triple.clone()).encode()
}

/// Reads everything until the relay closes (bounded by 10 s).
pub async fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("relay did not close")
        .expect("read");
    out
}

/// Reads exactly `n` bytes (bounded by 10 s).
pub async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut out))
        .await
        .expect("timed out reading")
        .expect("read");
    out
}

/// The `ERROR` reply with this condition, whatever its text.
pub fn is_error(reply: &[u8], condition: &str) -> bool {
    let prefix = format!("ERROR\0{condition}\0");
    reply.starts_with(prefix.as_bytes()) && reply.ends_with(b"\0")
}

/// A reproducible pseudo-random byte stream (xorshift64*), so that big
/// transfers can be checked without keeping them in memory.
#[derive(Debug, Clone)]
pub struct Pattern(u64);

impl Pattern {
    /// A stream seeded with `seed` (not 0).
    pub fn new(seed: u64) -> Self {
        Pattern(seed | 1)
    }

    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `total` bytes of `Pattern::new(seed)` then half-closes; returns
/// their SHA-256.
pub async fn send_pattern<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    total: u64,
) -> [u8; 32] {
    use sha2::Digest;
    let mut p = Pattern::new(seed);
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = total;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        w.write_all(&buf[..n]).await.expect("send");
        left -= n as u64;
    }
    w.shutdown().await.expect("shutdown");
    h.finalize().into()
}

/// Reads to EOF; returns the byte count and SHA-256.
pub async fn recv_digest<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> (u64, [u8; 32]) {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await.expect("recv");
        if n == 0 {
            return (total, h.finalize().into());
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

/// A free loopback TCP port (and, for Redis Cluster, its bus port +10000).
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A `redis-server` process of the test's own, on a free loopback port.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a standalone Redis with no persistence.
    pub fn start() -> RedisServer {
        Self::start_with(free_port(), &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("dtcp-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = RedisServer {
            child: None,
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server is needed for the cluster tests (scripts/test installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against it; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key (the test Redis holds only this cluster's).
    pub fn keys(&self) -> Vec<String> {
        self.cli(&["--scan"]).lines().map(str::to_owned).collect()
    }

    /// Stops the server (SIGKILL): clients see the connection drop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A three-master Redis Cluster on loopback.
#[derive(Debug)]
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three `--cluster-enabled` servers and joins them.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let port = free_port();
                let conf = format!("nodes-{port}.conf");
                RedisServer::start_with(
                    port,
                    &["--cluster-enabled", "yes", "--cluster-config-file", &conf],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "Redis Cluster did not become ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { nodes }
    }

    /// Every key on every master.
    pub fn keys(&self) -> Vec<String> {
        self.nodes.iter().flat_map(|n| n.keys()).collect()
    }
}

/// The cluster secret the tests' nodes share.
pub const SECRET: &str = "test-cluster-secret";

/// Starts a cluster node on `redis_urls` with the shared secret and `args`.
pub fn cluster_node(redis_urls: &[String], args: &[&str]) -> Relay {
    let mut all: Vec<&str> = vec!["--cluster-secret", SECRET];
    if !args.contains(&"--forward-listen") {
        all.extend(["--forward-listen", "127.0.0.1:0"]);
    }
    for url in redis_urls {
        all.extend(["--redis-url", url.as_str()]);
    }
    all.extend(args);
    Relay::start(&all)
}

/// Pairs `t` with its CREATE sent to `a` and its CONNECT to `b`; panics
/// with both results if either side fails.
pub async fn pair(a: SocketAddr, b: SocketAddr, t: &Triple) -> (TcpStream, TcpStream) {
    let i = tokio::spawn({
        let t = t.clone();
        async move { dtcp_client::Initiator::connect(a, &t).await }
    });
    let tg = dtcp_client::Target::connect(b, t).await;
    match (i.await.unwrap(), tg) {
        (Ok(i), Ok(tg)) => (i, tg),
        (i, tg) => panic!("pairing failed: initiator {i:?}, target {tg:?}"),
    }
}

/// Sends `size` bytes each way at once, every byte checked, to the end of both streams.
pub async fn exchange(i: TcpStream, tg: TcpStream, size: u64, seed: u64) {
    let (mut ir, mut iw) = i.into_split();
    let (mut tr, mut tw) = tg.into_split();
    let (a, b, got_t, got_i) = tokio::join!(
        send_pattern(&mut iw, seed, size),
        send_pattern(&mut tw, seed + 1, size),
        recv_digest(&mut tr),
        recv_digest(&mut ir),
    );
    assert_eq!(got_t, (size, a), "initiator -> target");
    assert_eq!(got_i, (size, b), "target -> initiator");
}
