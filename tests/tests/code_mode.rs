//! `dtcp` in code mode end to end: real relays (one, and three nodes on one
//! Redis), real `dtcp` processes, real files. The code is typed on the
//! receiver's standard input (`--code-file -`), as a person types it at the
//! prompt, never on a command line.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtcp_client::Initiator;
use dtcp_client::code::{self, Code};
use dtcp_tests::testkit::{Output as To, Process, wait_until};
use dtcp_tests::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The large file's size. The issue asks for 1 GiB; 128 MiB moves the same
/// code paths (many chunks through TLS, a multi-node relay) in a few seconds
/// on a shared machine. The 1 GiB figure is the bench's (bench/).
const LARGE: usize = 128 << 20;
/// How long a `dtcp` run may take to print its code or to exit.
const WAIT: Duration = Duration::from_secs(120);

/// Exit statuses (`dtcp --help`).
const EXIT_AUTH: i32 = 5;
const EXIT_FILE: i32 = 6;

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dtcp-code-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_file(path: &Path, size: usize, seed: u64) {
    let mut data = vec![0u8; size];
    Pattern::new(seed).fill(&mut data);
    std::fs::write(path, data).unwrap();
}

fn digest(path: &Path) -> [u8; 32] {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h.finalize().into();
        }
        h.update(&buf[..n]);
    }
}

