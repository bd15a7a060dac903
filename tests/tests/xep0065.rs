//! XEP-0065 mode end to end (docs/PROTOCOL.md section 6): unmodified XMPP clients
//! (slixmpp, its own XEP-0065 plugin doing the Target side) move a file
//! through dtcp-relay nodes that a real Prosody or a real ejabberd reaches
//! as their component; curl as both SOCKS5 peers; a standby node taking the
//! component over.
//!
//! `bench_xep0065` (ignored; `bench/xep0065.sh` runs it) measures the same
//! transfer and an activation loop through dtcp-relay and through the XMPP
//! servers' own proxies.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dtcp_tests::ejabberd::{EJABBERD_PROXY65, Ejabberd};
use dtcp_tests::testkit::{Output, Process};
use dtcp_tests::xmpp::{COMPONENT, COMPONENT_SECRET, DOMAIN, Prosody, Slixmpp, XmppServer};
use dtcp_tests::{
    Haproxy, NodeOptions, RedisServer, Relay, eventually, exit_of, free_port, send_pattern,
};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::process::ChildStdout;

/// The file the transfer tests move: big enough to fill every buffer on the
/// way many times over, small enough for a second or two on loopback.
const FILE_SIZE: u64 = 64 << 20;
/// How long a 64 MiB transfer may take, with both clients in Python on a
/// busy machine (it takes about a second).
const TRANSFER_LIMIT: Duration = Duration::from_secs(60);
/// The seed of the files' pseudo-random bytes.
const PATTERN_SEED: u64 = 65;
/// How long a component link may take to come up.
const LINK_UP: Duration = Duration::from_secs(10);

/// The sample that reads 1 while a node's component link is connected.
const LINK_CONNECTED: &str = r#"dtcp_xmpp_link{state="connected"}"#;
/// The sample that reads 1 while a node waits as a hot standby.
const LINK_STANDBY: &str = r#"dtcp_xmpp_link{state="standby"}"#;

