//! What the owner node does with the calls it serves: the [`Claimer`] trait,
//! which the relay implements to pair a Bridge with its Initiator's session
//! and to activate an XEP-0065 pair.

use tonic::Status;

use crate::auth::AuthFailure;
use crate::codec::Halves;
use crate::proto::Open;

/// What the owner node does with a Bridge once its `open` frame is in.
pub trait Claimer: Send + Sync + 'static {
    /// Claims the pending registration `open` names and hands `bridge` to
    /// its Initiator's session, or says why not. `caller`: the node that
    /// placed the call, as its authenticator names it (empty on an
    /// insecure plane).
    fn claim(&self, open: Open, caller: &str, bridge: Halves) -> Result<(), Status>;

    /// A call was refused before any claim, for `failure` (to be counted).
    fn refused(&self, failure: AuthFailure) {
        let _ = failure;
    }

    /// XEP-0065 mode: activates the pair of the registration `id`, which
    /// the store names `owner_node_id`'s; `NOT_FOUND` when the two
    /// connections are not both here, `ALREADY_EXISTS` when activated before.
    fn activate(&self, id: &[u8; 32], owner_node_id: &str) -> Result<(), Status> {
        let _ = (id, owner_node_id);
        Err(Status::unimplemented(
            "this node does not serve XEP-0065 activations",
        ))
    }
}
