//! `dtcp`: send or receive one file, directly or through a DTCP relay.
//!
//! This file holds the command line (what each subcommand takes) and hands
//! each subcommand to its file under `cmd/`.

#![forbid(unsafe_code)]

mod cmd;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dtcp_client::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_REPLY_TIMEOUT, Timeouts};

use cmd::args::{Listen, Session, candidate_list, parse_listen, secs};
use cmd::{health, keygen, recv, send};

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
        } => send::send(session, &listen, tls, &file).await,
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
            recv::recv(session, list, timeouts, tls_fingerprint, output, wait).await
        }
        Cmd::Health {
            addr,
            every_address: false,
        } => health::health(&addr).await,
        Cmd::Health {
            addr,
            every_address: true,
        } => health::health_every(&addr).await,
        Cmd::Keygen(args) => keygen::run(args),
    }
}
