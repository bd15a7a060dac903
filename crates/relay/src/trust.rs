//! Who belongs: the key secrets that sign clients' keys (docs/PROTOCOL.md
//! section 5), the cluster secrets that authenticate the plane and seal the
//! store's records, and the files they come from, re-read when they change.
//!
//! Files are watched by a stat of each one every [`SECRET_POLL_INTERVAL`]
//! (modification time, length, inode), not by inotify: a Kubernetes Secret
//! volume is updated by swapping a symlink two levels up, which inotify on
//! the file itself misses, while a stat through the path sees the new file;
//! a few stats a couple of seconds apart cost nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dtcp_forward::{PlaneAuth, PlaneTls};
use dtcp_store::NodeInfo;
use dtcp_wire::{KeyError, Keyring, RegistrationId, Secrets, Triple};
use metrics::counter;
use tracing::{info, warn};

use crate::config::Config;
use crate::metrics::AUTH_FAILURES;

/// How often secret files are checked for a change.
pub(crate) const SECRET_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no secret.
    #[error("{0} holds no secret")]
    Empty(PathBuf),
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    // `metadata` follows symlinks: a swapped Secret volume shows a new inode.
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

fn read_secrets(path: &Path) -> Result<Secrets, TrustError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrustError::Read {
        path: path.to_owned(),
        source,
    })?;
    let secrets = Secrets::from_lines(&text);
    if secrets.is_empty() {
        return Err(TrustError::Empty(path.to_owned()));
    }
    Ok(secrets)
}

/// Secrets from flags and files, and the keyring they fill.
#[derive(Debug)]
pub(crate) struct Source {
    /// What this source is, for log lines.
    name: &'static str,
    inline: Vec<String>,
    files: Vec<(PathBuf, Option<Stamp>)>,
    ring: Keyring,
}

impl Source {
    fn new(name: &'static str, inline: &[String], files: &[PathBuf]) -> Result<Self, TrustError> {
        let mut source = Source {
            name,
            inline: inline.to_vec(),
            files: files.iter().map(|p| (p.clone(), None)).collect(),
            ring: Keyring::default(),
        };
        source.reload()?;
        Ok(source)
    }

    /// Reads every file again if any changed; `Ok(true)` if the secrets did.
    fn reload(&mut self) -> Result<bool, TrustError> {
        let stamps: Vec<_> = self.files.iter().map(|(p, _)| stamp(p)).collect();
        if !self.ring.current().is_empty()
            && stamps.iter().zip(&self.files).all(|(s, (_, old))| s == old)
        {
            return Ok(false);
        }
        // Flags first, then each file in order: the first secret signs.
        let mut all: Vec<Vec<u8>> = self.inline.iter().map(|s| s.clone().into_bytes()).collect();
        for (path, _) in &self.files {
            all.extend(read_secrets(path)?.iter().map(<[u8]>::to_vec));
        }
        for ((_, old), new) in self.files.iter_mut().zip(stamps) {
            *old = new;
        }
        let secrets = Secrets::new(all);
        let changed = secrets != self.ring.current();
        self.ring.set(secrets);
        Ok(changed)
    }

    /// Re-reads the files if they changed, keeping the secrets in force when
    /// the new ones cannot be read or are empty (a half-written file).
    fn poll(&mut self) {
        match self.reload() {
            Ok(true) => info!(
                secrets = self.ring.current().len(),
                "{} secrets reloaded", self.name
            ),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "{} secrets not reloaded; the current ones stay", self.name)
            }
        }
    }
}

/// The node's secrets, as the connection tasks and the plane use them.
#[derive(Debug)]
pub(crate) struct Trust {
    /// Key secrets: with any, only signed keys are accepted.
    keys: Option<Keyring>,
    /// The longest lifetime of a signed key, in seconds.
    max_key_lifetime: u64,
    /// The plane's authenticators and the records' seals.
    pub(crate) plane: PlaneAuth,
}

/// The sources a node watches for its lifetime.
#[derive(Debug)]
pub(crate) struct Watched {
    sources: Vec<Source>,
    tls: Option<TlsWatch>,
}

/// The forwarding plane's TLS files and the versions in force.
#[derive(Debug)]
struct TlsWatch {
    tls: PlaneTls,
    stamps: Vec<Option<Stamp>>,
}

impl TlsWatch {
    fn stamps(tls: &PlaneTls) -> Vec<Option<Stamp>> {
        tls.files().paths().into_iter().map(stamp).collect()
    }

    /// Reloads the certificates if a file changed. A set that does not load
    /// (a key that no longer matches its certificate while the two are
    /// replaced one after the other, a file half-written) leaves the ones
    /// in force, and is tried again at the next poll.
    fn poll(&mut self) {
        let stamps = Self::stamps(&self.tls);
        if stamps == self.stamps {
            return;
        }
        match self.tls.reload() {
            Ok(()) => {
                info!("forwarding plane TLS certificates reloaded");
                self.stamps = stamps;
            }
            Err(e) => warn!(
                error = %e,
                "forwarding plane TLS certificates not reloaded; the current ones stay"
            ),
        }
    }
}

