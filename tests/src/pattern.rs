//! Reproducible byte streams, so that big transfers are checked without
//! being kept in memory, and a reader that reads slowly.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The buffer patterns are written and read through.
const CHUNK: usize = 256 * 1024;
/// What [`SlowReader`] reads at most per [`SLOW_PAUSE`].
const SLOW_CHUNK: usize = 16 * 1024;
/// How long [`SlowReader`] pauses after each read.
const SLOW_PAUSE: Duration = Duration::from_millis(1);

/// A reproducible pseudo-random byte stream (xorshift64*), so that big
/// transfers can be checked without keeping them in memory.
#[derive(Debug, Clone)]
pub struct Pattern(u64);

impl Pattern {
    /// A stream seeded with `seed` (not 0).
    pub fn new(seed: u64) -> Self {
        Pattern(seed | 1)
    }

    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `total` bytes of `Pattern::new(seed)` then half-closes; returns
/// their SHA-256.
pub async fn send_pattern<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    total: u64,
) -> [u8; 32] {
    try_send_pattern(w, seed, total).await.expect("send")
}

/// [`send_pattern`] for a connection that may fail: the first write or
/// shutdown error instead of a panic.
pub async fn try_send_pattern<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    total: u64,
) -> std::io::Result<[u8; 32]> {
    let mut chunks = Chunks::new(seed, total);
    while let Some(chunk) = chunks.next_chunk() {
        w.write_all(chunk).await?;
    }
    w.shutdown().await?;
    Ok(chunks.digest())
}

/// The SHA-256 of the first `total` bytes of `Pattern::new(seed)`: what a
/// receiver of [`send_pattern`] must read.
pub fn pattern_digest(seed: u64, total: u64) -> [u8; 32] {
    let mut chunks = Chunks::new(seed, total);
    while chunks.next_chunk().is_some() {}
    chunks.digest()
}

/// The first `total` bytes of `Pattern::new(seed)`, a [`CHUNK`] at a time,
/// hashed as they are made.
struct Chunks {
    pattern: Pattern,
    hash: sha2::Sha256,
    buf: Vec<u8>,
    left: u64,
}

impl Chunks {
    fn new(seed: u64, total: u64) -> Self {
        use sha2::Digest;
        Chunks {
            pattern: Pattern::new(seed),
            hash: sha2::Sha256::new(),
            buf: vec![0u8; CHUNK],
            left: total,
        }
    }

    /// The next chunk, already counted in the digest; `None` at the end.
    fn next_chunk(&mut self) -> Option<&[u8]> {
        use sha2::Digest;
        if self.left == 0 {
            return None;
        }
        let n = self.left.min(self.buf.len() as u64) as usize;
        self.pattern.fill(&mut self.buf[..n]);
        self.hash.update(&self.buf[..n]);
        self.left -= n as u64;
        Some(&self.buf[..n])
    }

    /// The SHA-256 of every byte made.
    fn digest(self) -> [u8; 32] {
        use sha2::Digest;
        self.hash.finalize().into()
    }
}

/// Reads to EOF; returns the byte count and SHA-256.
pub async fn recv_digest<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> (u64, [u8; 32]) {
    try_recv_digest(r).await.expect("recv")
}

/// [`recv_digest`] for a connection that may fail: the read error (a
/// reset, say) instead of a panic. `Ok` means a clean EOF.
pub async fn try_recv_digest<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<(u64, [u8; 32])> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, h.finalize().into()));
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

/// Reads at most `SLOW_CHUNK` (16 KiB) per `SLOW_PAUSE` (1 ms): a Target that
/// cannot keep up.
#[derive(Debug)]
pub struct SlowReader {
    inner: TcpStream,
    pause: Pin<Box<Sleep>>,
}

impl SlowReader {
    /// Reads `inner` slowly.
    pub fn new(inner: TcpStream) -> Self {
        let pause = Box::pin(tokio::time::sleep(Duration::ZERO));
        SlowReader { inner, pause }
    }
}

impl AsyncRead for SlowReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        ready!(self.pause.as_mut().poll(cx));
        let room = buf.remaining().min(SLOW_CHUNK);
        let mut small = ReadBuf::new(buf.initialize_unfilled_to(room));
        let polled = Pin::new(&mut self.inner).poll_read(cx, &mut small);
        let n = small.filled().len();
        buf.advance(n);
        if n > 0 {
            self.pause.as_mut().reset(Instant::now() + SLOW_PAUSE);
        }
        polled
    }
}
