//! `dtcp`: send or receive one file through a DTCP relay.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use dtcp_client::transfer::{self, TransferError};
use dtcp_client::{Initiator, Target, tls};
use dtcp_wire::{Condition, Triple};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

#[derive(Debug, Parser)]
#[command(
    name = "dtcp",
    version,
    about = "Send or receive a file through a DTCP relay."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Be the Initiator: register the session and send FILE once the Target connects.
    Send {
        #[command(flatten)]
        session: Session,
        /// Secure the stream end to end: prints a fingerprint to give the receiver.
        #[arg(long)]
        tls: bool,
        /// The file to send; `-` is standard input.
        file: PathBuf,
    },
    /// Be the Target: claim the session and receive the file.
    Recv {
        #[command(flatten)]
        session: Session,
        /// The sender's fingerprint (printed by `dtcp send --tls`): turns on end-to-end TLS.
        #[arg(long, value_name = "HEX")]
        tls_fingerprint: Option<String>,
        /// Where to write the file (written as FILE.part, renamed when complete);
        /// standard output by default.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// How long to keep asking for the sender's session when the relay
        /// answers `not-found` (the sender may not have started yet), in seconds.
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        wait: u64,
    },
    /// Ask a relay's metrics listener whether it takes new sessions
    /// (`GET /readyz`): exit 0 if so. For container health checks, where the
    /// image has no shell and no HTTP client.
    Health {
        /// The metrics listener, `HOST:PORT`.
        #[arg(default_value = "127.0.0.1:9777")]
        addr: String,
    },
}

#[derive(Debug, Args)]
struct Session {
    /// The relay, `HOST:PORT`.
    #[arg(long, env = "DTCP_RELAY", value_name = "HOST:PORT")]
    relay: String,
    /// The key both sides agreed on.
    #[arg(long, env = "DTCP_KEY", hide_env_values = true)]
    key: String,
    /// The Initiator's (sender's) JID.
    #[arg(long = "from", value_name = "INITIATOR_JID")]
    initiator: String,
    /// The Target's (receiver's) JID.
    #[arg(long = "to", value_name = "TARGET_JID")]
    target: String,
}

impl Session {
    fn triple(&self) -> anyhow::Result<Triple> {
        Triple::new(&self.key, &self.initiator, &self.target).context("invalid key or JID")
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("dtcp: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Send { session, tls, file } => send(session, tls, &file).await,
        Cmd::Recv {
            session,
            tls_fingerprint,
            output,
            wait,
        } => recv(session, tls_fingerprint, output, Duration::from_secs(wait)).await,
        Cmd::Health { addr } => health(&addr).await,
    }
}

async fn health(addr: &str) -> anyhow::Result<()> {
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

async fn send(session: Session, use_tls: bool, file: &Path) -> anyhow::Result<()> {
    let triple = session.triple()?;
    let (mut src, size): (Box<dyn AsyncRead + Unpin + Send>, Option<u64>) =
        if file == Path::new("-") {
            (Box::new(tokio::io::stdin()), None)
        } else {
            let f = tokio::fs::File::open(file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let len = f.metadata().await?.len();
            (Box::new(f), Some(len))
        };
    let identity = if use_tls {
        let id = tls::Identity::generate()?;
        eprintln!("TLS fingerprint: {}", id.fingerprint());
        eprintln!(
            "(give it to the receiver: dtcp recv --tls-fingerprint {} ...)",
            id.fingerprint()
        );
        Some(id)
    } else {
        None
    };
    eprintln!("waiting for the receiver on {} ...", session.relay);
    let stream = Initiator::connect(&session.relay, &triple).await?;
    let bar = progress(size);
    let sent = match identity {
        Some(id) => {
            let mut s = tls::accept(stream, &id).await?;
            transfer::send(&mut s, &mut src, size, |n| bar.inc(n)).await
        }
        None => {
            let mut s = stream;
            transfer::send(&mut s, &mut src, size, |n| bar.inc(n)).await
        }
    };
    finish(&bar, sent, "sent")
}

async fn recv(
    session: Session,
    fingerprint: Option<String>,
    output: Option<PathBuf>,
    wait: Duration,
) -> anyhow::Result<()> {
    let triple = session.triple()?;
    let fingerprint = fingerprint
        .map(|f| tls::parse_fingerprint(&f))
        .transpose()?;
    let stream = claim(&session.relay, &triple, wait).await?;
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
        bar.set_draw_target(ProgressDrawTarget::stderr());
        style(&bar, size);
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
    finish(&bar, got, "received")
}

/// CONNECTs until the sender's CREATE is there: the relay waits only its
/// connect grace (5 s by default), and people start the two ends by hand.
async fn claim(
    relay: &str,
    triple: &Triple,
    wait: Duration,
) -> anyhow::Result<tokio::net::TcpStream> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut told = false;
    loop {
        match Target::connect(relay, triple).await {
            Err(e)
                if e.condition() == Some(Condition::NotFound)
                    && tokio::time::Instant::now() < deadline =>
            {
                if !told {
                    eprintln!("waiting for the sender on {relay} ...");
                    told = true;
                }
                // The relay already waited its grace; ask again at once.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return Ok(other?),
        }
    }
}

fn progress(size: Option<u64>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
    style(&bar, size);
    bar
}

fn style(bar: &ProgressBar, size: Option<u64>) {
    bar.set_length(size.unwrap_or(0));
    let template = match size {
        Some(_) => "{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        None => "{spinner} {binary_bytes} {binary_bytes_per_sec} {elapsed}",
    };
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(200));
}

fn finish(bar: &ProgressBar, result: Result<u64, TransferError>, verb: &str) -> anyhow::Result<()> {
    bar.finish_and_clear();
    match result {
        Ok(n) => {
            if std::io::stderr().is_terminal() {
                eprintln!("{verb} {n} bytes");
            }
            Ok(())
        }
        Err(e) => bail!(e),
    }
}
