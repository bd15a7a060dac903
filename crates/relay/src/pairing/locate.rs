//! Where a registration that is not in this node's pending table is held:
//! the store's record of it (or the owner the registering node told this
//! one of, answering the waiter entry a `CONNECT` left),
//! checked, then a Bridge to its owner, which claims it there. A DTCP
//! `CONNECT` and a XEP-0065 requester both find their registration so.

use std::net::SocketAddr;

use dtcp_forward::{BridgeError, Halves, LaneAt};
use dtcp_store::NodeInfo;
use dtcp_wire::{Condition, RegistrationId};
use metrics::counter;
use tracing::{debug, warn};

use crate::limits::SessionGuard;
use crate::metrics::{
    AUTH_FAILURES, BRIDGE_ERRORS, BRIDGE_FORMATS, CONNECTIONS_REFUSED, bridge_format_label,
};
use crate::node::Node;
use crate::session::TOO_MANY_SESSIONS;

/// The text of a refused signed key that already paired.
pub(crate) const REUSED: &str = "this key has already been used";

/// Where a registration was found.
pub(crate) enum Located {
    /// The store has no record of it.
    Unknown,
    /// The record is this node's own, and the registration is not in its
    /// table (not yet, or no longer).
    Ours,
    /// Its owner had nothing to claim: claimed by another, withdrawn, or
    /// the record names an earlier process at that address.
    Gone,
    /// Its owner claimed it: the Bridge to the owner, and the claimant's
    /// address's share of one more session, held until the session ends.
    /// The Bridge comes boxed: it is large, and every waiting claimant's
    /// state would otherwise make room for it.
    Bridged(Box<Halves>, SessionGuard),
    /// Answer the claimant this.
    Refused(Condition, &'static str),
}

/// A registration's owner as the store recorded it, checked in the one
/// order every caller needs: a claim's Bridge here, and an activation
/// asked of another node ([`crate::xep0065::component`]).
pub(crate) enum Owner {
    /// The registration's signed key has already paired.
    Used,
    /// The record is this node's own.
    Ours,
    /// Another node holds it, and the record is sealed by the cluster.
    Other(NodeInfo),
    /// The record is not sealed by the cluster (logged here).
    Unsealed,
}

/// Checks the store's record `owner` of `id`: used, this node's, or another
/// node's, and then only if the cluster sealed it.
pub(crate) fn check_owner(node: &Node, id: &RegistrationId, owner: NodeInfo) -> Owner {
    if owner.is_used() {
        return Owner::Used;
    }
    if owner.id == node.info.id {
        return Owner::Ours;
    }
    // Whoever can write the store must not be able to redirect a claim or
    // an activation.
    if !node.trust.verify_record(id, &owner) {
        warn!(registration = %id, owner = %owner, "the store's record of this registration is not sealed by the cluster: not dialing it");
        return Owner::Unsealed;
    }
    Owner::Other(owner)
}

/// Locates `id` for a claimant at `client` (the owner logs it) and, when
/// another node holds it, has that node claim it through a Bridge.
/// `announced`: the owner another node announced, if one did, which spares
/// the store a lookup. `wait`: a claimant that waits for its registration
/// (a `CONNECT`) leaves a waiter entry in the same lookup when there is no
/// record yet, so that the node that registers it tells this one.
/// `lane_at`: when the owner offers its lane (a DTCP claim's at `paired`,
/// a XEP-0065 pair's at its activation).
pub(crate) async fn locate(
    node: &Node,
    id: &RegistrationId,
    client: SocketAddr,
    announced: Option<NodeInfo>,
    wait: bool,
    lane_at: LaneAt,
) -> Located {
    let looked = async {
        if wait {
            let grace = node.config.connect_grace;
            node.store.lookup_or_wait(id, &node.info.id, grace).await
        } else {
            node.store.lookup(id).await
        }
    };
    let owner = match announced {
        Some(owner) => owner,
        None => match looked.await {
            Ok(Some(owner)) => owner,
            Ok(None) => return Located::Unknown,
            Err(e) => {
                warn!(registration = %id, error = %e, "store lookup failed");
                let text = "the rendezvous store is unavailable";
                return Located::Refused(Condition::Unavailable, text);
            }
        },
    };
    let owner = match check_owner(node, id, owner) {
        Owner::Other(owner) => owner,
        Owner::Used => {
            counter!(AUTH_FAILURES, "reason" => "reused").increment(1);
            return Located::Refused(Condition::Forbidden, REUSED);
        }
        Owner::Ours => return Located::Ours,
        Owner::Unsealed => {
            let text = "the session's record in the rendezvous store does not verify";
            return Located::Refused(Condition::Unavailable, text);
        }
    };
    // The claimant's address takes part in one more session (the
    // registering client's is counted by the owner node).
    let Some(share) = node.per_address.session(client.ip(), None) else {
        counter!(CONNECTIONS_REFUSED, "reason" => "per_ip_sessions").increment(1);
        return Located::Refused(Condition::ResourceConstraint, TOO_MANY_SESSIONS);
    };
    // Boxed: the Bridge call's state would otherwise enlarge the state of
    // every claimant, forwarded or not.
    match Box::pin(open_bridge(node, id, &owner, client, lane_at)).await {
        Ok(bridge) => Located::Bridged(bridge, share),
        Err(located) => located,
    }
}

/// Opens a Bridge to `owner` for the claimant at `client`; on success the
/// owner has claimed the registration (and answered a DTCP Initiator `OK`).
async fn open_bridge(
    node: &Node,
    id: &RegistrationId,
    owner: &NodeInfo,
    client: SocketAddr,
    lane_at: LaneAt,
) -> Result<Box<Halves>, Located> {
    let Some(dialer) = &node.dialer else {
        warn!(registration = %id, owner = %owner, "registration held by another node, and this node has no forwarding plane");
        let text = "the session is held by another node that cannot be reached";
        return Err(Located::Refused(Condition::Unavailable, text));
    };
    let format = node.formats.with(&owner.id);
    dialer
        .open(
            &owner.forward_addr,
            id.as_bytes(),
            &owner.id,
            client,
            lane_at,
            format,
        )
        .await
        .map(|bridge| {
            // As the owner answered it: 0 from a node that sends none.
            counter!(BRIDGE_FORMATS, "role" => "client", "format" => bridge_format_label(bridge.format))
                .increment(1);
            Box::new(bridge)
        })
        .map_err(|e| {
            let (reason, text) = match &e {
                BridgeError::NotFound => {
                    debug!(registration = %id, owner = %owner, "bridge: not found");
                    return Located::Gone;
                }
                BridgeError::Unreachable(_) => (
                    "unreachable",
                    "the node holding the session cannot be reached",
                ),
                BridgeError::Unauthenticated => (
                    "unauthenticated",
                    "the node holding the session refused this node",
                ),
                BridgeError::Protocol(_) => {
                    ("protocol", "the node holding the session answered nonsense")
                }
                // The owner's own policy, not a failure of the plane.
                BridgeError::Refused(condition) => {
                    debug!(registration = %id, owner = %owner, condition = condition.as_str(), "bridge: refused by the owner");
                    let text = "the node holding the session refused it";
                    return Located::Refused(*condition, text);
                }
            };
            counter!(BRIDGE_ERRORS, "role" => "client", "reason" => reason).increment(1);
            warn!(registration = %id, owner = %owner, error = %e, "bridge failed");
            Located::Refused(Condition::Unavailable, text)
        })
}
