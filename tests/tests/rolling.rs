//! A rolling upgrade under load: three nodes of the previous cluster
//! format (`--cluster-format-version 1`) behind a real HAProxy, health
//! checked on `/readyz`, restarted one at a time on the new format while
//! clients keep pairing through the balancer. No pairing fails beyond what
//! a client retries (docs/DEPLOYING.md, "Upgrading a cluster").

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtcp_client::dtcp_wire::{Condition, Triple};
use dtcp_client::{ClientError, Initiator, Target};
use dtcp_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Clients pairing at once through the balancer.
const WORKERS: usize = 6;
/// Tries of one side of a pair, the first included, before it counts as failed.
const TRIES: usize = 5;
/// How long one pair may take, retries included, before it counts as failed.
const PAIR_LIMIT: Duration = Duration::from_secs(15);
/// Load on each cluster before the next node is restarted.
const DWELL: Duration = Duration::from_secs(2);
/// A pair slower than this (printed, not asserted) waited for more than
/// being told of its registration. In the second or so between the first
/// node's move to format 2 and the last one's, a CONNECT on a node still
/// on format 1 leaves no waiter, so it learns of a registration only from
/// the legacy channel. A node that moves from format 1 keeps publishing
/// there for a while (the store's `LEGACY_LINGER`), but a node started on
/// format 2 (the last one restarted) never published there: such a CONNECT
/// finds its record at its next look at the store, 0.5 s to 1 s on.
const SLOW: Duration = Duration::from_millis(400);
/// `--connect-grace`, the relay's default: long enough for that next look.
const CONNECT_GRACE: f64 = 5.0;
/// The bytes each side sends and checks.
const MESSAGE: usize = 16;

/// Which release a node process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Release {
    /// `--cluster-format-version 1`: the previous release.
    Old,
    /// The default: format 2.
    New,
}

/// The real previous release's relay, built from git, when
/// `DTCP_PREVIOUS_RELEASE` names its executable: the upgrade run by hand
/// (docs/DEPLOYING.md, "Upgrading a cluster"). Without it, the old nodes
/// are this build held on the previous format.
fn previous_release() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("DTCP_PREVIOUS_RELEASE")?;
    let path = std::path::PathBuf::from(path);
    assert!(
        path.exists(),
        "DTCP_PREVIOUS_RELEASE: {} is missing",
        path.display()
    );
    Some(path)
}

/// What one pair came to.
#[derive(Debug)]
struct PairRun {
    /// Its registration, as the nodes log it.
    registration: String,
    /// When its first command was sent.
    started: Instant,
    /// How long it took to pair and check its bytes, retries included.
    took: Duration,
    /// `None`: paired, every byte checked; else why it failed.
    failure: Option<String>,
}

/// Retries counted by reason, and every pair's outcome.
#[derive(Debug, Default)]
struct Tally {
    retries: HashMap<&'static str, u64>,
    runs: Vec<PairRun>,
}

/// Whether a failed side is one a client retries: the node is draining, or
/// the connection was closed or refused before any reply (a node leaving
/// the rotation); the reason it is counted under.
fn retried(e: &ClientError) -> Option<&'static str> {
    match e {
        ClientError::Refused {
            condition: Condition::ShuttingDown,
            ..
        } => Some("shutting-down"),
        ClientError::Closed | ClientError::Connect(_) | ClientError::Io(_) => Some("closed"),
        _ => None,
    }
}

/// One side of a pair through the balancer, retried as a client does.
async fn side(
    balancer: SocketAddr,
    t: &Triple,
    create: bool,
    tally: &Mutex<Tally>,
) -> Result<TcpStream, String> {
    for _ in 0..TRIES {
        let r = if create {
            Initiator::connect(balancer, t).await
        } else {
            Target::connect(balancer, t).await
        };
        match r {
            Ok(s) => return Ok(s),
            Err(e) => match retried(&e) {
                Some(reason) => {
                    *tally.lock().unwrap().retries.entry(reason).or_default() += 1;
                    // A sleep: a client's pause before it tries again.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                None => {
                    return Err(format!(
                        "{}: {e}",
                        if create { "CREATE" } else { "CONNECT" }
                    ));
                }
            },
        }
    }
    Err(format!("gave up after {TRIES} tries (create: {create})"))
}

