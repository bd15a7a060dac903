//! Attacks on XEP-0065 mode's SOCKS5 pairs (see the suite's main module).
//!
//! A SOCKS5 pair needs no key: on a cluster that takes only signed keys it
//! was the way around them, and a pair that nobody activated held its two
//! connections for the whole pending TTL. Now a node takes SOCKS5 only with
//! the XMPP component or `--accept-socks5`; the first connection of a
//! stream hash counts against its address's pending limit until its pair is
//! activated; and an unactivated pair is cut at
//! `--socks5-activation-timeout`.
//!
//! Sources: the legitimate prober uses 127.0.3.x, the attacks 127.0.13.x.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dtcp_client::dtcp_wire::Verb;
use dtcp_tests::abuse::{Footprint, Prober, Sampler, connect_from, loopback};
use dtcp_tests::client::{command, eventually};
use dtcp_tests::redis::RedisServer;
use dtcp_tests::relay::{NodeOptions, Relay};
use dtcp_tests::trust::{KEY_SECRET, signed_triple};
use dtcp_wire::socks5::{self, StreamHash};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The legitimate prober's address (127.0.3.1, then .2 for the next test).
fn probe_source(n: u32) -> IpAddr {
    loopback(3 * 256 + n)
}

/// The attacker's address (127.0.13.n).
fn attack_source(n: u32) -> IpAddr {
    loopback(13 * 256 + n)
}

/// How often the legitimate pair probes during an attack.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long one probe may take, from its `CREATE` to the end of its echo.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the attacker waits for any one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attack connections in flight at once (the attacker's own descriptors).
const IN_FLIGHT: usize = 200;
/// Memory a node may grow by during one of these attacks: a refused
/// connection costs its handshake buffer for a moment, a capped pair two
/// sockets; 32 MiB is several times what either needs.
const RSS_BUDGET_MIB: u64 = 32;
/// Descriptors a node may hold above its idle count once an attack is over
/// (a store connection or a Bridge opened meanwhile).
const FD_SLACK: usize = 16;

/// A key secret file for `--key-secret-file`, removed when dropped.
struct KeyFile(PathBuf);

impl KeyFile {
    fn new(name: &str) -> KeyFile {
        let path = std::env::temp_dir().join(format!(
            "dtcp-abuse-socks5-{name}-{}.key",
            std::process::id()
        ));
        std::fs::write(&path, format!("{KEY_SECRET}\n")).expect("writing the key secret file");
        KeyFile(path)
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Two cluster nodes that accept only signed keys, with `extra` flags.
fn signed_cluster(redis: &RedisServer, keys: &KeyFile, extra: &[&str]) -> [Relay; 2] {
    let urls = [redis.url()];
    [(); 2].map(|()| {
        let mut options = NodeOptions::cluster(&urls).arg("--key-secret-file", keys.0.display());
        for flag in extra {
            options = options.flag(flag);
        }
        options.start()
    })
}

/// A legitimate DTCP pair with a signed key, probed every [`PROBE_EVERY`]
/// in the background (its `CREATE` to one node, its `CONNECT` to another).
struct SignedProber {
    stop: CancellationToken,
    task: JoinHandle<(usize, Vec<String>)>,
}

impl SignedProber {
    fn start(create: SocketAddr, connect: SocketAddr, src: IpAddr) -> SignedProber {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut ok, mut failed) = (0, Vec::new());
                let mut tick = tokio::time::interval(PROBE_EVERY);
                for n in 0u64.. {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let name = format!("socks5-probe-{n}-{}", std::process::id());
                    match tokio::time::timeout(PROBE_TIMEOUT, probe(create, connect, src, &name))
                        .await
                    {
                        Ok(Ok(())) => ok += 1,
                        Ok(Err(e)) => failed.push(format!("probe {n}: {e}")),
                        Err(_) => failed.push(format!("probe {n}: timed out")),
                    }
                }
                (ok, failed)
            }
        });
        SignedProber { stop, task }
    }

    /// Stops probing; panics unless some probes ran and every one paired.
    async fn assert_all_ok(self, during: &str) {
        self.stop.cancel();
        let (ok, failed) = self.task.await.expect("prober task");
        assert!(ok > 0, "no legitimate pair was probed during {during}");
        assert!(
            failed.is_empty(),
            "during {during}, {} of {} legitimate pairs failed: {failed:?}",
            failed.len(),
            ok + failed.len()
        );
    }
}

