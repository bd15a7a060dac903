//! One child process of a test: started, waited for until it is ready,
//! stopped, started again, and killed when dropped.

use std::ffi::OsString;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often [`wait_until`] asks again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `f` every 20 ms until it holds, for at most `limit`; panics naming
/// `what` if it never does.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// A child process of the test, run again with the same program and
/// arguments on each [`Process::start`], and killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Process {
    program: String,
    args: Vec<OsString>,
    child: Option<Child>,
}

impl Process {
    /// A process of `program` with `args`, not started yet.
    pub fn new(program: &str, args: impl IntoIterator<Item = impl Into<OsString>>) -> Self {
        Process {
            program: program.to_owned(),
            args: args.into_iter().map(Into::into).collect(),
            child: None,
        }
    }

    /// Starts it (stdout discarded, stderr the test's), then polls `ready`
    /// until it holds, for at most `limit`. Panics if it cannot be started
    /// or never becomes ready.
    pub fn start(&mut self, limit: Duration, ready: impl FnMut() -> bool) {
        self.stop();
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); scripts/test installs what the tests need",
                    self.program
                )
            });
        self.child = Some(child);
        wait_until(limit, &format!("{} to start", self.program), ready);
    }

    /// Kills it (SIGKILL: its clients see their connections drop) and reaps
    /// it; nothing if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id while it runs (for signals such as SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}
