//! `dtcp-bench`: a load generator for DTCP relays, with its own code paths
//! for the wire protocol (not the `dtcp` tool's).
//!
//! ```text
//! dtcp-bench --create-on 127.0.0.1:7777 pair --pairs 2000 --concurrency 32
//! dtcp-bench --create-on A --connect-on B throughput --pairs 4 --bytes 1GiB
//! dtcp-bench --nodes A,B,C --redis R pair --pairs 4000   (a balancer's spread over N nodes)
//! dtcp-bench --relay-pid PID hold --count 2000 --count 10000
//! dtcp-bench --via 127.0.0.1:8888 --sink 127.0.0.1:9999 pair ...   (a TCP proxy in front of the sink)
//! dtcp-bench --direct pair ...                                      (no relay at all)
//! ```

mod endpoint;
mod nodemetrics;
mod pattern;
mod procstat;
mod redisinfo;
mod scenario;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::bail;
use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::endpoint::{Endpoint, Sink};

#[derive(Debug, Parser)]
#[command(
    name = "dtcp-bench",
    version,
    about = "Load generator for DTCP relays."
)]
struct Cli {
    /// Relay nodes that get the CREATEs (comma-separated; pairs take turns).
    #[arg(long, value_delimiter = ',', value_name = "ADDR")]
    create_on: Vec<SocketAddr>,
    /// Relay nodes that get the CONNECTs. Default: the same as --create-on.
    #[arg(long, value_delimiter = ',', value_name = "ADDR")]
    connect_on: Vec<SocketAddr>,
    /// The nodes of a cluster behind a round-robin balancer (comma-separated):
    /// pair i's CREATE on node i mod N, its CONNECT on node (i+1) mod N.
    #[arg(long, value_delimiter = ',', value_name = "ADDR",
        conflicts_with_all = ["create_on", "connect_on", "via", "direct"])]
    nodes: Vec<SocketAddr>,
    /// Redis servers the cluster uses (every master of a Redis Cluster;
    /// comma-separated, no password): `pair` reads their `INFO` before and
    /// after, and reports commands, command time, CPU and output bytes per
    /// pair, for each server and in all.
    #[arg(long, value_delimiter = ',', value_name = "ADDR")]
    redis: Vec<SocketAddr>,
    /// Instead of a relay: a TCP proxy whose backend is this generator's sink.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["create_on", "direct"])]
    via: Option<SocketAddr>,
    /// Where the sink listens (for --via, the proxy's backend).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    sink: SocketAddr,
    /// Instead of a relay: connect straight to the sink (the physical limit).
    #[arg(long)]
    direct: bool,
    /// Processes whose CPU and memory to report (the relay, every node, or the proxy).
    #[arg(long, value_delimiter = ',', value_name = "PID")]
    relay_pid: Vec<u32>,
    /// Print one JSON object per scenario instead of a table.
    #[arg(long)]
    json: bool,
    /// Sign every key with this secret, for a relay started with
    /// `--key-secret` (measures the cost of the signature check).
    #[arg(
        long,
        env = "DTCP_BENCH_KEY_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    key_secret: Option<String>,
    /// A label for the table and the JSON (e.g. "relay", "haproxy").
    #[arg(long, default_value = "")]
    label: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N pairs at concurrency C: pair, one byte each way, close.
    Pair {
        #[arg(long, default_value_t = 2000)]
        pairs: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// P concurrent pairs each moving S bytes, every byte checked.
    Throughput {
        #[arg(long, default_value_t = 4)]
        pairs: u64,
        /// Bytes per pair and direction (suffixes K, M, G, KiB, MiB, GiB).
        #[arg(long, default_value = "1GiB", value_parser = parse_size)]
        bytes: u64,
        /// Both directions at once.
        #[arg(long)]
        both_ways: bool,
    },
    /// K pending registrations, then K idle paired sessions: memory per each.
    Hold {
        /// Repeat for several K, to show linearity. Each round starts from
        /// the memory the previous one freed, which the allocator keeps:
        /// for clean numbers, give one K per run against a fresh relay (as
        /// bench/compare.sh does).
        #[arg(long = "count", default_values_t = [2000u64, 10000])]
        counts: Vec<u64>,
        /// Seconds to let the relay settle before each reading. A relay
        /// hands freed memory back within a second or so (its allocator's
        /// purge): past that, the reading is what the idle sessions hold,
        /// not the peak of pairing them.
        #[arg(long, default_value_t = 0.5)]
        settle: f64,
        /// Also read the memory this many seconds after the sessions
        /// paired: once the relay has handed freed memory back, what the
        /// idle sessions hold, beside the reading just after the burst. The
        /// base is then read as long after the warm-up.
        #[arg(long, value_name = "SECS")]
        idle: Option<f64>,
        /// The relay nodes' metrics listeners (`host:port`, every node of
        /// a cluster): read while the sessions are held, they say how many
        /// forwarded sessions cross on lanes and how many on their Bridge.
        #[arg(long, value_delimiter = ',', value_name = "ADDR")]
        metrics: Vec<SocketAddr>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(format!("unknown unit in {s:?}")),
    };
    Ok(n * mult)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Holding thousands of sessions takes two descriptors each.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let endpoint = if let Some(via) = cli.via {
        let (sink, _) = Sink::start(cli.sink).await?;
        Endpoint::Sink { addr: via, sink }
    } else if cli.direct {
        let (sink, addr) = Sink::start(cli.sink).await?;
        Endpoint::Sink { addr, sink }
    } else {
        let (create_on, connect_on) = relay_lists(&cli)?;
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64;
        Endpoint::Relay {
            create_on,
            connect_on,
            run,
            key_secret: cli.key_secret.clone(),
        }
    };
    let ep = Arc::new(endpoint);
    let mut report = match cli.scenario {
        Scenario::Pair { pairs, concurrency } => {
            scenario::pair(ep, pairs, concurrency, &cli.relay_pid, &cli.redis).await?
        }
        Scenario::Throughput {
            pairs,
            bytes,
            both_ways,
        } => scenario::throughput(ep, pairs, bytes, both_ways, &cli.relay_pid).await?,
        Scenario::Hold {
            counts,
            settle,
            idle,
            metrics,
        } => {
            let readings = scenario::Readings {
                settle: std::time::Duration::from_secs_f64(settle),
                idle: idle.map(std::time::Duration::from_secs_f64),
            };
            scenario::hold(ep, &counts, &cli.relay_pid, readings, &metrics).await?
        }
    };
    report["label"] = Value::from(cli.label.clone());
    if let Some(load) = procstat::load_average() {
        report["load_average"] = serde_json::json!(load);
    }
    if cli.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    Ok(())
}