/// One signed pair with a few bytes each way.
async fn probe(create: SocketAddr, connect: SocketAddr, src: IpAddr, name: &str) -> io::Result<()> {
    const PAYLOAD: &[u8] = b"legitimate bytes";
    let t = signed_triple(name, KEY_SECRET, 600);
    let mut initiator = connect_from(src, create).await?;
    initiator.write_all(&command(Verb::Create, &t)).await?;
    let mut target = connect_from(src, connect).await?;
    target.write_all(&command(Verb::Connect, &t)).await?;
    for (who, s) in [("initiator", &mut initiator), ("target", &mut target)] {
        let mut reply = [0u8; 3];
        s.read_exact(&mut reply).await?;
        if &reply != b"OK\0" {
            return Err(io::Error::other(format!("{who} got {reply:?}")));
        }
    }
    initiator.write_all(PAYLOAD).await?;
    target.write_all(PAYLOAD).await?;
    for (who, s) in [("target", &mut target), ("initiator", &mut initiator)] {
        let mut got = [0u8; PAYLOAD.len()];
        s.read_exact(&mut got).await?;
        if got != PAYLOAD {
            return Err(io::Error::other(format!("{who} got other bytes")));
        }
    }
    Ok(())
}

/// How the relay answered one SOCKS5 greeting and request.
#[derive(Debug)]
enum Answer {
    /// Its success reply: the connection is held (registered or paired).
    Held(TcpStream),
    /// A SOCKS5 refusal, or a DTCP `ERROR`: these bytes, then a close.
    Refused(Vec<u8>),
}

