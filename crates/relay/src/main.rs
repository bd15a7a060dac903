//! `dtcp-relay`: one relay node. Parses the configuration, sets up logging,
//! the TLS provider and the metrics recorder, then binds and runs a
//! [`dtcp_relay::Relay`] until SIGTERM or SIGINT, and drains it.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use dtcp_relay::{Config, LogFormat, Relay};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    tune_malloc();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(config.log_format);
    // One TLS provider for the process (Redis over rediss:// asks for the default).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = dtcp_relay::metrics::install().context("installing the metrics recorder")?;
    // Before anything is bound: a signal that arrives as soon as the node
    // says it listens must start a drain, not kill the process.
    let shutdown = shutdown_signal().context("installing signal handlers")?;
    tokio::spawn(trim_heap_now_and_then());
    let relay = Relay::bind(config, metrics).await?;
    relay.run(shutdown).await?;
    Ok(())
}

/// Keeps glibc's malloc from giving large buffers back to the kernel after
/// every use.
///
/// By default glibc serves an allocation over 128 KiB (or its adaptive
/// threshold) with mmap and trims the heap when its free top passes twice
/// that, so the forwarding plane's buffers (HTTP/2 reads of up to a 1 MiB
/// frame, 256 KiB data frames) came back as fresh pages, faulted in one by
/// one: 15% of a node's CPU at full speed. Fixed thresholds keep them in the
/// heap for reuse. `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` in
/// the environment still take precedence.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 4 << 20;
        const TRIM_THRESHOLD: libc::c_int = 32 << 20;
        let set = |name| std::env::var_os(name).is_some();
        // SAFETY: mallopt only sets allocator parameters; it is called
        // before any thread exists.
        unsafe {
            if !set("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            }
            if !set("MALLOC_TRIM_THRESHOLD_") {
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            }
            // One arena per core, the runtime's worker count, rather than
            // glibc's eight: freed heap left fragmented in an arena after a
            // burst is not handed back by a trim, and more arenas keep
            // more of it.
            if !set("MALLOC_ARENA_MAX") {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                libc::mallopt(libc::M_ARENA_MAX, cores.min(64) as libc::c_int);
            }
        }
    }
}

/// How often freed heap is handed back to the kernel (see [`tune_malloc`]).
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Hands the heap's free memory back to the kernel every [`TRIM_EVERY`].
///
/// The trim threshold [`tune_malloc`] sets holds for each of glibc's
/// arenas (about one per thread that allocates), so after a burst a node
/// kept 32 MiB of freed heap several times over: up to +53 MiB after a
/// crowd's half-sent plane messages. A trim every few seconds gives that
/// back and, at full speed, costs one refill of the buffers per interval
/// rather than one per use.
async fn trim_heap_now_and_then() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut every = tokio::time::interval(TRIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // Off the runtime's threads: a trim takes every arena's lock.
            // SAFETY: malloc_trim only returns free memory to the kernel.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Installs the SIGTERM and SIGINT handlers now; the future completes on the
/// first of them.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
