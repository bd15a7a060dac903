//! What a run cost Redis: `INFO all` read from each server (a standalone
//! Redis, or every master of a Redis Cluster) before and after the run,
//! and the difference per pair: commands by name, command time
//! (`INFO commandstats`), CPU (`INFO cpu`) and bytes sent
//! (`total_net_output_bytes`).
//!
//! Redis lists the commands a script calls under their own names as well
//! as the script's call, and a script's time includes theirs: the totals
//! count both (as `INFO commandstats` adds up), and the script calls and
//! their time are also given apart (`script_*`), so that what crossed the
//! network and what ran inside scripts can be told.
//!
//! A bare RESP exchange on a connection of its own, without a password:
//! the bench's Redis is a local, throwaway one.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long connecting to Redis and reading its `INFO` may take.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest `INFO all` reply read (a few KiB in practice, more with
/// many distinct commands).
const MAX_INFO_BYTES: usize = 1 << 20;
/// The command the bench itself sends: not counted as the relays' work.
const OWN_COMMAND: &str = "info";
/// The commands that run a script (whose calls are counted again under
/// their own names).
const SCRIPT_COMMANDS: [&str; 6] = [
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
];

/// One server's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Snapshot {
    /// Calls and microseconds per command name (lower case), from
    /// `cmdstat_<name>:calls=..,usec=..`.
    commands: BTreeMap<String, (u64, u64)>,
    /// `used_cpu_user` + `used_cpu_sys`, in seconds.
    cpu_s: f64,
    /// `total_net_output_bytes`.
    output_bytes: u64,
    /// Bytes of the reply that carried this snapshot: Redis counts them
    /// in its output only after writing them, so they show in the next
    /// snapshot's total and are no part of the run.
    reply_bytes: u64,
}

