//! The store's health as its operations and its subscription see it.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;
use tracing::debug;

/// The store's health as its operations and its subscription see it: a
/// failure followed by an answer is a recovery, after which records written
/// before may be gone.
#[derive(Debug)]
pub(crate) struct Health {
    /// A connection failed or timed out and nothing has answered since.
    troubled: AtomicBool,
    /// A recovery happened since the last heartbeat read this flag.
    recovered_since_beat: AtomicBool,
    recoveries: watch::Sender<u64>,
}

impl Health {
    pub(crate) fn new() -> Self {
        Health {
            troubled: AtomicBool::new(false),
            recovered_since_beat: AtomicBool::new(false),
            recoveries: watch::Sender::new(0),
        }
    }

    /// A connection failed, timed out, or a subscription broke.
    pub(crate) fn trouble(&self) {
        if !self.troubled.swap(true, Ordering::AcqRel) {
            debug!("rendezvous store connection failed");
        }
    }

    /// The store answered.
    pub(crate) fn answered(&self) {
        if self.troubled.swap(false, Ordering::AcqRel) {
            self.recovered_since_beat.store(true, Ordering::Release);
            self.recoveries.send_modify(|n| *n += 1);
            debug!("rendezvous store answers again");
        }
    }

    /// Whether a recovery happened since the last call.
    pub(crate) fn take_recovered(&self) -> bool {
        self.recovered_since_beat.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.recoveries.subscribe()
    }
}
