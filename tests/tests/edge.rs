//! Behind a load balancer, on the open internet (docs/PROTOCOL.md section 4): a
//! real HAProxy sending the PROXY protocol, every bad header, the Target's
//! real address carried across the Bridge, and the per-source connection
//! rate.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dtcp_client::dtcp_wire::Verb;
use dtcp_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Where HAProxy (and the trusted test client) connect from.
const BALANCER: &str = "127.0.0.1/32";
/// The relay's default pending CREATEs per source address.
const PER_IP: usize = 100;
/// Distinct client addresses behind HAProxy.
const CLIENTS: u32 = 300;

/// A node that expects a PROXY protocol header from 127.0.0.1.
fn behind_balancer() -> NodeOptions {
    NodeOptions::new()
        .flag("--proxy-protocol")
        .arg("--proxy-protocol-from", BALANCER)
}

/// The counters and gauges a test leaves behind must be back at zero.
async fn assert_idle(relay: &Relay) {
    relay.wait_for("dtcp_pending_registrations", 0.0).await;
    relay
        .wait_for("dtcp_sessions_active{path=\"local\"}", 0.0)
        .await;
    relay.wait_for("dtcp_connections_open", 0.0).await;
    relay.wait_for("dtcp_store_registrations", 0.0).await;
}

/// Sends a CREATE from `source` through `to`; the connection stays open.
async fn create_from(source: IpAddr, to: SocketAddr, name: &str) -> TcpStream {
    let mut s = connect_from(source, to).await;
    s.write_all(&command(Verb::Create, &triple(name)))
        .await
        .unwrap();
    s
}

/// The client addresses the node's log lines name (a session's line names
/// its Initiator's and its Target's).
fn logged_clients(relay: &Relay) -> HashSet<IpAddr> {
    relay
        .logs()
        .iter()
        .flat_map(|l| [&l["initiator_client"], &l["target_client"]])
        .filter_map(|a| a.as_str()?.parse::<IpAddr>().ok())
        .collect()
}