/// Sends a SOCKS5 greeting and a request for `hash` from `src` at once, and
/// reads the relay's answer.
async fn socks5_request(src: IpAddr, addr: SocketAddr, hash: &StreamHash) -> Answer {
    let mut s = connect_from(src, addr).await.expect("attack connect");
    let mut hello = socks5::GREETING.to_vec();
    hello.extend_from_slice(&socks5::encode_request(hash));
    s.write_all(&hello).await.expect("attack send");
    let success = {
        let mut ok = vec![5, 0];
        ok.extend_from_slice(&socks5::success_reply(hash));
        ok
    };
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let read = tokio::time::timeout(REPLY_TIMEOUT, s.read(&mut buf))
            .await
            .expect("the relay answers the attacker");
        match read {
            Ok(0) | Err(_) => return Answer::Refused(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if got == success {
            return Answer::Held(s);
        }
        if !success.starts_with(&got) && got.len() >= 2 && got[..2] != [5, 0] {
            // Not SOCKS5's way: read the rest of the DTCP answer.
            let _ = tokio::time::timeout(REPLY_TIMEOUT, s.read_to_end(&mut got)).await;
            return Answer::Refused(got);
        }
    }
}

/// Waits until the relay cuts `s` (a reset, or an end), at most `limit`.
async fn cut_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Waits until `relay`'s descriptors are back near `idle`.
async fn back_to_idle(relay: &Relay, idle: &Footprint, what: &str) {
    eventually(Duration::from_secs(15), what, || async {
        Footprint::of(relay).fds <= idle.fds + FD_SLACK
    })
    .await;
}

/// Finding 4, first half: on a `--key-secret-file` cluster of two nodes
/// without a component, one address opening thousands of SOCKS5
/// connections gets nothing: every one is answered as DTCP (`05` cannot
/// begin a command), nothing registers, and a signed pair from another
/// address pairs throughout. Before: 5,000 unactivated pairs in 1.7 s, all
/// 10,000 slots, each held up to the 300 s pending TTL.
#[tokio::test]
async fn a_cluster_without_a_component_gives_socks5_nothing() {
    cluster_without_a_component(1, 1).await;
}

/// Finding 4, first half, from a crowd: the same 2,000 SOCKS5 connections
/// dealt out across [`CROWD`] addresses (127.0.13.100 upward) get nothing
/// either.
#[tokio::test]
async fn a_cluster_without_a_component_gives_a_crowd_s_socks5_nothing() {
    cluster_without_a_component(100, CROWD).await;
}

/// Attacking addresses of the SOCKS5 attacks' crowd variants.
const CROWD: u32 = 40;

/// 2,000 SOCKS5 connections to a signed-key cluster without a component,
/// from `sources` addresses 127.0.13.`first` upward, in turn.
async fn cluster_without_a_component(first: u32, sources: u32) {
    let _serial = crate::serial().await;
    const CONNECTIONS: usize = 2_000;
    dtcp_tests::relay::raise_fd_limit();
    let redis = RedisServer::start();
    let keys = KeyFile::new("refused");
    let [a, b] = signed_cluster(&redis, &keys, &[]);
    let idle = [Footprint::of(&a), Footprint::of(&b)];
    let samplers = [Sampler::start(&a), Sampler::start(&b)];
    let prober = SignedProber::start(a.addr, b.addr, probe_source(1));

    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let attacks = (0..CONNECTIONS).map(|n| {
        let gate = gate.clone();
        let attacker = attack_source(first + n as u32 % sources);
        // Every hash twice, so that each would have paired.
        let hash = StreamHash::of(&format!("sid-{}", n / 2), "a@x/r", "b@y/r");
        let addr = [a.addr, b.addr][n % 2];
        tokio::spawn(async move {
            let _turn = gate.acquire_owned().await.unwrap();
            socks5_request(attacker, addr, &hash).await
        })
    });
    let mut held = 0;
    for attack in attacks.collect::<Vec<_>>() {
        match attack.await.unwrap() {
            Answer::Held(_) => held += 1,
            Answer::Refused(reply) => assert!(
                reply.starts_with(b"ERROR\0"),
                "a SOCKS5 connection answered as DTCP, got {:?}",
                String::from_utf8_lossy(&reply)
            ),
        }
    }
    assert_eq!(held, 0, "SOCKS5 connections the cluster held");
    prober
        .assert_all_ok(&format!(
            "a SOCKS5 flood of a cluster without a component from {sources} address(es)"
        ))
        .await;
    for node in [&a, &b] {
        // The prober's last CREATE may be a moment from its end.
        node.wait_for("dtcp_pending_registrations", 0.0).await;
        assert_eq!(
            node.metric("dtcp_socks5_pairs_awaiting_activation").await,
            0.0
        );
        let targets = "dtcp_commands_total{protocol=\"socks5\",verb=\"target\",outcome=\"ok\"}";
        assert_eq!(node.metric(targets).await, 0.0, "SOCKS5 targets registered");
    }
    let peaks = samplers.map(Sampler::finish);
    for ((node, idle), peak) in [(&a, &idle[0]), (&b, &idle[1])].into_iter().zip(peaks) {
        let grown = peak.grown_mib(idle);
        eprintln!(
            "socks5 refused: {CONNECTIONS} connections from {sources} address(es), peak +{grown} MiB RSS, {} fds (idle {})",
            peak.fds, idle.fds
        );
        assert!(grown <= RSS_BUDGET_MIB, "+{grown} MiB");
        back_to_idle(node, idle, "descriptors back to idle after the flood").await;
    }
}

/// Finding 4, second half: on cluster nodes that carry SOCKS5
/// (`--accept-socks5`), one address's SOCKS5 pairs are capped by its
/// pending limit (here and across the cluster), and pairs nobody activates
/// are cut at the activation timeout, which gives the address its share
/// back. A signed pair from another address pairs throughout.
#[tokio::test]
async fn one_address_s_socks5_pairs_are_capped_and_expire() {
    let _serial = crate::serial().await;
    const LIMIT: usize = 40;
    const PAIRS: usize = 400;
    /// Short, so that the test sees the expiry (the default is 60 s).
    const TIMEOUT: Duration = Duration::from_secs(3);
    dtcp_tests::relay::raise_fd_limit();
    let redis = RedisServer::start();
    let keys = KeyFile::new("capped");
    let urls = [redis.url()];
    let [a, b] = [(); 2].map(|()| {
        NodeOptions::cluster(&urls)
            .arg("--key-secret-file", keys.0.display())
            .accept_socks5()
            .max_pending_per_ip(LIMIT)
            .socks5_activation_timeout(TIMEOUT.as_secs_f64())
            .start()
    });
    // Each node keeps a share of the address's limit that depends on how
    // many nodes it sees (docs/CONFIGURATION.md): the cluster-wide bound
    // holds once both see both.
    for node in [&a, &b] {
        node.wait_for("dtcp_nodes_alive", 2.0).await;
    }
    let idle = Footprint::of(&a);
    let sampler = Sampler::start(&a);
    let prober = SignedProber::start(a.addr, b.addr, probe_source(2));
    let attacker = attack_source(2);

    // Each pair: its Target to `a`, then its requester, to `a` (paired
    // there) or to `b` (paired through a Bridge), both from the attacker;
    // a few at a time.
    let gate = Arc::new(Semaphore::new(IN_FLIGHT / 2));
    let started = tokio::time::Instant::now();
    let attempts = (0..PAIRS).map(|n| {
        let gate = gate.clone();
        let (addr, requester_addr) = (a.addr, [a.addr, b.addr][n % 2]);
        let hash = StreamHash::of(&format!("sid-capped-{n}"), "a@x/r", "b@y/r");
        tokio::spawn(async move {
            let _turn = gate.acquire_owned().await.unwrap();
            let Answer::Held(target) = socks5_request(attacker, addr, &hash).await else {
                return None;
            };
            match socks5_request(attacker, requester_addr, &hash).await {
                Answer::Held(requester) => Some((target, requester)),
                Answer::Refused(reply) => panic!("a requester of a held Target: {reply:?}"),
            }
        })
    });
    let mut pairs = Vec::new();
    for attempt in attempts.collect::<Vec<_>>() {
        if let Some(pair) = attempt.await.unwrap() {
            pairs.push(pair);
        }
    }
    let opened_in = started.elapsed();
    eprintln!(
        "socks5 capped: {} of {PAIRS} pairs from one address in {opened_in:?}",
        pairs.len()
    );
    assert!(
        !pairs.is_empty(),
        "the attacker's first pairs are legitimate"
    );
    assert!(
        pairs.len() <= LIMIT,
        "{} pairs held from one address, limit {LIMIT}",
        pairs.len()
    );
    let awaiting = a.metric("dtcp_socks5_pairs_awaiting_activation").await;
    assert!(awaiting <= LIMIT as f64, "{awaiting} pairs awaiting");

    // Across the cluster: while the attacker's pairs wait, its Targets on
    // the other node are held only up to the address's limit, all nodes
    // together, then refused at the store's count of the address.
    let mut held_on_b = Vec::new();
    let refused = loop {
        assert!(
            pairs.len() + held_on_b.len() <= LIMIT,
            "{} pairs on a and {} Targets on b held from one address, limit {LIMIT}",
            pairs.len(),
            held_on_b.len()
        );
        let other = StreamHash::of(
            &format!("sid-capped-other-node-{}", held_on_b.len()),
            "a@x/r",
            "b@y/r",
        );
        match socks5_request(attacker, b.addr, &other).await {
            Answer::Refused(reply) => break reply,
            Answer::Held(target) => held_on_b.push(target),
        }
    };
    assert_eq!(
        refused.get(2..),
        Some(&socks5::error_reply(socks5::ReplyCode::GeneralFailure)[..]),
        "refused at the cluster-wide count"
    );
    drop(held_on_b);

    // Never activated: every pair is cut at the activation timeout.
    for (target, requester) in &mut pairs {
        let limit = TIMEOUT + Duration::from_secs(5);
        assert!(
            cut_within(target, limit).await,
            "a Target outlived the timeout"
        );
        assert!(
            cut_within(requester, limit).await,
            "a requester outlived the timeout"
        );
    }
    a.wait_for("dtcp_socks5_pairs_awaiting_activation", 0.0)
        .await;
    a.wait_for("dtcp_pending_registrations", 0.0).await;
    let expired = a.metric("dtcp_socks5_pairs_expired_total").await;
    assert_eq!(expired, pairs.len() as f64, "pairs cut for the timeout");
    drop(pairs);

    // The address has its share back: a pair of it is held again.
    let again = StreamHash::of("sid-capped-again", "a@x/r", "b@y/r");
    let Answer::Held(_target) = socks5_request(attacker, a.addr, &again).await else {
        panic!("the address's count was not given back after the expiry");
    };
    let Answer::Held(_requester) = socks5_request(attacker, a.addr, &again).await else {
        panic!("the second connection of a hash was not paired");
    };
    drop((_target, _requester));

    prober
        .assert_all_ok("one address's capped SOCKS5 pairs")
        .await;
    for node in [&a, &b] {
        node.wait_for("dtcp_connections_open", 0.0).await;
    }
    let peak = sampler.finish();
    back_to_idle(&a, &idle, "descriptors back to idle after the pairs").await;
    let grown = peak.grown_mib(&idle);
    eprintln!(
        "socks5 capped: peak +{grown} MiB RSS, {} fds (idle {})",
        peak.fds, idle.fds
    );
    assert!(grown <= RSS_BUDGET_MIB, "+{grown} MiB");
}

/// Finding 4 on a lone node: without the XMPP component (and with no
/// `--accept-socks5`, which only a cluster node takes) a node treats `05`
/// as the first byte of a DTCP command and refuses it `bad-request`. One
/// address's SOCKS5 flood gets nothing held, a legitimate DTCP pair from
/// another address pairs throughout, the node's memory sampled throughout
/// stays within budget, and its descriptors go back to idle.
#[tokio::test]
async fn a_lone_node_answers_socks5_as_dtcp() {
    lone_node(4, 1).await;
}

/// Finding 4 on a lone node, from a crowd: the same 500 SOCKS5 connections
/// dealt out across [`CROWD`] addresses (127.0.13.150 upward), each
/// answered as DTCP.
#[tokio::test]
async fn a_lone_node_answers_a_crowd_s_socks5_as_dtcp() {
    lone_node(150, CROWD).await;
}

/// 500 SOCKS5 connections to a lone node without a component, from
/// `sources` addresses 127.0.13.`first` upward, in turn.
async fn lone_node(first: u32, sources: u32) {
    let _serial = crate::serial().await;
    const CONNECTIONS: usize = 500;
    dtcp_tests::relay::raise_fd_limit();
    let relay = NodeOptions::new().start();
    let idle = Footprint::of(&relay);
    let sampler = Sampler::start(&relay);
    let prober = Prober::start(relay.addr, relay.addr, probe_source(4), PROBE_EVERY);
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let attacks = (0..CONNECTIONS).map(|n| {
        let (gate, addr) = (gate.clone(), relay.addr);
        let attacker = attack_source(first + n as u32 % sources);
        // Every hash twice, so that each would have paired.
        let hash = StreamHash::of(&format!("sid-lone-{}", n / 2), "a@x/r", "b@y/r");
        tokio::spawn(async move {
            let _turn = gate.acquire_owned().await.unwrap();
            socks5_request(attacker, addr, &hash).await
        })
    });
    let mut refused = 0;
    for attack in attacks.collect::<Vec<_>>() {
        match attack.await.unwrap() {
            Answer::Held(_) => panic!("a lone node without a component held a SOCKS5 connection"),
            Answer::Refused(reply) => {
                assert!(
                    dtcp_tests::client::is_error(&reply, "bad-request"),
                    "a SOCKS5 connection answered as DTCP, got {:?}",
                    String::from_utf8_lossy(&reply)
                );
                refused += 1;
            }
        }
    }
    let peak = sampler.finish();
    prober.finish().await.assert_all_ok(&format!(
        "a SOCKS5 flood of a lone node from {sources} address(es)"
    ));
    let socks5 = relay
        .scrape()
        .await
        .lines()
        .filter(|l| l.starts_with("dtcp_commands_total") && l.contains("protocol=\"socks5\""))
        // Every series is there from the start, at 0.
        .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) != Some(0.0))
        .count();
    let grown = peak.grown_mib(&idle);
    eprintln!(
        "socks5 on a lone node from {sources} address(es): {refused} of {CONNECTIONS} refused bad-request; peak +{grown} MiB RSS, {} fds (idle {})",
        peak.fds, idle.fds
    );
    assert_eq!(socks5, 0, "no connection counted as SOCKS5");
    assert!(grown <= RSS_BUDGET_MIB, "+{grown} MiB");
    relay.wait_for("dtcp_pending_registrations", 0.0).await;
    back_to_idle(&relay, &idle, "descriptors back to idle after the flood").await;
}

