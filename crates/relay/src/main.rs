//! `dtcp-relay`: one relay node. Parses the configuration, sets up logging,
//! the TLS provider and the metrics recorder, then binds and runs a
//! [`dtcp_relay::Relay`] until SIGTERM or SIGINT, and drains it.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use dtcp_relay::{Config, LogFormat, Relay};
use tracing_subscriber::EnvFilter;

/// The relay's allocator on Linux: jemalloc, configured by [`MALLOC_CONF`]
/// (elsewhere the system's: jemalloc's background thread, which the
/// configuration asks for, exists only on Linux, and its start fails
/// without it).
///
/// A burst of pairings allocates far more for a moment (handshakes, plane
/// calls, store replies) than the sessions it leaves keep, and frees it
/// between their allocations. glibc's malloc kept that freed heap: pages
/// still holding a live session's few hundred bytes cannot be trimmed, and
/// an idle forwarded session cost its nodes 9-15 KB of RSS. jemalloc
/// keeps allocations of one size together and hands whole free pages back
/// on its own; an idle forwarded session costs about 6 KB
/// (docs/PERFORMANCE.md, "Memory per pending registration and per idle
/// session").
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (`_RJEM_MALLOC_CONF` in the
/// environment still overrides them):
///
/// - `background_thread`: a thread of jemalloc's own returns freed pages
///   to the kernel; without it pages are only returned while the process
///   allocates, so an idle node kept a burst's freed memory;
/// - `dirty_decay_ms:1000,muzzy_decay_ms:0`: freed pages go back within a
///   second, at once rather than in two stages;
/// - `narenas:1,tcache:false`: one arena and no per-thread caches, so that
///   what one worker thread frees another's next allocation reuses, rather
///   than each thread keeping a share of the burst's memory (6.0 KB a
///   forwarded session against 6.8-7.1 KB with the caches, 6.5-7.9 KB with
///   two arenas, 7.0-11.1 KB with jemalloc's default of four per core). A local or lane session's bytes are
///   spliced or moved in pooled buffers, so what they allocate is per
///   connection, not per byte; the Bridge's HTTP/2 frames and TLS records
///   allocate per frame, measured no slower on two cores (more cores, more
///   threads contending for the one arena: not measured).
#[cfg(target_os = "linux")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf = MallocConf(
    c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:1,tcache:false".as_ptr(),
);

/// jemalloc's `const char *malloc_conf`: one thin pointer to a C string
/// (a `&CStr` is not one).
#[cfg(target_os = "linux")]
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a string literal, never written.
#[cfg(target_os = "linux")]
unsafe impl Sync for MallocConf {}

fn main() -> anyhow::Result<()> {
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
    let relay = Relay::bind(config, metrics).await?;
    relay.run(shutdown).await?;
    Ok(())
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
