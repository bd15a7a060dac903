//! Direct first, relay as fallback: the Initiator's own listeners, the
//! Target's candidate list, the races between the two paths, and the `dtcp`
//! tool's `--listen` / `--candidates`. Loopback only: the Initiator's
//! listeners are on 127.0.0.2 (and other 127/8 addresses), the relay on
//! 127.0.0.1, so that the path taken shows in the addresses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use dtcp_client::dtcp_wire::Triple;
use dtcp_client::{Candidate, Candidates, Initiator, Paired, Route, Target, Timeouts, tls};
use dtcp_tests::testkit::{Output as To, Process};
use dtcp_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Short relay timers, so that a loser's CONNECT at the relay ends quickly.
const FAST: &[&str] = &["--connect-grace", "0.5", "--handshake-timeout", "2"];

/// An address of the Initiator's own, told apart from the relay's 127.0.0.1.
fn direct_addr() -> SocketAddr {
    "127.0.0.2:0".parse().unwrap()
}

/// An address nobody listens on.
fn closed_port(ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap()
}

/// A listener that accepts connections and never answers them.
async fn silent_listener(ip: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// The sum of every sample of a metric family (all label sets).
async fn family_sum(relay: &Relay, name: &str) -> f64 {
    relay
        .scrape()
        .await
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (sample, value) = l.rsplit_once(' ')?;
            let family = sample.split('{').next()?;
            (family == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// What a relay that carried no session shows.
async fn assert_relay_saw_no_session(relay: &Relay) {
    for family in [
        "dtcp_sessions_active",
        "dtcp_sessions_completed_total",
        "dtcp_relayed_bytes_total",
        "dtcp_pairing_latency_seconds_count",
    ] {
        assert_eq!(family_sum(relay, family).await, 0.0, "{family}");
    }
    assert_eq!(
        relay
            .metric(r#"dtcp_commands_total{verb="connect",outcome="ok"}"#)
            .await,
        0.0
    );
}

/// Waits until the relay has finished exactly one session (whatever its
/// outcome: a closed or a reset end both count).
async fn relay_carried_one_session(relay: &Relay) {
    eventually(
        Duration::from_secs(10),
        "one session through the relay",
        || async { family_sum(relay, "dtcp_sessions_completed_total").await == 1.0 },
    )
    .await;
    assert!(family_sum(relay, "dtcp_relayed_bytes_total").await > 0.0);
}

/// Sends `size` pattern bytes from the Initiator to the Target and back,
/// optionally through end-to-end TLS, checking every byte.
async fn transfer(initiator: Paired, target: Paired, use_tls: bool, size: u64, seed: u64) {
    if use_tls {
        let id = tls::Identity::generate().unwrap();
        let fp = tls::parse_fingerprint(id.fingerprint()).unwrap();
        let (server, client) = tokio::join!(
            tls::accept(initiator.stream, &id),
            tls::connect(target.stream, fp)
        );
        let (mut server, mut client) = (server.unwrap(), client.unwrap());
        let (sent, got) = tokio::join!(
            send_pattern(&mut server, seed, size),
            recv_digest(&mut client)
        );
        assert_eq!(got, (size, sent), "initiator -> target through TLS");
    } else {
        exchange(initiator.stream, target.stream, size, seed).await;
    }
}

#[tokio::test]
async fn the_direct_path_is_used_when_reachable_and_the_relay_sees_no_session() {
    for use_tls in [false, true] {
        let relay = Relay::start(FAST);
        let t = triple(&format!("direct-{use_tls}"));
        let offer = Initiator::offer(&[direct_addr()], Some(&relay.addr.to_string()), &t)
            .await
            .unwrap();
        let list = offer.candidates();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].to_string(), format!("relay@{}", relay.addr));
        let initiator = tokio::spawn(offer.accept());
        // The CREATE is registered, so the relay path is really open.
        relay.wait_for("dtcp_pending_registrations", 1.0).await;

        let target = Target::connect_any(&list.to_string().parse().unwrap(), &t)
            .await
            .unwrap();
        let initiator = initiator.await.unwrap().unwrap();
        assert_eq!(
            (initiator.route, target.route),
            (Route::Direct, Route::Direct)
        );
        assert_eq!(target.peer, list[0].socket_addr().unwrap());
        assert_eq!(initiator.peer.ip().to_string(), "127.0.0.1");
        transfer(initiator, target, use_tls, 4 << 20, 21).await;

        // The CREATE was withdrawn, and not a byte went through the relay.
        relay.wait_for("dtcp_pending_registrations", 0.0).await;
        assert_relay_saw_no_session(&relay).await;
    }
}

#[tokio::test]
async fn past_a_closed_port_and_a_silent_listener_the_relay_carries_it() {
    let relay = Relay::start(FAST);
    let t = triple("fallback");
    let offer = Initiator::offer(&[direct_addr()], Some(&relay.addr.to_string()), &t)
        .await
        .unwrap();
    let initiator = tokio::spawn(offer.accept());
    relay.wait_for("dtcp_pending_registrations", 1.0).await;

    let closed = closed_port("127.0.0.3");
    let (silent, _held) = silent_listener("127.0.0.4").await;
    let list = Candidates::new(vec![
        Candidate::direct(closed),
        Candidate::direct(silent),
        Candidate::relay(&relay.addr.to_string()).unwrap(),
    ]);
    let timeouts = Timeouts {
        connect: Duration::from_millis(700),
        reply: Duration::from_millis(700),
        ..Timeouts::default()
    };
    let mut failed = Vec::new();
    let started = Instant::now();
    let target = Target::connect_any_with(&list, &t, &timeouts, |a| {
        failed.push(format!("{a}"));
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let initiator = initiator.await.unwrap().unwrap();
    assert_eq!(
        (initiator.route, target.route),
        (Route::Relay, Route::Relay)
    );
    assert_eq!(target.peer, relay.addr);
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed[0].contains("cannot connect"), "{failed:?}");
    assert!(failed[1].contains("no reply"), "{failed:?}");
    // The silent listener cost its reply timeout; the whole fallback stays
    // within the two failed candidates' budgets.
    let budget = 2 * (timeouts.connect + timeouts.reply);
    assert!(took >= timeouts.reply, "{took:?}");
    assert!(took < budget, "{took:?} >= {budget:?}");
    eprintln!("fell back past a closed port and a silent listener in {took:?}");

    // TLS end to end through the relay, as on the direct path.
    transfer(initiator, target, true, 2 << 20, 22).await;
    relay_carried_one_session(&relay).await;
}

/// A listener whose accept queue is full: the kernel drops further SYNs, as
/// a firewall that drops would. Returns the address and what keeps it full.
fn dropping_listener(ip: &str) -> (SocketAddr, Vec<std::net::TcpStream>, socket2::Socket) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&format!("{ip}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue (backlog 0 holds one, give it a few).
    let mut fill = Vec::new();
    for _ in 0..4 {
        let c = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        c.set_nonblocking(true).unwrap();
        let _ = c.connect(&addr.into());
        fill.push(c.into());
    }
    dtcp_tests::testkit::wait_until(Duration::from_secs(5), "a full accept queue", || {
        accept_queue_full(&s)
    });
    (addr, fill, s)
}

/// Whether a listener's accept queue is full: Linux gives a listening
/// socket's queue length and backlog in its `TCP_INFO` (as `tcpi_unacked`
/// and `tcpi_sacked`), and takes it as full past the backlog.
fn accept_queue_full(listener: &socket2::Socket) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain integers; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes to `info`, which has
    // that many.
    let rc = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_unacked > info.tcpi_sacked
}

/// The time to fall back to the relay after each kind of failed direct
/// candidate, with the default timeouts. The README quotes these numbers.
#[tokio::test]
async fn time_to_fall_back_for_each_failure_kind() {
    let relay = Relay::start(FAST);
    // A candidate that answers ERROR: another Initiator's listener, for
    // another session (not-found).
    let other = Initiator::offer(&["127.0.0.5:0".parse().unwrap()], None, &triple("other"))
        .await
        .unwrap();
    let refusing = other.local_addrs()[0];
    let _other = tokio::spawn(other.accept());
    let (silent, _held) = silent_listener("127.0.0.4").await;
    let (dropping, _fill, _queue) = dropping_listener("127.0.0.6");

    let kinds = [
        ("closed port", closed_port("127.0.0.3")),
        ("listener that never answers", silent),
        ("ERROR reply (not-found)", refusing),
        ("SYN dropped (accept queue full)", dropping),
    ];
    let defaults = Timeouts::default();
    let mut report = Vec::new();
    for (i, (kind, addr)) in kinds.into_iter().enumerate() {
        let t = triple(&format!("kind-{i}"));
        let offer = Initiator::offer(&[], Some(&relay.addr.to_string()), &t)
            .await
            .unwrap();
        let initiator = tokio::spawn(offer.accept());
        relay.wait_for("dtcp_pending_registrations", 1.0).await;
        let list = Candidates::new(vec![
            Candidate::direct(addr),
            Candidate::relay(&relay.addr.to_string()).unwrap(),
        ]);
        let mut why = String::new();
        let started = Instant::now();
        let target = Target::connect_any_with(&list, &t, &defaults, |a| why = a.error.to_string())
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(target.route, Route::Relay, "{kind}");
        let initiator = initiator.await.unwrap().unwrap();
        drop((initiator, target));
        relay.wait_for("dtcp_pending_registrations", 0.0).await;
        report.push(format!("{kind}: {took:.1?} ({why})"));
        let limit = match i {
            0 | 2 => Duration::from_millis(500),
            1 => defaults.reply + Duration::from_millis(500),
            _ => defaults.connect + Duration::from_millis(500),
        };
        assert!(took < limit, "{kind}: {took:?}");
        if i == 1 {
            assert!(took >= defaults.reply, "{kind}: {took:?}");
        }
        if i == 3 {
            assert!(why.contains("no connection within"), "{kind}: {why}");
        }
    }
    eprintln!("time to fall back to the relay, default timeouts:");
    for line in &report {
        eprintln!("  {line}");
    }
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_the_right_one_after_it_succeeds() {
    let t = triple("wrong-key");
    let offer = Initiator::offer(&[direct_addr()], None, &t).await.unwrap();
    let list = offer.candidates();
    let mut refused = Vec::new();
    let initiator = tokio::spawn(offer.accept_with(move |e| {
        if let dtcp_client::OfferEvent::DirectRefused { condition, .. } = e {
            refused.push(condition);
        }
    }));
    let wrong = Triple::new("not-the-key", t.initiator(), t.target()).unwrap();
    let err = Target::connect_any(&list, &wrong).await.unwrap_err();
    assert_eq!(err.attempts.len(), 1);
    assert_eq!(
        err.attempts[0].error.condition(),
        Some(dtcp_client::dtcp_wire::Condition::NotFound),
        "{err}"
    );
    // Other JIDs, too.
    let other_jid = Triple::new(t.key(), t.initiator(), "mallory@b.example/x").unwrap();
    let err = Target::connect_any(&list, &other_jid).await.unwrap_err();
    assert!(err.to_string().contains("not-found"), "{err}");
    // Garbage gets what the relay would answer.
    let mut s = raw(list[0].socket_addr().unwrap(), b"HELLO\0").await;
    assert!(is_error(&read_all(&mut s).await, "bad-request"));

    let target = Target::connect_any(&list, &t).await.unwrap();
    let initiator = initiator.await.unwrap().unwrap();
    assert_eq!(
        (initiator.route, target.route),
        (Route::Direct, Route::Direct)
    );
    transfer(initiator, target, false, 1 << 20, 23).await;
}

/// One round of a direct CONNECT and a CONNECT at the relay sent at once.
/// Returns the path the Initiator took.
async fn race_once(relay: &Relay, round: usize) -> Route {
    let t = triple(&format!("race-{round}"));
    let offer = Initiator::offer(&[direct_addr()], Some(&relay.addr.to_string()), &t)
        .await
        .unwrap();
    let direct_list = Candidates::new(vec![Candidate::direct(offer.local_addrs()[0])]);
    let initiator = tokio::spawn(offer.accept());
    relay.wait_for("dtcp_pending_registrations", 1.0).await;

    let size = 256 * 1024;
    let seed = 100 + round as u64;
    // Two Targets at once: one directly, one through the relay.
    let stagger = Duration::from_micros((round as u64 % 5) * 200);
    let direct = {
        let t = t.clone();
        tokio::spawn(async move {
            if round.is_multiple_of(2) {
                // A sleep: the stagger is this round's head start.
                tokio::time::sleep(stagger).await;
            }
            Target::connect_any(&direct_list, &t)
                .await
                .map(|p| p.stream)
        })
    };
    let relayed = {
        let t = t.clone();
        let addr = relay.addr;
        tokio::spawn(async move {
            if !round.is_multiple_of(2) {
                // A sleep: the stagger is this round's head start.
                tokio::time::sleep(stagger).await;
            }
            Target::connect(addr, &t).await
        })
    };
    let paired = initiator.await.unwrap().unwrap();
    let route = paired.route;
    let sender = tokio::spawn(async move {
        let mut s = paired.stream;
        let sent = send_pattern(&mut s, seed, size).await;
        // Read to the end: the winner closes after receiving.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        sent
    });

    // What each Target got: the bytes it read before its stream ended.
    async fn drain(r: Result<TcpStream, String>) -> Option<(u64, [u8; 32])> {
        let mut s = r.ok()?;
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            let mut h = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => h.extend_from_slice(&buf[..n]),
                }
            }
            h
        })
        .await
        .expect("a losing stream must end, not hang");
        s.shutdown().await.ok();
        use sha2::Digest;
        Some((got.len() as u64, sha2::Sha256::digest(&got).into()))
    }
    let direct = drain(direct.await.unwrap().map_err(|e| e.to_string())).await;
    let relayed = drain(relayed.await.unwrap().map_err(|e| e.to_string())).await;
    let sent = sender.await.unwrap();
    let (winner, loser) = match route {
        Route::Direct => (direct, relayed),
        Route::Relay => (relayed, direct),
    };
    assert_eq!(
        winner,
        Some((size, sent)),
        "round {round}: the winner gets it all"
    );
    if let Some((n, _)) = loser {
        assert_eq!(n, 0, "round {round}: the loser got bytes");
    }
    route
}

