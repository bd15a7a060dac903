//! The XEP-0114 component link: connect, authenticate, serve IQs, keep the
//! link alive, and reconnect, as a standby when the server already has this
//! component from another node.
//!
//! The XML stream is tokio-xmpp's (its `xmlstream` layer, which reads
//! stanzas into xmpp-parsers types). Its ready-made `Component` is not used:
//! it ends on the first idle read timeout, cannot tell a `conflict` (another
//! node holds the component) from a wrong secret, and cannot write a
//! whitespace keepalive. This module does those three things around the
//! same stream.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use backon::{ConstantBuilder, ExponentialBuilder, Retryable};
use futures_util::{SinkExt, StreamExt};
use jid::Jid;
use minidom::Element;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tokio_util::sync::CancellationToken;
use tokio_xmpp::Stanza;
use tokio_xmpp::parsers::component::Handshake;
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::ns;
use tokio_xmpp::parsers::ping::Ping;
use tokio_xmpp::parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};
use tokio_xmpp::parsers::stream_error::DefinedCondition as StreamCondition;
use tokio_xmpp::xmlstream::{
    FallibleStreamElement, ReadError, StreamElementError, StreamHeader, Timeouts, XmppStream,
    XmppStreamElement, initiate_stream,
};
use tracing::{debug, info, warn};

use crate::service::{Handled, NoAnswer, Service};
use crate::{Activation, Activator, XmppConfig};

/// Answers waiting for the link task to write them.
const OUTGOING_CAPACITY: usize = 256;

/// How long a closing link may take to send its stream footer.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The id prefix of the component's keepalive pings.
const PING_ID_PREFIX: &str = "dtcp-keepalive-";

/// The state of the component link, for the relay's metric (and `/readyz`
/// where it must be).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// Not connected: connecting, or waiting to retry after an error.
    Down,
    /// The server refused this node because another node is connected as
    /// the same component (Prosody's default); retrying often, to take over
    /// within seconds when that node goes.
    Standby,
    /// Connected and authenticated: this node answers the component's IQs.
    Connected,
}

impl LinkState {
    /// Lowercase, for metric labels and logs.
    pub const fn label(self) -> &'static str {
        match self {
            LinkState::Down => "down",
            LinkState::Standby => "standby",
            LinkState::Connected => "connected",
        }
    }

    /// Every state, for zeroed metric series.
    pub const ALL: [LinkState; 3] = [LinkState::Down, LinkState::Standby, LinkState::Connected];
}

/// A running component link, started by [`Component::spawn`].
#[derive(Debug)]
pub struct Component {
    state: watch::Receiver<LinkState>,
    task: JoinHandle<()>,
}

impl Component {
    /// Starts the link in a task of its own: it connects to `config.server`,
    /// reconnects for ever (with backoff and jitter, or as a standby), hands
    /// each activation to `activator`, and stops when `shutdown` is cancelled.
    ///
    /// The relay keeps relaying whatever the link does: nothing here waits
    /// for the link to be up.
    pub fn spawn(config: XmppConfig, activator: Activator, shutdown: CancellationToken) -> Self {
        let (state_tx, state) = watch::channel(LinkState::Down);
        let service = Service::new(
            Jid::from(config.component.clone()),
            config.advertise.clone(),
            config.allow_domains.clone(),
        );
        let link = Link {
            config,
            service,
            activator,
            state: state_tx,
        };
        let task = tokio::spawn(async move { link.run(shutdown).await });
        Component { state, task }
    }

    /// The link's state, now and as it changes.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// Waits for the link task to end (after the shutdown token is cancelled,
    /// it closes the stream and returns).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Why a link attempt or a link ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("no answer within the connect timeout")]
    ConnectTimeout,
    #[error("another connection holds the component")]
    Conflict,
    #[error("the server refused the component: {0}")]
    Refused(String),
    #[error("the server closed the stream")]
    Closed,
}

impl LinkError {
    fn is_conflict(&self) -> bool {
        matches!(self, LinkError::Conflict)
    }
}

type Stream = XmppStream<BufReader<SharedTcp>>;

/// An authenticated component stream.
struct Open {
    stream: Stream,
    /// The same socket, for whitespace keepalives between stanzas.
    tcp: SharedTcp,
}

struct Link {
    config: XmppConfig,
    service: Service,
    activator: Activator,
    state: watch::Sender<LinkState>,
}

impl Link {
    async fn run(self, shutdown: CancellationToken) {
        let component = self.config.component.to_string();
        let server = self.config.server.clone();
        loop {
            let open = tokio::select! {
                _ = shutdown.cancelled() => break,
                open = self.connect() => open,
            };
            self.set_state(LinkState::Connected);
            info!(%component, %server, "XMPP component link connected");
            let result = self.serve(open, &shutdown).await;
            self.set_state(LinkState::Down);
            match result {
                Ok(()) => break,
                Err(error) => warn!(%component, %server, %error, "XMPP component link lost"),
            }
        }
        self.set_state(LinkState::Down);
    }

