//! A chaos run: three real nodes and one real `redis-server` on loopback,
//! a steady load of pairs with checked transfers both ways (`CREATE` on a
//! random node, `CONNECT` on a random node, a few hundred KiB each way
//! verified by SHA-256), while a fault injector SIGKILLs, SIGSTOPs (and
//! SIGCONTs) and restarts nodes and Redis at random.
//!
//! Checked at the end, each an assertion:
//!
//! - every transfer (one direction of a session) arrived complete and
//!   verified at its receiver, or its receiver saw a reset or an `ERROR`
//!   reply: never a clean EOF with bytes missing, the truncation a receiver
//!   that trusts FIN would keep;
//! - a session that did not complete both ways left each of its peers with
//!   a reset or an `ERROR` (or unable to connect at all), except a peer whose
//!   own incoming transfer had already arrived complete: TCP cannot tell it
//!   that its outgoing bytes were cut after its peer's FIN (the `dtcp`
//!   tool's acknowledgement byte exists for that);
//! - no client operation ran past its timeout, each derived below from the
//!   nodes' configured timeouts and the longest fault;
//! - forwarded sessions crossed on lanes (some may rightly have fallen
//!   back to the Bridge, but not all);
//! - on every node at the end (killed ones were started again on the same
//!   ports), no pending registration, no session, no client connection, no
//!   Bridge stream and no lane, and its descriptors back near its count at
//!   start.
//!
//! The suite runs [`DEFAULT_SECS`] of load. By hand, longer, or replaying a
//! failed run's printed seed:
//!
//! ```sh
//! DTCP_CHAOS_SECS=300 DTCP_CHAOS_SEED=12345 \
//!     cargo test --release -p dtcp-tests --test chaos -- --nocapture
//! ```
//!
//! (`DTCP_CHAOS_WORKERS` sets the number of sessions run at once.) A seed
//! replays every choice (nodes, sizes, faults, pauses), not the timing.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dtcp_client::ClientError;
use dtcp_client::dtcp_wire::Verb;
use dtcp_tests::*;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Seconds of load in the suite's run.
const DEFAULT_SECS: f64 = 20.0;
/// Sessions run at once in the suite's run.
const DEFAULT_WORKERS: u64 = 6;
/// Nodes in the cluster.
const NODES: usize = 3;

// The nodes' timeouts, short so that a refused session ends soon.
/// `--pending-ttl`.
const PENDING_TTL: f64 = 4.0;
/// `--connect-grace`.
const CONNECT_GRACE: f64 = 2.0;
/// `--handshake-timeout`.
const HANDSHAKE_TIMEOUT: f64 = 3.0;
/// `--idle-timeout`: a backstop that resets a stalled session. Longer than
/// [`MAX_PAUSE`], so that a node stopped once does not cut healthy sessions
/// (if it does, both peers see a reset, which the invariants allow).
const IDLE_TIMEOUT: f64 = 3.0;
/// `--redis-operation-timeout`: a store call's bound, retries included.
const REDIS_OPERATION_TIMEOUT: f64 = 1.5;
/// `--redis-response-timeout`.
const REDIS_RESPONSE_TIMEOUT: f64 = 0.5;
/// `--redis-connect-timeout`.
const REDIS_CONNECT_TIMEOUT: f64 = 0.5;

// Bounds of the forwarding plane that are not flags (crates/forward).
/// Opening a Bridge: the plane's connect (1 s), then the call and its first
/// frame (3 s each).
const BRIDGE_OPEN: Duration = Duration::from_secs(7);

// The faults.
/// Longest SIGSTOP, and longest time a killed node or Redis stays down.
const MAX_PAUSE: Duration = Duration::from_millis(1200);
/// Shortest SIGSTOP or downtime.
const MIN_PAUSE: Duration = Duration::from_millis(200);
/// Shortest and longest gap between two faults (one fault at a time: each is
/// over, the process running again, before the next).
const MIN_GAP: Duration = Duration::from_millis(700);
/// See [`MIN_GAP`].
const MAX_GAP: Duration = Duration::from_millis(2000);
/// Faults a session can live through at most: its whole life (pairing
/// and transfer) is shorter than two gaps, and faults do not overlap.
const FAULTS_PER_SESSION: u32 = 2;

