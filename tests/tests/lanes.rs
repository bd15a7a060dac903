//! Lanes (docs/PROTOCOL.md section 7): a forwarded session's bytes cross
//! between its two nodes on a TCP connection of their own, attached by a
//! single-use token the owner offers in its `paired`. Only the right node
//! can attach one; a node that cannot dial one, or does not do lanes,
//! still pairs, over the Bridge.
//!
//! A small TCP proxy in front of the owner's forwarding port (the address
//! it advertises) sees every byte between the nodes: what a listener on
//! the network would capture.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dtcp_forward::{LANE_DIAL_TIMEOUT, LANE_MAGIC, LANE_WAIT, PlaneAuth, mint_token, preamble};
use dtcp_tests::testkit::free_port;
use dtcp_tests::*;
use dtcp_wire::{Keyring, Secrets};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Most bytes the proxy keeps of each connection's direction.
const CAPTURE_MAX: usize = 1 << 20;

/// Time past [`LANE_DIAL_TIMEOUT`] a fallback to the Bridge may take, on
/// two cores shared with other tests.
const DIAL_MARGIN: Duration = Duration::from_secs(2);
/// Time past [`LANE_WAIT`] a cut may take, likewise.
const WAIT_MARGIN: Duration = Duration::from_secs(3);

/// What one connection carried toward the owner.
type Kept = Arc<Mutex<Vec<u8>>>;

/// A TCP proxy that keeps what it carried, node to owner.
struct Proxy {
    addr: SocketAddr,
    /// What each connection carried toward the owner, in accept order.
    captured: Arc<Mutex<Vec<Kept>>>,
    accepting: JoinHandle<()>,
    /// New connections are taken and their bytes swallowed, never passed on.
    swallow: Arc<AtomicBool>,
    /// Told once: no connection is taken from then on, the listener held.
    stall: Arc<Notify>,
}

impl Proxy {
    /// The listener's backlog, as `TcpListener::bind`'s.
    const BACKLOG: u32 = 1024;

    /// Starts the proxy on a loopback port, the kernel queueing about
    /// `backlog` connections it has not taken yet (Linux: one more).
    async fn start(upstream: SocketAddr, backlog: u32) -> Proxy {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(backlog).unwrap();
        let addr = listener.local_addr().unwrap();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let all = captured.clone();
        let swallow = Arc::new(AtomicBool::new(false));
        let swallowing = swallow.clone();
        let stall = Arc::new(Notify::new());
        let stalled = stall.clone();
        let accepting = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    biased;
                    () = stalled.notified() => {
                        // The listener is held here, never accepted from
                        // again, until the test ends.
                        match std::future::pending::<std::convert::Infallible>().await {}
                    }
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut down, _)) = accepted else {
                    break;
                };
                if swallowing.load(Ordering::Relaxed) {
                    tokio::spawn(async move {
                        let mut sink = vec![0u8; 64 * 1024];
                        while let Ok(n) = down.read(&mut sink).await {
                            if n == 0 {
                                break;
                            }
                        }
                        // Held open, never answered, until the test ends.
                        std::future::pending::<()>().await;
                    });
                    continue;
                }
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let kept = Arc::new(Mutex::new(Vec::new()));
                all.lock().unwrap().push(kept.clone());
                let (mut dr, mut dw) = down.into_split();
                let (mut ur, mut uw) = up.into_split();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = dr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        {
                            let mut kept = kept.lock().unwrap();
                            let room = CAPTURE_MAX.saturating_sub(kept.len()).min(n);
                            kept.extend_from_slice(&buf[..room]);
                        }
                        if uw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = uw.shutdown().await;
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut ur, &mut dw).await;
                    let _ = dw.shutdown().await;
                });
            }
        });
        Proxy {
            addr,
            captured,
            accepting,
            swallow,
            stall,
        }
    }

    /// Stops taking connections but keeps listening, then fills the
    /// kernel's queue of connections not yet taken: past it, the kernel
    /// drops a new connection's SYN, and its dial hangs, as behind a
    /// firewall that drops packets. Those open go on. Returns the
    /// connections that fill the queue, to be held as long as it must stay
    /// full.
    async fn drop_new(&self) -> Vec<TcpStream> {
        self.stall.notify_one();
        let mut queued = Vec::new();
        loop {
            // On loopback a handshake the kernel answers is done at once.
            let dial =
                tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(self.addr));
            match dial.await {
                Ok(Ok(stream)) => queued.push(stream),
                Ok(Err(e)) => panic!("a connection to the stalled proxy: {e}"),
                Err(_) => return queued,
            }
            assert!(
                queued.len() <= 64,
                "the proxy's queue is not full after 64 connections"
            );
        }
    }

    /// Takes new connections and swallows what they send, a middlebox
    /// that black-holes them: those open go on.
    fn swallow_new(&self) {
        self.swallow.store(true, Ordering::Relaxed);
    }

    /// Stops taking connections: new ones are refused, those open go on.
    fn refuse_new(&self) {
        self.accepting.abort();
    }

    /// What each connection carried toward the owner so far.
    fn captured(&self) -> Vec<Vec<u8>> {
        let all = self.captured.lock().unwrap();
        all.iter().map(|c| c.lock().unwrap().clone()).collect()
    }

    /// The preamble of the first lane it carried.
    fn lane_preamble(&self) -> Option<Vec<u8>> {
        self.captured().into_iter().find_map(|c| {
            if !c.starts_with(LANE_MAGIC) || c.len() < 11 {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([c[9], c[10]]));
            c.get(..11 + len).map(<[u8]>::to_vec)
        })
    }
}

