//! What ships is what is tested: the project's image, built from
//! deploy/Dockerfile's final stage with this suite's binaries, and the
//! project's docker-compose.yml brought up in real containers by an engine of
//! the test's own (see `dtcp_tests::containers`), with only the images
//! swapped for stand-ins: a distroless-like runtime extracted from Debian
//! packages, and the machine's own Redis, HAProxy and Prometheus (Debian's,
//! which the suite installs) copied onto it with their libraries. Grafana is
//! left out: no Debian package ships it and no registry can be reached.
//!
//! Checked: every service healthy; a file through HAProxy with the PROXY
//! protocol (v2), the relays logging the client's own address and refusing a
//! PROXY header from anyone else; Prometheus scraping all three relays with
//! the alert rules loaded; the chart's `helm test` commands in the image as
//! its Pod runs them (read-only, user 65532, no capabilities): `dtcp health
//! --every-address` and one file from `dtcp send` to `dtcp recv`; no
//! transfer lost while HAProxy notices a relay killed, or one stopped
//! gracefully (an idle relay exits at once on SIGTERM), and HAProxy's log
//! showing a connection sent to the dead relay redispatched; those relays
//! and one recreated at a new address all back in HAProxy's rotation; `down` leaving nothing; the machine's network as it was.
//!
//! The first run on a machine extracts the runtime base with mmdebstrap (a
//! few MB of packages); later runs, from any clone, take it from
//! `${XDG_CACHE_HOME:-$HOME/.cache}/dtcp-relay/containers/`.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dtcp_tests::containers::{Engine, output, run};
use dtcp_tests::testkit::{Output, Process, poll_every};
use dtcp_tests::{bin, proxy_v2};

/// The pause between two transfers of the dead-relay loop: a transfer is
/// two connections (more when the receiver retries), and the relays allow
/// one client address 20 new connections a second by default.
const TRANSFER_PACE: Duration = Duration::from_millis(300);
/// The address docker-compose.yml gives HAProxy (the only one the relays
/// take PROXY headers from).
const HAPROXY: &str = "172.28.0.10:7777";
/// The test's own address on the compose network: the engine's namespace is
/// the network's gateway, and the clients run there.
const CLIENT_IP: &str = "172.28.0.1";
/// The relays.
const RELAYS: [&str; 3] = ["relay-1", "relay-2", "relay-3"];
/// How long the services get to become healthy (their health checks run
/// every 5 s; the relays wait for Redis).
const HEALTHY: Duration = Duration::from_secs(90);
/// How long one transfer may take (a connection to a dead node costs HAProxy
/// a connect timeout of 3 s before it redispatches).
const TRANSFER: Duration = Duration::from_secs(30);
/// How long transfers run after a relay dies: longer than HAProxy needs to
/// notice (its checks: 2 failures 2 s apart; its resolver: about 1 s).
const NOTICE_WINDOW: Duration = Duration::from_secs(10);
/// The bound on transfers in that window.
const MAX_TRANSFERS: usize = 200;
/// How long a relay back (restarted or recreated) gets to serve through
/// HAProxy again.
const BACK: Duration = Duration::from_secs(60);
/// The size of each file sent.
const FILE_SIZE: usize = 64 * 1024;

