//! docs/PROTOCOL.md against a real relay process: every command, reply and error
//! condition a lone node can produce, pipelining, half-close, resets, limits.

use std::time::{Duration, Instant};

use dtcp_client::dtcp_wire::Verb;
use dtcp_client::{ClientError, Initiator, Target};
use dtcp_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Short timers so that the tests that wait for them stay quick.
const FAST: &[&str] = &[
    "--connect-grace",
    "0.5",
    "--handshake-timeout",
    "1",
    "--pending-ttl",
    "2",
];

#[tokio::test]
async fn pairs_and_delivers_pipelined_bytes_both_ways() {
    let relay = Relay::start(FAST);
    let t = triple("pipelined");
    let mut create = command(Verb::Create, &t);
    create.extend_from_slice(b"early-from-initiator");
    let mut i = raw(relay.addr, &create).await;
    let mut connect = command(Verb::Connect, &t);
    connect.extend_from_slice(b"early-from-target");
    let mut tg = raw(relay.addr, &connect).await;

    assert_eq!(read_n(&mut i, 3).await, b"OK\0");
    assert_eq!(read_n(&mut tg, 3).await, b"OK\0");
    assert_eq!(read_n(&mut tg, 20).await, b"early-from-initiator");
    assert_eq!(read_n(&mut i, 17).await, b"early-from-target");

    i.write_all(b"ping").await.unwrap();
    assert_eq!(read_n(&mut tg, 4).await, b"ping");
    tg.write_all(b"pong").await.unwrap();
    assert_eq!(read_n(&mut i, 4).await, b"pong");
}

#[tokio::test]
async fn bytes_sent_while_pending_are_delivered_in_order() {
    let relay = Relay::start(FAST);
    let t = triple("pending-bytes");
    let mut i = raw(relay.addr, &command(Verb::Create, &t)).await;
    // Sent in several writes while nobody is connected yet.
    for chunk in [&b"one,"[..], b"two,", b"three"] {
        i.write_all(chunk).await.unwrap();
        // A sleep: the writes arrive apart, not as one segment.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut tg = Target::connect(relay.addr, &t).await.unwrap();
    assert_eq!(read_n(&mut i, 3).await, b"OK\0");
    assert_eq!(read_n(&mut tg, 13).await, b"one,two,three");
}

#[tokio::test]
async fn half_close_is_forwarded_each_way_on_its_own() {
    let relay = Relay::start(FAST);
    for initiator_first in [true, false] {
        let t = triple(&format!("half-close-{initiator_first}"));
        let (mut i, mut tg) = pair(relay.addr, relay.addr, &t).await;
        let (first, second) = if initiator_first {
            (&mut i, &mut tg)
        } else {
            (&mut tg, &mut i)
        };
        first.write_all(b"last words").await.unwrap();
        first.shutdown().await.unwrap();
        // The other side sees every byte, then EOF...
        assert_eq!(read_all(second).await, b"last words");
        // ...and can still talk back for as long as it likes.
        for _ in 0..3 {
            second.write_all(b"still here").await.unwrap();
            assert_eq!(read_n(first, 10).await, b"still here");
        }
        second.shutdown().await.unwrap();
        assert_eq!(read_all(first).await, b"");
    }
    relay
        .wait_for(
            "dtcp_sessions_completed_total{path=\"local\",outcome=\"closed\"}",
            2.0,
        )
        .await;
}

#[tokio::test]
async fn a_reset_on_one_side_closes_the_other() {
    let relay = Relay::start(FAST);
    let t = triple("reset");
    let (i, mut tg) = pair(relay.addr, relay.addr, &t).await;
    // Close with RST.
    socket2::SockRef::from(&i)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(i);
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), tg.read(&mut buf))
        .await
        .expect("target not closed after the initiator's reset");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    relay
        .wait_for(
            "dtcp_sessions_completed_total{path=\"local\",outcome=\"reset\"}",
            1.0,
        )
        .await;
}

