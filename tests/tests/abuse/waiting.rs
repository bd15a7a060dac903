//! Attacks on what waiting costs a node (see the suite's main module): early
//! bytes behind pending `CREATE`s, `CONNECT`s for absent keys and the Redis
//! commands they drive, stalled spliced sessions and their descriptors, and
//! the memory a node keeps after a burst.
//!
//! Sources: the legitimate prober speaks from 127.0.4.x, the attacks from
//! 127.0.14.0/23.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dtcp_client::dtcp_wire::Verb;
use dtcp_tests::abuse::{Footprint, Prober, Sampler, connect_from, loopback, open_files_limit};
use dtcp_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How often the legitimate pair probes during an attack.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Early bytes each attacking `CREATE` sends behind its command: what the
/// relay used to read into user space per waiting connection.
const EARLY: usize = 64 * 1024;
/// Growth of a node's RSS allowed while 2,000 `CREATE`s wait with 64 KiB of
/// early bytes each (docs/SECURITY.md): the bytes stay in the kernel, so
/// what grows is the connections' own state. Main grew 136 MiB here.
const EARLY_FLOOD_BUDGET_MIB: u64 = 64;
/// Growth of a node's RSS allowed while a few hundred `CONNECT`s wait for
/// absent keys: a socket, a task and a waiter entry each.
const WAITING_BUDGET_MIB: u64 = 32;
/// How far above its idle RSS a node may stay once an attack has ended.
const IDLE_MARGIN_MIB: u64 = 24;
/// How long a node has to give its memory back after an attack.
const SETTLE: Duration = Duration::from_secs(15);
/// The pending TTL of the early-bytes flood's node: an attacker that closes
/// once its window is full leaves its FIN in its own kernel behind bytes
/// the relay did not take, so its CREATE may wait until this runs out.
const FLOOD_TTL: f64 = 30.0;

/// The prober's source address `127.0.4.<n>`.
fn probe_src(n: u32) -> IpAddr {
    loopback(4 * 256 + n)
}

/// An attack source `127.0.14.<n>` and up (`n` < 512).
fn attack_src(n: u32) -> IpAddr {
    assert!(n < 512, "127.0.14.0/23 only");
    loopback(14 * 256 + n)
}

/// The bytes an early sender sends: a pattern a receiver can check.
fn early_bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// How an attacking connection leaves once its attack is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// A close: its FIN waits in its own kernel behind the early bytes the
    /// relay did not take.
    Close,
    /// A reset (a zero linger): the relay hears of it at once.
    Reset,
}

