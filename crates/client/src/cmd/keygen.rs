//! `dtcp keygen`: a signed key for two JIDs (docs/PROTOCOL.md section 5), as a
//! service that hands keys to its users would make it.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use dtcp_wire::Secrets;

/// The arguments of `dtcp keygen`.
#[derive(Debug, Args)]
pub(crate) struct Keygen {
    /// A file of key secrets, one per line: the first one signs (as the relay's
    /// `--key-secret-file`).
    #[arg(long, value_name = "PATH")]
    secret_file: PathBuf,
    /// Seconds the key stays valid (at most the relay's `--max-key-lifetime`).
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    ttl: u64,
    /// The Initiator's (sender's) JID, exactly as it will be sent.
    #[arg(long = "from", value_name = "INITIATOR_JID")]
    initiator: String,
    /// The Target's (receiver's) JID, exactly as it will be sent.
    #[arg(long = "to", value_name = "TARGET_JID")]
    target: String,
}

/// Prints the key; both peers then pass it as `--key`.
pub(crate) fn run(args: Keygen) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.secret_file)
        .with_context(|| format!("reading {}", args.secret_file.display()))?;
    let secrets = Secrets::from_lines(&text);
    let Some(secret) = secrets.signing() else {
        bail!("{} holds no secret", args.secret_file.display());
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    // 122 random bits, in the nonce alphabet.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let key = dtcp_wire::sign(
        secret,
        now + args.ttl,
        &nonce,
        &args.initiator,
        &args.target,
    )?;
    println!("{key}");
    Ok(())
}
