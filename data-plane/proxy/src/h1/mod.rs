//! Lean HTTP/1.1 for the proxy's hot path: an inline client for pooled upstream connections,
//! and an inline server loop for the ingress.
//!
//! hyper's client runs every connection as a task of its own and hands requests, responses and
//! body chunks to it through channels: four task polls per request. This client runs inline in
//! the request's task instead: it writes the request head and a kept body (empty, or buffered
//! for retries) in one write, reads and parses the response head with httparse, and returns a
//! body that reads straight from the connection. A body that arrived with the head (the usual
//! small response) is complete at once and the connection goes back to the pool before the
//! response is handed on; a longer body gives the connection back when it ends.
//!
//! Requests with streaming bodies, `Upgrade` requests and HTTP/2 stay on hyper
//! ([`crate::upstream`]).
//!
//! [`server`] is the ingress's side of the same idea: an inline HTTP/1.1 loop for requests
//! without a body or with a small one, handing anything else to hyper.

pub mod chunked;
pub mod client;
pub mod io;
pub mod server;

pub use client::{ClientBody, ClientConn, Recycle};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Read buffers grow by this much when less than [`MIN_READ_SPACE`] is left.
const READ_CHUNK: usize = 8 * 1024;
/// A read needs at least this much free space; less, and the buffer grows.
const MIN_READ_SPACE: usize = 1024;

/// Makes room for a read. Heads split off the front share the buffer's allocation, so growing
/// only when little space is left lets many requests share one allocation.
pub fn reserve_read(buf: &mut bytes::BytesMut) {
    if buf.capacity() - buf.len() < MIN_READ_SPACE {
        buf.reserve(READ_CHUNK);
    }
}

/// Appends `name: value\r\n`.
pub(crate) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `content-length: <n>\r\n` (formatted in place, no allocation).
pub(crate) fn push_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal, without going through `core::fmt`.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// One Content-Length value: ASCII digits, optionally surrounded by whitespace.
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Whether a comma-separated header value (e.g. `Connection`) lists `token`, ignoring case.
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Where a header's name and value sit in a parsed head: `((name start, end), (value start, end))`.
pub type Span = ((usize, usize), (usize, usize));

/// Header slots a head is parsed with first; a head with more headers is parsed again with
/// room for the limit. Small arrays keep the per-request setup (initialising the slots) cheap.
pub(crate) const FEW_HEADERS: usize = 32;

/// Sets `out` to where each of `headers`' names and values sits in `buf`, which they were
/// parsed from. `out` is the connection's, reused from request to request.
pub(crate) fn spans_of(buf: &[u8], headers: &[httparse::Header<'_>], out: &mut Vec<Span>) {
    out.clear();
    out.extend(
        headers
            .iter()
            .map(|h| (span_in(buf, h.name.as_bytes()), span_in(buf, h.value))),
    );
}

/// Where `part`, a slice httparse returned from `buf`, sits in `buf`: `(start, end)`.
pub(crate) fn span_in(buf: &[u8], part: &[u8]) -> (usize, usize) {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    (start, start + part.len())
}

/// The headers of a parsed `head`; values share its bytes.
pub fn header_map(head: &Bytes, spans: &[Span]) -> Result<HeaderMap, &'static str> {
    // Room for the few headers the proxy adds (`x-forwarded-*`, `host`) without regrowing.
    let mut map = HeaderMap::with_capacity(spans.len() + 4);
    for &((ns, ne), (vs, ve)) in spans {
        let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| "invalid header name")?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| "invalid header value")?;
        map.append(name, value);
    }
    Ok(map)
}

/// An HTTP/1.1 exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// Reading or writing the connection failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The connection closed before the response (or its body) was complete.
    #[error("connection closed before the response was complete")]
    Closed,
    /// The response head could not be parsed.
    #[error("invalid response head: {0}")]
    Parse(httparse::Error),
    /// The response head is larger than the limit.
    #[error("response head over {0} bytes")]
    HeadTooLarge(usize),
    /// The response's framing is invalid (e.g. two different Content-Lengths).
    #[error("invalid response framing: {0}")]
    Framing(&'static str),
    /// The chunked body is malformed.
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
    /// A request header value cannot be sent as HTTP/1.1.
    #[error("request cannot be encoded: {0}")]
    Encode(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_and_content_lengths() {
        for n in [0u64, 7, 10, 99, 100, 65_536, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        let mut out = Vec::new();
        push_content_length(&mut out, 1234);
        assert_eq!(out, b"content-length: 1234\r\n");
    }
}
