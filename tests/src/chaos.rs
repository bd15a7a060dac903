//! What a chaos run needs beside the rest of the harness: a seeded random
//! number generator (so that a failing run can be replayed), loopback
//! ports a process can be started on again, and a process's open
//! descriptors.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// A small seeded generator (SplitMix64): every choice of a chaos run comes
/// from one printed seed, and the run needs no statistical quality beyond
/// "spread out".
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// Lowest port [`fixed_port`] hands out.
const FIXED_PORT_MIN: u16 = 10_000;
/// Tries [`fixed_port`] makes before it gives up.
const FIXED_PORT_TRIES: usize = 1_000;

/// A free loopback port below the kernel's ephemeral range, for a process
/// that must come back on the same port after it is killed: while it is
/// down, no client connection can take the port as its own source port
/// (which would make the restart's bind fail).
pub fn fixed_port() -> u16 {
    let ephemeral_min = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    assert!(
        ephemeral_min > FIXED_PORT_MIN,
        "no ports below the ephemeral range"
    );
    // Spread over the range by this process's id and a counter, so that
    // test binaries running at once rarely try the same ports.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let mut rng = Rng::new((u64::from(std::process::id()) << 32) | call);
    for _ in 0..FIXED_PORT_TRIES {
        let port = rng.between(u64::from(FIXED_PORT_MIN), u64::from(ephemeral_min) - 1) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {ephemeral_min}");
}

/// A loopback address on a [`fixed_port`].
pub fn fixed_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], fixed_port()))
}

/// How many descriptors process `pid` has open (`/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading /proc/<pid>/fd")
        .count()
}
