//! What the flags mean together: the inconsistent combinations refused at
//! start, and the settings handed to the store and the wire codec.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use dtcp_store::{RedisConfig, RedisTls, SentinelConfig};
use dtcp_wire::Limits;

use crate::config::Config;
use crate::config::parse::{is_host_port, read_secret};

/// The longest `--node-id` taken: it is written into every store record and
/// heartbeat, which the store refuses to read past a few KiB, so a long id
/// would make the node's own records unreadable to its peers.
const MAX_NODE_ID_LEN: usize = 128;

impl Config {
    /// The command limits of the wire codec.
    pub fn limits(&self) -> Limits {
        Limits {
            max_key_len: self.max_key_len,
            max_jid_len: self.max_jid_len,
            max_command_len: self.max_command_len,
        }
    }

    /// Whether the node runs as part of a cluster (a shared store is configured).
    pub fn cluster(&self) -> bool {
        !self.redis_urls.is_empty() || !self.redis_sentinels.is_empty()
    }

    /// The shared store's configuration, passwords read from their files.
    pub fn redis_config(&self) -> Result<RedisConfig, String> {
        let secret = |value: &Option<String>, file: &Option<PathBuf>, flag: &str| match file {
            Some(path) => read_secret(path, flag).map(Some),
            None => Ok(value.clone()),
        };
        let sentinel = match &self.redis_sentinel_master {
            Some(master) if !self.redis_sentinels.is_empty() => Some(SentinelConfig {
                master: master.clone(),
                sentinels: self.redis_sentinels.clone(),
                password: secret(
                    &self.redis_sentinel_password,
                    &self.redis_sentinel_password_file,
                    "--redis-sentinel-password-file",
                )?,
            }),
            _ => None,
        };
        Ok(RedisConfig {
            urls: self.redis_urls.clone(),
            cluster: self.redis_cluster,
            sentinel,
            password: secret(
                &self.redis_password,
                &self.redis_password_file,
                "--redis-password-file",
            )?,
            tls: self.redis_tls()?,
            prefix: self.redis_prefix.clone(),
            max_format: self.cluster_format_version,
            tracking: !self.no_redis_tracking,
            connect_timeout: self.redis_connect_timeout,
            response_timeout: self.redis_response_timeout,
            operation_timeout: self.redis_operation_timeout,
            ..RedisConfig::default()
        })
    }

