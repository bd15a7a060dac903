//! What the component needs to know: docs/PROTOCOL.md section 6's flags, as a
//! plain struct that the relay's command line maps onto.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use jid::BareJid;

/// How long a TCP connect plus the XEP-0114 handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a whitespace keepalive is written while the link is up.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Silence from the server after which the component sends itself a ping
/// through the server, to prove the link still carries stanzas.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long that ping may go unanswered before the link counts as dead.
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// First delay of the reconnect backoff (it doubles, with jitter, up to the maximum).
pub const RECONNECT_MIN: Duration = Duration::from_millis(250);
/// Longest delay of the reconnect backoff.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// How often a standby (the server refused it as a second connection of the
/// same component) tries again; the jitter adds up to as much again.
pub const STANDBY_RETRY: Duration = Duration::from_millis(500);
/// How long the relay may take to answer an activation before the requester
/// gets an error.
pub const ACTIVATION_TIMEOUT: Duration = Duration::from_secs(10);

/// The component's configuration.
#[derive(Debug, Clone)]
pub struct XmppConfig {
    /// `--xmpp-component JID`: the component's address, e.g.
    /// `proxy.example.org`; what the streamhost query names as the proxy.
    pub component: BareJid,
    /// `--xmpp-server HOST:PORT`: the XMPP server's component port (XEP-0114).
    pub server: String,
    /// `--xmpp-secret` / `--xmpp-secret-file`: the shared component secret.
    pub secret: Secret,
    /// `--socks5-advertise HOST:PORT`: where clients reach the SOCKS5 port
    /// (the load balancer in front of the cluster, in a cluster).
    pub advertise: Advertise,
    /// `--xmpp-allow-domain D`, repeatable: only requesters whose JID has one
    /// of these domains may query the streamhost or activate. Empty: anyone.
    pub allow_domains: Vec<String>,
    /// Timers of the link and of activation; defaults for production.
    pub timings: Timings,
}

impl XmppConfig {
    /// A configuration from the flags' text, with the default [`Timings`].
    pub fn new(
        component: &str,
        server: impl Into<String>,
        secret: Secret,
        advertise: &str,
    ) -> Result<Self, ConfigError> {
        let component: BareJid = component
            .parse()
            .map_err(|e: jid::Error| ConfigError::Component(e.to_string()))?;
        if component.node().is_some() {
            return Err(ConfigError::Component(
                "a component's JID is a bare domain".into(),
            ));
        }
        let server = server.into();
        split_host_port(&server).ok_or(ConfigError::Server)?;
        if secret.expose().is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        Ok(XmppConfig {
            component,
            server,
            secret,
            advertise: advertise.parse()?,
            allow_domains: Vec::new(),
            timings: Timings::default(),
        })
    }

    /// With `--xmpp-allow-domain` values (normalised like JID domains).
    pub fn allow_domains<I, S>(mut self, domains: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.allow_domains = domains
            .into_iter()
            .map(|d| {
                let d = d.as_ref();
                BareJid::new(d)
                    .ok()
                    .filter(|j| j.node().is_none())
                    .map(|j| j.domain().to_string())
                    .ok_or_else(|| ConfigError::AllowDomain(d.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        Ok(self)
    }
}

/// The address the streamhost query advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertise {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl std::str::FromStr for Advertise {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = split_host_port(s).ok_or(ConfigError::Advertise)?;
        Ok(Advertise {
            host: host.to_owned(),
            port,
        })
    }
}

/// `host:port` or `[v6]:port`, with a non-empty host and a non-zero port.
fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && !host.contains(['[', ']']) && port != 0).then_some((host, port))
}

/// The link's and activation's timers. Tests shorten them.
#[derive(Debug, Clone)]
pub struct Timings {
    /// TCP connect plus handshake.
    pub connect_timeout: Duration,
    /// Whitespace keepalive interval.
    pub keepalive: Duration,
    /// Server silence before a ping through the server.
    pub idle_timeout: Duration,
    /// Unanswered ping before the link is dropped.
    pub ping_timeout: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Standby retry interval.
    pub standby_retry: Duration,
    /// Bound on the relay's answer to an activation.
    pub activation_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            connect_timeout: CONNECT_TIMEOUT,
            keepalive: KEEPALIVE_INTERVAL,
            idle_timeout: IDLE_TIMEOUT,
            ping_timeout: PING_TIMEOUT,
            reconnect_min: RECONNECT_MIN,
            reconnect_max: RECONNECT_MAX,
            standby_retry: STANDBY_RETRY,
            activation_timeout: ACTIVATION_TIMEOUT,
        }
    }
}

/// The component secret. `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// A secret given on the command line or in the environment.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// A secret read from a file (`--xmpp-secret-file`), without the line
    /// ending that editors and `echo` add.
    pub fn from_file(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        Ok(Secret(text.trim_end_matches(['\r', '\n']).to_owned()))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A configuration value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `--xmpp-component` is not a domain JID.
    #[error("--xmpp-component: {0}")]
    Component(String),
    /// `--xmpp-server` is not `HOST:PORT`.
    #[error("--xmpp-server must be HOST:PORT")]
    Server,
    /// `--socks5-advertise` is not `HOST:PORT`.
    #[error("--socks5-advertise must be HOST:PORT")]
    Advertise,
    /// The secret is empty.
    #[error("the XMPP component secret is empty")]
    EmptySecret,
    /// An `--xmpp-allow-domain` value is not a domain.
    #[error("--xmpp-allow-domain {0:?} is not a domain")]
    AllowDomain(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flags() {
        let c = XmppConfig::new(
            "Proxy.Example.org",
            "xmpp.internal:5347",
            Secret::new("s3cret"),
            "[2001:db8::1]:7625",
        )
        .unwrap()
        .allow_domains(["Example.ORG", "example.net"])
        .unwrap();
        assert_eq!(c.component.to_string(), "proxy.example.org");
        assert_eq!(
            c.advertise,
            Advertise {
                host: "2001:db8::1".into(),
                port: 7625
            }
        );
        assert_eq!(c.allow_domains, ["example.org", "example.net"]);
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn refuses_what_cannot_work() {
        let new = |component, server, secret, advertise| {
            XmppConfig::new(component, server, Secret::new(secret), advertise).map(|_| ())
        };
        assert!(matches!(
            new("user@proxy", "h:1", "s", "h:1"),
            Err(ConfigError::Component(_))
        ));
        assert_eq!(new("proxy", "h", "s", "h:1"), Err(ConfigError::Server));
        assert_eq!(
            new("proxy", "h:1", "", "h:1"),
            Err(ConfigError::EmptySecret)
        );
        for bad in ["h", ":1", "h:0", "h:x", "[h:1"] {
            assert_eq!(
                new("proxy", "h:1", "s", bad),
                Err(ConfigError::Advertise),
                "{bad}"
            );
        }
        let c = XmppConfig::new("proxy", "h:1", Secret::new("s"), "h:1").unwrap();
        assert!(c.allow_domains(["a@b"]).is_err());
    }

    #[test]
    fn secret_file_loses_its_line_ending() {
        let path = std::env::temp_dir().join(format!("dtcp-xmpp-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = Secret::from_file(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(secret.expose(), "s3cret");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }
}