/// Opens a `verb` (`CREATE` or `CONNECT`) from `src` with `early` behind
/// it, written in a task that holds the connection until `stop` (a write
/// the relay's closed window holds back just waits), then leaves as
/// `leave` says. Returns once the command is sent.
async fn hold(
    relay: SocketAddr,
    src: IpAddr,
    verb: Verb,
    name: &str,
    early: Arc<Vec<u8>>,
    stop: CancellationToken,
    leave: Leave,
) -> tokio::task::JoinHandle<()> {
    let mut s = connect_from(src, relay).await.expect("attack connection");
    s.write_all(&command(verb, &triple(name))).await.unwrap();
    tokio::spawn(async move {
        tokio::select! {
            _ = s.write_all(&early) => stop.cancelled().await,
            () = stop.cancelled() => {}
        }
        if leave == Leave::Reset {
            // Through socket2: tokio's own setter is deprecated for the
            // blocking drops a non-zero linger makes, which this is not.
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
        drop(s);
    })
}

/// Opens a `CREATE` from `src` with `early` behind it, held until `stop`,
/// then closed (see [`hold`]).
async fn hold_create(
    relay: SocketAddr,
    src: IpAddr,
    name: &str,
    early: Arc<Vec<u8>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    hold(relay, src, Verb::Create, name, early, stop, Leave::Close).await
}

/// Starts many attacking `CREATE`s: `per_src` from each of `srcs`.
async fn flood_creates(
    relay: SocketAddr,
    srcs: &[IpAddr],
    per_src: usize,
    tag: &str,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let early = Arc::new(early_bytes(1, EARLY));
    let mut held = Vec::new();
    for (s, src) in srcs.iter().enumerate() {
        for n in 0..per_src {
            let name = format!("{tag}-{s}-{n}");
            held.push(hold_create(relay, *src, &name, early.clone(), stop.clone()).await);
        }
    }
    held
}

/// Pending `CREATE`s with 64 KiB of early bytes each, from one address then
/// from fifty: the node's memory stays within its budget, a legitimate pair
/// probes throughout, early bytes beyond the small receive buffer of a
/// waiting socket are all delivered in order once paired, and once the
/// attackers leave the node is back near its idle footprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_bytes_of_pending_creates_stay_in_the_kernel() {
    let _serial = crate::serial().await;
    raise_fd_limit();
    let relay = NodeOptions::new()
        .max_pending_per_ip(100_000)
        .max_connections(20_000)
        .pending_ttl(FLOOD_TTL)
        .start();
    // The idle footprint, once the prober's own pairs have run (a sleep:
    // nothing says when that is).
    let prober = Prober::start(relay.addr, relay.addr, probe_src(1), PROBE_EVERY);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = Footprint::of(&relay);

    let stop = CancellationToken::new();
    // One address, then fifty more: 2,000 waiting CREATEs in all.
    let mut held = flood_creates(relay.addr, &[attack_src(1)], 1000, "one", &stop).await;
    let crowd: Vec<IpAddr> = (2..52).map(attack_src).collect();
    held.extend(flood_creates(relay.addr, &crowd, 20, "many", &stop).await);
    relay.wait_for("dtcp_pending_registrations", 2000.0).await;
    // A sleep, not a poll: the early bytes arrive (as far as the relay
    // takes them) at TCP's pace, with nothing to watch.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = Footprint::of(&relay);
    eprintln!(
        "idle {} MiB, with 2,000 pending CREATEs and their early bytes {} MiB (+{} MiB), {} descriptors",
        idle.rss >> 20,
        peak.rss >> 20,
        peak.grown_mib(&idle),
        peak.fds
    );
    assert!(
        peak.grown_mib(&idle) <= EARLY_FLOOD_BUDGET_MIB,
        "RSS grew {} MiB with 2,000 pending CREATEs (budget {EARLY_FLOOD_BUDGET_MIB} MiB)",
        peak.grown_mib(&idle)
    );

    // Meanwhile, a few more that pair: every early byte arrives, in order,
    // though most waited in the kernel (and in the client's) until now.
    for n in 0..4u8 {
        let t = triple(&format!("delivered-{n}"));
        let bytes = early_bytes(n, EARLY);
        let mut i = connect_from(attack_src(100), relay.addr).await.unwrap();
        i.write_all(&command(Verb::Create, &t)).await.unwrap();
        let writer = tokio::spawn({
            let bytes = bytes.clone();
            async move {
                i.write_all(&bytes).await.unwrap();
                i
            }
        });
        relay.wait_for("dtcp_pending_registrations", 2001.0).await;
        let mut tg = connect_from(attack_src(101), relay.addr).await.unwrap();
        tg.write_all(&command(Verb::Connect, &t)).await.unwrap();
        assert_eq!(read_n(&mut tg, 3).await, b"OK\0");
        let got = tokio::time::timeout(Duration::from_secs(10), read_n(&mut tg, EARLY))
            .await
            .expect("early bytes delivered promptly once paired");
        assert!(got == bytes, "pair {n}: early bytes lost or out of order");
        let mut i = writer.await.unwrap();
        assert_eq!(read_n(&mut i, 3).await, b"OK\0");
    }

    // The attackers leave: every registration goes (those whose FIN is held
    // back behind a full window at the pending TTL at the latest), and the
    // memory with it.
    stop.cancel();
    for h in held {
        h.await.unwrap();
    }
    eventually(
        Duration::from_secs_f64(FLOOD_TTL + 10.0),
        "every attacking CREATE gone",
        || async { relay.metric("dtcp_pending_registrations").await == 0.0 },
    )
    .await;
    let settled = settle(&relay, &idle).await;
    eprintln!(
        "after the attack: {} MiB (+{} MiB over idle), {} descriptors (idle {})",
        settled.rss >> 20,
        settled.grown_mib(&idle),
        settled.fds,
        idle.fds
    );
    prober.finish().await.assert_all_ok("the early-bytes flood");
}

