//! What the relay programs against: the [`Rendezvous`] trait and the values
//! it passes, whatever the backend.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use dtcp_wire::RegistrationId;

use crate::text::shown;

/// A relay node as other nodes see it: its id and the address of its
/// forwarding plane.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// Unique per process start (a UUID by default), so that a node restarted
    /// at the same address is a different owner.
    pub id: String,
    /// `host:port` other nodes dial to open a Bridge; empty for a lone node.
    pub forward_addr: String,
    /// A MAC the relay computes over one registration's record
    /// (registration id, node id, address) under the cluster secret, stored
    /// with it, so that whoever can write the store cannot redirect a claim
    /// nor move a record to another registration. The store keeps it opaque
    /// (no spaces); `None` on an insecure plane.
    pub seal: Option<String>,
}

/// The cluster format of the releases before format versions: every
/// registration published to every node on one channel, looked up with a
/// plain read, no waiter entries. A node whose heartbeat lists no formats
/// speaks only this one.
pub const FORMAT_LEGACY: u32 = 1;

/// The newest cluster format: waiter entries, each node told on its own
/// channel of the registrations it waits for, nothing published otherwise.
/// Records and heartbeats are the same as in [`FORMAT_LEGACY`].
pub const FORMAT_NEWEST: u32 = 2;

/// The node id of the marker a signed key's registration leaves behind
/// once it has paired (see [`Rendezvous::retire_if_owner`]); no relay
/// node may have it (node ids are UUIDs or checked to be other words).
pub const USED_MARKER: &str = "-";

impl NodeInfo {
    /// The marker of a used signed key.
    pub fn used() -> Self {
        NodeInfo {
            id: USED_MARKER.to_owned(),
            ..NodeInfo::default()
        }
    }

    /// Whether this is the marker of a used signed key, not a node.
    pub fn is_used(&self) -> bool {
        self.id == USED_MARKER
    }
}

/// Cut short and escaped ([`crate::text`]): a node read from the store is
/// whatever a Redis writer put there, and this is what logs print.
impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", shown(&self.id), shown(&self.forward_addr))
    }
}

/// A store operation failed: the store cannot be reached or answered nonsense.
/// The relay reports it to clients as `unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or refused the operation.
    #[error("rendezvous store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with a value this version does not understand.
    #[error("rendezvous store holds a malformed value: {0}")]
    Malformed(String),
}

