//! `dtcp`: send or receive one file, directly or through a DTCP relay.

#![forbid(unsafe_code)]

mod keygen;

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use dtcp_client::direct::interface_addrs;
use dtcp_client::transfer::{self, TransferError};
use dtcp_client::{
    Candidate, Candidates, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REPLY_TIMEOUT, Initiator, OfferEvent,
    Paired, Route, Target, Timeouts, tls,
};
use dtcp_wire::Triple;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

#[derive(Debug, Parser)]
#[command(
    name = "dtcp",
    version,
    about = "Send or receive a file, directly or through a DTCP relay."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Be the Initiator: register the session (and listen, with --listen)
    /// and send FILE once the Target connects.
    Send {
        #[command(flatten)]
        session: Session,
        /// Also listen here, so that the receiver can come directly: `IP:PORT`,
        /// `IP` (a port the system picks), `auto` (every non-loopback address
        /// of this machine) or `auto:PORT`. Repeatable. Prints the candidate
        /// list to give the receiver.
        #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
        listen: Vec<Listen>,
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
        /// The candidate list printed by `dtcp send --listen` (e.g.
        /// `dtcp://192.168.1.5:7001,relay@relay.example.org:7777`), tried in
        /// order; a --relay is tried after them.
        #[arg(long, env = "DTCP_CANDIDATES", value_name = "LIST")]
        candidates: Option<String>,
        /// How long to wait for each candidate's connection, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = DEFAULT_CONNECT_TIMEOUT.as_secs_f64())]
        connect_timeout: f64,
        /// How long to wait for a direct candidate's answer to CONNECT, in
        /// seconds (a relay gets 10 s: it may wait its connect grace).
        #[arg(long, value_name = "SECS", default_value_t = DEFAULT_REPLY_TIMEOUT.as_secs_f64())]
        reply_timeout: f64,
        /// The sender's fingerprint (printed by `dtcp send --tls`): turns on end-to-end TLS.
        #[arg(long, value_name = "HEX")]
        tls_fingerprint: Option<String>,
        /// Where to write the file (written as FILE.part, renamed when complete);
        /// standard output by default.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// How long to keep asking for the sender's session while it is not
        /// there yet (refused connections, `not-found`: the sender may not
        /// have started), in seconds.
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        wait: u64,
    },
    /// Print a signed key for two JIDs (for a relay started with `--key-secret-file`).
    Keygen(keygen::Keygen),
    /// Ask a relay's metrics listener whether it takes new sessions
    /// (`GET /readyz`): exit 0 if so. For container health checks, where the
    /// image has no shell and no HTTP client.
    Health {
        /// The metrics listener, `HOST:PORT`.
        #[arg(default_value = "127.0.0.1:9777")]
        addr: String,
        /// Ask every address the name resolves to (e.g. a headless Service:
        /// every pod), and exit 0 only if each is ready.
        #[arg(long)]
        every_address: bool,
    },
}

#[derive(Debug, Args)]
struct Session {
    /// The relay, `HOST:PORT` (optional for `send --listen` and `recv --candidates`).
    #[arg(long, env = "DTCP_RELAY", value_name = "HOST:PORT")]
    relay: Option<String>,
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
        Cmd::Send {
            session,
            listen,
            tls,
            file,
        } => send(session, &listen, tls, &file).await,
        Cmd::Recv {
            session,
            candidates,
            connect_timeout,
            reply_timeout,
            tls_fingerprint,
            output,
            wait,
        } => {
            let timeouts = Timeouts {
                connect: secs(connect_timeout, "--connect-timeout")?,
                reply: secs(reply_timeout, "--reply-timeout")?,
                ..Timeouts::default()
            };
            let list = candidate_list(&session, candidates.as_deref())?;
            let wait = Duration::from_secs(wait);
            recv(session, list, timeouts, tls_fingerprint, output, wait).await
        }
        Cmd::Health {
            addr,
            every_address: false,
        } => health(&addr).await,
        Cmd::Health {
            addr,
            every_address: true,
        } => health_every(&addr).await,
        Cmd::Keygen(args) => keygen::run(args),
    }
}

/// `health` of every address `addr` resolves to: all must be ready.
async fn health_every(addr: &str) -> anyhow::Result<()> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
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