/// Descriptors a node may hold above what its attackers' connections
/// explain: the prober's pair, the store, a listener's connection coming
/// or going.
const FD_SLACK: usize = 16;

/// The node's open client connections now.
async fn open(relay: &Relay) -> f64 {
    relay.metric("dtcp_connections_open").await
}

/// Panics unless `peak` grew at most `budget_mib` over `idle` and the
/// node's descriptors stayed below its open-file limit, with at most one
/// per attacking connection (`attack`) above `idle`; says what it saw.
fn assert_peak(
    what: &str,
    relay: &Relay,
    (idle, peak): (&Footprint, &Footprint),
    attack: usize,
    budget_mib: u64,
) {
    let limit = open_files_limit(relay.pid());
    eprintln!(
        "{what}: idle {} MiB / {} fds; peak {} MiB (+{} MiB) / {} fds (open-file limit {limit})",
        idle.rss >> 20,
        idle.fds,
        peak.rss >> 20,
        peak.grown_mib(idle),
        peak.fds
    );
    assert!(
        peak.grown_mib(idle) <= budget_mib,
        "{what}: RSS grew {} MiB (budget {budget_mib} MiB)",
        peak.grown_mib(idle)
    );
    assert!(
        peak.fds <= idle.fds + attack + FD_SLACK,
        "{what}: {} descriptors at the peak for {attack} waiting connections ({} idle)",
        peak.fds,
        idle.fds
    );
    assert!(
        (peak.fds as u64) < limit,
        "{what}: descriptors ran out ({} of {limit})",
        peak.fds
    );
}

/// Finding 5, `CONNECT`s: one address sends `CONNECT`s for keys nobody
/// registered, each with 64 KiB of early bytes behind it (main: 760-810 MB
/// of RSS). Each waits out its connect grace with its bytes in the kernel:
/// the node's memory, sampled throughout, stays within the early-bytes
/// budget; each holds one descriptor, far from the node's limit; a
/// legitimate pair probes throughout; and once they have been refused the
/// node is back at its idle footprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_bytes_of_waiting_connects_stay_in_the_kernel() {
    early_bytes_of_waiting_connects(1).await;
}

/// Finding 5, `CONNECT`s from a crowd: the same 2,000 waiting `CONNECT`s
/// with early bytes, dealt out across [`CROWD`] addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_bytes_of_waiting_connects_from_many_addresses_stay_in_the_kernel() {
    early_bytes_of_waiting_connects(CROWD).await;
}

/// Attacking addresses of the waiting attacks' crowd variants, each
/// sending its turn of the one-address attack's load.
const CROWD: u32 = 40;

