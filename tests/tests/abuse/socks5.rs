//! Attacks on this node's socks5 (see the suite's main module).
