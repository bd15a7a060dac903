//! Where a child's stdout and stderr go ([`Output`]), and the lines kept of
//! a stream read a line at a time ([`Lines`]).

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where one of a child's output streams goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Discarded.
    Null,
    /// The test's own stream (the harness shows it for a failing test).
    Inherit,
    /// A pipe the test reads itself ([`crate::Process::take_stdout`]).
    Piped,
    /// Read a line at a time: kept in [`crate::Process::lines`], and each
    /// line echoed to the test's stderr as `<name> <pid>: <line>`.
    Lines,
    /// Appended to this file (created if need be).
    File(PathBuf),
}

impl Output {
    /// The `Stdio` a spawn takes for this stream.
    pub(crate) fn stdio(&self) -> Stdio {
        match self {
            Output::Null => Stdio::null(),
            Output::Inherit => Stdio::inherit(),
            Output::Piped | Output::Lines => Stdio::piped(),
            Output::File(path) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Stdio::from)
                .unwrap_or_else(|e| panic!("cannot open {} for output: {e}", path.display())),
        }
    }
}

/// The lines a process printed on its [`Output::Lines`] streams during its
/// current run (each start begins an empty run), in the order they came.
/// A clone shares them, so a readiness check can read them while the
/// process starts.
#[derive(Debug, Clone, Default)]
pub struct Lines {
    shared: Arc<(Mutex<Run>, Condvar)>,
}

/// One run's lines.
#[derive(Debug, Default)]
struct Run {
    /// Which run of the process; a reader of an earlier one adds nothing.
    number: u64,
    lines: Vec<String>,
}

impl Lines {
    fn run(&self) -> MutexGuard<'_, Run> {
        // A reader thread never panics while it holds the lock.
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.run().lines.clone()
    }

    /// The first line for which `f` answers something.
    pub fn find_map<T>(&self, mut f: impl FnMut(&str) -> Option<T>) -> Option<T> {
        self.run().lines.iter().find_map(|l| f(l))
    }

    /// Whether a line contains `text`.
    pub fn contains(&self, text: &str) -> bool {
        self.run().lines.iter().any(|l| l.contains(text))
    }

    /// The last `n` lines, one a line, for a failure message.
    pub fn tail(&self, n: usize) -> String {
        let run = self.run();
        let from = run.lines.len().saturating_sub(n);
        run.lines[from..].join("\n")
    }

    /// Starts a new, empty run; returns its number.
    pub(crate) fn next_run(&self) -> u64 {
        let mut run = self.run();
        run.number += 1;
        run.lines.clear();
        run.number
    }

    /// Waits until a line arrives, at most `limit`.
    pub(crate) fn wait(&self, limit: Duration) {
        let run = self.run();
        let _ = self.shared.1.wait_timeout(run, limit);
    }

    /// Reads `stream` a line at a time on a thread of its own, until it
    /// ends: each line echoed as `<prefix>: <line>` and kept for run
    /// number `run`.
    pub(crate) fn read(
        &self,
        stream: impl Read + Send + 'static,
        run: u64,
        prefix: String,
    ) -> JoinHandle<()> {
        let lines = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                buf.clear();
                eprintln!("{prefix}: {line}");
                let mut current = lines.run();
                if current.number == run {
                    current.lines.push(line);
                    lines.shared.1.notify_all();
                }
            }
        })
    }
}