/// An owner node whose forwarding port is reached through a proxy (the
/// address it advertises), and a second node; `args` (flag and value) for
/// both.
async fn behind_proxy(
    redis: &RedisServer,
    args: &[(&str, &str)],
) -> (Relay, Relay, Proxy, SocketAddr) {
    behind_proxy_queueing(redis, args, Proxy::BACKLOG).await
}

/// As [`behind_proxy`], the proxy's kernel queueing about `backlog`
/// connections not taken yet.
async fn behind_proxy_queueing(
    redis: &RedisServer,
    args: &[(&str, &str)],
    backlog: u32,
) -> (Relay, Relay, Proxy, SocketAddr) {
    let port = free_port();
    let plane: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = Proxy::start(plane, backlog).await;
    let mut owner = NodeOptions::cluster(&[redis.url()])
        .forward_listen(&plane.to_string())
        .arg("--advertise-addr", proxy.addr);
    let mut other = NodeOptions::cluster(&[redis.url()]);
    for (flag, value) in args {
        owner = owner.arg(flag, value);
        other = other.arg(flag, value);
    }
    (owner.start(), other.start(), proxy, plane)
}

/// Sends a lane preamble (and a few bytes) to `plane`: what comes back
/// before the connection ends, or `None` when it ends with nothing.
async fn attach(plane: SocketAddr, preamble: &[u8]) -> Option<Vec<u8>> {
    let mut lane = TcpStream::connect(plane).await.unwrap();
    let _ = lane.write_all(preamble).await;
    let _ = lane.write_all(b"bytes of a session").await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), lane.read_to_end(&mut got));
    match read.await.expect("the owner ended the lane") {
        Ok(_) if got.is_empty() => None,
        Err(_) if got.is_empty() => None,
        _ => Some(got),
    }
}

/// As [`attach`], inside TLS: a handshake with the nodes' certificate
/// (`cert_pem`, trusted as it is) agreeing on the lane's protocol, then the
/// preamble and a few bytes.
async fn attach_tls(plane: SocketAddr, cert_pem: &str, preamble: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![dtcp_forward::ALPN_LANE.to_vec()];
    let tcp = TcpStream::connect(plane).await.unwrap();
    let mut lane = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("dtcp-relay").unwrap(), tcp)
        .await
        .expect("the lane's handshake");
    assert_eq!(
        lane.get_ref().1.alpn_protocol(),
        Some(dtcp_forward::ALPN_LANE),
        "the node agreed on the lane's protocol"
    );
    let _ = lane.write_all(preamble).await;
    let _ = lane.write_all(b"bytes of a session").await;
    let _ = lane.flush().await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), lane.read_to_end(&mut got));
    match read.await.expect("the owner ended the lane") {
        Ok(_) if got.is_empty() => None,
        Err(_) if got.is_empty() => None,
        _ => Some(got),
    }
}

/// Lanes of a claimant's claims and pools, by outcome.
async fn pooled(node: &Relay, outcome: &str) -> f64 {
    node.metric(&format!(
        "dtcp_lane_pool_lanes_total{{outcome=\"{outcome}\"}}"
    ))
    .await
}

