//! XEP-0065 mode's relay side (docs/PROTOCOL.md section 6), in raw bytes: the
//! SOCKS5 handshake and its refusals, the Target-then-requester pairing,
//! nothing forwarded before activation, the pending TTL, and activated pairs
//! through one node and across two, activated through the component of a
//! real Prosody by a real XMPP client (slixmpp).

use std::time::Duration;

use dtcp_tests::pattern::{pattern_digest, send_pattern};
use dtcp_tests::redis::{RedisServer, free_port};
use dtcp_tests::relay::{NodeOptions, Relay};
use dtcp_tests::xmpp::{COMPONENT, COMPONENT_SECRET, DOMAIN, Prosody, Slixmpp};
use dtcp_wire::socks5::{self, StreamHash};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for a byte that must come.
const READ: Duration = Duration::from_secs(5);

/// A node in XEP-0065 mode whose component points at `server` (a port with
/// nobody behind it is fine for tests that never activate).
fn xmpp_node(server: &str, options: NodeOptions) -> Relay {
    options
        .arg("--xmpp-component", COMPONENT)
        .arg("--xmpp-server", server)
        .arg("--xmpp-secret", COMPONENT_SECRET)
        .arg("--socks5-advertise", "127.0.0.1:7625")
        .start()
}

/// A port nothing listens on.
fn nowhere() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Writes `bytes` and reads until the relay closes: what it answered.
async fn exchange(relay: &Relay, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(READ, s.read_to_end(&mut got))
        .await
        .expect("the relay closes")
        .expect("a close, not a reset");
    got
}

/// A request with `hash` as its domain name, then patched by `edit`.
fn request(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let hash: StreamHash = "0123456789abcdef0123456789abcdef01234567".parse().unwrap();
    let mut r = socks5::encode_request(&hash).to_vec();
    edit(&mut r);
    r
}

/// Greeting and request for `hash`; returns the connection once it has its
/// success reply, each reply read as the one segment it was written in.
async fn connect(relay: &Relay, hash: &StreamHash) -> TcpStream {
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(&socks5::GREETING).await.unwrap();
    let mut method = [0u8; 2];
    s.read_exact(&mut method).await.unwrap();
    assert_eq!(method, [0x05, 0x00]);
    s.write_all(&socks5::encode_request(hash)).await.unwrap();
    let mut reply = [0u8; socks5::REQUEST_LEN];
    let n = tokio::time::timeout(READ, s.read(&mut reply))
        .await
        .expect("a reply")
        .unwrap();
    assert_eq!(n, reply.len(), "the success reply in one segment");
    assert_eq!(reply, socks5::success_reply(hash));
    s
}

/// Asserts that nothing arrives on `s` for a moment.
async fn silent(s: &mut TcpStream, what: &str) {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(300), s.read(&mut byte)).await;
    assert!(read.is_err(), "{what}: {read:?} before activation");
}

/// Asserts that the relay cut `s` (a reset, or an end without data).
async fn cut(s: &mut TcpStream, limit: Duration) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("expected a cut, got {other:?}"),
    }
}

/// A fresh stream hash, as the component computes it.
fn hash_of(sid: &str, requester: &str, target: &str) -> StreamHash {
    StreamHash::of(sid, requester, target)
}

