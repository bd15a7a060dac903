//! Attacks on this node's store (see the suite's main module): whoever can
//! write the cluster's Redis plants values far larger than any a relay
//! writes. The nodes read them bounded, log them cut short and escaped, and
//! keep pairing.
//!
//! Probe source 127.0.5.1; attack sources 127.0.15.x.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dtcp_tests::abuse::{Footprint, Prober, connect_from};
use dtcp_tests::*;
use dtcp_wire::Verb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The probe's source address.
const PROBE_SRC: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 5, 1));
/// How often the probe pairs.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Members planted in the `nodes` set (the figure of the report that found
/// it: 12 to 500 MB on every node).
const PLANTED_NODES: usize = 300_000;
/// Size of a planted record or announcement.
const PLANTED_BYTES: usize = 4 << 20;
/// CONNECTs sent against the planted record, one per attack address.
const CONNECTS: u8 = 20;
/// Announcements of the planted size published.
const ANNOUNCEMENTS: usize = 20;
/// How long the nodes live with the planted `nodes` set: several heartbeats
/// (every 2 s), each of which reads the set.
const NODES_FLOOD_FOR: Duration = Duration::from_secs(8);
/// What one node's resident memory may grow by while it is attacked: a
/// node reads at most 1,024 members of 4 KiB and a record of 4 KiB, so
/// this is the allocator's and the probe's noise, generously (the planted
/// values would cost 500 MB and 20 x 4 MB read whole).
const RSS_BUDGET_MIB: u64 = 64;
/// What the nodes may log in all during the attacks: a few warnings per
/// refused CONNECT, not the planted values (800 MB in the report).
const LOG_BUDGET_BYTES: usize = 256 << 10;
/// Text in every planted value, which no log line may carry.
const MARKER: &str = "FORGED-BY-A-REDIS-WRITER";

/// Runs `redis-cli EVAL script` with `keys` and `args` (a planted value is
/// made inside Redis: one argument on a command line cannot be 4 MB).
fn eval(redis: &RedisServer, script: &str, keys: &[&str], args: &[&str]) -> String {
    let n = keys.len().to_string();
    let mut all = vec!["EVAL", script, &n];
    all.extend(keys);
    all.extend(args);
    redis.cli(&all)
}

