//! The `dtcp` tool's subcommands, one file each, and what they share:
//!
//! - `args.rs`: the arguments `send` and `recv` share, and what they mean
//!   (the session, `--listen` values, durations, the candidate list);
//! - `send.rs`: `dtcp send`, the Initiator;
//! - `recv.rs`: `dtcp recv`, the Target, asking until the sender is there;
//! - `secret.rs`: a key or a code from a file, stdin, the environment or a
//!   prompt, never from the command line in the documented flows;
//! - `files.rs`: what is sent (file, directory as tar, stdin) and where it
//!   lands (`.part`, no overwrite without `--overwrite`); `unpack.rs`: a
//!   received directory, checked entry by entry;
//! - `exit.rs`: exit statuses per kind of failure, and `--json`;
//! - `progress.rs`: what the tool tells the person on standard error (the
//!   path taken, the progress bar, the closing line);
//! - `health.rs`: `dtcp health`, a relay's readiness for container checks;
//! - `keygen.rs`: `dtcp keygen`, a signed key for two JIDs.

pub(crate) mod args;
pub(crate) mod exit;
mod files;
pub(crate) mod health;
pub(crate) mod keygen;
mod progress;
pub(crate) mod recv;
mod secret;
pub(crate) mod send;
mod unpack;