#[tokio::test]
async fn connect_before_create_waits_for_it_within_the_grace() {
    let relay = NodeOptions::new().connect_grace(3.0).start();
    let t = triple("early-connect");
    let target = tokio::spawn({
        let t = t.clone();
        let addr = relay.addr;
        async move { Target::connect(addr, &t).await }
    });
    // The CONNECT waits: it has looked for the registration and not found it.
    let r = &relay;
    eventually(
        Duration::from_secs(5),
        "the CONNECT waiting",
        || async move { r.metric("dtcp_store_operations_total{op=\"lookup\"}").await >= 1.0 },
    )
    .await;
    let mut i = Initiator::connect(relay.addr, &t).await.unwrap();
    let mut tg = target.await.unwrap().unwrap();
    i.write_all(b"x").await.unwrap();
    assert_eq!(read_n(&mut tg, 1).await, b"x");
}

#[tokio::test]
async fn not_found_after_the_connect_grace() {
    let relay = Relay::start(FAST);
    let started = Instant::now();
    let err = Target::connect(relay.addr, &triple("nobody"))
        .await
        .unwrap_err();
    assert_eq!(
        err.condition(),
        Some(dtcp_client::dtcp_wire::Condition::NotFound),
        "{err}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(450),
        "answered before the grace: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "grace not honoured: {waited:?}"
    );
}

#[tokio::test]
async fn exactly_one_connect_pairs_with_a_create() {
    let relay = Relay::start(FAST);
    let t = triple("race");
    let i = tokio::spawn({
        let t = t.clone();
        let addr = relay.addr;
        async move { Initiator::connect(addr, &t).await }
    });
    relay.wait_for("dtcp_pending_registrations", 1.0).await;
    let targets: Vec<_> = (0..8)
        .map(|_| {
            let t = t.clone();
            let addr = relay.addr;
            tokio::spawn(async move { Target::connect(addr, &t).await })
        })
        .collect();
    let mut ok = 0;
    for r in targets {
        match r.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(
                e.condition(),
                Some(dtcp_client::dtcp_wire::Condition::NotFound),
                "{e}"
            ),
        }
    }
    assert_eq!(ok, 1, "exactly one CONNECT pairs");
    assert!(i.await.unwrap().is_ok());
}

#[tokio::test]
async fn a_duplicate_create_is_a_conflict() {
    let relay = Relay::start(FAST);
    let t = triple("dup");
    let _first = raw(relay.addr, &command(Verb::Create, &t)).await;
    relay.wait_for("dtcp_pending_registrations", 1.0).await;
    let err = Initiator::connect(relay.addr, &t).await.unwrap_err();
    assert_eq!(
        err.condition(),
        Some(dtcp_client::dtcp_wire::Condition::Conflict),
        "{err}"
    );
}

#[tokio::test]
async fn an_initiator_that_hangs_up_leaves_nothing_behind() {
    let relay = NodeOptions::new().connect_grace(0.3).start();
    let t = triple("hangup");
    for _ in 0..3 {
        let i = raw(relay.addr, &command(Verb::Create, &t)).await;
        relay.wait_for("dtcp_pending_registrations", 1.0).await;
        drop(i);
        eventually(
            Duration::from_secs(5),
            "pending table and store empty",
            || async {
                let page = relay.scrape().await;
                sample_value(&page, "dtcp_pending_registrations") == 0.0
                    && sample_value(&page, "dtcp_store_registrations") == 0.0
            },
        )
        .await;
        // The session is gone: a CONNECT finds nothing.
        let err = Target::connect(relay.addr, &t).await.unwrap_err();
        assert_eq!(
            err.condition(),
            Some(dtcp_client::dtcp_wire::Condition::NotFound)
        );
    }
    // And the same triple can be created again at once, and pairs.
    pair(relay.addr, relay.addr, &t).await;
}

#[tokio::test]
async fn an_unclaimed_create_times_out() {
    let relay = NodeOptions::new().pending_ttl(0.5).start();
    let started = Instant::now();
    let err = Initiator::connect(relay.addr, &triple("lonely"))
        .await
        .unwrap_err();
    assert_eq!(
        err.condition(),
        Some(dtcp_client::dtcp_wire::Condition::Timeout),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(450));
    relay.wait_for("dtcp_store_registrations", 0.0).await;
}

