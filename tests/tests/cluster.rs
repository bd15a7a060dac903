//! The cluster against real processes: one `redis-server` (or a three-master
//! Redis Cluster) and three `dtcp-relay` nodes on loopback. A CREATE and its
//! CONNECT land on different nodes, and the faults a cluster must survive.

use std::time::{Duration, Instant};

use dtcp_client::dtcp_wire::{Condition, Verb};
use dtcp_client::{ClientError, Initiator, Target};
use dtcp_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn three_nodes(urls: &[String], args: &[&str]) -> [Relay; 3] {
    [
        cluster_node(urls, args),
        cluster_node(urls, args),
        cluster_node(urls, args),
    ]
}

async fn refused_with(r: Result<TcpStream, ClientError>) -> Condition {
    match r {
        Err(ClientError::Refused { condition, .. }) => condition,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Scenario 1 (and 9): docs/PROTOCOL.md holds across nodes.
async fn cross_node_protocol(urls: &[String]) {
    // Every client here comes from 127.0.0.1: lift the per-address limit.
    let [a, b, c] = three_nodes(urls, &["--max-pending-per-ip", "10000"]);
    a.wait_for("dtcp_nodes_alive", 3.0).await;

    // Pipelined bytes both ways, CONNECT on B.
    let t = triple("cross-pipelined");
    let mut create = command(Verb::Create, &t);
    create.extend_from_slice(b"from-initiator");
    let mut i = raw(a.addr, &create).await;
    a.wait_for("dtcp_pending_registrations", 1.0).await;
    let mut connect = command(Verb::Connect, &t);
    connect.extend_from_slice(b"from-target");
    let mut tg = raw(b.addr, &connect).await;
    assert_eq!(read_n(&mut i, 3).await, b"OK\0");
    assert_eq!(read_n(&mut tg, 3).await, b"OK\0");
    assert_eq!(read_n(&mut tg, 14).await, b"from-initiator");
    assert_eq!(read_n(&mut i, 11).await, b"from-target");
    // The early bytes crossed on a lane: a failed lane dial falls back to
    // the Bridge without a word to the clients.
    a.wait_on_lanes(1.0).await;

    // Half-close each way, on its own.
    i.write_all(b"bye").await.unwrap();
    i.shutdown().await.unwrap();
    assert_eq!(read_all(&mut tg).await, b"bye");
    tg.write_all(b"still talking").await.unwrap();
    assert_eq!(read_n(&mut i, 13).await, b"still talking");
    tg.shutdown().await.unwrap();
    assert_eq!(read_all(&mut i).await, b"");

    // CONNECT on C, the Target half-closing first.
    let t = triple("cross-c");
    let (mut i, mut tg) = pair(a.addr, c.addr, &t).await;
    tg.write_all(b"target first").await.unwrap();
    tg.shutdown().await.unwrap();
    assert_eq!(read_all(&mut i).await, b"target first");
    i.write_all(b"initiator after").await.unwrap();
    i.shutdown().await.unwrap();
    assert_eq!(read_all(&mut tg).await, b"initiator after");

    // Conflict and not-found behave as on one node.
    let t = triple("cross-conflict");
    let _held = raw(b.addr, &command(Verb::Create, &t)).await;
    b.wait_for("dtcp_pending_registrations", 1.0).await;
    assert_eq!(
        refused_with(Initiator::connect(c.addr, &t).await).await,
        Condition::Conflict
    );
    assert_eq!(
        refused_with(Target::connect(a.addr, &triple("cross-nobody")).await).await,
        Condition::NotFound
    );

    // 256 MiB both ways at once, A <-> B.
    let t = triple("cross-big");
    let (i, tg) = pair(a.addr, b.addr, &t).await;
    exchange(i, tg, 256 << 20, 100).await;
    // A's three forwarded sessions so far: pipelined, to C, and this one.
    a.wait_on_lanes(3.0).await;

    // 300 concurrent pairs, CREATE and CONNECT spread over all three nodes.
    let nodes = [a.addr, b.addr, c.addr];
    let tasks: Vec<_> = (0..300)
        .map(|n| {
            let (x, y) = (nodes[n % 3], nodes[(n + 1 + n / 3 % 2) % 3]);
            tokio::spawn(async move {
                let t = triple(&format!("cross-many-{n}"));
                let (i, tg) = pair(x, y, &t).await;
                exchange(i, tg, 32 * 1024 + n as u64, n as u64 * 7).await;
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("pair");
    }
    let forwarded: f64 = {
        let mut sum = 0.0;
        for n in [&a, &b, &c] {
            sum += n
                .metric("dtcp_sessions_completed_total{path=\"forwarded\",outcome=\"closed\"}")
                .await;
        }
        sum
    };
    assert_eq!(
        forwarded, 303.0,
        "every cross-node session completed cleanly"
    );
    eventually(
        Duration::from_secs(10),
        "nothing pending or bridged",
        || async {
            let mut clean = true;
            for n in [&a, &b, &c] {
                let page = n.scrape().await;
                clean &= sample_value(&page, "dtcp_pending_registrations")
                    == 1.0 * f64::from(n.addr == b.addr)
                    && sample_value(&page, "dtcp_bridge_streams_active{role=\"client\"}") == 0.0
                    && sample_value(&page, "dtcp_bridge_streams_active{role=\"server\"}") == 0.0;
            }
            clean
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_connect_on_different_nodes_behave_as_on_one() {
    let redis = RedisServer::start();
    cross_node_protocol(&[redis.url()]).await;
    // Only registration ids and node ids in keys.
    for key in redis.keys() {
        assert!(!key.contains("example"), "a JID in a Redis key: {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_holds_on_a_three_master_redis_cluster() {
    let redis = RedisCluster::start();
    let urls: Vec<String> = redis.nodes.iter().map(RedisServer::url).collect();
    cross_node_protocol(&urls).await;
    assert!(
        redis.keys().iter().any(|k| k.starts_with("dtcp:node:")),
        "heartbeats in the cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_targets_racing_on_two_nodes_pair_exactly_once() {
    let redis = RedisServer::start();
    let [a, b, c] = three_nodes(&[redis.url()], &["--connect-grace", "1"]);
    for round in 0..10 {
        let t = triple(&format!("race-{round}"));
        let i = tokio::spawn({
            let (t, addr) = (t.clone(), a.addr);
            async move { Initiator::connect(addr, &t).await }
        });
        a.wait_for("dtcp_pending_registrations", 1.0).await;
        let (rb, rc) = tokio::join!(Target::connect(b.addr, &t), Target::connect(c.addr, &t));
        let oks = [&rb, &rc].iter().filter(|r| r.is_ok()).count();
        assert_eq!(oks, 1, "round {round}: {rb:?} {rc:?}");
        for r in [rb, rc] {
            if let Err(e) = r {
                assert_eq!(e.condition(), Some(Condition::NotFound), "{e}");
            }
        }
        assert!(i.await.unwrap().is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_never_makes_a_target_hang() {
    let redis = RedisServer::start();
    let [mut a, b, _c] = three_nodes(&[redis.url()], &["--pending-ttl", "2"]);
    let t = triple("orphan");
    let _i = raw(a.addr, &command(Verb::Create, &t)).await;
    eventually(Duration::from_secs(5), "registered in Redis", || async {
        redis.keys().iter().any(|k| k.starts_with("dtcp:reg:"))
    })
    .await;
    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(5)).expect("killed");
    let started = Instant::now();
    let condition = refused_with(Target::connect(b.addr, &t).await).await;
    assert!(
        matches!(condition, Condition::Unavailable | Condition::NotFound),
        "{condition:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // After the registration's TTL (2 s) and the heartbeat's (6 s), nothing of A is left.
    eventually(
        Duration::from_secs(15),
        "nothing of the killed node in Redis",
        || async {
            let keys = redis.keys();
            let members = redis.cli(&["ZRANGE", "dtcp:nodes", "0", "-1"]);
            !keys
                .iter()
                .any(|k| k.starts_with("dtcp:reg:") || k.contains(&a.node_id))
                && !members.contains(&a.node_id)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_mid_transfer_closes_the_target_and_spares_the_rest() {
    let redis = RedisServer::start();
    let [a, b, c] = three_nodes(&[redis.url()], &[]);
    let (mut ai, mut bt) = pair(a.addr, b.addr, &triple("doomed")).await;
    let (mut ci, mut bt2) = pair(c.addr, b.addr, &triple("bystander")).await;
    ai.write_all(&[7u8; 100_000]).await.unwrap();
    assert_eq!(read_n(&mut bt, 100_000).await.len(), 100_000);

    a.signal(libc::SIGKILL);
    let started = Instant::now();
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), bt.read(&mut buf)).await {
            Err(_) => panic!("target not closed within 5 s of the owner's death"),
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => continue,
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // The session between C and B goes on, and new pairs work.
    ci.write_all(b"unaffected").await.unwrap();
    assert_eq!(read_n(&mut bt2, 10).await, b"unaffected");
    bt2.write_all(b"indeed").await.unwrap();
    assert_eq!(read_n(&mut ci, 6).await, b"indeed");
    let (i, tg) = pair(b.addr, c.addr, &triple("after-death")).await;
    exchange(i, tg, 1 << 20, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_refuses_new_work_promptly_keeps_sessions_and_recovers() {
    let mut redis = RedisServer::start();
    let [a, b, _c] = three_nodes(&[redis.url()], &["--connect-grace", "1"]);
    let (i, tg) = pair(a.addr, b.addr, &triple("survivor")).await;
    let (mut ir, mut iw) = i.into_split();
    let (mut tr, mut tw) = tg.into_split();
    let size: u64 = 64 << 20;
    // A transfer that runs through the outage.
    let transfer = tokio::spawn(async move {
        let (a, b, got_t, got_i) = tokio::join!(
            async {
                let mut p = Pattern::new(1);
                let mut buf = vec![0u8; 1 << 20];
                use sha2::Digest;
                let mut h = sha2::Sha256::new();
                for _ in 0..(size >> 20) {
                    p.fill(&mut buf);
                    h.update(&buf);
                    iw.write_all(&buf).await.unwrap();
                    // A sleep: paced, so that the transfer lasts through the outage.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                iw.shutdown().await.unwrap();
                <[u8; 32]>::from(h.finalize())
            },
            send_pattern(&mut tw, 2, 1 << 20),
            recv_digest(&mut tr),
            recv_digest(&mut ir),
        );
        assert_eq!(got_t, (size, a), "no byte lost through the outage");
        assert_eq!(got_i, (1 << 20, b));
    });
    // The outage begins once the transfer is under way.
    let owner = &a;
    eventually(Duration::from_secs(10), "the transfer under way", || async move {
        owner.metric("dtcp_relayed_bytes_total{path=\"forwarded\",direction=\"initiator_to_target\"}")
            .await
            > 0.0
    })
    .await;
    redis.stop();
    for n in 0..3 {
        let started = Instant::now();
        let r = Initiator::connect(a.addr, &triple(&format!("during-{n}"))).await;
        assert_eq!(refused_with(r).await, Condition::Unavailable);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "not prompt: {:?}",
            started.elapsed()
        );
    }
    let r = Target::connect(b.addr, &triple("during-connect")).await;
    assert_eq!(refused_with(r).await, Condition::Unavailable);
    assert!(a.metric("dtcp_store_errors_total{op=\"register\"}").await >= 3.0);
    transfer.await.expect("transfer through the outage");

    redis.restart();
    eventually(
        Duration::from_secs(20),
        "pairs again once Redis is back",
        || async {
            let t = triple(&format!("after-{}", Instant::now().elapsed().as_nanos()));
            let x = tokio::time::timeout(Duration::from_secs(5), async {
                let i = tokio::spawn({
                    let (t, addr) = (t.clone(), a.addr);
                    async move { Initiator::connect(addr, &t).await }
                });
                // A sleep: a stagger, so that the CREATE is usually first
                // (the grace covers either order).
                tokio::time::sleep(Duration::from_millis(100)).await;
                let tg = Target::connect(b.addr, &t).await;
                (i.await.unwrap().is_ok(), tg.is_ok())
            })
            .await;
            matches!(x, Ok((true, true)))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_cluster_node() {
    let redis = RedisServer::start();
    let [mut a, b, c] = three_nodes(
        &[redis.url()],
        &["--drain-timeout", "20", "--connect-grace", "1"],
    );
    // A holds a forwarded session and a pending CREATE.
    let (i, tg) = pair(a.addr, b.addr, &triple("drain-active")).await;
    let pending = triple("drain-pending");
    let pending_i = tokio::spawn({
        let (t, addr) = (pending.clone(), a.addr);
        async move { Initiator::connect(addr, &t).await }
    });
    a.wait_for("dtcp_pending_registrations", 1.0).await;

    a.signal(libc::SIGTERM);
    a.wait_for("dtcp_draining", 1.0).await;
    // No new commands on A...
    assert_eq!(
        refused_with(Initiator::connect(a.addr, &triple("drain-new")).await).await,
        Condition::ShuttingDown
    );
    // ...but its pending CREATE can still be claimed from another node.
    let mut claimed = Target::connect(c.addr, &pending)
        .await
        .expect("claimed from C");
    let mut pending_i = pending_i.await.unwrap().expect("pending initiator paired");
    pending_i.write_all(b"late pair").await.unwrap();
    assert_eq!(read_n(&mut claimed, 9).await, b"late pair");
    drop((pending_i, claimed));
    // The active session finishes, every byte through.
    exchange(i, tg, 16 << 20, 9).await;

    let status = a
        .wait_exit(Duration::from_secs(15))
        .expect("A exits when its sessions are done");
    assert!(status.success(), "{status:?}");
    assert!(
        !redis.keys().contains(&format!("dtcp:node:{}", a.node_id)),
        "A's heartbeat is gone"
    );
    let (i, tg) = pair(b.addr, c.addr, &triple("drain-after")).await;
    exchange(i, tg, 1024, 3).await;
}

/// The owner's session ends as soon as its last frames are queued toward
/// the Target's node; a node that drains must send them before it exits,
/// or that node resets its Target with bytes still owed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_owner_delivers_every_queued_byte_before_it_exits() {
    let redis = RedisServer::start();
    let mut a = NodeOptions::cluster(&[redis.url()]).start();
    let b = NodeOptions::cluster(&[redis.url()]).start();
    let (mut i, mut tg) = pair(a.addr, b.addr, &triple("drain-flush")).await;
    // The Target is done at once: its fin reaches A long before the
    // Initiator's bytes have crossed, so A's session ends with them queued.
    tg.shutdown().await.unwrap();
    a.signal(libc::SIGTERM);
    a.wait_for("dtcp_draining", 1.0).await;
    let sent = tokio::spawn(async move {
        let digest = send_pattern(&mut i, 7, 32 << 20).await;
        let mut rest = Vec::new();
        i.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the Target sent nothing");
        digest
    });
    // A slow reader, and 32 MiB (more than the buffers between A and the
    // Target hold): A's HTTP/2 stream is still held back by flow control,
    // megabytes behind, when its session ends.
    let mut slow = SlowReader::new(tg);
    let (n, received) = recv_digest(&mut slow).await;
    assert_eq!(n, 32 << 20, "every byte, then a clean end");
    assert_eq!(received, sent.await.unwrap());
    let status = a.wait_exit(Duration::from_secs(15)).expect("A exits");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_without_the_right_secret_pairs_nothing() {
    let redis = RedisServer::start();
    let a = NodeOptions::cluster(&[redis.url()]).start();
    let b = NodeOptions::cluster(&[redis.url()]).start();
    let intruder = NodeOptions::new()
        .forward_listen("127.0.0.1:0")
        .arg("--redis-url", redis.url())
        .arg("--cluster-secret", "not-the-secret")
        .start();
    let t = triple("guarded");
    let mut i = raw(a.addr, &command(Verb::Create, &t)).await;
    a.wait_for("dtcp_pending_registrations", 1.0).await;
    assert_eq!(
        refused_with(Target::connect(intruder.addr, &t).await).await,
        Condition::Unavailable
    );
    // Its secret does not verify the record's seal: it does not even dial.
    assert_eq!(
        intruder
            .metric("dtcp_auth_failures_total{reason=\"bad_record\"}")
            .await,
        1.0
    );
    // Nothing was claimed: the right node still can.
    assert_eq!(a.metric("dtcp_pending_registrations").await, 1.0);
    let mut tg = Target::connect(b.addr, &t)
        .await
        .expect("the rightful target pairs");
    assert_eq!(read_n(&mut i, 3).await, b"OK\0");
    tg.write_all(b"ok").await.unwrap();
    assert_eq!(read_n(&mut i, 2).await, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_at_the_same_address_leaves_old_registrations_alone() {
    let redis = RedisServer::start();
    let mut a = NodeOptions::cluster(&[redis.url()])
        .pending_ttl(30.0)
        .start();
    let b = NodeOptions::cluster(&[redis.url()])
        .connect_grace(1.0)
        .start();
    let forward = a.forward.expect("forward address").to_string();
    let t = triple("before-restart");
    let _i = raw(a.addr, &command(Verb::Create, &t)).await;
    eventually(Duration::from_secs(5), "registered", || async {
        redis.keys().iter().any(|k| k.starts_with("dtcp:reg:"))
    })
    .await;
    let old_id = a.node_id.clone();
    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(5)).expect("killed");
    let a2 = NodeOptions::cluster(&[redis.url()])
        .forward_listen(&forward)
        .start();
    assert_ne!(a2.node_id, old_id);
    assert_eq!(a2.forward.unwrap().to_string(), forward);

    // The old registration names the old process: the new one refuses to claim it.
    let condition = refused_with(Target::connect(b.addr, &t).await).await;
    assert!(
        matches!(condition, Condition::NotFound | Condition::Unavailable),
        "{condition:?}"
    );
    // (The CONNECT asked again through its connect grace, in case a CREATE
    // was registering: each time the answer was the same.)
    assert!(
        a2.metric("dtcp_bridge_errors_total{role=\"server\",reason=\"stale_owner\"}")
            .await
            >= 1.0
    );
    // And it did not remove it: that is for its TTL (or a takeover) to do.
    let reg: Vec<String> = redis
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("dtcp:reg:"))
        .collect();
    assert_eq!(reg.len(), 1);
    assert!(redis.cli(&["GET", &reg[0]]).contains(&old_id));

    // Once the dead node's heartbeat has expired, a new CREATE of the same
    // triple takes its registration over instead of answering conflict.
    eventually(
        Duration::from_secs(10),
        "the old heartbeat expired",
        || async { !redis.keys().contains(&format!("dtcp:node:{old_id}")) },
    )
    .await;
    let (i, tg) = pair(a2.addr, b.addr, &t).await;
    exchange(i, tg, 4096, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_stops_reading_keeps_memory_flat() {
    let redis = RedisServer::start();
    let a = NodeOptions::cluster(&[redis.url()]).start();
    let b = NodeOptions::cluster(&[redis.url()]).start();
    let (i, _tg) = pair(a.addr, b.addr, &triple("stalled")).await;
    let before = (a.rss(), b.rss());
    // The Initiator pushes for 3 s; the Target never reads.
    let chunk = vec![1u8; 1 << 20];
    let mut pushed = 0u64;
    let deadline = Instant::now() + Duration::from_secs(3);
    let (_ir, mut iw) = i.into_split();
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), iw.write_all(&chunk)).await {
            Ok(Ok(())) => pushed += chunk.len() as u64,
            Ok(Err(e)) => panic!("write failed: {e}"),
            Err(_) => {}
        }
    }
    let grown = (
        a.rss().saturating_sub(before.0),
        b.rss().saturating_sub(before.1),
    );
    // Socket buffers, two frame queues and the HTTP/2 windows: tens of MiB at
    // most, however long the Initiator pushes.
    assert!(
        pushed < 96 << 20,
        "the relay kept accepting: {pushed} bytes"
    );
    assert!(
        grown.0 < 48 << 20 && grown.1 < 48 << 20,
        "memory grew by {grown:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_turns_not_ready_while_a_node_drains() {
    use dtcp_client::dtcp_wire::{Keyring, Secrets};
    use dtcp_forward::{AUTH_HEADER, PlaneAuth, health_binding};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let redis = RedisServer::start();
    let a = NodeOptions::cluster(&[redis.url()])
        .drain_timeout(20.0)
        .start();
    let forward = a.forward.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{forward}"))
        .unwrap()
        .connect()
        .await
        .expect("the forwarding port serves gRPC");
    let mut health = HealthClient::new(channel);
    // The plane answers nodes only: a health call must authenticate as a
    // Bridge does, made out to this node, for a health call.
    let auth = PlaneAuth::new(Some(Keyring::new(Secrets::from_lines(SECRET))));
    let authenticated = |service: &str, binding: [u8; 32]| {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: service.into(),
        });
        let mut headers = http::HeaderMap::new();
        let addr = forward.to_string();
        auth.attach(&mut headers, "health-probe", &a.node_id, &addr, &binding)
            .unwrap();
        let value = headers[AUTH_HEADER].to_str().unwrap().parse().unwrap();
        request.metadata_mut().insert(AUTH_HEADER, value);
        request
    };
    let anonymous = || HealthCheckRequest {
        service: "dtcp.readiness".into(),
    };
    let check = health.check(anonymous()).await.unwrap_err();
    assert_eq!(check.code(), tonic::Code::Unauthenticated, "{check:?}");
    let watch = health.watch(anonymous()).await.unwrap_err();
    assert_eq!(watch.code(), tonic::Code::Unauthenticated, "{watch:?}");
    // A good authenticator bound to something else (a Bridge's registration).
    let other = health.check(authenticated("", [7; 32])).await.unwrap_err();
    assert_eq!(other.code(), tonic::Code::Unauthenticated, "{other:?}");
    a.wait_for("dtcp_auth_failures_total{reason=\"plane_mac\"}", 3.0)
        .await;

    let status = async |service: &str| {
        let request = authenticated(service, health_binding());
        let mut health = health.clone();
        health.check(request).await.map(|r| r.into_inner().status)
    };
    for service in ["dtcp.liveness", "dtcp.readiness", ""] {
        assert_eq!(
            status(service).await.unwrap(),
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    // A session keeps the drain going while we ask.
    let (_i, _t) = pair(a.addr, a.addr, &triple("health")).await;
    a.signal(libc::SIGTERM);
    let ask = &status;
    eventually(
        Duration::from_secs(5),
        "readiness NOT_SERVING while draining",
        || async move { ask("dtcp.readiness").await.unwrap() == ServingStatus::NotServing as i32 },
    )
    .await;
    assert_eq!(status("").await.unwrap(), ServingStatus::NotServing as i32);
    // Draining is not dead: the liveness probe must not restart the pod.
    assert_eq!(
        status("dtcp.liveness").await.unwrap(),
        ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_comes_first_pairs_with_a_create_on_another_node() {
    let redis = RedisServer::start();
    let [a, b, _c] = three_nodes(&[redis.url()], &["--connect-grace", "5"]);
    // Every node listens on its own channel, where the node that registers
    // a CREATE it waits for tells it, so that a waiting CONNECT looks again
    // at once rather than at its next poll.
    eventually(Duration::from_secs(5), "three subscribers", || async {
        let channels = redis.cli(&["PUBSUB", "CHANNELS", "dtcp:wake:*"]);
        channels.lines().filter(|l| !l.trim().is_empty()).count() == 3
    })
    .await;
    let t = triple("connect-first");
    let target = tokio::spawn({
        let (t, addr) = (t.clone(), b.addr);
        async move { Target::connect(addr, &t).await }
    });
    // The CONNECT waits: it has looked for the registration and not found it.
    let waiting = &b;
    eventually(
        Duration::from_secs(5),
        "the CONNECT waiting",
        || async move {
            waiting
                .metric("dtcp_store_operations_total{op=\"lookup\"}")
                .await
                >= 1.0
        },
    )
    .await;
    let mut i = Initiator::connect(a.addr, &t)
        .await
        .expect("initiator pairs");
    let mut tg = target.await.unwrap().expect("the waiting target pairs");
    i.write_all(b"late create").await.unwrap();
    assert_eq!(read_n(&mut tg, 11).await, b"late create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_forwarded_session_is_closed_after_the_idle_timeout() {
    let redis = RedisServer::start();
    let a = NodeOptions::cluster(&[redis.url()])
        .idle_timeout(0.5)
        .start();
    let b = NodeOptions::cluster(&[redis.url()])
        .idle_timeout(0.5)
        .start();
    let (mut i, mut tg) = pair(a.addr, b.addr, &triple("idle-across")).await;
    // Traffic keeps it alive past the timeout...
    for _ in 0..6 {
        // A sleep: the traffic's pace, within the idle timeout.
        tokio::time::sleep(Duration::from_millis(200)).await;
        i.write_all(b".").await.unwrap();
        assert_eq!(read_n(&mut tg, 1).await, b".");
    }
    // ...silence ends it, on both sides.
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), tg.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "the target was not closed");
    a.wait_for(
        "dtcp_sessions_completed_total{path=\"forwarded\",outcome=\"idle_timeout\"}",
        1.0,
    )
    .await;
}

/// Calls per command, from `INFO commandstats` (the calls scripts make
/// included), leaving out the test's own `INFO`.
fn command_calls(redis: &RedisServer) -> std::collections::HashMap<String, u64> {
    let mut calls = redis.command_calls();
    calls.remove("info");
    calls
}

/// Commands of one heartbeat: `EXISTS` and `SET` of the node's key, `ZADD`
/// and `ZREMRANGEBYSCORE` of the `nodes` set and of the `formats` set, and
/// the script that reads each with its `ZRANGEBYSCORE`. Counted by the
/// beats' `EXISTS`.
const HEARTBEAT_COMMANDS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_across_nodes_costs_redis_four_commands_and_publishes_nothing() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let [a, b] = [(); 2].map(|_| cluster_node(&urls, &[]));
    a.wait_for("dtcp_nodes_alive", 2.0).await;
    b.wait_for("dtcp_nodes_alive", 2.0).await;
    // The first pair loads what is loaded once.
    let t = triple("warm-up");
    drop(pair(a.addr, b.addr, &t).await);
    a.wait_for("dtcp_pending_registrations", 0.0).await;
    let before = command_calls(&redis);
    const PAIRS: u64 = 40;
    for n in 0..PAIRS {
        // The CREATE first, as a Target told of it by its Initiator comes.
        let t = triple(&format!("counted-{n}"));
        let initiator = tokio::spawn({
            let (t, addr) = (t.clone(), a.addr);
            async move { Initiator::connect(addr, &t).await }
        });
        a.wait_for("dtcp_pending_registrations", 1.0).await;
        let mut tg = Target::connect(b.addr, &t).await.expect("target pairs");
        let mut i = initiator.await.unwrap().expect("initiator pairs");
        i.write_all(b"x").await.unwrap();
        assert_eq!(read_n(&mut tg, 1).await, b"x");
        drop((i, tg));
        a.wait_for("dtcp_pending_registrations", 0.0).await;
    }
    // The owners' removals run in tasks of their own: the last one done.
    let mut used = Default::default();
    for _ in 0..50 {
        let after = command_calls(&redis);
        used = after
            .iter()
            .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect::<std::collections::HashMap<_, _>>();
        if used.get("getdel").copied().unwrap_or(0) >= PAIRS {
            break;
        }
        // The poll's interval.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let beats = used.get("exists").copied().unwrap_or(0);
    let total: u64 = used.values().sum();
    let pairs = total - beats * HEARTBEAT_COMMANDS;
    eprintln!("{PAIRS} pairs: {total} commands, {beats} heartbeats: {used:?}");
    assert_eq!(used.get("getdel"), Some(&PAIRS), "one removal a pair");
    assert!(
        pairs <= 4 * PAIRS,
        "{pairs} commands for {PAIRS} pairs: {used:?}"
    );
    assert_eq!(
        used.get("publish"),
        None,
        "a CREATE nobody waits for publishes nothing"
    );
}

/// Commands of a pair whose `CONNECT` comes first, as `INFO commandstats`
/// counts them: the `CONNECT`'s look (a `GETRANGE` on the connection Redis
/// tracks for its node); the `CREATE`'s `SET NX GET`, which makes Redis
/// push the news to that node; the `CONNECT`'s second look, which finds the
/// record; the owner's `GETDEL`. No waiter entry, swap or `PUBLISH`.
const RACE_COMMANDS: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_whose_connect_comes_first_costs_redis_four_commands() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let [a, b] = [(); 2].map(|_| cluster_node(&urls, &["--connect-grace", "10"]));
    a.wait_for("dtcp_nodes_alive", 2.0).await;
    b.wait_for("dtcp_nodes_alive", 2.0).await;
    eventually(Duration::from_secs(5), "two subscribers", || async {
        let channels = redis.cli(&["PUBSUB", "CHANNELS", "dtcp:wake:*"]);
        channels.lines().filter(|l| !l.trim().is_empty()).count() == 2
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "two tracking connections",
        || async { redis.tracking_clients().len() == 2 },
    )
    .await;
    if format_in_use(&a, 1) + format_in_use(&b, 1) > 0 {
        // A node that saw the other before its formats did spoke format 1
        // for a heartbeat, and then publishes every registration for the
        // store's LEGACY_LINGER (5 s): that is over once this sleep is.
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    let looks = || b.metric("dtcp_store_operations_total{op=\"lookup\"}");
    // One race pair: the CONNECT on B waits (its look found nothing, and
    // left nothing), then the CREATE on A registers, and Redis tells B.
    let race = |name: String| {
        let (a, b, looks) = (&a, &b, &looks);
        async move {
            let t = triple(&name);
            let looked = looks().await;
            let target = tokio::spawn({
                let (t, addr) = (t.clone(), b.addr);
                async move { Target::connect(addr, &t).await }
            });
            eventually(Duration::from_secs(5), "the CONNECT's look", || async {
                looks().await > looked
            })
            .await;
            let mut i = Initiator::connect(a.addr, &t)
                .await
                .expect("initiator pairs");
            let mut tg = target.await.unwrap().expect("the waiting target pairs");
            i.write_all(b"x").await.unwrap();
            assert_eq!(read_n(&mut tg, 1).await, b"x");
            drop((i, tg));
            a.wait_for("dtcp_pending_registrations", 0.0).await;
        }
    };
    // The first makes what is made once.
    race("race-warm-up".to_owned()).await;
    let getdels = || command_calls(&redis).get("getdel").copied().unwrap_or(0);
    eventually(Duration::from_secs(5), "the warm-up's removal", || async {
        getdels() >= 1
    })
    .await;
    let before = command_calls(&redis);
    let looks_before = looks().await;
    const PAIRS: u64 = 40;
    for n in 0..PAIRS {
        race(format!("race-counted-{n}")).await;
    }
    // The owners' removals run in tasks of their own: the last one done.
    let mut used = Default::default();
    for _ in 0..50 {
        let after = command_calls(&redis);
        used = after
            .iter()
            .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect::<std::collections::HashMap<_, _>>();
        if used.get("getdel").copied().unwrap_or(0) >= PAIRS {
            break;
        }
        // The poll's interval.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A CONNECT whose CREATE came past its first wait (0.5 s and more on a
    // slow machine) looked once more: not the pair's cost, taken out.
    let extra_looks = (looks().await - looks_before) as u64 - 2 * PAIRS;
    let calls = |name: &str| used.get(name).copied().unwrap_or(0);
    // Counted command by command, as the heartbeats run beside the pairs:
    // a beat's `SET` goes in one pipeline with its `EXISTS` (so the two
    // snapshots split no beat's pair of them), its two scripts later.
    let beats = calls("exists");
    let sets = calls("set") - beats;
    let looked = calls("getrange") - extra_looks;
    eprintln!(
        "{PAIRS} pairs, the CONNECT first: {beats} heartbeats, {extra_looks} more looks: {used:?}"
    );
    assert_eq!(looked, 2 * PAIRS, "two looks a pair: {used:?}");
    assert_eq!(sets, PAIRS, "one registration a pair: {used:?}");
    assert_eq!(calls("publish"), 0, "nothing published: {used:?}");
    assert_eq!(calls("getdel"), PAIRS, "one removal a pair");
    // Nothing else: the heartbeats' commands, and the checks that
    // subscriptions and tracking connections make every 2 s.
    let other = [
        "exists",
        "zadd",
        "zremrangebyscore",
        "zrangebyscore",
        "evalsha",
        "ping",
    ];
    let pair_commands = ["set", "getrange", "getdel"];
    for name in used.keys() {
        assert!(
            other.contains(&name.as_str()) || pair_commands.contains(&name.as_str()),
            "a command the race path did not send before: {name} ({used:?})"
        );
    }
    let scripts = calls("evalsha") as i64 - 2 * beats as i64;
    assert!(scripts.abs() <= 8, "no script a pair: {used:?}");
    let per_pair = (looked + sets + calls("getdel")) as f64 / PAIRS as f64;
    assert!(
        per_pair.round() as u64 <= RACE_COMMANDS,
        "{per_pair} commands a pair: {used:?}"
    );
}

/// How many times `node` logged that it moved to cluster format `version`.
fn format_in_use(node: &Relay, version: u64) -> usize {
    node.logs()
        .iter()
        .filter(|l| {
            l["message"] == "cluster format in use" && l["format"].as_u64() == Some(version)
        })
        .count()
}

/// `PAIRS` pairs at once between `x` and `y`, half with the CREATE on `x`,
/// half on `y`, each CONNECT a moment before or after its CREATE.
async fn pairs_both_ways(x: &Relay, y: &Relay, label: &str) {
    const PAIRS: usize = 40;
    let runs: Vec<_> = (0..PAIRS)
        .map(|n| {
            let (create, connect) = if n % 2 == 0 {
                (x.addr, y.addr)
            } else {
                (y.addr, x.addr)
            };
            let t = triple(&format!("{label}-{n}"));
            tokio::spawn(async move {
                // CONNECT first on every other pair of each direction.
                let connect_first = n % 4 >= 2;
                let target = tokio::spawn({
                    let t = t.clone();
                    async move {
                        if !connect_first {
                            // A sleep: the CREATE's head start, a pair of its own.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Target::connect(connect, &t).await
                    }
                });
                if connect_first {
                    // A sleep: the CONNECT's head start.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let i = Initiator::connect(create, &t).await;
                (i.is_ok(), target.await.unwrap().is_ok())
            })
        })
        .collect();
    for (n, run) in runs.into_iter().enumerate() {
        assert_eq!(run.await.unwrap(), (true, true), "{label}: pair {n}");
    }
}

/// Bridges `node` paired as `role` (`client`: it opened them; `server`: it
/// was claimed) whose peer's first frame named cluster format `format`.
async fn bridge_formats(node: &Relay, role: &str, format: &str) -> f64 {
    node.metric(&format!(
        "dtcp_bridge_formats_total{{role=\"{role}\",format=\"{format}\"}}"
    ))
    .await
}

/// That `node`'s Bridges, `per_role` opened and as many claimed, all spoke
/// `format`: each `open` asked it, each `paired` answered it, and no frame
/// named another.
async fn bridges_spoke(node: &Relay, format: &str, per_role: f64) {
    for role in ["client", "server"] {
        for named in ["0", "1", "2", "other"] {
            let want = if named == format { per_role } else { 0.0 };
            let seen = bridge_formats(node, role, named).await;
            assert_eq!(
                seen, want,
                "{} as {role}: bridges naming format {named}",
                node.node_id
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_the_legacy_format_and_the_new_pair_both_ways() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let args = ["--max-pending-per-ip", "10000", "--connect-grace", "5"];
    let new = cluster_node(&urls, &args);
    let mut legacy_args = args.to_vec();
    legacy_args.extend(["--cluster-format-version", "1"]);
    let mut old = cluster_node(&urls, &legacy_args);
    new.wait_for("dtcp_nodes_alive", 2.0).await;
    // The new node sees a node that lists no format: it speaks the old one
    // (every registration published to every node, no waiters). It spoke
    // the new one alone, before the other started.
    eventually(
        Duration::from_secs(5),
        "the new node on format 1",
        || async { format_in_use(&new, 1) == 1 },
    )
    .await;
    let alone = format_in_use(&new, 2);
    pairs_both_ways(&new, &old, "mixed").await;
    // The Bridges both ways spoke format 1: the old node's `open` says 1,
    // and the new node, which the heartbeats tell that the old one lists no
    // format, asks 1 of it; each owner answers what it was asked.
    bridges_spoke(&new, "1", 20.0).await;
    bridges_spoke(&old, "1", 20.0).await;
    let published = command_calls(&redis).get("publish").copied().unwrap_or(0);
    assert!(
        published > 0,
        "registrations published as the old format does"
    );

    // The old node gone, the new one moves to format 2.
    old.kill();
    eventually(
        Duration::from_secs(15),
        "the new node on format 2",
        || async { format_in_use(&new, 2) > alone },
    )
    .await;
    let other = cluster_node(&urls, &args);
    other.wait_for("dtcp_nodes_alive", 2.0).await;
    eventually(
        Duration::from_secs(5),
        "the second new node on format 2",
        || async { format_in_use(&other, 2) == 1 },
    )
    .await;
    // A node that left format 1 keeps broadcasting registrations a while
    // (the store's LEGACY_LINGER, for nodes that have not moved yet): wait
    // until a CREATE on it that nobody waits for publishes nothing.
    let publishes = || command_calls(&redis).get("publish").copied().unwrap_or(0);
    let mut probe = 0;
    eventually(Duration::from_secs(15), "the legacy broadcast over", || {
        probe += 1;
        let t = triple(&format!("quiet-{probe}"));
        let (new, publishes) = (&new, &publishes);
        async move {
            let before = publishes();
            let addr = new.addr;
            let create = tokio::spawn(async move { Initiator::connect(addr, &t).await });
            new.wait_for("dtcp_pending_registrations", 1.0).await;
            // The store publishes in a task of its own: give it time to
            // (an absence cannot be polled for).
            tokio::time::sleep(Duration::from_millis(100)).await;
            let published = publishes() > before;
            create.abort();
            new.wait_for("dtcp_pending_registrations", 0.0).await;
            !published
        }
    })
    .await;
    // The new node has read the other's heartbeat (and its formats).
    new.wait_for("dtcp_nodes_alive", 2.0).await;
    let before = publishes();
    let on_1 = [
        bridge_formats(&new, "client", "1").await,
        bridge_formats(&new, "server", "1").await,
    ];
    pairs_both_ways(&new, &other, "new").await;
    let after = publishes();
    // Two nodes of format 2: their Bridges both ways speak 2.
    bridges_spoke(&other, "2", 20.0).await;
    for (n, role) in ["client", "server"].into_iter().enumerate() {
        assert_eq!(bridge_formats(&new, role, "2").await, 20.0, "new as {role}");
        assert_eq!(
            bridge_formats(&new, role, "1").await,
            on_1[n],
            "new as {role}"
        );
    }
    // Only the CONNECTs that came first are told, one message each.
    assert!(
        after - before <= 20,
        "{} messages for 40 pairs",
        after - before
    );
}

/// With tracked looks: a `CONNECT` that waits leaves nothing in Redis; the
/// store flushed and B's tracking connection killed while it waits, it
/// still pairs with a `CREATE` made after (found by its next look, or told
/// on the connection made again), and B tracks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_connect_survives_a_flush_and_a_lost_tracking_connection() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let args = ["--connect-grace", "10"];
    let [a, b] = [(); 2].map(|_| cluster_node(&urls, &args));
    a.wait_for("dtcp_nodes_alive", 2.0).await;
    b.wait_for("dtcp_nodes_alive", 2.0).await;
    eventually(
        Duration::from_secs(5),
        "two tracking connections",
        || async { redis.tracking_clients().len() == 2 },
    )
    .await;
    let t = triple("tracked-lost");
    let key = format!("dtcp:reg:{}", t.registration_id());
    let looks = || b.metric("dtcp_store_operations_total{op=\"lookup\"}");
    let before = looks().await;
    let target = tokio::spawn({
        let (t, addr) = (t.clone(), b.addr);
        async move { Target::connect(addr, &t).await }
    });
    eventually(Duration::from_secs(5), "the CONNECT's look", || async {
        looks().await > before
    })
    .await;
    assert_eq!(redis.cli(&["GET", &key]).trim(), "", "no waiter entry");
    redis.cli(&["FLUSHALL"]);
    for id in redis.tracking_clients() {
        redis.cli(&["CLIENT", "KILL", "ID", &id]);
    }
    let mut i = Initiator::connect(a.addr, &t)
        .await
        .expect("initiator pairs");
    let mut tg = target.await.unwrap().expect("the waiting target pairs");
    i.write_all(b"found").await.unwrap();
    assert_eq!(read_n(&mut tg, 5).await, b"found");
    eventually(Duration::from_secs(10), "tracking again", || async {
        redis.tracking_clients().len() == 2
    })
    .await;
    // And the nodes say so.
    a.wait_for("dtcp_store_looks_tracked", 1.0).await;
    b.wait_for("dtcp_store_looks_tracked", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_the_store_lost_is_left_again_and_answered() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    // Waiter entries, as where a proxy refuses tracking.
    let args = ["--connect-grace", "10", "--no-redis-tracking"];
    let [a, b] = [(); 2].map(|_| cluster_node(&urls, &args));
    a.wait_for("dtcp_nodes_alive", 2.0).await;
    b.wait_for("dtcp_nodes_alive", 2.0).await;
    assert_eq!(b.metric("dtcp_store_looks_tracked").await, 0.0);
    let t = triple("waiter-lost");
    let key = format!("dtcp:reg:{}", t.registration_id());
    let target = tokio::spawn({
        let (t, addr) = (t.clone(), b.addr);
        async move { Target::connect(addr, &t).await }
    });
    // The CONNECT's look left B's waiter in the record's place.
    let waiter = format!("? {}", b.node_id);
    eventually(Duration::from_secs(5), "the waiter", || async {
        redis.cli(&["GET", &key]).trim() == waiter
    })
    .await;
    let looks = || b.metric("dtcp_store_operations_total{op=\"lookup\"}");
    let before = looks().await;
    // The store loses it (a restart without persistence, as far as the
    // keys go); B's next look leaves it again.
    redis.cli(&["FLUSHALL"]);
    assert_eq!(redis.cli(&["GET", &key]).trim(), "");
    eventually(Duration::from_secs(8), "the waiter again", || async {
        looks().await > before && redis.cli(&["GET", &key]).trim() == waiter
    })
    .await;
    // A's CREATE finds it, replaces it by its record and tells B.
    let mut i = Initiator::connect(a.addr, &t)
        .await
        .expect("initiator pairs");
    let mut tg = target.await.unwrap().expect("the waiting target pairs");
    i.write_all(b"found").await.unwrap();
    assert_eq!(read_n(&mut tg, 5).await, b"found");
}