impl Snapshot {
    /// Parses the text of an `INFO all` reply.
    fn parse(text: &str, reply_bytes: u64) -> Snapshot {
        let mut s = Snapshot {
            reply_bytes,
            ..Snapshot::default()
        };
        for line in text.lines() {
            let Some((key, value)) = line.trim_end().split_once(':') else {
                continue;
            };
            if let Some(name) = key.strip_prefix("cmdstat_") {
                let field = |f: &str| {
                    value
                        .split(',')
                        .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                s.commands
                    .insert(name.to_ascii_lowercase(), (field("calls"), field("usec")));
            }
            match key {
                "used_cpu_user" | "used_cpu_sys" => s.cpu_s += value.parse::<f64>().unwrap_or(0.0),
                "total_net_output_bytes" => s.output_bytes = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        s
    }
}

/// Reads `INFO all` from the server at `addr`.
pub(crate) async fn snapshot(addr: SocketAddr) -> io::Result<Snapshot> {
    tokio::time::timeout(INFO_TIMEOUT, read_info(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("Redis at {addr}: INFO")))?
}

async fn read_info(addr: SocketAddr) -> io::Result<Snapshot> {
    let mut conn = BufReader::new(TcpStream::connect(addr).await?);
    conn.write_all(b"*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n").await?;
    let mut header = String::new();
    conn.read_line(&mut header).await?;
    let len = header
        .strip_prefix('$')
        .and_then(|l| l.trim_end().parse::<usize>().ok())
        .filter(|&l| l <= MAX_INFO_BYTES)
        .ok_or_else(|| {
            io::Error::other(format!(
                "Redis at {addr} answered INFO with {:?}",
                header.trim_end()
            ))
        })?;
    let mut body = vec![0u8; len + 2];
    conn.read_exact(&mut body).await?;
    body.truncate(len);
    let text = String::from_utf8_lossy(&body);
    Ok(Snapshot::parse(&text, (header.len() + len + 2) as u64))
}

/// Reads every server's counters, in order.
pub(crate) async fn snapshots(addrs: &[SocketAddr]) -> anyhow::Result<Vec<Snapshot>> {
    let mut all = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        all.push(snapshot(addr).await?);
    }
    Ok(all)
}

/// What one server did between `before` and `after`, per pair of a run of
/// `pairs` pairs.
fn per_pair(before: &Snapshot, after: &Snapshot, pairs: f64) -> (Value, u64, u64) {
    let (mut by_command, mut by_command_usec) = (Map::new(), Map::new());
    let (mut calls, mut usec) = (0u64, 0u64);
    let (mut script_calls, mut script_usec) = (0u64, 0u64);
    for (name, &(c1, u1)) in &after.commands {
        if name == OWN_COMMAND {
            continue;
        }
        let (c0, u0) = before.commands.get(name).copied().unwrap_or((0, 0));
        let (dc, du) = (c1.saturating_sub(c0), u1.saturating_sub(u0));
        if dc > 0 {
            by_command.insert(name.clone(), json!(dc as f64 / pairs));
            by_command_usec.insert(name.clone(), json!(du as f64 / pairs));
        }
        if SCRIPT_COMMANDS.contains(&name.as_str()) {
            script_calls += dc;
            script_usec += du;
        }
        calls += dc;
        usec += du;
    }
    let output = after
        .output_bytes
        .saturating_sub(before.output_bytes)
        .saturating_sub(before.reply_bytes);
    let value = json!({
        "commands": calls,
        "commands_per_pair": calls as f64 / pairs,
        "command_usec_per_pair": usec as f64 / pairs,
        "script_calls_per_pair": script_calls as f64 / pairs,
        "script_usec_per_pair": script_usec as f64 / pairs,
        "cpu_ms_per_pair": (after.cpu_s - before.cpu_s).max(0.0) * 1e3 / pairs,
        "output_bytes_per_pair": output as f64 / pairs,
        "by_command_per_pair": by_command,
        "by_command_usec_per_pair": by_command_usec,
    });
    (value, calls, usec)
}

/// The run's cost to Redis, per pair, for every server and in all.
pub(crate) fn report(
    addrs: &[SocketAddr],
    before: &[Snapshot],
    after: &[Snapshot],
    pairs: u64,
) -> Value {
    let pairs = pairs.max(1) as f64;
    let mut servers = Vec::new();
    let (mut calls, mut usec) = (0u64, 0u64);
    // The per-pair figures that add up across servers, by field.
    let mut sums: BTreeMap<&str, f64> = BTreeMap::new();
    let mut by_command: BTreeMap<String, f64> = BTreeMap::new();
    let mut by_command_usec: BTreeMap<String, f64> = BTreeMap::new();
    for ((addr, b), a) in addrs.iter().zip(before).zip(after) {
        let (mut v, c, u) = per_pair(b, a, pairs);
        calls += c;
        usec += u;
        for field in [
            "script_calls_per_pair",
            "script_usec_per_pair",
            "cpu_ms_per_pair",
            "output_bytes_per_pair",
        ] {
            *sums.entry(field).or_default() += v[field].as_f64().unwrap_or(0.0);
        }
        for (key, total) in [
            ("by_command_per_pair", &mut by_command),
            ("by_command_usec_per_pair", &mut by_command_usec),
        ] {
            for (name, n) in v[key].as_object().into_iter().flatten() {
                *total.entry(name.clone()).or_default() += n.as_f64().unwrap_or(0.0);
            }
        }
        v["addr"] = json!(addr.to_string());
        servers.push(v);
    }
    let mut all = json!({
        "commands_per_pair": calls as f64 / pairs,
        "command_usec_per_pair": usec as f64 / pairs,
        "by_command_per_pair": by_command,
        "by_command_usec_per_pair": by_command_usec,
        "servers": servers,
    });
    for (field, sum) in sums {
        all[field] = json!(sum);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:0.500000\r\n\
        # Stats\r\ntotal_net_output_bytes:1000\r\n\
        # Commandstats\r\ncmdstat_get:calls=10,usec=100,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_info:calls=1,usec=50,usec_per_call=50.00,rejected_calls=0,failed_calls=0\r\n";
    const AFTER: &str = "used_cpu_sys:2.000000\r\nused_cpu_user:1.000000\r\n\
        total_net_output_bytes:3100\r\n\
        cmdstat_get:calls=30,usec=300,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_evalsha:calls=20,usec=1000,usec_per_call=50.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_info:calls=2,usec=100,usec_per_call=50.00,rejected_calls=0,failed_calls=0\r\n";

    #[test]
    fn parses_info() {
        let s = Snapshot::parse(BEFORE, 100);
        assert_eq!(s.commands["get"], (10, 100));
        assert_eq!(s.commands["info"], (1, 50));
        assert!((s.cpu_s - 2.0).abs() < 1e-9);
        assert_eq!(s.output_bytes, 1000);
    }

    #[test]
    fn per_pair_leaves_out_the_bench_and_its_own_reply() {
        let addr: SocketAddr = "127.0.0.1:6379".parse().unwrap();
        let r = report(
            &[addr],
            &[Snapshot::parse(BEFORE, 100)],
            &[Snapshot::parse(AFTER, 100)],
            10,
        );
        // 20 GETs and 20 EVALSHAs over 10 pairs; INFO is the bench's.
        assert_eq!(r["commands_per_pair"], 4.0);
        assert_eq!(r["command_usec_per_pair"], 120.0);
        assert_eq!(r["by_command_per_pair"]["evalsha"], 2.0);
        assert_eq!(r["by_command_usec_per_pair"]["evalsha"], 100.0);
        assert_eq!(r["script_calls_per_pair"], 2.0);
        assert_eq!(r["script_usec_per_pair"], 100.0);
        assert!(r["by_command_per_pair"].get("info").is_none());
        // 2,100 bytes sent, 100 of them the first INFO's reply.
        assert_eq!(r["output_bytes_per_pair"], 200.0);
        assert!((r["cpu_ms_per_pair"].as_f64().unwrap() - 100.0).abs() < 1e-6);
        assert_eq!(r["servers"][0]["addr"], "127.0.0.1:6379");
    }
}
