//! Only who belongs gets in: signed keys (docs/PROTOCOL.md section 5) on a lone
//! node and across nodes, store records the cluster did not write, Bridge
//! calls captured and replayed, and cluster secrets rotated under traffic.

use std::time::{Duration, Instant};

use dtcp_client::dtcp_wire::{Triple, Verb};
use dtcp_tests::*;
use tokio::net::TcpListener;

/// Every way a key is `forbidden`, each with the reason it is counted under.
fn forbidden_keys(name: &str) -> Vec<(&'static str, Triple)> {
    let plain = Triple::new(
        "not-a-signed-key",
        format!("initiator@a.example/{name}"),
        "target@b.example/res",
    )
    .unwrap();
    let swapped = {
        let t = signed_triple(name, KEY_SECRET, 60);
        Triple::new(t.key(), t.target(), t.initiator()).unwrap()
    };
    vec![
        ("bad_signature", plain),
        ("bad_signature", signed_triple(name, "another-secret", 60)),
        ("bad_signature", swapped),
        ("expired", signed_triple(name, KEY_SECRET, -10)),
        ("lifetime", signed_triple(name, KEY_SECRET, 86_400 + 600)),
    ]
}

async fn answer(addr: std::net::SocketAddr, verb: Verb, t: &Triple) -> Vec<u8> {
    let mut s = raw(addr, &command(verb, t)).await;
    read_all(&mut s).await
}

/// Each forbidden key on CREATE at `create` and on CONNECT at `connect`.
async fn every_case_is_forbidden(create: &Relay, connect: &Relay, name: &str) {
    for (i, (reason, t)) in forbidden_keys(name).into_iter().enumerate() {
        let sample = format!("dtcp_auth_failures_total{{reason=\"{reason}\"}}");
        let before = connect.metric(&sample).await;
        let reply = answer(create.addr, Verb::Create, &t).await;
        assert!(is_error(&reply, "forbidden"), "CREATE case {i}: {reply:?}");
        let reply = answer(connect.addr, Verb::Connect, &t).await;
        assert!(is_error(&reply, "forbidden"), "CONNECT case {i}: {reply:?}");
        assert!(
            connect.metric(&sample).await > before,
            "case {i} counted as {reason}"
        );
    }
}

#[tokio::test]
async fn signed_keys_on_a_lone_node() {
    let relay = Relay::start(&["--key-secret", KEY_SECRET, "--key-secret", "old-key-secret"]);
    every_case_is_forbidden(&relay, &relay, "lone").await;

    let t = signed_triple("lone-ok", KEY_SECRET, 60);
    let (i, tg) = pair(relay.addr, relay.addr, &t).await;
    exchange(i, tg, 64 * 1024, 1).await;
    // Single use: neither side can come back with it.
    let reply = answer(relay.addr, Verb::Create, &t).await;
    assert!(is_error(&reply, "forbidden"), "reused CREATE: {reply:?}");
    let reply = answer(relay.addr, Verb::Connect, &t).await;
    assert!(is_error(&reply, "forbidden"), "reused CONNECT: {reply:?}");
    assert!(
        relay
            .metric("dtcp_auth_failures_total{reason=\"reused\"}")
            .await
            >= 2.0
    );

    // Rotation: a key of the other configured secret pairs too.
    let old = signed_triple("lone-old", "old-key-secret", 60);
    let (i, tg) = pair(relay.addr, relay.addr, &old).await;
    exchange(i, tg, 1024, 2).await;

    // A CREATE that never paired leaves its key usable.
    let unpaired = signed_triple("lone-unpaired", KEY_SECRET, 60);
    let create = raw(relay.addr, &command(Verb::Create, &unpaired)).await;
    relay.wait_for("dtcp_pending_registrations", 1.0).await;
    drop(create);
    relay.wait_for("dtcp_pending_registrations", 0.0).await;
    let (i, tg) = pair(relay.addr, relay.addr, &unpaired).await;
    exchange(i, tg, 1024, 3).await;
}