/// 2,000 `CONNECT`s for absent keys with 64 KiB of early bytes each, from
/// `sources` addresses (127.0.14.120 upward) in turn.
async fn early_bytes_of_waiting_connects(sources: u32) {
    let _serial = crate::serial().await;
    let what = format!("waiting CONNECTs with early bytes from {sources} address(es)");
    /// The attacker's waiting CONNECTs.
    const WAITERS: usize = 2_000;
    /// Their connect grace: long enough for all of them to be waiting at once.
    const GRACE: f64 = 10.0;
    raise_fd_limit();
    let relay = NodeOptions::new()
        .connect_grace(GRACE)
        .max_connections(20_000)
        .start();
    let prober = Prober::start(relay.addr, relay.addr, probe_src(3), PROBE_EVERY);
    // A sleep, not a poll: the idle footprint is taken once the prober's
    // first pairs have run, and nothing says when that is.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = Footprint::of(&relay);
    let sampler = Sampler::start(&relay);

    let stop = CancellationToken::new();
    let early = Arc::new(early_bytes(2, EARLY));
    let mut held = Vec::new();
    for n in 0..WAITERS {
        let name = format!("absent-early-{n}");
        let early = early.clone();
        let src = attack_src(120 + n as u32 % sources);
        held.push(
            hold(
                relay.addr,
                src,
                Verb::Connect,
                &name,
                early,
                stop.clone(),
                Leave::Close,
            )
            .await,
        );
    }
    eventually(Duration::from_secs(10), "every CONNECT waiting", || async {
        open(&relay).await >= WAITERS as f64
    })
    .await;
    let waiting = sampler.peak();
    // Each is refused not-found at the end of its grace, and goes.
    eventually(
        Duration::from_secs_f64(GRACE + 10.0),
        "every waiting CONNECT refused",
        || async { open(&relay).await <= 2.0 },
    )
    .await;
    let peak = sampler.finish();
    eprintln!(
        "{what}: {} MiB / {} fds once all were waiting",
        waiting.rss >> 20,
        waiting.fds
    );
    assert_peak(
        &what,
        &relay,
        (&idle, &peak),
        WAITERS,
        EARLY_FLOOD_BUDGET_MIB,
    );
    let not_found = relay
        .metric(r#"dtcp_commands_total{verb="connect",outcome="not-found"}"#)
        .await;
    assert!(
        not_found >= WAITERS as f64,
        "{not_found} CONNECTs refused not-found"
    );
    stop.cancel();
    for h in held {
        h.await.unwrap();
    }
    let settled = settle(&relay, &idle).await;
    eprintln!(
        "{what}: after {} MiB / {} fds",
        settled.rss >> 20,
        settled.fds
    );
    prober.finish().await.assert_all_ok(&what);
}

/// Finding 5, a crowd: a hundred addresses each fill their share of pending
/// `CREATE`s, with 64 KiB of early bytes behind each (main: 682 MB, held
/// for the 300 s pending TTL after one burst). The node's memory, sampled
/// throughout, stays within the early-bytes budget, one descriptor per
/// `CREATE`; a legitimate pair probes throughout; when the crowd goes
/// (resetting, so that it goes at once: a close's FIN behind a full window
/// is the single-address test's case) the node is back at idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_bytes_of_a_hundred_addresses_stay_in_the_kernel() {
    let _serial = crate::serial().await;
    /// Attacking addresses, 127.0.15.144 upward (`attack_src(400)` on).
    const ADDRESSES: u32 = 100;
    /// Each address's share of pending CREATEs, which each fills.
    const EACH: usize = 30;
    const CREATES: usize = ADDRESSES as usize * EACH;
    raise_fd_limit();
    let relay = NodeOptions::new()
        .max_pending_per_ip(EACH)
        .max_connections(20_000)
        .start();
    let prober = Prober::start(relay.addr, relay.addr, probe_src(4), PROBE_EVERY);
    // As above: the idle footprint once the prober's first pairs have run.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = Footprint::of(&relay);
    let sampler = Sampler::start(&relay);

    let stop = CancellationToken::new();
    let early = Arc::new(early_bytes(3, EARLY));
    let mut held = Vec::new();
    for a in 0..ADDRESSES {
        for n in 0..EACH {
            let name = format!("crowd-early-{a}-{n}");
            let (src, early) = (attack_src(400 + a), early.clone());
            held.push(
                hold(
                    relay.addr,
                    src,
                    Verb::Create,
                    &name,
                    early,
                    stop.clone(),
                    Leave::Reset,
                )
                .await,
            );
        }
    }
    eventually(Duration::from_secs(10), "every CREATE pending", || async {
        relay.metric("dtcp_pending_registrations").await >= CREATES as f64
    })
    .await;
    // Over its share, an address is refused at once.
    let mut over = connect_from(attack_src(400), relay.addr).await.unwrap();
    over.write_all(&command(Verb::Create, &triple("crowd-early-over")))
        .await
        .unwrap();
    let reply = read_all(&mut over).await;
    assert!(is_error(&reply, "resource-constraint"), "{reply:?}");
    // A sleep, not a poll: the early bytes reach the node's kernel (and as
    // much of them as the node takes) at TCP's pace, with nothing to watch.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = sampler.finish();
    assert_peak(
        "a hundred addresses' pending CREATEs",
        &relay,
        (&idle, &peak),
        CREATES,
        EARLY_FLOOD_BUDGET_MIB,
    );

    stop.cancel();
    for h in held {
        h.await.unwrap();
    }
    eventually(
        Duration::from_secs(10),
        "every attacking CREATE gone",
        || async { relay.metric("dtcp_pending_registrations").await == 0.0 },
    )
    .await;
    let settled = settle(&relay, &idle).await;
    eprintln!(
        "a hundred addresses' pending CREATEs: after {} MiB / {} fds",
        settled.rss >> 20,
        settled.fds
    );
    prober
        .finish()
        .await
        .assert_all_ok("a hundred addresses' pending CREATEs");
}