/// A pair is a session from its claim on, and counts against its clients'
/// share of sessions (`--max-sessions-per-ip`) as a DTCP pair does: one
/// address pairing with itself again and again holds no more than its
/// share, locally and across nodes; the pairs over it are cut (both reset:
/// the Target has its success reply already).
#[tokio::test]
async fn one_address_s_socks5_pairs_count_as_sessions() {
    let _serial = crate::serial().await;
    /// The attacker's share of sessions.
    const SESSIONS: usize = 5;
    /// Pairs it tries: well past its share, within its pending limit.
    const PAIRS: usize = 30;
    dtcp_tests::relay::raise_fd_limit();
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let [a, b] = [(); 2].map(|()| {
        NodeOptions::cluster(&urls)
            .accept_socks5()
            .max_pending_per_ip(PAIRS * 2)
            .max_sessions_per_ip(SESSIONS as u32)
            .start()
    });
    let attacker = attack_source(3);
    let mut held = Vec::new();
    for n in 0..PAIRS {
        let hash = StreamHash::of(&format!("sid-sessions-{n}"), "a@x/r", "b@y/r");
        // Targets on `a`; requesters alternately on `a` and on `b`.
        let Answer::Held(target) = socks5_request(attacker, a.addr, &hash).await else {
            continue;
        };
        let requester_node = [a.addr, b.addr][n % 2];
        if let Answer::Held(requester) = socks5_request(attacker, requester_node, &hash).await {
            held.push((target, requester));
        }
    }
    eprintln!(
        "socks5 sessions: {} of {PAIRS} pairs held from one address, share {SESSIONS}",
        held.len()
    );
    assert!(!held.is_empty(), "the first pairs are within the share");
    // On `a` each held pair counts once (both clients are one address);
    // a pair whose requester is on `b` counts there too, so fewer may hold.
    assert!(
        held.len() <= SESSIONS,
        "{} pairs held from one address, share {SESSIONS}",
        held.len()
    );
    let refused = a
        .metric("dtcp_connections_refused_total{reason=\"per_ip_sessions\"}")
        .await
        + b.metric("dtcp_connections_refused_total{reason=\"per_ip_sessions\"}")
            .await;
    assert!(refused > 0.0, "pairs over the share were refused");
    let awaiting = a.metric("dtcp_socks5_pairs_awaiting_activation").await;
    assert!(
        awaiting <= SESSIONS as f64,
        "{awaiting} pairs awaiting on the Targets' node"
    );
    drop(held);
    a.wait_for("dtcp_socks5_pairs_awaiting_activation", 0.0)
        .await;
}
