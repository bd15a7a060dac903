//! Attacks on this node's edge (see the suite's main module): one address
//! (or one IPv6 /64, or a crowd of addresses) trying to take the node's
//! connection slots with silent connections, idle self-pairs or a burst of
//! connections, while a legitimate pair probes from 127.0.2.x.
//!
//! Attack sources are 127.0.12.0/22; budgets are generous (the RSS budget
//! is for a few thousand sockets at most).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use dtcp_client::dtcp_wire::Verb;
use dtcp_tests::abuse::{Footprint, Prober, Sampler, connect_from, loopback};
use dtcp_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How often the legitimate pair probes during an attack.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// The relay's default share of open connections per address.
const CONNECTIONS_PER_IP: usize = 200;
/// The relay's default share of paired sessions per address.
const SESSIONS_PER_IP: usize = 100;
/// Memory a node may grow by during one of these attacks: a few thousand
/// sockets and tasks at most (a pending CREATE costs well under 4 KiB).
const RSS_BUDGET_MIB: u64 = 64;
/// How long a node has to go back to its idle footprint.
const SETTLE: Duration = Duration::from_secs(20);
/// Descriptors a node may hold above its idle count once an attack is
/// over (listeners come and go; nothing per attack connection remains).
const FD_SLACK: usize = 8;

/// The attack source `n` of this module: 127.0.12.0 + n (127.0.12.0/22).
fn attacker(n: u32) -> IpAddr {
    loopback(12 * 256 + n)
}

/// The probe source `n` of this module: 127.0.2.n.
fn prober(n: u32) -> IpAddr {
    loopback(2 * 256 + n)
}

/// Opens `n` connections from `src` that never say a word, as fast as the
/// node takes them; keeps every one the node did not close at once.
async fn silent(src: IpAddr, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        if let Ok(s) = connect_from(src, to).await {
            held.push(s);
        }
    }
    held
}

/// The node's open client connections now.
async fn open(relay: &Relay) -> f64 {
    relay.metric("dtcp_connections_open").await
}

/// Refusals for `reason` so far.
async fn refused(relay: &Relay, reason: &str) -> f64 {
    relay
        .metric(&format!(
            "dtcp_connections_refused_total{{reason=\"{reason}\"}}"
        ))
        .await
}

/// After an attack: nothing open, memory within budget, descriptors back.
async fn assert_recovered(relay: &Relay, idle: &Footprint, peak: &Footprint, what: &str) {
    eprintln!(
        "{what}: RSS {} -> {} MiB (+{} MiB), descriptors {} -> {}",
        idle.rss >> 20,
        peak.rss >> 20,
        peak.grown_mib(idle),
        idle.fds,
        peak.fds
    );
    assert!(
        peak.grown_mib(idle) < RSS_BUDGET_MIB,
        "{what}: RSS grew by {} MiB",
        peak.grown_mib(idle)
    );
    eventually(SETTLE, "every attack connection is closed", || async {
        open(relay).await == 0.0
    })
    .await;
    eventually(SETTLE, "no client address is tracked", || async {
        relay.metric("dtcp_client_addresses").await == 0.0
    })
    .await;
    eventually(SETTLE, "descriptors back to idle", || async {
        Footprint::of(relay).fds <= idle.fds + FD_SLACK
    })
    .await;
}

/// Finding 3: 500 silent connections from one address against
/// `--max-connections 300` (before: a legitimate pair refused 10 of 10).
/// The rate is off, so that the share of open connections does the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_one_address_take_only_their_share() {
    let _serial = crate::serial().await;
    const MAX: usize = 300;
    const ATTACK: usize = 500;
    raise_fd_limit();
    let relay = NodeOptions::new()
        .relay_defaults()
        .max_connections(MAX)
        .max_connection_rate_per_ip(0)
        .start();
    let idle = Footprint::of(&relay);
    let sampler = Sampler::start(&relay);
    let held = silent(attacker(1), relay.addr, ATTACK).await;
    eventually(Duration::from_secs(5), "the share is taken", || async {
        open(&relay).await >= CONNECTIONS_PER_IP as f64
    })
    .await;
    let probes = Prober::start(relay.addr, relay.addr, prober(1), PROBE_EVERY);
    // A sleep, not a poll: the probes' time while the attacker holds its share.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peak = sampler.finish();
    // The attacker's share, and the probe's pair at most.
    let now = open(&relay).await;
    assert!(now <= (CONNECTIONS_PER_IP + 2) as f64, "{now} open");
    assert!(refused(&relay, "per_ip_connections").await >= (ATTACK - CONNECTIONS_PER_IP) as f64);
    probes
        .finish()
        .await
        .assert_all_ok("500 silent connections from one address");
    drop(held);
    assert_recovered(&relay, &idle, &peak, "silent connections").await;
}

