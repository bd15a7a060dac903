//! Reading a secret (a key, a code) from anywhere but the command line: a
//! file or standard input, an environment variable the person names, or a
//! prompt on the terminal.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, bail};

/// The longest line read as a secret: a key is at most 256 bytes.
const MAX_LINE: u64 = 4096;

/// The first line of `path` (`-`: standard input), without its newline.
pub(crate) fn from_file(path: &Path, flag: &str) -> anyhow::Result<String> {
    let line = if path == Path::new("-") {
        read_line(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(path).with_context(|| format!("{flag} {}", path.display()))?;
        read_line(std::io::BufReader::new(f))
    }
    .with_context(|| format!("{flag} {}", path.display()))?;
    non_empty(line, flag)
}

/// The value of the environment variable `var`.
pub(crate) fn from_env(var: &str, flag: &str) -> anyhow::Result<String> {
    let value = std::env::var(var).with_context(|| format!("{flag}: ${var}"))?;
    non_empty(value.trim().to_owned(), flag)
}

/// Asks on the terminal. Off a terminal there is nobody to ask: say where
/// the secret can come from instead.
pub(crate) fn prompt(what: &str) -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "no {what}: type it at the prompt on a terminal, or give --{what}-file FILE (`-`: standard input) or --{what}-env VAR"
        );
    }
    let line = if what == "key" {
        // A key is kept and reused: not echoed. A code is one-time and
        // echoed, so that a typo shows before the one try is spent.
        rpassword::prompt_password("key (not shown): ").context("reading the prompt")?
    } else {
        eprint!("{what}: ");
        std::io::stderr().flush().ok();
        read_line(std::io::stdin().lock()).context("reading the prompt")?
    };
    non_empty(line.trim().to_owned(), what)
}

fn read_line(r: impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    r.take(MAX_LINE).read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

fn non_empty(s: String, what: &str) -> anyhow::Result<String> {
    if s.is_empty() {
        bail!("{what}: empty");
    }
    Ok(s)
}
