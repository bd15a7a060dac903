//! Forwarded sessions by path, read off the relay nodes' `/metrics` while
//! `hold` holds its sessions: how many of them cross on lanes and how many
//! fell back to their Bridge, which weighs on the memory a held session
//! costs.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long connecting to a node's metrics listener and reading its page
/// may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest page read (tens of KiB in practice).
const MAX_PAGE_BYTES: u64 = 16 << 20;
/// Forwarded sessions on a lane now, counted by the node holding the
/// Initiator (each forwarded session once).
const ON_LANES: &str = r#"dtcp_lanes_active{role="server"}"#;
/// Forwarded sessions whose bytes cross on their Bridge now, counted the
/// same way.
const ON_BRIDGE: &str = r#"dtcp_bridge_streams_active{role="server"}"#;

/// Forwarded sessions open now on lanes and on their Bridge, summed over
/// the nodes whose metrics listeners are `nodes`.
pub(crate) async fn sessions_by_path(nodes: &[SocketAddr]) -> anyhow::Result<(f64, f64)> {
    let (mut lanes, mut bridge) = (0.0, 0.0);
    for node in nodes {
        let page = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(*node))
            .await
            .map_err(io::Error::from)
            .and_then(|page| page)
            .with_context(|| format!("reading http://{node}/metrics"))?;
        lanes += sample(&page, ON_LANES);
        bridge += sample(&page, ON_BRIDGE);
    }
    Ok((lanes, bridge))
}

/// The metrics page of the node listening at `addr`. HTTP/1.0: the body
/// comes whole, never chunked, and ends with the connection.
async fn scrape(addr: SocketAddr) -> io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: relay\r\n\r\n")
        .await?;
    let mut page = Vec::new();
    s.take(MAX_PAGE_BYTES).read_to_end(&mut page).await?;
    Ok(String::from_utf8_lossy(&page).into_owned())
}

/// The value of `series` (a name with its labels, as the page spells
/// them) on a metrics page; 0 if it is not there.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_read_by_its_name_and_labels() {
        let page = "# TYPE dtcp_lanes_active gauge\n\
                    dtcp_lanes_active{role=\"client\"} 7\n\
                    dtcp_lanes_active{role=\"server\"} 1998\n\
                    dtcp_bridge_streams_active{role=\"server\"} 2\n";
        assert_eq!(sample(page, ON_LANES), 1998.0);
        assert_eq!(sample(page, ON_BRIDGE), 2.0);
        assert_eq!(sample(page, r#"dtcp_lanes_active{role="serve"}"#), 0.0);
        assert_eq!(sample("", ON_LANES), 0.0, "absent: none");
    }
}