    fn set_state(&self, state: LinkState) {
        self.state
            .send_if_modified(|s| std::mem::replace(s, state) != state);
    }

    /// Connects until a link is up: with exponential backoff while the server
    /// cannot be reached or refuses, at the short standby interval while it
    /// says another node holds the component.
    async fn connect(&self) -> Open {
        let t = &self.config.timings;
        loop {
            let down = ExponentialBuilder::new()
                .with_min_delay(t.reconnect_min)
                .with_max_delay(t.reconnect_max)
                .with_jitter()
                .without_max_times();
            let attempt = (|| self.open())
                .retry(down)
                .when(|e| !e.is_conflict())
                .notify(|error, retry_in| {
                    self.set_state(LinkState::Down);
                    warn!(server = %self.config.server, %error, ?retry_in, "XMPP component link down");
                })
                .await;
            if let Ok(open) = attempt {
                return open;
            }
            self.set_state(LinkState::Standby);
            info!(component = %self.config.component, "another node holds the XMPP component: standing by");
            let standby = ConstantBuilder::new()
                .with_delay(t.standby_retry)
                .with_jitter()
                .without_max_times();
            tokio::time::sleep(t.standby_retry).await;
            let attempt = (|| self.open())
                .retry(standby)
                .when(LinkError::is_conflict)
                .await;
            match attempt {
                Ok(open) => return open,
                Err(error) => warn!(%error, "XMPP component standby ended"),
            }
        }
    }

