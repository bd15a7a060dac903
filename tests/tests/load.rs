//! Volume and abuse against one relay: big transfers, many pairs, floods of
//! garbage and of idle connections. Each ends by checking that nothing
//! leaked and that the relay still pairs.

use std::time::Duration;

use dtcp_client::dtcp_wire::Verb;
use dtcp_tests::*;
use tokio::io::AsyncWriteExt;

async fn assert_clean_and_working(relay: &Relay) {
    eventually(
        Duration::from_secs(15),
        "no connection, pending or registration left",
        || async {
            let page = relay.scrape().await;
            sample_value(&page, "dtcp_connections_open") == 0.0
                && sample_value(&page, "dtcp_pending_registrations") == 0.0
                && sample_value(&page, "dtcp_store_registrations") == 0.0
                && sample_value(&page, "dtcp_sessions_active{path=\"local\"}") == 0.0
        },
    )
    .await;
    let t = triple("still-working");
    let (mut i, mut tg) = pair(relay.addr, relay.addr, &t).await;
    i.write_all(b"alive").await.unwrap();
    assert_eq!(read_n(&mut tg, 5).await, b"alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_256_mib_both_ways_at_once() {
    // splice(2) on Linux, the default.
    transfer_both_ways(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_256_mib_both_ways_through_the_portable_copy() {
    transfer_both_ways(&["--no-splice"]).await;
}

async fn transfer_both_ways(args: &[&str]) {
    const SIZE: u64 = 256 << 20;
    let relay = Relay::start(args);
    let t = triple("big");
    let (i, tg) = pair(relay.addr, relay.addr, &t).await;
    let (mut ir, mut iw) = i.into_split();
    let (mut tr, mut tw) = tg.into_split();
    let (sent_it, sent_ti, got_t, got_i) = tokio::join!(
        send_pattern(&mut iw, 1, SIZE),
        send_pattern(&mut tw, 2, SIZE),
        recv_digest(&mut tr),
        recv_digest(&mut ir),
    );
    assert_eq!(got_t, (SIZE, sent_it), "initiator -> target");
    assert_eq!(got_i, (SIZE, sent_ti), "target -> initiator");
    let page = relay.scrape().await;
    for dir in ["initiator_to_target", "target_to_initiator"] {
        let sample = format!("dtcp_relayed_bytes_total{{path=\"local\",direction=\"{dir}\"}}");
        assert_eq!(sample_value(&page, &sample), SIZE as f64, "{dir}");
    }
    drop((iw, tw, ir, tr));
    assert_clean_and_working(&relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_pairs() {
    raise_fd_limit();
    const PAIRS: usize = 500;
    let relay = NodeOptions::new().connect_grace(20.0).start();
    let mut tasks = Vec::new();
    for n in 0..PAIRS {
        let addr = relay.addr;
        tasks.push(tokio::spawn(async move {
            let t = triple(&format!("pair-{n}"));
            let (i, tg) = pair(addr, addr, &t).await;
            // Both ways at once, every byte checked.
            exchange(i, tg, 64 * 1024 + n as u64, n as u64 * 2 + 1).await;
        }));
    }
    for t in tasks {
        t.await.expect("pair task");
    }
    let page = relay.scrape().await;
    assert_eq!(
        sample_value(&page, "dtcp_commands_total{verb=\"create\",outcome=\"ok\"}"),
        PAIRS as f64
    );
    assert_eq!(
        sample_value(
            &page,
            "dtcp_commands_total{verb=\"connect\",outcome=\"ok\"}"
        ),
        PAIRS as f64
    );
    assert_clean_and_working(&relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_gets_bad_request_and_leaves_nothing() {
    raise_fd_limit();
    const CONNS: u64 = 2_000;
    let relay = NodeOptions::new().start();
    let mut tasks = Vec::new();
    for n in 0..CONNS {
        let addr = relay.addr;
        tasks.push(tokio::spawn(async move {
            let mut junk = vec![0u8; 64 + (n as usize % 512)];
            Pattern::new(n + 7).fill(&mut junk);
            // Make sure the first byte cannot begin a command.
            junk[0] = b'G';
            let mut s = raw(addr, &junk).await;
            is_error(&read_all(&mut s).await, "bad-request")
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += u64::from(t.await.unwrap());
    }
    assert_eq!(refused, CONNS, "every garbage connection got bad-request");
    assert_clean_and_working(&relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_time_out_and_leave_nothing() {
    raise_fd_limit();
    const CONNS: usize = 5_000;
    // Long enough that all 5,000 are open at once even on a loaded machine.
    let relay = NodeOptions::new().handshake_timeout(8.0).start();
    let mut socks = Vec::with_capacity(CONNS);
    for n in 0..CONNS {
        // Half send nothing, half an unfinished command.
        let bytes: &[u8] = if n % 2 == 0 { b"" } else { b"CONNECT\0k" };
        socks.push(raw(relay.addr, bytes).await);
    }
    eventually(Duration::from_secs(8), "all connections held", || async {
        relay.metric("dtcp_connections_open").await == CONNS as f64
    })
    .await;
    // The relay still answers while holding them.
    let mut s = raw(relay.addr, &command(Verb::Connect, &triple("nobody-here"))).await;
    let mut timed_out = 0;
    let mut tasks = Vec::new();
    for mut sock in socks {
        tasks.push(tokio::spawn(async move {
            is_error(&read_all(&mut sock).await, "timeout")
        }));
    }
    for t in tasks {
        timed_out += usize::from(t.await.unwrap());
    }
    assert_eq!(timed_out, CONNS, "each idle connection got timeout");
    assert!(is_error(&read_all(&mut s).await, "not-found"));
    assert_clean_and_working(&relay).await;
}
