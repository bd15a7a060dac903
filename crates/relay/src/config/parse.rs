//! The value parsers of the flags.

use std::num::NonZeroU32;
use std::time::Duration;

/// Bytes a second, written `N/s`, `10M/s`, `512Ki/s` (or without `/s`).
pub(super) fn parse_bytes_rate(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a rate in bytes a second, like 10M/s");
    let n = s.strip_suffix("/s").unwrap_or(s).trim();
    let n = n.strip_suffix('B').unwrap_or(n);
    let (digits, unit) = match n.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => n.split_at(i),
        None => (n, ""),
    };
    let scale: u64 = match unit {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return Err(bad()),
    };
    let value: u64 = digits.parse().map_err(|_| bad())?;
    match value.checked_mul(scale) {
        Some(0) | None => Err(bad()),
        Some(rate) => Ok(rate),
    }
}

/// A rate per second, written `N/s` (or just `N`); `0` is no limit.
pub(super) fn parse_rate(s: &str) -> Result<Option<NonZeroU32>, String> {
    let n = s.strip_suffix("/s").unwrap_or(s);
    n.trim()
        .parse::<u32>()
        .map(NonZeroU32::new)
        .map_err(|_| format!("{s:?} is not a rate: a whole number per second, like 20/s (0: none)"))
}

/// `HOST:PORT` with a port number.
pub(super) fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// A secret from a file: its contents less a trailing newline.
pub(super) fn read_secret(path: &std::path::Path, flag: &str) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!("{flag} {} is empty", path.display()));
    }
    Ok(secret.to_owned())
}

/// Seconds, whole or fractional (`0.5`), as a duration.
pub(super) fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a valid number of seconds"))
}
