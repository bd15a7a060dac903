//! The `dtcp` tool's subcommands, one file each, and what they share:
//!
//! - `args.rs`: the arguments `send` and `recv` share, and what they mean
//!   (the session, `--listen` values, durations, the candidate list);
//! - `send.rs`: `dtcp send`, the Initiator;
//! - `recv.rs`: `dtcp recv`, the Target, asking until the sender is there;
//! - `progress.rs`: what the tool tells the person on standard error (the
//!   path taken, the progress bar, the closing line);
//! - `health.rs`: `dtcp health`, a relay's readiness for container checks;
//! - `keygen.rs`: `dtcp keygen`, a signed key for two JIDs.

pub(crate) mod args;
pub(crate) mod health;
pub(crate) mod keygen;
mod progress;
pub(crate) mod recv;
pub(crate) mod send;