#[tokio::test]
async fn signed_keys_across_nodes() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let args = ["--key-secret", KEY_SECRET, "--max-pending-per-ip", "1000"];
    let (a, b) = (cluster_node(&urls, &args), cluster_node(&urls, &args));
    a.wait_for("dtcp_nodes_alive", 2.0).await;
    every_case_is_forbidden(&a, &b, "cross").await;

    let t = signed_triple("cross-ok", KEY_SECRET, 60);
    let (i, tg) = pair(a.addr, b.addr, &t).await;
    exchange(i, tg, 64 * 1024, 4).await;
    // The used marker is written when the owner's session starts; wait for it.
    let key = reg_key(&t);
    eventually(Duration::from_secs(5), "the used marker", || {
        let v = redis.cli(&["GET", &key]);
        async move { v.trim() == "-" }
    })
    .await;
    // Another node, either command: forbidden.
    let reply = answer(b.addr, Verb::Connect, &t).await;
    assert!(
        is_error(&reply, "forbidden"),
        "reused CONNECT on B: {reply:?}"
    );
    let reply = answer(b.addr, Verb::Create, &t).await;
    assert!(
        is_error(&reply, "forbidden"),
        "reused CREATE on B: {reply:?}"
    );
    let reply = answer(a.addr, Verb::Create, &t).await;
    assert!(
        is_error(&reply, "forbidden"),
        "reused CREATE on A: {reply:?}"
    );
    // The marker lasts until the key expires, not for ever.
    let ttl: i64 = redis.cli(&["TTL", &key]).trim().parse().unwrap();
    assert!((1..=60).contains(&ttl), "marker TTL {ttl}");
}

/// A CREATE on `a`, pending; its record as `a` wrote it.
async fn pending_on(a: &Relay, redis: &RedisServer, t: &Triple) -> (tokio::net::TcpStream, String) {
    let before = a.metric("dtcp_pending_registrations").await;
    let create = raw(a.addr, &command(Verb::Create, t)).await;
    a.wait_for("dtcp_pending_registrations", before + 1.0).await;
    let record = redis.cli(&["GET", &reg_key(t)]).trim().to_owned();
    assert_eq!(record.split(' ').count(), 3, "a sealed record: {record}");
    (create, record)
}

