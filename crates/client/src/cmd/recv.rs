//! `dtcp recv`: the Target. Tries the candidates until the sender is there,
//! then (code mode) runs the code exchange, and receives the file or
//! directory under `PATH.part`, moved into place once complete.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use dtcp_client::code;
use dtcp_client::transfer;
use dtcp_client::{Candidates, Paired, Route, Target, Timeouts, tls};
use dtcp_wire::Triple;
use indicatif::{ProgressBar, ProgressDrawTarget};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::args::{CodeSource, Session};
use super::exit::Report;
use super::files::{self, Header, Place};
use super::progress::{announce, finish, style};

/// What `dtcp recv` was asked besides the session.
pub(crate) struct Options {
    pub(crate) timeouts: Timeouts,
    pub(crate) fingerprint: Option<String>,
    pub(crate) output: Option<PathBuf>,
    pub(crate) overwrite: bool,
    pub(crate) wait: Duration,
}

/// Runs `dtcp recv`.
pub(crate) async fn recv(
    session: Session,
    code: CodeSource,
    candidates: Candidates,
    opts: Options,
    report: &Report,
) -> anyhow::Result<()> {
    let explicit = session.explicit();
    let with_code = !explicit || session.with_code || code.given();
    let code = with_code.then(|| code.code()).transpose()?;
    let triple = match &code {
        Some(c) if !explicit => c.triple(),
        _ => session.triple()?,
    };
    let fingerprint = opts
        .fingerprint
        .as_deref()
        .map(tls::parse_fingerprint)
        .transpose()?;
    // Without a code (so without the sender's header) where to write is
    // known before connecting: refuse early.
    let place = match code {
        None => Some(files::place(opts.output.as_deref(), None, opts.overwrite)?),
        Some(_) => None,
    };
    let paired = claim(&candidates, &triple, &opts.timeouts, opts.wait).await?;
    announce(&paired, "sender");
    let route = paired.route;
    match (code, fingerprint) {
        (Some(code), _) => {
            let mut s = code::receiver(paired.stream, &code).await?;
            let header = Header::read(&mut s).await?;
            let place = files::place(opts.output.as_deref(), Some(&header), opts.overwrite);
            let refusal = place.as_ref().err().map(|e| format!("{e:#}"));
            files::answer(&mut s, refusal.as_deref()).await?;
            receive(&mut s, place?, &opts, route, report).await
        }
        (None, Some(fp)) => {
            let mut s = tls::connect(paired.stream, fp).await?;
            receive(&mut s, place.expect("explicit"), &opts, route, report).await
        }
        (None, None) => {
            let mut s = paired.stream;
            receive(&mut s, place.expect("explicit"), &opts, route, report).await
        }
    }
}

/// Receives into `place`: a `.part` file (for a directory, its tar stream)
/// moved or unpacked into place once complete, and removed if not.
async fn receive<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    place: Place,
    opts: &Options,
    route: Route,
    report: &Report,
) -> anyhow::Result<()> {
    if report.json() && matches!(place, Place::Stdout) {
        bail!("--json takes standard output: give -o PATH");
    }
    let part = match &place {
        Place::Stdout => None,
        Place::File { part, .. } => Some(part.clone()),
        Place::Dir { part, .. } => Some(files::with_suffix(part, ".tar")),
    };
    let mut dst: Box<dyn AsyncWrite + Unpin + Send> = match &part {
        None => Box::new(tokio::io::stdout()),
        Some(part) => {
            let f = files::create_part(part, opts.overwrite).await?;
            Box::new(tokio::io::BufWriter::with_capacity(1 << 20, f))
        }
    };
    let bar = ProgressBar::hidden();
    let on_size = |size: Option<u64>| {
        style(&bar, size, route);
        bar.set_draw_target(ProgressDrawTarget::stderr());
    };
    // Confirmed only once the file is in place (or the directory unpacked),
    // so that the sender reports success only then.
    let got = transfer::receive_unconfirmed(s, &mut dst, on_size, |n| bar.inc(n)).await;
    dst.shutdown().await.ok();
    drop(dst);
    if let (Err(_), Some(part)) = (&got, &part) {
        tokio::fs::remove_file(part).await.ok();
    }
    let n = finish(&bar, got, "received", route)?;
    let path = match (&place, &part) {
        (Place::File { path, part }, _) => {
            files::finish_file(part, path, opts.overwrite).await?;
            Some(path)
        }
        (Place::Dir { path, part }, Some(tar)) => {
            files::finish_dir(tar, part, path).await?;
            Some(path)
        }
        _ => None,
    };
    transfer::confirm(s).await?;
    if let Some(path) = path {
        eprintln!("received {}", path.display());
    }
    report.done("recv", n, route, path.map(PathBuf::as_path));
    Ok(())
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
