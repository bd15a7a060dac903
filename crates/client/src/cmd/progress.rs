//! What the tool tells the person on standard error: which path the
//! transfer took, the progress bar (prefixed `direct` or `relay`), and the
//! closing line.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::bail;
use dtcp_client::transfer::TransferError;
use dtcp_client::{Paired, Route};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One line saying which path the transfer takes.
pub(super) fn announce(paired: &Paired, peer: &str) {
    match paired.route {
        Route::Direct => eprintln!("connected directly: the {peer} is at {}", paired.peer),
        Route::Relay => eprintln!("connected through the relay at {}", paired.peer),
    }
}

/// A progress bar on standard error for a transfer of `size` bytes (unknown:
/// a spinner).
pub(super) fn progress(size: Option<u64>, route: Route) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
    style(&bar, size, route);
    bar
}

/// The bar starts with the path: `direct` or `relay`.
pub(super) fn style(bar: &ProgressBar, size: Option<u64>, route: Route) {
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

/// Clears the bar and turns the transfer's result into the tool's (the
/// bytes moved); on a terminal, says how many bytes went which way.
pub(super) fn finish(
    bar: &ProgressBar,
    result: Result<u64, TransferError>,
    verb: &str,
    route: Route,
) -> anyhow::Result<u64> {
    bar.finish_and_clear();
    match result {
        Ok(n) => {
            if std::io::stderr().is_terminal() {
                eprintln!("{verb} {n} bytes {}", route.adverb());
            }
            Ok(n)
        }
        Err(e) => bail!(e),
    }
}
