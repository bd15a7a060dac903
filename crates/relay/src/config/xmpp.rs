//! XEP-0065 mode's flags (docs/PROTOCOL.md section 6): the XMPP component that
//! an XMPP server reaches this node as, and where clients find its SOCKS5
//! port. All four of component, server, secret and advertised address, or
//! none. Also which nodes take SOCKS5 connections at all, and how long one
//! may wait for its partner and its activation.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use dtcp_xmpp::{Secret, XmppConfig};

use crate::config::parse::{parse_secs, read_secret};

/// The default of `--socks5-activation-timeout`, in seconds. A XEP-0065
/// Target connects once it has the streamhost, and its requester connects
/// and asks for the activation a few stanza round trips later: seconds, even
/// over a mobile link, or after a client has first let a direct candidate
/// time out (XEP-0260). A minute covers that several times over and is a
/// fifth of the DTCP pending TTL's default: what an address can hold by
/// opening pairs it never activates is held a fifth as long.
const SOCKS5_ACTIVATION_TIMEOUT_SECS: &str = "60";

/// The XMPP component flags.
#[derive(Debug, Clone, Default, Args)]
pub struct XmppFlags {
    /// XEP-0065 mode: the JID of the XMPP component this node connects as
    /// (e.g. `proxy.example.org`), answering disco, the streamhost query and
    /// activation. Needs `--xmpp-server`, a secret and `--socks5-advertise`.
    #[arg(
        long = "xmpp-component",
        env = "DTCP_XMPP_COMPONENT",
        value_name = "JID"
    )]
    pub xmpp_component: Option<String>,

    /// The XMPP server's component port (XEP-0114), `HOST:PORT`.
    #[arg(
        long = "xmpp-server",
        env = "DTCP_XMPP_SERVER",
        value_name = "HOST:PORT"
    )]
    pub xmpp_server: Option<String>,

    /// The component's shared secret. For development; prefer
    /// `--xmpp-secret-file`.
    #[arg(
        long = "xmpp-secret",
        env = "DTCP_XMPP_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        conflicts_with = "xmpp_secret_file"
    )]
    pub xmpp_secret: Option<String>,

    /// File holding the component's shared secret (a trailing newline is ignored).
    #[arg(
        long = "xmpp-secret-file",
        env = "DTCP_XMPP_SECRET_FILE",
        value_name = "PATH"
    )]
    pub xmpp_secret_file: Option<PathBuf>,

    /// Where clients reach the SOCKS5 port (this node's `--listen`, or the
    /// load balancer in front of the cluster), `HOST:PORT`: what the
    /// streamhost query answers.
    #[arg(
        long = "socks5-advertise",
        env = "DTCP_SOCKS5_ADVERTISE",
        value_name = "HOST:PORT"
    )]
    pub socks5_advertise: Option<String>,

    /// Only requesters whose JID has one of these domains may query the
    /// streamhost or activate (repeatable; the environment variable takes a
    /// comma-separated list). Unset: any domain the XMPP server lets through.
    #[arg(
        long = "xmpp-allow-domain",
        env = "DTCP_XMPP_ALLOW_DOMAINS",
        value_delimiter = ',',
        value_name = "DOMAIN"
    )]
    pub xmpp_allow_domains: Vec<String>,

    /// Take SOCKS5 connections (first byte `05`) without `--xmpp-component`:
    /// for a cluster node that carries the bytestreams of a XEP-0065
    /// component running on another node of its cluster. Cluster mode only.
    /// Without it (and without the component) a node answers `05` as DTCP
    /// does any byte that cannot begin a command: `bad-request`, so that a
    /// node that serves only DTCP gives nobody unsigned, uncounted pairs.
    #[arg(long = "accept-socks5", env = "DTCP_ACCEPT_SOCKS5")]
    pub accept_socks5: bool,

    /// Seconds a SOCKS5 connection may wait for its partner and then for
    /// its activation, counted from the first connection of its stream
    /// hash; past it both are reset. Never longer than `--pending-ttl`
    /// (which bounds the store record the pair is found by).
    #[arg(
        long = "socks5-activation-timeout",
        env = "DTCP_SOCKS5_ACTIVATION_TIMEOUT",
        default_value = SOCKS5_ACTIVATION_TIMEOUT_SECS,
        value_parser = parse_secs,
        value_name = "SECS"
    )]
    pub socks5_activation_timeout: Duration,
}

impl XmppFlags {
    /// Whether XEP-0065 mode's component is configured.
    pub fn is_set(&self) -> bool {
        self.xmpp_component.is_some()
    }

    /// Whether this node takes SOCKS5 connections: it runs the component,
    /// or carries connections for one elsewhere in its cluster
    /// (`--accept-socks5`, validated to be in cluster mode).
    pub fn serves_socks5(&self) -> bool {
        self.is_set() || self.accept_socks5
    }