/// The rendezvous store.
///
/// Registrations expire by themselves after their TTL, so a crashed node
/// leaves nothing behind for longer than that.
#[async_trait]
pub trait Rendezvous: Send + Sync + fmt::Debug + 'static {
    /// Records `owner` as the holder of `id` for `ttl`, unless `id` is already
    /// registered. Returns `false` on such a conflict. A waiter entry in its
    /// place ([`Rendezvous::lookup_or_wait`]) is replaced, and its node told.
    async fn register(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// The owner of `id`, if it is registered.
    async fn lookup(&self, id: &RegistrationId) -> Result<Option<NodeInfo>, StoreError>;

    /// The owner of `id`, as [`Rendezvous::lookup`]; if `id` is not
    /// registered, leaves in the same step a waiter entry naming the node
    /// `waiter` for `grace` (unless one is there already), so that the
    /// node that registers `id` within it tells that node
    /// ([`Rendezvous::watch_registrations`]). A store with no other node
    /// to tell leaves nothing.
    async fn lookup_or_wait(
        &self,
        id: &RegistrationId,
        waiter: &str,
        grace: Duration,
    ) -> Result<Option<NodeInfo>, StoreError> {
        let _ = (waiter, grace);
        self.lookup(id).await
    }

    /// Removes `id` if, and only if, `owner` still holds it. Returns whether
    /// it removed anything.
    async fn remove_if_owner(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
    ) -> Result<bool, StoreError>;

    /// Replaces `id`'s record by the marker [`NodeInfo::used`] for
    /// `keep_for` if, and only if, `owner` still holds it: a signed key that
    /// paired stays void until it expires, with no extra round trip (this
    /// replaces the removal). A `register` of `id` meanwhile is a conflict
    /// and a `lookup` returns the marker. Returns whether it replaced it.
    async fn retire_if_owner(
        &self,
        id: &RegistrationId,
        owner: &NodeInfo,
        keep_for: Duration,
    ) -> Result<bool, StoreError>;

    /// Writes again registrations this node holds, each with its remaining
    /// TTL and its record's seal (`owner`'s own seal is not used: a seal
    /// covers one registration), in pipelined batches: each is written if it
    /// is absent, and left as it is if `owner` already holds it. One result per registration, in
    /// order: `true` if `owner` holds it now, `false` if another node does
    /// (it registered the same id while the store had lost this one).
    ///
    /// A TTL shorter than a millisecond is written as one millisecond (the
    /// caller leaves out what has expired). On a Redis Cluster, where a
    /// pipeline cannot span slots, each is its own command, many in flight.
    ///
    /// A waiter entry left meanwhile is replaced by the record, and its
    /// node told ([`Rendezvous::watch_registrations`]), as by `register`. Other operations run
    /// alongside; a failed batch is an error as a whole and may be retried
    /// as it is (a registration already written counts as `owner`'s).
    async fn register_many(
        &self,
        owner: &NodeInfo,
        registrations: &[(RegistrationId, Duration, Option<String>)],
    ) -> Result<Vec<bool>, StoreError>;

    /// Announces that `node` is alive for the next `ttl`, and tells whether
    /// the store kept `node`'s records since the last beat ([`Beat`]).
    /// `node.seal` is the heartbeat's own (over its id and address), kept
    /// with it for [`Rendezvous::live_nodes`].
    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<Beat, StoreError>;

    /// Withdraws `node`'s heartbeat (a clean shutdown), `node` as it beat.
    async fn remove_node(&self, node: &NodeInfo) -> Result<(), StoreError>;

    /// The cluster formats of the nodes whose heartbeats list theirs, by
    /// node id (a node of a release before format versions lists none, and
    /// speaks [`FORMAT_LEGACY`]). Written with each heartbeat of a node
    /// that speaks a newer format. Empty for a store of one node.
    async fn node_formats(&self) -> Result<Vec<(String, Vec<u32>)>, StoreError> {
        Ok(Vec::new())
    }

    /// Writes and asks in cluster format `version` from now on: the newest
    /// every live node speaks, as the node finds on its heartbeat timer.
    fn use_format(&self, version: u32) {
        let _ = version;
    }

    /// How many nodes have a live heartbeat, whoever wrote it.
    async fn nodes_alive(&self) -> Result<usize, StoreError>;

    /// The nodes with a live heartbeat, each with the seal it beat with, so
    /// that the caller counts only the ones the cluster wrote (a node id
    /// may appear twice for a moment after its seal changed).
    async fn live_nodes(&self) -> Result<Vec<NodeInfo>, StoreError>;

    /// Counts one more pending CREATE from `source`, across every node that
    /// shares the store, unless `max` are counted already: returns whether
    /// it was counted. `entry` names this one CREATE (a number no other
    /// CREATE of the cluster uses): counting the same entry again, as a
    /// retry after a lost reply does, counts nothing more. Each entry
    /// expires `ttl` after it was counted, so a node that died holding
    /// counts leaves them for that long at most.
    async fn count_source(
        &self,
        source: IpAddr,
        entry: u64,
        max: usize,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Uncounts the pending CREATE `entry` from `source` (one that
    /// [`count_source`](Self::count_source) counted); uncounting it again
    /// does nothing.
    async fn uncount_source(&self, source: IpAddr, entry: u64) -> Result<(), StoreError>;

    /// Registrations that node `node_id` waits for (it left a waiter entry,
    /// [`Rendezvous::lookup_or_wait`]), and by whom, as they are made, when
    /// the store can tell (Redis pub/sub, on the node's own channel). Best
    /// effort: a CONNECT that waits for its CREATE is woken at once instead
    /// of at its next look; a missed one only waits for that look. `None`:
    /// the store cannot tell (one node needs no help).
    fn watch_registrations(
        &self,
        node_id: &str,
    ) -> Option<tokio::sync::mpsc::Receiver<Registered>> {
        let _ = node_id;
        None
    }

    /// A count that goes up each time the store answers again after its
    /// connection failed or timed out (a restart, a failover, a network
    /// fault): records written before may be gone, so the node should write
    /// its pending registrations again. The next [`Rendezvous::heartbeat`]
    /// reports the same event as [`Beat::Lost`]; this is for reacting at
    /// once. `None`: the store cannot lose anything (in memory).
    fn watch_recoveries(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Whether a `CONNECT` that finds no record now leaves nothing behind,
    /// the store telling the node when the record is written (Redis's
    /// client tracking), rather than a waiter entry; `None` for a store
    /// with nothing to wait on (in memory).
    fn looks_tracked(&self) -> Option<bool> {
        None
    }
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The node's heartbeat was still there, and the store answered without a
    /// connection failure since the last beat: it holds what it was given.
    Renewed,
    /// The store may have lost this node's records since its last beat: its
    /// heartbeat was missing before this one wrote it (the first beat, a
    /// Redis restarted empty or flushed, a failover, a beat that expired), or
    /// the store's connection failed and came back since. The node should
    /// write its pending registrations again ([`Rendezvous::register_many`]).
    Lost,
}

/// A registration a node waited for, made by another: a CONNECT waiting for
/// it can open its Bridge to `owner` without asking the store again, or,
/// when the store only knows that its record changed, look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The registration.
    pub id: RegistrationId,
    /// The node that holds its Initiator; `None`: its record was written
    /// or removed, and a look tells by whom.
    pub owner: Option<NodeInfo>,
}
