//! The dialing side of a plane call: [`call`] opens a Bridge (its request
//! sent, its response's head checked) and returns its two halves; [`send`]
//! places any plane call and checks the head of its response (the
//! `Activate` call uses it too). Which node to call, over which connection,
//! is the `Dialer`'s business.

use http::Request;
use http::header::{CONTENT_TYPE, TE};
use tokio::sync::mpsc;
use tonic::Status;

use crate::FRAMES_IN_FLIGHT;
use crate::auth::PlaneAuth;
use crate::codec::{Halves, Inbound, OutBody, Outbound, PATH};
use crate::proto::Frame;

/// Who places a call, to whom: what its authenticator names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallTo<'a> {
    pub(crate) caller: &'a str,
    pub(crate) callee: &'a str,
    pub(crate) addr: &'a str,
    pub(crate) registration: &'a [u8; 32],
}

/// The dialing side: sends the request, checks the response headers, and
/// returns the two halves. The first frame sent is `open`.
pub(crate) async fn call(
    channel: tonic::transport::Channel,
    auth: &PlaneAuth,
    to: CallTo<'_>,
    open: Frame,
) -> Result<Halves, Status> {
    let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
    tx.try_send(open).expect("a new channel has room");
    let mut request = Request::post(PATH)
        .header(CONTENT_TYPE, "application/grpc")
        .header(TE, "trailers")
        .body(OutBody::body(rx, false))
        .expect("a valid request");
    auth.attach(
        request.headers_mut(),
        to.caller,
        to.callee,
        to.addr,
        to.registration,
    )?;
    let response = send(channel, request).await?;
    Ok(Halves {
        outbound: Outbound::new(tx, true),
        inbound: Inbound::new(response.into_body()),
        lane: crate::lane::LaneDial::NotOffered,
        // Set once the owner's `paired` is in.
        format: 0,
    })
}

/// Sends one plane call (its authenticator attached) and checks the head of
/// its response: the node unreachable, or answering an HTTP status other
/// than 200, is `unavailable`; a refusal comes as a response of headers
/// only, and is that refusal.
pub(crate) async fn send(
    channel: tonic::transport::Channel,
    request: Request<tonic::body::Body>,
) -> Result<http::Response<tonic::body::Body>, Status> {
    let response = tower::ServiceExt::oneshot(channel, request)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    if response.status() != http::StatusCode::OK {
        return Err(Status::unavailable(format!(
            "the owner node answered HTTP {}",
            response.status()
        )));
    }
    if let Some(status) = Status::from_header_map(response.headers())
        && status.code() != tonic::Code::Ok
    {
        return Err(status);
    }
    Ok(response)
}
