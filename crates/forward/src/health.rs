//! gRPC health on the plane, for callers that hold the cluster secret only.
//!
//! The plane's port answers nodes: a health call carries an authenticator
//! like a Bridge's ([`crate::auth`]), whose registration field is
//! [`health_binding`] (so that no Bridge or Activate authenticator opens
//! it, nor the other way round), made out to this node's id and address.
//! Anyone else gets `unauthenticated`, before a byte of the request body is
//! read. Kubelet probes use `/healthz` and `/readyz` on the metrics
//! listener instead.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::admission::Admission;
use crate::auth::{AuthFailure, PlaneAuth};

/// The domain-separation tag of a health call's authenticator.
const BINDING_TAG: &[u8] = b"dtcp-health-v1\0";
/// How long an authenticated health call may take to send its request (a
/// `Check`'s whole call; a `Watch` until its stream of answers starts, which
/// then runs as long as the caller keeps it).
pub const HEALTH_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest health request decoded: a service name, tens of bytes (tonic's
/// default would buffer 4 MiB of a request that never completes).
pub const HEALTH_MAX_MESSAGE: usize = 1024;

/// What a health call's authenticator names in place of a registration:
/// SHA-256 of a tag.
pub fn health_binding() -> [u8; 32] {
    Sha256::digest(BINDING_TAG).into()
}

/// A service (gRPC health) that only callers with a good authenticator
/// reach; see the module's documentation.
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: PlaneAuth,
    /// The address this node advertises, and its id: calls are made out to both.
    addr: Arc<str>,
    node_id: Arc<str>,
    /// Told of every refused call (to count it).
    refused: fn(AuthFailure),
}

impl<S> Authenticated<S> {
    /// `inner` behind `auth`, for the node `node_id` advertised at `addr`.
    pub fn new(
        inner: S,
        auth: PlaneAuth,
        node_id: &str,
        addr: &str,
        refused: fn(AuthFailure),
    ) -> Self {
        Authenticated {
            inner,
            auth,
            addr: Arc::from(addr),
            node_id: Arc::from(node_id),
            refused,
        }
    }

    fn check<B>(&self, request: &Request<B>) -> Result<(), AuthFailure> {
        match self.auth.check_now(request.headers(), &self.addr)? {
            Some(claimed)
                if claimed.registration != health_binding() || *claimed.callee != *self.node_id =>
            {
                Err(AuthFailure::PlaneMac)
            }
            _ => Ok(()),
        }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<Request<Body>> for Authenticated<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if let Err(failure) = self.check(&request) {
            (self.refused)(failure);
            let status = Status::unauthenticated("the call's authenticator does not verify");
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Admission::admit_request(&request);
        // The clone that was made ready goes with the call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            match tokio::time::timeout(HEALTH_CALL_TIMEOUT, inner.call(request)).await {
                Ok(response) => response,
                Err(_) => Ok(Status::deadline_exceeded("no whole request in time").into_http()),
            }
        })
    }
}