/// A `--listen` value.
#[derive(Debug, Clone)]
enum Listen {
    /// One address.
    Addr(SocketAddr),
    /// Every non-loopback interface address, on this port (0: any).
    Auto(u16),
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port number"))
    };
    if s == "auto" {
        return Ok(Listen::Auto(0));
    }
    if let Some(p) = s.strip_prefix("auto:") {
        return port(p).map(Listen::Auto);
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Listen::Addr(addr));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Listen::Addr(SocketAddr::new(ip, 0)));
    }
    Err("expected IP:PORT, IP, auto or auto:PORT (IPv6 in brackets with a port: [2001:db8::5]:7001)".into())
}

/// The addresses to bind for these `--listen` values.
fn listen_addrs(listen: &[Listen]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for l in listen {
        match l {
            Listen::Addr(a) => out.push(*a),
            Listen::Auto(port) => {
                let ips = interface_addrs().context("listing this machine's addresses")?;
                if ips.is_empty() {
                    bail!("--listen auto: this machine has no address but loopback");
                }
                out.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, *port)));
            }
        }
    }
    out.dedup();
    Ok(out)
}

fn secs(v: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("{flag}: {v} is not a duration"))
}

async fn send(
    session: Session,
    listen: &[Listen],
    use_tls: bool,
    file: &Path,
) -> anyhow::Result<()> {
    let triple = session.triple()?;
    let addrs = listen_addrs(listen)?;
    if addrs.is_empty() && session.relay.is_none() {
        bail!("give --relay HOST:PORT, --listen ADDR, or both");
    }
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
    let offer = Initiator::offer(&addrs, session.relay.as_deref(), &triple).await?;
    if !addrs.is_empty() {
        let list = offer.candidates();
        eprintln!("candidates: {list}");
        eprintln!("(give them to the receiver: dtcp recv --candidates '{list}' ...)");
    }
    let mut places: Vec<String> = offer
        .local_addrs()
        .iter()
        .map(|a| format!("on {a}"))
        .collect();
    if let Some(relay) = &session.relay {
        places.push(format!("through the relay {relay}"));
    }
    eprintln!("waiting for the receiver {} ...", places.join(", "));
    let paired = offer
        .accept_with(|event| match event {
            OfferEvent::RelayFailed(e) => {
                eprintln!("dtcp: the relay path failed ({e}); still waiting on the listeners");
            }
            OfferEvent::DirectRefused { peer, condition } => {
                eprintln!("dtcp: refused a connection from {peer}: {condition}");
            }
        })
        .await?;
    announce(&paired, "receiver");
    let route = paired.route;
    let bar = progress(size, route);
    let sent = match identity {
        Some(id) => {
            let mut s = tls::accept(paired.stream, &id).await?;
            transfer::send(&mut s, &mut src, size, |n| bar.inc(n)).await
        }
        None => {
            let mut s = paired.stream;
            transfer::send(&mut s, &mut src, size, |n| bar.inc(n)).await
        }
    };
    finish(&bar, sent, "sent", route)
}

/// One line saying which path the transfer takes.
fn announce(paired: &Paired, peer: &str) {
    match paired.route {
        Route::Direct => eprintln!("connected directly: the {peer} is at {}", paired.peer),
        Route::Relay => eprintln!("connected through the relay at {}", paired.peer),
    }
}

/// The receiver's candidates: `--candidates`, then `--relay`.
fn candidate_list(session: &Session, candidates: Option<&str>) -> anyhow::Result<Candidates> {
    let mut list = match candidates {
        Some(text) => text.parse::<Candidates>().context("--candidates")?,
        None => Candidates::default(),
    };
    if let Some(relay) = &session.relay {
        list.push(Candidate::relay(relay).context("--relay")?);
    }
    if list.is_empty() {
        bail!("give --relay HOST:PORT, --candidates LIST, or both");
    }
    Ok(list)
}

async fn recv(
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

fn progress(size: Option<u64>, route: Route) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
    style(&bar, size, route);
    bar
}

/// The bar starts with the path: `direct` or `relay`.
fn style(bar: &ProgressBar, size: Option<u64>, route: Route) {
    bar.set_length(size.unwrap_or(0));
    bar.set_prefix(route.to_string());
    let template = match size {
        Some(_) => {
            "{prefix} {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}"
        }
        None => "{prefix} {spinner} {binary_bytes} {binary_bytes_per_sec} {elapsed}",
    };
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(200));
}

fn finish(
    bar: &ProgressBar,
    result: Result<u64, TransferError>,
    verb: &str,
    route: Route,
) -> anyhow::Result<()> {
    bar.finish_and_clear();
    match result {
        Ok(n) => {
            if std::io::stderr().is_terminal() {
                eprintln!("{verb} {n} bytes {}", route.adverb());
            }
            Ok(())
        }
        Err(e) => bail!(e),
    }
}
