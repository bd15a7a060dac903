use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use dtcp_relay::{Config, LogFormat, Relay};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