/// `dtcp send --relay RELAY ARGS`, started; returns it with the code it
/// printed.
fn send(relay: SocketAddr, args: &[&str]) -> (Process, String) {
    let mut all = vec!["send".to_string(), "--relay".into(), relay.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let mut p = Process::new(bin("dtcp"), all).stderr(To::Lines);
    p.spawn();
    let lines = p.lines();
    let find = || lines.find_map(|l| l.strip_prefix("code: ").map(str::to_owned));
    p.wait_ready(WAIT, || find().is_some());
    let code = find().expect("printed");
    (p, code)
}

/// `dtcp recv --relay RELAY --code-file - ARGS` in `dir`, the code typed on
/// its standard input; run to its end.
fn recv(relay: SocketAddr, code: &str, dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(bin("dtcp"))
        .args(["recv", "--relay", &relay.to_string(), "--code-file", "-"])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{code}").unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output, who: &str) {
    assert!(out.status.success(), "{who} failed: {}", stderr(out));
}

fn exit_code(p: &mut Process, who: &str) -> Option<i32> {
    p.wait_exit(WAIT)
        .unwrap_or_else(|| panic!("{who} did not exit within {WAIT:?}"))
        .code()
}

/// The same code with its last word changed: a typo, or a guess by whoever
/// knows the part the relay sees.
fn wrong(code: &str) -> String {
    let parsed: Code = code.parse().unwrap();
    let (head, last) = code.rsplit_once('-').unwrap();
    // Two words of the two-syllable list: the last place takes that list.
    let other = if last == "aardvark" {
        "absurd"
    } else {
        "aardvark"
    };
    let guess = format!("{head}-{other}");
    assert_eq!(guess.parse::<Code>().unwrap().triple(), parsed.triple());
    guess
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every file under `dir`, by relative path, with its bytes or link target.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&path).unwrap();
                out.push((rel, t.to_string_lossy().as_bytes().to_vec()));
            } else if meta.is_dir() {
                out.push((rel, b"<dir>".to_vec()));
                stack.push(path);
            } else {
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_file_and_a_directory_with_odd_names_through_one_relay() {
    let relay = NodeOptions::new().start();
    let dir = tempdir("one");
    let (src, out) = (dir.join("src"), dir.join("out"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&src).unwrap();
    let file = src.join("in file ü.bin");
    write_file(&file, 12 << 20, 1);

    let (mut s, code) = send(relay.addr, &[file.to_str().unwrap()]);
    let r = recv(relay.addr, &code, &out, &["--json"]);
    ok(&r, "recv");
    assert_eq!(exit_code(&mut s, "send"), Some(0));
    let got = out.join("in file ü.bin");
    assert!(std::fs::read(&file).unwrap() == std::fs::read(&got).unwrap());
    let line: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(line["event"], "done");
    assert_eq!(line["bytes"], 12 << 20);

    // A tree with odd names, an empty directory, an empty file and a link
    // that stays inside.
    let tree_root = dir.join("tree");
    for d in ["a/b c/ünï", "-dash/ x ", "empty", "new\nline"] {
        std::fs::create_dir_all(tree_root.join(d)).unwrap();
    }
    std::fs::write(tree_root.join("a/b c/ünï/q'u\"ote*?.txt"), b"odd").unwrap();
    std::fs::write(tree_root.join("-dash/ x /empty"), b"").unwrap();
    std::fs::write(tree_root.join("new\nline/\\back"), b"slash").unwrap();
    write_file(&tree_root.join("a/big.bin"), 3 << 20, 2);
    std::os::unix::fs::symlink("../a/big.bin", tree_root.join("-dash/link")).unwrap();
    let (mut s, code) = send(relay.addr, &[tree_root.to_str().unwrap()]);
    ok(&recv(relay.addr, &code, &out, &[]), "recv");
    assert_eq!(exit_code(&mut s, "send"), Some(0));
    assert_eq!(tree(&tree_root), tree(&out.join("tree")));
    assert_eq!(entries(&out), ["in file ü.bin", "tree"], "no .part left");
    // -o an existing directory: the sender's name in it.
    let (mut s, code) = send(relay.addr, &[tree_root.to_str().unwrap()]);
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    ok(
        &recv(
            relay.addr,
            &code,
            &dir,
            &["-o", elsewhere.to_str().unwrap()],
        ),
        "recv",
    );
    assert_eq!(exit_code(&mut s, "send"), Some(0));
    assert_eq!(tree(&tree_root), tree(&elsewhere.join("tree")));
}

#[test]
fn a_large_file_through_a_three_node_cluster_with_a_checksum() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let nodes = [
        cluster_node(&urls, &[]),
        cluster_node(&urls, &[]),
        cluster_node(&urls, &[]),
    ];
    let dir = tempdir("cluster");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let file = dir.join("large.bin");
    write_file(&file, LARGE, 3);
    // Sender on the first node, receiver on the third: the bytes cross nodes.
    let (mut s, code) = send(nodes[0].addr, &[file.to_str().unwrap()]);
    ok(&recv(nodes[2].addr, &code, &out, &[]), "recv");
    assert_eq!(exit_code(&mut s, "send"), Some(0));
    assert_eq!(digest(&file), digest(&out.join("large.bin")));
}

/// A TCP tap: forwards one connection at a time to `to` and keeps every
/// byte that passes, both ways.
struct Tap {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    fn start(to: SocketAddr, connections: usize) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(connections) {
                let a = conn.unwrap();
                let b = TcpStream::connect(to).unwrap();
                for (mut from, mut into) in
                    [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)]
                {
                    let keep = keep.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || into.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            keep.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                        let _ = into.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Tap { addr, seen }
    }
}

#[test]
fn the_bytes_between_relay_and_clients_are_not_the_plaintext() {
    let relay = NodeOptions::new().start();
    let dir = tempdir("tap");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let marker = b"PLAINTEXT-MARKER-0123456789-";
    let data: Vec<u8> = marker.iter().copied().cycle().take(4 << 20).collect();
    let file = dir.join("plain.txt");
    std::fs::write(&file, &data).unwrap();
    let (to_sender, to_receiver) = (Tap::start(relay.addr, 1), Tap::start(relay.addr, 1));
    let (mut s, code) = send(to_sender.addr, &[file.to_str().unwrap()]);
    ok(&recv(to_receiver.addr, &code, &out, &[]), "recv");
    assert_eq!(exit_code(&mut s, "send"), Some(0));
    assert!(std::fs::read(out.join("plain.txt")).unwrap() == data);
    let secret_words = code.splitn(3, '-').nth(2).unwrap().to_string();
    for tap in [to_sender, to_receiver] {
        let seen = tap.seen.lock().unwrap();
        assert!(seen.len() > data.len(), "the whole transfer passed the tap");
        for needle in [&marker[..], b"plain.txt", secret_words.as_bytes()] {
            assert!(
                !seen.windows(needle.len()).any(|w| w == needle),
                "{:?} seen on the wire",
                String::from_utf8_lossy(needle)
            );
        }
    }
}

#[test]
fn a_wrong_code_fails_both_sides_with_the_auth_status_and_writes_nothing() {
    let relay = NodeOptions::new().start();
    let dir = tempdir("wrong");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let file = dir.join("f.bin");
    write_file(&file, 1 << 20, 4);
    let (mut s, code) = send(relay.addr, &["--notify-wait", "0", file.to_str().unwrap()]);
    let r = recv(relay.addr, &wrong(&code), &out, &["--json"]);
    assert_eq!(r.status.code(), Some(EXIT_AUTH), "{}", stderr(&r));
    assert!(stderr(&r).contains("wrong code"), "{}", stderr(&r));
    let line: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(line["event"], "error");
    assert_eq!(line["kind"], "auth");
    assert_eq!(line["exit"], EXIT_AUTH);
    assert_eq!(exit_code(&mut s, "send"), Some(EXIT_AUTH));
    assert!(s.lines().contains("wrong code"));
    assert!(entries(&out).is_empty(), "{:?}", entries(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_third_party_first_gets_one_failed_try_and_the_receiver_is_told() {
    let relay = NodeOptions::new().start();
    let dir = tempdir("third");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let file = dir.join("f.bin");
    write_file(&file, 1 << 20, 5);
    let (mut s, code) = send(relay.addr, &["--notify-wait", "30", file.to_str().unwrap()]);
    // Someone who learned what the relay sees (the key: the number and the
    // first word) claims the session first and guesses the rest.
    let guess: Code = wrong(&code).parse().unwrap();
    let stream = dtcp_client::Target::connect(relay.addr, &guess.triple())
        .await
        .unwrap();
    let err = code::receiver(stream, &guess).await.unwrap_err();
    assert!(matches!(err, code::PakeError::WrongCode), "{err}");
    // The real receiver comes next with the right code and is told why.
    let (addr, out2, c) = (relay.addr, out.clone(), code.clone());
    let r = tokio::task::spawn_blocking(move || recv(addr, &c, &out2, &[]))
        .await
        .unwrap();
    assert_eq!(r.status.code(), Some(EXIT_AUTH), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("already tried once with a wrong code"),
        "{}",
        stderr(&r)
    );
    assert_eq!(exit_code(&mut s, "send"), Some(EXIT_AUTH));
    assert!(
        s.lines()
            .contains("told a receiver that the code is burned")
    );
    assert!(entries(&out).is_empty());
}

/// One tar entry: a ustar header and the data, padded.
fn tar_entry(name: &str, kind: u8, link: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// A hostile sender: the code exchange done right, then a directory whose
/// tar stream is `tar`.
async fn hostile_send(relay: SocketAddr, code: &Code, tar: &[u8]) {
    let stream = Initiator::connect(relay, &code.triple()).await.unwrap();
    let mut s = code::sender(stream, code).await.unwrap();
    let name = b"evil";
    s.write_all(&[2, 0, name.len() as u8]).await.unwrap();
    s.write_all(name).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), 0x06, "the receiver takes it");
    let mut src = tar;
    let sent = dtcp_client::transfer::send(&mut s, &mut src, Some(tar.len() as u64), |_| {}).await;
    // The receiver confirms only what it unpacked.
    assert!(
        matches!(sent, Err(dtcp_client::transfer::TransferError::NoAck)),
        "{sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_directory_is_refused_and_nothing_is_written_outside() {
    let relay = NodeOptions::new().start();
    let dir = tempdir("hostile");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let outside = dir.join("outside");
    let absolute = dir.join("absolute.txt");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dot-dot", tar_entry("../outside", b'0', "", b"escaped")),
        (
            "absolute",
            tar_entry(absolute.to_str().unwrap(), b'0', "", b"escaped"),
        ),
        ("symlink out", {
            let mut t = tar_entry("link", b'2', "../../", b"");
            t.extend(tar_entry("link/outside", b'0', "", b"escaped"));
            t
        }),
        ("hard link", tar_entry("hard", b'1', "/etc/passwd", b"")),
    ];
    for (what, mut tar) in cases {
        tar.extend([0u8; 1024]);
        let code = Code::generate();
        let (c, t) = (code.clone(), tar.clone());
        let sender = tokio::spawn(async move { hostile_send(relay.addr, &c, &t).await });
        let (addr, o, text) = (relay.addr, out.clone(), code.to_string());
        let r = tokio::task::spawn_blocking(move || recv(addr, &text, &o, &[]))
            .await
            .unwrap();
        sender.await.unwrap();
        assert_eq!(r.status.code(), Some(EXIT_FILE), "{what}: {}", stderr(&r));
        assert!(
            stderr(&r).contains("refused the directory"),
            "{what}: {}",
            stderr(&r)
        );
        assert!(entries(&out).is_empty(), "{what}: {:?}", entries(&out));
        assert!(!outside.exists() && !absolute.exists(), "{what}: escaped");
    }
}

#[test]
fn an_existing_file_is_replaced_only_with_overwrite() {
    let relay = NodeOptions::new().start();
    let dir = tempdir("overwrite");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let file = dir.join("f.bin");
    write_file(&file, 1 << 20, 6);
    std::fs::write(out.join("f.bin"), b"mine").unwrap();
    let (mut s, code) = send(relay.addr, &[file.to_str().unwrap()]);
    let r = recv(relay.addr, &code, &out, &[]);
    assert_eq!(r.status.code(), Some(EXIT_FILE), "{}", stderr(&r));
    assert!(stderr(&r).contains("--overwrite"), "{}", stderr(&r));
    assert_ne!(exit_code(&mut s, "send"), Some(0));
    assert!(s.lines().contains("the receiver refused"));
    assert_eq!(std::fs::read(out.join("f.bin")).unwrap(), b"mine");
    assert_eq!(entries(&out), ["f.bin"]);

    let (mut s, code) = send(relay.addr, &[file.to_str().unwrap()]);
    ok(&recv(relay.addr, &code, &out, &["--overwrite"]), "recv");
    assert_eq!(exit_code(&mut s, "send"), Some(0));
    assert!(std::fs::read(out.join("f.bin")).unwrap() == std::fs::read(&file).unwrap());
}

#[test]
fn code_mode_takes_the_direct_path_when_the_sender_listens() {
    let relay = NodeOptions::new().start();
    let dir = tempdir("direct");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let file = dir.join("f.bin");
    write_file(&file, 2 << 20, 8);
    let (mut s, code) = send(
        relay.addr,
        &["--listen", "127.0.0.1", file.to_str().unwrap()],
    );
    // The command printed for the receiver carries the candidate list.
    let lines = s.lines();
    let find = || lines.find_map(|l| l.strip_prefix("on the other side run: ").map(str::to_owned));
    s.wait_ready(WAIT, || find().is_some());
    let command = find().unwrap();
    let list = command.split('\'').nth(1).expect("quoted candidates");
    let mut child = Command::new(bin("dtcp"))
        .args(["recv", "--candidates", list, "--code-file", "-"])
        .current_dir(&out)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{code}").unwrap();
    let r = child.wait_with_output().unwrap();
    ok(&r, "recv");
    assert!(stderr(&r).contains("connected directly"), "{}", stderr(&r));
    assert_eq!(exit_code(&mut s, "send"), Some(0));
    assert!(std::fs::read(out.join("f.bin")).unwrap() == std::fs::read(&file).unwrap());
}

/// The command line of `p`, once it runs `dtcp` (not the test binary it
/// was forked from).
fn cmdline(p: &Process) -> String {
    let read = || {
        let raw = std::fs::read(format!("/proc/{}/cmdline", p.pid().unwrap())).unwrap();
        String::from_utf8_lossy(&raw).replace('\0', " ")
    };
    wait_until(WAIT, "dtcp's own command line", || {
        read().contains("--relay")
    });
    read()
}

#[test]
fn no_key_or_code_in_the_command_line_of_the_documented_flows() {
    let relay = NodeOptions::new().start();
    let dir = tempdir("cmdline");
    let file = dir.join("f.bin");
    write_file(&file, 1 << 10, 7);
    let relay_s = relay.addr.to_string();

    // Code mode: the sender makes the code, the receiver reads it from
    // stdin; both are checked while they wait.
    let recv_dir = dir.join("received");
    std::fs::create_dir_all(&recv_dir).unwrap();
    let (mut s, code) = send(relay.addr, &[file.to_str().unwrap()]);
    let parsed: Code = code.parse().unwrap();
    let mut r = Process::new(
        bin("dtcp"),
        ["recv", "--relay", &relay_s, "--code-file", "-"],
    )
    .current_dir(&recv_dir)
    .stdin_piped()
    .stderr(To::Lines);
    r.spawn();
    for p in [&s, &r] {
        let line = cmdline(p);
        assert!(!line.contains(&code), "{line}");
        assert!(!line.contains(parsed.triple().key()), "{line}");
    }
    writeln!(r.take_stdin().unwrap(), "{code}").unwrap();
    assert_eq!(exit_code(&mut r, "recv"), Some(0));
    assert_eq!(exit_code(&mut s, "send"), Some(0));

    // Explicit mode: the key from a file and from a variable the user
    // names. The sender reads its data from stdin, held open until both
    // command lines are read.
    let key = "explicit-secret-key";
    let key_file = dir.join("key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let session = ["--from", "alice@a.example", "--to", "bob@b.example"];
    let send_args = [
        "send",
        "--relay",
        &relay_s,
        "--key-file",
        key_file.to_str().unwrap(),
        "-",
    ];
    let mut s = Process::new(bin("dtcp"), [&send_args[..], &session[..]].concat())
        .stdin_piped()
        .stderr(To::Lines);
    s.spawn();
    let out = dir.join("explicit.bin");
    let recv_args = [
        "recv",
        "--relay",
        &relay_s,
        "--key-env",
        "MY_KEY",
        "-o",
        out.to_str().unwrap(),
    ];
    let mut r = Process::new(bin("dtcp"), [&recv_args[..], &session[..]].concat())
        .env("MY_KEY", key)
        .stderr(To::Lines);
    r.spawn();
    for p in [&s, &r] {
        let line = cmdline(p);
        assert!(!line.contains(key), "{line}");
    }
    let mut stdin = s.take_stdin().unwrap();
    stdin.write_all(&std::fs::read(&file).unwrap()).unwrap();
    drop(stdin);
    assert_eq!(exit_code(&mut r, "recv"), Some(0));
    assert_eq!(exit_code(&mut s, "send"), Some(0));
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&file).unwrap());
}

#[test]
fn network_failures_completions_and_the_man_page() {
    // Nothing listens on a port just released: the network status, 4.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(bin("dtcp"))
        .args(["recv", "--relay", &closed.to_string(), "--wait", "0"])
        .args(["--code-env", "CODE"])
        .env("CODE", Code::generate().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));

    let run = |args: &[&str]| {
        let out = Command::new(bin("dtcp")).args(args).output().unwrap();
        ok(&out, "dtcp");
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(run(&["completions", "bash"]).contains("--code-file"));
    let man = run(&["man"]);
    assert!(man.starts_with(".ie") || man.contains(".TH"), "{man}");
    let help = run(&["recv", "--help"]);
    assert!(
        help.contains("--key-file") && help.contains("readable by every local user"),
        "{help}"
    );
}

#[test]
fn with_signed_keys_the_key_finds_the_session_and_the_code_secures_it() {
    let secret = "code-mode-key-secret";
    let relay = Relay::start(&["--key-secret", secret]);
    let dir = tempdir("signed");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let file = dir.join("f.bin");
    write_file(&file, 1 << 20, 9);

    // A code alone derives a key the relay did not sign: refused (3).
    let (mut s, code) = send(relay.addr, &[file.to_str().unwrap()]);
    assert_eq!(exit_code(&mut s, "send"), Some(3));
    let r = recv(relay.addr, &code, &out, &["--wait", "0"]);
    assert_eq!(r.status.code(), Some(3), "{}", stderr(&r));

    // The signed key and its JIDs, plus --code on both sides.
    let t = signed_triple("code-mode", secret, 60);
    let key_file = dir.join("key");
    std::fs::write(&key_file, t.key()).unwrap();
    let ids = [
        "--key-file",
        key_file.to_str().unwrap(),
        "--from",
        t.initiator(),
        "--to",
        t.target(),
        "--code",
    ];
    let (mut s, code) = send(
        relay.addr,
        &[&ids[..], &[file.to_str().unwrap()][..]].concat(),
    );
    ok(&recv(relay.addr, &code, &out, &ids), "recv");
    assert_eq!(exit_code(&mut s, "send"), Some(0));
    assert!(std::fs::read(out.join("f.bin")).unwrap() == std::fs::read(&file).unwrap());
}
