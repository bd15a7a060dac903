//! Read buffers, recycled: one pool for every pump of the process.
//!
//! A buffer is taken when a socket turns readable and given back once what
//! was read has been written on, so an idle session holds none. The
//! forwarding plane hands a buffer on to HTTP/2 as [`Bytes`]
//! ([`Buf::freeze`]), which drops it on whichever thread sent it: so the
//! pool is one free list for the process behind a lock (taken twice per
//! read, never while reading), not one per thread, and a buffer comes back
//! to it from any thread. Allocating a fresh buffer per read instead cost a
//! sending node page faults on every one (about 15% of its CPU at full speed).

use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

/// Size of one buffer: the most one read takes, and the most a direction
/// holds in user space while its bytes wait to be written on (as much as a
/// splice pipe holds in the kernel).
pub const BUF_SIZE: usize = 256 * 1024;
/// Buffers kept for reuse (4 MiB): what a few busy sessions need. More are
/// freed as they come back.
const KEEP: usize = 16;
/// A frozen read this small is copied out and its buffer reused at once, so
/// that small frames do not each hold a whole buffer while in flight.
const COPY_BELOW: usize = 16 * 1024;

type Block = Box<[u8; BUF_SIZE]>;

static POOL: Mutex<Vec<Block>> = Mutex::new(Vec::new());

/// A buffer of [`BUF_SIZE`] bytes from the pool, back in it when dropped.
pub struct Buf(ManuallyDrop<Block>);

impl Buf {
    /// A buffer from the pool, or a new one.
    pub fn take() -> Buf {
        let pooled = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop();
        Buf(ManuallyDrop::new(pooled.unwrap_or_else(|| {
            // Built on the heap: an array this size would not fit on a stack.
            vec![0; BUF_SIZE]
                .into_boxed_slice()
                .try_into()
                .expect("a slice of BUF_SIZE bytes")
        })))
    }

    /// The first `len` bytes, as [`Bytes`] that give the buffer back to the
    /// pool when the last of them is dropped, on whatever thread.
    pub fn freeze(self, len: usize) -> Bytes {
        if len < COPY_BELOW {
            // `self` goes back to the pool here.
            return Bytes::copy_from_slice(&self[..len]);
        }
        Bytes::from_owner(Frozen { buf: self, len })
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: the block is taken once, here, and `self` is not used again.
        let block = unsafe { ManuallyDrop::take(&mut self.0) };
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < KEEP {
            pool.push(block);
        }
    }
}

impl Deref for Buf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0[..]
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0[..]
    }
}

impl fmt::Debug for Buf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buf").finish_non_exhaustive()
    }
}

/// A buffer's first `len` bytes, owned by a [`Bytes`].
struct Frozen {
    buf: Buf,
    len: usize,
}

impl AsRef<[u8]> for Frozen {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Held by every test that takes buffers: the pool is the process's, and
/// tests run in parallel.
#[cfg(test)]
pub(crate) static TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_to_the_pool() {
        let _alone = TESTS.blocking_lock();
        // A frozen read gives its buffer back when its last slice is dropped.
        let mut buf = Buf::take();
        buf[..COPY_BELOW].fill(7);
        let ptr = buf.as_ptr();
        let bytes = buf.freeze(COPY_BELOW);
        assert_eq!(bytes.as_ptr(), ptr, "not copied");
        assert_eq!(bytes.len(), COPY_BELOW);
        assert!(bytes.iter().all(|&b| b == 7));
        let clone = bytes.slice(10..20);
        drop(bytes);
        let other = Buf::take();
        assert_ne!(other.as_ptr(), ptr, "still in use by the slice");
        drop(clone);
        let again = Buf::take();
        assert_eq!(again.as_ptr(), ptr, "back in the pool");

        // Dropped on another thread, it comes back all the same.
        let sent = again.freeze(BUF_SIZE);
        std::thread::spawn(move || drop(sent)).join().unwrap();
        let back = Buf::take();
        assert_eq!(back.as_ptr(), ptr, "back from another thread");

        // A small read is copied out, and its buffer is free at once.
        let small = back.freeze(10);
        assert_ne!(small.as_ptr(), ptr, "copied");
        assert_eq!(Buf::take().as_ptr(), ptr, "free while the copy lives");
        drop((other, small));
    }
}
