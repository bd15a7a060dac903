//! Moving bytes between the two ends of a session, and nothing else.
//!
//! Everything a dtcp-relay session does with its client sockets once it is
//! paired lives here, whether both ends are sockets of this node or one is a
//! Bridge to another node:
//!
//! - [`Duplex`], the pump between two sockets: both directions at once, each
//!   half-closed on its own, early bytes first, through splice(2) on Linux
//!   (pooled pipes) or a copy through user space;
//! - [`StreamDuplex`], the same pump between a socket and a stream over
//!   another socket ([`OverTcp`]: a TLS lane), copied through user space;
//! - [`Buf`], the one pool of read buffers, shared by [`Duplex`]'s copy and by
//!   the forwarding plane, which hands a buffer on as [`bytes::Bytes`]
//!   ([`Buf::freeze`]);
//! - [`Gate`] and [`Gates`], the rate caps a direction asks once per read (the
//!   caps themselves belong to the caller);
//! - [`reset_on_close`], [`pass_fin`] and [`write_all`] on a socket shared by
//!   a reader and a writer;
//! - [`write_and_linger`], a refusal's last write: the reply, then a graceful
//!   close that does not turn into a reset destroying it;
//! - [`ACCEPT_BACKOFF`], the pause of an accept loop after a failed `accept`,
//!   the same for every listener that hands sockets to a session.
//!
//! It knows no protocol, no metric and no session bookkeeping: callers count
//! what [`Duplex::moved`] reports and decide what an end means.

mod gate;
mod linger;
#[cfg(target_os = "linux")]
mod pipe;
mod pool;
mod pump;
mod socket;
mod stream;
#[cfg(test)]
mod test_support;

pub use gate::{Gate, Gates};
pub use linger::{LINGER, LINGER_BYTES, REPLY_WRITE_TIMEOUT, write_and_linger};
pub use pool::{BUF_SIZE, Buf};
pub use pump::Duplex;
pub use socket::{pass_fin, peek_now, reset_on_close, write_all};
pub use stream::{OverTcp, StreamDuplex};

/// Pause after an `accept` that failed for lack of descriptors (or for any
/// reason not the one connection's), so that an accept loop does not spin
/// while the condition lasts. The relay's client and metrics ports and a
/// client's direct listener all wait this long.
pub const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