#[tokio::test]
async fn poisoned_records_are_not_dialed_and_captured_calls_cannot_be_replayed() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let (a, b) = (cluster_node(&urls, &[]), cluster_node(&urls, &[]));
    a.wait_for("dtcp_nodes_alive", 2.0).await;
    let a_plane = a.forward.unwrap().to_string();

    let t = triple("poisoned");
    let other = triple("poisoned-other");
    let (mut initiator, record) = pending_on(&a, &redis, &t).await;
    let (_other_initiator, other_record) = pending_on(&a, &redis, &other).await;
    let key = reg_key(&t);

    let trap = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_addr = trap.local_addr().unwrap().to_string();
    let fields: Vec<&str> = record.split(' ').collect();
    let unsigned = format!("{} {trap_addr}", a.node_id);
    let copied = format!("{} {trap_addr} {}", a.node_id, fields[2]);
    // A real record, sealed by A, of another registration: its seal does not
    // cover this one, so B does not dial A for it (before seals covered the
    // registration id, it did).
    for (what, value) in [
        ("unsigned", unsigned),
        ("copied seal", copied),
        ("another registration's record", other_record),
    ] {
        let before = b
            .metric("dtcp_auth_failures_total{reason=\"bad_record\"}")
            .await;
        redis.cli(&["SET", &key, &value, "PX", "60000"]);
        let reply = answer(b.addr, Verb::Connect, &t).await;
        assert!(is_error(&reply, "unavailable"), "{what}: {reply:?}");
        assert!(
            b.metric("dtcp_auth_failures_total{reason=\"bad_record\"}")
                .await
                > before
        );
    }
    // Nobody dialed the trap.
    let dialed = tokio::time::timeout(Duration::from_millis(300), trap.accept()).await;
    assert!(dialed.is_err(), "the node dialed an unverified owner");

    // The secret leaked: a record sealed with it is dialed, and what the
    // trap receives holds no secret and opens nothing elsewhere.
    let leaked = sealed_record(SECRET, &t, &a.node_id, &trap_addr);
    redis.cli(&["SET", &key, &leaked, "PX", "60000"]);
    let capture = tokio::spawn(capture_one(trap, Duration::from_secs(10)));
    let reply = answer(b.addr, Verb::Connect, &t).await;
    assert!(
        is_error(&reply, "unavailable"),
        "the trap answered nothing: {reply:?}"
    );
    let captured = capture
        .await
        .unwrap()
        .expect("the node dialed the sealed record");
    assert_eq!(captured.path, "/dtcp.forward.v1.Forward/Bridge");
    assert!(captured.headers.iter().any(|(k, _)| k == "x-dtcp-auth"));
    assert!(
        !captured.contains(SECRET.as_bytes()),
        "the secret was sent: {captured:?}"
    );
    assert!(!captured.body.is_empty(), "the open frame arrived");

    // Replayed against the real owner, as captured and for another pending
    // registration: refused (unauthenticated), and counted.
    let before = a
        .metric("dtcp_auth_failures_total{reason=\"plane_mac\"}")
        .await;
    let status = replay(a.forward.unwrap(), &captured, captured.body.clone()).await;
    assert_eq!(status, "16", "replay as captured");
    let (this_id, other_id) = (t.registration_id(), other.registration_id());
    let rewritten = replace(&captured.body, this_id.as_bytes(), other_id.as_bytes());
    let mut headers = captured.clone();
    for (k, v) in &mut headers.headers {
        if k == "x-dtcp-auth" {
            let text = String::from_utf8(v.clone()).unwrap();
            *v = text
                .replace(&this_id.to_string(), &other_id.to_string())
                .replace(&trap_addr, &a_plane)
                .into_bytes();
        }
    }
    let status = replay(a.forward.unwrap(), &headers, rewritten).await;
    assert_eq!(
        status, "16",
        "replay rewritten to another registration and to A"
    );
    assert!(
        a.metric("dtcp_auth_failures_total{reason=\"plane_mac\"}")
            .await
            >= before + 2.0
    );

    // Nothing was claimed: with the true record back, both still pair.
    redis.cli(&["SET", &key, &record, "PX", "60000"]);
    let mut target = raw(b.addr, &command(Verb::Connect, &t)).await;
    assert_eq!(read_n(&mut target, 3).await, b"OK\0");
    assert_eq!(read_n(&mut initiator, 3).await, b"OK\0");
    let (i, tg) = pair(a.addr, b.addr, &triple("after-replay")).await;
    exchange(i, tg, 1024, 5).await;

    // Heartbeats the cluster did not write, unsealed and with a made-up
    // seal, live for a minute: no node counts them.
    let counted = "dtcp_store_operations_total{op=\"nodes_alive\"}";
    let (a_counts, b_counts) = (a.metric(counted).await, b.metric(counted).await);
    let until = ((unix_now() + 60) * 1000).to_string();
    // And beside a live node's own record, one with its id and seal but
    // another address: a Redis writer's bid to have its address taken for
    // a peer's (whose connections wait among the lanes attaching).
    let members = redis.cli(&["ZRANGE", "dtcp:nodes", "0", "-1"]);
    let live = members.lines().next().expect("a live node's record");
    let mut fields: Vec<&str> = live.split(' ').collect();
    assert_eq!(fields.len(), 3, "id, address, seal: {live}");
    fields[1] = "127.0.0.99:1";
    let beside = fields.join(" ");
    for forged in [
        "forged-a 127.0.0.1:1",
        "forged-b 127.0.0.1:2 c2VhbA",
        &beside,
    ] {
        redis.cli(&["ZADD", "dtcp:nodes", &until, forged]);
    }
    let listed = redis.cli(&["ZCOUNT", "dtcp:nodes", "-inf", "+inf"]);
    assert!(listed.trim().parse::<u32>().unwrap() >= 5, "{listed}");
    // Each node has counted the set twice since: once at least with the
    // forged entries in it.
    for (n, before) in [(&a, a_counts), (&b, b_counts)] {
        eventually(
            Duration::from_secs(15),
            "the nodes counted again",
            || async { n.metric(counted).await >= before + 2.0 },
        )
        .await;
    }
    for n in [&a, &b] {
        assert_eq!(n.metric("dtcp_nodes_alive").await, 2.0);
        // Its peer's one address (127.0.0.1), not the one beside it.
        assert_eq!(n.metric("dtcp_peer_addresses").await, 1.0);
    }
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = hay
        .windows(from.len())
        .position(|w| w == from)
        .expect("the registration id is in the open frame");
    [&hay[..at], to, &hay[at + from.len()..]].concat()
}

