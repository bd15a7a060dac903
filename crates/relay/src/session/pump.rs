//! A local session's pump: [`dtcp_duplex::Duplex`] between its two clients,
//! counted in the session's metrics as bytes move, cut after the idle
//! timeout, and ended with an [`Outcome`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use dtcp_duplex::{Duplex, StreamDuplex};
use dtcp_forward::LaneStream;
use metrics::Counter;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::outcome::Outcome;
use crate::throttle::Throttle;

/// Moves bytes between `a` and `b` until both directions end (a FIN each
/// way: [`Outcome::Closed`]), one side fails ([`Outcome::Reset`]), or no
/// byte moves for the idle timeout ([`Outcome::IdleTimeout`]).
#[derive(Debug)]
pub(crate) struct Pump<'a> {
    duplex: Ends<'a>,
    /// Bytes `a` to `b`, and `b` to `a`, counted as they move.
    counters: [Counter; 2],
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
}

/// What the pump moves bytes between.
#[derive(Debug)]
enum Ends<'a> {
    /// Two sockets: a local session, or a client and a plain lane.
    Sockets(Duplex<'a, Throttle>),
    /// A client socket and a TLS lane (copied, never spliced).
    Tls(StreamDuplex<'a, LaneStream, Throttle>),
}

impl Ends<'_> {
    fn moved(&self) -> [u64; 2] {
        match self {
            Ends::Sockets(d) => d.moved(),
            Ends::Tls(d) => d.moved(),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self {
            Ends::Sockets(d) => Pin::new(d).poll(cx),
            Ends::Tls(d) => Pin::new(d).poll(cx),
        }
    }
}

impl<'a> Pump<'a> {
    /// A pump between `a` and `b`; `early` bytes of each go first, and each
    /// direction's bytes are counted on its counter.
    pub(crate) fn new(
        a: (&'a TcpStream, &'a [u8], Counter),
        b: (&'a TcpStream, &'a [u8], Counter),
        idle: Option<Duration>,
        splice: bool,
        throttles: [Option<Box<Throttle>>; 2],
    ) -> Self {
        Pump {
            duplex: Ends::Sockets(Duplex::new((a.0, a.1), (b.0, b.1), throttles, splice)),
            counters: [a.2, b.2],
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
        }
    }

    /// A pump between a client socket `a` and a `lane` (no early bytes of
    /// its own): spliced as [`Pump::new`] when the lane is plain TCP, copied
    /// through user space when it is TLS.
    pub(crate) fn lane(
        a: (&'a TcpStream, &'a [u8], Counter),
        lane: (&'a mut LaneStream, Counter),
        idle: Option<Duration>,
        splice: bool,
        throttles: [Option<Box<Throttle>>; 2],
    ) -> Self {
        let duplex = match lane.0 {
            LaneStream::Plain(tcp) => {
                Ends::Sockets(Duplex::new((a.0, a.1), (&*tcp, &[]), throttles, splice))
            }
            tls => Ends::Tls(StreamDuplex::new((a.0, a.1), (tls, &[]), throttles)),
        };
        Pump {
            duplex,
            counters: [a.2, lane.1],
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
        }
    }

    /// Bytes moved `a` to `b`, and `b` to `a`.
    pub(crate) fn moved(&self) -> [u64; 2] {
        self.duplex.moved()
    }
}

impl Future for Pump<'_> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        let before = this.duplex.moved();
        let ended = this.duplex.poll(cx);
        let after = this.duplex.moved();
        for ((counter, now), then) in this.counters.iter().zip(after).zip(before) {
            if now != then {
                counter.increment(now - then);
            }
        }
        match ended {
            Poll::Ready(Ok(())) => return Poll::Ready(Outcome::Closed),
            Poll::Ready(Err(_)) => return Poll::Ready(Outcome::Reset),
            Poll::Pending => {}
        }
        if let Some((idle, sleep)) = &mut this.idle {
            if after != before {
                sleep.as_mut().reset(Instant::now() + *idle);
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Outcome::IdleTimeout);
            }
        }
        Poll::Pending
    }
}
