//! The IP addresses of this node's live peer nodes, so that the forwarding
//! port can tell a peer's connection from anyone else's before its first
//! byte has come (`sniff`). The heartbeat hears the peers whose heartbeat
//! seal checks out (`membership`: whoever can write the store cannot add
//! one) and hands their advertised addresses over; a task of its own turns
//! them into IP addresses, resolving names, so that the heartbeat never
//! waits on a name server.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use metrics::gauge;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::metrics::PEER_ADDRESSES;

/// How long a round of lookups waits for the peers' names: a name not
/// resolved by then keeps the addresses it had, and its lookup is left to
/// finish (no second lookup of it is started meanwhile).
const LOOKUP_WAIT: Duration = Duration::from_millis(500);
/// Most peer addresses known at once.
pub(crate) const MAX_PEER_ADDRESSES: usize = 256;
/// Most addresses kept of what one name resolves to.
const ADDRESSES_PER_NAME: usize = 8;
/// Most lookups of peers' names running at once (a lookup that hangs
/// holds one of the runtime's blocking threads until it ends).
const MAX_LOOKUPS: usize = 64;

/// The IP addresses of the live peer nodes (IPv4-mapped IPv6 ones as
/// IPv4), read on every connection to the forwarding port, written after
/// each heartbeat. Clones share them.
#[derive(Debug, Clone)]
pub(crate) struct PeerAddresses {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    known: RwLock<HashSet<IpAddr>>,
    /// The peers' advertised addresses (`host:port`), as last heard.
    heard: watch::Sender<Vec<String>>,
}

/// A peer's advertised address: its IP address, or a name to resolve.
#[derive(Debug, PartialEq)]
enum Advertised<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

impl PeerAddresses {
    /// None known yet.
    pub(crate) fn new() -> Self {
        PeerAddresses {
            shared: Arc::new(Shared {
                known: RwLock::default(),
                heard: watch::Sender::new(Vec::new()),
            }),
        }
    }

    /// Whether `ip` is a live peer's.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let known = self
            .shared
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        !known.is_empty() && known.contains(&ip.to_canonical())
    }

    /// The advertised addresses (`host:port`) of the live peers the
    /// heartbeat found, this node left out: learned by [`PeerAddresses::run`],
    /// never waited for here.
    pub(crate) fn heard(&self, advertised: Vec<String>) {
        self.shared.heard.send_replace(advertised);
    }

    /// Learns the addresses heard, for ever: IP addresses at once, names
    /// resolved (within [`LOOKUP_WAIT`] a round; a name that does not
    /// resolve keeps what it had), at most [`MAX_PEER_ADDRESSES`] in all.
    pub(crate) async fn run(self) {
        self.learn(lookup).await;
    }

    /// [`PeerAddresses::run`], names resolved by `lookup`.
    async fn learn<F, L>(self, lookup: F)
    where
        F: Fn(String) -> L,
        L: Future<Output = Option<Vec<IpAddr>>> + Send + 'static,
    {
        let mut heard = self.shared.heard.subscribe();
        // What was heard before this task first ran, too.
        heard.mark_changed();
        // What each name resolved to last, and the lookups still running.
        let mut names: HashMap<String, Vec<IpAddr>> = HashMap::new();
        let mut lookups: HashMap<String, JoinHandle<Option<Vec<IpAddr>>>> = HashMap::new();
        while heard.changed().await.is_ok() {
            let advertised: BTreeSet<String> = heard.borrow_and_update().iter().cloned().collect();
            let deadline = tokio::time::Instant::now() + LOOKUP_WAIT;
            let mut ips = Vec::new();
            let mut wanted = Vec::new();
            for addr in &advertised {
                match advertised_ip(addr) {
                    Some(Advertised::Ip(ip)) => ips.push(ip),
                    Some(Advertised::Name(name)) if wanted.len() < MAX_PEER_ADDRESSES => {
                        wanted.push(name);
                    }
                    _ => {}
                }
            }
            // Every lookup is started before any is waited for, so that a
            // name whose lookup hangs holds up no other's; at most
            // MAX_LOOKUPS run at once (a name past them keeps what it had).
            for name in &wanted {
                if !lookups.contains_key(*name) && lookups.len() < MAX_LOOKUPS {
                    let name = (*name).to_owned();
                    lookups.insert(name.clone(), tokio::spawn(lookup(name)));
                }
            }
            let mut resolved = HashMap::new();
            for name in wanted {
                let found = match lookups.get_mut(name) {
                    Some(running) => match tokio::time::timeout_at(deadline, running).await {
                        Ok(done) => {
                            lookups.remove(name);
                            done.ok().flatten()
                        }
                        // Still running: looked at again next round.
                        Err(_) => None,
                    },
                    None => None,
                };
                if let Some(found) = found.or_else(|| names.remove(name)) {
                    resolved.insert(name.to_owned(), found);
                }
            }
            names = resolved;
            // A lookup of a name no longer heard is dropped once it is done.
            lookups.retain(|name, lookup| {
                !lookup.is_finished() || advertised.iter().any(|a| a.as_str() == name)
            });
            ips.extend(names.values().flatten());
            self.set(ips);
        }
    }

    fn set(&self, ips: Vec<IpAddr>) {
        let mut known: HashSet<IpAddr> = HashSet::with_capacity(ips.len().min(MAX_PEER_ADDRESSES));
        for ip in ips {
            if known.len() == MAX_PEER_ADDRESSES {
                debug!(
                    max = MAX_PEER_ADDRESSES,
                    "more peer addresses than are kept"
                );
                break;
            }
            known.insert(ip);
        }
        gauge!(PEER_ADDRESSES).set(known.len() as f64);
        *self
            .shared
            .known
            .write()
            .unwrap_or_else(PoisonError::into_inner) = known;
    }
}

