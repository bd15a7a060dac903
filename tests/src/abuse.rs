//! Attacks and the legitimate traffic that must get through them: sockets
//! from a chosen loopback source address (all of 127.0.0.0/8 is this
//! machine's, so every test can play many clients), a [`Prober`] that pairs
//! a legitimate session once per interval while an attack runs and counts
//! what happened, and a node's [`Footprint`], at one moment or at its
//! largest while an attack runs ([`Sampler`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::{command, triple};
use crate::relay::Relay;
use dtcp_client::dtcp_wire::Verb;

/// How long one probe may take, from its `CREATE` to the end of its echo.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// What the probe's two sides send each other once paired.
const PROBE_PAYLOAD: &[u8] = b"legitimate bytes";

/// A connection to `addr` from the source address `src` (any port).
pub async fn connect_from(src: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(src, 0))?;
    socket.connect(addr).await
}

/// The loopback address `127.0.0.<n>` (or further up for `n` > 255), one
/// per simulated client.
pub fn loopback(n: u32) -> IpAddr {
    IpAddr::from(std::net::Ipv4Addr::from(0x7f00_0000 + n))
}

/// What a [`Prober`] saw.
#[derive(Debug, Default)]
pub struct Probes {
    /// Pairs that paired and carried their bytes both ways.
    pub ok: usize,
    /// Why each failed one failed.
    pub failed: Vec<String>,
}

impl Probes {
    /// Panics unless at least one probe ran and every probe succeeded.
    pub fn assert_all_ok(&self, during: &str) {
        assert!(self.ok > 0, "no legitimate pair was probed during {during}");
        assert!(
            self.failed.is_empty(),
            "during {during}, {} of {} legitimate pairs failed: {:?}",
            self.failed.len(),
            self.ok + self.failed.len(),
            self.failed
        );
    }
}

impl Probes {
    /// Panics unless at least one probe ran and each either paired or was
    /// refused at once, its failure naming one of `refusals` (a condition,
    /// or "no reply" for a close without one): what a legitimate pair may
    /// get while a node is at a limit on purpose, refused but never left
    /// hanging. Returns how many were refused.
    pub fn assert_paired_or_refused(&self, during: &str, refusals: &[&str]) -> usize {
        assert!(
            self.ok + self.failed.len() > 0,
            "no legitimate pair was probed during {during}"
        );
        let other: Vec<_> = self
            .failed
            .iter()
            .filter(|f| !refusals.iter().any(|r| f.contains(r)))
            .collect();
        assert!(
            other.is_empty(),
            "during {during}, legitimate pairs failed otherwise than refused ({refusals:?}): {other:?}"
        );
        self.failed.len()
    }
}

/// A legitimate client pairing once per interval, in the background, from
/// an address no attack uses: its `CREATE` to one node, its `CONNECT` to
/// another (or the same), each side from `src`.
#[derive(Debug)]
pub struct Prober {
    stop: CancellationToken,
    task: JoinHandle<Probes>,
}

impl Prober {
    /// Starts probing at once, then every `every`.
    pub fn start(create: SocketAddr, connect: SocketAddr, src: IpAddr, every: Duration) -> Prober {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut probes = Probes::default();
                let mut tick = tokio::time::interval(every);
                for n in 0u64.. {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    // The source too: probers side by side pair their own.
                    let name = format!("probe-{n}-{}-{src}", std::process::id());
                    match tokio::time::timeout(PROBE_TIMEOUT, probe(create, connect, src, &name))
                        .await
                    {
                        Ok(Ok(())) => probes.ok += 1,
                        Ok(Err(e)) => probes.failed.push(format!("probe {n}: {e}")),
                        Err(_) => probes.failed.push(format!("probe {n}: timed out")),
                    }
                }
                probes
            }
        });
        Prober { stop, task }
    }

    /// Stops probing and says what happened.
    pub async fn finish(self) -> Probes {
        self.stop.cancel();
        self.task.await.expect("prober task")
    }
}

