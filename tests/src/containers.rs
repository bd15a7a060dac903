//! A private container engine for the deployment tests: a `dockerd` (Debian's
//! `docker.io`) of the test's own, in a network namespace of its own, with
//! its state, pid file and socket in a temporary directory and its image
//! data where overlay2 can keep it (see [`storage`]); stand-in
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
//! also when the test panics.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use dtcp_testkit::{Process, poll_until};
use sha2::{Digest, Sha256};

use crate::relay::bin;

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

/// The packages of the distroless-like runtime base: glibc, libgcc, time
/// zones, CA certificates (extracted, never installed: no shell, no package
/// manager); its user 65532 is added by [`Engine::images`].
const RUNTIME_PACKAGES: &str = "libc6,libgcc-s1,netbase,tzdata,ca-certificates";

/// The programs the compose file's other services run (Redis, HAProxy,
/// Prometheus) and their health checks need (`sh`, `cat`, `grep`,
/// `redis-cli`, `wget`): the machine's own, the ones the suite already
/// installs from Debian's packages for its other tests, copied with the
/// shared libraries `ldd` names onto the runtime base. No download, and no
/// cache needed: the copy takes seconds.
const SERVICE_PROGRAMS: &[&str] = &[
    "redis-server",
    "redis-cli",
    "haproxy",
    "prometheus",
    "wget",
    "sh",
    "cat",
    "grep",
];
/// The stand-ins' users: distroless's (root, nonroot 65532, nobody) and
/// HAProxy's, which its image runs as (Prometheus's runs as nobody, Redis's
/// starts as root).
const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
    haproxy:x:99:99:haproxy:/var/lib/haproxy:/sbin/nologin\n\
    nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n\
    nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n";
/// The groups of those users.
const GROUP: &str = "root:x:0:\nhaproxy:x:99:\nnonroot:x:65532:\nnogroup:x:65534:\n";