/// Pairs the traffic runs in each phase of the rotation, at least.
const PAIRS_PER_PHASE: u64 = 6;
/// How long a phase of the rotation may take: the nodes look at the secret
/// file every 2 s.
const ROTATION_PHASE: Duration = Duration::from_secs(20);

/// How many times `node` has re-read its cluster secrets since it started.
fn reloads(node: &Relay) -> usize {
    node.logs()
        .iter()
        .filter(|l| l["message"] == "cluster secrets reloaded")
        .count()
}

#[tokio::test]
async fn cluster_secret_rotation_under_traffic() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let dir = std::env::temp_dir().join(format!("dtcp-rotation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cluster-secret");
    std::fs::write(&file, "old-secret\n").unwrap();
    let path = file.to_str().unwrap();
    let node = || {
        let mut all = vec![
            "--cluster-secret-file",
            path,
            "--forward-listen",
            "127.0.0.1:0",
        ];
        all.extend([
            "--redis-url",
            urls[0].as_str(),
            "--max-pending-per-ip",
            "1000",
        ]);
        Relay::start(&all)
    };
    let nodes = [node(), node(), node()];
    nodes[0].wait_for("dtcp_nodes_alive", 3.0).await;
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let traffic = tokio::spawn({
        let (stop, done, addrs) = (stop.clone(), done.clone(), addrs.clone());
        async move {
            let mut n = 0u64;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let (a, b) = (addrs[n as usize % 3], addrs[(n as usize + 1) % 3]);
                let (i, tg) = pair(a, b, &triple(&format!("rotation-{n}"))).await;
                exchange(i, tg, 4096, n).await;
                n += 1;
                done.store(n, std::sync::atomic::Ordering::Relaxed);
            }
            n
        }
    });
    // Four phases of traffic: under the old secret; with the new one added
    // (the old still signs); with the new one signing; with the old one
    // removed. Each phase ends once every node has re-read the file written
    // at its start and a few pairs have run.
    for contents in [
        None,
        Some("old-secret\nnew-secret\n"),
        Some("new-secret\nold-secret\n"),
        Some("new-secret\n"),
    ] {
        let before: Vec<usize> = nodes.iter().map(reloads).collect();
        let from = done.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(contents) = contents {
            std::fs::write(&file, contents).unwrap();
        }
        let (nodes, before, done) = (&nodes, &before, &done);
        eventually(ROTATION_PHASE, "a phase of the rotation", || async move {
            let reread =
                contents.is_none() || nodes.iter().zip(before).all(|(n, b)| reloads(n) > *b);
            reread && done.load(std::sync::atomic::Ordering::Relaxed) >= from + PAIRS_PER_PHASE
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let pairs = traffic
        .await
        .expect("no pairing failed during the rotation");
    assert!(pairs > 20, "only {pairs} pairs ran");
    for n in &nodes {
        assert_eq!(
            n.metric("dtcp_auth_failures_total{reason=\"plane_mac\"}")
                .await,
            0.0
        );
        assert_eq!(
            n.metric("dtcp_auth_failures_total{reason=\"bad_record\"}")
                .await,
            0.0
        );
    }
    // The old secret is gone for good: a record sealed with it is refused.
    let t = triple("rotation-old-seal");
    let mut initiator = raw(addrs[0], &command(Verb::Create, &t)).await;
    nodes[0].wait_for("dtcp_pending_registrations", 1.0).await;
    let forward = nodes[0].forward.unwrap().to_string();
    let stale = sealed_record("old-secret", &t, &nodes[0].node_id, &forward);
    redis.cli(&["SET", &reg_key(&t), &stale, "PX", "60000"]);
    let reply = answer(addrs[1], Verb::Connect, &t).await;
    assert!(is_error(&reply, "unavailable"), "{reply:?}");
    let fresh = sealed_record("new-secret", &t, &nodes[0].node_id, &forward);
    redis.cli(&["SET", &reg_key(&t), &fresh, "PX", "60000"]);
    let mut target = raw(addrs[1], &command(Verb::Connect, &t)).await;
    assert_eq!(read_n(&mut target, 3).await, b"OK\0");
    assert_eq!(read_n(&mut initiator, 3).await, b"OK\0");
    let _ = std::fs::remove_dir_all(&dir);
}