/// Pairs `t` through the balancer (its CONNECT a moment before or after its
/// CREATE) and checks a few bytes each way.
async fn one_pair(
    balancer: SocketAddr,
    t: &Triple,
    connect_first: bool,
    tally: &Mutex<Tally>,
) -> Result<(), String> {
    let head_start = Duration::from_millis(5);
    // The first side to fail fails the pair (the other would wait on).
    let (mut i, mut tg) = tokio::try_join!(
        async {
            if connect_first {
                // A sleep: the CONNECT's head start, a race of its own.
                tokio::time::sleep(head_start).await;
            }
            side(balancer, t, true, tally).await
        },
        async {
            if !connect_first {
                // A sleep: the CREATE's head start.
                tokio::time::sleep(head_start).await;
            }
            side(balancer, t, false, tally).await
        },
    )?;
    let there: Vec<u8> = t.registration_id().as_bytes()[..MESSAGE].to_vec();
    let back: Vec<u8> = there.iter().map(|b| !b).collect();
    let io = async {
        i.write_all(&there).await?;
        let mut got = vec![0u8; MESSAGE];
        tg.read_exact(&mut got).await?;
        if got != there {
            return Ok(Err("initiator -> target bytes differ".to_owned()));
        }
        tg.write_all(&back).await?;
        i.read_exact(&mut got).await?;
        if got != back {
            return Ok(Err("target -> initiator bytes differ".to_owned()));
        }
        Ok::<_, std::io::Error>(Ok(()))
    };
    match tokio::time::timeout(Duration::from_secs(10), io).await {
        Ok(Ok(checked)) => checked,
        Ok(Err(e)) => Err(format!("bytes: {e}")),
        Err(_) => Err("bytes: timed out".to_owned()),
    }
}

/// A client pairing through the balancer until `stop`.
async fn worker(balancer: SocketAddr, w: usize, stop: Arc<AtomicBool>, tally: Arc<Mutex<Tally>>) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let t = triple(&format!("rolling-{w}-{n}"));
        let started = Instant::now();
        let connect_first = (n + w).is_multiple_of(2);
        let failure =
            match tokio::time::timeout(PAIR_LIMIT, one_pair(balancer, &t, connect_first, &tally))
                .await
            {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!("not paired within {PAIR_LIMIT:?}")),
            };
        tally.lock().unwrap().runs.push(PairRun {
            registration: t.registration_id().to_string(),
            started,
            took: started.elapsed(),
            failure,
        });
        n += 1;
    }
}

/// Which node processes logged one pair's session, by their place in the
/// list of processes.
#[derive(Debug, Default)]
struct Sides {
    /// The node of the CREATE, of a session across nodes.
    owner: Option<usize>,
    /// The node of the CONNECT, of a session across nodes.
    target: Option<usize>,
    /// Both on one node.
    local: bool,
}

impl Sides {
    /// Whether both of its nodes logged it (or its one node).
    fn whole(&self) -> bool {
        self.local || (self.owner.is_some() && self.target.is_some())
    }
}