/// Bytes each side of a stalled session sends and nobody reads: more than
/// the kernel's buffers and the pipe between them hold.
const STALL_BYTES: usize = 4 << 20;

/// A session from `src` whose two clients each send [`STALL_BYTES`] and
/// never read: what it leaves in the relay is two sockets and a full pipe
/// each way. Returns the tasks that hold its two connections (aborted to
/// close them), or `None` if the node refused either side.
async fn stall(
    relay: SocketAddr,
    src: IpAddr,
    name: &str,
    bytes: &Arc<Vec<u8>>,
) -> Option<[tokio::task::JoinHandle<()>; 2]> {
    let t = triple(name);
    let mut i = connect_from(src, relay).await.ok()?;
    i.write_all(&command(Verb::Create, &t)).await.ok()?;
    let mut c = connect_from(src, relay).await.ok()?;
    c.write_all(&command(Verb::Connect, &t)).await.ok()?;
    for s in [&mut i, &mut c] {
        let mut ok = [0u8; 3];
        s.read_exact(&mut ok).await.ok()?;
        if &ok != b"OK\0" {
            return None;
        }
    }
    let send = |mut s: TcpStream| {
        let bytes = bytes.clone();
        tokio::spawn(async move {
            let _ = s.write_all(&bytes).await;
            // Held, never read, until aborted.
            std::future::pending::<()>().await;
        })
    };
    Some([send(i), send(c)])
}