#[tokio::test]
async fn an_incomplete_command_times_out() {
    let relay = Relay::start(FAST);
    let mut s = raw(relay.addr, b"CREATE\0key\0").await;
    let started = Instant::now();
    assert!(is_error(&read_all(&mut s).await, "timeout"));
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn a_slow_loris_is_cut_off_at_the_handshake_timeout() {
    let relay = Relay::start(FAST);
    let cmd = command(Verb::Create, &triple("loris"));
    let mut s = raw(relay.addr, &cmd[..1]).await;
    let started = Instant::now();
    // One byte every 100 ms: the whole command would take seconds.
    for b in &cmd[1..] {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        // A sleep: the loris's pace is the attack.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    assert!(is_error(&read_all(&mut s).await, "timeout"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Bad input gets `bad-request` at once: the relay has a 30 s handshake
/// timeout here, and each answer must come long before it.
#[tokio::test]
async fn bad_requests_are_refused_at_once() {
    let relay = NodeOptions::new()
        .handshake_timeout(30.0)
        .max_command_len(300)
        .start();
    let long_key = format!("CONNECT\0{}\0", "k".repeat(257));
    let long_jid = format!("CREATE\0k\0{}@x\0", "j".repeat(1024));
    let long_cmd = format!("CREATE\0k\0{}\0", "j".repeat(290));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n".to_vec(),
        ),
        (
            "TLS ClientHello",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
        ),
        ("lowercase verb", b"create\0k\0a@b\0c@d\0".to_vec()),
        ("unknown verb", b"DELETE\0k\0a@b\0c@d\0".to_vec()),
        ("empty key", b"CREATE\0\0a@b\0c@d\0".to_vec()),
        ("empty JID", b"CONNECT\0k\0\0c@d\0".to_vec()),
        ("key not UTF-8", b"CREATE\0\xff\xfe\0a@b\0c@d\0".to_vec()),
        ("JID not UTF-8", b"CREATE\0k\0a@\xc0\0".to_vec()),
        ("malformed JID", b"CREATE\0k\0a@b\0@d\0".to_vec()),
        ("JID with a space", b"CREATE\0k\0ro meo@b\0".to_vec()),
        ("key too long", long_key.into_bytes()),
        ("JID part too long", long_jid.into_bytes()),
        ("command too long", long_cmd.into_bytes()),
    ];
    for (what, bytes) in cases {
        let started = Instant::now();
        let mut s = raw(relay.addr, &bytes).await;
        let reply = read_all(&mut s).await;
        assert!(
            is_error(&reply, "bad-request"),
            "{what}: {:?}",
            String::from_utf8_lossy(&reply)
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: not at once"
        );
    }
    // Closing the sending half in the middle of a command.
    let mut s = raw(relay.addr, b"CREATE\0half").await;
    s.shutdown().await.unwrap();
    assert!(is_error(&read_all(&mut s).await, "bad-request"));
    assert_eq!(
        relay
            .metric("dtcp_errors_total{condition=\"bad-request\"}")
            .await,
        14.0
    );
}

#[tokio::test]
async fn a_domain_policy_answers_forbidden() {
    let relay = NodeOptions::new()
        .allow_domain("b.example")
        .connect_grace(0.5)
        .start();
    let outsider =
        dtcp_client::dtcp_wire::Triple::new("k", "x@elsewhere.example", "y@other.example").unwrap();
    let err = Initiator::connect(relay.addr, &outsider).await.unwrap_err();
    assert_eq!(
        err.condition(),
        Some(dtcp_client::dtcp_wire::Condition::Forbidden),
        "{err}"
    );
    let err = Target::connect(relay.addr, &outsider).await.unwrap_err();
    assert_eq!(
        err.condition(),
        Some(dtcp_client::dtcp_wire::Condition::Forbidden),
        "{err}"
    );
    // triple() has its target in b.example.
    let t = triple("allowed");
    pair(relay.addr, relay.addr, &t).await;
}

#[tokio::test]
async fn the_connection_limit_answers_resource_constraint() {
    let relay = NodeOptions::new()
        .max_connections(2)
        .handshake_timeout(30.0)
        .start();
    let _a = raw(relay.addr, b"CRE").await;
    let _b = raw(relay.addr, b"CON").await;
    relay.wait_for("dtcp_connections_open", 2.0).await;
    let mut c = raw(relay.addr, &command(Verb::Create, &triple("third"))).await;
    assert!(is_error(&read_all(&mut c).await, "resource-constraint"));
    drop((_a, _b));
    relay.wait_for("dtcp_connections_open", 0.0).await;
    let t = triple("after");
    // the limit counts open connections only
    pair(relay.addr, relay.addr, &t).await;
}

#[tokio::test]
async fn the_per_address_limit_answers_resource_constraint() {
    let relay = NodeOptions::new().max_pending_per_ip(2).start();
    let _a = raw(relay.addr, &command(Verb::Create, &triple("ip-a"))).await;
    let _b = raw(relay.addr, &command(Verb::Create, &triple("ip-b"))).await;
    relay.wait_for("dtcp_pending_registrations", 2.0).await;
    let err = Initiator::connect(relay.addr, &triple("ip-c"))
        .await
        .unwrap_err();
    assert_eq!(
        err.condition(),
        Some(dtcp_client::dtcp_wire::Condition::ResourceConstraint),
        "{err}"
    );
    // CONNECTs are not pending CREATEs: they are not limited by it.
    let t = triple("ip-a");
    let mut tg = Target::connect(relay.addr, &t).await.unwrap();
    let mut a = _a;
    assert_eq!(read_n(&mut a, 3).await, b"OK\0");
    a.write_all(b"!").await.unwrap();
    assert_eq!(read_n(&mut tg, 1).await, b"!");
    // A paired session no longer counts: a new CREATE fits again.
    let _c = raw(relay.addr, &command(Verb::Create, &triple("ip-d"))).await;
    relay.wait_for("dtcp_pending_registrations", 2.0).await;
}

#[tokio::test]
async fn an_idle_session_is_closed_after_the_idle_timeout() {
    let relay = NodeOptions::new().idle_timeout(0.5).start();
    let t = triple("idle");
    let (mut i, mut tg) = pair(relay.addr, relay.addr, &t).await;
    // Traffic keeps it alive past the timeout...
    for _ in 0..6 {
        // A sleep: the traffic's pace, within the idle timeout.
        tokio::time::sleep(Duration::from_millis(200)).await;
        i.write_all(b".").await.unwrap();
        assert_eq!(read_n(&mut tg, 1).await, b".");
    }
    // ...silence ends it, with a reset: a cut, not the Initiator's FIN
    // (docs/PROTOCOL.md section 2).
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), tg.read(&mut byte))
        .await
        .expect("the idle session was not closed");
    let err = read.expect_err("the idle session ended with a FIN, not a reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(
        relay
            .metric("dtcp_sessions_completed_total{path=\"local\",outcome=\"idle_timeout\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn metrics_never_carry_keys_or_jids() {
    let relay = Relay::start(FAST);
    let t = triple("secret-marker");
    let (mut i, mut tg) = pair(relay.addr, relay.addr, &t).await;
    i.write_all(b"hello").await.unwrap();
    assert_eq!(read_n(&mut tg, 5).await, b"hello");
    let _ = Target::connect(relay.addr, &triple("another-marker")).await;
    let page = relay.scrape().await;
    assert!(
        page.contains(
            "dtcp_relayed_bytes_total{path=\"local\",direction=\"initiator_to_target\"} 5"
        ),
        "{page}"
    );
    for secret in ["secret-marker", "another-marker", "a.example", "b.example"] {
        assert!(!page.contains(secret), "{secret} leaked into metrics");
    }
    for line in relay.logs() {
        let text = line.to_string();
        assert!(!text.contains("key-secret-marker"), "key logged: {text}");
    }
    let (status, _) = http_get(relay.metrics, "/readyz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_client_reports_the_relays_condition() {
    let relay = Relay::start(FAST);
    match Target::connect(relay.addr, &triple("missing")).await {
        Err(ClientError::Refused { condition, text }) => {
            assert_eq!(condition.as_str(), "not-found");
            assert!(!text.is_empty());
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
