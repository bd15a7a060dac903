//! One child process of a test: configured once, started (and started
//! again) with the same program, arguments and environment, waited for
//! until it is ready, signalled, waited for when it exits, and killed and
//! reaped when dropped, so that it never outlives its test.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::output::{Lines, Output};

/// How often [`wait_until`] and the waits of [`Process`] ask again.
const POLL: Duration = Duration::from_millis(20);
/// Lines of the process's output a failure message shows.
const TAIL: usize = 40;
/// How long the lines a process printed may take to be read once it has
/// exited (longer only if something it started still holds its output).
const READ_REST: Duration = Duration::from_secs(2);

/// Polls `f` every 20 ms until it holds, for at most `limit`; panics naming
/// `what` if it never does.
pub fn wait_until(limit: Duration, what: &str, f: impl FnMut() -> bool) {
    assert!(poll_until(limit, f), "timed out waiting for {what}");
}

/// Polls `f` every 20 ms until it holds, for at most `limit`; whether it
/// did.
pub fn poll_until(limit: Duration, f: impl FnMut() -> bool) -> bool {
    poll_every(POLL, limit, f)
}

/// Polls `f` every `interval` until it holds, for at most `limit`; whether
/// it did. For a check too costly to run every 20 ms.
pub fn poll_every(interval: Duration, limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

/// A child process of the test, run again with the same program, arguments
/// and settings on each [`Process::start`], and killed (SIGKILL) and reaped
/// when dropped.
///
/// By default its stdin is empty, its stdout discarded and its stderr the
/// test's; the builder methods change that and the rest of its settings
/// before the first start.
#[derive(Debug)]
#[must_use]
pub struct Process {
    command: Command,
    /// What messages and echoed lines call it.
    name: String,
    stdin: Input,
    stdout: Output,
    stderr: Output,
    /// Signals go to its whole process group, which it leads.
    group: bool,
    /// Where the program writes its own log, shown when it fails to start.
    log_file: Option<PathBuf>,
    lines: Lines,
    /// The threads reading the current run's [`Output::Lines`] streams.
    readers: Vec<JoinHandle<()>>,
    child: Option<Child>,
    /// The exit status of a run that exited while its readiness was being
    /// waited for and turned out ready: reported by the next
    /// [`Process::try_exit`] or [`Process::wait_exit`].
    unreported: Option<ExitStatus>,
}

/// Where a child's stdin comes from.
#[derive(Debug, Clone)]
enum Input {
    Null,
    Piped,
    File(PathBuf),
}

impl Process {
    /// A process of `program` with `args`, not started yet, named after the
    /// program's file name.
    pub fn new(
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    ) -> Self {
        let program = program.as_ref();
        let mut command = Command::new(program);
        command.args(args);
        Process {
            command,
            name: Path::new(program)
                .file_name()
                .unwrap_or(program)
                .to_string_lossy()
                .into_owned(),
            stdin: Input::Null,
            stdout: Output::Null,
            stderr: Output::Inherit,
            group: false,
            log_file: None,
            lines: Lines::default(),
            readers: Vec::new(),
            child: None,
            unreported: None,
        }
    }

    /// What messages and echoed lines call it, instead of the program's
    /// file name.
    pub fn name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// An environment variable of its own.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// Its working directory.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.command.current_dir(dir);
        self
    }

    /// Runs it as this user and group (the test runs as root).
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        use std::os::unix::process::CommandExt;
        self.command.uid(uid).gid(gid);
        self
    }

    /// Starts it in a process group of its own, and signals (the kill on
    /// stop and drop included) go to the whole group: for a program that
    /// starts others, such as a script that runs a server.
    pub fn own_group(mut self) -> Self {
        use std::os::unix::process::CommandExt;
        self.command.process_group(0);
        self.group = true;
        self
    }

    /// Starts it with this open-file limit (soft and hard), so that a test
    /// can make it run out of descriptors.
    pub fn open_files(mut self, limit: u64) -> Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe and touches only the
        // child's own limits, between fork and exec.
        unsafe {
            self.command.pre_exec(move || {
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        self
    }

    /// Gives it a stdin pipe ([`Process::take_stdin`]) instead of an empty
    /// stdin.
    pub fn stdin_piped(mut self) -> Self {
        self.stdin = Input::Piped;
        self
    }

    /// Gives it the file at `path` as its stdin (opened again at each
    /// start).
    pub fn stdin_file(mut self, path: impl AsRef<Path>) -> Self {
        self.stdin = Input::File(path.as_ref().to_owned());
        self
    }

    /// Where its stdout goes (discarded unless set).
    pub fn stdout(mut self, output: Output) -> Self {
        self.stdout = output;
        self
    }

    /// Where its stderr goes (the test's unless set).
    pub fn stderr(mut self, output: Output) -> Self {
        self.stderr = output;
        self
    }

    /// The file the program writes its own log to: a failure to start
    /// shows its end.
    pub fn log_file(mut self, path: impl AsRef<Path>) -> Self {
        self.log_file = Some(path.as_ref().to_owned());
        self
    }

    /// Starts it (killing the previous run first, if it still runs) without
    /// waiting for anything. Panics if it cannot be started.
    pub fn spawn(&mut self) {
        self.stop();
        self.unreported = None;
        let run = self.lines.next_run();
        let stdin = match &self.stdin {
            Input::Null => Stdio::null(),
            Input::Piped => Stdio::piped(),
            Input::File(path) => File::open(path)
                .map(Stdio::from)
                .unwrap_or_else(|e| panic!("cannot open {} for input: {e}", path.display())),
        };
        self.command
            .stdin(stdin)
            .stdout(self.stdout.stdio())
            .stderr(self.stderr.stdio());
        let mut child = self.command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}); scripts/test installs what the tests need",
                self.name
            )
        });
        let prefix = format!("{} {}", self.name, child.id());
        if self.stdout == Output::Lines {
            let stdout = child.stdout.take().expect("piped stdout");
            self.readers
                .push(self.lines.read(stdout, run, prefix.clone()));
        }
        if self.stderr == Output::Lines {
            let stderr = child.stderr.take().expect("piped stderr");
            self.readers.push(self.lines.read(stderr, run, prefix));
        }
        self.child = Some(child);
    }

    /// Starts it, then polls `ready` until it holds, for at most `limit`.
    /// Panics, with the end of its output, if it cannot be started, exits
    /// first, or never becomes ready. Starting it again is a restart with
    /// the same program, arguments and settings.
    pub fn start(&mut self, limit: Duration, ready: impl FnMut() -> bool) {
        self.spawn();
        self.wait_ready(limit, ready);
    }

    /// Polls `ready` until it holds, for at most `limit`, as
    /// [`Process::start`] does after [`Process::spawn`]: panics, with the end
    /// of its output, if it exits first or `ready` never holds.
    pub fn wait_ready(&mut self, limit: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !ready() {
            if let Some(status) = self.try_exit() {
                // Its last lines are read once it has exited: they may make
                // it ready after all.
                assert!(
                    ready(),
                    "{} exited ({status}) before it was ready{}",
                    self.name,
                    self.output_tail()
                );
                self.unreported = Some(status);
                return;
            }
            assert!(
                self.child.is_some(),
                "{} is not running: nothing will become ready",
                self.name
            );
            assert!(
                Instant::now() < deadline,
                "{} was not ready within {limit:?}{}",
                self.name,
                self.output_tail()
            );
            // Woken early by a line of output, which a check may wait for.
            self.lines.wait(POLL);
        }
    }

    /// The end of what it printed (its kept lines) and of its log file.
    fn output_tail(&self) -> String {
        let mut tail = String::new();
        let lines = self.lines.tail(TAIL);
        if !lines.is_empty() {
            tail += &format!("\n--- its last lines:\n{lines}");
        }
        if let Some(path) = &self.log_file {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let from = log.lines().count().saturating_sub(TAIL);
            let end: Vec<&str> = log.lines().skip(from).collect();
            tail += &format!("\n--- the end of {}:\n{}", path.display(), end.join("\n"));
        }
        tail
    }

    /// Kills it (SIGKILL: its clients see their connections drop) and reaps
    /// it; nothing if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.group {
                kill(-pid_of(&child), libc::SIGKILL);
            } else {
                let _ = child.kill();
            }
            let _ = child.wait();
            self.read_rest();
        }
    }

    /// Lets the readers of an ended run read what is left in its pipes, for
    /// at most [`READ_REST`].
    fn read_rest(&mut self) {
        let readers = std::mem::take(&mut self.readers);
        poll_until(READ_REST, || readers.iter().all(JoinHandle::is_finished));
    }

    /// Sends it `signal` (to its whole group with [`Process::own_group`]).
    /// Panics if it is not running.
    pub fn signal(&self, signal: i32) {
        let child = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("signal {signal} to {}, which is not running", self.name));
        let pid = pid_of(child);
        let target = if self.group { -pid } else { pid };
        assert!(
            kill(target, signal),
            "kill({target}, {signal}) of {}",
            self.name
        );
    }

    /// Its exit status if it has exited (it is then reaped, no longer
    /// running, and every line it printed is in [`Process::lines`]); `None`
    /// while it runs, or if it was not started.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.unreported.take() {
            return Some(status);
        }
        let child = self.child.as_mut()?;
        let status = child.try_wait().ok().flatten()?;
        if self.group {
            // What the group's leader started ends with it.
            kill(-pid_of(child), libc::SIGKILL);
        }
        // Reaped by try_wait.
        self.child = None;
        self.read_rest();
        Some(status)
    }

    /// Waits for it to exit, at most `limit`: its status, or `None` if it
    /// still runs then (or was not started).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if self.child.is_none() || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends it `signal`, waits for it to exit at most `grace`, and kills it
    /// (SIGKILL) if it has not by then: a stop that lets it clean up. Its
    /// exit status if it exited within `grace`.
    pub fn stop_with(&mut self, signal: i32, grace: Duration) -> Option<ExitStatus> {
        self.child.as_ref()?;
        self.signal(signal);
        let status = self.wait_exit(grace);
        self.stop();
        status
    }

    /// Whether it was started and has neither been stopped nor seen to exit
    /// since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id while it runs (for signals such as SIGSTOP, and
    /// `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The lines of the current run's [`Output::Lines`] streams; the handle
    /// follows later runs too.
    pub fn lines(&self) -> Lines {
        self.lines.clone()
    }

    /// Its stdin pipe ([`Process::stdin_piped`]), once per run.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.as_mut()?.stdin.take()
    }

    /// Its stdout pipe ([`Output::Piped`]), once per run.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child's id as kill(2) takes it.
fn pid_of(child: &Child) -> libc::pid_t {
    libc::pid_t::try_from(child.id()).expect("a pid fits pid_t")
}

/// kill(2); whether the signal was sent.
fn kill(pid: libc::pid_t, signal: i32) -> bool {
    // SAFETY: kill(2) on a child of this test or its group; no memory
    // effects.
    unsafe { libc::kill(pid, signal) == 0 }
}