#[test]
fn compose_in_real_containers() {
    let network_before = machine_network();
    let mut engine = Engine::start();
    let images = engine.images();
    let over = engine.override_file(&images);
    let work = engine.scratch("files");

    run(engine.compose(&over).args([
        "up",
        "-d",
        "--no-build",
        "redis",
        "relay-1",
        "relay-2",
        "relay-3",
        "haproxy",
        "prometheus",
    ]));
    all_healthy(&engine);

    // A file through HAProxy; the relays log the client's own address (from
    // the PROXY header), never HAProxy's.
    transfer(&engine, &work, "first").unwrap_or_else(|e| panic!("{e}"));
    let logs: String = RELAYS
        .iter()
        .map(|r| engine.logs(&Engine::container(r)))
        .collect();
    let finished: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["message"] == "session finished")
        .collect();
    assert!(
        !finished.is_empty(),
        "no session finished in the relays' logs:\n{logs}"
    );
    for v in &finished {
        for side in ["initiator_client", "target_client"] {
            if let Some(addr) = v[side].as_str() {
                assert_eq!(addr, CLIENT_IP, "{side} in {v}");
            }
        }
    }

    // A PROXY header from anyone but HAProxy is refused: straight to a relay,
    // claiming another client.
    let relay_1 = engine.address(&Engine::container("relay-1"));
    let spoofed = proxy_v2(
        "203.0.113.7:4000".parse().expect("addr"),
        format!("{relay_1}:7777").parse().expect("addr"),
    );
    let reply = raw_exchange(&engine, &format!("{relay_1}:7777"), &spoofed);
    assert!(
        !reply.starts_with(b"OK"),
        "a spoofed PROXY header was taken: {:?}",
        String::from_utf8_lossy(&reply)
    );
    assert!(
        !engine
            .logs(&Engine::container("relay-1"))
            .contains("203.0.113.7"),
        "the relay logged the spoofed address"
    );

    prometheus_scrapes_all(&engine);
    helm_test_commands(&engine, images.get("relay"), &work);

    // A relay dies (killed, not restarted): transfers go on while HAProxy
    // notices, none lost, and at least one of their connections was sent to
    // the dead relay and redispatched (HAProxy's log says so).
    let n = dying_relay(&engine, &work, "relay-3", "kill");
    eprintln!("{n} transfers while HAProxy noticed relay-3's death, none lost");
    run(engine
        .docker()
        .args(["start", &Engine::container("relay-3")]));

    // A relay stopped gracefully (SIGTERM): an idle relay exits at once, so
    // only redispatch covers the seconds HAProxy's checks take; transfers
    // go on, none lost.
    let n = dying_relay(&engine, &work, "relay-1", "stop");
    eprintln!("{n} transfers while HAProxy noticed relay-1's stop, none lost");
    run(engine
        .docker()
        .args(["start", &Engine::container("relay-1")]));

    // The killed and the stopped relays back (the same containers started
    // again), and relay-2
    // recreated at a new address (its old one held by a placeholder
    // meanwhile, so that the engine cannot hand it back).
    run(engine
        .docker()
        .args(["start", &Engine::container("relay-3")]));
    let relay_2 = Engine::container("relay-2");
    let old = engine.address(&relay_2);
    run(engine.compose(&over).args(["rm", "-s", "-f", "relay-2"]));
    run(engine.docker().args([
        "run",
        "-d",
        "--name",
        "dtcpct_placeholder",
        "--network",
        "dtcpct_default",
        "--ip",
        &old,
        "--entrypoint",
        "/usr/local/bin/dtcp-relay",
        images.get("relay"),
        "--listen",
        "127.0.0.1:7777",
        "--metrics-listen",
        "127.0.0.1:9777",
    ]));
    run(engine
        .compose(&over)
        .args(["up", "-d", "--no-build", "--no-deps", "relay-2"]));
    let new = engine.address(&relay_2);
    assert_ne!(old, new, "relay-2 was recreated at its old address");
    run(engine.docker().args(["rm", "-f", "dtcpct_placeholder"]));
    all_healthy(&engine);
    in_rotation(&engine, &work);

    // `down` leaves nothing: no container, no network, no volume.
    run(engine
        .compose(&over)
        .args(["down", "-v", "--remove-orphans", "-t", "5"]));
    let left = run(engine.docker().args(["ps", "-aq"]));
    assert!(left.trim().is_empty(), "containers left after down: {left}");
    let networks = run(engine
        .docker()
        .args(["network", "ls", "--format", "{{.Name}}"]));
    let networks: BTreeSet<&str> = networks.split_whitespace().collect();
    assert_eq!(
        networks,
        BTreeSet::from(["bridge", "host", "none"]),
        "networks left after down"
    );
    let volumes = run(engine.docker().args(["volume", "ls", "-q"]));
    assert!(
        volumes.trim().is_empty(),
        "volumes left after down: {volumes}"
    );

    drop(engine);
    assert_eq!(
        machine_network(),
        network_before,
        "the machine's network changed"
    );
}