/// Finding 6, pipes: spliced sessions whose clients both stopped reading
/// hold a full pipe each way, six descriptors a session; the node counts
/// three per connection when it fits `--max-connections` to its open-file
/// limit, so that such sessions never run it out of descriptors. A hundred
/// stalled sessions from one address with a legitimate pair probing
/// throughout, then the rest of the node's connections, stalled too: its
/// descriptors stay within what the limit counts and below the open-file
/// limit, and it refuses the connections beyond the limit rather than fail
/// to accept them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_spliced_sessions_fit_the_descriptor_budget() {
    let _serial = crate::serial().await;
    /// The node's open-file limit: room for 248 spliced connections.
    const OPEN_FILES: u64 = 1_000;
    /// Stalled sessions while the prober runs.
    const SESSIONS: usize = 100;
    /// Connections attempted once the node is full.
    const OVER: usize = 20;
    raise_fd_limit();
    let relay = NodeOptions::new().open_files(OPEN_FILES).start();
    let max = relay.metric("dtcp_connections_max").await as usize;
    assert!(
        max * 3 + 256 <= OPEN_FILES as usize && max > 2 * SESSIONS + 8,
        "the connection limit {max} counts three descriptors each within {OPEN_FILES}"
    );
    let prober = Prober::start(relay.addr, relay.addr, probe_src(5), PROBE_EVERY);
    // As above: the idle footprint once the prober's first pairs have run.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = Footprint::of(&relay);
    let sampler = Sampler::start(&relay);
    let bytes = Arc::new(early_bytes(4, STALL_BYTES));

    let mut stalled = Vec::new();
    for n in 0..SESSIONS {
        let session = stall(relay.addr, attack_src(130), &format!("stalled-{n}"), &bytes).await;
        stalled.extend(session.expect("a stalled session within the limits"));
    }
    // The premise: the sessions' pipes fill (a socket and most of a pipe
    // per connection), which is what the budget is for.
    eventually(
        Duration::from_secs(15),
        "the stalled sessions' pipes held",
        || async { Footprint::of(&relay).fds >= idle.fds + 2 * SESSIONS * 5 / 2 },
    )
    .await;
    let connections = open(&relay).await as usize;
    let now = Footprint::of(&relay);
    eprintln!(
        "stalled sessions: {SESSIONS} sessions, {connections} connections, {} descriptors (idle {}), limit {max} connections",
        now.fds, idle.fds
    );
    assert!(
        now.fds <= idle.fds + 3 * connections + FD_SLACK,
        "{} descriptors for {connections} connections ({} idle): more than three each",
        now.fds,
        idle.fds
    );
    prober
        .finish()
        .await
        .assert_all_ok("a hundred stalled spliced sessions");

    // Then every other slot, stalled too, and more connections than fit.
    let mut n = 0;
    while open(&relay).await as usize + 2 <= max {
        let name = format!("stalled-more-{n}");
        let session = stall(relay.addr, attack_src(131), &name, &bytes).await;
        stalled.extend(session.expect("a stalled session within the limit"));
        n += 1;
    }
    // An odd slot left is taken by a pending CREATE.
    let mut last = None;
    if (open(&relay).await as usize) < max {
        let mut s = connect_from(attack_src(131), relay.addr).await.unwrap();
        s.write_all(&command(Verb::Create, &triple("stalled-last")))
            .await
            .unwrap();
        last = Some(s);
    }
    let mut refused = 0;
    for k in 0..OVER {
        let mut s = connect_from(attack_src(132), relay.addr).await.unwrap();
        let _ = s
            .write_all(&command(
                Verb::Create,
                &triple(&format!("stalled-over-{k}")),
            ))
            .await;
        let mut reply = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
        if matches!(read, Ok(Ok(_))) && is_error(&reply, "resource-constraint") {
            refused += 1;
        }
    }
    // The last sessions' pipes fill as the first ones' did.
    eventually(
        Duration::from_secs(15),
        "the node full of stalled sessions",
        || async { Footprint::of(&relay).fds >= idle.fds + max * 5 / 2 },
    )
    .await;
    let full = Footprint::of(&relay);
    let peak = sampler.finish();
    let descriptors_refused = relay
        .metric(r#"dtcp_connections_refused_total{reason="descriptors"}"#)
        .await;
    eprintln!(
        "stalled sessions: full at {} connections, {} descriptors, peak {} of {OPEN_FILES}; {refused} of {OVER} over the limit refused",
        open(&relay).await,
        full.fds,
        peak.fds
    );
    assert_eq!(
        refused, OVER,
        "connections over the limit refused resource-constraint"
    );
    assert!(
        peak.fds <= idle.fds + 3 * max + FD_SLACK && (peak.fds as u64) < OPEN_FILES,
        "{} descriptors at the peak ({} idle, limit {max} connections, {OPEN_FILES} files)",
        peak.fds,
        idle.fds
    );
    assert_eq!(
        descriptors_refused, 0.0,
        "no connection refused for want of a descriptor"
    );

    drop(last);
    for task in stalled {
        task.abort();
    }
    eventually(
        Duration::from_secs(10),
        "every stalled session gone",
        || async { open(&relay).await == 0.0 },
    )
    .await;
    let settled = settle(&relay, &idle).await;
    eprintln!(
        "stalled sessions: after {} MiB / {} fds",
        settled.rss >> 20,
        settled.fds
    );
    let prober = Prober::start(relay.addr, relay.addr, probe_src(5), PROBE_EVERY);
    // A sleep, not a poll: a few probes' worth of pairing after the attack.
    tokio::time::sleep(Duration::from_secs(1)).await;
    prober
        .finish()
        .await
        .assert_all_ok("after the stalled sessions");
}

