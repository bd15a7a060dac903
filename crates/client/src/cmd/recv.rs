//! `dtcp recv`: the Target. Tries the candidates until the sender is there,
//! then receives the file (to `FILE.part`, renamed once complete).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use dtcp_client::transfer;
use dtcp_client::{Candidates, Paired, Target, Timeouts, tls};
use dtcp_wire::Triple;
use indicatif::{ProgressBar, ProgressDrawTarget};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::args::Session;
use super::progress::{announce, finish, style};

/// Runs `dtcp recv`.
pub(crate) async fn recv(
    session: Session,
    candidates: Candidates,
    timeouts: Timeouts,
    fingerprint: Option<String>,
    output: Option<PathBuf>,
    wait: Duration,
) -> anyhow::Result<()> {
    let triple = session.triple()?;
    let fingerprint = fingerprint
        .map(|f| tls::parse_fingerprint(&f))
        .transpose()?;
    let paired = claim(&candidates, &triple, &timeouts, wait).await?;
    announce(&paired, "sender");
    let route = paired.route;
    let stream = paired.stream;
    let (mut dst, part): (
        Box<dyn AsyncWrite + Unpin + Send>,
        Option<(PathBuf, PathBuf)>,
    ) = match output {
        Some(path) => {
            let mut part = path.clone().into_os_string();
            part.push(".part");
            let part = PathBuf::from(part);
            let f = tokio::fs::File::create(&part)
                .await
                .with_context(|| format!("creating {}", part.display()))?;
            (
                Box::new(tokio::io::BufWriter::with_capacity(1 << 20, f)),
                Some((part, path)),
            )
        }
        None => (Box::new(tokio::io::stdout()), None),
    };
    let bar = ProgressBar::hidden();
    let on_size = |size: Option<u64>| {
        style(&bar, size, route);
        bar.set_draw_target(ProgressDrawTarget::stderr());
    };
    let got = match fingerprint {
        Some(fp) => {
            let mut s = tls::connect(stream, fp).await?;
            transfer::receive(&mut s, &mut dst, on_size, |n| bar.inc(n)).await
        }
        None => {
            let mut s = stream;
            transfer::receive(&mut s, &mut dst, on_size, |n| bar.inc(n)).await
        }
    };
    dst.shutdown().await.ok();
    drop(dst);
    if let Some((part, path)) = part {
        if got.is_ok() {
            tokio::fs::rename(&part, &path)
                .await
                .with_context(|| format!("renaming {} to {}", part.display(), path.display()))?;
        } else {
            eprintln!("dtcp: incomplete data left in {}", part.display());
        }
    }
    finish(&bar, got, "received", route)
}

/// Tries the candidates until the sender is there: people start the two
/// ends by hand, and the relay waits only its connect grace (5 s by default)
/// for a CREATE. Each failed attempt of the first round is told, so the way
/// to the fallback shows.
async fn claim(
    candidates: &Candidates,
    triple: &Triple,
    timeouts: &Timeouts,
    wait: Duration,
) -> anyhow::Result<Paired> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut round = 0;
    loop {
        round += 1;
        let last = candidates.len();
        let mut n = 0;
        let tell = |a: &dtcp_client::Attempt| {
            n += 1;
            // The last one's failure is in the line or the error below.
            if round == 1 && n < last {
                eprintln!("dtcp: {a}; trying the next");
            }
        };
        match Target::connect_any_with(candidates, triple, timeouts, tell).await {
            Ok(paired) => return Ok(paired),
            Err(all) if all.is_transient() && tokio::time::Instant::now() < deadline => {
                if round == 1 {
                    eprintln!("waiting for the sender ({candidates}) ...");
                }
                // Whoever answered not-found already waited; ask again soon.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(all) => return Err(all.into()),
        }
    }
}