/// Counted refusals of lanes, by reason.
async fn refused(node: &Relay, reason: &str) -> f64 {
    node.metric(&format!("dtcp_auth_failures_total{{reason=\"{reason}\"}}"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_session_crosses_on_a_lane_and_only_its_token_attaches_one() {
    let redis = RedisServer::start();
    let (a, b, proxy, plane) = behind_proxy(&redis, &[]).await;
    let (i, tg) = pair(a.addr, b.addr, &triple("lane-1")).await;
    exchange(i, tg, 4 << 20, 11).await;
    a.wait_on_lanes(1.0).await;
    assert_eq!(b.metric("dtcp_lane_dials_total{outcome=\"ok\"}").await, 1.0);
    a.wait_for(
        "dtcp_sessions_completed_total{path=\"forwarded\",outcome=\"closed\"}",
        1.0,
    )
    .await;
    // Both directions' bytes, on both nodes.
    for node in [&a, &b] {
        node.wait_for("dtcp_forwarded_bytes_total{via=\"lane\"}", (8 << 20) as f64)
            .await;
        node.wait_for("dtcp_lanes_active{role=\"client\"}", 0.0)
            .await;
        node.wait_for("dtcp_lanes_active{role=\"server\"}", 0.0)
            .await;
    }

    // A captured preamble, replayed: the token attached once already.
    let captured = proxy.lane_preamble().expect("a lane crossed the proxy");
    assert_eq!(attach(plane, &captured).await, None, "a replay got bytes");
    a.wait_for("dtcp_auth_failures_total{reason=\"lane_replay\"}", 1.0)
        .await;

    // A token made without the cluster secret.
    let reg = [7; 32];
    let far = 4_000_000_000_000;
    let rogue = PlaneAuth::new(Some(Keyring::new(Secrets::from_lines("not-the-secret"))));
    let forged = mint_token(&rogue, &a.node_id, &b.node_id, &reg, far, [1; 16]);
    assert_eq!(attach(plane, &preamble(&forged)).await, None);
    a.wait_for("dtcp_auth_failures_total{reason=\"lane_token\"}", 1.0)
        .await;

    // The cluster's, but past its expiry.
    let cluster = PlaneAuth::new(Some(Keyring::new(Secrets::from_lines(SECRET))));
    let expired = mint_token(&cluster, &a.node_id, &b.node_id, &reg, 1_000, [2; 16]);
    assert_eq!(attach(plane, &preamble(&expired)).await, None);
    a.wait_for("dtcp_auth_failures_total{reason=\"lane_expired\"}", 1.0)
        .await;

    // The cluster's and in time, but never offered.
    let unoffered = mint_token(&cluster, &a.node_id, &b.node_id, &reg, far, [3; 16]);
    assert_eq!(attach(plane, &preamble(&unoffered)).await, None);
    a.wait_for("dtcp_auth_failures_total{reason=\"lane_replay\"}", 2.0)
        .await;
    assert_eq!(refused(&a, "plane_mac").await, 0.0);

    // The Bridges still pair and the node still serves lanes.
    let (i, tg) = pair(a.addr, b.addr, &triple("lane-2")).await;
    exchange(i, tg, 1 << 20, 12).await;
    a.wait_for("dtcp_forwarded_sessions_total{via=\"lane\"}", 2.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_that_cannot_be_dialed_leaves_the_session_on_the_bridge() {
    let redis = RedisServer::start();
    // No lane dialed ahead: each claim dials its own (a pooled lane,
    // dialed before the port refused, would carry the second session).
    let (a, b, proxy, _) = behind_proxy(&redis, &[("--lane-pool", "0")]).await;
    // The first session opens the plane's HTTP/2 connection through the
    // proxy (and its lane).
    let (i, tg) = pair(a.addr, b.addr, &triple("fallback-1")).await;
    exchange(i, tg, 1 << 20, 21).await;
    a.wait_for("dtcp_forwarded_sessions_total{via=\"lane\"}", 1.0)
        .await;
    // From now on the owner's port refuses new connections: the Bridge
    // keeps its connection, a lane dial is refused.
    proxy.refuse_new();
    // The claimant's word that it has no lane moves the session to the
    // Bridge before either client sends a byte: an idle session is not cut
    // at the end of the owner's wait for its lane. A refused dial is known
    // at once.
    let (i, tg) = paired_on_the_bridge(&a, &b, "fallback-2").await;
    assert_eq!(a.metric("dtcp_lane_waits_expired_total").await, 0.0);
    exchange(i, tg, 4 << 20, 22).await;
    assert_eq!(
        b.metric("dtcp_lane_dials_total{outcome=\"refused\"}").await,
        1.0
    );
    a.wait_for(
        "dtcp_sessions_completed_total{path=\"forwarded\",outcome=\"closed\"}",
        2.0,
    )
    .await;
    // With `--lane-pool 0` nothing was dialed ahead.
    assert_eq!(pooled(&b, "dialed").await, 2.0);
    for outcome in ["taken", "aged_out", "closed", "failed", "drained"] {
        assert_eq!(pooled(&b, outcome).await, 0.0, "{outcome}");
    }
    assert_eq!(b.metric("dtcp_lane_pool_idle").await, 0.0);
}

/// A lane dial that the owner's port never answers (its SYN dropped, as a
/// firewall that drops packets does) is given up after
/// `LANE_DIAL_TIMEOUT`, and the session goes on the Bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_dial_that_times_out_leaves_the_session_on_the_bridge() {
    let redis = RedisServer::start();
    // A short queue, so that a few connections fill it; and no lane dialed
    // ahead, before the port stopped answering.
    let (a, b, proxy, _) = behind_proxy_queueing(&redis, &[("--lane-pool", "0")], 4).await;
    // The plane's HTTP/2 connection goes through the proxy first.
    let (i, tg) = pair(a.addr, b.addr, &triple("dial-timeout-1")).await;
    exchange(i, tg, 1 << 20, 51).await;
    a.wait_for("dtcp_forwarded_sessions_total{via=\"lane\"}", 1.0)
        .await;
    let _queued = proxy.drop_new().await;
    let (i, tg) = paired_on_the_bridge(&a, &b, "dial-timeout-2").await;
    assert_eq!(
        b.metric("dtcp_lane_dials_total{outcome=\"timeout\"}").await,
        1.0
    );
    assert_eq!(a.metric("dtcp_lane_waits_expired_total").await, 0.0);
    exchange(i, tg, 4 << 20, 52).await;
    a.wait_for(
        "dtcp_sessions_completed_total{path=\"forwarded\",outcome=\"closed\"}",
        2.0,
    )
    .await;
    assert_eq!(
        a.metric("dtcp_forwarded_sessions_total{via=\"lane\"}")
            .await,
        1.0
    );
}

/// Pairs `name` (CREATE on `owner`, CONNECT on `other`) while the owner's
/// lane port cannot be dialed, and checks that the session went on the
/// Bridge (its first) within the dial's bound: the Target's OK waits for
/// the dial's end, at most `LANE_DIAL_TIMEOUT`.
async fn paired_on_the_bridge(owner: &Relay, other: &Relay, name: &str) -> (TcpStream, TcpStream) {
    let sent = Instant::now();
    let paired = pair(owner.addr, other.addr, &triple(name)).await;
    owner
        .wait_for("dtcp_forwarded_sessions_total{via=\"bridge\"}", 1.0)
        .await;
    let took = sent.elapsed();
    assert!(
        took < LANE_DIAL_TIMEOUT + DIAL_MARGIN,
        "on the Bridge {took:?} after the CONNECT"
    );
    paired
}

/// A lane the network swallows: dialed, written, never attached. The owner
/// gives it up after its wait and cuts the session, so that both clients
/// see a reset within seconds, never a hang with bytes going nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_that_never_attaches_is_cut_not_left_hanging() {
    let redis = RedisServer::start();
    // Each claim dials its lane after the proxy starts swallowing.
    let (a, b, proxy, _) = behind_proxy(&redis, &[("--lane-pool", "0")]).await;
    // The plane's HTTP/2 connection goes through the proxy first.
    let (i, tg) = pair(a.addr, b.addr, &triple("swallowed-1")).await;
    exchange(i, tg, 4096, 41).await;
    proxy.swallow_new();
    let (mut i, mut tg) = pair(a.addr, b.addr, &triple("swallowed-2")).await;
    // The owner's wait (`LANE_WAIT`) runs from its `paired`, before the
    // Target's OK.
    let paired = Instant::now();
    i.write_all(b"into the void").await.unwrap();
    tg.write_all(b"and back").await.unwrap();
    for (peer, side) in [(&mut i, "initiator"), (&mut tg, "target")] {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), peer.read_to_end(&mut got)).await;
        match read {
            Err(_) => panic!("the {side} was left hanging"),
            Ok(Ok(_)) => panic!(
                "the {side} saw a FIN after {} bytes, not a reset",
                got.len()
            ),
            Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{side}"),
        }
        let took = paired.elapsed();
        assert!(
            took < LANE_WAIT + WAIT_MARGIN,
            "the {side} reset {took:?} after the OK"
        );
    }
    a.wait_for("dtcp_lane_waits_expired_total", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_lanes_and_nodes_with_them_pair_both_ways() {
    let redis = RedisServer::start();
    // `--no-lanes` stands for a node of a version without lanes.
    let old = NodeOptions::cluster(&[redis.url()])
        .flag("--no-lanes")
        .start();
    let new = NodeOptions::cluster(&[redis.url()]).start();
    for (owner, claimant, name) in [(&old, &new, "old-owner"), (&new, &old, "new-owner")] {
        let (i, tg) = pair(owner.addr, claimant.addr, &triple(name)).await;
        exchange(i, tg, 2 << 20, 31).await;
        owner
            .wait_for("dtcp_forwarded_sessions_total{via=\"bridge\"}", 1.0)
            .await;
        assert_eq!(
            owner
                .metric("dtcp_forwarded_sessions_total{via=\"lane\"}")
                .await,
            0.0,
            "{name}"
        );
    }
    // The new node dialed a lane to the old one, which offered none.
    assert_eq!(
        new.metric("dtcp_lane_dials_total{outcome=\"ok\"}").await,
        0.0
    );
    assert_eq!(
        new.metric("dtcp_lane_dials_total{outcome=\"declined\"}")
            .await,
        1.0
    );
    // Once: the next sessions it claims from the old node dial none.
    for n in 0..3 {
        let (i, tg) = pair(old.addr, new.addr, &triple(&format!("again-{n}"))).await;
        exchange(i, tg, 4096, 32 + n).await;
    }
    old.wait_for("dtcp_forwarded_sessions_total{via=\"bridge\"}", 4.0)
        .await;
    assert_eq!(
        new.metric("dtcp_lane_dials_total{outcome=\"declined\"}")
            .await,
        1.0,
        "a node that offered no lane is not dialed one again at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_close_crosses_a_lane_each_way() {
    let redis = RedisServer::start();
    let a = NodeOptions::cluster(&[redis.url()]).start();
    let b = NodeOptions::cluster(&[redis.url()]).start();
    let (mut i, mut tg) = pair(a.addr, b.addr, &triple("half-close")).await;
    // Paired on a lane, the session's Bridge closes on both nodes (an idle
    // session then costs each node its sockets and pump, no HTTP/2 stream);
    // the session goes on without it.
    a.wait_for("dtcp_lanes_active{role=\"server\"}", 1.0).await;
    b.wait_for("dtcp_lanes_active{role=\"client\"}", 1.0).await;
    a.wait_for("dtcp_lane_bridges_open{role=\"server\"}", 0.0)
        .await;
    b.wait_for("dtcp_lane_bridges_open{role=\"client\"}", 0.0)
        .await;
    i.write_all(b"to the target").await.unwrap();
    i.shutdown().await.unwrap();
    assert_eq!(read_all(&mut tg).await, b"to the target", "then a FIN");
    tg.write_all(b"after the initiator's FIN").await.unwrap();
    tg.shutdown().await.unwrap();
    assert_eq!(read_all(&mut i).await, b"after the initiator's FIN");
    a.wait_for(
        "dtcp_sessions_completed_total{path=\"forwarded\",outcome=\"closed\"}",
        1.0,
    )
    .await;
    assert_eq!(
        a.metric("dtcp_forwarded_sessions_total{via=\"lane\"}")
            .await,
        1.0
    );
}

/// Under plane TLS a forwarded session crosses on a lane that is TLS too:
/// its handshake agrees on the lane's own protocol (docs/PROTOCOL.md
/// section 7.5), and its preamble and the session's bytes are inside it.
/// Half-closes cross each way, and what a listener between the nodes
/// captures holds neither the session's bytes nor a lane's preamble.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_plane_tls_a_session_crosses_on_a_tls_lane_and_no_byte_in_the_clear() {
    let (dir, cert_file, key_file) = plane_certificate("lanes-tls");
    let (cert_file, key_file) = (cert_file.as_str(), key_file.as_str());
    let redis = RedisServer::start();
    let tls = [
        ("--forward-tls-cert", cert_file),
        ("--forward-tls-key", key_file),
    ];
    let (a, b, proxy, plane) = behind_proxy(&redis, &tls).await;
    let marker = b"a session's plaintext, which only the clients may read";
    let (mut i, mut tg) = pair(a.addr, b.addr, &triple("tls")).await;
    // The Target's half first: its FIN crosses, and the Initiator's bytes
    // still flow the other way after it.
    tg.write_all(marker).await.unwrap();
    tg.shutdown().await.unwrap();
    assert_eq!(read_all(&mut i).await, marker, "then a FIN");
    i.write_all(marker).await.unwrap();
    i.write_all(marker).await.unwrap();
    i.shutdown().await.unwrap();
    assert_eq!(read_all(&mut tg).await, [&marker[..], marker].concat());
    a.wait_for(
        "dtcp_sessions_completed_total{path=\"forwarded\",outcome=\"closed\"}",
        1.0,
    )
    .await;
    assert_eq!(
        a.metric("dtcp_forwarded_sessions_total{via=\"lane\"}")
            .await,
        1.0,
        "the session went on a lane"
    );
    assert_eq!(
        a.metric("dtcp_forwarded_sessions_total{via=\"bridge\"}")
            .await,
        0.0
    );
    assert_eq!(b.metric("dtcp_lane_dials_total{outcome=\"ok\"}").await, 1.0);
    let captured = proxy.captured();
    assert!(
        captured.len() >= 2,
        "the plane's HTTP/2 connection and a lane crossed the proxy"
    );
    for bytes in captured {
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "plaintext between the nodes"
        );
        assert!(
            !bytes.windows(LANE_MAGIC.len()).any(|w| w == LANE_MAGIC),
            "a lane's preamble in the clear"
        );
        assert_eq!(bytes.first(), Some(&0x16), "every connection is TLS");
    }

    // A client's reset crosses the TLS lane as a reset, never as a FIN.
    let (mut i, tg) = pair(a.addr, b.addr, &triple("tls-reset")).await;
    socket2::SockRef::from(&tg)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(tg);
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), i.read(&mut buf));
    match read.await.expect("the initiator's connection ended") {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Ok(n) => panic!("the initiator read {n} bytes and an EOF, not a reset"),
    }
    a.wait_for(
        "dtcp_sessions_completed_total{path=\"forwarded\",outcome=\"reset\"}",
        1.0,
    )
    .await;
    assert_eq!(
        a.metric("dtcp_forwarded_sessions_total{via=\"lane\"}")
            .await,
        2.0
    );

    // Inside TLS, a lane's token is checked as on a plain lane.
    let rogue = PlaneAuth::new(Some(Keyring::new(Secrets::from_lines("not-the-secret"))));
    let forged = mint_token(
        &rogue,
        &a.node_id,
        &b.node_id,
        &[7; 32],
        4e12 as u64,
        [1; 16],
    );
    let cert_pem = std::fs::read_to_string(cert_file).unwrap();
    assert_eq!(attach_tls(plane, &cert_pem, &preamble(&forged)).await, None);
    a.wait_for("dtcp_auth_failures_total{reason=\"lane_token\"}", 1.0)
        .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node of a cluster on `redis` for the bench's crowd (whose clients
/// are all 127.0.0.1: the per-address shares lifted), with `plane_cap`
/// places for connections from anyone awaiting their first byte
/// (`--plane-max-connections`).
fn crowd_node(redis: &RedisServer, plane_cap: u32) -> Relay {
    NodeOptions::cluster(&[redis.url()])
        .arg("--max-pending-per-ip", 100_000)
        .arg("--max-connections-per-ip", 100_000)
        .arg("--max-sessions-per-ip", 100_000)
        .arg("--max-connection-rate-per-ip", 0)
        .arg("--plane-max-connections", plane_cap)
        .start()
}

/// `dtcp-bench` `scenario`, `CREATE`s on `a` and `CONNECT`s on `b`.
async fn bench_across(a: &Relay, b: &Relay, scenario: &[&str]) -> std::process::Output {
    tokio::process::Command::new(bin("dtcp-bench"))
        .arg("--create-on")
        .arg(a.addr.to_string())
        .arg("--connect-on")
        .arg(b.addr.to_string())
        .arg("--relay-pid")
        .arg(format!("{},{}", a.pid(), b.pid()))
        .arg("--json")
        .args(scenario)
        .output()
        .await
        .expect("running dtcp-bench")
}

/// Thousands of lane sessions between two nodes, held together then closed
/// at once, then more pairs: each session's Bridge beside its lane is ended
/// at both ends, not dropped half-open, so the plane's one HTTP/2
/// connection between the nodes never reaches HTTP/2's limit of 1,024
/// streams reset and lives on (`bench/compare.sh` once saw it closed,
/// failing every Bridge on it; this test has not caught that by itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_lane_sessions_leave_the_plane_connection_up() {
    const HELD: usize = 2_000;
    const PAIRS: usize = 2_000;
    let redis = RedisServer::start();
    let (a, b) = (crowd_node(&redis, 64), crowd_node(&redis, 64));
    a.wait_for("dtcp_nodes_alive", 2.0).await;
    b.wait_for("dtcp_nodes_alive", 2.0).await;
    // Sessions held open together, then all closed at once (the way a
    // node's many clients end), then pairs at concurrency 32.
    let (held, pairs) = (HELD.to_string(), PAIRS.to_string());
    for scenario in [
        &["hold", "--count", &held][..],
        &["pair", "--pairs", &pairs, "--concurrency", "32"],
    ] {
        let out = bench_across(&a, &b, scenario).await;
        assert!(
            out.status.success(),
            "{scenario:?}: a pair failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The bench's warm-up pairs come on top.
    let a = &a;
    eventually(
        Duration::from_secs(10),
        "every session on a lane",
        || async move {
            a.metric("dtcp_forwarded_sessions_total{via=\"lane\"}")
                .await
                >= (HELD + PAIRS) as f64
        },
    )
    .await;
    for node in [a, &b] {
        let failed = node
            .logs()
            .iter()
            .filter(|l| {
                l["message"] == "bridge failed" || l["fields"]["message"] == "bridge failed"
            })
            .count();
        assert_eq!(failed, 0, "Bridges failed");
    }
    // And one more, on the same plane connection.
    let (i, tg) = pair(a.addr, b.addr, &triple("after-many")).await;
    exchange(i, tg, 1 << 20, 41).await;
}

/// A burst of sessions held across two nodes whose owner has 2 places for
/// connections from anyone awaiting their first byte
/// (`--plane-max-connections 2`): the claimant's lanes come from a live
/// peer's address, so each whose first byte comes a moment after its
/// accept waits for it among the lanes attaching, and none is reset for
/// want of a place (among 2 places, lanes late by a moment while two
/// others waited were reset, their sessions on the Bridge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_peers_lanes_is_not_reset_at_the_plane_cap() {
    const HELD: usize = 500;
    let redis = RedisServer::start();
    let (a, b) = (crowd_node(&redis, 2), crowd_node(&redis, 64));
    a.wait_for("dtcp_nodes_alive", 2.0).await;
    b.wait_for("dtcp_nodes_alive", 2.0).await;
    a.wait_for("dtcp_peer_addresses", 1.0).await;
    let out = bench_across(&a, &b, &["hold", "--count", &HELD.to_string()]).await;
    assert!(
        out.status.success(),
        "a pair failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at_cap = a
        .metric(
            "dtcp_listener_connections_closed_total{listener=\"plane\",reason=\"max_connections\"}",
        )
        .await;
    let dials = |outcome: &str| format!("dtcp_lane_dials_total{{outcome=\"{outcome}\"}}");
    let via = |via: &str| format!("dtcp_forwarded_sessions_total{{via=\"{via}\"}}");
    let (reset, timeout) = (
        b.metric(&dials("reset")).await,
        b.metric(&dials("timeout")).await,
    );
    let (lanes, bridge) = (a.metric(&via("lane")).await, a.metric(&via("bridge")).await);
    eprintln!(
        "a burst of {HELD} held: {lanes} sessions on lanes, {bridge} on the Bridge; lane dials reset {reset}, timed out {timeout}; {at_cap} plane connections reset at the cap"
    );
    assert_eq!(
        at_cap, 0.0,
        "none of the peer's connections reset at the cap"
    );
    assert_eq!(reset, 0.0, "no lane reset before its token");
    // A dial that missed its 1 s on a loaded machine leaves its session on
    // the Bridge, which is no reset at the cap.
    assert!(
        lanes + timeout >= HELD as f64,
        "the held sessions on lanes: {lanes} (dials timed out: {timeout})"
    );
}

/// Each lane a claim takes dials one more into its peer's pool: after the
/// first pair, the claims take lanes dialed ahead, and their sessions'
/// bytes cross them intact. A pooled lane nobody takes within its age is
/// closed and not replaced, and the next claim dials its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_pairs_take_lanes_dialed_ahead_and_unused_ones_age_out() {
    let redis = RedisServer::start();
    let a = NodeOptions::cluster(&[redis.url()]).start();
    let b = NodeOptions::cluster(&[redis.url()])
        .arg("--lane-pool", "8")
        .start();
    for n in 0..4u64 {
        if n > 0 {
            // The lane the last claim dialed into the pool in its place.
            b.wait_for("dtcp_lane_pool_idle", 1.0).await;
        }
        let (i, tg) = pair(a.addr, b.addr, &triple(&format!("pooled-{n}"))).await;
        exchange(i, tg, 1 << 20, 50 + n).await;
    }
    assert_eq!(
        pooled(&b, "dialed").await,
        1.0,
        "only the first claim dialed"
    );
    assert_eq!(pooled(&b, "taken").await, 3.0);
    a.wait_for("dtcp_forwarded_sessions_total{via=\"lane\"}", 4.0)
        .await;
    assert_eq!(
        a.metric("dtcp_forwarded_sessions_total{via=\"bridge\"}")
            .await,
        0.0
    );
    assert_eq!(b.metric("dtcp_lane_dials_total{outcome=\"ok\"}").await, 4.0);
    for reason in ["lane_token", "lane_expired", "lane_replay"] {
        assert_eq!(refused(&a, reason).await, 0.0, "{reason}");
    }
    assert_eq!(a.metric("dtcp_lane_waits_expired_total").await, 0.0);

    // The last claim's lane in its place, never taken: it ages out (3 s).
    b.wait_for("dtcp_lane_pool_idle", 1.0).await;
    b.wait_for("dtcp_lane_pool_lanes_total{outcome=\"aged_out\"}", 1.0)
        .await;
    assert_eq!(b.metric("dtcp_lane_pool_idle").await, 0.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        b.metric("dtcp_lane_pool_idle").await,
        0.0,
        "an idle node dials nothing in its place"
    );
    let (i, tg) = pair(a.addr, b.addr, &triple("pooled-after")).await;
    exchange(i, tg, 1 << 20, 60).await;
    assert_eq!(pooled(&b, "dialed").await, 2.0, "a fresh lane, dialed");
    assert_eq!(pooled(&b, "taken").await, 3.0);
    a.wait_for("dtcp_forwarded_sessions_total{via=\"lane\"}", 5.0)
        .await;
}

/// The owner node killed and started again on its forwarding port while
/// the claimant holds lanes dialed ahead to it: those lanes are closed
/// (reset by the dying process), skipped, and the next pairs pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_lanes_to_a_restarted_owner_are_skipped() {
    let redis = RedisServer::start();
    let plane = format!("127.0.0.1:{}", free_port());
    let mut a = NodeOptions::cluster(&[redis.url()])
        .forward_listen(&plane)
        .start();
    let b = NodeOptions::cluster(&[redis.url()])
        .arg("--lane-pool", "8")
        .start();
    let (i, tg) = pair(a.addr, b.addr, &triple("before-restart")).await;
    exchange(i, tg, 4096, 71).await;
    b.wait_for("dtcp_lane_pool_idle", 1.0).await;
    a.kill();
    a.restart();
    for n in 0..3u64 {
        let (i, tg) = pair(a.addr, b.addr, &triple(&format!("after-restart-{n}"))).await;
        exchange(i, tg, 1 << 20, 72 + n).await;
    }
    // Closed, or aged out if the restart took its age.
    let skipped = pooled(&b, "closed").await + pooled(&b, "aged_out").await;
    assert!(skipped >= 1.0, "the lane to the old process was skipped");
    a.wait_for("dtcp_forwarded_sessions_total{via=\"lane\"}", 3.0)
        .await;
    assert_eq!(a.metric("dtcp_lane_waits_expired_total").await, 0.0);
}

