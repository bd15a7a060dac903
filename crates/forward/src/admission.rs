//! Who may hold a connection to a node's own listeners (the plane, and the
//! metrics listener): a cap on connections, and probation for new ones.
//!
//! A connection enters through a [`ConnectionGate`] and is on probation until it does
//! something useful (on the plane: a call whose authenticator verifies; on
//! the metrics listener: a request). Until then it is closed when its
//! probation runs out, and it is the first to go when the gate is full: the
//! oldest connection not admitted is closed to make room for a new one. An
//! admitted connection is never closed by the gate (the plane admits a
//! connection for good; the metrics listener only while it serves a
//! request); a new connection that finds every slot held by admitted ones
//! is refused.
//!
//! So a crowd of silent connections holds no descriptor longer than the
//! probation, and cannot keep out a node (or a scraper) whose first bytes
//! arrive before the crowd has opened as many connections as the gate has
//! slots.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Sleep;

/// Whether a connection has proved itself: shared by the connection and the
/// calls made on it (the plane's services find it in a request's extensions).
#[derive(Debug, Clone, Default)]
pub struct Admission(Arc<AtomicBool>);

impl Admission {
    /// The connection did something useful: it leaves probation for good.
    pub fn admit(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// The connection is idle again (a metrics connection between requests):
    /// the gate may evict it to make room. Its probation does not restart.
    pub fn revoke(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    /// Whether it is admitted now.
    pub fn is_admitted(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Admits the connection `request` came on, if it came through a [`ConnectionGate`].
    pub fn admit_request<B>(request: &http::Request<B>) {
        if let Some(admission) = request.extensions().get::<Admission>() {
            admission.admit();
        }
    }
}

/// Why the gate closed a connection, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Its probation ran out before it did anything useful.
    Probation,
    /// The gate was full and it was the oldest on probation.
    Evicted,
}

impl Cut {
    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Cut::Probation => "probation",
            Cut::Evicted => "evicted",
        }
    }
}

/// A listener's connection cap with probation; clones share the table.
#[derive(Debug, Clone)]
pub struct ConnectionGate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max: usize,
    probation: Duration,
    /// Told of every connection the gate closes.
    on_cut: fn(Cut),
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    /// Open connections by arrival, oldest first.
    open: BTreeMap<u64, Member>,
}

#[derive(Debug)]
struct Member {
    admission: Admission,
    /// Dropped to close the connection (its [`Probation`] sees the channel close).
    #[expect(dead_code, reason = "held, never sent on: dropping it evicts")]
    evict: oneshot::Sender<()>,
}