/// Waits for `relay` to come back near its `idle` footprint, and says where
/// it settled; panics if it does not within [`SETTLE`].
async fn settle(relay: &Relay, idle: &Footprint) -> Footprint {
    let mut now = Footprint::of(relay);
    let deadline = tokio::time::Instant::now() + SETTLE;
    while tokio::time::Instant::now() < deadline {
        now = Footprint::of(relay);
        if now.grown_mib(idle) <= IDLE_MARGIN_MIB && now.fds <= idle.fds + 8 {
            return now;
        }
        // The poll's interval.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "the node stayed at {} MiB (+{} MiB over idle, margin {IDLE_MARGIN_MIB}) and {} descriptors (idle {})",
        now.rss >> 20,
        now.grown_mib(idle),
        now.fds,
        idle.fds
    );
}

/// A waiting client that goes is noticed although nothing is read from it:
/// a `CREATE` that closes with nothing behind its command, one that closes
/// after early bytes, one that half-closes after them, and one that resets;
/// and a `CONNECT` waiting for its `CREATE` that closes after early bytes.
#[tokio::test]
async fn a_waiting_client_that_goes_is_noticed() {
    let _serial = crate::serial().await;
    let relay = NodeOptions::new().connect_grace(60.0).start();
    let src = attack_src(200);
    for (n, how) in ["close", "bytes-close", "bytes-half-close", "bytes-reset"]
        .into_iter()
        .enumerate()
    {
        let t = triple(&format!("gone-{how}"));
        let mut i = connect_from(src, relay.addr).await.unwrap();
        i.write_all(&command(Verb::Create, &t)).await.unwrap();
        relay.wait_for("dtcp_pending_registrations", 1.0).await;
        if how != "close" {
            i.write_all(&early_bytes(n as u8, 1000)).await.unwrap();
            // The bytes are in the relay's kernel before the end comes.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match how {
            "bytes-half-close" => i.shutdown().await.unwrap(),
            "bytes-reset" => {
                // SO_LINGER 0: the close is a reset (set through socket2,
                // as tokio's own setter is deprecated for blocking drops,
                // which a zero linger never does).
                socket2::SockRef::from(&i)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                drop(i);
            }
            _ => drop(i),
        }
        relay.wait_for("dtcp_pending_registrations", 0.0).await;
    }
    let abandoned = r#"dtcp_commands_total{verb="connect",outcome="abandoned"}"#;
    let before = relay.metric(abandoned).await;
    let mut tg = connect_from(src, relay.addr).await.unwrap();
    tg.write_all(&command(Verb::Connect, &triple("gone-connect")))
        .await
        .unwrap();
    tg.write_all(b"early from a target").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(tg);
    eventually(
        Duration::from_secs(5),
        "the waiting CONNECT abandoned",
        || async { relay.metric(abandoned).await == before + 1.0 },
    )
    .await;
}