/// Finding 3: 1,000 idle self-pairs from one address against
/// `--max-connections 2000` (before: a legitimate pair refused 10 of 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_self_pairs_from_one_address_take_only_their_share() {
    let _serial = crate::serial().await;
    const PAIRS: usize = 1_000;
    raise_fd_limit();
    let relay = NodeOptions::new()
        .relay_defaults()
        .max_connections(2_000)
        .max_connection_rate_per_ip(0)
        .start();
    let idle = Footprint::of(&relay);
    let sampler = Sampler::start(&relay);
    let src = attacker(2);
    let mut held = Vec::new();
    for n in 0..PAIRS {
        let t = triple(&format!("self-{n}"));
        // Either may be refused at accept; what the node accepts is held.
        if let Ok(mut i) = connect_from(src, relay.addr).await {
            let _ = i.write_all(&command(Verb::Create, &t)).await;
            held.push(i);
        }
        if let Ok(mut c) = connect_from(src, relay.addr).await {
            let _ = c.write_all(&command(Verb::Connect, &t)).await;
            held.push(c);
        }
    }
    let probes = Prober::start(relay.addr, relay.addr, prober(2), PROBE_EVERY);
    // A sleep, not a poll: the probes' time while the attacker holds its share.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peak = sampler.finish();
    let sessions = relay.metric("dtcp_sessions_active{path=\"local\"}").await;
    eprintln!(
        "self-pairs: {sessions} sessions, {} open; refused: {} connections, {} sessions",
        open(&relay).await,
        refused(&relay, "per_ip_connections").await,
        refused(&relay, "per_ip_sessions").await,
    );
    // The attacker's sessions, and the probe's at most.
    assert!(
        sessions <= (SESSIONS_PER_IP + 1) as f64,
        "{sessions} sessions"
    );
    assert!(open(&relay).await <= (CONNECTIONS_PER_IP + 2) as f64);
    probes
        .finish()
        .await
        .assert_all_ok("1,000 idle self-pairs from one address");
    drop(held);
    assert_recovered(&relay, &idle, &peak, "idle self-pairs").await;
}

/// Finding 3: 3,000 silent connections from one address at a rate of 10/s
/// (before: all admitted, the rate being checked only after a first byte).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_count_against_the_rate() {
    let _serial = crate::serial().await;
    const ATTACK: usize = 3_000;
    const RATE: u32 = 10;
    raise_fd_limit();
    let relay = NodeOptions::new()
        .relay_defaults()
        .max_connection_rate_per_ip(RATE)
        .start();
    let idle = Footprint::of(&relay);
    let sampler = Sampler::start(&relay);
    let probes = Prober::start(relay.addr, relay.addr, prober(3), PROBE_EVERY);
    let started = std::time::Instant::now();
    let held = silent(attacker(3), relay.addr, ATTACK).await;
    let took = started.elapsed().as_secs_f64();
    let peak = sampler.finish();
    // The burst (one second's worth), then the rate, for as long as the
    // attack took; the probe's pairs besides.
    let allowed = f64::from(RATE) * (1.0 + took.ceil()) + 4.0;
    let accepted = relay.metric("dtcp_connections_accepted_total").await;
    let rated = refused(&relay, "connection_rate").await;
    eprintln!(
        "rate: {ATTACK} silent connections in {took:.1} s: {rated} refused, {accepted} accepted in all"
    );
    assert!(rated >= ATTACK as f64 - allowed, "{rated} refused");
    assert!(open(&relay).await <= allowed, "{} open", open(&relay).await);
    probes
        .finish()
        .await
        .assert_all_ok("3,000 silent connections at 10/s from one address");
    drop(held);
    assert_recovered(&relay, &idle, &peak, "connection rate").await;
}

