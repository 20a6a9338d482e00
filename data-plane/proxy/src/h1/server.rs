//! The ingress's HTTP/1.1 server loop, driven inline by the connection's task.
//!
//! Requests with no body or a small one with a Content-Length (the common case) are parsed
//! with httparse, read whole, handed to the handler, and answered in as few writes as the
//! response body allows. Anything else — an h2c preface, HTTP/1.0, `Upgrade`, `Expect`,
//! `Transfer-Encoding` on a request, a body over [`MAX_KEPT_BODY`], `CONNECT` — hands the
//! connection (with the bytes read so far) to hyper for the rest of its life: [`Outcome::Handoff`].

use std::future::Future;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::chunked::push_chunk_header;
use super::{
    FEW_HEADERS, H1Error, Span, has_token, header_map, parse_length, push_content_length,
    push_header, spans_of,
};
use crate::drain::Drain;

/// Most request headers parsed; more answer 431.
const MAX_HEADERS: usize = 128;
/// Largest request head; larger answers 431.
pub const MAX_HEAD: usize = 64 * 1024;
/// Request bodies up to this size are read whole here; larger ones go to hyper.
pub const MAX_KEPT_BODY: u64 = 64 * 1024;
/// Output is written once this much is buffered, or when the body has nothing ready.
const WRITE_AT: usize = 16 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How the inline loop left the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Closed (by the client, after `Connection: close`, an error answer, or the drain).
    Closed,
    /// The next request needs hyper: serve the connection with it, starting with the buffered
    /// bytes.
    Handoff,
}

/// A parsed request head this loop can serve.
struct Head {
    request: Request<()>,
    body_len: usize,
    keep_alive: bool,
}

// `Complete` is large, but a `Parse` lives on the stack once per request: no box for it.
#[allow(clippy::large_enum_variant)]
enum Parse {
    Complete(Head),
    Partial,
    Handoff,
    /// Answer this status and close.
    Reject(StatusCode, &'static str),
}

/// Serves requests on `io` with `handler` until the connection closes or needs hyper.
/// `buf` holds bytes already read, and on [`Outcome::Handoff`] the bytes hyper must see first.
pub async fn serve<I, H, Fut, B>(
    io: &mut I,
    buf: &mut BytesMut,
    drain: &Drain,
    mut handler: H,
) -> Result<Outcome, H1Error>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<Bytes>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut out = Vec::with_capacity(1024);
    let mut spans = Vec::new();
    let mut first = true;
    // Made once per connection: polling it again is cheaper than a new one per request.
    let signaled = drain.signaled();
    tokio::pin!(signaled);
    loop {
        let head = loop {
            if first && !buf.is_empty() {
                if buf.starts_with(H2_PREFACE) {
                    return Ok(Outcome::Handoff);
                }
                if H2_PREFACE.starts_with(buf) {
                    // Maybe a preface: wait for more.
                } else {
                    first = false;
                }
            }
            if !first && !buf.is_empty() {
                match parse(buf, &mut spans) {
                    Parse::Complete(head) => break head,
                    Parse::Partial => {}
                    Parse::Handoff => return Ok(Outcome::Handoff),
                    Parse::Reject(status, why) => {
                        reject(io, &mut out, status, why).await?;
                        return Ok(Outcome::Closed);
                    }
                }
            }
            if buf.len() > MAX_HEAD {
                reject(
                    io,
                    &mut out,
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large",
                )
                .await?;
                return Ok(Outcome::Closed);
            }
            super::reserve_read(buf);
            let read = if buf.is_empty() {
                // Idle between requests: the drain may close the connection now.
                tokio::select! {
                    biased;
                    read = io.read_buf(buf) => read?,
                    () = &mut signaled => return Ok(Outcome::Closed),
                }
            } else {
                io.read_buf(buf).await?
            };
            if read == 0 {
                return Ok(Outcome::Closed);
            }
        };
        while buf.len() < head.body_len {
            buf.reserve(head.body_len - buf.len());
            if io.read_buf(buf).await? == 0 {
                return Ok(Outcome::Closed);
            }
        }
        let body = buf.split_to(head.body_len).freeze();
        let head_request = head.request.method() == Method::HEAD;
        let keep_alive = head.keep_alive;
        let response = handler(head.request.map(|()| body)).await;
        let keep_alive = keep_alive && !drain.is_draining();
        if !write_response(io, &mut out, response, head_request, keep_alive).await? || !keep_alive {
            let _ = io.shutdown().await;
            return Ok(Outcome::Closed);
        }
    }
}