#[tokio::test]
async fn a_direct_connect_racing_the_relay_ok_delivers_once() {
    let relay = Relay::start(FAST);
    let (mut direct, mut relayed) = (0, 0);
    for round in 0..24 {
        match race_once(&relay, round).await {
            Route::Direct => direct += 1,
            Route::Relay => relayed += 1,
        }
        // Both sides of the loser are closed: the relay holds nothing.
        relay.wait_for("dtcp_sessions_active", 0.0).await;
        relay.wait_for("dtcp_pending_registrations", 0.0).await;
    }
    eprintln!("race winners: direct {direct}, relay {relayed}");
    assert_eq!(direct + relayed, 24);
}

#[tokio::test]
async fn the_relay_ok_while_a_direct_connect_is_being_checked_wins() {
    let relay = Relay::start(FAST);
    let t = triple("mid-check");
    let offer = Initiator::offer(&[direct_addr()], Some(&relay.addr.to_string()), &t)
        .await
        .unwrap();
    let listener = offer.local_addrs()[0];
    let initiator = tokio::spawn(offer.accept());
    relay.wait_for("dtcp_pending_registrations", 1.0).await;

    // A direct CONNECT, half sent: the Initiator is still reading it.
    let connect = command(dtcp_client::dtcp_wire::Verb::Connect, &t);
    let (half, rest) = connect.split_at(connect.len() / 2);
    let mut direct = raw(listener, half).await;
    // A sleep: the Initiator reading the half command leaves nothing to
    // poll; a moment lets it begin.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Meanwhile the relay pairs.
    let target = Target::connect(relay.addr, &t).await.unwrap();
    let initiator = initiator.await.unwrap().unwrap();
    assert_eq!(initiator.route, Route::Relay);

    // The half-read CONNECT is answered at once: not-found, and closed,
    // before the rest of it is even sent.
    let reply = read_all(&mut direct).await;
    assert!(
        is_error(&reply, "not-found"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    assert!(String::from_utf8_lossy(&reply).contains("another path"));
    let _ = direct.write_all(rest).await;
    // The listener is closed.
    assert!(TcpStream::connect(listener).await.is_err());

    let target = Paired {
        stream: target,
        route: Route::Relay,
        peer: relay.addr,
    };
    transfer(initiator, target, false, 1 << 20, 24).await;
}

// ---------------------------------------------------------------------------
// The `dtcp` tool.

const JIDS: [&str; 4] = [
    "--from",
    "alice@a.example/laptop",
    "--to",
    "bob@b.example/phone",
];

/// `args` for `dtcp`, with the key and the JIDs every test uses.
fn with_session<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(["--key", "direct-cli-key"]);
    all.extend(JIDS);
    all
}

fn dtcp(args: &[&str]) -> Command {
    let mut c = Command::new(bin("dtcp"));
    c.args(with_session(args)).stdin(Stdio::null());
    c
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dtcp-direct-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_file(path: &Path, size: usize, seed: u64) {
    let mut data = vec![0u8; size];
    Pattern::new(seed).fill(&mut data);
    std::fs::write(path, data).unwrap();
}

fn ok(out: &Output, who: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{who} failed: {err}");
    err
}

/// How long `dtcp send` may take to print its candidates, and to exit.
const SENDER_WAIT: Duration = Duration::from_secs(60);

/// A running `dtcp send` (killed if the test ends first), with what it
/// printed before waiting.
struct Sender {
    process: Process,
    candidates: String,
    fingerprint: Option<String>,
}

impl Sender {
    /// Starts `dtcp send` and waits for its candidate list.
    fn start(args: &[&str]) -> Sender {
        let mut process = Process::new(bin("dtcp"), with_session(args))
            .name("dtcp send")
            .stderr(To::Lines);
        process.spawn();
        let lines = process.lines();
        let after = |prefix: &str| lines.find_map(|l| l.strip_prefix(prefix).map(str::to_owned));
        process.wait_ready(SENDER_WAIT, || after("candidates: ").is_some());
        Sender {
            candidates: after("candidates: ").expect("printed"),
            fingerprint: after("TLS fingerprint: "),
            process,
        }
    }

    /// Waits for it to exit successfully; returns its stderr after the
    /// candidate list.
    fn succeed(mut self) -> String {
        let status = self
            .process
            .wait_exit(SENDER_WAIT)
            .expect("send did not exit");
        let err = self
            .process
            .lines()
            .all()
            .into_iter()
            .skip_while(|l| !l.starts_with("candidates: "))
            .skip(1)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(status.success(), "send failed: {err}");
        err
    }
}

#[tokio::test]
async fn dtcp_send_listen_to_recv_candidates_moves_a_file_directly() {
    let relay = Relay::start(FAST);
    let r = relay.addr.to_string();
    let dir = tempdir("direct");
    let (src, dst) = (dir.join("in.bin"), dir.join("out.bin"));
    write_file(&src, 5 << 20, 31);
    let send = Sender::start(&[
        "send",
        "--listen",
        "127.0.0.2",
        "--relay",
        &r,
        src.to_str().unwrap(),
    ]);
    let list = send.candidates.clone();
    assert!(list.starts_with("dtcp://127.0.0.2:"), "{list}");
    assert!(list.ends_with(&format!(",relay@{r}")), "{list}");
    let recv = dtcp(&["recv", "--candidates", &list, "-o", dst.to_str().unwrap()])
        .output()
        .unwrap();
    let recv_err = ok(&recv, "recv");
    let send_err = send.succeed();
    assert!(recv_err.contains("connected directly"), "{recv_err}");
    assert!(send_err.contains("connected directly"), "{send_err}");
    assert!(std::fs::read(&src).unwrap() == std::fs::read(&dst).unwrap());
    assert_relay_saw_no_session(&relay).await;
}

#[tokio::test]
async fn dtcp_recv_falls_back_to_the_relay_when_the_direct_address_is_closed() {
    let relay = Relay::start(FAST);
    let r = relay.addr.to_string();
    let dir = tempdir("fallback");
    let (src, dst) = (dir.join("in.bin"), dir.join("out.bin"));
    write_file(&src, 3 << 20, 32);
    let send = Sender::start(&[
        "send",
        "--tls",
        "--listen",
        "127.0.0.2:0",
        "--relay",
        &r,
        src.to_str().unwrap(),
    ]);
    let fingerprint = send.fingerprint.clone().expect("a TLS fingerprint");
    relay.wait_for("dtcp_pending_registrations", 1.0).await;
    // The receiver's first candidate is closed (the sender's listener is
    // elsewhere); the relay is next.
    let list = format!("dtcp://{},relay@{r}", closed_port("127.0.0.3"));
    let recv = dtcp(&[
        "recv",
        "--candidates",
        &list,
        "--tls-fingerprint",
        &fingerprint,
        "-o",
        dst.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let recv_err = ok(&recv, "recv");
    let send_err = send.succeed();
    assert!(recv_err.contains("cannot connect"), "{recv_err}");
    assert!(recv_err.contains("trying the next"), "{recv_err}");
    assert!(
        recv_err.contains("connected through the relay"),
        "{recv_err}"
    );
    assert!(
        send_err.contains("connected through the relay"),
        "{send_err}"
    );
    assert!(std::fs::read(&src).unwrap() == std::fs::read(&dst).unwrap());
    relay_carried_one_session(&relay).await;
}

#[test]
fn dtcp_candidate_errors_are_clear() {
    let recv = |list: &str| {
        let out = dtcp(&["recv", "--wait", "0", "--candidates", list])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{list}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (list, says) in [
        ("192.168.1.5:7001", "starts with dtcp://"),
        ("dtcp://", "the candidate list is empty"),
        (
            "dtcp://[2001:db8::5:7001",
            "candidate 1 (\"[2001:db8::5:7001\"): invalid IPv6 address",
        ),
        (
            "dtcp://127.0.0.1:1,relay.example.org",
            "candidate 2 (\"relay.example.org\"): a port is required",
        ),
        ("dtcp://127.0.0.1:99999", "invalid port number"),
        ("dtcp://a:1,,b:2", "candidate 2 (\"\"): empty"),
        ("dtcp://proxy@a:1", "unknown mark \"proxy\"@"),
        (
            "dtcp://192.168.1:7001",
            "not an IPv4 address of four decimal parts",
        ),
        ("dtcp://exa mple.org:1", "invalid domain character"),
    ] {
        let err = recv(list);
        assert!(err.contains("--candidates"), "{list}: {err}");
        assert!(err.contains(says), "{list}: {err}");
    }
    // Neither a relay nor candidates.
    let err = recv_without_anything();
    assert!(err.contains("give --relay"), "{err}");
    // A bad --listen.
    let out = dtcp(&["send", "--listen", "here", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auto:PORT"));
    let out = dtcp(&["send", "--listen", "0.0.0.0:7001", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wildcard"));
}

fn recv_without_anything() -> String {
    let out = dtcp(&["recv", "--wait", "0"])
        .env_remove("DTCP_RELAY")
        .env_remove("DTCP_CANDIDATES")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `--listen auto` needs addresses other than loopback: the test makes them
/// itself, in a network namespace of its own (two ends of a veth pair,
/// 10.77.0.1 and fd77::1, reachable only inside it), and runs a relay and
/// both ends of a transfer in there. It needs root, `unshare` (util-linux)
/// and `ip` (iproute2), as `scripts/test` has them; without them it fails
/// and says so rather than passing unseen.
#[test]
fn dtcp_send_listen_auto_moves_a_file_directly_on_one_machine() {
    let probe = Command::new("unshare")
        .args([
            "-n", "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ])
        .output();
    assert!(
        matches!(&probe, Ok(out) if out.status.success()),
        "this test makes a network namespace of its own and needs root, unshare and ip: {probe:?}"
    );
    let dir = tempdir("auto");
    let (src, dst) = (dir.join("in.bin"), dir.join("out.bin"));
    write_file(&src, 4 << 20, 33);
    let script = r#"
set -eu
ip link set lo up
ip link add v0 type veth peer name v1
ip addr add 10.77.0.1/24 dev v0
ip -6 addr add fd77::1/64 dev v0 nodad
ip link set v0 up
ip link set v1 up
"$RELAY" --listen 127.0.0.1:17777 --metrics-listen 127.0.0.1:19777 2>"$DIR/relay.err" &
relay=$!
for _ in $(seq 100); do
  grep -q listening "$DIR/relay.err" && break
  sleep 0.05
done
ids="--key auto-key --from alice@a.example/laptop --to bob@b.example/phone"
"$DTCP" send $ids --listen auto --relay 127.0.0.1:17777 "$SRC" 2>"$DIR/send.err" &
send=$!
for _ in $(seq 100); do
  grep -q '^candidates: ' "$DIR/send.err" && break
  sleep 0.05
done
list=$(sed -n 's/^candidates: //p' "$DIR/send.err")
echo "$list" >"$DIR/list"
"$DTCP" recv $ids --candidates "$list" -o "$DST" 2>"$DIR/recv.err"
wait $send
exec 3<>/dev/tcp/127.0.0.1/19777
printf 'GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
cat <&3 >"$DIR/metrics"
kill $relay
"#;
    let out = Command::new("unshare")
        .args(["-n", "bash", "-c", script])
        .env("RELAY", bin("dtcp-relay"))
        .env("DTCP", bin("dtcp"))
        .env("DIR", &dir)
        .env("SRC", &src)
        .env("DST", &dst)
        .output()
        .unwrap();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\nsend: {}\nrecv: {}",
        String::from_utf8_lossy(&out.stderr),
        read("send.err"),
        read("recv.err")
    );
    let list = read("list");
    assert!(
        list.starts_with("dtcp://10.77.0.1:") && list.contains(",[fd77::1]:"),
        "{list}"
    );
    let parsed: Candidates = list.trim().parse().unwrap();
    for c in parsed.iter() {
        let loopback = c.socket_addr().unwrap().ip().is_loopback();
        assert_eq!(loopback, c.role() == dtcp_client::Role::Relay, "{list}");
    }
    assert!(
        read("recv.err").contains("connected directly: the sender is at 10.77.0.1:"),
        "{}",
        read("recv.err")
    );
    assert!(std::fs::read(&src).unwrap() == std::fs::read(&dst).unwrap());
    // The relay in there carried no session.
    let metrics = read("metrics");
    assert!(
        metrics.contains("dtcp_sessions_completed_total"),
        "{metrics}"
    );
    for line in metrics.lines().filter(|l| {
        l.starts_with("dtcp_sessions_completed_total") || l.starts_with("dtcp_relayed_bytes_total")
    }) {
        assert!(line.ends_with(" 0"), "{line}");
    }
}
