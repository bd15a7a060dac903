//! The arguments `dtcp send` and `dtcp recv` share, and what they mean: the
//! session (relay, key, JIDs), `--listen` values and the addresses they
//! stand for, durations in seconds, and the receiver's candidate list.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use dtcp_client::direct::interface_addrs;
use dtcp_client::{Candidate, Candidates};
use dtcp_wire::Triple;

#[derive(Debug, Args)]
pub(crate) struct Session {
    /// The relay, `HOST:PORT` (optional for `send --listen` and `recv --candidates`).
    #[arg(long, env = "DTCP_RELAY", value_name = "HOST:PORT")]
    pub(crate) relay: Option<String>,
    /// The key both sides agreed on.
    #[arg(long, env = "DTCP_KEY", hide_env_values = true)]
    key: String,
    /// The Initiator's (sender's) JID.
    #[arg(long = "from", value_name = "INITIATOR_JID")]
    initiator: String,
    /// The Target's (receiver's) JID.
    #[arg(long = "to", value_name = "TARGET_JID")]
    target: String,
}

impl Session {
    pub(crate) fn triple(&self) -> anyhow::Result<Triple> {
        Triple::new(&self.key, &self.initiator, &self.target).context("invalid key or JID")
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