/// Parses the request head at the front of `buf`; consumes it only when it is complete and
/// this loop serves it.
fn parse(buf: &mut BytesMut, spans: &mut Vec<Span>) -> Parse {
    let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
    let mut many;
    let mut req = httparse::Request::new(&mut few);
    let mut parsed = req.parse(buf);
    if matches!(parsed, Err(httparse::Error::TooManyHeaders)) {
        many = [httparse::EMPTY_HEADER; MAX_HEADERS];
        req = httparse::Request::new(&mut many);
        parsed = req.parse(buf);
    }
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            // A head can arrive whole in one read: the limit holds then too.
            return Parse::Reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            );
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parse::Reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many headers",
            );
        }
        Err(httparse::Error::Version) => return Parse::Handoff,
        Err(_) => return Parse::Reject(StatusCode::BAD_REQUEST, "malformed request head"),
    };
    if req.version != Some(1) {
        return Parse::Handoff;
    }
    let Some(method) = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
    else {
        return Parse::Reject(StatusCode::BAD_REQUEST, "invalid method");
    };
    if method == Method::CONNECT {
        return Parse::Handoff;
    }
    let mut body_len: Option<u64> = None;
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
        {
            return Parse::Handoff;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = parse_length(h.value) else {
                return Parse::Reject(StatusCode::BAD_REQUEST, "invalid Content-Length");
            };
            if body_len.is_some_and(|l| l != n) {
                return Parse::Reject(StatusCode::BAD_REQUEST, "conflicting Content-Length values");
            }
            body_len = Some(n);
        }
        if name.eq_ignore_ascii_case(b"connection") && has_token(h.value, b"close") {
            close = true;
        }
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_KEPT_BODY {
        return Parse::Handoff;
    }
    let target = req
        .path
        .map_or((0, 0), |p| super::span_in(buf, p.as_bytes()));
    spans_of(buf, req.headers, spans);
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target.0..target.1)) else {
        return Parse::Reject(StatusCode::BAD_REQUEST, "invalid request target");
    };
    let Ok(headers) = header_map(&head, spans) else {
        return Parse::Reject(StatusCode::BAD_REQUEST, "invalid header");
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Parse::Complete(Head {
        request,
        body_len: body_len as usize,
        keep_alive: !close,
    })
}

/// Answers `status` with `why` as the body, closing the connection.
async fn reject<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    status: StatusCode,
    why: &str,
) -> Result<(), H1Error>
where
    I: AsyncWrite + Unpin,
{
    let mut resp = Response::new(http_body_util::Full::new(Bytes::from(format!("{why}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    write_response(io, out, resp, false, false).await?;
    let _ = io.shutdown().await;
    Ok(())
}

/// Writes `resp`: Content-Length when the body's size is known, else chunked. Returns `false`
/// when the body failed or fell short, so the connection must close.
async fn write_response<I, B>(
    io: &mut I,
    out: &mut Vec<u8>,
    resp: Response<B>,
    head_request: bool,
    keep_alive: bool,
) -> Result<bool, H1Error>
where
    I: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length = if bodiless {
        None
    } else {
        body.size_hint().exact()
    };
    let chunked = !bodiless && length.is_none();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    encode_headers(out, &parts.headers, !bodiless);
    if let Some(n) = length {
        push_content_length(out, n);
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless {
        io.write_all(out).await?;
        return Ok(true);
    }
    let mut left = length;
    let complete = loop {
        // Coalesce what is ready; write before waiting for more.
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        match frame {
            None => break left.is_none_or(|l| l == 0),
            Some(Err(error)) => {
                tracing::debug!(%error, "response body failed; closing the connection");
                break false;
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers are not sent over HTTP/1.1
                };
                if data.is_empty() {
                    continue;
                }
                if let Some(l) = &mut left {
                    if data.len() as u64 > *l {
                        break false;
                    }
                    *l -= data.len() as u64;
                    out.extend_from_slice(&data);
                } else {
                    push_chunk_header(out, data.len());
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                }
                if out.len() >= WRITE_AT {
                    io.write_all(out).await?;
                    out.clear();
                }
            }
        }
    };
    if complete && chunked {
        out.extend_from_slice(super::chunked::LAST_CHUNK);
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    Ok(complete)
}

/// `name: value` lines, without the framing headers this side sets (`content-length` is kept
/// for bodiless answers, e.g. to HEAD).
fn encode_headers(out: &mut Vec<u8>, headers: &HeaderMap, has_body: bool) {
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || (has_body && name == header::CONTENT_LENGTH)
        {
            continue;
        }
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
}
