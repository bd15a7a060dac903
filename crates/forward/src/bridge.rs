//! The Bridge call, framed by hand.
//!
//! On the wire it is the gRPC method of `proto/forward.proto`: `Frame`
//! messages, each behind the 5-byte gRPC prefix, over one HTTP/2 stream per
//! session, ended by `grpc-status` trailers. tonic's codec would copy every
//! message into a buffer of its own on both ends; here a `data` frame's bytes
//! go from the socket read into HTTP/2 as the same `Bytes` (behind a header
//! of a few bytes), and from HTTP/2 to the socket write as slices of what h2
//! read. Only the small control frames (`open`, `paired`, `fin`, `error`) go
//! through prost.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderValue, TE};
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame as BodyFrame, SizeHint};
use http_body_util::BodyExt;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::activate::{self, ACTIVATE_PATH};
use crate::admission::Admission;
use crate::auth::{AuthFailure, PlaneAuth};
use crate::proto::frame::Kind;
use crate::proto::{Frame, Open};
use crate::{FRAME_SIZE, FRAMES_IN_FLIGHT};

/// The gRPC service name, as `proto/forward.proto` declares it.
pub const SERVICE: &str = "dtcp.forward.v1.Forward";
/// The method's path.
pub(crate) const PATH: &str = "/dtcp.forward.v1.Forward/Bridge";
/// The gRPC message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;
/// `Frame.data` on the wire: field 3, length-delimited.
const DATA_TAG: u8 = (3 << 3) | 2;
/// Largest control message accepted (they are tens of bytes).
const MAX_CONTROL: usize = 16 * 1024;
/// Largest data message accepted: a peer sends at most [`FRAME_SIZE`]
/// bytes behind the field's tag and length (a few bytes; 16 is generous).
/// Its bytes are passed on as they arrive, never gathered whole.
const MAX_DATA: usize = FRAME_SIZE + 16;
/// How long a Bridge caller may take to send its `open` frame.
const OPEN_FRAME_TIMEOUT: Duration = Duration::from_secs(3);

/// Where frames toward the peer node go: the request body of a Bridge (on
/// the CONNECT node) or its response body (on the owner node).
#[derive(Debug, Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Frame>,
    dialing: bool,
}

impl Outbound {
    /// Whether this is the dialing (CONNECT node's) side of the call.
    pub fn is_dialing(&self) -> bool {
        self.dialing
    }

    /// Sends a frame, waiting while the stream is full (the backpressure).
    pub async fn send(&self, frame: Frame) -> Result<(), std::io::Error> {
        self.tx.send(frame).await.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "bridge stream closed")
        })
    }

    /// Sends a frame if there is room, without waiting.
    pub fn try_send(&self, frame: Frame) {
        let _ = self.tx.try_send(frame);
    }
}

/// One direction's body: the frames of an [`Outbound`], encoded.
struct OutBody {
    rx: mpsc::Receiver<Frame>,
    /// A data frame's bytes, due right after the header just yielded.
    payload: Option<Bytes>,
    /// A response ends with `grpc-status` trailers; a request just ends.
    trailers: bool,
    done: bool,
}

impl OutBody {
    fn body(rx: mpsc::Receiver<Frame>, trailers: bool) -> Body {
        Body::new(OutBody {
            rx,
            payload: None,
            trailers,
            done: false,
        })
    }
}

