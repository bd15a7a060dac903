//! XEP-0065 mode's XMPP side (PROTOCOL.md section 6): the XEP-0114 component
//! link that an XMPP server (Prosody, ejabberd) uses to reach the relay as a
//! SOCKS5 Bytestreams proxy.
//!
//! The component answers disco#info (identity `proxy`/`bytestreams`), the
//! streamhost query (`<streamhost jid host port/>` from `--socks5-advertise`)
//! and `<activate>`. It computes the bytestream's hash, SHA1(sid + requester
//! + target) over JIDs normalised as the servers do, and hands an
//! [`Activation`] to the relay, which pairs the two SOCKS5 connections that
//! presented that hash and answers; the requester gets `result` or the
//! XEP-0065 stanza error.
//!
//! The link keeps itself up: whitespace keepalives, a ping through the server
//! after a silence, reconnects with exponential backoff and jitter, and, when
//! the server already has this component from another node (Prosody accepts
//! one connection per component), a standby that retries every
//! [`STANDBY_RETRY`] to take over when that node goes. Its [`LinkState`] is a
//! `watch` channel, for the relay's metric.
//!
//! ```no_run
//! # async fn relay() -> Result<(), dtcp_xmpp::ConfigError> {
//! use dtcp_xmpp::{Component, Secret, XmppConfig};
//!
//! let config = XmppConfig::new(
//!     "proxy.example.org",
//!     "127.0.0.1:5347",
//!     Secret::new("component secret"),
//!     "relay.example.org:7625",
//! )?
//! .allow_domains(["example.org"])?;
//! let (activator, mut activations) = dtcp_xmpp::channel(64);
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let component = Component::spawn(config, activator, shutdown.clone());
//! let state = component.state(); // LinkState: Down, Standby, Connected
//! while let Some(activation) = activations.recv().await {
//!     // Pair the two SOCKS5 connections of activation.hash, then:
//!     let _ = activation.reply.send(Ok(()));
//! }
//! # Ok(()) }
//! ```

mod activation;
mod config;
mod link;
mod service;

pub use activation::{ActivateError, Activation, Activator, channel};
pub use config::{
    ACTIVATION_TIMEOUT, Advertise, CONNECT_TIMEOUT, ConfigError, IDLE_TIMEOUT, KEEPALIVE_INTERVAL,
    PING_TIMEOUT, RECONNECT_MAX, RECONNECT_MIN, STANDBY_RETRY, Secret, Timings, XmppConfig,
};
pub use dtcp_wire::socks5::StreamHash;
pub use link::{Component, LinkState};
pub use service::NS_BYTESTREAMS;
