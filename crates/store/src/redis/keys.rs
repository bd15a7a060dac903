//! The names of the store's keys and channel, all under the configured
//! prefix. Only registration ids (hashes), node ids and client addresses go
//! into them, never a key or a JID.

use std::net::IpAddr;

use dtcp_wire::RegistrationId;

/// Makes the store's key names from its prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// A registration's record.
    pub(crate) fn reg(&self, id: &RegistrationId) -> String {
        format!("{}reg:{id}", self.prefix)
    }

    /// The registration whose record `key` is, if it is one of this
    /// store's (what Redis names in a tracking invalidation).
    pub(crate) fn reg_id(&self, key: &str) -> Option<RegistrationId> {
        key.strip_prefix(self.prefix.as_str())?
            .strip_prefix("reg:")?
            .parse()
            .ok()
    }

    /// A node's heartbeat.
    pub(crate) fn node(&self, node_id: &str) -> String {
        format!("{}node:{node_id}", self.prefix)
    }

    /// The sorted set of live nodes.
    pub(crate) fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// The sorted set of the formats each node speaks.
    pub(crate) fn formats(&self) -> String {
        format!("{}formats", self.prefix)
    }

    /// The channel every registration is published on in
    /// [`crate::FORMAT_LEGACY`], which every node of that format listens to.
    pub(crate) fn registered_channel(&self) -> String {
        format!("{}registered", self.prefix)
    }

    /// The channel a node is told on that a registration it waits for
    /// was made: its own, so that no node hears of the pairs of others
    /// (and, sharded on a Redis Cluster, the channels spread over shards).
    pub(crate) fn wake_channel(&self, node_id: &str) -> String {
        format!("{}wake:{node_id}", self.prefix)
    }

    /// The pending CREATEs of one client address.
    ///
    /// Not the `src:` of the INCR counters before: in a cluster being
    /// upgraded, old and new nodes then each count in their own keys (each
    /// group holding the limit among itself) instead of failing on a key
    /// of the other type.
    pub(crate) fn source(&self, source: IpAddr) -> String {
        format!("{}srcset:{}", self.prefix, source.to_canonical())
    }
}
