//! Attacks on this node's edge (see the suite's main module).
