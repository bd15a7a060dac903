//! The `Activate` call of XEP-0065 mode (see `proto/forward.proto`): one
//! request, one reply, framed as gRPC messages by hand like the Bridge.
//!
//! Its authenticator is [`PlaneAuth`]'s, for a registration field that is
//! not the registration id itself but [`binding`] of it: an authenticator
//! captured from an `Activate` call cannot open a Bridge to the same
//! registration, nor one captured from a Bridge activate it.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderValue, TE};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::body::Body;
use tonic::{Code, Status};

use crate::admission::Admission;
use crate::auth::{AuthFailure, PlaneAuth};
use crate::call;
use crate::claimer::Claimer;
use crate::dialer::Dialer;
use crate::proto::{ActivateReply, ActivateRequest};

/// The method's path.
pub(crate) const ACTIVATE_PATH: &str = "/dtcp.forward.v1.Forward/Activate";
/// The gRPC message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;
/// Largest request accepted (it is tens of bytes).
const MAX_REQUEST: usize = 1024;
/// How long the caller may take to send its request, and the owner to answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The domain-separation tag of an activation's authenticator.
const BINDING_TAG: &[u8] = b"dtcp-activate-v1\0";

/// What an `Activate` call's authenticator names in place of the
/// registration: SHA-256 of a tag and the registration id.
pub fn binding(registration: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(BINDING_TAG);
    h.update(registration);
    h.finalize().into()
}

/// Why an activation was not done by the owner.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// The owner has no such pair (one side never came, or left; or it is a
    /// different process than the one that registered it).
    #[error("no such pair on the owner node")]
    NotFound,
    /// The owner activated this pair before.
    #[error("the pair was activated before")]
    AlreadyActivated,
    /// The owner node could not be reached in time.
    #[error("owner node unreachable: {0}")]
    Unreachable(String),
    /// The owner refused this node's authenticator.
    #[error("the owner node refused this node's authenticator")]
    Unauthenticated,
    /// The owner answered something this node does not understand.
    #[error("activate protocol error: {0}")]
    Protocol(String),
}

impl From<Status> for ActivationError {
    fn from(status: Status) -> Self {
        match status.code() {
            Code::NotFound => ActivationError::NotFound,
            Code::AlreadyExists => ActivationError::AlreadyActivated,
            Code::Unauthenticated => ActivationError::Unauthenticated,
            Code::InvalidArgument | Code::Internal | Code::Unimplemented => {
                ActivationError::Protocol(status.message().to_owned())
            }
            _ => ActivationError::Unreachable(status.message().to_owned()),
        }
    }
}

/// A message behind its gRPC prefix.
fn framed(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    message.encode(&mut buf).expect("capacity reserved");
    buf.freeze()
}

/// The one message of a unary body: its bytes without the prefix.
fn unframed(mut bytes: Bytes) -> Result<Bytes, Status> {
    if bytes.len() < PREFIX {
        return Err(Status::invalid_argument("no message"));
    }
    if bytes.get_u8() != 0 {
        return Err(Status::invalid_argument(
            "compressed messages are not supported",
        ));
    }
    let len = bytes.get_u32() as usize;
    if bytes.len() != len {
        return Err(Status::invalid_argument("not one whole message"));
    }
    Ok(bytes)
}

impl Dialer {
    /// Asks the node at `addr` to activate the pair of its registration `id`.
    pub async fn activate(
        &self,
        addr: &str,
        id: &[u8; 32],
        owner_node_id: &str,
    ) -> Result<(), ActivationError> {
        let result = tokio::time::timeout(CALL_TIMEOUT, self.try_activate(addr, id, owner_node_id))
            .await
            .unwrap_or_else(|_| {
                Err(ActivationError::Unreachable(
                    "no answer from the owner node".into(),
                ))
            });
        if let Err(ActivationError::Unreachable(_)) = &result {
            // As for a Bridge: a node that is gone for good must not stay cached.
            self.forget(addr);
        }
        result
    }

    async fn try_activate(
        &self,
        addr: &str,
        id: &[u8; 32],
        owner_node_id: &str,
    ) -> Result<(), ActivationError> {
        let channel = self
            .channel(addr)
            .map_err(|e| ActivationError::Unreachable(e.to_string()))?;
        let message = ActivateRequest {
            registration_id: Bytes::copy_from_slice(id),
            owner_node_id: owner_node_id.to_owned(),
        };
        let mut request = Request::post(ACTIVATE_PATH)
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .body(Body::new(Full::new(framed(&message))))
            .expect("a valid request");
        self.auth().attach(
            request.headers_mut(),
            self.node_id(),
            owner_node_id,
            addr,
            &binding(id),
        )?;
        // Unreachable and refused alike come back as a status: `From<Status>`
        // sorts them.
        let response = call::send(channel, request).await?;
        let body = response.into_body().collect().await?;
        match body.trailers().and_then(Status::from_header_map) {
            Some(status) if status.code() == Code::Ok => {}
            Some(status) => return Err(status.into()),
            None => return Err(ActivationError::Protocol("no grpc-status".into())),
        }
        ActivateReply::decode(unframed(body.to_bytes())?)
            .map_err(|e| ActivationError::Protocol(e.to_string()))?;
        Ok(())
    }
}