/// A scratch directory of the test's own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "dtcp-xep0065-{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The component secret, in a file as an operator gives it.
    fn secret_file(&self) -> PathBuf {
        let path = self.path("xmpp-secret");
        std::fs::write(&path, format!("{COMPONENT_SECRET}\n")).unwrap();
        path
    }

    /// A file of `size` pseudo-random bytes; returns its path and SHA-256.
    async fn file(&self, name: &str, size: u64) -> (PathBuf, String) {
        let path = self.path(name);
        let mut f = tokio::fs::File::create(&path).await.unwrap();
        let digest = send_pattern(&mut f, PATTERN_SEED, size).await;
        (path, hex(&digest))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A node that `server` reaches as [`COMPONENT`], its client port on
/// `listen`, advertising `advertise` in the streamhost answer.
fn component_node(
    options: NodeOptions,
    server: &impl XmppServer,
    secret: &Path,
    listen: SocketAddr,
    advertise: SocketAddr,
) -> Relay {
    options
        .listen(listen)
        .arg("--xmpp-component", COMPONENT)
        .arg("--xmpp-server", server.component_addr())
        .arg("--xmpp-secret-file", secret.display())
        .arg("--socks5-advertise", advertise)
        .arg("--xmpp-allow-domain", DOMAIN)
        .start()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// What one transfer showed.
#[derive(Debug)]
struct Transferred {
    /// The streamhost the sender was told to use.
    streamhost: Value,
    /// The SHA-256 of what the receiver got.
    sha256: String,
    /// From the activation's answer to the receiver's last byte.
    seconds: f64,
}

/// Sends `file` (`size` bytes) from romeo to juliet through the proxy
/// `proxy`, both unmodified slixmpp clients. With `hold`, the sender keeps
/// its bytestream open until the receiver has every byte (and panics if
/// the proxy holds any back until the sender leaves, as Prosody's own does);
/// without, the sender closes once it has written everything.
async fn transfer(
    server: &impl XmppServer,
    proxy: &str,
    file: &Path,
    size: u64,
    hold: bool,
    out: &Path,
) -> Transferred {
    let mut receiver = Slixmpp::script(
        "transfer.py",
        server,
        "juliet",
        "recv",
        json!({"op": "receive", "size": size, "out": out}),
    );
    let ready = receiver.next().await;
    assert_eq!(ready["event"], "ready", "{ready}");
    let mut sender = Slixmpp::script(
        "transfer.py",
        server,
        "romeo",
        "send",
        json!({"op": "send", "to": ready["jid"], "file": file, "proxy": proxy, "hold": hold}),
    );
    let streamhost = sender.next().await;
    assert_eq!(streamhost["event"], "streamhost", "{streamhost}");
    assert!(streamhost["host"].is_string(), "{streamhost}");
    let activated = sender.next().await;
    assert_eq!(activated["type"], "result", "activation: {activated}");
    let stream = receiver.next().await;
    assert_eq!(stream["event"], "stream", "{stream}");

    let complete = if hold {
        // The sender writes everything and waits: every byte must reach the
        // receiver while the sender is still connected.
        let complete = tokio::time::timeout(TRANSFER_LIMIT, receiver.next())
            .await
            .expect("the receiver did not get every byte while the sender was still connected");
        let sent = sender.next().await;
        assert_eq!(sent["event"], "sent", "{sent}");
        assert_eq!(sent["bytes"], size, "{sent}");
        sender.send_line("close").await;
        assert_eq!(sender.next().await["event"], "closed");
        complete
    } else {
        let sent = sender.next_within(TRANSFER_LIMIT).await;
        assert_eq!(sent["bytes"], size, "{sent}");
        assert_eq!(sender.next().await["event"], "closed");
        receiver.next_within(TRANSFER_LIMIT).await
    };
    assert_eq!(complete["event"], "complete", "{complete}");
    let closed = receiver.next().await;
    assert_eq!(closed["event"], "closed", "{closed}");
    assert_eq!(closed["received"], size, "nothing after the file: {closed}");
    sender.finish().await;
    receiver.finish().await;
    let written = std::fs::metadata(out)
        .expect("the receiver wrote the file")
        .len();
    assert_eq!(written, size);
    Transferred {
        streamhost,
        sha256: complete["sha256"].as_str().unwrap().to_owned(),
        seconds: complete["t"].as_f64().unwrap() - activated["t"].as_f64().unwrap(),
    }
}

#[tokio::test]
async fn a_file_moves_between_two_xmpp_clients_through_one_node_behind_prosody() {
    let scratch = Scratch::new("one");
    let prosody = Prosody::start(&["romeo", "juliet"]);
    let port = loopback(free_port());
    let relay = component_node(
        NodeOptions::new(),
        &prosody,
        &scratch.secret_file(),
        port,
        port,
    );
    relay.wait_for(LINK_CONNECTED, 1.0).await;
    let (file, sha256) = scratch.file("file", FILE_SIZE).await;

    let got = transfer(
        &prosody,
        COMPONENT,
        &file,
        FILE_SIZE,
        true,
        &scratch.path("out"),
    )
    .await;
    assert_eq!(
        got.streamhost,
        json!({"event": "streamhost", "jid": COMPONENT, "host": "127.0.0.1",
               "port": port.port(), "t": got.streamhost["t"]})
    );
    assert_eq!(got.sha256, sha256);
    eprintln!(
        "64 MiB through one node in {:.2} s ({:.0} MB/s, Python on both ends)",
        got.seconds,
        FILE_SIZE as f64 / got.seconds / 1e6
    );
}

#[tokio::test]
async fn a_file_moves_through_three_nodes_behind_haproxy_with_the_component_on_the_third() {
    let scratch = Scratch::new("three");
    let prosody = Prosody::start(&["romeo", "juliet"]);
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let first = NodeOptions::cluster(&urls).accept_socks5().start();
    let second = NodeOptions::cluster(&urls).accept_socks5().start();
    let third_port = loopback(free_port());
    // Round robin, strictly in turn: the Target's and the requester's
    // connections of one transfer reach two different nodes.
    let balancer = Haproxy::round_robin(&[first.addr, second.addr, third_port]);
    let third = component_node(
        NodeOptions::cluster(&urls),
        &prosody,
        &scratch.secret_file(),
        third_port,
        balancer.addr,
    );
    third.wait_for(LINK_CONNECTED, 1.0).await;
    let (file, sha256) = scratch.file("file", FILE_SIZE).await;
    // HAProxy's own start-up probe reached a node: count from here.
    let mut before = Vec::new();
    for node in [&first, &second, &third] {
        before.push(node.metric(ACCEPTED).await);
    }

    let got = transfer(
        &prosody,
        COMPONENT,
        &file,
        FILE_SIZE,
        true,
        &scratch.path("out"),
    )
    .await;
    assert_eq!(got.streamhost["port"], balancer.addr.port(), "{got:?}");
    assert_eq!(got.sha256, sha256);
    eprintln!(
        "64 MiB through three nodes behind HAProxy in {:.2} s",
        got.seconds
    );
    // Each of the two connections reached a different node: two of the
    // three nodes saw one SOCKS5 client each.
    let mut socks5 = Vec::new();
    for (node, before) in [&first, &second, &third].into_iter().zip(before) {
        socks5.push(node.metric(ACCEPTED).await - before);
    }
    assert_eq!(socks5.iter().sum::<f64>(), 2.0, "{socks5:?}");
    assert!(socks5.iter().all(|n| *n <= 1.0), "{socks5:?}");
    let _ = (first, second, third);
}

/// The sample counting the client connections a node accepted (HAProxy
/// runs no health checks here: every one is a SOCKS5 client).
const ACCEPTED: &str = "dtcp_connections_accepted_total";

/// A `curl --socks5-hostname ... telnet://HASH:0`: curl as a plain SOCKS5
/// client, sending a file to the peer and the peer's bytes to its stdout
/// until the peer closes.
struct Curl {
    process: Process,
    stdout: ChildStdout,
}

impl Curl {
    /// Connects through the SOCKS5 proxy at `proxy` with the bytestream
    /// hash `hash`, sending the file `send` at once, and returns once the
    /// proxy has granted the request.
    ///
    /// The file is curl's stdin: with a pipe there, curl 7.88's telnet
    /// reads the socket only when stdin has something too; at the end of a
    /// file it reads the socket until the peer closes.
    async fn connect(proxy: SocketAddr, hash: &str, send: &Path) -> Curl {
        let proxy = proxy.to_string();
        let url = format!("telnet://{hash}:0");
        let mut process = Process::new(
            "curl",
            [
                "--silent",
                "--show-error",
                "--verbose",
                "--no-buffer",
                "--socks5-hostname",
                &proxy,
                &url,
            ],
        )
        .stdin_file(send)
        .stdout(Output::Piped)
        // Read a line at a time, so that its chatter never blocks it.
        .stderr(Output::Lines);
        process.spawn();
        let stdout = process.take_stdout().expect("piped stdout");
        let lines = process.lines();
        eventually(
            Duration::from_secs(10),
            "curl's SOCKS5 request granted",
            || async { lines.contains("SOCKS5 request granted") },
        )
        .await;
        Curl {
            process,
            stdout: ChildStdout::from_std(stdout).expect("async stdout"),
        }
    }

    /// Asserts that nothing reaches curl for a moment.
    async fn silent(&mut self) {
        let mut buf = [0u8; 64];
        let read =
            tokio::time::timeout(Duration::from_millis(300), self.stdout.read(&mut buf)).await;
        assert!(read.is_err(), "bytes before the activation: {read:?}");
    }

    /// Reads curl's stdout until it holds `want`; panics after 10 s.
    async fn read_until(&mut self, want: &str) -> String {
        let stdout = &mut self.stdout;
        let mut got = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains(want) {
                let n = stdout.read(&mut buf).await.unwrap();
                if n == 0 {
                    return false;
                }
                got.extend_from_slice(&buf[..n]);
            }
            true
        })
        .await;
        let got = String::from_utf8_lossy(&got).into_owned();
        assert_eq!(found, Ok(true), "curl got {got:?}, not {want:?}");
        got
    }
}