// The clients' timeouts, each derived from the nodes' configuration: what
// the relay promises plus every pause a session can meet
// ([`FAULTS_PER_SESSION`] x [`MAX_PAUSE`]: while a node or Redis is stopped,
// its timers do not run) plus [`SLACK`] for two loaded cores. A client past
// one of them counts as a broken invariant, never as a refusal.
/// Scheduling slack on a shared 2-core machine.
const SLACK: Duration = Duration::from_secs(2);
/// Opening the TCP connection (the kernel accepts even for a stopped node).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes each way per session, at least and at most.
const MIN_BYTES: u64 = 128 * 1024;
/// See [`MIN_BYTES`].
const MAX_BYTES: u64 = 512 * 1024;
/// How long the end-of-run checks wait for descriptors to settle.
const SETTLE: Duration = Duration::from_secs(10);

/// Splice pipes a node keeps per worker thread (`POOL_MAX` in
/// crates/duplex/src/pipe.rs), two descriptors each.
const PIPES_PER_THREAD: usize = 4;
/// A node's HTTP/2 connections to each other node: one dialed, one accepted.
const PLANE_CONNECTIONS_PER_PEER: usize = 2;
/// Redis connections a node may hold beyond its count at start: after a
/// Redis fault the command connection and the pub/sub one may have been
/// replaced and the old ones not yet closed.
const REDIS_SPARE: usize = 2;

