//! The `dtcp` tool end to end: real processes, a real relay, real files.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use dtcp_tests::*;

fn dtcp(relay: &Relay, args: &[&str]) -> Command {
    let mut c = Command::new(bin("dtcp"));
    c.args(args)
        .args(["--relay", &relay.addr.to_string(), "--key", "cli-key"])
        .args([
            "--from",
            "alice@a.example/laptop",
            "--to",
            "bob@b.example/phone",
        ])
        .stdin(Stdio::null());
    c
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
    let send = dtcp(&relay, &["send", src.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let recv = dtcp(&relay, &["recv", "-o", dst.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&recv, "recv");
    ok(&send.wait_with_output().unwrap(), "send");
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
    let mut send = dtcp(&relay, &["send", "--tls", "-"])
        .stdin(std::fs::File::open(&src).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The sender prints its fingerprint first.
    let mut lines = BufReader::new(send.stderr.take().unwrap()).lines();
    let fingerprint = loop {
        let line = lines
            .next()
            .expect("sender printed no fingerprint")
            .unwrap();
        if let Some(fp) = line.strip_prefix("TLS fingerprint: ") {
            break fp.to_owned();
        }
    };
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
    let send_status = send.wait().unwrap();
    assert!(
        !send_status.success(),
        "the sender saw the failed handshake"
    );

    // Again, with the right fingerprint.
    let mut send = dtcp(&relay, &["send", "--tls", src.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(send.stderr.take().unwrap()).lines();
    let fingerprint2 = loop {
        let line = lines.next().expect("fingerprint").unwrap();
        if let Some(fp) = line.strip_prefix("TLS fingerprint: ") {
            break fp.to_owned();
        }
    };
    assert_ne!(fingerprint, fingerprint2, "a fresh certificate per run");
    let recv = dtcp(&relay, &["recv", "--tls-fingerprint", &fingerprint2])
        .output()
        .unwrap();
    ok(&recv, "recv");
    assert!(send.wait().unwrap().success());
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
    let recv = dtcp(
        &relay,
        &["recv", "--wait", "20", "-o", dst.to_str().unwrap()],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Longer than the relay's grace: recv must ask again by itself.
    std::thread::sleep(Duration::from_millis(1200));
    let send = dtcp(&relay, &["send", src.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&send, "send");
    ok(&recv.wait_with_output().unwrap(), "recv");
    assert!(std::fs::read(&src).unwrap() == std::fs::read(&dst).unwrap());
}

#[test]
fn a_refusal_exits_non_zero_with_the_condition() {
    let relay = NodeOptions::new().connect_grace(0.2).start();
    let out = dtcp(&relay, &["recv", "--wait", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
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
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = health();
        if !out.status.success() {
            assert!(String::from_utf8_lossy(&out.stderr).contains("not ready"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still ready while draining"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dtcp-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