/// An advertised address (`host:port`, an IPv6 host bracketed) as an IP
/// address (an unspecified one is nobody's), or as a name to resolve.
fn advertised_ip(addr: &str) -> Option<Advertised<'_>> {
    if let Ok(at) = addr.parse::<SocketAddr>() {
        let ip = at.ip().to_canonical();
        return (!ip.is_unspecified()).then_some(Advertised::Ip(ip));
    }
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    // A bracketed host that did not parse is no name.
    let name = !host.is_empty() && !host.starts_with('[') && !host.contains(':');
    name.then_some(Advertised::Name(addr))
}

/// The IP addresses a peer's advertised name (`host:port`) resolves to;
/// `None` when it resolves to none.
async fn lookup(name: String) -> Option<Vec<IpAddr>> {
    let found: Vec<IpAddr> = match tokio::net::lookup_host(name.as_str()).await {
        Ok(found) => found
            .map(|at| at.ip().to_canonical())
            .filter(|ip| !ip.is_unspecified())
            .take(ADDRESSES_PER_NAME)
            .collect(),
        Err(e) => {
            debug!(peer = %name, error = %e, "a peer's advertised name did not resolve");
            return None;
        }
    };
    (!found.is_empty()).then_some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_addresses_are_ips_or_names() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(advertised_ip("10.1.2.3:7778"), Some(Advertised::Ip(v4)));
        assert_eq!(
            advertised_ip("[fd00::1]:7778"),
            Some(Advertised::Ip("fd00::1".parse().unwrap()))
        );
        assert_eq!(
            advertised_ip("[::ffff:10.1.2.3]:7778"),
            Some(Advertised::Ip(v4)),
            "IPv4-mapped: as IPv4"
        );
        assert_eq!(
            advertised_ip("relay-1:7778"),
            Some(Advertised::Name("relay-1:7778"))
        );
        assert_eq!(advertised_ip("0.0.0.0:7778"), None, "nobody's");
        assert_eq!(advertised_ip("[::]:7778"), None, "nobody's");
        assert_eq!(advertised_ip("relay-1"), None, "no port");
        assert_eq!(advertised_ip(":7778"), None, "no host");
        assert_eq!(advertised_ip("[fd00::zz]:7778"), None);
        assert_eq!(advertised_ip("relay-1:port"), None);
    }

    #[tokio::test]
    async fn peers_are_learned_and_names_resolved() {
        let peers = PeerAddresses::new();
        tokio::spawn(peers.clone().run());
        let learned = |ip: &str, known: bool| {
            let (peers, ip) = (peers.clone(), ip.parse().unwrap());
            async move {
                for _ in 0..300 {
                    if peers.contains(ip) == known {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("{ip} not learned (or forgotten) in 3 s");
            }
        };
        assert!(!peers.contains("127.0.0.1".parse().unwrap()), "none yet");
        peers.heard(vec!["10.1.2.3:7778".into(), "localhost:7778".into()]);
        learned("10.1.2.3", true).await;
        learned("127.0.0.1", true).await;
        assert!(peers.contains("10.1.2.3".parse().unwrap()));
        assert!(
            peers.contains("::ffff:10.1.2.3".parse().unwrap()),
            "an IPv4-mapped source is the IPv4 address"
        );
        assert!(peers.contains("127.0.0.1".parse().unwrap()), "resolved");
        assert!(!peers.contains("127.0.11.1".parse().unwrap()));
        // Gone from the heartbeats: forgotten; a literal address that no
        // longer parses counts for nothing.
        peers.heard(vec!["localhost:7778".into(), "[fd00::zz]:1".into()]);
        learned("10.1.2.3", false).await;
        assert!(!peers.contains("10.1.2.3".parse().unwrap()));
        assert!(peers.contains("127.0.0.1".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_name_that_fails_keeps_its_addresses_and_one_that_hangs_holds_up_nobody() {
        use std::sync::Mutex;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let answers: Arc<Mutex<HashMap<String, Option<Vec<IpAddr>>>>> = Arc::default();
        let hanging = Arc::new(AtomicUsize::new(0));
        let lookup = {
            let (answers, hanging) = (answers.clone(), hanging.clone());
            move |name: String| {
                let answer = answers.lock().unwrap().get(&name).cloned();
                let hanging = hanging.clone();
                async move {
                    match answer {
                        Some(answer) => answer,
                        None => {
                            hanging.fetch_add(1, Ordering::Relaxed);
                            std::future::pending().await
                        }
                    }
                }
            }
        };
        let peers = PeerAddresses::new();
        tokio::spawn(peers.clone().learn(lookup));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        answers.lock().unwrap().insert("b:1".into(), Some(vec![a]));
        // The name that hangs sorts first: it is waited for first.
        let heard = vec![
            "a-hangs:1".to_owned(),
            "b:1".to_owned(),
            "10.0.0.2:1".to_owned(),
        ];
        peers.heard(heard.clone());
        // A round: the hanging name's wait, and a margin.
        tokio::time::sleep(LOOKUP_WAIT * 2).await;
        assert!(
            peers.contains(a) && peers.contains(b),
            "learned in the first round, beside a name that hangs"
        );
        for _ in 0..2 {
            peers.heard(heard.clone());
            tokio::time::sleep(LOOKUP_WAIT * 2).await;
        }
        assert!(peers.contains(a) && peers.contains(b));
        assert_eq!(
            hanging.load(Ordering::Relaxed),
            1,
            "one lookup of it at a time"
        );
        // The name server fails: what the name resolved to is kept.
        answers.lock().unwrap().insert("b:1".into(), None);
        peers.heard(heard.clone());
        tokio::time::sleep(LOOKUP_WAIT * 2).await;
        assert!(peers.contains(a), "kept through a failed lookup");
        // Gone from the heartbeats: forgotten.
        peers.heard(vec!["10.0.0.2:1".to_owned()]);
        tokio::time::sleep(LOOKUP_WAIT * 2).await;
        assert!(!peers.contains(a) && peers.contains(b));
    }
}