/// Serves one `Activate` call on the owner: checks its authenticator, reads
/// its request, and lets the [`Claimer`] activate the pair.
pub(crate) async fn serve<C: Claimer>(
    claimer: &C,
    auth: &PlaneAuth,
    addr: &str,
    request: Request<Body>,
) -> Result<Response<Body>, Status> {
    let claimed = auth.check_now(request.headers(), addr).map_err(|f| {
        claimer.refused(f);
        Status::unauthenticated("the call's authenticator does not verify")
    })?;
    // The connection made a call that authenticates: off probation.
    Admission::admit_request(&request);
    let body = Limited::new(request.into_body(), MAX_REQUEST);
    let bytes = tokio::time::timeout(CALL_TIMEOUT, body.collect())
        .await
        .map_err(|_| Status::deadline_exceeded("no request"))?
        .map_err(|_| Status::invalid_argument("request too large or cut"))?
        .to_bytes();
    let message = ActivateRequest::decode(unframed(bytes)?)
        .map_err(|e| Status::invalid_argument(format!("bad request: {e}")))?;
    let id = <[u8; 32]>::try_from(message.registration_id.as_ref())
        .map_err(|_| Status::invalid_argument("a registration id is 32 bytes"))?;
    // The authenticator is good for this call, to this owner, for this pair.
    if let Some(claimed) = claimed
        && (claimed.registration != binding(&id) || claimed.callee != message.owner_node_id)
    {
        claimer.refused(AuthFailure::PlaneMac);
        return Err(Status::unauthenticated(
            "the call's authenticator does not verify",
        ));
    }
    claimer.activate(&id, &message.owner_node_id)?;
    let mut ok = HeaderMap::new();
    ok.insert("grpc-status", HeaderValue::from_static("0"));
    let frames: Vec<Result<http_body::Frame<Bytes>, Status>> = vec![
        Ok(http_body::Frame::data(framed(&ActivateReply {}))),
        Ok(http_body::Frame::trailers(ok)),
    ];
    let mut response = Response::new(Body::new(StreamBody::new(tokio_stream::iter(frames))));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use dtcp_wire::{Keyring, Secrets};

    use super::*;

    /// Records the activations it is asked for.
    #[derive(Default)]
    struct Owner(Mutex<Vec<[u8; 32]>>);

    impl Claimer for Owner {
        fn claim(
            &self,
            _: crate::proto::Open,
            _: &str,
            _: crate::codec::Halves,
        ) -> Result<(), Status> {
            Err(Status::not_found("no bridges here"))
        }

        fn activate(&self, id: &[u8; 32], _owner: &str) -> Result<(), Status> {
            self.0.lock().unwrap().push(*id);
            Ok(())
        }
    }

    /// A call to node `b` at `addr` for `id`, its authenticator naming `named`.
    fn call(auth: &PlaneAuth, addr: &str, id: [u8; 32], named: [u8; 32]) -> Request<Body> {
        let message = ActivateRequest {
            registration_id: Bytes::copy_from_slice(&id),
            owner_node_id: "b".into(),
        };
        let mut request = Request::post(ACTIVATE_PATH)
            .body(Body::new(Full::new(framed(&message))))
            .unwrap();
        auth.attach(request.headers_mut(), "a", "b", addr, &named)
            .unwrap();
        request
    }

    #[tokio::test]
    async fn only_an_authenticator_bound_to_the_activation_activates() {
        let auth = PlaneAuth::new(Some(Keyring::new(Secrets::from_lines("s"))));
        let owner = Owner::default();
        let id = [3u8; 32];
        // A Bridge's authenticator for the same registration: refused.
        let bridge_like = call(&auth, "10.0.0.2:7778", id, id);
        let err = serve(&owner, &auth, "10.0.0.2:7778", bridge_like)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        // Bound to another registration: refused.
        let other = call(&auth, "10.0.0.2:7778", id, binding(&[4u8; 32]));
        let err = serve(&owner, &auth, "10.0.0.2:7778", other)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(owner.0.lock().unwrap().is_empty());
        // Bound to this activation: served.
        let good = call(&auth, "10.0.0.2:7778", id, binding(&id));
        let response = serve(&owner, &auth, "10.0.0.2:7778", good).await.unwrap();
        assert_eq!(*owner.0.lock().unwrap(), [id]);
        let body = response.into_body().collect().await.unwrap();
        let trailers = body.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        ActivateReply::decode(unframed(body.to_bytes()).unwrap()).unwrap();
    }

    #[test]
    fn the_binding_is_not_the_registration() {
        let id = [7u8; 32];
        assert_ne!(binding(&id), id);
        assert_ne!(binding(&id), binding(&[8u8; 32]));
    }

    #[test]
    fn messages_frame_and_unframe() {
        let m = ActivateRequest {
            registration_id: Bytes::from_static(&[1; 32]),
            owner_node_id: "node-a".into(),
        };
        let back = ActivateRequest::decode(unframed(framed(&m)).unwrap()).unwrap();
        assert_eq!(back, m);
        assert!(unframed(Bytes::from_static(&[0, 0, 0])).is_err());
        assert!(unframed(Bytes::from_static(&[1, 0, 0, 0, 0])).is_err());
        assert!(unframed(Bytes::from_static(&[0, 0, 0, 0, 2, 9])).is_err());
    }
}
