//! XEP-0065 mode's component on this node: the XMPP link (`dtcp_xmpp`), its
//! state as the `dtcp_xmpp_link` gauge, and the activations it asks for.
//!
//! An activation names a stream hash. The pair of that hash is held by the
//! node that holds its waiter (the registration's owner): this node, or
//! another that the store names, asked over the plane with an `Activate`
//! call. Either way the owner decides, exactly once (`activation`).

use std::sync::Arc;

use dtcp_forward::ActivationError;
use dtcp_wire::RegistrationId;
use dtcp_xmpp::{ActivateError, Activation, Component, LinkState, XmppConfig};
use metrics::{counter, gauge};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::activation::Activated;
use crate::metrics::{ACTIVATIONS, XMPP_LINK};
use crate::node::Node;
use crate::pairing::locate::{Owner, check_owner};

/// Activations the component may hand over before the relay picks them up
/// (each waits at most the component's activation timeout).
const ACTIVATION_QUEUE: usize = 64;

/// The running component and the tasks beside it.
#[derive(Debug)]
pub(crate) struct Running {
    /// Stops the link.
    shutdown: CancellationToken,
    component: Component,
    tasks: [JoinHandle<()>; 2],
}

impl Running {
    /// Stops the link (so that a standby node takes the component over) and
    /// waits for it to close.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        self.component.stopped().await;
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Starts the component link and the activations' consumer.
pub(crate) fn start(node: Arc<Node>, config: XmppConfig) -> Running {
    info!(component = %config.component, server = %config.server, "XEP-0065 mode: connecting the XMPP component");
    let (activator, activations) = dtcp_xmpp::channel(ACTIVATION_QUEUE);
    let shutdown = CancellationToken::new();
    let component = Component::spawn(config, activator, shutdown.clone());
    let mut state = component.state();
    let link = tokio::spawn(async move {
        loop {
            let now = *state.borrow_and_update();
            for s in LinkState::ALL {
                let on = if s == now { 1.0 } else { 0.0 };
                gauge!(XMPP_LINK, "state" => s.label()).set(on);
            }
            info!(state = now.label(), "XMPP component link");
            if state.changed().await.is_err() {
                return;
            }
        }
    });
    let serve = tokio::spawn(serve(node, activations));
    Running {
        shutdown,
        component,
        tasks: [link, serve],
    }
}

/// Answers each activation in a task of its own (the plane call to another
/// node may take up to its timeout).
async fn serve(node: Arc<Node>, mut activations: mpsc::Receiver<Activation>) {
    while let Some(activation) = activations.recv().await {
        let id = RegistrationId::of_stream(&activation.hash);
        let span = info_span!("activation", registration = %id);
        let node = node.clone();
        tokio::spawn(
            async move {
                let (outcome, answer) = activate(&node, &id).await;
                counter!(ACTIVATIONS, "outcome" => outcome).increment(1);
                debug!(outcome, "activation");
                // The component answers the requester's IQ from this.
                let _ = activation.reply.send(answer);
            }
            .instrument(span),
        );
    }
}

/// Activates the pair of `id`: here if it is here, else on its owner. The
/// `outcome` label, and the component's answer.
async fn activate(node: &Node, id: &RegistrationId) -> (&'static str, Result<(), ActivateError>) {
    let here = node.activations.activate(id);
    match here {
        Activated::Now => return (here.label(), Ok(())),
        Activated::Already => return (here.label(), Err(ActivateError::NotFound)),
        // Not here: in a cluster, perhaps on another node.
        Activated::NotFound if !node.cluster => {
            return (here.label(), Err(ActivateError::NotFound));
        }
        Activated::NotFound => {}
    }
    let not_found = (Activated::NotFound.label(), Err(ActivateError::NotFound));
    let owner = match node.store.lookup(id).await {
        Ok(Some(owner)) => owner,
        Ok(None) => return not_found,
        Err(e) => {
            warn!(error = %e, "store lookup failed");
            return ("failed", Err(ActivateError::Failed));
        }
    };
    let owner = match check_owner(node, id, owner) {
        Owner::Other(owner) => owner,
        Owner::Used | Owner::Ours => return not_found,
        Owner::Unsealed => return ("failed", Err(ActivateError::Failed)),
    };
    let Some(dialer) = &node.dialer else {
        return not_found;
    };
    match dialer
        .activate(&owner.forward_addr, id.as_bytes(), &owner.id)
        .await
    {
        Ok(()) => (Activated::Now.label(), Ok(())),
        Err(ActivationError::NotFound) => not_found,
        Err(ActivationError::AlreadyActivated) => {
            (Activated::Already.label(), Err(ActivateError::NotFound))
        }
        Err(e) => {
            // A node that died holding one side: its pair is gone with it.
            warn!(owner = %owner, error = %e, "activation on the owner node failed");
            ("failed", Err(ActivateError::Failed))
        }
    }
}