/// Under plane TLS the lanes dialed ahead are TLS, handshaken before the
/// claim: a later pair takes one, its bytes cross intact, and nothing
/// between the nodes is in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_plane_tls_lanes_dialed_ahead_are_tls() {
    let (dir, cert_file, key_file) = plane_certificate("pool-tls");
    let (cert_file, key_file) = (cert_file.as_str(), key_file.as_str());
    let redis = RedisServer::start();
    let tls = [
        ("--forward-tls-cert", cert_file),
        ("--forward-tls-key", key_file),
        ("--lane-pool", "8"),
    ];
    let (a, b, proxy, _) = behind_proxy(&redis, &tls).await;
    for n in 0..3u64 {
        if n > 0 {
            b.wait_for("dtcp_lane_pool_idle", 1.0).await;
        }
        let (i, tg) = pair(a.addr, b.addr, &triple(&format!("tls-pooled-{n}"))).await;
        exchange(i, tg, 1 << 20, 80 + n).await;
    }
    assert_eq!(pooled(&b, "taken").await, 2.0);
    a.wait_for("dtcp_forwarded_sessions_total{via=\"lane\"}", 3.0)
        .await;
    let captured = proxy.captured();
    assert!(
        captured.len() >= 4,
        "the plane's connection, the dialed lane and two pooled ones"
    );
    for bytes in captured {
        assert_eq!(bytes.first(), Some(&0x16), "every connection is TLS");
        assert!(
            !bytes.windows(LANE_MAGIC.len()).any(|w| w == LANE_MAGIC),
            "a lane's preamble in the clear"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
