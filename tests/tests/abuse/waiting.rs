//! Attacks on this node's waiting (see the suite's main module).
