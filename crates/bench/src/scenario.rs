//! The scenarios: pairing rate and latency, throughput, held sessions.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::endpoint::{self, Endpoint};
use crate::{nodemetrics, pattern, procstat, redisinfo};

/// Percentiles of a latency sample, in milliseconds.
fn percentiles(mut samples: Vec<Duration>) -> Value {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    json!({ "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": at(1.0) })
}

/// `pairs` pairs, `concurrency` at a time: pair, one byte each way, close.
/// With `redis`, also what the run cost those Redis servers.
pub(crate) async fn pair(
    ep: Arc<Endpoint>,
    pairs: u64,
    concurrency: usize,
    pids: &[u32],
    redis: &[SocketAddr],
) -> anyhow::Result<Value> {
    let redis0 = redisinfo::snapshots(redis).await?;
    let cpu0 = procstat::cpu_total(pids);
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(pairs as usize);
    for n in 0..pairs {
        let permit = slots.clone().acquire_owned().await?;
        let ep = ep.clone();
        tasks.push(tokio::spawn(async move {
            let r = one_pair(&ep, n).await;
            drop(permit);
            r
        }));
    }
    let mut latencies = Vec::with_capacity(pairs as usize);
    for t in tasks {
        latencies.push(t.await?.context("a pair failed")?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = procstat::cpu_total(pids) - cpu0;
    let redis1 = redisinfo::snapshots(redis).await?;
    let mut report = json!({
        "scenario": "pair",
        "pairs": pairs,
        "concurrency": concurrency,
        "elapsed_s": elapsed,
        "pairs_per_s": pairs as f64 / elapsed,
        "latency_ms": percentiles(latencies),
        "relay_cpu_s": cpu,
        "relay_cpu_s_per_1000_pairs": cpu * 1000.0 / pairs as f64,
    });
    if !redis.is_empty() {
        report["redis"] = redisinfo::report(redis, &redis0, &redis1, pairs);
    }
    Ok(report)
}

async fn one_pair(ep: &Endpoint, n: u64) -> io::Result<Duration> {
    let (mut i, mut t, latency) = ep.pair(n).await?;
    let mut b = [0u8; 1];
    i.write_all(b"i").await?;
    t.read_exact(&mut b).await?;
    t.write_all(b"t").await?;
    i.read_exact(&mut b).await?;
    if &b != b"t" {
        return Err(io::Error::other("wrong byte"));
    }
    Ok(latency)
}

/// `pairs` concurrent pairs each moving `bytes` one way (or both ways),
/// every byte checked.
pub(crate) async fn throughput(
    ep: Arc<Endpoint>,
    pairs: u64,
    bytes: u64,
    both_ways: bool,
    pids: &[u32],
) -> anyhow::Result<Value> {
    let mut opened = Vec::new();
    for n in 0..pairs {
        opened.push(ep.pair(n).await.context("pairing")?);
    }
    let cpu0 = procstat::cpu_total(pids);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (n, (i, t, _)) in opened.into_iter().enumerate() {
        let n = n as u64;
        tasks.push(tokio::spawn(async move {
            let (ir, iw) = i.into_split();
            let (tr, tw) = t.into_split();
            let forward = async {
                let (sent, got) = tokio::try_join!(send(iw, 2 * n, bytes), receive(tr, 2 * n))?;
                check_len(sent, got)
            };
            let backward = async {
                if both_ways {
                    let (sent, got) =
                        tokio::try_join!(send(tw, 2 * n + 1, bytes), receive(ir, 2 * n + 1))?;
                    check_len(sent, got)
                } else {
                    drop((tw, ir));
                    Ok(0)
                }
            };
            let (a, b) = tokio::try_join!(forward, backward)?;
            io::Result::Ok(a + b)
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        total += t.await?.context("a transfer failed")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = procstat::cpu_total(pids) - cpu0;
    let gib = total as f64 / (1u64 << 30) as f64;
    Ok(json!({
        "scenario": "throughput",
        "pairs": pairs,
        "bytes_per_pair": bytes,
        "both_ways": both_ways,
        "bytes_total": total,
        "elapsed_s": elapsed,
        "bytes_per_s": total as f64 / elapsed,
        "relay_cpu_s": cpu,
        "relay_cpu_s_per_gib": if gib > 0.0 { cpu / gib } else { 0.0 },
    }))
}

fn check_len(sent: u64, got: u64) -> io::Result<u64> {
    if sent == got {
        Ok(got)
    } else {
        Err(io::Error::other(format!(
            "sent {sent} bytes, received {got}"
        )))
    }
}

/// Chunk size of the sender's writes.
const WRITE_CHUNK: usize = 256 * 1024;

async fn send(mut w: impl AsyncWriteExt + Unpin, stream: u64, bytes: u64) -> io::Result<u64> {
    let start = pattern::start(stream);
    let mut sent = 0u64;
    while sent < bytes {
        let len = (bytes - sent).min(WRITE_CHUNK as u64) as usize;
        w.write_all(pattern::slice(start + sent as usize, len))
            .await?;
        sent += len as u64;
    }
    w.shutdown().await?;
    Ok(sent)
}

async fn receive(mut r: impl AsyncReadExt + Unpin, stream: u64) -> io::Result<u64> {
    let start = pattern::start(stream);
    let mut buf = vec![0u8; WRITE_CHUNK];
    let mut got = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(got);
        }
        if !pattern::check(start + got as usize, &buf[..n]) {
            return Err(io::Error::other(format!("corrupt data at byte {got}")));
        }
        got += n as u64;
    }
}

/// When `hold` reads the relays' memory.
#[derive(Clone, Copy)]
pub(crate) struct Readings {
    /// Before each reading.
    pub(crate) settle: Duration,
    /// If set, a further reading this long after the sessions paired, and
    /// as long a wait after the warm-up before the base reading.
    pub(crate) idle: Option<Duration>,
}

impl Readings {
    /// The base reading, `settle` after the warm-up (or the last round),
    /// or with `idle`, that long after it, as the idle reading will be, so
    /// that the memory the warm-up freed (which the relay gives back, and
    /// new sessions would otherwise reuse unseen) counts in neither.
    async fn base(self, pids: &[u32]) -> u64 {
        tokio::time::sleep(self.idle.unwrap_or(self.settle).max(self.settle)).await;
        procstat::rss_total(pids)
    }
}

/// Holds `count` pending registrations, then `count` idle paired sessions,
/// and reports the relays' resident memory per registration and per session.
pub(crate) async fn hold(
    ep: Arc<Endpoint>,
    counts: &[u64],
    pids: &[u32],
    readings: Readings,
    metrics: &[SocketAddr],
) -> anyhow::Result<Value> {
    let settle = readings.settle;
    if pids.is_empty() {
        bail!("hold needs --relay-pid to read the relay's memory");
    }
    let Endpoint::Relay {
        create_on,
        connect_on,
        run,
        key_secret,
    } = &*ep
    else {
        return hold_proxied(ep, counts, pids, readings).await;
    };
    // Warm-up: the allocator's arenas and the runtime's structures.
    pair(ep.clone(), 1000, 32, &[], &[]).await?;
    let mut rows = Vec::new();
    for (round, &count) in counts.iter().enumerate() {
        let base = readings.base(pids).await;
        let mut initiators = Vec::with_capacity(count as usize);
        let mut commands = Vec::with_capacity(count as usize);
        for n in 0..count {
            let (initiator, target) = (
                "initiator@bench.example/hold",
                format!("target@bench.example/{n}"),
            );
            let name = format!("hold-{run}-{round}-{n}");
            let key = endpoint::signed_key(key_secret.as_deref(), &name, initiator, &target)?;
            let triple = dtcp_wire::Triple::new(key, initiator, target)?;
            let mut i = TcpStream::connect(create_on[n as usize % create_on.len()]).await?;
            i.write_all(&dtcp_wire::Command::new(dtcp_wire::Verb::Create, triple.clone()).encode())
                .await?;
            initiators.push(i);
            commands.push(dtcp_wire::Command::new(dtcp_wire::Verb::Connect, triple).encode());
        }
        tokio::time::sleep(settle).await;
        let pending = procstat::rss_total(pids);
        let mut targets = Vec::with_capacity(count as usize);
        for (n, cmd) in commands.iter().enumerate() {
            let mut t = TcpStream::connect(connect_on[n % connect_on.len()]).await?;
            t.write_all(cmd).await?;
            targets.push(t);
        }
        for s in initiators.iter_mut().chain(targets.iter_mut()) {
            endpoint::read_ok(s)
                .await
                .context("pairing a held session")?;
        }
        tokio::time::sleep(settle).await;
        let paired = procstat::rss_total(pids);
        let mut row = json!({
            "count": count,
            "rss_base_bytes": base,
            "rss_pending_bytes": pending,
            "rss_paired_bytes": paired,
            "bytes_per_pending": pending.saturating_sub(base) as f64 / count as f64,
            "bytes_per_session": paired.saturating_sub(base) as f64 / count as f64,
        });
        if !metrics.is_empty() {
            // Read while held, after the memory: the figure above moves
            // with how many fell back to their Bridge.
            let (lanes, bridge) = nodemetrics::sessions_by_path(metrics).await?;
            row["held_on_lanes"] = json!(lanes);
            row["held_on_bridge"] = json!(bridge);
        }
        read_idle(&mut row, readings, pids, base, count).await;
        rows.push(row);
        drop((initiators, targets));
        tokio::time::sleep(settle * 2).await;
    }
    Ok(json!({ "scenario": "hold", "rounds": rows }))
}

/// With `readings.idle`, reads the memory again once the sessions have
/// been idle that long (`settle` of it already passed since they paired).
async fn read_idle(row: &mut Value, readings: Readings, pids: &[u32], base: u64, count: u64) {
    let Some(idle) = readings.idle else {
        return;
    };
    tokio::time::sleep(idle.saturating_sub(readings.settle)).await;
    let rss = procstat::rss_total(pids);
    row["rss_idle_bytes"] = json!(rss);
    row["bytes_per_idle_session"] = json!(rss.saturating_sub(base) as f64 / count as f64);
}

/// `hold` through a proxy: `count` idle proxied connections.
async fn hold_proxied(
    ep: Arc<Endpoint>,
    counts: &[u64],
    pids: &[u32],
    readings: Readings,
) -> anyhow::Result<Value> {
    let settle = readings.settle;
    pair(ep.clone(), 1000, 32, &[], &[]).await?;
    let mut rows = Vec::new();
    let mut n0 = 1_000_000;
    for &count in counts {
        let base = readings.base(pids).await;
        let mut held = Vec::with_capacity(count as usize);
        for n in 0..count {
            held.push(ep.pair(n0 + n).await?);
        }
        n0 += count;
        tokio::time::sleep(settle).await;
        let paired = procstat::rss_total(pids);
        let mut row = json!({
            "count": count,
            "rss_base_bytes": base,
            "rss_paired_bytes": paired,
            "bytes_per_session": paired.saturating_sub(base) as f64 / count as f64,
        });
        read_idle(&mut row, readings, pids, base, count).await;
        rows.push(row);
        drop(held);
        tokio::time::sleep(settle * 2).await;
    }
    Ok(json!({ "scenario": "hold", "rounds": rows }))
}