    /// The Redis TLS certificates, read from their files, if any is given.
    fn redis_tls(&self) -> Result<Option<RedisTls>, String> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
        };
        let ca = self.redis_ca.as_ref().map(read).transpose()?;
        let client = match (&self.redis_client_cert, &self.redis_client_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        Ok((ca.is_some() || client.is_some()).then_some(RedisTls { ca, client }))
    }

    /// Whether every Redis address is reached over TLS (`rediss://`).
    fn redis_over_tls(&self) -> bool {
        let addrs = if self.redis_sentinels.is_empty() {
            &self.redis_urls
        } else {
            &self.redis_sentinels
        };
        !addrs.is_empty() && addrs.iter().all(|a| a.starts_with("rediss://"))
    }

    /// The Redis flags that contradict each other.
    fn validate_redis(&self) -> Result<(), String> {
        let sentinel = !self.redis_sentinels.is_empty();
        if sentinel && !self.redis_urls.is_empty() {
            return Err("--redis-sentinel and --redis-url exclude each other: give one".into());
        }
        if sentinel && self.redis_cluster {
            return Err("--redis-cluster does not apply to --redis-sentinel".into());
        }
        if sentinel != self.redis_sentinel_master.is_some() {
            return Err("--redis-sentinel and --redis-sentinel-master go together".into());
        }
        if self.redis_sentinel_master.as_deref() == Some("") {
            return Err("--redis-sentinel-master is empty".into());
        }
        if !sentinel
            && (self.redis_sentinel_password.is_some()
                || self.redis_sentinel_password_file.is_some())
        {
            return Err("a sentinel password needs --redis-sentinel".into());
        }
        if let Some(bad) = self
            .redis_sentinels
            .iter()
            .find(|a| !a.contains("://") && !is_host_port(a))
        {
            return Err(format!("--redis-sentinel {bad:?} is not HOST:PORT"));
        }
        let timeouts = [
            ("--redis-connect-timeout", self.redis_connect_timeout),
            ("--redis-response-timeout", self.redis_response_timeout),
            ("--redis-operation-timeout", self.redis_operation_timeout),
        ];
        if (self.redis_ca.is_some() || self.redis_client_cert.is_some()) && !self.redis_over_tls() {
            return Err(
                "--redis-ca and --redis-client-cert need TLS: every --redis-url (or \
                 --redis-sentinel) must be rediss://"
                    .into(),
            );
        }
        if let Some((flag, _)) = timeouts.iter().find(|(_, t)| t.is_zero()) {
            return Err(format!("{flag} must be more than 0"));
        }
        if self.redis_response_timeout > self.redis_operation_timeout
            || self.redis_connect_timeout > self.redis_operation_timeout
        {
            return Err(
                "--redis-operation-timeout bounds the others: it must be at least \
                 --redis-connect-timeout and --redis-response-timeout"
                    .into(),
            );
        }
        Ok(())
    }

    /// Refuses inconsistent combinations before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_redis()?;
        self.xmpp.validate()?;
        let has_secret = self.cluster_secret.is_some() || self.cluster_secret_file.is_some();
        if self.cluster() && !has_secret && !self.insecure_plane {
            return Err(
                "cluster mode needs --cluster-secret-file or --cluster-secret (or --insecure-plane to run without one)"
                    .into(),
            );
        }
        if self.cluster_secret.is_some() && self.cluster_secret_file.is_some() {
            return Err("give --cluster-secret or --cluster-secret-file, not both".into());
        }
        if self.key_secrets.iter().any(String::is_empty) {
            return Err("a --key-secret is empty".into());
        }
        if self.cluster_secret.as_deref() == Some("") {
            return Err("--cluster-secret is empty".into());
        }
        if let Some(id) = &self.node_id
            && (id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err("--node-id must be non-empty and without spaces".into());
        }
        if let Some(id) = &self.node_id
            && id.len() > MAX_NODE_ID_LEN
        {
            return Err(format!(
                "--node-id is {} bytes; at most {MAX_NODE_ID_LEN}",
                id.len()
            ));
        }
        if self.advertise_addr.is_none()
            && self.cluster()
            && self.forward_listen.ip().is_unspecified()
        {
            return Err(format!(
                "--forward-listen {} is not an address other nodes can dial: set --advertise-addr",
                self.forward_listen
            ));
        }
        if self.proxy_protocol && self.proxy_protocol_from.is_empty() {
            return Err(
                "--proxy-protocol needs --proxy-protocol-from: the load balancers' networks".into(),
            );
        }
        if !self.proxy_protocol && !self.proxy_protocol_from.is_empty() {
            return Err("--proxy-protocol-from is set but --proxy-protocol is off".into());
        }
        if self.connection_burst_per_ip.is_some() && self.max_connection_rate_per_ip.is_none() {
            return Err(
                "--connection-burst-per-ip needs a --max-connection-rate-per-ip (it is 0)".into(),
            );
        }
        if self.max_connections_per_ip == 0 || self.max_sessions_per_ip == 0 {
            return Err(
                "--max-connections-per-ip and --max-sessions-per-ip must be at least 1".into(),
            );
        }
        // A lone node's SOCKS5 connections can only be activated by its own
        // component: without one, nothing would ever activate them.
        if self.xmpp.accept_socks5 && !self.xmpp.is_set() && !self.cluster() {
            return Err(
                "--accept-socks5 is for a cluster node that carries SOCKS5 connections for a \
                 component on another node: it needs --redis-url or --redis-sentinel (a node \
                 with --xmpp-component takes SOCKS5 without it)"
                    .into(),
            );
        }
        Ok(())
    }

    /// How long a SOCKS5 connection may wait for its partner and its
    /// activation: `--socks5-activation-timeout`, but never past
    /// `--pending-ttl`, the life of the store record that finds the pair.
    pub fn socks5_wait(&self) -> Duration {
        self.xmpp.socks5_activation_timeout.min(self.pending_ttl)
    }

    /// Whether a connection from `peer` must begin with a PROXY protocol header.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.proxy_protocol
            && self
                .proxy_protocol_from
                .iter()
                .any(|net| net.contains(&peer))
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

    /// Whether only signed keys are accepted.
    pub fn signed_keys(&self) -> bool {
        !self.key_secrets.is_empty() || !self.key_secret_files.is_empty()
    }

    /// The idle timeout, if one is set.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (!self.idle_timeout.is_zero()).then_some(self.idle_timeout)
    }
}
