//! The byte pump of a paired session: both directions at once, each
//! half-closed on its own, no buffer held while a session is idle.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dtcp_forward::write_all;
use metrics::Counter;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Size of one copy buffer.
const BUF_SIZE: usize = 64 * 1024;
/// Buffers kept for reuse per worker thread.
const POOL_MAX: usize = 32;

thread_local! {
    /// Copy buffers are taken when a socket turns readable and given back
    /// when it has been drained, so an idle session holds none.
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; BUF_SIZE].into_boxed_slice())
}

fn give_buf(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(buf);
        }
    });
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Both directions finished with a FIN.
    Closed,
    /// A side reset or failed; the other was closed.
    Reset,
    /// No byte moved for the idle timeout.
    IdleTimeout,
    /// The node's drain timeout ran out.
    Drained,
}

impl End {
    pub fn label(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Reset => "reset",
            End::IdleTimeout => "idle_timeout",
            End::Drained => "drained",
        }
    }
}

/// One direction of a session: where bytes come from and go to.
#[derive(Debug)]
pub(crate) struct Way<'a> {
    pub from: &'a TcpStream,
    pub to: &'a TcpStream,
    /// Bytes `from` sent before pairing, delivered first.
    pub early: &'a [u8],
    /// Counts the bytes for metrics.
    pub counter: Counter,
}

/// What the pump moved.
#[derive(Debug)]
pub(crate) struct Report {
    pub end: End,
    /// Bytes moved by the first and the second [`Way`].
    pub moved: [u64; 2],
}

/// Moves bytes both ways until both directions end, a side resets, the
/// session idles out, or `stop` fires.
pub(crate) async fn pump(
    a: Way<'_>,
    b: Way<'_>,
    idle: Option<Duration>,
    stop: &CancellationToken,
) -> Report {
    let start = Instant::now();
    // Milliseconds since `start` of the last byte moved, for the idle timer.
    let last = AtomicU64::new(0);
    let moved = [AtomicU64::new(0), AtomicU64::new(0)];
    let (a_from, b_from) = (a.from, b.from);
    let both = async {
        tokio::try_join!(
            one_way(a, &moved[0], &last, start),
            one_way(b, &moved[1], &last, start)
        )
    };
    let end = tokio::select! {
        r = both => if r.is_ok() { End::Closed } else { End::Reset },
        () = idle_watch(idle, &last, start) => End::IdleTimeout,
        () = stop.cancelled() => End::Drained,
    };
    if end == End::Reset {
        // Pass the reset on: close with RST rather than FIN.
        for s in [a_from, b_from] {
            let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
    Report {
        end,
        moved: moved.map(|m| m.into_inner()),
    }
}

async fn one_way(
    way: Way<'_>,
    moved: &AtomicU64,
    last: &AtomicU64,
    start: Instant,
) -> io::Result<()> {
    let note = |n: usize| {
        way.counter.increment(n as u64);
        moved.fetch_add(n as u64, Ordering::Relaxed);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    };
    if !way.early.is_empty() {
        write_all(way.to, way.early).await?;
        note(way.early.len());
    }
    loop {
        way.from.readable().await?;
        let mut buf = take_buf();
        let eof = loop {
            match way.from.try_read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    write_all(way.to, &buf[..n]).await?;
                    note(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) => return Err(e),
            }
        };
        give_buf(buf);
        if eof {
            // Everything before the FIN is delivered; pass the FIN on. The
            // other direction keeps flowing.
            SockRef::from(way.to).shutdown(Shutdown::Write)?;
            return Ok(());
        }
    }
}

async fn idle_watch(idle: Option<Duration>, last: &AtomicU64, start: Instant) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    loop {
        let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}
