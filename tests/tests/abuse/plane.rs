//! Attacks on this node's plane (see the suite's main module).