    /// One attempt: TCP, the stream header, the XEP-0114 handshake.
    async fn open(&self) -> Result<Open, LinkError> {
        let t = &self.config.timings;
        let attempt = async {
            let tcp = TcpStream::connect(&self.config.server).await?;
            // Activation answers are small and latency matters.
            tcp.set_nodelay(true)?;
            let tcp = SharedTcp(Arc::new(tcp));
            let timeouts = Timeouts {
                read_timeout: t.idle_timeout,
                response_timeout: t.ping_timeout,
            };
            let header = StreamHeader {
                to: Some(self.config.component.to_string().into()),
                from: None,
                id: None,
            };
            let mut pending =
                initiate_stream(BufReader::new(tcp.clone()), ns::COMPONENT, header, timeouts)
                    .await?;
            let id = pending
                .take_header()
                .id
                .ok_or_else(|| LinkError::Refused("no stream id".into()))?;
            let mut stream: Stream = pending.skip_features();
            let handshake = Handshake::from_stream_id_and_password(
                id.into_owned(),
                self.config.secret.expose(),
            );
            stream
                .send(&XmppStreamElement::ComponentHandshake(handshake))
                .await?;
            loop {
                match stream.next().await {
                    Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::ComponentHandshake(
                        _,
                    )))) => return Ok(Open { stream, tcp }),
                    Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::StreamError(e)))) => {
                        return Err(stream_error(e.0));
                    }
                    Some(Ok(other)) => {
                        return Err(LinkError::Refused(format!("unexpected {other:?}")));
                    }
                    Some(Err(ReadError::SoftTimeout)) => continue,
                    Some(Err(ReadError::HardError(e))) => return Err(e.into()),
                    Some(Err(ReadError::ParseError(e))) => {
                        return Err(LinkError::Refused(e.to_string()));
                    }
                    Some(Err(ReadError::StreamFooterReceived)) | None => {
                        return Err(LinkError::Closed);
                    }
                }
            }
        };
        timeout(t.connect_timeout, attempt)
            .await
            .unwrap_or(Err(LinkError::ConnectTimeout))
    }

    /// Serves an open link until it fails (`Err`) or `shutdown` (`Ok`).
    async fn serve(&self, open: Open, shutdown: &CancellationToken) -> Result<(), LinkError> {
        let Open { mut stream, tcp } = open;
        let (out_tx, mut out_rx) = mpsc::channel::<Iq>(OUTGOING_CAPACITY);
        let every = self.config.timings.keepalive;
        let mut keepalive = interval_at(Instant::now() + every, every);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut pings = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let close = SinkExt::<&XmppStreamElement>::close(&mut stream);
                    let _ = timeout(CLOSE_TIMEOUT, close).await;
                    return Ok(());
                }
                item = stream.next() => match item {
                    Some(Ok(FallibleStreamElement::Ok(element))) => {
                        if let Some(answer) = self.receive(element, &out_tx)? {
                            send(&mut stream, answer).await?;
                        }
                    }
                    Some(Ok(FallibleStreamElement::Err(error))) => {
                        if let Some(answer) = self.malformed(error) {
                            send(&mut stream, answer).await?;
                        }
                    }
                    Some(Err(ReadError::SoftTimeout)) => {
                        // The server has been silent: a ping to ourselves goes
                        // through it and back, so any answer proves the link.
                        pings += 1;
                        let me = Jid::from(self.config.component.clone());
                        let ping = Iq::Get {
                            from: Some(me.clone()),
                            to: Some(me),
                            id: format!("{PING_ID_PREFIX}{pings}"),
                            payload: Element::from(Ping),
                        };
                        send(&mut stream, ping).await?;
                    }
                    Some(Err(ReadError::ParseError(error))) => {
                        debug!(%error, "unparsable element from the XMPP server, skipped");
                    }
                    Some(Err(ReadError::HardError(e))) => return Err(e.into()),
                    Some(Err(ReadError::StreamFooterReceived)) | None => return Err(LinkError::Closed),
                },
                Some(answer) = out_rx.recv() => send(&mut stream, answer).await?,
                _ = keepalive.tick() => {
                    // Between stanzas (every send above has been flushed), a
                    // space is a valid whitespace keepalive. A full socket
                    // buffer means bytes are flowing anyway.
                    match tcp.0.try_write(b" ") {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }

    /// Handles one element from the server; `Some` is an answer to send now.
    fn receive(
        &self,
        element: XmppStreamElement,
        out: &mpsc::Sender<Iq>,
    ) -> Result<Option<Iq>, LinkError> {
        match element {
            XmppStreamElement::Stanza(Stanza::Iq(iq)) => match self.service.handle(iq) {
                Handled::Reply(answer) => Ok(Some(*answer)),
                Handled::Ignore => Ok(None),
                Handled::Activate(pending) => {
                    self.activate(pending, out.clone());
                    Ok(None)
                }
            },
            XmppStreamElement::StreamError(e) => Err(stream_error(e.0)),
            // Messages and presences are not for a proxy.
            _ => Ok(None),
        }
    }

    /// Hands an activation to the relay in a task of its own, so a slow
    /// activation (another node, the store) holds up no other stanza.
    fn activate(&self, pending: crate::service::PendingActivation, out: mpsc::Sender<Iq>) {
        let activator = self.activator.clone();
        let service = self.service.clone();
        let limit = self.config.timings.activation_timeout;
        tokio::spawn(async move {
            let (reply, answer) = oneshot::channel();
            let activation = Activation {
                hash: pending.hash,
                sid: pending.sid.clone(),
                requester: pending.requester.to_string(),
                target: pending.target.to_string(),
                reply,
            };
            debug!(hash = %pending.hash, sid = %pending.sid, "activation requested");
            let outcome = timeout(limit, async {
                activator
                    .send(activation)
                    .await
                    .map_err(|_| NoAnswer::Gone)?;
                answer.await.map_err(|_| NoAnswer::Gone)
            })
            .await
            .unwrap_or(Err(NoAnswer::Timeout));
            // If the link went down meanwhile the answer is lost; the
            // requester's own IQ timeout covers that.
            let _ = out.send(pending.answer(&service, outcome)).await;
        });
    }

    /// A stanza that did not parse: a `get` or `set` IQ gets `bad-request`
    /// (RFC 6120 requires an answer); anything else is dropped.
    fn malformed(&self, error: StreamElementError) -> Option<Iq> {
        debug!(?error, "malformed stanza from the XMPP server");
        let StreamElementError::InvalidStanza { header, .. } = error else {
            return None;
        };
        if !matches!(header.type_.as_deref(), Some("get" | "set")) {
            return None;
        }
        Some(Iq::Error {
            from: Some(Jid::from(self.config.component.clone())),
            to: header.from.and_then(|f| f.parse().ok()),
            id: header.id?,
            error: StanzaError::new(
                ErrorType::Modify,
                DefinedCondition::BadRequest,
                "en",
                "malformed request",
            ),
            payload: None,
        })
    }
}

async fn send(stream: &mut Stream, iq: Iq) -> Result<(), LinkError> {
    stream
        .send(&XmppStreamElement::Stanza(Stanza::Iq(iq)))
        .await
        .map_err(LinkError::Io)
}

fn stream_error(e: tokio_xmpp::parsers::stream_error::StreamError) -> LinkError {
    match e.condition {
        StreamCondition::Conflict => LinkError::Conflict,
        _ => LinkError::Refused(e.to_string()),
    }
}

/// A TCP stream that both the XML stream and the keepalive can write to.
///
/// tokio's `TcpStream` can be read and written through a shared reference
/// (`try_read`, `try_write`); this gives the XML stream the usual traits on
/// one handle and keeps another for the whitespace keepalive.
#[derive(Debug, Clone)]
struct SharedTcp(Arc<TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}
