//! The client protocols a node speaks on its one client port, told apart by
//! a connection's first byte: DTCP (docs/PROTOCOL.md sections 1 and 2) and, in
//! XEP-0065 mode, SOCKS5 (section 6).
//!
//! Low in the module tree: the pending table, the sessions and the metrics
//! all tell the two apart. What registering does differently for each is
//! in `pairing/dialect.rs`, as methods of [`Protocol`].

/// A client protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Protocol {
    /// `CREATE` and `CONNECT`.
    Dtcp,
    /// XEP-0065's SOCKS5 CONNECT by stream hash, paired by activation.
    Socks5,
}

impl Protocol {
    /// The `protocol` label of metrics and log lines.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Protocol::Dtcp => "dtcp",
            Protocol::Socks5 => "socks5",
        }
    }
}
