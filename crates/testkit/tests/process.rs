//! The child-process guard against `sh`: readiness on a line, restarts,
//! signals, exits, stdin from a file, and a process group ended as one.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use dtcp_testkit::{Output, Process, poll_until};

const LIMIT: Duration = Duration::from_secs(10);

fn sh(script: &str) -> Process {
    Process::new("sh", ["-c", script])
}

/// Whether process `pid` is gone (or a zombie nobody has reaped yet).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.split_whitespace().nth(2) == Some("Z"))
}

#[test]
fn ready_on_a_line_and_started_again_with_a_fresh_run() {
    let mut p = sh("echo started $$ >&2; exec sleep 60").stderr(Output::Lines);
    let lines = p.lines();
    p.start(LIMIT, || lines.contains("started"));
    let first = p.pid().expect("runs");
    assert!(
        lines.contains(&format!("started {first}")),
        "{:?}",
        lines.all()
    );
    p.start(LIMIT, || lines.contains("started"));
    let second = p.pid().expect("runs");
    assert_ne!(first, second);
    assert!(gone(first), "the first run was killed");
    assert_eq!(
        lines.all(),
        [format!("started {second}")],
        "only this run's lines"
    );
    p.stop();
    assert!(!p.is_running());
    assert!(poll_until(LIMIT, || gone(second)));
}

#[test]
fn an_exit_before_ready_fails_the_start_at_once_with_the_output() {
    let failed = std::panic::catch_unwind(|| {
        let mut p = sh("echo no such flag >&2; exit 3").stderr(Output::Lines);
        p.start(Duration::from_secs(60), || false);
    })
    .expect_err("the start failed");
    let message = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("exited"), "{message}");
    assert!(message.contains("no such flag"), "{message}");
}

#[test]
fn a_line_printed_just_before_the_exit_still_counts() {
    let mut p = sh("echo ready >&2").stderr(Output::Lines);
    let lines = p.lines();
    p.start(LIMIT, || lines.contains("ready"));
    assert!(p.wait_exit(LIMIT).expect("exits").success());
}

#[test]
fn a_signal_and_the_exit_it_causes() {
    let mut p = sh("exec sleep 60");
    p.spawn();
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(LIMIT).expect("exits");
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(!p.is_running());
    assert_eq!(p.wait_exit(LIMIT), None, "nothing left to wait for");
}

#[test]
fn a_graceful_stop_kills_what_ignores_it() {
    let mut p = sh("trap '' TERM; echo trapped >&2; while :; do sleep 1; done")
        .stderr(Output::Lines)
        .own_group();
    let lines = p.lines();
    p.start(LIMIT, || lines.contains("trapped"));
    assert_eq!(p.stop_with(libc::SIGTERM, Duration::from_millis(300)), None);
    assert!(!p.is_running());
}

#[test]
fn stdin_from_a_file_and_stdout_a_line_at_a_time() {
    let file = std::env::temp_dir().join(format!("dtcp-testkit-stdin-{}", std::process::id()));
    std::fs::write(&file, "one\ntwo\n").unwrap();
    let mut p = Process::new("cat", std::iter::empty::<&str>())
        .stdin_file(&file)
        .stdout(Output::Lines);
    p.spawn();
    assert!(p.wait_exit(LIMIT).expect("exits").success());
    assert_eq!(p.lines().all(), ["one", "two"]);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_group_ends_with_its_stop() {
    let mut p = sh("sleep 60 & echo $! >&2; wait")
        .stderr(Output::Lines)
        .own_group();
    let lines = p.lines();
    p.start(LIMIT, || !lines.all().is_empty());
    let grandchild: u32 = lines.all()[0].parse().expect("a pid");
    assert!(!gone(grandchild));
    drop(p);
    assert!(
        poll_until(LIMIT, || gone(grandchild)),
        "the group's sleep outlived it"
    );
}