/// Descriptors a node may hold at the end beyond its count at start, none
/// of them a client's: its pooled splice pipes (the relay runs one worker
/// thread per core), its plane connections and [`REDIS_SPARE`]. 22 on this
/// 2-core machine.
fn fd_slack() -> usize {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    threads * PIPES_PER_THREAD * 2 + (NODES - 1) * PLANE_CONNECTIONS_PER_PEER + REDIS_SPARE
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn pauses() -> Duration {
    MAX_PAUSE * FAULTS_PER_SESSION
}

/// The Initiator's reply: its store write, then the pending TTL.
fn create_timeout() -> Duration {
    secs(REDIS_OPERATION_TIMEOUT + PENDING_TTL) + pauses() + SLACK
}

/// The Target's reply: its store lookup, the connect grace, a Bridge to the
/// owner.
fn connect_timeout() -> Duration {
    secs(REDIS_OPERATION_TIMEOUT + CONNECT_GRACE) + BRIDGE_OPEN + pauses() + SLACK
}

/// A transfer: a few hundred KiB move in milliseconds; what can stall it
/// is a stopped node (resumed within the pauses) or the idle timeout.
fn transfer_timeout() -> Duration {
    secs(IDLE_TIMEOUT) + pauses() + SLACK
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// How one peer's part of a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// It sent everything, and read everything its peer sent, verified.
    Verified,
    /// It read everything its peer sent, verified, but its own sending
    /// failed (a reset).
    ReceivedThenReset,
    /// The relay answered `ERROR` with this condition.
    Refused(String),
    /// The connection could not be opened (the node was down).
    Unreachable,
    /// A reset (or the relay's close before any reply: never mistaken for
    /// `OK`), in this phase.
    Reset(&'static str, ErrorKind),
    /// A clean EOF with bytes missing or wrong: the bug this run guards
    /// against.
    Truncated {
        got: u64,
        want: u64,
        digest_ok: bool,
    },
    /// An operation ran past its timeout.
    TimedOut(&'static str),
}

impl End {
    /// Whether this peer's incoming transfer arrived complete and verified.
    fn received(&self) -> bool {
        matches!(self, End::Verified | End::ReceivedThenReset)
    }

    /// Whether this peer saw the session fail (a reset, an `ERROR`, or no
    /// connection at all).
    fn saw_failure(&self) -> bool {
        matches!(
            self,
            End::ReceivedThenReset | End::Refused(_) | End::Unreachable | End::Reset(..)
        )
    }
}

/// One peer: connects to `addr`, sends `verb`, then sends `send` bytes of
/// pattern `send_seed` while it reads `want` bytes of pattern `want_seed`.
async fn peer(
    addr: SocketAddr,
    verb: Verb,
    name: String,
    (send_seed, send): (u64, u64),
    (want_seed, want): (u64, u64),
) -> End {
    let t = triple(&name);
    let stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => return End::TimedOut("connect"),
        Ok(Err(_)) => return End::Unreachable,
        Ok(Ok(s)) => s,
    };
    let reply_timeout = match verb {
        Verb::Create => create_timeout(),
        Verb::Connect => connect_timeout(),
    };
    let stream = match timeout(reply_timeout, dtcp_client::pair(stream, verb, &t)).await {
        Err(_) => return End::TimedOut("reply"),
        Ok(Ok(s)) => s,
        Ok(Err(ClientError::Refused { condition, .. })) => {
            return End::Refused(condition.to_string());
        }
        Ok(Err(ClientError::Closed)) => return End::Reset("reply", ErrorKind::UnexpectedEof),
        Ok(Err(ClientError::Io(e))) => return End::Reset("reply", e.kind()),
        Ok(Err(e)) => panic!("{name}: unexpected reply: {e}"),
    };
    let (mut r, mut w) = stream.into_split();
    let transfer = async {
        tokio::join!(
            try_send_pattern(&mut w, send_seed, send),
            try_recv_digest(&mut r),
        )
    };
    let Ok((sent, got)) = timeout(transfer_timeout(), transfer).await else {
        return End::TimedOut("transfer");
    };
    match (got, sent) {
        (Err(e), _) => End::Reset("transfer", e.kind()),
        (Ok((n, digest)), sent) => {
            let digest_ok = n == want && digest == pattern_digest(want_seed, want);
            match sent {
                Ok(_) if digest_ok => End::Verified,
                Err(_) if digest_ok => End::ReceivedThenReset,
                Ok(_) => End::Truncated {
                    got: n,
                    want,
                    digest_ok,
                },
                // Linux reports a reset once per socket, to whichever call
                // comes first: when the writing half took it, the reading
                // half then sees the connection done, an EOF. The peer did
                // see the reset (a pure reader gets it on its read, as in
                // cuts.rs). A FIN followed by a failed write lands here too:
                // that peer is not fooled either, its connection failed. A
                // FIN to a peer with nothing more to write is caught above.
                Err(e) => End::Reset("transfer, on the write", e.kind()),
            }
        }
    }
}

/// One session, both peers.
#[derive(Debug)]
struct Session {
    name: String,
    create_on: usize,
    connect_on: usize,
    initiator: End,
    target: End,
}

/// Runs sessions one after another until `stop`.
async fn worker(id: u64, seed: u64, addrs: Vec<SocketAddr>, stop: Arc<AtomicBool>) -> Vec<Session> {
    let mut rng = Rng::new(seed ^ (id + 1).wrapping_mul(0xa076_1d64_78bd_642f));
    let mut done = Vec::new();
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let create_on = rng.below(NODES as u64) as usize;
        let connect_on = rng.below(NODES as u64) as usize;
        let to_target = (rng.next_u64() | 1, rng.between(MIN_BYTES, MAX_BYTES));
        let to_initiator = (rng.next_u64() | 1, rng.between(MIN_BYTES, MAX_BYTES));
        // Unique per run, so that a session never meets a previous run's record.
        let name = format!("chaos-{seed}-{id}-{k}");
        k += 1;
        let initiator = tokio::spawn(peer(
            addrs[create_on],
            Verb::Create,
            name.clone(),
            to_target,
            to_initiator,
        ));
        let target = peer(
            addrs[connect_on],
            Verb::Connect,
            name.clone(),
            to_initiator,
            to_target,
        )
        .await;
        let initiator = initiator.await.expect("initiator task");
        done.push(Session {
            name,
            create_on,
            connect_on,
            initiator,
            target,
        });
    }
    done
}

/// A node's fixed addresses, so that it comes back where clients look.
#[derive(Debug, Clone, Copy)]
struct Ports {
    listen: SocketAddr,
    metrics: SocketAddr,
    forward: SocketAddr,
}

/// A node and its descriptor count right after it started.
#[derive(Debug)]
struct Node {
    relay: Relay,
    fds_at_start: usize,
}

impl Node {
    /// Starts the node again on its ports (a new node id), after a kill.
    fn restart(&mut self) {
        self.relay.restart();
        self.fds_at_start = open_fds(self.relay.pid());
    }
}

fn start_node(redis_url: &str, ports: Ports) -> Node {
    let relay = NodeOptions::cluster(&[redis_url.to_owned()])
        .listen(ports.listen)
        .metrics_listen(ports.metrics)
        .forward_listen(&ports.forward.to_string())
        .pending_ttl(PENDING_TTL)
        .connect_grace(CONNECT_GRACE)
        .handshake_timeout(HANDSHAKE_TIMEOUT)
        .idle_timeout(IDLE_TIMEOUT)
        .arg("--redis-operation-timeout", REDIS_OPERATION_TIMEOUT)
        .arg("--redis-response-timeout", REDIS_RESPONSE_TIMEOUT)
        .arg("--redis-connect-timeout", REDIS_CONNECT_TIMEOUT)
        .start();
    let fds_at_start = open_fds(relay.pid());
    Node {
        relay,
        fds_at_start,
    }
}

/// The kinds of fault, as the report names them.
const KINDS: [&str; 5] = [
    "node SIGKILL + restart",
    "node SIGSTOP + SIGCONT",
    "redis SIGKILL + restart empty",
    "redis SIGSTOP + SIGCONT",
    "redis restart empty",
];

/// Injects one fault at a time until `until`; every process runs when it
/// returns. Returns the nodes (some started again) and the count by kind.
fn inject(
    seed: u64,
    until: Instant,
    mut nodes: Vec<Node>,
    redis: &mut RedisServer,
) -> (Vec<Node>, BTreeMap<&'static str, u32>) {
    let mut rng = Rng::new(seed);
    let mut counts = BTreeMap::new();
    let ms = |d: Duration| d.as_millis() as u64;
    loop {
        let gap = Duration::from_millis(rng.between(ms(MIN_GAP), ms(MAX_GAP)));
        let pause = Duration::from_millis(rng.between(ms(MIN_PAUSE), ms(MAX_PAUSE)));
        if Instant::now() + gap + pause >= until {
            return (nodes, counts);
        }
        // A sleep: the load runs undisturbed between two faults.
        std::thread::sleep(gap);
        let kind = rng.below(KINDS.len() as u64) as usize;
        let n = rng.below(NODES as u64) as usize;
        eprintln!("chaos: {} (node {n}), {pause:?}", KINDS[kind]);
        match kind {
            0 => {
                // SIGKILLed and reaped; it comes back on the same ports
                // (its flags name them), with a new node id.
                nodes[n].relay.kill();
                // The fault's length: how long the node stays down.
                std::thread::sleep(pause);
                nodes[n].restart();
            }
            1 => {
                nodes[n].relay.signal(libc::SIGSTOP);
                // The fault's length: how long the node stays stopped.
                std::thread::sleep(pause);
                nodes[n].relay.signal(libc::SIGCONT);
            }
            2 => {
                redis.stop();
                // The fault's length: how long Redis stays down.
                std::thread::sleep(pause);
                redis.restart();
            }
            3 => {
                redis.signal(libc::SIGSTOP);
                // The fault's length: how long Redis stays stopped.
                std::thread::sleep(pause);
                redis.signal(libc::SIGCONT);
            }
            _ => redis.restart(),
        }
        *counts.entry(KINDS[kind]).or_insert(0) += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing_under_load() {
    raise_fd_limit();
    let load = secs(env("DTCP_CHAOS_SECS").unwrap_or(DEFAULT_SECS));
    let workers = env("DTCP_CHAOS_WORKERS").unwrap_or(DEFAULT_WORKERS);
    let seed = env("DTCP_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    eprintln!(
        "chaos: seed {seed} (replay with DTCP_CHAOS_SEED={seed}), {load:?} of load, {workers} at once"
    );

    // Redis and the nodes come back on their ports after a kill: ports no
    // client connection can take meanwhile.
    let mut redis = RedisServer::start_with(fixed_port(), &[]);
    let ports: Vec<Ports> = (0..NODES)
        .map(|_| Ports {
            listen: fixed_addr(),
            metrics: fixed_addr(),
            forward: fixed_addr(),
        })
        .collect();
    let nodes: Vec<Node> = ports.iter().map(|p| start_node(&redis.url(), *p)).collect();
    nodes[0]
        .relay
        .wait_for("dtcp_nodes_alive", NODES as f64)
        .await;
    let addrs: Vec<SocketAddr> = ports.iter().map(|p| p.listen).collect();

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load_tasks = Vec::new();
    for id in 0..workers {
        load_tasks.push(tokio::spawn(worker(id, seed, addrs.clone(), stop.clone())));
    }
    let injector = {
        let until = started + load;
        tokio::task::spawn_blocking(move || {
            let (nodes, counts) = inject(seed, until, nodes, &mut redis);
            (nodes, counts, redis)
        })
    };
    let (nodes, faults, _redis) = injector.await.expect("fault injector");
    // A sleep: the load runs on to its end with every process up, so that
    // the last fault's consequences play out under load too.
    tokio::time::sleep((started + load).saturating_duration_since(Instant::now())).await;
    stop.store(true, Ordering::Relaxed);
    let mut sessions = Vec::new();
    for t in load_tasks {
        sessions.extend(t.await.expect("load worker"));
    }
    let elapsed = started.elapsed();

    // The counts.
    let completed = sessions
        .iter()
        .filter(|s| s.initiator == End::Verified && s.target == End::Verified)
        .count();
    let refused = sessions
        .iter()
        .filter(|s| matches!(s.initiator, End::Refused(_)) || matches!(s.target, End::Refused(_)))
        .count();
    let one_way = sessions
        .iter()
        .filter(|s| {
            (s.initiator.received() || s.target.received())
                && !(s.initiator == End::Verified && s.target == End::Verified)
        })
        .count();
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    for s in &sessions {
        for (side, end) in [("initiator", &s.initiator), ("target", &s.target)] {
            let key = match end {
                End::Refused(c) => format!("{side}: ERROR {c}"),
                End::Reset(phase, kind) => format!("{side}: reset in {phase} ({kind:?})"),
                other => format!("{side}: {other:?}"),
            };
            *ends.entry(key).or_insert(0) += 1;
        }
    }
    eprintln!("chaos: seed {seed}, {elapsed:.1?}");
    eprintln!(
        "chaos: {} sessions attempted, {completed} completed and verified both ways, \
         {refused} refused (an ERROR), {} reset, {one_way} of those not complete arrived one way",
        sessions.len(),
        sessions.len() - completed - refused
    );
    for (k, v) in &ends {
        eprintln!("chaos:   {k}: {v}");
    }
    let total_faults: u32 = faults.values().sum();
    eprintln!("chaos: {total_faults} faults injected");
    for (k, v) in &faults {
        eprintln!("chaos:   {k}: {v}");
    }

    // The invariants.
    let broken: Vec<&Session> = sessions
        .iter()
        .filter(|s| {
            let peer_ok = |e: &End| !matches!(e, End::Truncated { .. } | End::TimedOut(_));
            let both = s.initiator == End::Verified && s.target == End::Verified;
            let each_saw = (s.initiator.saw_failure() || s.initiator.received())
                && (s.target.saw_failure() || s.target.received());
            !(peer_ok(&s.initiator) && peer_ok(&s.target) && (both || each_saw))
        })
        .collect();
    let shown: Vec<String> = broken
        .iter()
        .take(5)
        .map(|s| {
            format!(
                "{} (CREATE on node {}, CONNECT on node {}): initiator {:?}, target {:?}",
                s.name, s.create_on, s.connect_on, s.initiator, s.target
            )
        })
        .collect();
    assert!(
        broken.is_empty(),
        "seed {seed}: {} sessions broke an invariant, e.g.\n{}",
        broken.len(),
        shown.join("\n")
    );
    assert!(completed > 0, "seed {seed}: no session completed at all");
    assert!(total_faults > 0, "seed {seed}: no fault was injected");

    // Forwarded sessions crossed on lanes, not all on the Bridge: a lane
    // dial that fails falls back to it unseen by the clients. Some may
    // rightly have (a lane to a node killed or stopped), and a node started
    // again counts afresh, so only the sum of the nodes' present counts.
    let mut via = [0.0; 2];
    for node in &nodes {
        for (count, path) in via.iter_mut().zip(["lane", "bridge"]) {
            *count += node
                .relay
                .metric(&format!("dtcp_forwarded_sessions_total{{via=\"{path}\"}}"))
                .await;
        }
    }
    eprintln!(
        "chaos: forwarded sessions the nodes count now: {} on lanes, {} on the Bridge",
        via[0], via[1]
    );
    assert!(via[0] > 0.0, "seed {seed}: no forwarded session on a lane");

    // Every node back to nothing held.
    for (n, node) in nodes.iter().enumerate() {
        for sample in [
            "dtcp_pending_registrations",
            "dtcp_connections_open",
            "dtcp_sessions_active{path=\"local\"}",
            "dtcp_sessions_active{path=\"forwarded\"}",
            "dtcp_bridge_streams_active{role=\"client\"}",
            "dtcp_bridge_streams_active{role=\"server\"}",
            "dtcp_lanes_active{role=\"client\"}",
            "dtcp_lanes_active{role=\"server\"}",
        ] {
            node.relay.wait_for(sample, 0.0).await;
        }
        let pid = node.relay.pid();
        let limit = node.fds_at_start + fd_slack();
        // Asserted below, with the count.
        settles(SETTLE, || async { open_fds(pid) <= limit }).await;
        let fds = open_fds(pid);
        eprintln!(
            "chaos: node {n}: {fds} descriptors open at the end, {} at its start",
            node.fds_at_start
        );
        assert!(
            fds <= limit,
            "seed {seed}: node {n} holds {fds} descriptors, {} at its start (slack {})",
            node.fds_at_start,
            fd_slack()
        );
    }
}
