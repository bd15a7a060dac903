//! This node's record of a registration in the rendezvous store, from its
//! write to its removal.

use std::future::Future;
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use dtcp_store::NodeInfo;
use dtcp_wire::RegistrationId;
use tracing::{Instrument, warn};

use crate::node::Node;

/// This node's store record of a registration: removed when dropped, or,
/// for a signed key that paired, left as a used marker until the key expires.
#[derive(Debug)]
pub(crate) struct StoreRecord {
    pub(crate) node: Arc<Node>,
    pub(crate) id: RegistrationId,
    /// The record as written on a secure plane (with its seal); boxed, as
    /// every pending registration keeps it.
    sealed: Option<Box<NodeInfo>>,
    /// Whether the record was written (and so is ours to remove).
    armed: bool,
    /// Whether the registration paired.
    paired: bool,
    /// A signed key's expiry (Unix seconds), or 0.
    key_expiry: u64,
}

impl StoreRecord {
    /// The record of `id`, not written yet; `key_expiry` is a signed key's.
    pub(crate) fn new(node: Arc<Node>, id: RegistrationId, key_expiry: Option<u64>) -> Self {
        StoreRecord {
            // On a secure plane the record carries the cluster's seal.
            sealed: node.trust.sealed(&id, &node.info).map(Box::new),
            node,
            id,
            armed: false,
            paired: false,
            key_expiry: key_expiry.unwrap_or(0),
        }
    }

    /// The owner as the record names it.
    pub(crate) fn owner(&self) -> &NodeInfo {
        self.sealed.as_deref().unwrap_or(&self.node.info)
    }

    /// Notes that the record was written: ours to remove, whatever follows.
    pub(crate) fn written(&mut self) {
        self.armed = true;
    }

    /// Notes that the registration paired: a signed key's record then stays
    /// as a used marker.
    pub(crate) fn paired(&mut self) {
        self.paired = true;
    }
}

impl Drop for StoreRecord {
    fn drop(&mut self) {
        if self.armed {
            let (node, id) = (self.node.clone(), self.id);
            let owner = self.sealed.take();
            let now = crate::trust::unix_now();
            // A signed key that paired stays void until it expires.
            let retire = (self.paired && self.key_expiry > now)
                .then(|| Duration::from_secs(self.key_expiry - now));
            let mut remove = Box::pin(async move {
                let owner = owner.as_deref().unwrap_or(&node.info);
                let removed = match retire {
                    Some(keep) => node.store.retire_if_owner(&id, owner, keep).await,
                    None => node.store.remove_if_owner(&id, owner).await,
                };
                if let Err(e) = removed {
                    warn!(registration = %id, error = %e, "store remove failed; the record expires with its TTL");
                }
            });
            // The in-memory store of a lone node answers at once: no task for
            // that. Redis does not, and pairing does not wait for it: the rest
            // runs in a task of its own (which polls with its own waker).
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if remove.as_mut().poll(&mut cx).is_pending() {
                tokio::spawn(remove.in_current_span());
            }
        }
    }
}