impl ConnectionGate {
    /// A gate of `max` connections, each on probation for `probation`;
    /// `on_cut` is told of each one the gate closes.
    pub fn new(max: usize, probation: Duration, on_cut: fn(Cut)) -> Self {
        ConnectionGate {
            inner: Arc::new(Inner {
                max: max.max(1),
                probation,
                on_cut,
                table: Mutex::default(),
            }),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.table().open.len()
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// Lets `io` in on probation, closing the oldest connection on probation
    /// if the gate is full; gives it back if every slot is held by a
    /// connection that has proved itself.
    pub fn enter<IO>(&self, io: IO) -> Result<Probation<IO>, IO> {
        let (tx, rx) = oneshot::channel();
        let admission = Admission::default();
        let id = {
            let mut table = self.table();
            if table.open.len() >= self.inner.max {
                let oldest = table
                    .open
                    .iter()
                    .find(|(_, m)| !m.admission.is_admitted())
                    .map(|(id, _)| *id);
                let Some(oldest) = oldest else {
                    return Err(io);
                };
                // Dropping its sender closes it (see `Probation::expired`).
                table.open.remove(&oldest);
                (self.inner.on_cut)(Cut::Evicted);
            }
            let id = table.next;
            table.next += 1;
            let member = Member {
                admission: admission.clone(),
                evict: tx,
            };
            table.open.insert(id, member);
            id
        };
        Ok(Probation {
            io,
            admission,
            deadline: Some(Box::pin(tokio::time::sleep(self.inner.probation))),
            evicted: Some(rx),
            cut: None,
            slot: Slot {
                gate: self.clone(),
                id,
            },
        })
    }
}

/// A connection's place in its gate, given back when the connection is dropped.
#[derive(Debug)]
struct Slot {
    gate: ConnectionGate,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.table().open.remove(&self.id);
    }
}

/// A connection let in by a [`ConnectionGate`]: reading or writing it fails
/// once its probation runs out unless it was admitted first, or once the
/// gate evicts it (only ever while it is not admitted); the server then
/// drops it, which frees its descriptor.
#[derive(Debug)]
pub struct Probation<IO> {
    io: IO,
    admission: Admission,
    /// The end of its probation; `None` once admitted or cut.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Closed when the gate evicts it; `None` once cut.
    evicted: Option<oneshot::Receiver<()>>,
    /// Why it was closed, once it was: every read and write fails from then on.
    cut: Option<Cut>,
    slot: Slot,
}

impl<IO> Probation<IO> {
    /// The flag that admits this connection.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Whether the connection is to be closed now. Polls the deadline and
    /// the eviction, so that the task is woken when either comes.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if let Some(cut) = self.cut {
            return Some(cut_error(cut));
        }
        if self.deadline.is_some() && self.admission.is_admitted() {
            // Probation is over for good; eviction is still possible while
            // the connection is not admitted (a metrics connection between
            // requests).
            self.deadline = None;
        }
        let cut = if let Some(evicted) = &mut self.evicted
            && Pin::new(evicted).poll(cx).is_ready()
        {
            // Counted by the gate when it evicted.
            Cut::Evicted
        } else if let Some(deadline) = &mut self.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            (self.slot.gate.inner.on_cut)(Cut::Probation);
            Cut::Probation
        } else {
            return None;
        };
        self.cut = Some(cut);
        self.deadline = None;
        self.evicted = None;
        // Its slot is free from now on, not when the server gets round to
        // dropping it.
        self.slot.gate.table().open.remove(&self.slot.id);
        Some(cut_error(cut))
    }
}

fn cut_error(cut: Cut) -> io::Error {
    let text = match cut {
        Cut::Probation => "nothing useful before the connection's probation ran out",
        Cut::Evicted => "closed to make room for a new connection",
    };
    io::Error::new(io::ErrorKind::TimedOut, text)
}

impl<IO: AsyncRead + Unpin> AsyncRead for Probation<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Probation<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, duplex};

    fn no_cut(_: Cut) {}

    #[tokio::test]
    async fn probation_runs_out_unless_admitted() {
        let gate = ConnectionGate::new(4, Duration::from_millis(200), no_cut);
        let (a, _a_peer) = duplex(64);
        let (b, mut b_peer) = duplex(64);
        let mut silent = gate.enter(a).unwrap();
        let mut useful = gate.enter(b).unwrap();
        useful.admission().admit();
        assert_eq!(gate.open(), 2);
        let mut buf = [0u8; 1];
        let err = silent.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(gate.open(), 1, "the slot is free at once");
        tokio::time::sleep(Duration::from_millis(400)).await;
        tokio::io::AsyncWriteExt::write_all(&mut b_peer, b"x")
            .await
            .unwrap();
        assert_eq!(useful.read(&mut buf).await.unwrap(), 1);
        drop(useful);
        assert_eq!(gate.open(), 0);
    }

    #[tokio::test]
    async fn a_full_gate_evicts_the_oldest_on_probation_and_never_an_admitted_one() {
        let gate = ConnectionGate::new(2, Duration::from_secs(5), no_cut);
        let (a, _ap) = duplex(64);
        let (b, _bp) = duplex(64);
        let (c, _cp) = duplex(64);
        let (d, _dp) = duplex(64);
        let admitted = gate.enter(a).unwrap();
        admitted.admission().admit();
        let mut old = gate.enter(b).unwrap();
        let new = gate.enter(c).unwrap();
        let mut buf = [0u8; 1];
        let err = tokio::time::timeout(Duration::from_secs(1), old.read(&mut buf))
            .await
            .expect("evicted at once")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        new.admission().admit();
        let Err(d) = gate.enter(d) else {
            panic!("every slot is held by an admitted connection");
        };
        assert_eq!(gate.open(), 2);
        // Idle again (between two requests): evictable.
        new.admission().revoke();
        let _kept = gate.enter(d).expect("room made");
        assert_eq!(gate.open(), 2);
    }
}
