//! The images the container test runs: stand-ins for the bases and the
//! services docker-compose.yml names (no registry is reachable), and the
//! project's image built from deploy/Dockerfile's final stage with the
//! suite's own binaries.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::{Engine, SUITE, output, run, workspace};
use crate::relay::bin;

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

impl Engine {
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
