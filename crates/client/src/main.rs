//! `dtcp`: send or receive one file, directly or through a DTCP relay.
//!
//! This file holds the command line (what each subcommand takes) and hands
//! each subcommand to its file under `cmd/`.

#![forbid(unsafe_code)]

mod cmd;

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use dtcp_client::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_REPLY_TIMEOUT, Timeouts};

use cmd::args::{CodeSource, Listen, Session, candidate_list, parse_listen, secs};
use cmd::exit::Report;
use cmd::{health, keygen, recv, send};

#[derive(Debug, Parser)]
#[command(
    name = "dtcp",
    version,
    about = "Send or receive a file or a directory, directly or through a DTCP relay.",
    long_about = "Send or receive a file or a directory, directly or through a DTCP relay.\n\n\
        Without a key, `dtcp send` prints a short code and the command for the other side, \
        and the transfer is end-to-end encrypted, authenticated by the code.\n\n\
        Exit status: 0 done; 1 other error; 2 bad arguments; 3 refused by the relay \
        (or the sender's listener); 4 network (unreachable, cut, timed out); \
        5 authentication failed (wrong code, burned code, TLS fingerprint); \
        6 local file error (cannot read or write, would overwrite, unsafe path in a directory)."
)]
struct Cli {
    /// Print one JSON line per event on standard output (the code, then
    /// the result or the error), for scripts.
    #[arg(long, global = true)]
    json: bool,
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
        /// Secure the stream end to end: prints a fingerprint to give the
        /// receiver (explicit mode; code mode always encrypts).
        #[arg(long)]
        tls: bool,
        /// After a wrong code, how long to keep the session to tell the next
        /// receiver that this code is burned, in seconds (code mode).
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        notify_wait: u64,
        /// The file or directory to send; `-` is standard input.
        file: PathBuf,
    },
    /// Be the Target: claim the session and receive the file.
    Recv {
        #[command(flatten)]
        session: Session,
        #[command(flatten)]
        code: CodeSource,
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
        /// Where to write the file or directory (written as PATH.part, moved
        /// into place when complete; `-`: standard output). By default the
        /// name the sender gives, in the current directory (code mode), or
        /// standard output (explicit mode).
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// Replace an existing file at the output path (never a directory).
        #[arg(long)]
        overwrite: bool,
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
    /// Print a completion script for SHELL on standard output (e.g.
    /// `dtcp completions bash > /etc/bash_completion.d/dtcp`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on standard output (e.g. `dtcp man > dtcp.1`).
    Man,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let report = Report::new(cli.json);
    if let Err(e) = run(cli, &report).await {
        std::process::exit(report.failed(&e));
    }
}

async fn run(cli: Cli, report: &Report) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Send {
            session,
            listen,
            tls,
            notify_wait,
            file,
        } => {
            let notify_wait = Duration::from_secs(notify_wait);
            send::send(session, &listen, tls, notify_wait, &file, report).await
        }
        Cmd::Recv {
            session,
            code,
            candidates,
            connect_timeout,
            reply_timeout,
            tls_fingerprint,
            output,
            overwrite,
            wait,
        } => {
            let timeouts = Timeouts {
                connect: secs(connect_timeout, "--connect-timeout")?,
                reply: secs(reply_timeout, "--reply-timeout")?,
                ..Timeouts::default()
            };
            let list = candidate_list(&session, candidates.as_deref())?;
            let wait = Duration::from_secs(wait);
            let opts = recv::Options {
                timeouts,
                fingerprint: tls_fingerprint,
                output,
                overwrite,
                wait,
            };
            recv::recv(session, code, list, opts, report).await
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
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "dtcp", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man => Ok(clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?),
    }
}
