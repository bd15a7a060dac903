//! The arguments `dtcp send` and `dtcp recv` share, and what they mean: the
//! session (relay; a key and JIDs in explicit mode, a code otherwise),
//! `--listen` values and the addresses they stand for, durations in
//! seconds, and the receiver's candidate list.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use dtcp_client::code::Code;
use dtcp_client::direct::interface_addrs;
use dtcp_client::{Candidate, Candidates};
use dtcp_wire::Triple;

use super::secret;

#[derive(Debug, Args)]
pub(crate) struct Session {
    /// The relay, `HOST:PORT` (optional for `send --listen` and `recv --candidates`).
    #[arg(long, env = "DTCP_RELAY", value_name = "HOST:PORT")]
    pub(crate) relay: Option<String>,
    /// The key both sides agreed on (explicit mode), for scripts only: while
    /// dtcp runs, every local user can read a value given here (ps,
    /// /proc/PID/cmdline) and claim the session first. Prefer --key-file,
    /// --key-env, or the prompt.
    #[arg(long, env = "DTCP_KEY", hide_env_values = true, value_name = "KEY")]
    key: Option<String>,
    /// Read the key from this file's first line (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Read the key from this environment variable.
    #[arg(long, value_name = "VAR")]
    key_env: Option<String>,
    /// The Initiator's (sender's) JID (explicit mode).
    #[arg(long = "from", value_name = "INITIATOR_JID")]
    initiator: Option<String>,
    /// The Target's (receiver's) JID (explicit mode).
    #[arg(long = "to", value_name = "TARGET_JID")]
    target: Option<String>,
    /// Explicit mode with a code as well, for a relay that takes only
    /// signed keys: the key finds the session, the code secures it as in
    /// code mode. `send` makes the code; `recv` asks for it.
    #[arg(long = "code")]
    pub(crate) with_code: bool,
}

impl Session {
    /// Explicit mode: a key or a JID was given. Otherwise code mode (and
    /// `--code` changes nothing).
    pub(crate) fn explicit(&self) -> bool {
        self.key.is_some()
            || self.key_file.is_some()
            || self.key_env.is_some()
            || self.initiator.is_some()
            || self.target.is_some()
    }

    /// The explicit mode's key and JIDs; the key from --key-file,
    /// --key-env, --key (or `DTCP_KEY`), or else a prompt on a terminal.
    pub(crate) fn triple(&self) -> anyhow::Result<Triple> {
        let (Some(initiator), Some(target)) = (&self.initiator, &self.target) else {
            bail!("with a key, give both --from and --to (or neither, and no key, for code mode)");
        };
        let key = if let Some(path) = &self.key_file {
            secret::from_file(path, "--key-file")?
        } else if let Some(var) = &self.key_env {
            secret::from_env(var, "--key-env")?
        } else if let Some(key) = &self.key {
            key.clone()
        } else {
            secret::prompt("key")?
        };
        Triple::new(key, initiator, target).context("invalid key or JID")
    }
}

/// Where the receiver takes the code from.
#[derive(Debug, Args)]
pub(crate) struct CodeSource {
    /// The code `dtcp send` printed (code mode). Better typed at the prompt
    /// (leave it out) or given with --code-file or --code-env: an argument
    /// is readable by every local user while dtcp runs.
    #[arg(value_name = "CODE")]
    code: Option<String>,
    /// Read the code from this file's first line (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    code_file: Option<PathBuf>,
    /// Read the code from this environment variable.
    #[arg(long, value_name = "VAR")]
    code_env: Option<String>,
}

impl CodeSource {
    /// Whether any was given (which explicit mode does not take).
    pub(crate) fn given(&self) -> bool {
        self.code.is_some() || self.code_file.is_some() || self.code_env.is_some()
    }

    /// The code: from the argument, --code-file, --code-env, or else a
    /// prompt on a terminal.
    pub(crate) fn code(&self) -> anyhow::Result<Code> {
        let text = if let Some(code) = &self.code {
            code.clone()
        } else if let Some(path) = &self.code_file {
            secret::from_file(path, "--code-file")?
        } else if let Some(var) = &self.code_env {
            secret::from_env(var, "--code-env")?
        } else {
            secret::prompt("code")?
        };
        text.parse::<Code>().context("the code")
    }
}

/// A `--listen` value.
#[derive(Debug, Clone)]
pub(crate) enum Listen {
    /// One address.
    Addr(SocketAddr),
    /// Every non-loopback interface address, on this port (0: any).
    Auto(u16),
}

/// Parses one `--listen` value.
pub(crate) fn parse_listen(s: &str) -> Result<Listen, String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port number"))
    };
    if s == "auto" {
        return Ok(Listen::Auto(0));
    }
    if let Some(p) = s.strip_prefix("auto:") {
        return port(p).map(Listen::Auto);
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Listen::Addr(addr));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Listen::Addr(SocketAddr::new(ip, 0)));
    }
    Err("expected IP:PORT, IP, auto or auto:PORT (IPv6 in brackets with a port: [2001:db8::5]:7001)".into())
}

/// The addresses to bind for these `--listen` values.
pub(crate) fn listen_addrs(listen: &[Listen]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for l in listen {
        match l {
            Listen::Addr(a) => out.push(*a),
            Listen::Auto(port) => {
                let ips = interface_addrs().context("listing this machine's addresses")?;
                if ips.is_empty() {
                    bail!("--listen auto: this machine has no address but loopback");
                }
                out.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, *port)));
            }
        }
    }
    out.dedup();
    Ok(out)
}

/// A duration flag given in seconds.
pub(crate) fn secs(v: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("{flag}: {v} is not a duration"))
}

/// The receiver's candidates: `--candidates`, then `--relay`.
pub(crate) fn candidate_list(
    session: &Session,
    candidates: Option<&str>,
) -> anyhow::Result<Candidates> {
    let mut list = match candidates {
        Some(text) => text.parse::<Candidates>().context("--candidates")?,
        None => Candidates::default(),
    };
    if let Some(relay) = &session.relay {
        list.push(Candidate::relay(relay).context("--relay")?);
    }
    if list.is_empty() {
        bail!("give --relay HOST:PORT, --candidates LIST, or both");
    }
    Ok(list)
}