/// Each stand-in for an image docker-compose.yml names: the compose service,
/// and the Dockerfile lines that give the services image that image's user,
/// command and stop signal.
const STANDINS: &[(&str, &str)] = &[
    ("redis", "CMD [\"redis-server\"]\n"),
    (
        "haproxy",
        "USER haproxy\nSTOPSIGNAL SIGUSR1\nCMD [\"haproxy\", \"-W\", \"-db\", \"-f\", \"/usr/local/etc/haproxy/haproxy.cfg\"]\n",
    ),
    (
        "prometheus",
        "USER nobody\nENTRYPOINT [\"/usr/bin/prometheus\"]\nCMD [\"--config.file=/etc/prometheus/prometheus.yml\", \"--storage.tsdb.path=/prometheus\"]\n",
    ),
];

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
    /// file system cannot hold overlay2's layers (see [`storage`]).
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

    /// Imports a root file system tarball as image `tag`, with Dockerfile
    /// `changes` (one per line).
    fn import(&self, tarball: &Path, tag: &str, changes: &[&str]) {
        let mut cmd = self.docker();
        cmd.arg("import");
        for c in changes {
            cmd.args(["--change", c]);
        }
        run(cmd.arg(tarball).arg(tag));
    }

    /// Builds image `tag` from a Dockerfile given as text, with no context.
    fn build_text(&self, tag: &str, dockerfile: &str) {
        let mut child = self
            .docker()
            .args(["build", "-q", "-t", tag, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker build");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(dockerfile.as_bytes())
            .expect("Dockerfile");
        let out = child.wait_with_output().expect("docker build");
        assert!(
            out.status.success(),
            "building {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Builds image `tag` from the directory `context`, which holds its
    /// Dockerfile.
    fn build_dir(&self, tag: &str, context: &Path) {
        run(self.docker().args(["build", "-q", "-t", tag]).arg(context));
    }

    /// The stand-in images (runtime base, Redis, HAProxy, Prometheus) and the
    /// project's image built from deploy/Dockerfile with the suite's
    /// binaries. Returns the image names by compose service (`relay` for the
    /// relays) and `runtime`.
    pub fn images(&self) -> Images {
        let cache = cache_dir();
        fs::create_dir_all(&cache).expect("image cache");
        let runtime_tar = rootfs(&cache, "runtime", "extract", RUNTIME_PACKAGES);
        let key = key_of(&runtime_tar);
        let base = format!("dtcp-standin/runtime-base:{key}");
        self.import(&runtime_tar, &base, &[]);
        // What makes the extracted packages an image like distroless's
        // `cc:nonroot`: its users, a home for 65532, the CA bundle (the
        // machine's, as the extracted package leaves it ungenerated).
        let runtime = format!("dtcp-standin/runtime:{key}");
        let context = self.dir.join("runtime");
        write_tree(
            &context,
            &[
                ("etc/passwd", PASSWD.as_bytes()),
                ("etc/group", GROUP.as_bytes()),
                ("home/.keep", b""),
                (
                    "etc/ssl/certs/ca-certificates.crt",
                    &fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default(),
                ),
                (
                    "Dockerfile",
                    format!(
                        "FROM {base}\nCOPY etc/ /etc/\nCOPY --chown=65532:65532 home/ /home/nonroot/\nUSER 65532:65532\n"
                    )
                    .as_bytes(),
                ),
            ],
        );
        self.build_dir(&runtime, &context);
        // The services: the machine's programs and their libraries on that
        // base, Prometheus's data directory its user's.
        let services = "dtcp-standin/services:suite".to_string();
        let context = self.dir.join("services");
        stage_programs(&context.join("root"), SERVICE_PROGRAMS);
        write_tree(
            &context,
            &[
                ("data/.keep", b""),
                (
                    "Dockerfile",
                    format!(
                        "FROM {runtime}\nUSER 0:0\nCOPY root/ /\nCOPY --chown=65534:65534 data/ /prometheus/\n\
                         ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
                    )
                    .as_bytes(),
                ),
            ],
        );
        self.build_dir(&services, &context);
        let mut by_service = Vec::new();
        for (service, lines) in STANDINS {
            let tag = format!("dtcp-standin/{service}:suite");
            self.build_text(&tag, &format!("FROM {services}\n{lines}"));
            by_service.push((service.to_string(), tag));
        }
        // The suite's binaries, at the paths the Dockerfile's build stage
        // leaves them, as an image of their own (the build context leaves
        // target/ out).
        let staging = self.dir.join("binaries");
        fs::create_dir_all(staging.join("usr/local/bin")).expect("staging");
        for b in ["dtcp-relay", "dtcp"] {
            fs::copy(bin(b), staging.join("usr/local/bin").join(b)).expect("binary");
        }
        let tar = self.dir.join("binaries.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&staging)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        self.import(&tar, "dtcp-suite/binaries:latest", &[]);
        let relay = "dtcp-relay:suite".to_string();
        run(self
            .docker()
            .current_dir(workspace())
            .args(["build", "-q", "-f", "deploy/Dockerfile", "-t", &relay])
            .arg(format!("--build-arg=RUNTIME_IMAGE={runtime}"))
            .arg("--build-arg=BINARIES=dtcp-suite/binaries:latest")
            .arg("."));
        by_service.push(("relay".into(), relay));
        by_service.push(("runtime".into(), runtime));
        Images(by_service)
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

/// The magic number `statfs(2)` gives for overlayfs.
const OVERLAYFS_MAGIC: u64 = 0x794c_7630;

/// Whether `path` lies on overlayfs, which the kernel refuses as the upper
/// directory of another overlay mount: overlay2 cannot keep its layers
/// there (as in a CI job's container, whose /tmp is its own root's
/// overlayfs).
fn on_overlayfs(path: &Path) -> bool {
    let Ok(name) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a plain C struct of integers, for which all zeroes is valid.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs(2) fills the struct it is given, from a NUL-terminated
    // path that outlives the call.
    let found = unsafe { libc::statfs(name.as_ptr(), &mut stat) } == 0;
    // f_type is signed on some targets; the magic is compared as its bits.
    found && stat.f_type as u64 == OVERLAYFS_MAGIC
}

/// The engine's data root and storage driver: overlay2 below the engine's
/// directory (in the temporary directory) unless that is overlayfs, then
/// below the workspace's `target/` (left out of the image's build context)
/// unless that is too, and otherwise vfs (every layer copied whole: slower
/// and bigger, but it works on any file system), saying why.
fn storage(dir: &Path, id: u32) -> (PathBuf, &'static str) {
    let candidates = [
        dir.join("data"),
        workspace()
            .join("target")
            .join(format!("dtcp-containers-{id}")),
    ];
    for data in &candidates {
        fs::create_dir_all(data).expect("data root");
        if !on_overlayfs(data) {
            return (data.clone(), "overlay2");
        }
        let _ = fs::remove_dir(data);
    }
    eprintln!(
        "containers: {} and {} are on overlayfs, which cannot hold overlay2's layers \
         (the kernel refuses overlayfs as an overlay's upper directory); the engine \
         uses the vfs driver instead (slower; set TMPDIR to a directory on another \
         file system to avoid it)",
        candidates[0].display(),
        candidates[1].display()
    );
    fs::create_dir_all(&candidates[0]).expect("data root");
    (candidates[0].clone(), "vfs")
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

/// Image names by compose service (`relay`, `redis`, `haproxy`,
/// `prometheus`) and `runtime`.
#[derive(Debug)]
pub struct Images(Vec<(String, String)>);

impl Images {
    /// The image for `service`.
    pub fn get(&self, service: &str) -> &str {
        &self
            .0
            .iter()
            .find(|(s, _)| s == service)
            .unwrap_or_else(|| panic!("no image for {service}"))
            .1
    }
}

/// Where the stand-in bases are kept between runs: outside the clone, so
/// that every clone on the machine shares them
/// (`${XDG_CACHE_HOME:-$HOME/.cache}/dtcp-relay/containers`).
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| workspace().join(".cache"));
    base.join("dtcp-relay/containers")
}

/// Writes `files` (path relative to `dir`, content) under `dir`.
fn write_tree(dir: &Path, files: &[(&str, &[u8])]) {
    for (path, content) in files {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().expect("parent")).expect("directory");
        fs::write(&path, content).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Copies each of `programs` (found on the machine's PATH) to `root/usr/bin`
/// (`sh` to `root/bin` too, for `CMD-SHELL`), with every shared library
/// `ldd` names for it at the path `ldd` names, the files themselves rather
/// than their links.
fn stage_programs(root: &Path, programs: &[&str]) {
    let mut libraries = std::collections::BTreeSet::new();
    for program in programs {
        let found = run(Command::new("sh").args(["-c", &format!("command -v {program}")]));
        let found = PathBuf::from(found.trim());
        let real = fs::canonicalize(&found).unwrap_or_else(|e| panic!("{program}: {e}"));
        let mut targets = vec![root.join("usr/bin").join(program)];
        if *program == "sh" {
            targets.push(root.join("bin/sh"));
        }
        for target in targets {
            fs::create_dir_all(target.parent().expect("parent")).expect("directory");
            fs::copy(&real, &target).unwrap_or_else(|e| panic!("{}: {e}", real.display()));
        }
        // Go's static binaries make ldd say so and fail: nothing to copy.
        let listed = output(Command::new("ldd").arg(&real));
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            // "libx.so => /lib/.../libx.so (0x...)" or "/lib64/ld-linux... (0x...)"
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                libraries.insert(PathBuf::from(path));
            }
        }
    }
    for library in libraries {
        let real =
            fs::canonicalize(&library).unwrap_or_else(|e| panic!("{}: {e}", library.display()));
        // The runtime base has the loader at /lib/x86_64-linux-gnu, and
        // /lib64's name as a link to it: replace the file, keep the link.
        let at = if library.starts_with("/lib64") {
            Path::new("/lib/x86_64-linux-gnu").join(library.file_name().expect("name"))
        } else {
            library.clone()
        };
        let target = root.join(at.strip_prefix("/").expect("absolute"));
        fs::create_dir_all(target.parent().expect("parent")).expect("directory");
        fs::copy(&real, &target).unwrap_or_else(|e| panic!("{}: {e}", real.display()));
    }
}

/// A root file system tarball made by mmdebstrap, cached in `cache` under a
/// name keyed by everything that made it (suite, variant, packages); made
/// when absent.
fn rootfs(cache: &Path, name: &str, variant: &str, packages: &str) -> PathBuf {
    let recipe = format!("{SUITE}\n{variant}\n{packages}");
    let key = hex(&Sha256::digest(recipe.as_bytes())[..8]);
    let path = cache.join(format!("{name}-{SUITE}-{key}.tar"));
    if path.exists() {
        return path;
    }
    // Older tarballs of the same name were made by another recipe.
    if let Ok(entries) = fs::read_dir(cache) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}-"))
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    // A name of this process's own: two clones' runs may build at once; the
    // rename makes one of them the cache, whole.
    let partial = cache.join(format!("{name}-{SUITE}-{key}.tar.{}", std::process::id()));
    run(Command::new("mmdebstrap")
        .args(["--quiet", "--mode=root", "--format=tar"])
        .arg(format!("--variant={variant}"))
        .arg(format!("--include={packages}"))
        .arg(SUITE)
        .arg(&partial));
    fs::rename(&partial, &path).expect("caching the root file system");
    path
}

/// The key part of a cached tarball's name (its tag in the engine).
fn key_of(tarball: &Path) -> String {
    let name = tarball.file_stem().expect("name").to_string_lossy();
    name.rsplit('-').next().expect("key").to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