async fn three_hundred_clients_behind(version: ProxyVersion) {
    raise_fd_limit();
    let relay = behind_balancer().start();
    let haproxy = Haproxy::start(relay.addr, version);
    let sources: Vec<IpAddr> = (0..CLIENTS).map(loopback_source).collect();

    // 300 pending CREATEs, one per client address: none is refused, though
    // every connection reaches the node from HAProxy's one address.
    let mut initiators = Vec::new();
    for (n, source) in sources.iter().enumerate() {
        initiators.push(create_from(*source, haproxy.addr, &format!("c{n}")).await);
    }
    relay
        .wait_for("dtcp_pending_registrations", f64::from(CLIENTS))
        .await;

    // 101 from one address: the 101st is refused.
    let crowded = loopback_source(CLIENTS + 1);
    let mut crowd = Vec::new();
    for n in 0..PER_IP {
        crowd.push(create_from(crowded, haproxy.addr, &format!("crowd{n}")).await);
    }
    relay
        .wait_for(
            "dtcp_pending_registrations",
            f64::from(CLIENTS) + PER_IP as f64,
        )
        .await;
    let mut over = create_from(crowded, haproxy.addr, "crowd-over").await;
    let reply = read_all(&mut over).await;
    assert!(is_error(&reply, "resource-constraint"), "{reply:?}");

    // Every one of the 300 pairs, the CONNECT from yet other addresses.
    let mut targets = Vec::new();
    for n in 0..CLIENTS {
        let mut tg = connect_from(loopback_source(CLIENTS + 2 + n), haproxy.addr).await;
        tg.write_all(&command(Verb::Connect, &triple(&format!("c{n}"))))
            .await
            .unwrap();
        targets.push(tg);
    }
    for (i, tg) in initiators.iter_mut().zip(targets.iter_mut()) {
        assert_eq!(read_n(i, 3).await, b"OK\0");
        assert_eq!(read_n(tg, 3).await, b"OK\0");
    }
    drop((initiators, targets, crowd));
    assert_idle(&relay).await;

    // The logs name the clients (one line per session, naming both), never
    // HAProxy.
    let clients = logged_clients(&relay);
    let ours: HashSet<IpAddr> = (0..2 * CLIENTS + 2).map(loopback_source).collect();
    assert!(
        clients.len() >= CLIENTS as usize,
        "{} client addresses logged",
        clients.len()
    );
    assert!(
        clients.is_subset(&ours),
        "a log line names an address that is not a client's: {:?}",
        clients.difference(&ours).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v2_names_every_client() {
    three_hundred_clients_behind(ProxyVersion::V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v1_names_every_client() {
    three_hundred_clients_behind(ProxyVersion::V1).await;
}

/// Sends `bytes` from `source` and returns everything the node answers.
async fn answer(source: IpAddr, to: SocketAddr, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = connect_from(source, to).await;
    s.write_all(bytes).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    read_all(&mut s).await
}

#[tokio::test]
async fn bad_headers_are_refused_and_register_nothing() {
    let relay = behind_balancer().handshake_timeout(1.0).start();
    let trusted: IpAddr = "127.0.0.1".parse().unwrap();
    let untrusted: IpAddr = "127.0.0.2".parse().unwrap();
    let client: SocketAddr = "192.0.2.9:4000".parse().unwrap();
    let create = command(Verb::Create, &triple("bad"));
    let with = |header: Vec<u8>| [header, create.clone()].concat();

    // Nobody else may claim an address.
    for header in [proxy_v1(client, relay.addr), proxy_v2(client, relay.addr)] {
        let reply = answer(untrusted, relay.addr, &with(header), false).await;
        assert!(is_error(&reply, "forbidden"), "{reply:?}");
    }
    // A trusted source must send a header, whole and within bounds.
    let v2 = proxy_v2(client, relay.addr);
    let mut too_long = v2.clone();
    too_long[14..16].copy_from_slice(&2000u16.to_be_bytes());
    let long_v1 = format!("PROXY TCP4 {}\r\n", "1".repeat(110)).into_bytes();
    for (what, bytes, half_close) in [
        ("no header", create.clone(), false),
        ("a truncated v2 header", v2[..20].to_vec(), true),
        (
            "a truncated v1 header",
            b"PROXY TCP4 192.0.2.9".to_vec(),
            true,
        ),
        ("a v1 line over 107 bytes", long_v1, false),
        ("a v2 length beyond the buffer", with(too_long), false),
        (
            "a malformed v1 header",
            with(b"PROXY TCP4 a b c d\r\n".to_vec()),
            false,
        ),
    ] {
        let reply = answer(trusted, relay.addr, &bytes, half_close).await;
        assert!(is_error(&reply, "bad-request"), "{what}: {reply:?}");
    }
    // A header dribbled byte by byte past the handshake timeout.
    let mut s = connect_from(trusted, relay.addr).await;
    let started = std::time::Instant::now();
    let mut reply = Vec::new();
    for byte in &v2 {
        if s.write_all(&[*byte]).await.is_err() {
            break;
        }
        // A sleep: the dribble's pace is the attack.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_millis(1500) {
            break;
        }
    }
    reply.extend(read_all(&mut s).await);
    assert!(is_error(&reply, "timeout"), "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    assert_eq!(relay.metric("dtcp_pending_registrations").await, 0.0);
    assert_eq!(relay.metric("dtcp_store_registrations").await, 0.0);
    assert_eq!(
        relay
            .metric("dtcp_errors_total{condition=\"bad-request\"}")
            .await,
        6.0
    );

    // A direct client without a header, and a v2 LOCAL (the balancer's own
    // connection), are served as themselves.
    let _direct = create_from(untrusted, relay.addr, "direct").await;
    let mut local = connect_from(trusted, relay.addr).await;
    local
        .write_all(&[proxy_v2_local(), command(Verb::Create, &triple("local"))].concat())
        .await
        .unwrap();
    relay.wait_for("dtcp_pending_registrations", 2.0).await;
    let clients = logged_clients(&relay);
    drop((_direct, local));
    assert_idle(&relay).await;
    assert!(
        !clients.contains(&client.ip()),
        "a refused header's address was believed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_logs_the_targets_real_address() {
    let redis = RedisServer::start();
    let owner = NodeOptions::cluster(&[redis.url()]).start();
    // The Target's node is behind a balancer: its client is in the header.
    let edge = NodeOptions::cluster(&[redis.url()])
        .flag("--proxy-protocol")
        .arg("--proxy-protocol-from", BALANCER)
        .start();
    let target: SocketAddr = "192.0.2.77:4077".parse().unwrap();
    let t = triple("real-target");
    let initiator = loopback_source(20);
    let mut i = create_from(initiator, owner.addr, "real-target").await;
    owner.wait_for("dtcp_pending_registrations", 1.0).await;
    let balancer: IpAddr = "127.0.0.1".parse().unwrap();
    let mut tg = connect_from(balancer, edge.addr).await;
    tg.write_all(&[proxy_v2(target, edge.addr), command(Verb::Connect, &t)].concat())
        .await
        .unwrap();
    assert_eq!(read_n(&mut i, 3).await, b"OK\0");
    assert_eq!(read_n(&mut tg, 3).await, b"OK\0");
    i.shutdown().await.unwrap();
    tg.shutdown().await.unwrap();
    assert_eq!(read_all(&mut tg).await, b"");
    assert_eq!(read_all(&mut i).await, b"");
    owner
        .wait_for("dtcp_sessions_active{path=\"forwarded\"}", 0.0)
        .await;
    owner.wait_for("dtcp_connections_open", 0.0).await;
    edge.wait_for("dtcp_connections_open", 0.0).await;

    // The owner's session line names the Target as its node saw it, not
    // that node (nor the balancer in front of it), and the Initiator.
    let finished = |relay: &Relay, side: &str| {
        relay
            .logs()
            .into_iter()
            .find(|l| l["message"] == "session finished" && l["side"] == side)
            .unwrap_or_else(|| panic!("no {side} line"))
    };
    let line = finished(&owner, "owner");
    assert_eq!(line["target_client"], target.ip().to_string(), "{line}");
    assert_eq!(line["initiator_client"], initiator.to_string(), "{line}");
    let line = finished(&edge, "target");
    assert_eq!(line["target_client"], target.ip().to_string(), "{line}");
}

#[tokio::test]
async fn a_source_over_its_rate_is_refused_and_another_is_not() {
    let relay = behind_balancer()
        .arg("--max-connection-rate-per-ip", "2/s")
        .arg("--connection-burst-per-ip", 3)
        .start();
    let trusted: IpAddr = "127.0.0.1".parse().unwrap();
    let to = relay.addr;
    let through = |client: &str, name: &str| {
        let client: SocketAddr = client.parse().unwrap();
        [proxy_v2(client, to), command(Verb::Create, &triple(name))].concat()
    };
    let mut held = Vec::new();
    for n in 0..3 {
        let mut s = connect_from(trusted, to).await;
        s.write_all(&through("192.0.2.1:1000", &format!("a{n}")))
            .await
            .unwrap();
        held.push(s);
    }
    relay.wait_for("dtcp_pending_registrations", 3.0).await;
    // Past the burst of three: refused at once.
    let reply = answer(trusted, to, &through("192.0.2.1:1001", "a-over"), false).await;
    assert!(is_error(&reply, "resource-constraint"), "{reply:?}");
    // Another client behind the same balancer, at the same time, is not.
    let mut other = connect_from(trusted, to).await;
    other
        .write_all(&through("192.0.2.2:1000", "b"))
        .await
        .unwrap();
    relay.wait_for("dtcp_pending_registrations", 4.0).await;
    assert_eq!(
        relay
            .metric("dtcp_connections_refused_total{reason=\"connection_rate\"}")
            .await,
        1.0
    );
    drop((held, other));
    assert_idle(&relay).await;
}

/// Distinct client addresses sprayed at the limiter by default: enough to
/// outlast an eviction round (the spray takes several seconds), few enough
/// to keep the suite quick.
const SPRAY_DEFAULT: u32 = 10_000;
/// Connections of the spray in flight at once.
const SPRAY_CONCURRENCY: u32 = 64;

/// How many addresses to spray: `DTCP_SPRAY` if set. The README's figure
/// for the limiter's memory is from `DTCP_SPRAY=100000` (about a minute):
/// `DTCP_SPRAY=100000 cargo test --release -p dtcp-tests --test edge spray -- --nocapture`.
fn spray_size() -> u32 {
    match std::env::var("DTCP_SPRAY") {
        Ok(n) => n.parse().expect("DTCP_SPRAY is a number of addresses"),
        Err(_) => SPRAY_DEFAULT,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spray_of_addresses_leaves_the_limiter_bounded() {
    raise_fd_limit();
    let spray = spray_size();
    let relay = behind_balancer()
        .arg("--max-connection-rate-per-ip", "1/s")
        .start();
    let to = relay.addr;
    let rss_before = relay.rss();
    let started = std::time::Instant::now();
    let mut workers = Vec::new();
    for w in 0..SPRAY_CONCURRENCY {
        workers.push(tokio::spawn(async move {
            let mut n = w;
            while n < spray {
                // 10.0.0.0 + n: one address per connection.
                let client =
                    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n)), 1000);
                let mut s = TcpStream::connect(to).await.unwrap();
                s.write_all(&proxy_v2(client, to)).await.unwrap();
                // Reset rather than close: no TIME_WAIT on either side.
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                drop(s);
                n += SPRAY_CONCURRENCY;
            }
        }));
    }
    let mut peak = 0.0f64;
    while !workers.iter().all(|w| w.is_finished()) {
        peak = peak.max(relay.metric("dtcp_connection_rate_sources").await);
        // A sleep: how often the peak is sampled while the spray runs.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed();
    peak = peak.max(relay.metric("dtcp_connection_rate_sources").await);
    let rss_after = relay.rss();
    let grown = rss_after.saturating_sub(rss_before);
    eprintln!(
        "limiter: {spray} sources in {elapsed:.1?}; peak {peak} remembered; RSS {} -> {} MiB (+{} KiB)",
        rss_before >> 20,
        rss_after >> 20,
        grown >> 10
    );
    assert!(peak > 0.0, "the limiter saw the sources");
    assert!(grown < 64 << 20, "RSS grew by {grown} bytes");
    // Quiet addresses are forgotten: the table empties.
    eventually(
        Duration::from_secs(15),
        "the limiter forgets idle sources",
        || async { relay.metric("dtcp_connection_rate_sources").await == 0.0 },
    )
    .await;
    assert_idle(&relay).await;
}

/// Pending CREATEs per address in the cluster tests (small, to stay quick).
const CLUSTER_PER_IP: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_limit_holds_across_nodes_and_without_the_store() {
    let mut redis = RedisServer::start();
    let urls = [redis.url()];
    let nodes: Vec<Relay> = (0..3)
        .map(|_| {
            NodeOptions::cluster(&urls)
                .max_pending_per_ip(CLUSTER_PER_IP)
                .start()
        })
        .collect();
    // Each node's share of the limit depends on how many nodes it sees.
    for node in &nodes {
        node.wait_for("dtcp_nodes_alive", 3.0).await;
    }
    let source = loopback_source(7);
    let other = loopback_source(8);

    // One pending CREATE on each of two nodes: the third node refuses the
    // next, though it holds none from this address itself.
    let a = create_from(source, nodes[0].addr, "x0").await;
    let b = create_from(source, nodes[1].addr, "x1").await;
    nodes[0].wait_for("dtcp_pending_registrations", 1.0).await;
    nodes[1].wait_for("dtcp_pending_registrations", 1.0).await;
    let mut third = create_from(source, nodes[2].addr, "x2").await;
    let reply = read_all(&mut third).await;
    assert!(is_error(&reply, "resource-constraint"), "{reply:?}");
    // Another address is not affected.
    let c = create_from(other, nodes[2].addr, "y0").await;
    nodes[2].wait_for("dtcp_pending_registrations", 1.0).await;
    drop((a, b, c));
    for node in &nodes {
        node.wait_for("dtcp_pending_registrations", 0.0).await;
    }
    eventually(Duration::from_secs(5), "the counts are lowered", || async {
        !redis.keys().iter().any(|k| k.contains("srcset:"))
    })
    .await;

    // With the store down, each node still holds its own limit.
    let held: Vec<TcpStream> = creates_from(source, nodes[0].addr).await;
    nodes[0]
        .wait_for("dtcp_pending_registrations", CLUSTER_PER_IP as f64)
        .await;
    redis.stop();
    let mut over = create_from(source, nodes[0].addr, "z-over").await;
    let reply = read_all(&mut over).await;
    assert!(is_error(&reply, "resource-constraint"), "{reply:?}");
    // (Where the local limit has room, the store's absence shows.)
    let mut elsewhere = create_from(other, nodes[0].addr, "z-other").await;
    let reply = read_all(&mut elsewhere).await;
    assert!(is_error(&reply, "unavailable"), "{reply:?}");
    drop(held);
    for node in &nodes {
        node.wait_for("dtcp_pending_registrations", 0.0).await;
        node.wait_for("dtcp_connections_open", 0.0).await;
    }
}

/// `CLUSTER_PER_IP` pending CREATEs from `source` to `to`.
async fn creates_from(source: IpAddr, to: SocketAddr) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for n in 0..CLUSTER_PER_IP {
        held.push(create_from(source, to, &format!("z{n}")).await);
    }
    held
}