#[tokio::test]
async fn every_bad_request_gets_its_reply_and_a_close() {
    let relay = xmpp_node(&nowhere(), NodeOptions::new().handshake_timeout(0.5));
    let error = |code| socks5::error_reply(code).to_vec();
    use socks5::ReplyCode::{AddressTypeNotSupported, CommandNotSupported, GeneralFailure};
    // What follows a good greeting, and the reply that follows `05 00`.
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "wrong request version",
            request(|r| r[0] = 4),
            error(GeneralFailure),
        ),
        ("BIND", request(|r| r[1] = 2), error(CommandNotSupported)),
        (
            "UDP ASSOCIATE",
            request(|r| r[1] = 3),
            error(CommandNotSupported),
        ),
        (
            "IPv4 address",
            vec![5, 1, 0, 1, 127, 0, 0, 1, 0, 80],
            error(AddressTypeNotSupported),
        ),
        (
            "IPv6 address",
            request(|r| r[3] = 4),
            error(AddressTypeNotSupported),
        ),
        (
            "hash too short",
            request(|r| {
                r[4] = 39;
                r.remove(5);
            }),
            error(GeneralFailure),
        ),
        (
            "uppercase hash",
            request(|r| r[5..45].make_ascii_uppercase()),
            error(GeneralFailure),
        ),
        ("a port", request(|r| r[46] = 80), error(GeneralFailure)),
    ];
    for (what, bytes, reply) in cases {
        let mut input = socks5::GREETING.to_vec();
        input.extend_from_slice(&bytes);
        let mut expected = vec![5, 0];
        expected.extend_from_slice(&reply);
        assert_eq!(exchange(&relay, &input).await, expected, "{what}");
    }
    // A greeting without "no authentication": `05 FF`, and a close.
    assert_eq!(exchange(&relay, &[5, 2, 1, 2]).await, [5, 0xff]);
    // A handshake that never ends is closed at the handshake timeout.
    let started = std::time::Instant::now();
    assert_eq!(exchange(&relay, &socks5::GREETING).await, [5, 0]);
    assert!(started.elapsed() >= Duration::from_millis(400));

    let refused = |verb: &str, outcome: &str| {
        format!("dtcp_commands_total{{protocol=\"socks5\",verb=\"{verb}\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(
        relay
            .metric(&refused("unknown", "command-not-supported"))
            .await,
        2.0
    );
    assert_eq!(
        relay
            .metric(&refused("unknown", "address-type-not-supported"))
            .await,
        2.0
    );
    assert_eq!(
        relay.metric(&refused("unknown", "general-failure")).await,
        4.0
    );
    assert_eq!(
        relay
            .metric(&refused("unknown", "no-acceptable-method"))
            .await,
        1.0
    );
    relay.wait_for("dtcp_connections_open", 0.0).await;
    assert_eq!(relay.metric("dtcp_pending_registrations").await, 0.0);
}

#[tokio::test]
async fn a_third_connection_is_refused_and_an_unactivated_pair_is_cut_at_the_ttl() {
    let relay = xmpp_node(&nowhere(), NodeOptions::new().pending_ttl(1.5));
    let hash = hash_of(
        "sid-ttl",
        "romeo@localhost/orchard",
        "juliet@localhost/balcony",
    );
    let mut target = connect(&relay, &hash).await;
    relay.wait_for("dtcp_pending_registrations", 1.0).await;
    let mut requester = connect(&relay, &hash).await;
    relay
        .wait_for("dtcp_socks5_pairs_awaiting_activation", 1.0)
        .await;
    assert_eq!(relay.metric("dtcp_pending_registrations").await, 0.0);

    // A third connection with the same hash: 02 and a close.
    let mut third = socks5::GREETING.to_vec();
    third.extend_from_slice(&socks5::encode_request(&hash));
    let mut expected = vec![5, 0];
    expected.extend_from_slice(&socks5::error_reply(socks5::ReplyCode::NotAllowed));
    assert_eq!(exchange(&relay, &third).await, expected);

    // Bytes sent before activation go nowhere.
    target.write_all(b"too early").await.unwrap();
    silent(&mut requester, "the requester received").await;

    // Never activated: both cut when the pending TTL runs out.
    cut(&mut target, Duration::from_secs(3)).await;
    cut(&mut requester, Duration::from_secs(1)).await;
    relay
        .wait_for("dtcp_socks5_pairs_awaiting_activation", 0.0)
        .await;

    // A Target alone: cut at the TTL too, and its registration gone.
    let lone = hash_of(
        "sid-lone",
        "romeo@localhost/orchard",
        "juliet@localhost/balcony",
    );
    let mut alone = connect(&relay, &lone).await;
    relay.wait_for("dtcp_pending_registrations", 1.0).await;
    cut(&mut alone, Duration::from_secs(3)).await;
    relay.wait_for("dtcp_pending_registrations", 0.0).await;
    // A Target that hangs up is withdrawn at once; its hash is free again.
    let quitter = connect(&relay, &lone).await;
    relay.wait_for("dtcp_pending_registrations", 1.0).await;
    drop(quitter);
    relay.wait_for("dtcp_pending_registrations", 0.0).await;
    relay.wait_for("dtcp_connections_open", 0.0).await;
    assert_eq!(
        relay.metric("dtcp_store_registrations").await,
        0.0,
        "nothing left in the store"
    );
}