#[tokio::test]
async fn curl_is_both_socks5_peers_activated_over_the_component() {
    let scratch = Scratch::new("curl");
    let prosody = Prosody::start(&["romeo"]);
    let port = loopback(free_port());
    let relay = component_node(
        NodeOptions::new(),
        &prosody,
        &scratch.secret_file(),
        port,
        port,
    );
    relay.wait_for(LINK_CONNECTED, 1.0).await;

    // An XMPP client of the test's that only activates: it prints the hash
    // for (sid, its own JID, the target) and waits for the word.
    let target = "juliet@localhost/curl";
    let mut activator = Slixmpp::script(
        "transfer.py",
        &prosody,
        "romeo",
        "curl",
        json!({"op": "activate", "proxy": COMPONENT, "sid": "curl-sid", "target": target}),
    );
    let hash = activator.next().await["hash"].as_str().unwrap().to_owned();

    // Each curl sends its file as soon as its request is granted: before
    // the activation, which holds the bytes back without losing them.
    let (to_requester, to_target) = (scratch.path("to-requester"), scratch.path("to-target"));
    std::fs::write(&to_requester, "from the target\n").unwrap();
    std::fs::write(&to_target, "early from the requester\n").unwrap();
    let mut target_side = Curl::connect(port, &hash, &to_requester).await;
    let mut requester = Curl::connect(port, &hash, &to_target).await;
    target_side.silent().await;
    requester.silent().await;
    activator.send_line("activate").await;
    assert_eq!(activator.next().await["type"], "result");
    activator.finish().await;
    target_side.read_until("early from the requester\n").await;
    requester.read_until("from the target\n").await;

    // The requester goes: the relay ends the target's side, and curl exits.
    requester.process.stop();
    let status = exit_of(&mut target_side.process, Duration::from_secs(10))
        .await
        .expect("the target's curl did not see the end of the bytestream");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_standby_node_takes_the_component_over_and_serves_the_next_transfer() {
    let scratch = Scratch::new("standby");
    let prosody = Prosody::start(&["romeo", "juliet"]);
    let secret = scratch.secret_file();
    let (a_port, b_port) = (loopback(free_port()), loopback(free_port()));
    let mut a = component_node(NodeOptions::new(), &prosody, &secret, a_port, a_port);
    a.wait_for(LINK_CONNECTED, 1.0).await;
    let b = component_node(NodeOptions::new(), &prosody, &secret, b_port, b_port);
    b.wait_for(LINK_STANDBY, 1.0).await;
    assert_eq!(b.metric(LINK_CONNECTED).await, 0.0);

    // SIGKILL: Prosody sees the component's connection drop at once.
    let killed = Instant::now();
    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(5)).expect("the node died");
    let b = &b;
    let left = LINK_UP.saturating_sub(killed.elapsed());
    eventually(left, "the standby took over", || async move {
        b.metric(LINK_CONNECTED).await == 1.0
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!("the standby took the component over {takeover:?} after the kill");
    // The standby retries about every second, plus Prosody's own cleanup.
    assert!(
        takeover < Duration::from_secs(5),
        "takeover took {takeover:?}"
    );

    let size = 1 << 20;
    let (file, sha256) = scratch.file("file", size).await;
    let got = transfer(&prosody, COMPONENT, &file, size, true, &scratch.path("out")).await;
    assert_eq!(
        got.streamhost["port"],
        b_port.port(),
        "the survivor answers: {got:?}"
    );
    assert_eq!(got.sha256, sha256);
}

#[tokio::test]
async fn behind_ejabberd_two_nodes_serve_the_component_at_once_and_move_a_file() {
    let scratch = Scratch::new("ejabberd");
    let ejabberd = Ejabberd::start();
    let secret = scratch.secret_file();
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let ports = [loopback(free_port()), loopback(free_port())];
    let balancer = Haproxy::round_robin(&ports);
    // ejabberd's `ejabberd_service` takes several connections for one
    // component: both nodes are connected, none waits as a standby.
    let nodes = ports.map(|port| {
        component_node(
            NodeOptions::cluster(&urls),
            &ejabberd,
            &secret,
            port,
            balancer.addr,
        )
    });
    for node in &nodes {
        node.wait_for(LINK_CONNECTED, 1.0).await;
    }
    let (file, sha256) = scratch.file("file", FILE_SIZE).await;
    let got = transfer(
        &ejabberd,
        COMPONENT,
        &file,
        FILE_SIZE,
        true,
        &scratch.path("out"),
    )
    .await;
    assert_eq!(got.streamhost["port"], balancer.addr.port(), "{got:?}");
    assert_eq!(got.sha256, sha256);
    for node in &nodes {
        assert_eq!(node.metric(LINK_CONNECTED).await, 1.0);
    }
    eprintln!(
        "64 MiB through two nodes behind ejabberd in {:.2} s",
        got.seconds
    );
}

/// One run of an activation loop: `count` activations over one XMPP
/// session, `parallel` at a time, each with two raw SOCKS5 connections and
/// one byte through (transfer.py's `activations`).
async fn activations(
    server: &impl XmppServer,
    proxy: &str,
    socks5: SocketAddr,
    count: u64,
    parallel: u64,
) -> Value {
    let mut c = Slixmpp::script(
        "transfer.py",
        server,
        "romeo",
        "activations",
        json!({"op": "activations", "proxy": proxy, "socks5": socks5.to_string(),
               "count": count, "parallel": parallel}),
    );
    let got = c.next_within(Duration::from_secs(600)).await;
    c.finish().await;
    assert_eq!(got["failed"], 0, "{got}");
    got
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().expect(name))
}

/// What the benchmark moves and how many activations it makes.
struct Workload {
    file: PathBuf,
    size: u64,
    sha256: String,
    count: u64,
    parallel: u64,
    out: PathBuf,
}

/// Measures one proxy: the transfer, then the activation loop; prints one
/// JSON line for each.
async fn measure(
    server: &impl XmppServer,
    name: &str,
    proxy: &str,
    socks5: SocketAddr,
    w: &Workload,
) {
    // Without holding: Prosody's own proxy keeps the last bytes until the
    // sender closes, so every sender closes once it has written.
    let got = transfer(server, proxy, &w.file, w.size, false, &w.out).await;
    assert_eq!(got.sha256, w.sha256, "{name}");
    println!(
        "{}",
        json!({"proxy": name, "bytes": w.size, "seconds": got.seconds,
               "mb_per_s": w.size as f64 / got.seconds / 1e6})
    );
    let _ = std::fs::remove_file(&w.out);
    let got = activations(server, proxy, socks5, w.count, w.parallel).await;
    println!(
        "{}",
        json!({"proxy": name, "activations": w.count, "parallel": w.parallel,
               "seconds": got["seconds"], "per_second": got["per_second"]})
    );
}

/// The benchmark (`bench/xep0065.sh`): a `XEP0065_BENCH_BYTES` (1 GiB)
/// transfer and `XEP0065_BENCH_ACTIVATIONS` (5000) activations,
/// `XEP0065_BENCH_PARALLEL` (16) at a time, through each proxy in turn:
/// behind Prosody, dtcp-relay (one node, then three behind HAProxy) and
/// Prosody's own `mod_proxy65`; behind ejabberd, dtcp-relay (one node) and
/// ejabberd's own `mod_proxy65`. One JSON line per measurement on stdout.
#[tokio::test]
#[ignore = "a benchmark: bench/xep0065.sh runs it"]
async fn bench_xep0065() {
    let size = env_or("XEP0065_BENCH_BYTES", 1 << 30);
    let scratch = Scratch::new("bench");
    let (file, sha256) = scratch.file("file", size).await;
    let w = Workload {
        file,
        size,
        sha256,
        count: env_or("XEP0065_BENCH_ACTIVATIONS", 5000),
        parallel: env_or("XEP0065_BENCH_PARALLEL", 16),
        out: scratch.path("out"),
    };
    let secret = scratch.secret_file();
    {
        let prosody = Prosody::with_proxy65(&["romeo", "juliet"]);
        let port = loopback(free_port());
        let relay = component_node(NodeOptions::new(), &prosody, &secret, port, port);
        relay.wait_for(LINK_CONNECTED, 1.0).await;
        measure(
            &prosody,
            "dtcp-relay (1 node), Prosody",
            COMPONENT,
            port,
            &w,
        )
        .await;
        drop(relay);

        let redis = RedisServer::start();
        let urls = [redis.url()];
        let first = NodeOptions::cluster(&urls).accept_socks5().start();
        let second = NodeOptions::cluster(&urls).accept_socks5().start();
        let third_port = loopback(free_port());
        let balancer = Haproxy::round_robin(&[first.addr, second.addr, third_port]);
        let third = component_node(
            NodeOptions::cluster(&urls),
            &prosody,
            &secret,
            third_port,
            balancer.addr,
        );
        third.wait_for(LINK_CONNECTED, 1.0).await;
        let name = "dtcp-relay (3 nodes, HAProxy), Prosody";
        measure(&prosody, name, COMPONENT, balancer.addr, &w).await;
        drop((first, second, third));

        let proxy65 = loopback(prosody.proxy65_port.unwrap());
        let name = "Prosody mod_proxy65";
        measure(
            &prosody,
            name,
            dtcp_tests::xmpp::PROSODY_PROXY65,
            proxy65,
            &w,
        )
        .await;
    }
    let ejabberd = Ejabberd::start();
    let port = loopback(free_port());
    let relay = component_node(NodeOptions::new(), &ejabberd, &secret, port, port);
    relay.wait_for(LINK_CONNECTED, 1.0).await;
    measure(
        &ejabberd,
        "dtcp-relay (1 node), ejabberd",
        COMPONENT,
        port,
        &w,
    )
    .await;
    drop(relay);
    let proxy65 = loopback(ejabberd.proxy65_port);
    measure(
        &ejabberd,
        "ejabberd mod_proxy65",
        EJABBERD_PROXY65,
        proxy65,
        &w,
    )
    .await;
}