/// One legitimate pair, with a few bytes each way.
async fn probe(create: SocketAddr, connect: SocketAddr, src: IpAddr, name: &str) -> io::Result<()> {
    let t = triple(name);
    let mut initiator = connect_from(src, create).await?;
    initiator.write_all(&command(Verb::Create, &t)).await?;
    // The CONNECT after the CREATE has been sent: either order pairs, this
    // one is the common one.
    let mut target = connect_from(src, connect).await?;
    target.write_all(&command(Verb::Connect, &t)).await?;
    // The first refusal ends the probe: a side left waiting for a refused
    // partner would only time out.
    tokio::try_join!(
        async {
            expect_ok(&mut initiator)
                .await
                .map_err(|e| io::Error::other(format!("initiator: {e}")))
        },
        async {
            expect_ok(&mut target)
                .await
                .map_err(|e| io::Error::other(format!("target: {e}")))
        },
    )?;
    initiator.write_all(PROBE_PAYLOAD).await?;
    target.write_all(PROBE_PAYLOAD).await?;
    let mut got = [0u8; PROBE_PAYLOAD.len()];
    target.read_exact(&mut got).await?;
    if got != PROBE_PAYLOAD {
        return Err(io::Error::other("target got other bytes"));
    }
    initiator.read_exact(&mut got).await?;
    if got != PROBE_PAYLOAD {
        return Err(io::Error::other("initiator got other bytes"));
    }
    Ok(())
}

/// Reads `OK\0`, or says what came instead.
async fn expect_ok(s: &mut TcpStream) -> io::Result<()> {
    let mut reply = [0u8; 3];
    match s.read_exact(&mut reply).await {
        Ok(_) if &reply == b"OK\0" => Ok(()),
        Ok(_) => {
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut rest)).await;
            let mut all = reply.to_vec();
            all.extend(rest);
            Err(io::Error::other(format!(
                "replied {:?}",
                String::from_utf8_lossy(&all)
            )))
        }
        Err(e) => Err(io::Error::other(format!("no reply: {e}"))),
    }
}

/// A node's use of memory and descriptors at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Resident memory, in bytes.
    pub rss: u64,
    /// Open descriptors.
    pub fds: usize,
}

impl Footprint {
    /// `relay`'s footprint now.
    pub fn of(relay: &Relay) -> Footprint {
        Footprint {
            rss: relay.rss(),
            fds: crate::chaos::open_fds(relay.pid()),
        }
    }

    /// Memory grown since `before`, in MiB (0 if it shrank).
    pub fn grown_mib(&self, before: &Footprint) -> u64 {
        self.rss.saturating_sub(before.rss) >> 20
    }
}

/// Resident memory of process `pid`, in bytes (0 once it has gone).
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Open descriptors of process `pid` (0 once it has gone).
fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// The open-file limit (soft) process `pid` runs under, from
/// `/proc/<pid>/limits`: what "out of descriptors" means for it.
pub fn open_files_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("proc limits");
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("an open-file limit")
}

/// A node's largest footprint while an attack runs: its memory and
/// descriptors sampled every 100 ms on a thread of its own, so that a
/// runtime busy with the attack cannot skip the moment of the peak.
#[derive(Debug)]
pub struct Sampler {
    pid: u32,
    stop: Arc<AtomicBool>,
    rss: Arc<AtomicU64>,
    fds: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling `relay` at once.
    pub fn start(relay: &Relay) -> Sampler {
        let pid = relay.pid();
        let (stop, rss, fds) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let thread = std::thread::spawn({
            let (stop, rss, fds) = (stop.clone(), rss.clone(), fds.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    rss.fetch_max(rss_of(pid), Ordering::Relaxed);
                    fds.fetch_max(fds_of(pid), Ordering::Relaxed);
                    // The sampling interval.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Sampler {
            pid,
            stop,
            rss,
            fds,
            thread,
        }
    }

    /// The largest footprint so far, sampling going on.
    pub fn peak(&self) -> Footprint {
        Footprint {
            rss: self.rss.load(Ordering::Relaxed),
            fds: self.fds.load(Ordering::Relaxed),
        }
    }

    /// Stops sampling, samples once more, and gives the largest footprint seen.
    pub fn finish(self) -> Footprint {
        let Sampler {
            pid,
            stop,
            rss,
            fds,
            thread,
        } = self;
        stop.store(true, Ordering::Relaxed);
        thread.join().expect("sampler thread");
        // And now, which the last interval may have missed.
        Footprint {
            rss: rss.load(Ordering::Relaxed).max(rss_of(pid)),
            fds: fds.load(Ordering::Relaxed).max(fds_of(pid)),
        }
    }
}
