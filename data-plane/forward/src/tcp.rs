//! TCP <-> TCP forwarding: `splice(2)` through one pipe per direction, or a buffered copy.
//!
//! A splice direction alternates two phases and keeps one invariant: **the pipe is empty
//! whenever we splice into it**. So
//!
//! * fill: wait for the source to be readable and splice socket -> pipe. The pipe is empty,
//!   so it has room, and `EAGAIN` can only mean the socket has nothing to read: it clears the
//!   socket's read readiness (tokio's `try_io`) and we wait again — no busy loop.
//! * drain: splice pipe -> destination socket until the pipe is empty again. The pipe holds
//!   data, so `EAGAIN` can only mean the socket's send buffer is full: it clears the write
//!   readiness and we wait for writability.
//!
//! Both fds of a pipe are `O_NONBLOCK` and every splice passes `SPLICE_F_NONBLOCK`, so no
//! call ever blocks the runtime thread.
//!
//! While a direction waits on one socket it also watches the other for a socket error
//! (`EPOLLERR`: a reset, say). Without that, a reset of the client while both directions wait
//! on the server (one for it to read, one for it to write) would go unnoticed until the
//! server did something — forever, for a stuck server.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::Errno;
use rustix::net::Shutdown;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::{COPY_BUFFER_SIZE, Forwarded, Method};

/// The size asked of each pipe with `F_SETPIPE_SZ` (the default unprivileged maximum).
const PIPE_SIZE: usize = 1 << 20;
/// The kernel's default pipe size, assumed when it cannot be read back.
const DEFAULT_PIPE_SIZE: usize = 64 * 1024;

/// One direction's pipe. Both ends are owned, so dropping it closes them.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// How many bytes it holds; the most one fill asks for.
    capacity: usize,
}

impl Pipe {
    /// A non-blocking, close-on-exec pipe, grown to [`PIPE_SIZE`] when allowed.
    pub(crate) fn new() -> io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        // Growing may fail (pipe-max-size, per-user pipe limits): keep what we have.
        let capacity = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))
            .unwrap_or(DEFAULT_PIPE_SIZE)
            .max(1);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// Logs a fallback to the buffered copy: at debug the first time in the process, at trace
/// afterwards (it is the same kernel for every connection).
pub(crate) fn log_fallback(reason: fmt::Arguments<'_>) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if LOGGED.swap(true, Ordering::Relaxed) {
        tracing::trace!("splice unavailable, using a buffered copy: {reason}");
    } else {
        tracing::debug!("splice unavailable, using a buffered copy: {reason}");
    }
}

/// Forwards both ways, with splice when given pipes (`a -> b`, `b -> a`), else the buffered
/// copy. Ends at the first error; the other direction is dropped with it.
pub(crate) async fn forward(
    a: &TcpStream,
    b: &TcpStream,
    pipes: Option<(Pipe, Pipe)>,
) -> io::Result<Forwarded> {
    let (ab, ba) = match pipes {
        Some((ab, ba)) => (Some(ab), Some(ba)),
        None => (None, None),
    };
    let ((a_to_b, m1), (b_to_a, m2)) = tokio::try_join!(direction(a, b, ab), direction(b, a, ba))?;
    let method = if m1 == Method::Splice && m2 == Method::Splice {
        Method::Splice
    } else {
        Method::Copy
    };
    Ok(Forwarded {
        a_to_b,
        b_to_a,
        method,
    })
}

/// Waits until `sock` may be ready for `interest`, or fails with `other`'s socket error.
async fn wait(sock: &TcpStream, interest: Interest, other: &TcpStream) -> io::Result<()> {
    loop {
        tokio::select! {
            biased;
            ready = sock.ready(interest) => {
                ready?;
                return Ok(());
            }
            ready = other.ready(Interest::ERROR) => {
                ready?;
                if let Some(e) = other.take_error()? {
                    return Err(e);
                }
                // Already taken (by a splice that then failed, ending the forward anyway):
                // forget this readiness so that the next wait really waits.
                let _ = other.try_io(Interest::ERROR, || -> io::Result<()> {
                    Err(io::ErrorKind::WouldBlock.into())
                });
            }
        }
    }
}

fn splice_nb(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    Ok(rustix::pipe::splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
    )?)
}

/// The errors of a kernel (or a socket) that cannot splice at all.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP)
    )
}

/// Propagates EOF: no more writes to `dst`. A socket already gone needs none.
fn shutdown_write(dst: &TcpStream) -> io::Result<()> {
    match rustix::net::shutdown(dst, Shutdown::Write) {
        Ok(()) | Err(Errno::NOTCONN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `src` -> `dst` until EOF on `src`, then half-closes `dst`. Splices through `pipe` when
/// given one. Returns the bytes moved and how.
async fn direction(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: Option<Pipe>,
) -> io::Result<(u64, Method)> {
    let Some(pipe) = pipe else {
        return Ok((copy_direction(src, dst).await?, Method::Copy));
    };
    let mut total: u64 = 0;
    let mut first = true;
    loop {
        // Fill: the pipe is empty here.
        wait(src, Interest::READABLE, dst).await?;
        let filled = src.try_io(Interest::READABLE, || {
            splice_nb(src, &pipe.write, pipe.capacity)
        });
        let mut left = match filled {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if first && unsupported(&e) => {
                log_fallback(format_args!("splice(socket -> pipe): {e}"));
                drop(pipe);
                return Ok((copy_direction(src, dst).await?, Method::Copy));
            }
            Err(e) => return Err(e),
        };
        first = false;
        // Drain: the pipe holds `left` bytes.
        while left > 0 {
            wait(dst, Interest::WRITABLE, src).await?;
            match dst.try_io(Interest::WRITABLE, || splice_nb(&pipe.read, dst, left)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    left -= n;
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
    shutdown_write(dst)?;
    Ok((total, Method::Splice))
}

/// The buffered copy for one direction, on shared references (the other direction runs
/// concurrently on the same sockets).
async fn copy_direction(src: &TcpStream, dst: &TcpStream) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUFFER_SIZE];
    let mut total: u64 = 0;
    loop {
        wait(src, Interest::READABLE, dst).await?;
        let n = match src.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut written = 0;
        while written < n {
            wait(dst, Interest::WRITABLE, src).await?;
            match dst.try_write(&buf[written..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => written += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
    shutdown_write(dst)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_errnos() {
        for errno in [Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP] {
            assert!(unsupported(&io::Error::from(errno)), "{errno:?}");
        }
        for errno in [Errno::AGAIN, Errno::CONNRESET, Errno::PIPE] {
            assert!(!unsupported(&io::Error::from(errno)), "{errno:?}");
        }
    }

    #[test]
    fn pipe_is_nonblocking_cloexec_and_grown() {
        let pipe = Pipe::new().unwrap();
        for fd in [&pipe.read, &pipe.write] {
            let fl = rustix::fs::fcntl_getfl(fd).unwrap();
            assert!(fl.contains(rustix::fs::OFlags::NONBLOCK));
            let fdfl = rustix::io::fcntl_getfd(fd).unwrap();
            assert!(fdfl.contains(rustix::io::FdFlags::CLOEXEC));
        }
        // Growing is best effort; it is never below the kernel's one page.
        assert!(pipe.capacity >= 4096, "{}", pipe.capacity);
        assert_eq!(
            pipe.capacity,
            rustix::pipe::fcntl_getpipe_size(&pipe.write).unwrap()
        );
    }
}
