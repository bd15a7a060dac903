//! How the tool ends: one exit status per kind of failure, and with
//! `--json` one line per event on standard output for scripts.

use std::io;
use std::path::Path;

use dtcp_client::code::PakeError;
use dtcp_client::transfer::TransferError;
use dtcp_client::{AllFailed, AttemptError, ClientError, Route};
use serde_json::json;

/// The tool's exit statuses (2 is clap's, for bad arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Anything else.
    Other = 1,
    /// The relay (or the sender's listener) answered `ERROR`.
    Refused = 3,
    /// Unreachable, cut, or timed out.
    Network = 4,
    /// Wrong code, burned code, or a TLS fingerprint that does not match.
    Auth = 5,
    /// Cannot read or write a local file, would overwrite, or an unsafe
    /// path in a received directory.
    File = 6,
}

impl Exit {
    fn name(self) -> &'static str {
        match self {
            Exit::Other => "other",
            Exit::Refused => "refused",
            Exit::Network => "network",
            Exit::Auth => "auth",
            Exit::File => "file",
        }
    }
}

/// A failure on this machine's files: exits [`Exit::File`].
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub(crate) struct LocalFile {
    what: String,
    #[source]
    source: Option<anyhow::Error>,
}

/// Marks an error as a local file's.
pub(crate) trait Local<T> {
    /// Tags the error with what was being done to which file.
    fn local(self, what: impl FnOnce() -> String) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> Local<T> for Result<T, E> {
    fn local(self, what: impl FnOnce() -> String) -> anyhow::Result<T> {
        self.map_err(|e| {
            LocalFile {
                what: what(),
                source: Some(e.into()),
            }
            .into()
        })
    }
}

/// A local file error with no underlying error.
pub(crate) fn local_error(what: String) -> anyhow::Error {
    LocalFile { what, source: None }.into()
}

/// The exit status for an error: the first cause in its chain that says.
pub(crate) fn classify(e: &anyhow::Error) -> Exit {
    for cause in e.chain() {
        if cause.is::<LocalFile>() {
            return Exit::File;
        }
        if let Some(p) = cause.downcast_ref::<PakeError>() {
            return match p {
                PakeError::WrongCode | PakeError::Burned => Exit::Auth,
                PakeError::Io(_) => Exit::Network,
                PakeError::Protocol(_) => Exit::Other,
                PakeError::Tls(c) => client(c),
            };
        }
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return client(c);
        }
        if let Some(all) = cause.downcast_ref::<AllFailed>() {
            let refused = all
                .attempts
                .iter()
                .any(|a| matches!(a.error, AttemptError::Refused { .. }));
            return if refused {
                Exit::Refused
            } else {
                Exit::Network
            };
        }
        if let Some(t) = cause.downcast_ref::<TransferError>() {
            return match t {
                TransferError::SourceChanged { .. } => Exit::File,
                _ => Exit::Network,
            };
        }
        if cause.is::<io::Error>() {
            return Exit::Network;
        }
    }
    Exit::Other
}

fn client(c: &ClientError) -> Exit {
    match c {
        ClientError::Refused { .. } => Exit::Refused,
        ClientError::Connect(_) | ClientError::Io(_) | ClientError::Closed => Exit::Network,
        ClientError::Tls(_) => Exit::Auth,
        ClientError::Protocol(_) => Exit::Other,
    }
}

/// What the tool reports, to people on standard error and with `--json` to
/// scripts on standard output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Report {
    json: bool,
}

impl Report {
    pub(crate) fn new(json: bool) -> Report {
        Report { json }
    }

    /// Whether standard output carries JSON lines (so not a file's bytes).
    pub(crate) fn json(&self) -> bool {
        self.json
    }

    /// The sender's code, and the command the receiver runs.
    pub(crate) fn code(&self, code: &str, command: &str) {
        eprintln!("code: {code}");
        eprintln!("on the other side run: {command}");
        eprintln!("and type the code when asked (it is good for one try)");
        if self.json {
            println!(
                "{}",
                json!({"event": "code", "code": code, "command": command})
            );
        }
    }

    /// The transfer is complete.
    pub(crate) fn done(&self, role: &str, bytes: u64, route: Route, path: Option<&Path>) {
        if self.json {
            let path = path.map(|p| p.display().to_string());
            println!(
                "{}",
                json!({"event": "done", "role": role, "bytes": bytes, "route": route.to_string(), "path": path})
            );
        }
    }

    /// Tells the failure and gives the exit status for it.
    pub(crate) fn failed(&self, e: &anyhow::Error) -> i32 {
        let exit = classify(e);
        eprintln!("dtcp: {e:#}");
        if self.json {
            println!(
                "{}",
                json!({"event": "error", "kind": exit.name(), "exit": exit as i32, "message": format!("{e:#}")})
            );
        }
        exit as i32
    }
}
