//! A private container engine for the deployment tests: a `dockerd` (Debian's
//! `docker.io`) of the test's own, in a network namespace of its own, with
//! its state, pid file and socket in a temporary directory and its image
//! data where overlay2 can keep it (see `containers/storage.rs`); stand-in
//! base images (no registry is reachable): a distroless-like runtime
//! extracted from Debian packages with `mmdebstrap`, cached outside the
//! clone (see [`cache_dir`]) under a key of what built it, and the other
//! services' programs copied from the machine onto it; the project's image built from `deploy/Dockerfile`'s final stage
//! with the suite's own binaries; the project's `docker-compose.yml` brought
//! up with an override that only swaps the images.
//!
//! The engine's network namespace keeps the machine's network as it was:
//! the bridges, addresses and firewall rules the engine makes live and die
//! with that namespace, and the test reaches the containers by running its
//! clients inside it (`nsenter --net`). Everything is torn down on drop,
//! also when the test panics; when the run is killed instead, the engine
//! gets SIGTERM as its parent dies and stops its containers.
//!
//! Here: the engine itself (start, commands, teardown, the sweep of a
//! killed run's leftovers); in `containers/images.rs`, the images it runs;
//! in `containers/storage.rs`, where its layers can live.

use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use dtcp_testkit::{Process, poll_until};

mod images;
mod storage;

pub use images::{Images, cache_dir};
use storage::storage;

