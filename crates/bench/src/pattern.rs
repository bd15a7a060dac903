//! The bytes a throughput run sends: a fixed pseudo-random buffer read
//! cyclically from an offset that differs per pair, so that the receiver can
//! check every byte with a memory compare (cheap next to the relay's work)
//! and a byte delivered to the wrong pair or out of order shows.

use std::sync::OnceLock;

/// The cycle length: not a power of two, so that chunk boundaries drift.
const PERIOD: usize = (1 << 20) + 7;

fn buffer() -> &'static [u8] {
    static BUF: OnceLock<Vec<u8>> = OnceLock::new();
    BUF.get_or_init(|| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        // Twice the period, so any window of up to PERIOD bytes is one slice.
        (0..2 * PERIOD)
            .map(|i| {
                if i % PERIOD == 0 {
                    x = 0x9e37_79b9_7f4a_7c15;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    })
}

/// Where stream `n` starts in the cycle.
pub(crate) fn start(n: u64) -> usize {
    (n as usize).wrapping_mul(4099) % PERIOD
}

/// The next `len` (at most a period) bytes of a stream at `offset`.
pub(crate) fn slice(offset: usize, len: usize) -> &'static [u8] {
    let o = offset % PERIOD;
    &buffer()[o..o + len.min(PERIOD)]
}

/// Whether `data` is what a stream holds at `offset`.
pub(crate) fn check(offset: usize, data: &[u8]) -> bool {
    data.chunks(PERIOD)
        .enumerate()
        .all(|(k, c)| slice(offset + k * PERIOD, c.len()) == c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_line_up_across_the_period() {
        let whole: Vec<u8> = (0..3)
            .flat_map(|k| slice(k * 1000, 1000).to_vec())
            .collect();
        assert!(check(0, &whole));
        assert!(check(PERIOD - 3, slice(PERIOD - 3, 10)));
        assert_eq!(slice(PERIOD - 3, 10), slice(2 * PERIOD - 3, 10));
        assert!(!check(1, &whole));
    }
}
