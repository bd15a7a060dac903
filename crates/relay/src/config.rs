//! The relay's configuration: command-line flags, each also settable by an
//! environment variable (`DTCP_LISTEN` for `--listen`, and so on).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dtcp_wire::Limits;

/// Configuration of one relay node.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "dtcp-relay",
    version,
    about = "A DTCP relay node: pairs an Initiator and a Target by key and pipes bytes between them."
)]
pub struct Config {
    /// Client listener (IPv4 or IPv6).
    #[arg(long, env = "DTCP_LISTEN", default_value = "0.0.0.0:7777")]
    pub listen: SocketAddr,

    /// Prometheus `/metrics` (and `/healthz`, `/readyz`) listener.
    #[arg(long, env = "DTCP_METRICS_LISTEN", default_value = "0.0.0.0:9777")]
    pub metrics_listen: SocketAddr,

    /// Seconds a CREATE waits for its CONNECT.
    #[arg(long, env = "DTCP_PENDING_TTL", default_value = "300", value_parser = parse_secs, value_name = "SECS")]
    pub pending_ttl: Duration,

    /// Seconds a CONNECT waits for its CREATE.
    #[arg(long, env = "DTCP_CONNECT_GRACE", default_value = "5", value_parser = parse_secs, value_name = "SECS")]
    pub connect_grace: Duration,

    /// Seconds a client has to send its whole command.
    #[arg(long, env = "DTCP_HANDSHAKE_TIMEOUT", default_value = "10", value_parser = parse_secs, value_name = "SECS")]
    pub handshake_timeout: Duration,

    /// Open client connections per node; beyond it new ones get `resource-constraint`.
    #[arg(
        long,
        env = "DTCP_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_name = "N"
    )]
    pub max_connections: usize,

    /// Pending CREATEs per source address.
    #[arg(
        long,
        env = "DTCP_MAX_PENDING_PER_IP",
        default_value_t = 100,
        value_name = "N"
    )]
    pub max_pending_per_ip: usize,

    /// Close a paired session after this many seconds with no bytes either way (0: never).
    #[arg(long, env = "DTCP_IDLE_TIMEOUT", default_value = "0", value_parser = parse_secs, value_name = "SECS")]
    pub idle_timeout: Duration,

    /// On SIGTERM/SIGINT: answer new commands `shutting-down` and let paired
    /// sessions run this many seconds at most, then exit 0.
    #[arg(long, env = "DTCP_DRAIN_TIMEOUT", default_value = "30", value_parser = parse_secs, value_name = "SECS")]
    pub drain_timeout: Duration,

    /// Serve only sessions in which the Initiator's or the Target's JID is
    /// of one of these domains (repeatable; the environment variable takes a
    /// comma-separated list). Others get `forbidden`. Unset: any domain.
    #[arg(
        long = "allow-domain",
        env = "DTCP_ALLOW_DOMAINS",
        value_delimiter = ',',
        value_name = "DOMAIN"
    )]
    pub allow_domains: Vec<String>,

    /// Longest key, in bytes.
    #[arg(long, env = "DTCP_MAX_KEY_LEN", default_value_t = Limits::default().max_key_len, value_name = "BYTES")]
    pub max_key_len: usize,

    /// Longest JID, in bytes.
    #[arg(long, env = "DTCP_MAX_JID_LEN", default_value_t = Limits::default().max_jid_len, value_name = "BYTES")]
    pub max_jid_len: usize,

    /// Longest whole command, in bytes.
    #[arg(long, env = "DTCP_MAX_COMMAND_LEN", default_value_t = Limits::default().max_command_len, value_name = "BYTES")]
    pub max_command_len: usize,

    /// Log format.
    #[arg(long, env = "DTCP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl Config {
    /// The command limits of the wire codec.
    pub fn limits(&self) -> Limits {
        Limits {
            max_key_len: self.max_key_len,
            max_jid_len: self.max_jid_len,
            max_command_len: self.max_command_len,
        }
    }

    /// Whether the domain policy lets a session between these JIDs through.
    pub fn allows(&self, initiator: &str, target: &str) -> bool {
        self.allow_domains.is_empty()
            || [initiator, target].iter().any(|jid| {
                let domain = dtcp_wire::domainpart(jid);
                self.allow_domains
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(domain))
            })
    }

    /// The idle timeout, if one is set.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (!self.idle_timeout.is_zero()).then_some(self.idle_timeout)
    }
}

/// Seconds, whole or fractional (`0.5`), as a duration.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a valid number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::try_parse_from(["dtcp-relay"]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:7777".parse().unwrap());
        assert_eq!(c.metrics_listen, "0.0.0.0:9777".parse().unwrap());
        assert_eq!(c.pending_ttl, Duration::from_secs(300));
        assert_eq!(c.connect_grace, Duration::from_secs(5));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_pending_per_ip, 100);
        assert_eq!(c.idle_timeout(), None);
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.limits(), Limits::default());
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.allows("a@anything", "b@else"));
    }

    #[test]
    fn domain_policy_needs_one_side_in_the_list() {
        let c = Config::try_parse_from([
            "dtcp-relay",
            "--allow-domain",
            "capulet.lit",
            "--allow-domain",
            "verona.lit",
        ])
        .unwrap();
        assert!(c.allows("romeo@montague.lit/x", "juliet@Capulet.lit"));
        assert!(c.allows("verona.lit", "x@y"));
        assert!(!c.allows("romeo@montague.lit", "tybalt@sub.capulet.lit"));
    }

    #[test]
    fn fractional_seconds_and_bad_values() {
        let c =
            Config::try_parse_from(["dtcp-relay", "--idle-timeout", "1.5", "--listen", "[::1]:0"])
                .unwrap();
        assert_eq!(c.idle_timeout(), Some(Duration::from_millis(1500)));
        assert!(Config::try_parse_from(["dtcp-relay", "--pending-ttl", "soon"]).is_err());
        assert!(Config::try_parse_from(["dtcp-relay", "--pending-ttl", "-1"]).is_err());
    }
}