    /// The component flags that do not go together, or do not parse.
    pub(super) fn validate(&self) -> Result<(), String> {
        let secret = self.xmpp_secret.is_some() || self.xmpp_secret_file.is_some();
        let given = [
            ("--xmpp-component", self.xmpp_component.is_some()),
            ("--xmpp-server", self.xmpp_server.is_some()),
            ("--xmpp-secret or --xmpp-secret-file", secret),
            ("--socks5-advertise", self.socks5_advertise.is_some()),
        ];
        if given.iter().any(|(_, set)| *set) {
            if let Some((missing, _)) = given.iter().find(|(_, set)| !set) {
                return Err(format!(
                    "XEP-0065 mode needs --xmpp-component, --xmpp-server, a secret and --socks5-advertise together: {missing} is missing"
                ));
            }
        } else if !self.xmpp_allow_domains.is_empty() {
            return Err("--xmpp-allow-domain needs --xmpp-component".into());
        }
        if self.xmpp_secret.as_deref() == Some("") {
            return Err("--xmpp-secret is empty".into());
        }
        if self.socks5_activation_timeout.is_zero() {
            return Err("--socks5-activation-timeout must be more than 0".into());
        }
        // Everything but the secret file, which is read at start.
        if self.is_set() {
            self.build(Secret::new("-"))?;
        }
        Ok(())
    }

    /// The component's configuration, its secret read from its file; `None`
    /// without `--xmpp-component`.
    pub fn xmpp_config(&self) -> Result<Option<XmppConfig>, String> {
        if !self.is_set() {
            return Ok(None);
        }
        let secret = match (&self.xmpp_secret, &self.xmpp_secret_file) {
            (_, Some(path)) => Secret::new(read_secret(path, "--xmpp-secret-file")?),
            (Some(secret), None) => Secret::new(secret.as_str()),
            (None, None) => return Err("the XMPP component needs a secret".into()),
        };
        self.build(secret).map(Some)
    }

    fn build(&self, secret: Secret) -> Result<XmppConfig, String> {
        let missing = |flag: &str| format!("{flag} is missing");
        let component = self
            .xmpp_component
            .as_deref()
            .ok_or_else(|| missing("--xmpp-component"))?;
        let server = self
            .xmpp_server
            .clone()
            .ok_or_else(|| missing("--xmpp-server"))?;
        let advertise = self
            .socks5_advertise
            .as_deref()
            .ok_or_else(|| missing("--socks5-advertise"))?;
        XmppConfig::new(component, server, secret, advertise)
            .and_then(|c| c.allow_domains(&self.xmpp_allow_domains))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::config::Config;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from([&["dtcp-relay"], args].concat())
    }

    const ALL: [&str; 8] = [
        "--xmpp-component",
        "Proxy.Example.org",
        "--xmpp-server",
        "xmpp.internal:5347",
        "--xmpp-secret",
        "s3cret",
        "--socks5-advertise",
        "relay.example.org:7777",
    ];

    #[test]
    fn all_four_flags_make_the_component() {
        let none = parse(&[]).unwrap();
        assert!(!none.xmpp.is_set());
        assert!(none.xmpp.xmpp_config().unwrap().is_none());
        let mut args = ALL.to_vec();
        args.extend([
            "--xmpp-allow-domain",
            "example.org",
            "--xmpp-allow-domain",
            "Example.NET",
        ]);
        let c = parse(&args).unwrap();
        c.validate().unwrap();
        let x = c.xmpp.xmpp_config().unwrap().expect("configured");
        assert_eq!(x.component.to_string(), "proxy.example.org");
        assert_eq!(x.server, "xmpp.internal:5347");
        assert_eq!(
            (x.advertise.host.as_str(), x.advertise.port),
            ("relay.example.org", 7777)
        );
        assert_eq!(x.allow_domains, ["example.org", "example.net"]);
        assert!(
            !format!("{x:?}").contains("s3cret"),
            "the secret never shows"
        );
    }

    #[test]
    fn a_partial_or_bad_set_is_refused_with_the_flag_named() {
        for skip in [0, 2, 4, 6] {
            let mut args = ALL.to_vec();
            let missing = args[skip];
            args.drain(skip..skip + 2);
            let err = parse(&args).unwrap().validate().unwrap_err();
            assert!(err.contains(missing), "{missing}: {err}");
        }
        let err = parse(&["--xmpp-allow-domain", "example.org"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.contains("--xmpp-component"), "{err}");
        let mut bad = ALL.to_vec();
        bad[7] = "no-port";
        let err = parse(&bad).unwrap().validate().unwrap_err();
        assert!(err.contains("--socks5-advertise"), "{err}");
        let mut bad = ALL.to_vec();
        bad[1] = "user@proxy";
        assert!(parse(&bad).unwrap().validate().is_err());
        let mut both = ALL.to_vec();
        both.extend(["--xmpp-secret-file", "/nonexistent"]);
        assert!(parse(&both).is_err(), "a secret and a secret file");
    }

    #[test]
    fn the_secret_comes_from_its_file() {
        let dir = std::env::temp_dir().join(format!("dtcp-xmpp-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (good, empty) = (dir.join("secret"), dir.join("empty"));
        std::fs::write(&good, "from-file\n").unwrap();
        std::fs::write(&empty, "\n").unwrap();
        // Component and server, the file, and the advertised address.
        let with_file = |path: &std::path::Path| {
            let mut args = ALL[..4].to_vec();
            args.extend(["--xmpp-secret-file", path.to_str().unwrap()]);
            args.extend(&ALL[6..]);
            parse(&args).unwrap()
        };
        let c = with_file(&good);
        c.validate().unwrap();
        assert!(c.xmpp.xmpp_config().unwrap().is_some());
        let err = with_file(&empty).xmpp.xmpp_config().unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