/// The chart's `helm test` Pod's commands, as it runs them: in the project's
/// image, read-only, as user 65532 without capabilities, on the compose
/// network (HAProxy standing in for the client Service): a relay's health
/// by `dtcp health --every-address`, and the image's CA bundle from `dtcp
/// send` to `dtcp recv`, received whole.
fn helm_test_commands(engine: &Engine, image: &str, work: &Path) {
    let received = work.join("helm-test");
    fs::create_dir_all(&received).expect("directory");
    run(Command::new("chown").arg("65532:65532").arg(&received));
    let pod = |name: &str, detach: bool, args: &[&str]| {
        let mut cmd = engine.docker();
        cmd.args(["run", "--name", name, "--network", "dtcpct_default"])
            .args(["--read-only", "--user", "65532:65532", "--cap-drop", "ALL"])
            .args(["--security-opt", "no-new-privileges:true"])
            .arg("-v")
            .arg(format!("{}:/received", received.display()))
            .args(["--entrypoint", "/usr/local/bin/dtcp"]);
        if detach {
            cmd.arg("-d");
        }
        cmd.arg(image).args(args);
        output(&mut cmd)
    };
    let health = pod(
        "dtcpct_test_health",
        false,
        &["health", "--every-address", "relay-1:9777"],
    );
    assert!(
        health.status.success(),
        "dtcp health --every-address in the image: {}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );
    let session = [
        "--relay",
        "haproxy:7777",
        "--key",
        "helm-test-key-0123456789abcdef",
        "--from",
        "helm-test-send@example.org",
        "--to",
        "helm-test-recv@example.org",
    ];
    let recv: Vec<&str> = ["recv"]
        .into_iter()
        .chain(session)
        .chain(["--wait", "60", "--output", "/received/ca-certificates.crt"])
        .collect();
    let started = pod("dtcpct_test_recv", true, &recv);
    assert!(started.status.success(), "starting dtcp recv: {started:?}");
    let send: Vec<&str> = ["send"]
        .into_iter()
        .chain(session)
        .chain(["/etc/ssl/certs/ca-certificates.crt"])
        .collect();
    let sent = pod("dtcpct_test_send", false, &send);
    let code = run(engine.docker().args(["wait", "dtcpct_test_recv"]));
    let recv_logs = engine.logs("dtcpct_test_recv");
    run(engine.docker().args([
        "rm",
        "-f",
        "dtcpct_test_health",
        "dtcpct_test_recv",
        "dtcpct_test_send",
    ]));
    assert!(
        sent.status.success() && code.trim() == "0",
        "the helm test's transfer in the image: send {}{}, recv exit {code}: {recv_logs}",
        String::from_utf8_lossy(&sent.stdout),
        String::from_utf8_lossy(&sent.stderr)
    );
    // The image's bundle is the machine's (the stand-in runtime copies it).
    assert_eq!(
        fs::read(received.join("ca-certificates.crt")).expect("the received file"),
        fs::read("/etc/ssl/certs/ca-certificates.crt").expect("the bundle"),
        "the helm test's file arrived changed"
    );
}

/// The machine's interfaces, addresses and routes (outside the engine's
/// namespace).
fn machine_network() -> String {
    let mut s = String::new();
    for args in [["-o", "addr"], ["-o", "route"]] {
        s += &run(Command::new("ip").args(args));
    }
    s += &run(Command::new("ip").args(["-6", "route"]));
    s
}

/// Waits until every service runs and those with a health check are healthy.
fn all_healthy(engine: &Engine) {
    let services = [
        "redis",
        "relay-1",
        "relay-2",
        "relay-3",
        "haproxy",
        "prometheus",
    ];
    let mut states: Vec<(&str, (String, String))> = Vec::new();
    // Six `docker inspect` calls a look.
    let up = poll_every(Duration::from_millis(500), HEALTHY, || {
        states = services
            .iter()
            .map(|s| (*s, engine.state(&Engine::container(s))))
            .collect();
        states.iter().all(|(_, (status, health))| {
            status == "running" && (health == "healthy" || health == "none")
        })
    });
    assert!(
        up,
        "not all healthy within {HEALTHY:?}: {states:?}\n{}",
        services
            .iter()
            .map(|s| format!("--- {s}\n{}", engine.logs(&Engine::container(s))))
            .collect::<String>()
    );
    // HAProxy has no health check of its own in the compose file: only the
    // relays' and Prometheus's and Redis's count.
    assert!(
        states
            .iter()
            .filter(|(s, _)| *s != "haproxy")
            .all(|(_, (_, h))| h == "healthy"),
        "{states:?}"
    );
}

/// Makes `relay` die by `docker {how}` (`kill` or `stop`) while no
/// transfer is in flight, then sends files through HAProxy for
/// [`NOTICE_WINDOW`]; panics if one is lost, or if HAProxy's log shows no
/// connection redispatched (sent to the dead relay first). Returns how
/// many transfers went through.
fn dying_relay(engine: &Engine, work: &Path, relay: &str, how: &str) -> usize {
    let haproxy = Engine::container("haproxy");
    let already = engine.logs(&haproxy).lines().count();
    run(engine.docker().args([how, &Engine::container(relay)]));
    // `docker kill` may return before the container is reaped.
    let mut state = (String::new(), String::new());
    let exited = poll_every(Duration::from_millis(100), Duration::from_secs(10), || {
        state = engine.state(&Engine::container(relay));
        state.0 == "exited"
    });
    assert!(exited, "{relay} after docker {how}: {state:?}");
    let started = Instant::now();
    // Two transfers at once first: their four connections reach HAProxy
    // before its resolver drops the dead relay's name (a second or two),
    // and round robin over three servers sends one of them to it.
    std::thread::scope(|s| {
        let pair: Vec<_> = (0..2)
            .map(|i| s.spawn(move || transfer(engine, work, &format!("{how}-first-{i}"))))
            .collect();
        for (i, t) in pair.into_iter().enumerate() {
            t.join()
                .expect("transfer thread")
                .unwrap_or_else(|e| panic!("transfer {i} after docker {how} {relay}: {e}"));
        }
    });
    let mut n = 2;
    while started.elapsed() < NOTICE_WINDOW && n < MAX_TRANSFERS {
        // Every transfer comes from this one client address: paced, so that
        // it stays within the relay's default connection rate per address.
        std::thread::sleep(TRANSFER_PACE);
        transfer(engine, work, &format!("{how}-{n}"))
            .unwrap_or_else(|e| panic!("transfer {n} after docker {how} {relay}: {e}"));
        n += 1;
    }
    assert!(n >= 3, "only {n} transfers in {NOTICE_WINDOW:?}");
    let log = engine.logs(&haproxy);
    let new: Vec<&str> = log.lines().skip(already).collect();
    let redispatched: Vec<&&str> = new.iter().filter(|l| redispatched(l)).collect();
    assert!(
        !redispatched.is_empty(),
        "no connection redispatched after docker {how} {relay} (HAProxy's log since):\n{}",
        new.join("\n")
    );
    eprintln!(
        "docker {how} {relay}: {} connection(s) redispatched, e.g. {}",
        redispatched.len(),
        redispatched[0]
    );
    n
}

/// Whether a line of HAProxy's TCP log records a redispatch: its counters
/// `actconn/feconn/beconn/srv_conn/retries` have a `+` before the retries
/// when the connection went to another server than the first one chosen.
fn redispatched(line: &str) -> bool {
    line.split_whitespace().any(|word| {
        let fields: Vec<&str> = word.split('/').collect();
        fields.len() == 5
            && fields[..4]
                .iter()
                .all(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
            && fields[4]
                .strip_prefix('+')
                .is_some_and(|r| r.parse::<u32>().is_ok())
    })
}

/// One file sent through HAProxy by `dtcp send` and received by `dtcp recv`
/// (both run in the engine's namespace), checked byte for byte.
fn transfer(engine: &Engine, dir: &Path, name: &str) -> Result<(), String> {
    let input = dir.join(format!("{name}.in"));
    let out = dir.join(format!("{name}.out"));
    let data: Vec<u8> = (0..FILE_SIZE)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ name.len() as u8)
        .collect();
    fs::write(&input, &data).expect("input file");
    let triple = [
        "--key".to_string(),
        format!("key-{name}"),
        "--from".into(),
        format!("initiator@a.example/{name}"),
        "--to".into(),
        "target@b.example/res".into(),
    ];
    let dtcp = |args: Vec<std::ffi::OsString>| {
        let mut p = engine
            .process_inside(
                bin("dtcp"),
                args.into_iter().chain(triple.iter().map(Into::into)),
            )
            .stderr(Output::Lines);
        p.spawn();
        p
    };
    let mut recv = dtcp(vec![
        "recv".into(),
        "--relay".into(),
        HAPROXY.into(),
        "--wait".into(),
        "20".into(),
        "-o".into(),
        out.clone().into(),
    ]);
    let mut send = dtcp(vec![
        "send".into(),
        "--relay".into(),
        HAPROXY.into(),
        input.clone().into(),
    ]);
    let send_ok = succeeds(&mut send, TRANSFER);
    let recv_ok = succeeds(&mut recv, TRANSFER);
    let result = if !(send_ok && recv_ok) {
        Err(format!(
            "{name}: send {}, recv {}\nsend: {}\nrecv: {}",
            if send_ok { "ok" } else { "failed" },
            if recv_ok { "ok" } else { "failed" },
            send.lines().all().join("\n"),
            recv.lines().all().join("\n")
        ))
    } else if fs::read(&out).ok().as_deref() != Some(&data[..]) {
        Err(format!(
            "{name}: the file received differs from the file sent"
        ))
    } else {
        Ok(())
    };
    let _ = fs::remove_file(&input);
    let _ = fs::remove_file(&out);
    result
}

/// Whether `process` exits successfully within `limit` (it is killed
/// after, when dropped).
fn succeeds(process: &mut Process, limit: Duration) -> bool {
    process.wait_exit(limit).is_some_and(|s| s.success())
}

/// Sends `bytes` to `addr` from the engine's namespace and returns what comes
/// back before the peer closes (at most 5 s).
fn raw_exchange(engine: &Engine, addr: &str, bytes: &[u8]) -> Vec<u8> {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let script = "import socket,sys\n\
        s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5)\n\
        s.sendall(bytes.fromhex(sys.argv[3]))\n\
        out=b''\n\
        try:\n\
        \x20 while True:\n\
        \x20   b=s.recv(4096)\n\
        \x20   if not b: break\n\
        \x20   out+=b\n\
        except OSError: pass\n\
        sys.stdout.write(out.hex())\n";
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let out = run(engine
        .inside("python3")
        .args(["-c", script, host, port, &hex]));
    (0..out.trim().len() / 2)
        .map(|i| u8::from_str_radix(&out.trim()[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// Prometheus (its HTTP API, from the engine's namespace) scrapes all three
/// relays and has the alert rules loaded.
fn prometheus_scrapes_all(engine: &Engine) {
    let prometheus = engine.address(&Engine::container("prometheus"));
    let get = |path: &str| -> serde_json::Value {
        let out = output(engine.inside("curl").args([
            "-sf",
            "--max-time",
            "5",
            &format!("http://{prometheus}:9090{path}"),
        ]));
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let mut targets = serde_json::Value::Null;
    // Prometheus scrapes every few seconds: a look a second is enough.
    let all_up = poll_every(Duration::from_secs(1), HEALTHY, || {
        targets = get("/api/v1/targets");
        let up: BTreeSet<String> = targets["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["health"] == "up" && t["labels"]["job"] == "dtcp-relay")
            .filter_map(|t| t["labels"]["pod"].as_str().map(str::to_string))
            .collect();
        up.len() == 3
    });
    assert!(
        all_up,
        "Prometheus does not scrape all three relays: {targets}"
    );
    let rules = get("/api/v1/rules");
    let alerts = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter(|r| r["type"] == "alerting")
        .count();
    let expected = fs::read_to_string(
        dtcp_tests::containers::workspace().join("helm/dtcp-relay/files/alerts.yaml"),
    )
    .expect("alerts.yaml")
    .lines()
    .filter(|l| l.trim_start().starts_with("- alert:"))
    .count();
    assert!(expected > 0);
    assert_eq!(
        alerts, expected,
        "alert rules loaded by Prometheus: {rules}"
    );
}

/// Transfers until HAProxy has sent a connection to each of the three relays
/// (its log names the server of every connection).
fn in_rotation(engine: &Engine, dir: &Path) {
    let haproxy = Engine::container("haproxy");
    let already = engine.logs(&haproxy).lines().count();
    let mut n = 0;
    let mut logs = String::new();
    let served = |logs: &str| -> BTreeSet<String> {
        logs.lines()
            .skip(already)
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("relays/")))
            .map(str::to_owned)
            .collect()
    };
    // A transfer a look, paced within the relays' connection rate for one
    // client address.
    let back = poll_every(Duration::from_millis(500), BACK, || {
        transfer(engine, dir, &format!("back-{n}")).unwrap_or_else(|e| panic!("{e}"));
        n += 1;
        logs = engine.logs(&haproxy);
        let served = served(&logs);
        RELAYS.iter().all(|r| served.contains(*r))
    });
    assert!(
        back,
        "not every relay back in HAProxy's rotation within {BACK:?} ({n} transfers, served by {:?}):\n{logs}",
        served(&logs)
    );
}
