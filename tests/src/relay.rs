//! `dtcp-relay` nodes as real processes: started with [`NodeOptions`],
//! read through their logs and metrics, signalled and killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use dtcp_testkit::{Output, Process};

use crate::metrics::{http_get, sample_value};

/// How long a relay may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Relay::wait_for`] waits for a metric.
const METRIC_WAIT: Duration = Duration::from_secs(10);
/// How often [`Relay::wait_for`] looks again.
const POLL: Duration = Duration::from_millis(25);

/// The per-address shares lifted on a test's node unless it sets them, or
/// asks for the relay's own with [`NodeOptions::relay_defaults`]: most
/// tests play every client (hundreds of pairs, thousands of connections,
/// in bursts) from 127.0.0.1, which the relay's defaults would take for
/// one client over its share. The attack suite keeps the defaults.
const ONE_ADDRESS_CROWD: [(&str, &str); 3] = [
    ("--max-connections-per-ip", "1000000"),
    ("--max-sessions-per-ip", "1000000"),
    ("--max-connection-rate-per-ip", "0"),
];

/// The cluster secret the tests' nodes share.
pub const SECRET: &str = "test-cluster-secret";

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
    process: Process,
    /// The client listener.
    pub addr: SocketAddr,
    /// The metrics listener.
    pub metrics: SocketAddr,
    /// The forwarding plane listener (cluster mode).
    pub forward: Option<SocketAddr>,
    /// The node id it announced.
    pub node_id: String,
}

/// What a node's `dtcp-relay listening` log line announces.
#[derive(Debug)]
struct Listening {
    addr: SocketAddr,
    metrics: SocketAddr,
    forward: Option<SocketAddr>,
    node_id: String,
}

impl Listening {
    /// The announcement, if `line` is it.
    fn parse(line: &str) -> Option<Listening> {
        let v = serde_json::from_str::<serde_json::Value>(line).ok()?;
        if v["message"] != "dtcp-relay listening" {
            return None;
        }
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        Some(Listening {
            addr: field("listen").parse().expect("listen address"),
            metrics: field("metrics").parse().expect("metrics address"),
            forward: field("forward").parse().ok(),
            node_id: field("node_id"),
        })
    }
}

impl Relay {
    /// Starts a relay on loopback ports chosen by the kernel, with `args`
    /// added. [`NodeOptions`] says the same with names.
    pub fn start(args: &[&str]) -> Relay {
        Relay::spawn(bin("dtcp-relay"), args, true, None)
    }

    /// `one_address_crowd`: the shares of one client address are lifted
    /// (see [`ONE_ADDRESS_CROWD`]) unless the caller sets them.
    ///
    /// `open_files`: the process's open-file limit (soft and hard), for
    /// tests of what a node does when descriptors run out.
    ///
    /// `binary`: the relay's executable (this workspace's, or another
    /// release's).
    fn spawn<S: AsRef<std::ffi::OsStr>>(
        binary: PathBuf,
        args: &[S],
        one_address_crowd: bool,
        open_files: Option<u64>,
    ) -> Relay {
        // Kernel-chosen ports unless the caller named its own (a node
        // started again where its predecessor listened): the relay takes
        // each flag once.
        let given = |flag: &str| args.iter().any(|a| a.as_ref() == flag);
        let mut defaults = Vec::new();
        for flag in ["--listen", "--metrics-listen"] {
            if !given(flag) {
                defaults.extend([flag, "127.0.0.1:0"]);
            }
        }
        if one_address_crowd {
            for (flag, value) in ONE_ADDRESS_CROWD {
                if !given(flag) {
                    defaults.extend([flag, value]);
                }
            }
        }
        let all = defaults
            .iter()
            .map(|a| a.as_ref())
            .chain(["--log-format".as_ref(), "json".as_ref()])
            .chain(args.iter().map(AsRef::as_ref));
        let mut process = Process::new(binary, all)
            .name("relay")
            .env("RUST_LOG", "info")
            .stderr(Output::Lines);
        if let Some(limit) = open_files {
            process = process.open_files(limit);
        }
        let listening = start(&mut process);
        Relay {
            process,
            addr: listening.addr,
            metrics: listening.metrics,
            forward: listening.forward,
            node_id: listening.node_id,
        }
    }