/// Sends `total` pattern bytes on `s` and reads `total` of the peer's
/// (seeded `peer_seed`) after `early`: the digests of what came in.
async fn both_ways(
    s: TcpStream,
    seed: u64,
    peer_seed: u64,
    total: u64,
    early: &[u8],
) -> (Vec<u8>, [u8; 32]) {
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move { send_pattern(&mut w, seed, total).await });
    let mut first = vec![0u8; early.len()];
    tokio::time::timeout(READ, r.read_exact(&mut first))
        .await
        .expect("early bytes")
        .unwrap();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = tokio::time::timeout(READ, r.read(&mut buf))
            .await
            .expect("data keeps coming")
            .unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
        hash.update(&buf[..n]);
    }
    assert_eq!(got, total);
    assert_eq!(
        <[u8; 32]>::from(hash.finalize()),
        pattern_digest(peer_seed, total)
    );
    writer.await.unwrap();
    (first, pattern_digest(seed, total))
}

/// Has slixmpp (`romeo@localhost/orchard`) activate `sid` toward `target`:
/// the hash it computed, and the IQ's outcome.
async fn activate(prosody: &Prosody, sid: &str, target: &str) -> (String, serde_json::Value) {
    let mut c = Slixmpp::start(
        prosody,
        "romeo",
        "orchard",
        json!({"op": "activate", "sid": sid, "target": target}),
    );
    let computed = c.next().await;
    let outcome = c.next().await;
    c.finish().await;
    (computed["hash"].as_str().unwrap().to_owned(), outcome)
}

/// The requester's full JID, as slixmpp binds it.
fn requester() -> String {
    format!("romeo@{DOMAIN}/orchard")
}

