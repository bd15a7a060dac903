//! Pipes for splice(2): socket to pipe to socket, no copy through user
//! space. Pooled per worker thread: a pipe is taken when a socket turns
//! readable and given back empty once drained, so an idle session holds
//! none, and it never leaves the pump that took it.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Bytes moved per splice call, and the pipe's capacity. Larger than the
/// default 64 KiB: fewer calls per GiB, and the pages are only held while
/// data is in flight.
const PIPE_CHUNK: usize = 256 * 1024;
/// Pipes kept for reuse per worker thread (two descriptors each).
const POOL_MAX: usize = 4;

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A non-blocking pipe.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by no one else.
        let pipe = unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        // Best effort: an unprivileged process may be refused a larger
        // pipe (fs.pipe-max-size), and the default works too.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            libc::fcntl(
                pipe.write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_CHUNK as libc::c_int,
            )
        };
        Ok(pipe)
    }

    /// Moves up to a pipe's worth from socket `fd` into the pipe; 0 at EOF.
    pub(crate) fn fill_from(&self, fd: RawFd, max: usize) -> io::Result<usize> {
        splice(fd, self.write.as_raw_fd(), PIPE_CHUNK.min(max))
    }

    /// Moves up to `len` bytes from the pipe to socket `fd`.
    pub(crate) fn drain_to(&self, fd: RawFd, len: usize) -> io::Result<usize> {
        splice(self.read.as_raw_fd(), fd, len)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call; null
    // offsets are what pipes and sockets require.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A pipe from the pool, or a new one.
pub(crate) fn take_pipe() -> io::Result<Pipe> {
    match PIPES.with(|p| p.borrow_mut().pop()) {
        Some(p) => Ok(p),
        None => Pipe::new(),
    }
}

/// Returns an empty pipe to the pool.
pub(crate) fn give_pipe(pipe: Pipe) {
    PIPES.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(pipe);
        }
    });
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn bytes_cross_a_pipe_and_the_pipe_is_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut from = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (sink, _) = listener.accept().unwrap();
        let to = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut out, _) = listener.accept().unwrap();

        from.write_all(b"through the kernel").unwrap();
        let pipe = take_pipe().unwrap();
        let mut n = 0;
        while n < 18 {
            n += pipe.fill_from(sink.as_raw_fd(), usize::MAX).unwrap();
        }
        assert_eq!(pipe.drain_to(to.as_raw_fd(), n).unwrap(), n);
        let mut got = [0; 18];
        out.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"through the kernel");

        let fd = pipe.read.as_raw_fd();
        give_pipe(pipe);
        assert_eq!(take_pipe().unwrap().read.as_raw_fd(), fd, "reused");

        drop(from);
        let pipe = take_pipe().unwrap();
        assert_eq!(
            pipe.fill_from(sink.as_raw_fd(), usize::MAX).unwrap(),
            0,
            "EOF"
        );
    }
}
