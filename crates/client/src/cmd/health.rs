//! `dtcp health`: asks a relay's metrics listener whether it takes new
//! sessions, for container health checks where the image has no shell and
//! no HTTP client.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;

/// `health` of every address `addr` resolves to: all must be ready, and a
/// name that resolves to nothing fails rather than passing unchecked.
pub(crate) async fn health_every(addr: &str) -> anyhow::Result<()> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .collect();
    if addrs.is_empty() {
        bail!("{addr} resolves to no address");
    }
    let mut failed = 0;
    for a in &addrs {
        match health(&a.to_string()).await {
            Ok(()) => println!("{a}: ready"),
            Err(e) => {
                println!("{a}: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} addresses not ready", addrs.len());
    }
    Ok(())
}

/// Exits 0 (returns `Ok`) when `GET /readyz` at `addr` answers 200.
pub(crate) async fn health(addr: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let check = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        s.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(3), check)
        .await
        .context("no answer within 3 s")??;
    let status = String::from_utf8_lossy(&response);
    if status.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        bail!(
            "not ready: {}",
            status.lines().next().unwrap_or("no status line")
        )
    }
}