/// Where the CREATEs and the CONNECTs go: `--nodes` rotated by one for
/// the CONNECTs (pair i takes entry i mod N of each list), or the lists
/// as given.
fn relay_lists(cli: &Cli) -> anyhow::Result<(Vec<SocketAddr>, Vec<SocketAddr>)> {
    if !cli.nodes.is_empty() {
        let mut connect_on = cli.nodes.clone();
        connect_on.rotate_left(1);
        return Ok((cli.nodes.clone(), connect_on));
    }
    if cli.create_on.is_empty() {
        bail!("say where the relay is (--create-on or --nodes), or use --via or --direct");
    }
    let connect_on = if cli.connect_on.is_empty() {
        cli.create_on.clone()
    } else {
        cli.connect_on.clone()
    };
    Ok((cli.create_on.clone(), connect_on))
}

fn print_table(r: &Value) {
    let label = r["label"].as_str().unwrap_or_default();
    match r["scenario"].as_str() {
        Some("pair") => {
            let l = &r["latency_ms"];
            println!(
                "{:<12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>14}",
                "pair", "pairs/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "cpu s/1k pairs"
            );
            println!(
                "{:<12} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>14.3}",
                label,
                r["pairs_per_s"].as_f64().unwrap_or(0.0),
                l["p50"].as_f64().unwrap_or(0.0),
                l["p90"].as_f64().unwrap_or(0.0),
                l["p99"].as_f64().unwrap_or(0.0),
                l["max"].as_f64().unwrap_or(0.0),
                r["relay_cpu_s_per_1000_pairs"].as_f64().unwrap_or(0.0)
            );
            if r.get("redis").is_some() {
                print_redis(&r["redis"]);
            }
        }
        Some("throughput") => {
            println!(
                "{:<12} {:>12} {:>10} {:>14}",
                "throughput", "GB/s", "seconds", "cpu s/GiB"
            );
            println!(
                "{:<12} {:>12.3} {:>10.2} {:>14.3}",
                label,
                r["bytes_per_s"].as_f64().unwrap_or(0.0) / 1e9,
                r["elapsed_s"].as_f64().unwrap_or(0.0),
                r["relay_cpu_s_per_gib"].as_f64().unwrap_or(0.0)
            );
        }
        Some("hold") => {
            println!(
                "{:<12} {:>8} {:>16} {:>16}",
                "hold", "count", "B/pending", "B/session"
            );
            for row in r["rounds"].as_array().into_iter().flatten() {
                println!(
                    "{:<12} {:>8} {:>16.0} {:>16.0}",
                    label,
                    row["count"],
                    row["bytes_per_pending"].as_f64().unwrap_or(f64::NAN),
                    row["bytes_per_session"].as_f64().unwrap_or(0.0)
                );
                if let Some(lanes) = row["held_on_lanes"].as_f64() {
                    println!(
                        "{:<12} {:>8} held forwarded: {lanes:.0} on lanes, {:.0} on the Bridge",
                        "",
                        "",
                        row["held_on_bridge"].as_f64().unwrap_or(0.0)
                    );
                }
            }
        }
        _ => println!("{r}"),
    }
}