/// `CONNECT`s for absent keys from one address on a two-node cluster: each
/// waits out the connect grace at the cost of a few Redis commands, not the
/// dozens a fast poll costs, while a legitimate pair across the two nodes
/// probes throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_connects_cost_few_redis_commands() {
    waiting_connects_cost(1).await;
}

/// The same waiting `CONNECT`s dealt out across [`CROWD`] addresses: a
/// crowd's waiters cost no more Redis commands each than one address's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_connects_from_many_addresses_cost_few_redis_commands() {
    waiting_connects_cost(CROWD).await;
}

/// 300 `CONNECT`s for absent keys from `sources` addresses (127.0.14.300
/// upward) in turn, and the Redis commands they cost.
async fn waiting_connects_cost(sources: u32) {
    let _serial = crate::serial().await;
    /// Waiting CONNECTs from the one address.
    const WAITERS: usize = 300;
    /// The connect grace they wait out.
    const GRACE: f64 = 5.0;
    /// Redis commands allowed per waiting CONNECT per second of its wait
    /// (main: about 8, forty lookups in a 5 s grace).
    const BUDGET_PER_SEC: f64 = 1.5;
    raise_fd_limit();
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let a = NodeOptions::cluster(&urls).connect_grace(GRACE).start();
    let b = NodeOptions::cluster(&urls).connect_grace(GRACE).start();
    let prober = Prober::start(a.addr, b.addr, probe_src(2), PROBE_EVERY);
    // A sleep, not a poll: the probes' first pairs run before the
    // background is counted.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The nodes' own background (heartbeats, membership) over one grace: a
    // sleep, as it is that span's commands that are counted.
    redis.cli(&["CONFIG", "RESETSTAT"]);
    tokio::time::sleep(Duration::from_secs_f64(GRACE)).await;
    let background = redis.command_calls().values().sum::<u64>();

    // Node B, where the CONNECTs wait, idle and then sampled throughout.
    let idle = Footprint::of(&b);
    let sampler = Sampler::start(&b);
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let mut waiters = Vec::new();
    for n in 0..WAITERS {
        let src = attack_src(300 + n as u32 % sources);
        let mut s = connect_from(src, b.addr).await.unwrap();
        let t = triple(&format!("absent-{n}"));
        s.write_all(&command(Verb::Connect, &t)).await.unwrap();
        waiters.push(s);
    }
    // Each is refused not-found once its grace runs out.
    for mut s in waiters {
        let reply = tokio::time::timeout(Duration::from_secs_f64(GRACE * 3.0), read_all(&mut s))
            .await
            .expect("a reply within the grace");
        assert!(is_error(&reply, "not-found"), "{reply:?}");
    }
    let calls = redis.command_calls().values().sum::<u64>();
    let peak = sampler.finish();
    assert_peak(
        "waiting CONNECTs for absent keys",
        &b,
        (&idle, &peak),
        WAITERS,
        WAITING_BUDGET_MIB,
    );
    // The probes' own commands and the background are in `calls` too:
    // counted against the attack, which errs on the strict side.
    let per_waiter_per_sec = calls as f64 / WAITERS as f64 / GRACE;
    eprintln!(
        "from {sources} address(es): {calls} Redis commands for {WAITERS} CONNECTs waiting {GRACE} s each \
         ({per_waiter_per_sec:.2} per waiting CONNECT per second; background {background} per {GRACE} s)"
    );
    assert!(
        per_waiter_per_sec <= BUDGET_PER_SEC,
        "{per_waiter_per_sec:.2} Redis commands per waiting CONNECT per second (budget {BUDGET_PER_SEC})"
    );
    let settled = settle(&b, &idle).await;
    eprintln!(
        "waiting CONNECTs for absent keys from {sources} address(es): after {} MiB / {} fds",
        settled.rss >> 20,
        settled.fds
    );
    prober.finish().await.assert_all_ok(&format!(
        "the waiting-CONNECT flood from {sources} address(es)"
    ));
}