    /// Kills the node (SIGKILL: its clients see their connections reset)
    /// and reaps it.
    pub fn kill(&mut self) {
        self.process.stop();
    }

    /// Starts the node again with the same flags (killing it first if it
    /// still runs); its addresses and node id are the new process's (the
    /// same addresses if the flags named them).
    pub fn restart(&mut self) {
        let listening = start(&mut self.process);
        self.addr = listening.addr;
        self.metrics = listening.metrics;
        self.forward = listening.forward;
        self.node_id = listening.node_id;
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid().expect("the relay runs")
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
        self.process.signal(sig);
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(limit)
    }

    /// Log lines so far (JSON objects).
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.process
            .lines()
            .all()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The `/metrics` page.
    pub async fn scrape(&self) -> String {
        http_get(self.metrics, "/metrics").await.1
    }

    /// Waits (up to `METRIC_WAIT`, 10 s) until `sample` reads `value`; panics with the last
    /// reading otherwise.
    pub async fn wait_for(&self, sample: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + METRIC_WAIT;
        loop {
            let now = self.metric(sample).await;
            if now == value {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sample} is {now}, not {value}, after {METRIC_WAIT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The value of one sample, e.g. `dtcp_pending_registrations` or
    /// `dtcp_errors_total{condition="conflict"}`; 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        sample_value(&self.scrape().await, sample)
    }

    /// On the node of the CREATEs: waits until it counts `sessions`
    /// forwarded sessions on lanes, and asserts that none went on the
    /// Bridge. A lane dial that fails falls back to the Bridge unseen by
    /// the clients, so a test of forwarded sessions that does not check
    /// this would pass with lanes broken.
    pub async fn wait_on_lanes(&self, sessions: f64) {
        self.wait_for("dtcp_forwarded_sessions_total{via=\"lane\"}", sessions)
            .await;
        assert_eq!(
            self.metric("dtcp_forwarded_sessions_total{via=\"bridge\"}")
                .await,
            0.0,
            "a forwarded session fell back to the Bridge"
        );
    }
}

/// Starts (or starts again) a node's process and waits for it to announce
/// its listeners.
fn start(process: &mut Process) -> Listening {
    let lines = process.lines();
    process.start(START_TIMEOUT, || lines.find_map(Listening::parse).is_some());
    lines.find_map(Listening::parse).expect("announced")
}

/// How to start a node: its flags by name, on top of loopback listeners on
/// kernel-chosen ports and JSON logs.
///
/// ```no_run
/// # use dtcp_tests::NodeOptions;
/// let relay = NodeOptions::new().connect_grace(0.3).pending_ttl(0.5).start();
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct NodeOptions {
    args: Vec<String>,
    /// Keep the relay's own per-address shares (see [`ONE_ADDRESS_CROWD`]).
    relay_defaults: bool,
    /// The process's open-file limit, if the test sets one.
    open_files: Option<u64>,
    /// Another relay executable than this workspace's (another release's).
    binary: Option<PathBuf>,
}

impl NodeOptions {
    /// A lone node with the relay's defaults.
    pub fn new() -> Self {
        NodeOptions::default()
    }

    /// A cluster node on `redis_urls`, with the tests' shared [`SECRET`] and
    /// its forwarding plane on a kernel-chosen loopback port.
    pub fn cluster(redis_urls: &[String]) -> Self {
        let mut options = NodeOptions::new().arg("--cluster-secret", SECRET);
        for url in redis_urls {
            options = options.arg("--redis-url", url);
        }
        options
    }

    /// `--pending-ttl`, in seconds.
    pub fn pending_ttl(self, secs: f64) -> Self {
        self.arg("--pending-ttl", secs)
    }

    /// `--connect-grace`, in seconds.
    pub fn connect_grace(self, secs: f64) -> Self {
        self.arg("--connect-grace", secs)
    }

    /// `--handshake-timeout`, in seconds.
    pub fn handshake_timeout(self, secs: f64) -> Self {
        self.arg("--handshake-timeout", secs)
    }

    /// `--idle-timeout`, in seconds.
    pub fn idle_timeout(self, secs: f64) -> Self {
        self.arg("--idle-timeout", secs)
    }

    /// `--drain-timeout`, in seconds.
    pub fn drain_timeout(self, secs: f64) -> Self {
        self.arg("--drain-timeout", secs)
    }

    /// `--max-connections`.
    pub fn max_connections(self, n: usize) -> Self {
        self.arg("--max-connections", n)
    }

    /// `--max-pending-per-ip`.
    pub fn max_pending_per_ip(self, n: usize) -> Self {
        self.arg("--max-pending-per-ip", n)
    }

    /// `--max-connections-per-ip`.
    pub fn max_connections_per_ip(self, n: u32) -> Self {
        self.arg("--max-connections-per-ip", n)
    }

    /// `--max-sessions-per-ip`.
    pub fn max_sessions_per_ip(self, n: u32) -> Self {
        self.arg("--max-sessions-per-ip", n)
    }

    /// `--max-connection-rate-per-ip`, in connections a second (0: none).
    pub fn max_connection_rate_per_ip(self, per_second: u32) -> Self {
        self.arg("--max-connection-rate-per-ip", format!("{per_second}/s"))
    }

    /// `--ipv6-prefix-len`.
    pub fn ipv6_prefix_len(self, bits: u8) -> Self {
        self.arg("--ipv6-prefix-len", bits)
    }

    /// The relay's own per-address shares, as on the open internet, for
    /// the flags not set otherwise: a node under attack from one address.
    /// (Without it, a test's node lifts them: its clients all share 127.0.0.1.)
    pub fn relay_defaults(mut self) -> Self {
        self.relay_defaults = true;
        self
    }

    /// `--max-command-len`.
    pub fn max_command_len(self, n: usize) -> Self {
        self.arg("--max-command-len", n)
    }

    /// `--allow-domain` (repeatable).
    pub fn allow_domain(self, domain: &str) -> Self {
        self.arg("--allow-domain", domain)
    }

    /// `--accept-socks5`: a cluster node without the XMPP component that
    /// carries SOCKS5 connections for a component on another node.
    pub fn accept_socks5(self) -> Self {
        self.flag("--accept-socks5")
    }

    /// `--socks5-activation-timeout`, in seconds.
    pub fn socks5_activation_timeout(self, secs: f64) -> Self {
        self.arg("--socks5-activation-timeout", secs)
    }

    /// `--listen`: the client listener, instead of a kernel-chosen port.
    pub fn listen(self, addr: SocketAddr) -> Self {
        self.arg("--listen", addr)
    }

    /// `--metrics-listen`: the metrics listener, instead of a kernel-chosen port.
    pub fn metrics_listen(self, addr: SocketAddr) -> Self {
        self.arg("--metrics-listen", addr)
    }

    /// `--forward-listen`: where the forwarding plane listens (cluster).
    pub fn forward_listen(self, addr: &str) -> Self {
        self.arg("--forward-listen", addr)
    }

    /// Any other flag with its value.
    pub fn arg(mut self, flag: &str, value: impl std::fmt::Display) -> Self {
        self.args.push(flag.to_owned());
        self.args.push(value.to_string());
        self
    }

    /// Starts the process with this open-file limit (soft and hard), so that
    /// a test can make it run out of descriptors.
    pub fn open_files(mut self, limit: u64) -> Self {
        self.open_files = Some(limit);
        self
    }

    /// Any other flag that takes no value.
    pub fn flag(mut self, flag: &str) -> Self {
        self.args.push(flag.to_owned());
        self
    }

    /// Starts the node.
    pub fn start(self) -> Relay {
        let mut args = self.args;
        let clustered = args.iter().any(|a| a == "--redis-url");
        if clustered && !args.iter().any(|a| a == "--forward-listen") {
            args.extend(["--forward-listen".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        let binary = self.binary.unwrap_or_else(|| bin("dtcp-relay"));
        Relay::spawn(binary, &args, !self.relay_defaults, self.open_files)
    }

    /// Runs `binary` rather than this workspace's relay: another release,
    /// built from git, for an upgrade run by hand. It must take the flags
    /// the test gives.
    pub fn binary(mut self, binary: PathBuf) -> Self {
        self.binary = Some(binary);
        self
    }
}

/// Starts a cluster node on `redis_urls` with the shared secret and `args`
/// (the shorthand of [`NodeOptions::cluster`] for a list of flags).
pub fn cluster_node(redis_urls: &[String], args: &[&str]) -> Relay {
    let mut options = NodeOptions::cluster(redis_urls);
    options.args.extend(args.iter().map(|a| a.to_string()));
    options.start()
}