#[tokio::test]
async fn an_activated_pair_moves_megabytes_both_ways_and_nothing_early() {
    let prosody = Prosody::start(&["romeo"]);
    let relay = xmpp_node(&prosody.component_addr(), NodeOptions::new());
    relay
        .wait_for("dtcp_xmpp_link{state=\"connected\"}", 1.0)
        .await;
    let target_jid = format!("juliet@{DOMAIN}/balcony");
    let hash = hash_of("sid-one", &requester(), &target_jid);
    let mut target = connect(&relay, &hash).await;
    let mut req = connect(&relay, &hash).await;
    // Early bytes, both ways: held back until the activation.
    target.write_all(b"early from the target").await.unwrap();
    req.write_all(b"early from the requester").await.unwrap();
    silent(&mut req, "the requester received").await;
    silent(&mut target, "the target received").await;

    let (computed, outcome) = activate(&prosody, "sid-one", &target_jid).await;
    assert_eq!(computed, hash.to_string(), "slixmpp hashes as the relay");
    assert_eq!(outcome["type"], "result", "{outcome}");

    // The early bytes arrive on their own, before either side sends more
    // (a client that sent all it had before the activation, as curl does,
    // must not wait for a next write to have it delivered).
    let mut got = [0u8; 24];
    tokio::time::timeout(READ, req.read_exact(&mut got[..21]))
        .await
        .expect("the target's early bytes, alone")
        .unwrap();
    assert_eq!(&got[..21], b"early from the target");
    tokio::time::timeout(READ, target.read_exact(&mut got))
        .await
        .expect("the requester's early bytes, alone")
        .unwrap();
    assert_eq!(&got, b"early from the requester");

    const TOTAL: u64 = 3 << 20;
    let t = tokio::spawn(both_ways(target, 1, 2, TOTAL, b""));
    let r = tokio::spawn(both_ways(req, 2, 1, TOTAL, b""));
    let (t, r) = (t.await.unwrap(), r.await.unwrap());
    assert!(t.0.is_empty() && r.0.is_empty());

    // Once is all: a second activation of the same stream is refused.
    let (_, again) = activate(&prosody, "sid-one", &target_jid).await;
    assert_eq!(again["condition"], "item-not-found", "{again}");
    relay
        .wait_for(
            "dtcp_sessions_completed_total{path=\"local\",outcome=\"closed\",protocol=\"socks5\"}",
            1.0,
        )
        .await;
    assert_eq!(
        relay
            .metric("dtcp_xmpp_activations_total{outcome=\"activated\"}")
            .await,
        1.0
    );
    // Pairing latency counts the relay's part, once per pair, by protocol.
    assert_eq!(
        relay
            .metric("dtcp_pairing_latency_seconds_count{path=\"local\",protocol=\"socks5\"}")
            .await,
        1.0
    );
    assert_eq!(
        relay
            .metric("dtcp_pairing_latency_seconds_count{path=\"local\"}")
            .await,
        0.0,
        "no DTCP pairing"
    );
    relay
        .wait_for(
            "dtcp_sessions_active{path=\"local\",protocol=\"socks5\"}",
            0.0,
        )
        .await;
    relay
        .wait_for("dtcp_socks5_pairs_awaiting_activation", 0.0)
        .await;
    relay.wait_for("dtcp_connections_open", 0.0).await;
    // Its log line names the protocol, and the registration by its id.
    let id = dtcp_wire::RegistrationId::of_stream(&hash).to_string();
    let logs = relay.logs();
    let line = logs
        .iter()
        .find(|l| l["message"] == "session finished")
        .expect("a session line");
    assert_eq!(line["protocol"], "socks5", "{line}");
    assert_eq!(line["registration"], id.as_str(), "{line}");
}

