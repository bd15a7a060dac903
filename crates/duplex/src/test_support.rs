//! What the pumps' tests share: a client socket with the relay's end of
//! it, and a gate that trickles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::net::{TcpListener, TcpStream};

use crate::gate::Gate;

/// A client socket and the relay's end of it.
pub(crate) async fn connection(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap());
    let (client, accepted) = tokio::join!(client, listener.accept());
    (client.unwrap(), accepted.unwrap().0)
}

/// Grants at most `max` bytes a read, and counts what was used.
pub(crate) struct Trickle {
    pub(crate) max: usize,
    pub(crate) used: Arc<AtomicUsize>,
}

impl Gate for Trickle {
    fn poll_grant(&mut self, want: usize, _: &mut Context<'_>) -> Poll<usize> {
        Poll::Ready(want.min(self.max))
    }

    fn used(&mut self, used: usize) {
        self.used.fetch_add(used, Ordering::Relaxed);
    }
}