/// Every session the node processes logged, by registration.
fn session_sides(processes: &[(Relay, Release, usize)]) -> HashMap<String, Sides> {
    let mut sides: HashMap<String, Sides> = HashMap::new();
    for (p, (relay, _, _)) in processes.iter().enumerate() {
        for l in relay.logs() {
            if l["message"] != "session finished" {
                continue;
            }
            let id = l["registration"].as_str().unwrap_or_default().to_owned();
            let e = sides.entry(id).or_default();
            match l["side"].as_str() {
                Some("owner") => e.owner = Some(p),
                Some("target") => e.target = Some(p),
                _ => e.local = true,
            }
        }
    }
    sides
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

/// A node on fixed ports (so that its successor takes the same ones),
/// of `release`.
fn node(urls: &[String], ports: &(SocketAddr, SocketAddr, SocketAddr), release: Release) -> Relay {
    let mut options = NodeOptions::cluster(urls)
        .listen(ports.0)
        .metrics_listen(ports.1)
        .forward_listen(&ports.2.to_string())
        // The relay's default, said here: a few pairs of the format switch
        // need more than one look at the store (see `SLOW`).
        .connect_grace(CONNECT_GRACE)
        .drain_timeout(10.0)
        .max_pending_per_ip(100_000);
    if release == Release::Old {
        options = match previous_release() {
            Some(binary) => options.binary(binary),
            None => options.arg("--cluster-format-version", 1),
        };
    }
    // Blocking (it waits for the node to listen): the load runs meanwhile.
    tokio::task::block_in_place(|| options.start())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_behind_haproxy_fails_no_pairing() {
    let started = Instant::now();
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let ports: Vec<_> = (0..3)
        .map(|_| (fixed_addr(), fixed_addr(), fixed_addr()))
        .collect();
    // Every node process started, with its release and place, for the logs.
    let mut processes: Vec<(Relay, Release, usize)> = ports
        .iter()
        .enumerate()
        .map(|(slot, p)| (node(&urls, p, Release::Old), Release::Old, slot))
        .collect();
    for (relay, _, _) in &processes {
        relay.wait_for("dtcp_nodes_alive", 3.0).await;
    }
    let balancer = Haproxy::round_robin_checked(
        &ports
            .iter()
            .map(|(listen, metrics, _)| (*listen, *metrics))
            .collect::<Vec<_>>(),
    );
    for slot in 0..3 {
        let name = format!("relay{slot}");
        eventually(Duration::from_secs(5), "HAProxy sees the nodes up", || {
            balancer.server_up(&name)
        })
        .await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(worker(balancer.addr, w, stop.clone(), tally.clone())))
        .collect();
    // A sleep: pairs on the old cluster, a phase of the run, not a wait.
    tokio::time::sleep(DWELL).await;

    // When each step came, from the start: printed with the counts.
    let mut events: Vec<(String, Duration)> = Vec::new();
    // Each node in turn: drained, out of the rotation, gone, and back on
    // the same ports as the new release.
    for (slot, slot_ports) in ports.iter().enumerate() {
        let name = format!("relay{slot}");
        let at = processes
            .iter()
            .position(|(_, _, s)| *s == slot)
            .expect("the slot's node");
        let old = &mut processes[at].0;
        old.signal(libc::SIGTERM);
        events.push((format!("node {slot} drains"), started.elapsed()));
        eventually(
            Duration::from_secs(5),
            "HAProxy takes the draining node out",
            || async { !balancer.server_up(&name).await },
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(12);
        let status = loop {
            if let Some(status) = old.wait_exit(Duration::ZERO) {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "node {slot} did not exit after its drain"
            );
            // The poll's interval.
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        assert!(status.success(), "node {slot} exited with {status:?}");
        let new = node(&urls, slot_ports, Release::New);
        processes.push((new, Release::New, slot));
        events.push((format!("node {slot} new"), started.elapsed()));
        eventually(Duration::from_secs(5), "HAProxy puts the node back", || {
            balancer.server_up(&name)
        })
        .await;
        // A sleep: pairs on this mix of releases, a phase of the run.
        tokio::time::sleep(DWELL).await;
    }

    // The last old node gone, every node moves to format 2.
    let current: Vec<&Relay> = processes
        .iter()
        .filter(|(_, r, _)| *r == Release::New)
        .map(|(relay, _, _)| relay)
        .collect();
    let on_new = settles(Duration::from_secs(15), || async {
        current.iter().all(|n| format_in_use(n, 2) >= 1)
    })
    .await;
    assert!(on_new, "not every node moved to cluster format 2");
    let all_new_at = Instant::now();
    events.push(("all on format 2".to_owned(), all_new_at - started));
    // A sleep: pairs on format 2 alone, the last phase.
    tokio::time::sleep(DWELL).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    // Each node ends on format 2 (none moved back); the two restarted
    // while an old node was alive spoke format 1 first.
    for (k, n) in current.iter().enumerate() {
        let moves: Vec<u64> = n
            .logs()
            .iter()
            .filter(|l| l["message"] == "cluster format in use")
            .filter_map(|l| l["format"].as_u64())
            .collect();
        assert_eq!(moves.last(), Some(&2), "moves of {}: {moves:?}", n.node_id);
        if k < 2 {
            assert_eq!(moves, [1, 2], "moves of {} in a mixed cluster", n.node_id);
        }
    }

    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let failed: Vec<_> = tally
        .runs
        .iter()
        .filter_map(|r| {
            let f = r.failure.as_ref()?;
            Some((&r.registration, f, r.started - started))
        })
        .collect();
    let ok: Vec<&PairRun> = tally.runs.iter().filter(|r| r.failure.is_none()).collect();

    // Where each pair ran, from the nodes' `session finished` lines
    // (written as each session ends: looked for until all are there).
    let mut sides = session_sides(&processes);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok
        .iter()
        .all(|r| sides.get(&r.registration).is_some_and(Sides::whole))
        && Instant::now() < deadline
    {
        // The poll's interval.
        tokio::time::sleep(Duration::from_millis(50)).await;
        sides = session_sides(&processes);
    }
    let mut crossed: HashMap<(Release, Release), u64> = HashMap::new();
    let mut crossed_on_format_2 = 0;
    // Not asserted (no timing asserts): pairs that waited for a CONNECT's
    // poll of the store rather than being told, for the printout.
    let slow = ok.iter().filter(|r| r.took > SLOW).count();
    let slowest = ok.iter().map(|r| r.took).max().unwrap_or_default();
    let mut local = 0;
    let mut unlogged = Vec::new();
    for r in &ok {
        match sides.get(&r.registration) {
            Some(Sides { local: true, .. }) => local += 1,
            Some(Sides {
                owner: Some(o),
                target: Some(t),
                ..
            }) => {
                let kinds = (processes[*o].1, processes[*t].1);
                *crossed.entry(kinds).or_default() += 1;
                if r.started > all_new_at {
                    crossed_on_format_2 += 1;
                }
            }
            _ => unlogged.push(&r.registration),
        }
    }
    eprintln!(
        "rolling upgrade: {} pairs, {} paired ({local} on one node), {} failed; \
         retries {:?}; crossed nodes (CREATE's node, CONNECT's node) {crossed:?}, \
         {crossed_on_format_2} across nodes once all were on format 2; \
         {slow} took over {SLOW:?}, the slowest {slowest:?}; {:?} in all; steps {events:?}",
        tally.runs.len(),
        ok.len(),
        failed.len(),
        tally.retries,
        started.elapsed(),
    );
    if !failed.is_empty() {
        // What the nodes logged of them, to tell why.
        let lines: Vec<String> = processes
            .iter()
            .flat_map(|(relay, release, slot)| {
                relay
                    .logs()
                    .into_iter()
                    .filter(|l| {
                        let text = l.to_string();
                        failed.iter().any(|(id, _, _)| text.contains(id.as_str()))
                    })
                    .map(move |l| format!("{release:?} node {slot}: {l}"))
            })
            .take(40)
            .collect();
        panic!(
            "failed pairings (registration, why, when from the start): {failed:?}\n\
             steps: {events:?}\nthe nodes' lines of them:\n{}",
            lines.join("\n")
        );
    }
    assert!(unlogged.is_empty(), "pairs no node logged: {unlogged:?}");
    for kinds in [
        (Release::Old, Release::Old),
        (Release::Old, Release::New),
        (Release::New, Release::Old),
        (Release::New, Release::New),
    ] {
        assert!(
            crossed.get(&kinds).copied().unwrap_or(0) > 0,
            "no pair crossed from a CREATE on {:?} to a CONNECT on {:?}: {crossed:?}",
            kinds.0,
            kinds.1
        );
    }
    assert!(crossed_on_format_2 > 0, "no pair crossed nodes on format 2");
    // The Bridges between new nodes spoke format 2, the old nodes' asked
    // and answered 1 (or named none: the real previous release), and no
    // frame named a format past this release's.
    let mut spoken: HashMap<(&str, &str), f64> = HashMap::new();
    for relay in &current {
        for role in ["client", "server"] {
            for format in ["0", "1", "2", "other"] {
                let n = relay
                    .metric(&format!(
                        "dtcp_bridge_formats_total{{role=\"{role}\",format=\"{format}\"}}"
                    ))
                    .await;
                *spoken.entry((role, format)).or_default() += n;
            }
        }
    }
    eprintln!("Bridge formats the new nodes' peers named: {spoken:?}");
    for role in ["client", "server"] {
        assert!(
            spoken[&(role, "2")] > 0.0,
            "no Bridge on format 2: {spoken:?}"
        );
        assert_eq!(spoken[&(role, "other")], 0.0, "{spoken:?}");
    }
    let old_named = spoken[&("server", "0")] + spoken[&("server", "1")];
    assert!(
        old_named > 0.0,
        "no old node's Bridge on format 1: {spoken:?}"
    );
}