/// Samples the peak resident memory of `pids` until stopped.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakRss {
    fn start(relays: &[&Relay]) -> PeakRss {
        let pids: Vec<u32> = relays.iter().map(|r| r.pid()).collect();
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let thread = std::thread::spawn({
            let (stop, peak) = (stop.clone(), peak.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    for pid in &pids {
                        peak.fetch_max(rss_of(*pid), Ordering::Relaxed);
                    }
                    // The sampling interval.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        PeakRss { stop, peak, thread }
    }

    /// The peak since the last call (or the start), the sampling going on.
    fn take(&self) -> u64 {
        self.peak.swap(0, Ordering::Relaxed)
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

/// Resident memory of `pid`, in bytes.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Bytes of log lines `relay` wrote so far, and whether any carries `marker`.
fn log_bytes(relay: &Relay, marker: &str) -> (usize, bool) {
    relay.logs().iter().fold((0, false), |(n, seen), line| {
        let text = line.to_string();
        (n + text.len() + 1, seen || text.contains(marker))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_writer_cannot_make_nodes_read_or_log_planted_values() {
    let _serial = crate::serial().await;
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let a = NodeOptions::cluster(&urls).start();
    let b = NodeOptions::cluster(&urls).start();
    // Idle once each node's store connections are all made (its tracked
    // connection last): what it holds past that is the attack's doing.
    a.wait_for("dtcp_nodes_alive", 2.0).await;
    b.wait_for("dtcp_nodes_alive", 2.0).await;
    eventually(
        Duration::from_secs(5),
        "both tracked connections",
        || async { redis.tracking_clients().len() == 2 },
    )
    .await;
    let idle = [rss_of(a.pid()), rss_of(b.pid())];
    let idle_footprints = [Footprint::of(&a), Footprint::of(&b)];
    let logged_before = [log_bytes(&a, MARKER).0, log_bytes(&b, MARKER).0];
    let peak = PeakRss::start(&[&a, &b]);
    // Created on one node, claimed on the other: the probe's own records,
    // lookups and announcements go through the attacked store.
    let prober = Prober::start(a.addr, b.addr, PROBE_SRC, PROBE_EVERY);

    // 1. The `nodes` set, 300,000 members scored far in the future (never
    // trimmed), read by every node on every heartbeat.
    let planted = eval(
        &redis,
        "for i = 1, tonumber(ARGV[2]) do \
           redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3] .. '-' .. i .. ' 10.9.9.9:1 seal') \
         end return redis.call('ZCARD', KEYS[1])",
        &["dtcp:nodes"],
        &["99999999999999", &PLANTED_NODES.to_string(), MARKER],
    );
    assert!(
        planted.trim().parse::<usize>().unwrap_or(0) >= PLANTED_NODES,
        "planted: {planted}"
    );
    // A sleep, not a poll: the heartbeats that read the planted set are
    // counted by time, and none says it has read it.
    tokio::time::sleep(NODES_FLOOD_FOR).await;
    // The nodes still count each other (and only each other).
    a.wait_for("dtcp_nodes_alive", 2.0).await;
    let mut phases = vec![("nodes set", peak.take())];

    // 2. A 4 MB record, a newline in it, under a registration's key; one
    // CONNECT for it from each of 20 addresses.
    let victim = triple("store-planted-record");
    let key = format!("dtcp:reg:{}", victim.registration_id());
    eval(
        &redis,
        "redis.call('SET', KEYS[1], ARGV[1] .. string.rep('x', tonumber(ARGV[2])) .. ' seal', 'EX', 300) return 1",
        &[&key],
        &[&format!("planted\n{MARKER} "), &PLANTED_BYTES.to_string()],
    );
    let connects: Vec<_> = (1..=CONNECTS)
        .map(|n| {
            let (addr, victim) = (b.addr, victim.clone());
            tokio::spawn(async move {
                let src = IpAddr::V4(Ipv4Addr::new(127, 0, 15, n));
                let mut s = connect_from(src, addr).await.expect("connect");
                s.write_all(&command(Verb::Connect, &victim)).await.unwrap();
                let mut reply = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply)).await;
                reply
            })
        })
        .collect();
    for c in connects {
        let reply = c.await.unwrap();
        assert!(
            !reply.starts_with(b"OK"),
            "a CONNECT against a planted record is not paired"
        );
    }

    phases.push(("record", peak.take()));

    // 3. Messages of 4 MB on each node's own channel (where it is told of
    // the registrations it waits for), half to each node.
    let channels = [a.node_id.clone(), b.node_id.clone()].map(|id| format!("dtcp:wake:{id}"));
    for n in 0..ANNOUNCEMENTS {
        eval(
            &redis,
            "return redis.call('PUBLISH', KEYS[1], ARGV[1] .. string.rep('y', tonumber(ARGV[2])))",
            &[&channels[n % 2]],
            &[
                &format!("0123456789abcdef0123456789abcdef{MARKER} "),
                &PLANTED_BYTES.to_string(),
            ],
        );
    }
    // A sleep, not a poll: a few more heartbeats with everything planted.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let probes = prober.finish().await;
    phases.push(("announcements", peak.take()));
    let peak = phases
        .iter()
        .map(|(_, p)| *p)
        .max()
        .unwrap_or(0)
        .max(peak.finish());
    for (phase, p) in &phases {
        eprintln!("store attack: {phase}: peak RSS {} MiB", p >> 20);
    }
    probes.assert_all_ok("a Redis writer planting oversize values");
    let grown = peak.saturating_sub(idle[0].max(idle[1])) >> 20;
    eprintln!(
        "store attack: idle RSS {} / {} MiB, peak {} MiB (+{grown} MiB)",
        idle[0] >> 20,
        idle[1] >> 20,
        peak >> 20
    );
    let (logged_a, seen_a) = log_bytes(&a, MARKER);
    let (logged_b, seen_b) = log_bytes(&b, MARKER);
    let logged = logged_a + logged_b - logged_before[0] - logged_before[1];
    eprintln!("store attack: {logged} bytes of log lines during the attack");
    assert!(
        !seen_a && !seen_b,
        "no log line carries a planted value (marker {MARKER})"
    );
    assert!(
        logged <= LOG_BUDGET_BYTES,
        "the nodes logged {logged} bytes during the attack (budget {LOG_BUDGET_BYTES})"
    );
    assert!(
        grown <= RSS_BUDGET_MIB,
        "a node grew by {grown} MiB (budget {RSS_BUDGET_MIB} MiB)"
    );
    // Back to idle with the planted values still in Redis: what a node
    // reads of them each heartbeat is bounded and let go.
    for (node, idle) in [(&a, &idle_footprints[0]), (&b, &idle_footprints[1])] {
        let settled = settle(node, idle).await;
        eprintln!(
            "store attack: after {} MiB / {} fds (idle {} MiB / {} fds)",
            settled.rss >> 20,
            settled.fds,
            idle.rss >> 20,
            idle.fds
        );
    }
}

/// How far above its idle RSS a node may stay once the attack is over.
const IDLE_MARGIN_MIB: u64 = 24;
/// Descriptors above idle a node may hold once the attack is over (a store
/// connection coming or going).
const FD_SLACK: usize = 8;

/// Waits for `relay` to come back near its `idle` footprint and says where
/// it settled; panics if it does not within 20 s.
async fn settle(relay: &Relay, idle: &Footprint) -> Footprint {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = Footprint::of(relay);
        if now.grown_mib(idle) <= IDLE_MARGIN_MIB && now.fds <= idle.fds + FD_SLACK {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a node stayed at {} MiB (+{} MiB over idle, margin {IDLE_MARGIN_MIB}) and {} descriptors (idle {})",
            now.rss >> 20,
            now.grown_mib(idle),
            now.fds,
            idle.fds
        );
        // The poll's interval.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