impl Trust {
    /// The secrets `config` names, read now, and what to watch. The cluster
    /// secrets are loaded in cluster mode only, and none with an insecure plane.
    pub(crate) fn load(config: &Config) -> Result<(Trust, Watched), TrustError> {
        let mut watched = Vec::new();
        let keys = if config.signed_keys() {
            let source = Source::new("key", &config.key_secrets, &config.key_secret_files)?;
            let ring = source.ring.clone();
            watched.push(source);
            Some(ring)
        } else {
            None
        };
        let has_cluster_secret =
            config.cluster_secret.is_some() || config.cluster_secret_file.is_some();
        let plane = if config.cluster() && has_cluster_secret {
            let inline: Vec<String> = config.cluster_secret.iter().cloned().collect();
            let files: Vec<PathBuf> = config.cluster_secret_file.iter().cloned().collect();
            let source = Source::new("cluster", &inline, &files)?;
            let ring = source.ring.clone();
            watched.push(source);
            PlaneAuth::new(Some(ring))
        } else {
            PlaneAuth::new(None)
        };
        let trust = Trust {
            keys,
            max_key_lifetime: config.max_key_lifetime.as_secs(),
            plane,
        };
        let watched = Watched {
            sources: watched,
            tls: None,
        };
        Ok((trust, watched))
    }

    /// A node that trusts everyone (tests of other parts).
    #[cfg(test)]
    pub(crate) fn open() -> Self {
        Trust {
            keys: None,
            max_key_lifetime: 0,
            plane: PlaneAuth::new(None),
        }
    }

    /// Checks a command's key: `Ok(None)` when keys need no signature,
    /// `Ok(Some(expiry))` for a good signed key. A refusal is counted.
    pub(crate) fn check_key(&self, triple: &Triple) -> Result<Option<u64>, KeyError> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let now = unix_now();
        let checked = dtcp_wire::verify_key(
            triple.key(),
            triple.initiator(),
            triple.target(),
            &keys.current(),
            now,
            self.max_key_lifetime,
        );
        checked.map(Some).inspect_err(|e| {
            let reason = match e {
                KeyError::Malformed | KeyError::BadSignature => "bad_signature",
                KeyError::Expired => "expired",
                KeyError::TooLong => "lifetime",
            };
            counter!(AUTH_FAILURES, "reason" => reason).increment(1);
        })
    }

    /// The seal of `id`'s record naming `info` as its owner, with the
    /// signing secret in force now; `None` on an insecure plane.
    pub(crate) fn seal(&self, id: &RegistrationId, info: &NodeInfo) -> Option<String> {
        self.plane.seal(id.as_bytes(), &info.id, &info.forward_addr)
    }

    /// `info` as `id`'s record in the store names it: sealed on a secure plane.
    pub(crate) fn sealed(&self, id: &RegistrationId, info: &NodeInfo) -> Option<NodeInfo> {
        Some(NodeInfo {
            seal: Some(self.seal(id, info)?),
            ..info.clone()
        })
    }

    /// `info` as its heartbeat names it: sealed on a secure plane.
    pub(crate) fn beating(&self, info: &NodeInfo) -> NodeInfo {
        NodeInfo {
            seal: self.plane.heartbeat_seal(&info.id, &info.forward_addr),
            ..info.clone()
        }
    }

    /// The ids of the distinct nodes of `live` that beat with the
    /// cluster's seal: a heartbeat the cluster did not write is not counted.
    pub(crate) fn sealed_nodes<'a>(
        &self,
        live: &'a [NodeInfo],
    ) -> std::collections::HashSet<&'a str> {
        live.iter()
            .filter(|n| self.is_sealed(n))
            .map(|n| n.id.as_str())
            .collect()
    }

    /// Whether this heartbeat record, its id and its address, carries the
    /// cluster's seal. Checked record by record wherever the address
    /// matters: the live set may hold more than one record of an id, a
    /// forged one beside the node's own.
    pub(crate) fn is_sealed(&self, n: &NodeInfo) -> bool {
        self.plane
            .verify_heartbeat(&n.id, &n.forward_addr, n.seal.as_deref())
    }

    /// Whether `id`'s record naming `owner` was written by the cluster for
    /// that registration; a record that was not is counted.
    pub(crate) fn verify_record(&self, id: &RegistrationId, owner: &NodeInfo) -> bool {
        let ok = self.plane.verify_seal(
            id.as_bytes(),
            &owner.id,
            &owner.forward_addr,
            owner.seal.as_deref(),
        );
        if !ok {
            counter!(AUTH_FAILURES, "reason" => "bad_record").increment(1);
        }
        ok
    }
}

impl Watched {
    /// Watches the files of the plane's TLS too, as loaded in `tls`.
    pub(crate) fn tls(&mut self, tls: PlaneTls) {
        let stamps = TlsWatch::stamps(&tls);
        self.tls = Some(TlsWatch { tls, stamps });
    }

    /// Re-reads the secret and certificate files whenever they change, for ever.
    pub(crate) async fn run(mut self) {
        if self.tls.is_none() && self.sources.iter().all(|s| s.files.is_empty()) {
            return;
        }
        let mut tick = tokio::time::interval(SECRET_POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for source in &mut self.sources {
                source.poll();
            }
            if let Some(tls) = &mut self.tls {
                tls.poll();
            }
        }
    }
}

/// The Unix time in seconds.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old_secrets() {
        let dir = std::env::temp_dir().join(format!("dtcp-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secrets");
        std::fs::write(&path, "one\n").unwrap();
        let mut source = Source::new("key", &["flag".into()], std::slice::from_ref(&path)).unwrap();
        assert_eq!(source.ring.current().len(), 2);
        assert_eq!(source.ring.current().signing(), Some(&b"flag"[..]));
        assert!(!source.reload().unwrap(), "unchanged");
        std::fs::write(&path, "one\ntwo, longer\n").unwrap();
        assert!(source.reload().unwrap());
        assert_eq!(source.ring.current().len(), 3);
        std::fs::write(&path, "\n").unwrap();
        source.poll();
        assert_eq!(
            source.ring.current().len(),
            3,
            "an empty file changes nothing"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