/// A PROXY protocol version 2 header for a TCP over IPv6 client.
fn proxy_v2_tcp6(client: Ipv6Addr, port: u16) -> Vec<u8> {
    let mut h = PROXY_V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x21, 0, 36]);
    h.extend_from_slice(&client.octets());
    h.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&7777u16.to_be_bytes());
    h
}

/// The address `n` of the /64 `2001:db8:0:<net>::/64`.
fn in_net(net: u16, n: u64) -> Ipv6Addr {
    Ipv6Addr::from((0x2001_0db8_0000_0000_u128 | u128::from(net)) << 64 | u128::from(n))
}

/// Finding 6: many addresses of one IPv6 /64 through PROXY v2 headers from
/// a trusted balancer (before: 150 pending CREATEs from one /64 against a
/// limit of 100). And the balancer's own address is never capped: it
/// carries more connections than one address's share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_prefix_is_one_address() {
    let _serial = crate::serial().await;
    const PENDING_PER_IP: usize = 100;
    const ATTACK: u64 = 150;
    /// More /64s than one address's share of connections.
    const NETS: u16 = 250;
    raise_fd_limit();
    let balancer = attacker(4);
    let relay = NodeOptions::new()
        .relay_defaults()
        .flag("--proxy-protocol")
        .arg("--proxy-protocol-from", format!("{balancer}/32"))
        .max_pending_per_ip(PENDING_PER_IP)
        .max_connection_rate_per_ip(0)
        .start();
    let idle = Footprint::of(&relay);
    let sampler = Sampler::start(&relay);
    // The prober is not a trusted source: it connects without a header.
    let probes = Prober::start(relay.addr, relay.addr, prober(4), PROBE_EVERY);
    let mut held = Vec::new();
    for n in 1..=ATTACK {
        let mut s = connect_from(balancer, relay.addr).await.unwrap();
        let mut bytes = proxy_v2_tcp6(in_net(1, n << 16 | n), 1000);
        bytes.extend(command(Verb::Create, &triple(&format!("v6-{n}"))));
        s.write_all(&bytes).await.unwrap();
        held.push(s);
    }
    relay
        .wait_for("dtcp_pending_registrations", PENDING_PER_IP as f64)
        .await;
    eventually(
        Duration::from_secs(10),
        "the CREATEs over the /64's share are refused",
        || async {
            relay
                .metric("dtcp_commands_total{verb=\"create\",outcome=\"resource-constraint\"}")
                .await
                == (ATTACK - PENDING_PER_IP as u64) as f64
        },
    )
    .await;
    // Every other /64 has its own share, all through the same balancer.
    for net in 2..2 + NETS {
        let mut s = connect_from(balancer, relay.addr).await.unwrap();
        let mut bytes = proxy_v2_tcp6(in_net(net, 1), 1000);
        bytes.extend(command(Verb::Create, &triple(&format!("net-{net}"))));
        s.write_all(&bytes).await.unwrap();
        held.push(s);
    }
    relay
        .wait_for(
            "dtcp_pending_registrations",
            (PENDING_PER_IP + usize::from(NETS)) as f64,
        )
        .await;
    let peak = sampler.finish();
    assert_eq!(refused(&relay, "per_ip_connections").await, 0.0);
    probes
        .finish()
        .await
        .assert_all_ok("150 CREATEs from one IPv6 /64");
    drop(held);
    assert_recovered(&relay, &idle, &peak, "IPv6 /64").await;
}

