//! Attacks on this node's store (see the suite's main module).
