//! XEP-0065 mode's XMPP side (docs/PROTOCOL.md section 6): the XEP-0114 component
//! link that an XMPP server (Prosody, ejabberd) uses to reach the relay as a
//! SOCKS5 Bytestreams proxy.
//!
//! The component answers disco#info (identity `proxy`/`bytestreams`), the
//! streamhost query (`<streamhost jid host port/>` from `--socks5-advertise`)
//! and `<activate>`. It computes the bytestream's hash,
//! `SHA1(sid + requester + target)` over JIDs normalised as the servers do,
//! and hands an
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
//! # Servers
//!
//! Prosody (0.12) accepts one connection per component: with its default
//! `component_conflict_resolve = "kick_new"` a second node connecting as the
//! same component is refused with a `conflict` stream error, and that node
//! becomes a [`LinkState::Standby`] that takes over within about a second of
//! the connected node going (measured in `tests/tests/xmpp.rs`). Do not set
//! `kick_old`: the nodes would take the component from each other in turn.
//!
//! ```lua
//! component_ports = { 5347 }
//! component_interfaces = { "10.0.0.5" }
//! Component "proxy.example.org"
//!     component_secret = "the --xmpp-secret"
//! -- and on the VirtualHost, so that clients find the proxy:
//! disco_items = { { "proxy.example.org", "SOCKS5 Bytestreams Service" } }
//! ```
//!
//! ejabberd's `ejabberd_service` listener is configured with the same
//! component name and secret (`hosts: proxy.example.org: password: ...`).
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