/// The Redis part of a `pair` report: one row per server, then the total.
fn print_redis(redis: &Value) {
    println!(
        "{:<21} {:>12} {:>14} {:>13} {:>15}",
        "redis, per pair", "commands", "command usec", "cpu ms", "output bytes"
    );
    let row = |name: &str, v: &Value| {
        println!(
            "{:<21} {:>12.2} {:>14.2} {:>13.4} {:>15.0}",
            name,
            v["commands_per_pair"].as_f64().unwrap_or(0.0),
            v["command_usec_per_pair"].as_f64().unwrap_or(0.0),
            v["cpu_ms_per_pair"].as_f64().unwrap_or(0.0),
            v["output_bytes_per_pair"].as_f64().unwrap_or(0.0)
        );
    };
    let servers = redis["servers"].as_array().map_or(&[][..], Vec::as_slice);
    if servers.len() > 1 {
        for s in servers {
            row(s["addr"].as_str().unwrap_or_default(), s);
        }
    }
    row("all", redis);
    println!(
        "of which scripts: {:.2} calls, {:.2} usec (a script's time includes the commands it calls)",
        redis["script_calls_per_pair"].as_f64().unwrap_or(0.0),
        redis["script_usec_per_pair"].as_f64().unwrap_or(0.0)
    );
    let by_command: Vec<String> = redis["by_command_per_pair"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, n)| format!("{name} {:.2}", n.as_f64().unwrap_or(0.0)))
        .collect();
    println!("commands per pair: {}", by_command.join(", "));
}

#[cfg(test)]
mod tests {
    use super::{Cli, parse_size, relay_lists};
    use clap::Parser;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("10"), Ok(10));
        assert!(parse_size("ten").is_err());
    }

    #[test]
    fn nodes_spread_like_a_round_robin_balancer() {
        let cli = Cli::parse_from([
            "dtcp-bench",
            "--nodes",
            "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3",
            "pair",
        ]);
        let (create, connect) = relay_lists(&cli).unwrap();
        let port = |l: &[std::net::SocketAddr], i: usize| l[i % l.len()].port();
        for i in 0..6 {
            assert_eq!(port(&create, i), (i % 3 + 1) as u16);
            assert_eq!(port(&connect, i), ((i + 1) % 3 + 1) as u16);
        }
        assert!(
            Cli::try_parse_from([
                "dtcp-bench",
                "--nodes",
                "127.0.0.1:1",
                "--create-on",
                "127.0.0.1:2",
                "pair"
            ])
            .is_err()
        );
    }
}