/// Findings 3 and 6 from many addresses: a crowd within its shares stays
/// within the global limit and leaves the probe room when the limit has
/// room; a crowd over the global limit is refused `max_connections` and
/// holds no more than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_addresses_stays_within_the_global_limits() {
    let _serial = crate::serial().await;
    const MAX: usize = 300;
    /// Each address's silent connections: within its rate's burst.
    const EACH: usize = 20;
    /// Addresses of the crowd that leaves room: 250 of 300 slots.
    const FITTING: u32 = 12;
    /// Addresses of the crowd that does not.
    const FLOODING: u32 = 40;
    raise_fd_limit();
    let relay = NodeOptions::new()
        .relay_defaults()
        .max_connections(MAX)
        .start();
    let idle = Footprint::of(&relay);
    let sampler = Sampler::start(&relay);
    let mut held = Vec::new();
    for n in 0..FITTING {
        held.extend(silent(attacker(16 + n), relay.addr, EACH).await);
    }
    let fitting = (FITTING as usize * EACH) as f64;
    eventually(Duration::from_secs(5), "the crowd is in", || async {
        open(&relay).await >= fitting
    })
    .await;
    let probes = Prober::start(relay.addr, relay.addr, prober(5), PROBE_EVERY);
    // A sleep, not a poll: the probes' time beside the crowd.
    tokio::time::sleep(Duration::from_secs(2)).await;
    probes
        .finish()
        .await
        .assert_all_ok("a crowd within the limits");

    // Over the limit the node is full by design: the legitimate pair, probing
    // throughout, either pairs (in a slot a refused or closed connection
    // left) or is refused at once, never left hanging.
    let probes = Prober::start(relay.addr, relay.addr, prober(5), PROBE_EVERY);
    for n in FITTING..FLOODING {
        held.extend(silent(attacker(16 + n), relay.addr, EACH).await);
    }
    // A sleep, not a poll: the probes' time against the full node.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probes = probes.finish().await;
    let peak = sampler.finish();
    let now = open(&relay).await;
    eprintln!(
        "crowd: {} attempts, {now} open, {} refused at the limit; probes {} paired, {} refused",
        FLOODING as usize * EACH,
        refused(&relay, "max_connections").await,
        probes.ok,
        probes.failed.len()
    );
    // A refusal over the limit may come as a close without a reply (at most
    // 64 refusals are answered at once).
    probes.assert_paired_or_refused(
        "a crowd over the limit",
        &["resource-constraint", "no reply"],
    );
    assert!(now <= MAX as f64, "{now} open over the limit");
    assert!(refused(&relay, "max_connections").await > 0.0);
    drop(held);
    assert_recovered(&relay, &idle, &peak, "a crowd").await;
    // Once the crowd has gone, the legitimate pair is served again.
    let probes = Prober::start(relay.addr, relay.addr, prober(5), PROBE_EVERY);
    // A sleep, not a poll: a few probes' worth of pairing after the crowd.
    tokio::time::sleep(Duration::from_secs(1)).await;
    probes.finish().await.assert_all_ok("after the crowd");
}

/// Self-pairs from many addresses: each address stops at its share of
/// sessions, and the legitimate pair still pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_pairs_from_a_crowd_stop_at_each_share() {
    let _serial = crate::serial().await;
    const ADDRESSES: u32 = 8;
    const SESSIONS: usize = 20;
    const TRIES: usize = 30;
    raise_fd_limit();
    let relay = NodeOptions::new()
        .relay_defaults()
        .max_sessions_per_ip(SESSIONS as u32)
        .max_connection_rate_per_ip(0)
        .start();
    let idle = Footprint::of(&relay);
    let sampler = Sampler::start(&relay);
    let probes = Prober::start(relay.addr, relay.addr, prober(6), PROBE_EVERY);
    let mut held = Vec::new();
    for a in 0..ADDRESSES {
        let src = attacker(64 + a);
        for n in 0..TRIES {
            let t = triple(&format!("crowd-{a}-{n}"));
            let (mut i, mut c) = (
                connect_from(src, relay.addr).await.unwrap(),
                connect_from(src, relay.addr).await.unwrap(),
            );
            i.write_all(&command(Verb::Create, &t)).await.unwrap();
            c.write_all(&command(Verb::Connect, &t)).await.unwrap();
            held.push((i, c));
        }
    }
    let most = (ADDRESSES as usize * SESSIONS) as f64;
    eventually(
        Duration::from_secs(10),
        "each address at its share",
        || async { relay.metric("dtcp_sessions_active{path=\"local\"}").await >= most },
    )
    .await;
    // A sleep, not a poll: time for a pairing over a share to show, if the
    // node let one through; nothing can be polled for what must not come.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let peak = sampler.finish();
    let sessions = relay.metric("dtcp_sessions_active{path=\"local\"}").await;
    assert!(sessions <= most + 1.0, "{sessions} sessions");
    assert!(refused(&relay, "per_ip_sessions").await > 0.0);
    probes
        .finish()
        .await
        .assert_all_ok("self-pairs from a crowd of addresses");
    drop(held);
    assert_recovered(&relay, &idle, &peak, "self-pairs from a crowd").await;
}
