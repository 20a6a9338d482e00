//! L4 byte forwarding for the node proxy.
//!
//! * [`forward_tcp`] moves bytes both ways between two TCP sockets. With [`Mode::Auto`] it
//!   uses `splice(2)` through one pipe per direction, so the payload never enters user space;
//!   it falls back to a buffered copy when the kernel refuses to splice.
//! * [`forward_streams`] is the buffered copy for any two async streams (TLS legs).
//! * [`detect_ktls`] tells whether the kernel offers the TLS upper-layer protocol.
//!
//! There is no `unsafe` here: the syscalls go through rustix's safe wrappers.

mod ktls;
mod tcp;

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use ktls::{Ktls, TCP_AVAILABLE_ULP, detect_ktls, detect_ktls_at};

/// Size of the buffers of the buffered copy, each direction.
pub const COPY_BUFFER_SIZE: usize = 64 * 1024;

/// Which implementation moved the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `splice(2)` socket -> pipe -> socket, both directions.
    Splice,
    /// A buffered copy through user space (in at least one direction).
    Copy,
}

/// How [`forward_tcp`] may move the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `splice(2)` when possible, buffered copy otherwise.
    #[default]
    Auto,
    /// Always the buffered copy.
    CopyOnly,
}

/// What one [`forward_tcp`] call moved.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded {
    /// Bytes read from `a` and written to `b`.
    pub a_to_b: u64,
    /// Bytes read from `b` and written to `a`.
    pub b_to_a: u64,
    /// Which implementation moved them.
    pub method: Method,
}

/// Forwards bytes both ways between two TCP sockets until both directions reach EOF or one
/// of them fails.
///
/// EOF in one direction is propagated to the other socket with `shutdown(Write)` (a
/// half-close), like [`tokio::io::copy_bidirectional`]. An error in either direction (a
/// reset, say) ends the whole call at once, and both sockets are closed when they are dropped
/// on return.
///
/// With [`Mode::Auto`] the bytes go through `splice(2)`, one non-blocking pipe per direction,
/// driven by tokio readiness. If a pipe cannot be created, or the kernel rejects the first
/// splice (`EINVAL`, `ENOSYS`, `EOPNOTSUPP`), that connection falls back to the buffered copy
/// and the result says [`Method::Copy`]. [`Mode::CopyOnly`] always uses the buffered copy:
/// the same readiness-driven loop as the splice path, through one [`COPY_BUFFER_SIZE`] buffer
/// per direction, so both paths share the half-close and reset handling.
///
/// While waiting on one socket, each direction also watches the other for a socket error, so
/// a reset of either peer ends the call promptly whatever the directions are waiting for.
///
/// Dropping the future closes everything it owns: both sockets and the pipes.
///
/// A splice to a socket whose peer has gone may raise `SIGPIPE`; Rust programs ignore that
/// signal by default, and the write then fails with `EPIPE`, which is returned.
pub async fn forward_tcp(a: TcpStream, b: TcpStream, mode: Mode) -> io::Result<Forwarded> {
    let pipes = match mode {
        Mode::CopyOnly => None,
        Mode::Auto => match (tcp::Pipe::new(), tcp::Pipe::new()) {
            (Ok(ab), Ok(ba)) => Some((ab, ba)),
            (Err(e), _) | (_, Err(e)) => {
                tcp::log_fallback(format_args!("cannot create a pipe: {e}"));
                None
            }
        },
    };
    tcp::forward(&a, &b, pipes).await
}

/// Buffered copy both ways between any two streams (used for TLS legs), with
/// [`COPY_BUFFER_SIZE`] buffers: [`tokio::io::copy_bidirectional_with_sizes`].
///
/// Returns `(a_to_b, b_to_a)` byte counts.
pub async fn forward_streams<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, COPY_BUFFER_SIZE, COPY_BUFFER_SIZE).await
}