impl HttpBody for OutBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(payload) = this.payload.take() {
            return Poll::Ready(Some(Ok(BodyFrame::data(payload))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match ready!(this.rx.poll_recv(cx)) {
            Some(frame) => {
                let (head, payload) = encode(frame);
                this.payload = payload;
                Poll::Ready(Some(Ok(BodyFrame::data(head))))
            }
            None => {
                this.done = true;
                if this.trailers {
                    let mut ok = HeaderMap::new();
                    ok.insert("grpc-status", HeaderValue::from_static("0"));
                    Poll::Ready(Some(Ok(BodyFrame::trailers(ok))))
                } else {
                    Poll::Ready(None)
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.payload.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A frame as gRPC messages are sent: its prefix and protobuf encoding, and
/// for a data frame, its bytes as a second piece, not copied.
fn encode(frame: Frame) -> (Bytes, Option<Bytes>) {
    match frame.kind {
        Some(Kind::Data(data)) if !data.is_empty() => {
            let n = data.len();
            let varint = prost::encoding::encoded_len_varint(n as u64);
            let mut head = BytesMut::with_capacity(PREFIX + 1 + varint);
            head.put_u8(0);
            head.put_u32((1 + varint + n) as u32);
            head.put_u8(DATA_TAG);
            prost::encoding::encode_varint(n as u64, &mut head);
            (head.freeze(), Some(data))
        }
        kind => {
            let frame = Frame { kind };
            let len = frame.encoded_len();
            let mut buf = BytesMut::with_capacity(PREFIX + len);
            buf.put_u8(0);
            buf.put_u32(len as u32);
            frame.encode(&mut buf).expect("capacity reserved");
            (buf.freeze(), None)
        }
    }
}

/// Frames from the peer node: the response body of a Bridge (on the CONNECT
/// node) or its request body (on the owner node).
///
/// A data message comes out as one or more `Kind::Data` pieces, as HTTP/2
/// delivered it: each a slice of what h2 read, never copied.
#[derive(Debug)]
pub struct Inbound {
    body: Body,
    /// What the body delivered and the parser has not consumed.
    chunk: Bytes,
    /// A message prefix, or a control message, being put together.
    head: BytesMut,
    state: State,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// At a message boundary.
    Prefix,
    /// Inside a message of `len` bytes; its first bytes are in `head`.
    Message { len: usize },
    /// Inside a data message: `left` bytes of its payload to come.
    Data { left: usize },
}

impl Inbound {
    fn new(body: Body) -> Self {
        Inbound {
            body,
            chunk: Bytes::new(),
            head: BytesMut::new(),
            state: State::Prefix,
        }
    }

    /// The next frame, `None` once the peer ended the call cleanly, or the
    /// status it ended it with.
    pub async fn next(&mut self) -> Result<Option<Kind>, Status> {
        loop {
            match self.state {
                State::Data { left: 0 } => self.state = State::Prefix,
                State::Data { left } => {
                    if self.chunk.is_empty() && !self.fill().await? {
                        return Err(Status::internal("the bridge ended inside a message"));
                    }
                    let piece = self.chunk.split_to(left.min(self.chunk.len()));
                    self.state = State::Data {
                        left: left - piece.len(),
                    };
                    return Ok(Some(Kind::Data(piece)));
                }
                State::Prefix => {
                    if !self.gather(PREFIX).await? {
                        return if self.head.is_empty() {
                            Ok(None)
                        } else {
                            Err(Status::internal("the bridge ended inside a message"))
                        };
                    }
                    let mut prefix = self.head.split();
                    if prefix.get_u8() != 0 {
                        return Err(Status::internal(
                            "compressed bridge messages are not supported",
                        ));
                    }
                    let len = prefix.get_u32() as usize;
                    if len > MAX_DATA {
                        return Err(Status::internal("bridge message too large"));
                    }
                    self.state = State::Message { len };
                }
                State::Message { len } => {
                    if len > 1 && self.gather(1).await? && self.head[0] == DATA_TAG {
                        // A data frame: read its length, then pass its bytes on as they come.
                        let header = len.min(1 + 10);
                        let mut n = None;
                        for have in 2..=header {
                            if !self.gather(have).await? {
                                break;
                            }
                            let mut varint = &self.head[1..have];
                            if self.head[have - 1] & 0x80 == 0 {
                                n = prost::encoding::decode_varint(&mut varint).ok();
                                break;
                            }
                        }
                        let header = self.head.len();
                        let n = n.and_then(|n| usize::try_from(n).ok());
                        match n {
                            Some(n) if header.checked_add(n) == Some(len) => {
                                self.head.clear();
                                self.state = State::Data { left: n };
                            }
                            _ => return Err(Status::internal("malformed bridge data frame")),
                        }
                        continue;
                    }
                    if len > MAX_CONTROL {
                        return Err(Status::internal("bridge control message too large"));
                    }
                    if !self.gather(len).await? {
                        return Err(Status::internal("the bridge ended inside a message"));
                    }
                    let frame = Frame::decode(self.head.split())
                        .map_err(|e| Status::internal(format!("bad bridge frame: {e}")))?;
                    self.state = State::Prefix;
                    return match frame.kind {
                        Some(kind) => Ok(Some(kind)),
                        None => Err(Status::internal("empty bridge frame")),
                    };
                }
            }
        }
    }

    /// Copies bytes into `head` until it holds `n`; `false` if the body ended first.
    async fn gather(&mut self, n: usize) -> Result<bool, Status> {
        while self.head.len() < n {
            if self.chunk.is_empty() && !self.fill().await? {
                return Ok(false);
            }
            let take = (n - self.head.len()).min(self.chunk.len());
            self.head.extend_from_slice(&self.chunk.split_to(take));
        }
        Ok(true)
    }

    /// Takes the body's next data into `chunk`; `false` at its end. Trailers
    /// that carry an error status end it with that status.
    async fn fill(&mut self) -> Result<bool, Status> {
        loop {
            let Some(frame) = self.body.frame().await else {
                return Ok(false);
            };
            let frame = frame?;
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    self.chunk = data;
                    return Ok(true);
                }
                Err(frame) => {
                    if let Some(status) = frame.trailers_ref().and_then(Status::from_header_map)
                        && status.code() != tonic::Code::Ok
                    {
                        return Err(status);
                    }
                }
            }
        }
    }
}

/// Both halves of an open Bridge.
#[derive(Debug)]
pub struct Halves {
    /// Frames toward the peer node.
    pub outbound: Outbound,
    /// Frames from it.
    pub inbound: Inbound,
}

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
        outbound: Outbound { tx, dialing: true },
        inbound: Inbound::new(response.into_body()),
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

/// What the owner node does with a Bridge once its `open` frame is in.
pub trait Claimer: Send + Sync + 'static {
    /// Claims the pending registration `open` names and hands `bridge` to
    /// its Initiator's session, or says why not.
    fn claim(&self, open: Open, bridge: Halves) -> Result<(), Status>;

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
        if let Some(claimed) = claimed
            && (claimed.registration[..] != open.registration_id[..]
                || claimed.callee != open.owner_node_id)
        {
            return Err(self.refuse(AuthFailure::PlaneMac));
        }
        let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
        let outbound = Outbound { tx, dialing: false };
        self.claimer.claim(open, Halves { outbound, inbound })?;
        let mut response = Response::new(OutBody::body(rx, true));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that delivers `chunks` as they are, then trailers.
    fn body_of(chunks: Vec<Bytes>, trailers: Option<HeaderMap>) -> Body {
        let mut frames: Vec<Result<BodyFrame<Bytes>, Status>> =
            chunks.into_iter().map(|c| Ok(BodyFrame::data(c))).collect();
        if let Some(t) = trailers {
            frames.push(Ok(BodyFrame::trailers(t)));
        }
        Body::new(http_body_util::StreamBody::new(tokio_stream::iter(frames)))
    }

    fn wire(frames: Vec<Frame>) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            let (head, payload) = encode(f);
            out.extend_from_slice(&head);
            if let Some(p) = payload {
                out.extend_from_slice(&p);
            }
        }
        out
    }

    async fn read_all(mut inbound: Inbound) -> Result<(Vec<u8>, Vec<Kind>), Status> {
        let (mut data, mut control) = (Vec::new(), Vec::new());
        while let Some(kind) = inbound.next().await? {
            match kind {
                Kind::Data(d) => data.extend_from_slice(&d),
                other => control.push(other),
            }
        }
        Ok((data, control))
    }

    #[tokio::test]
    async fn frames_cross_in_any_split_and_match_prost() {
        let payload: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let frames = vec![
            Frame::open(&[7; 32], "node", "192.0.2.1:4000".parse().unwrap()),
            Frame::data(Bytes::from(payload.clone())),
            Frame::data(Bytes::from_static(b"x")),
            Frame::fin(),
        ];
        let bytes = wire(frames.clone());
        // What we send is what prost (and so any gRPC peer) would send.
        let mut by_prost = Vec::new();
        for f in &frames {
            by_prost.push(0);
            by_prost.extend_from_slice(&(f.encoded_len() as u32).to_be_bytes());
            by_prost.extend_from_slice(&f.encode_to_vec());
        }
        assert_eq!(bytes, by_prost);
        for split in [1, 2, 3, 5, 6, 7, 1000, 65_536, bytes.len()] {
            let chunks = bytes.chunks(split).map(Bytes::copy_from_slice).collect();
            let (data, control) = read_all(Inbound::new(body_of(chunks, None))).await.unwrap();
            assert_eq!(data.len(), payload.len() + 1, "split {split}");
            assert_eq!(&data[..payload.len()], &payload[..]);
            assert_eq!(control.len(), 2, "open and fin, split {split}");
            assert!(matches!(control[0], Kind::Open(_)));
            assert!(matches!(control[1], Kind::Fin(_)));
        }
    }

    #[tokio::test]
    async fn a_data_message_in_one_chunk_is_not_copied() {
        let payload = Bytes::from(vec![9u8; 4096]);
        let mut bytes = BytesMut::from(&wire(vec![Frame::data(payload)])[..]);
        let whole = bytes.split().freeze();
        let start = whole.as_ptr() as usize;
        let mut inbound = Inbound::new(body_of(vec![whole], None));
        let Some(Kind::Data(piece)) = inbound.next().await.unwrap() else {
            panic!("expected data");
        };
        assert_eq!(piece.len(), 4096);
        let offset = piece.as_ptr() as usize - start;
        assert_eq!(
            offset,
            PREFIX + 1 + 2,
            "a slice of the chunk, behind the headers"
        );
    }

    #[tokio::test]
    async fn errors_are_reported() {
        let mut failed = HeaderMap::new();
        failed.insert("grpc-status", HeaderValue::from_static("5"));
        let err = read_all(Inbound::new(body_of(vec![], Some(failed))))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);

        let cut = wire(vec![Frame::data(Bytes::from_static(b"hello"))]);
        let chunks = vec![Bytes::copy_from_slice(&cut[..cut.len() - 2])];
        assert!(read_all(Inbound::new(body_of(chunks, None))).await.is_err());

        let compressed = vec![Bytes::from_static(&[1, 0, 0, 0, 0])];
        assert!(
            read_all(Inbound::new(body_of(compressed, None)))
                .await
                .is_err()
        );

        let huge = vec![Bytes::from_static(&[0, 0x7f, 0xff, 0xff, 0xff])];
        assert!(read_all(Inbound::new(body_of(huge, None))).await.is_err());

        // A data header whose length disagrees with the message's.
        let bad = vec![Bytes::from_static(&[
            0, 0, 0, 0, 4, DATA_TAG, 5, b'a', b'b',
        ])];
        assert!(read_all(Inbound::new(body_of(bad, None))).await.is_err());
    }

    #[tokio::test]
    async fn the_out_body_ends_with_trailers_only_as_a_response() {
        for trailers in [true, false] {
            let (tx, rx) = mpsc::channel(4);
            tx.send(Frame::data(Bytes::from_static(b"abc")))
                .await
                .unwrap();
            drop(tx);
            let collected = OutBody::body(rx, trailers).collect().await.unwrap();
            assert_eq!(collected.trailers().is_some(), trailers);
            let bytes = collected.to_bytes();
            assert_eq!(
                &bytes[..],
                &wire(vec![Frame::data(Bytes::from_static(b"abc"))])[..]
            );
        }
    }
}