/// The Debian release every stand-in image is made from (the relay's
/// binaries are built on it, and the shipped bases are bookworm too).
pub const SUITE: &str = "bookworm";
/// The compose project's name: its containers, network and volumes carry it.
pub const PROJECT: &str = "dtcpct";
/// How long the engine gets to answer on its socket after start.
const ENGINE_START: Duration = Duration::from_secs(60);
/// How long the engine gets to stop (it stops its containers first).
const ENGINE_STOP: Duration = Duration::from_secs(30);
/// The address pool the engine's networks are carved from (inside its own
/// network namespace only; the compose file names its own subnet).
const ADDRESS_POOL: &str = "base=172.30.0.0/16,size=24";

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Fails with what to install when a tool the container tests need is
/// missing (scripts/test installs them all).
pub fn require_tools() {
    let missing: Vec<&str> = [
        ("dockerd", "docker.io"),
        ("docker-compose", "docker-compose"),
        ("mmdebstrap", "mmdebstrap"),
        ("nsenter", "util-linux"),
        ("setpriv", "util-linux"),
        ("ip", "iproute2"),
        ("curl", "curl"),
        ("redis-server", "redis-server"),
        ("haproxy", "haproxy"),
        ("prometheus", "prometheus"),
        ("wget", "wget"),
        ("ldd", "libc-bin"),
    ]
    .into_iter()
    .filter(|(tool, _)| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .map(|(_, package)| package)
    .collect();
    assert!(
        missing.is_empty(),
        "the container tests need these Debian packages: {} (scripts/test installs them; as root: apt-get install {})",
        missing.join(" "),
        missing.join(" ")
    );
}

/// Runs `cmd`, panicking with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` and returns its output, whatever its status.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// A `dockerd` of the test's own, stopped (with everything it ran) on drop.
#[derive(Debug)]
pub struct Engine {
    dir: PathBuf,
    /// The engine's `--data-root`: below `dir`, or elsewhere when `dir`'s
    /// file system cannot hold overlay2's layers (see `containers/storage.rs`).
    data: PathBuf,
    netns: String,
    daemon: Option<Process>,
    compose: Vec<PathBuf>,
}

impl Engine {
    /// Starts the engine in a new network namespace, with every path under a
    /// new temporary directory.
    pub fn start() -> Engine {
        require_tools();
        sweep_leftovers();
        let id = std::process::id();
        let dir = std::env::temp_dir().join(format!("dtcp-containers-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("engine directory");
        let (data, driver) = storage(&dir, id);
        // Found again by a later run's sweep when this one is killed.
        fs::write(dir.join("data-root"), data.as_os_str().as_bytes()).expect("data root's name");
        let netns = format!("dtcp-containers-{id}");
        run(Command::new("ip").args(["netns", "add", &netns]));
        let mut engine = Engine {
            dir,
            data,
            netns,
            daemon: None,
            compose: Vec::new(),
        };
        run(Command::new("nsenter")
            .arg(format!("--net={}", engine.netns_path()))
            .args(["ip", "link", "set", "lo", "up"]));
        let log = engine.dir.join("dockerd.log");
        // `nsenter --net`, not `ip netns exec`: the latter remounts /sys,
        // which hides the cgroup mounts the engine needs.
        let mut daemon = Process::new(
            "nsenter",
            [
                format!("--net={}", engine.netns_path()),
                // SIGTERM to the engine when the thread that started it
                // ends, whatever ends it (a killed run never reaches its
                // drop): the engine stops its containers and exits instead
                // of outliving the run. setpriv sets it and exec()s, so it
                // holds for dockerd itself. A killed run's namespace,
                // mounts and directory are swept by the next run.
                "setpriv".into(),
                "--pdeathsig".into(),
                "TERM".into(),
                "dockerd".into(),
                format!("--data-root={}", engine.data.display()),
                format!("--exec-root={}", engine.dir.join("exec").display()),
                format!("--pidfile={}", engine.dir.join("dockerd.pid").display()),
                format!("--host=unix://{}", engine.socket().display()),
                format!("--storage-driver={driver}"),
                format!("--default-address-pool={ADDRESS_POOL}"),
            ],
        )
        .name("dockerd")
        .stdout(dtcp_testkit::Output::File(log.clone()))
        .stderr(dtcp_testkit::Output::File(log.clone()))
        .log_file(&log);
        daemon.spawn();
        // The engine's own from here: its teardown stops it gracefully
        // whatever happens next.
        let mut version = engine.docker();
        version.arg("version");
        let daemon = engine.daemon.insert(daemon);
        daemon.wait_ready(ENGINE_START, || output(&mut version).status.success());
        engine
    }

    /// A new directory `name` of the test's own, removed with the engine
    /// (also when the test panics).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }

    /// The engine's network namespace, for `nsenter --net=`.
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }

    /// The engine's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The engine's own log (for failure messages).
    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// A `docker` command talking to this engine (Debian's client, the
    /// engine's own version, when it is there).
    pub fn docker(&self) -> Command {
        let client = if Path::new("/usr/bin/docker").exists() {
            "/usr/bin/docker"
        } else {
            "docker"
        };
        let mut cmd = Command::new(client);
        cmd.env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
            .env("DOCKER_BUILDKIT", "1")
            .env("DOCKER_CONFIG", self.dir.join("client"));
        cmd
    }

    /// A command run inside the engine's network namespace (where the
    /// containers' addresses are reachable).
    pub fn inside(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns_path())).arg(program);
        cmd
    }

    /// `program` with `args` as a process of the test's own inside the
    /// engine's network namespace (`nsenter` runs it in its place), not
    /// started yet.
    pub fn process_inside(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        args: impl IntoIterator<Item = impl AsRef<std::ffi::OsStr>>,
    ) -> Process {
        let mut all = vec![
            std::ffi::OsString::from(format!("--net={}", self.netns_path())),
            program.as_ref().to_owned(),
        ];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        let name = Path::new(program.as_ref())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Process::new("nsenter", all).name(&name)
    }

    /// A `docker-compose` command for the project's compose file and the
    /// override at `over` (v1, Debian's; it talks to this engine).
    pub fn compose(&self, over: &Path) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(workspace())
            .env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
            // compose refuses to start without one, whether Grafana runs
            // or not.
            .env("GRAFANA_ADMIN_PASSWORD", "not-used-grafana-is-left-out")
            .args(["--no-ansi", "-p", PROJECT, "-f", "docker-compose.yml", "-f"])
            .arg(over);
        cmd
    }

    /// Writes the override that swaps the compose file's images for `images`
    /// (and nothing else), and remembers it for the teardown.
    pub fn override_file(&mut self, images: &Images) -> PathBuf {
        let mut text =
            String::from("# Only the images differ from docker-compose.yml.\nservices:\n");
        for service in ["redis", "haproxy", "prometheus"] {
            text += &format!("  {service}:\n    image: {}\n", images.get(service));
        }
        for relay in ["relay-1", "relay-2", "relay-3"] {
            text += &format!("  {relay}:\n    image: {}\n", images.get("relay"));
        }
        let path = self.dir.join("override.yml");
        fs::write(&path, text).expect("override");
        self.compose.push(path.clone());
        path
    }

    /// The container of compose service `service`.
    pub fn container(service: &str) -> String {
        format!("{PROJECT}_{service}_1")
    }

    /// A container's address on the compose network.
    pub fn address(&self, container: &str) -> String {
        run(self.docker().args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            container,
        ]))
        .trim()
        .to_string()
    }

    /// A container's logs (stdout and stderr).
    pub fn logs(&self, container: &str) -> String {
        let out = output(self.docker().args(["logs", container]));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `running`, `exited`, ... and `healthy`/`unhealthy`/`starting`/`none`.
    pub fn state(&self, container: &str) -> (String, String) {
        let out = output(self.docker().args([
            "inspect",
            "-f",
            "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
            container,
        ]));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        (
            words.next().unwrap_or("absent").to_string(),
            words.next().unwrap_or("none").to_string(),
        )
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for over in &self.compose {
            let _ = self
                .compose(over)
                .args(["down", "-v", "--remove-orphans", "-t", "5"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut daemon) = self.daemon.take() {
            // SIGTERM to dockerd itself (nsenter exec()s it, so the child's
            // pid is dockerd's): it stops its containers and its containerd.
            daemon.stop_with(libc::SIGTERM, ENGINE_STOP);
        }
        // Whatever the engine left mounted below its directories.
        if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
            let dirs = [
                self.dir.display().to_string(),
                self.data.display().to_string(),
            ];
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|p| dirs.iter().any(|d| p.starts_with(d.as_str())))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = fs::remove_dir_all(&self.data);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Stops what a run killed without its teardown (an interrupted suite) left:
/// its engine, mounts, network namespace and directory, found by the
/// namespace's name, which carries the dead run's process id.
fn sweep_leftovers() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("dtcp-containers-") else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue; // a run still going
        }
        let dir = std::env::temp_dir().join(&name);
        if let Some(daemon) = fs::read_to_string(dir.join("dockerd.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<libc::pid_t>().ok())
        {
            // SAFETY: kill(2) on the pid a dead run's engine wrote.
            unsafe { libc::kill(daemon, libc::SIGTERM) };
            // Gone, or the teardown goes on regardless.
            poll_until(ENGINE_STOP, || {
                !Path::new(&format!("/proc/{daemon}")).exists()
            });
        }
        // Its teardown: mounts, namespace, directories.
        let data = fs::read(dir.join("data-root"))
            .map(|b| PathBuf::from(std::ffi::OsString::from_vec(b)))
            .unwrap_or_else(|_| dir.join("data"));
        drop(Engine {
            data,
            dir,
            netns: name,
            daemon: None,
            compose: Vec::new(),
        });
    }
}
