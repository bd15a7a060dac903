//! The `dtcp` tool end to end: real processes, a real relay, real files.

use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use dtcp_tests::testkit::{Output as To, Process, wait_until};
use dtcp_tests::*;

/// How long a `dtcp` run of the test's own may take to print a line or to
/// exit.
const DTCP_WAIT: Duration = Duration::from_secs(60);

/// `args` for `dtcp`, with the relay, the key and the JIDs every test uses.
fn with_session(relay: &Relay, args: &[&str]) -> Vec<String> {
    let relay = relay.addr.to_string();
    let session = [
        "--relay",
        &relay,
        "--key",
        "cli-key",
        "--from",
        "alice@a.example/laptop",
        "--to",
        "bob@b.example/phone",
    ];
    args.iter().chain(&session).map(|a| a.to_string()).collect()
}

/// `dtcp` with `args`, run to its end.
fn dtcp(relay: &Relay, args: &[&str]) -> Command {
    let mut c = Command::new(bin("dtcp"));
    c.args(with_session(relay, args)).stdin(Stdio::null());
    c
}

/// `dtcp` with `args`, started beside the test and killed if the test ends
/// first; its stderr kept a line at a time.
fn dtcp_process(relay: &Relay, args: &[&str]) -> Process {
    let mut p = Process::new(bin("dtcp"), with_session(relay, args)).stderr(To::Lines);
    p.spawn();
    p
}

/// What follows `prefix` on the first line of stderr that starts with it,
/// once `p` has printed it.
fn printed(p: &mut Process, prefix: &str) -> String {
    let lines = p.lines();
    let find = || lines.find_map(|l| l.strip_prefix(prefix).map(str::to_owned));
    p.wait_ready(DTCP_WAIT, || find().is_some());
    find().expect("printed")
}

/// How `p` exited.
fn exited(p: &mut Process, who: &str) -> ExitStatus {
    p.wait_exit(DTCP_WAIT)
        .unwrap_or_else(|| panic!("{who} did not exit within {DTCP_WAIT:?}"))
}

/// Waits for `p` to exit successfully.
fn succeeds(p: &mut Process, who: &str) {
    let status = exited(p, who);
    assert!(
        status.success(),
        "{who} failed ({status}): {}",
        p.lines().all().join("\n")
    );
}

fn write_file(path: &Path, size: usize, seed: u64) {
    let mut data = vec![0u8; size];
    Pattern::new(seed).fill(&mut data);
    std::fs::write(path, data).unwrap();
}

fn ok(out: &Output, who: &str) {
    assert!(
        out.status.success(),
        "{who} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn send_and_recv_a_file_plain() {
    let relay = NodeOptions::new().start();
    let dir = tempdir("plain");
    let (src, dst) = (dir.join("in.bin"), dir.join("out.bin"));
    write_file(&src, 12 << 20, 11);
    let mut send = dtcp_process(&relay, &["send", src.to_str().unwrap()]);
    let recv = dtcp(&relay, &["recv", "-o", dst.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&recv, "recv");
    succeeds(&mut send, "send");
    assert!(
        std::fs::read(&src).unwrap() == std::fs::read(&dst).unwrap(),
        "file differs"
    );
    assert!(!dir.join("out.bin.part").exists());
}

#[test]
fn send_and_recv_with_end_to_end_tls_and_stdin_stdout() {
    let relay = NodeOptions::new().start();
    let dir = tempdir("tls");
    let src = dir.join("in.bin");
    write_file(&src, 3 << 20, 12);
    let mut send = Process::new(bin("dtcp"), with_session(&relay, &["send", "--tls", "-"]))
        .stdin_file(&src)
        .stderr(To::Lines);
    send.spawn();
    // The sender prints its fingerprint first.
    let fingerprint = printed(&mut send, "TLS fingerprint: ");
    // A wrong fingerprint is refused, and the transfer does not happen.
    let wrong = "00".repeat(32);
    let bad = dtcp(&relay, &["recv", "--tls-fingerprint", &wrong])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        bad.stdout.is_empty(),
        "no byte may reach an unauthenticated receiver"
    );
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("TLS"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let send_status = exited(&mut send, "send");
    assert!(
        !send_status.success(),
        "the sender saw the failed handshake"
    );

    // Again, with the right fingerprint.
    let mut send = dtcp_process(&relay, &["send", "--tls", src.to_str().unwrap()]);
    let fingerprint2 = printed(&mut send, "TLS fingerprint: ");
    assert_ne!(fingerprint, fingerprint2, "a fresh certificate per run");
    let recv = dtcp(&relay, &["recv", "--tls-fingerprint", &fingerprint2])
        .output()
        .unwrap();
    ok(&recv, "recv");
    assert!(exited(&mut send, "send").success());
    assert!(
        recv.stdout == std::fs::read(&src).unwrap(),
        "stdout differs from the file"
    );
}

#[test]
fn recv_started_first_waits_for_the_sender() {
    let relay = NodeOptions::new().connect_grace(0.3).start();
    let dir = tempdir("order");
    let (src, dst) = (dir.join("in.bin"), dir.join("out.bin"));
    write_file(&src, 100_000, 13);
    let mut recv = dtcp_process(
        &relay,
        &["recv", "--wait", "20", "-o", dst.to_str().unwrap()],
    );
    // Until the relay's grace has run out on recv's first CONNECT: recv
    // must ask again by itself.
    tokio::runtime::Runtime::new().unwrap().block_on(eventually(
        Duration::from_secs(10),
        "recv's first CONNECT refused",
        || async {
            relay
                .metric("dtcp_errors_total{condition=\"not-found\"}")
                .await
                >= 1.0
        },
    ));
    let send = dtcp(&relay, &["send", src.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&send, "send");
    succeeds(&mut recv, "recv");
    assert!(std::fs::read(&src).unwrap() == std::fs::read(&dst).unwrap());
}

#[test]
fn a_refusal_exits_non_zero_with_the_condition() {
    let relay = NodeOptions::new().connect_grace(0.2).start();
    let out = dtcp(&relay, &["recv", "--wait", "0"]).output().unwrap();
    // 3: refused by the relay (`dtcp --help` lists the statuses).
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not-found"), "{err}");
    let out = Command::new(bin("dtcp"))
        .args(["send", "--relay", &relay.addr.to_string(), "--key", "k"])
        .args(["--from", "bad jid@x", "--to", "b@c", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("malformed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn health_answers_for_ready_and_draining_relays() {
    let relay = NodeOptions::new().drain_timeout(30.0).start();
    let health = || {
        Command::new(bin("dtcp"))
            .args(["health", &relay.metrics.to_string()])
            .output()
            .unwrap()
    };
    let ready = health();
    assert!(
        ready.status.success(),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );
    // Hold a session so the drain lasts while we ask.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _pair = rt.block_on(async {
        let t = triple("health");
        let (i, tg) = tokio::join!(
            dtcp_client::Initiator::connect(relay.addr, &t),
            dtcp_client::Target::connect(relay.addr, &t)
        );
        (i.unwrap(), tg.unwrap())
    });
    relay.signal(libc::SIGTERM);
    let mut draining = None;
    wait_until(Duration::from_secs(5), "not ready while draining", || {
        let out = health();
        let not_ready = !out.status.success();
        draining = Some(out);
        not_ready
    });
    let out = draining.expect("asked");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not ready"));
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dtcp-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