#[tokio::test]
async fn a_pair_across_two_nodes_is_activated_through_a_third() {
    let redis = RedisServer::start();
    let prosody = Prosody::start(&["romeo"]);
    let urls = [redis.url()];
    let a = NodeOptions::cluster(&urls).accept_socks5().start();
    let b = NodeOptions::cluster(&urls).accept_socks5().start();
    let c = xmpp_node(&prosody.component_addr(), NodeOptions::cluster(&urls));
    c.wait_for("dtcp_xmpp_link{state=\"connected\"}", 1.0).await;
    let target_jid = format!("juliet@{DOMAIN}/balcony");
    let hash = hash_of("sid-two", &requester(), &target_jid);
    let target = connect(&a, &hash).await;
    a.wait_for("dtcp_pending_registrations", 1.0).await;
    let mut req = connect(&b, &hash).await;
    a.wait_for("dtcp_socks5_pairs_awaiting_activation", 1.0)
        .await;
    req.write_all(b"early").await.unwrap();
    silent(&mut req, "the requester received").await;
    // A third connection, on the third node: 02.
    let mut third = socks5::GREETING.to_vec();
    third.extend_from_slice(&socks5::encode_request(&hash));
    let mut expected = vec![5, 0];
    expected.extend_from_slice(&socks5::error_reply(socks5::ReplyCode::NotAllowed));
    assert_eq!(exchange(&c, &third).await, expected);

    let (_, outcome) = activate(&prosody, "sid-two", &target_jid).await;
    assert_eq!(outcome["type"], "result", "{outcome}");
    const TOTAL: u64 = 2 << 20;
    let t = tokio::spawn(both_ways(target, 3, 4, TOTAL, b"early"));
    let r = tokio::spawn(both_ways(req, 4, 3, TOTAL, b""));
    t.await.unwrap();
    r.await.unwrap();
    a.wait_for(
        "dtcp_sessions_completed_total{path=\"forwarded\",outcome=\"closed\",protocol=\"socks5\"}",
        1.0,
    )
    .await;
    assert_eq!(
        c.metric("dtcp_xmpp_activations_total{outcome=\"activated\"}")
            .await,
        1.0
    );
    // The pair's bytes, the requester's early ones included, crossed on the
    // lane the activation offered, not on the Bridge.
    assert_eq!(
        a.metric("dtcp_forwarded_sessions_total{via=\"lane\"}")
            .await,
        1.0
    );
    assert_eq!(
        a.metric("dtcp_forwarded_sessions_total{via=\"bridge\"}")
            .await,
        0.0
    );
    assert_eq!(b.metric("dtcp_lane_dials_total{outcome=\"ok\"}").await, 1.0);
    for node in [&a, &b, &c] {
        node.wait_for("dtcp_socks5_pairs_awaiting_activation", 0.0)
            .await;
        node.wait_for("dtcp_bridge_streams_active{role=\"client\"}", 0.0)
            .await;
        node.wait_for("dtcp_connections_open", 0.0).await;
    }

    // The node holding the Target dies before the activation: the
    // activation fails promptly with a stanza error.
    let hash = hash_of("sid-dead", &requester(), &target_jid);
    let _target = connect(&a, &hash).await;
    let _req = connect(&b, &hash).await;
    a.wait_for("dtcp_socks5_pairs_awaiting_activation", 1.0)
        .await;
    drop(a);
    let started = std::time::Instant::now();
    let (_, outcome) = activate(&prosody, "sid-dead", &target_jid).await;
    assert_eq!(outcome["type"], "error", "{outcome}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the activation's error came after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_pair_stays_activatable_when_the_store_loses_its_record() {
    let redis = RedisServer::start();
    let prosody = Prosody::start(&["romeo"]);
    let urls = [redis.url()];
    let a = NodeOptions::cluster(&urls).accept_socks5().start();
    let c = xmpp_node(&prosody.component_addr(), NodeOptions::cluster(&urls));
    c.wait_for("dtcp_xmpp_link{state=\"connected\"}", 1.0).await;
    // A node's first heartbeat finds no heartbeat of its own and writes its
    // pending records again, as after a loss: let it pass before the pair
    // exists, so that the rewrite counted below is the one after the flush.
    a.wait_for("dtcp_nodes_alive", 2.0).await;
    let target_jid = format!("juliet@{DOMAIN}/balcony");
    let hash = hash_of("sid-lost", &requester(), &target_jid);
    let target = connect(&a, &hash).await;
    let req = connect(&a, &hash).await;
    a.wait_for("dtcp_socks5_pairs_awaiting_activation", 1.0)
        .await;
    // The store forgets everything (a restart without persistence): the
    // owner writes the pair's record again, so the component's node finds it.
    redis.cli(&["FLUSHALL"]);
    a.wait_for("dtcp_store_rewritten_registrations_total", 1.0)
        .await;
    let (_, outcome) = activate(&prosody, "sid-lost", &target_jid).await;
    assert_eq!(outcome["type"], "result", "{outcome}");
    let t = tokio::spawn(both_ways(target, 5, 6, 64 * 1024, b""));
    let r = tokio::spawn(both_ways(req, 6, 5, 64 * 1024, b""));
    t.await.unwrap();
    r.await.unwrap();
    a.wait_for("dtcp_socks5_pairs_awaiting_activation", 0.0)
        .await;
}
