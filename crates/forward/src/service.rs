//! The owner's side of the plane: [`BridgeService`], the router tonic's
//! server runs for the `dtcp.forward.v1.Forward` service. It sends an
//! `Activate` call to `crate::activate`, and serves a Bridge itself: the
//! call's authenticator checked, its `open` frame read and matched against
//! it, then the [`Claimer`] told to pair the session. (The plane's gRPC
//! health is a service of its own, in `health.rs`.)

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use tokio::sync::mpsc;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::FRAMES_IN_FLIGHT;
use crate::activate::{self, ACTIVATE_PATH};
use crate::admission::Admission;
use crate::auth::{AuthFailure, PlaneAuth};
use crate::claimer::Claimer;
use crate::codec::{Halves, Inbound, OutBody, Outbound, PATH, SERVICE};
use crate::proto::frame::Kind;

/// How long a Bridge caller may take to send its `open` frame.
const OPEN_FRAME_TIMEOUT: Duration = Duration::from_secs(3);
/// The Bridge service, for tonic's server: checks the call's authenticator
/// (`crate::auth`), reads the `open` frame, checks that it is the one the
/// authenticator names, and lets a [`Claimer`] pair the session.
#[derive(Debug)]
pub struct BridgeService<C> {
    claimer: Arc<C>,
    auth: PlaneAuth,
    /// The address this node advertises: calls must have dialed it.
    addr: Arc<str>,
}

impl<C> Clone for BridgeService<C> {
    fn clone(&self) -> Self {
        BridgeService {
            claimer: self.claimer.clone(),
            auth: self.auth.clone(),
            addr: self.addr.clone(),
        }
    }
}

impl<C: Claimer> BridgeService<C> {
    /// The service of the node advertised at `addr`, admitting calls that
    /// `auth` verifies.
    pub fn new(claimer: C, auth: PlaneAuth, addr: &str) -> Self {
        BridgeService {
            claimer: Arc::new(claimer),
            auth,
            addr: Arc::from(addr),
        }
    }

    fn refuse(&self, failure: AuthFailure) -> Status {
        self.claimer.refused(failure);
        Status::unauthenticated("the call's authenticator does not verify")
    }
}

impl<C> NamedService for BridgeService<C> {
    const NAME: &'static str = SERVICE;
}

impl<C: Claimer> tower::Service<Request<Body>> for BridgeService<C> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let response = if request.uri().path() == ACTIVATE_PATH {
                activate::serve(&*this.claimer, &this.auth, &this.addr, request).await
            } else {
                this.serve(request).await
            };
            Ok(response.unwrap_or_else(|status| status.into_http()))
        })
    }
}

impl<C: Claimer> BridgeService<C> {
    async fn serve(&self, request: Request<Body>) -> Result<Response<Body>, Status> {
        if request.uri().path() != PATH {
            return Err(Status::unimplemented("no such method"));
        }
        let claimed = self
            .auth
            .check_now(request.headers(), &self.addr)
            .map_err(|f| self.refuse(f))?;
        // The connection made a call that authenticates: off probation.
        Admission::admit_request(&request);
        let mut inbound = Inbound::new(request.into_body());
        let first = tokio::time::timeout(OPEN_FRAME_TIMEOUT, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no open frame"))??;
        let Some(Kind::Open(open)) = first else {
            return Err(Status::invalid_argument("the first frame must be open"));
        };
        // The authenticator is good for the one registration (and owner) it
        // names. The Target's address in `open` is not covered by it: the
        // owner only logs it, and a limit or access decision that keyed on
        // it would have to be (a new authenticator version). Until then it
        // is as trustworthy as the session's own bytes, which only the
        // plane's TLS protects, and it comes from a node that proved it
        // holds the cluster secret.
        if let Some(claimed) = &claimed
            && (claimed.registration[..] != open.registration_id[..]
                || claimed.callee != open.owner_node_id)
        {
            return Err(self.refuse(AuthFailure::PlaneMac));
        }
        let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
        let outbound = Outbound::new(tx, false);
        let caller = claimed.as_ref().map_or("", |c| c.caller.as_str());
        let halves = Halves {
            outbound,
            inbound,
            lane: crate::lane::LaneDial::NotOffered,
            format: open.format,
        };
        self.claimer.claim(open, caller, halves)?;
        let mut response = Response::new(OutBody::body(rx, true));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        Ok(response)
    }
}
