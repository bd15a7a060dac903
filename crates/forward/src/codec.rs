//! The Bridge call on the wire, framed by hand: its service name and path,
//! the frames toward the peer node ([`Outbound`], encoded as a body), the
//! frames from it ([`Inbound`] and its `next`), and the size limits of both.
//!
//! On the wire it is the gRPC method of `proto/forward.proto`: `Frame`
//! messages, each behind the 5-byte gRPC prefix, over one HTTP/2 stream per
//! session, ended by `grpc-status` trailers. tonic's codec would copy every
//! message into a buffer of its own on both ends; here a `data` frame's bytes
//! go from the socket read into HTTP/2 as the same `Bytes` (behind a header
//! of a few bytes), and from HTTP/2 to the socket write as slices of what h2
//! read. Only the small control frames (`open`, `paired`, `fin`, `error`) go
//! through prost.
//!
//! The call itself is in `call` (the dialing side) and `service` (the
//! owner's side).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http::header::HeaderValue;
use http_body::{Body as HttpBody, Frame as BodyFrame, SizeHint};
use http_body_util::BodyExt;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::body::Body;

use crate::FRAME_SIZE;
use crate::proto::Frame;
use crate::proto::frame::Kind;

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

/// Where frames toward the peer node go: the request body of a Bridge (on
/// the CONNECT node) or its response body (on the owner node).
#[derive(Debug, Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Frame>,
    dialing: bool,
}

impl Outbound {
    /// Frames sent into `tx`; `dialing` on the CONNECT node's side.
    pub(crate) fn new(tx: mpsc::Sender<Frame>, dialing: bool) -> Self {
        Outbound { tx, dialing }
    }

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
pub(crate) struct OutBody {
    rx: mpsc::Receiver<Frame>,
    /// A data frame's bytes, due right after the header just yielded.
    payload: Option<Bytes>,
    /// A response ends with `grpc-status` trailers; a request just ends.
    trailers: bool,
    done: bool,
}

impl OutBody {
    pub(crate) fn body(rx: mpsc::Receiver<Frame>, trailers: bool) -> Body {
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
    /// A frame read and given back ([`Inbound::unread`]), the next one out.
    unread: Option<Box<Kind>>,
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
    pub(crate) fn new(body: Body) -> Self {
        Inbound {
            body,
            chunk: Bytes::new(),
            head: BytesMut::new(),
            state: State::Prefix,
            unread: None,
        }
    }

    /// Gives `kind` back: it is the next frame [`Inbound::next`] returns.
    pub fn unread(&mut self, kind: Kind) {
        self.unread = Some(Box::new(kind));
    }

    /// The next frame, `None` once the peer ended the call cleanly, or the
    /// status it ended it with.
    pub async fn next(&mut self) -> Result<Option<Kind>, Status> {
        if let Some(kind) = self.unread.take() {
            return Ok(Some(*kind));
        }
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
    /// The dialing side's lane for the session, if the owner offered one
    /// (always [`LaneDial::NotOffered`] on the owner's side).
    pub lane: crate::lane::LaneDial,
    /// The `format` field of the peer's first frame, as it came: on the
    /// dialing side, the owner's `paired` (the format it uses); on the
    /// owner's side, the caller's `open` (the format it asks). 0 from a
    /// node that names none ([`crate::spoken_format`] gives the format).
    pub format: u32,
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
            Frame::open(
                &[7; 32],
                "node",
                "192.0.2.1:4000".parse().unwrap(),
                false,
                2,
            ),
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
