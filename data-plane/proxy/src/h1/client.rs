//! One upstream HTTP/1.1 connection, driven inline by the request that holds it.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode, Version, request};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::chunked::{Decoded, Decoder};
use super::{
    FEW_HEADERS, H1Error, Span, has_token, header_map, parse_length, push_content_length,
    push_header, spans_of,
};
use crate::metrics::ConnectionGauge;

/// Most response headers parsed.
const MAX_HEADERS: usize = 128;
/// Largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// A kept body up to this size goes out in the same write as the head.
const COALESCE_BODY: usize = 16 * 1024;

/// Gives a connection back to its pool once a streamed body has ended cleanly.
pub type Recycle<I> = Box<dyn FnOnce(ClientConn<I>) + Send + Sync>;

/// An HTTP/1.1 connection to an upstream, idle between requests.
pub struct ClientConn<I> {
    io: I,
    /// Bytes read and not yet used; empty between requests.
    buf: BytesMut,
    /// The request head being written (kept to reuse its allocation).
    out: Vec<u8>,
    /// Where the response head's headers sit (kept to reuse its allocation).
    spans: Vec<Span>,
    /// Whether the connection has carried a request already.
    reused: bool,
    /// Counts the connection as open in the cluster's metrics until it is dropped.
    _gauge: Option<ConnectionGauge>,
}

impl<I> std::fmt::Debug for ClientConn<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConn")
            .field("buffered", &self.buf.len())
            .field("reused", &self.reused)
            .finish()
    }
}

/// A request that failed; `sent` says whether the upstream may have seen any of it.
#[derive(Debug)]
pub struct Failure {
    pub error: H1Error,
    /// `false` when nothing was written, or when a reused connection turned out closed before
    /// an idempotent request got any answer: then the request may go to another connection.
    pub sent: bool,
}

impl<I> ClientConn<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// A connection over `io`, counted by `gauge` while it lives.
    pub fn new(io: I, gauge: Option<ConnectionGauge>) -> Self {
        ClientConn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            spans: Vec::new(),
            reused: false,
            _gauge: gauge,
        }
    }

    /// Whether an idle connection can take a request: not closed by the peer, and no bytes
    /// arrived that no request asked for. Never blocks.
    pub fn is_reusable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut read = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut read),
            Poll::Pending
        )
    }

    /// Sends the request `head` with `body` and reads the response head. Returns the response
    /// and, when its body was already complete, the connection for the next request (if the
    /// upstream keeps it open). Otherwise the body reads from the connection; see
    /// [`ClientBody::recycle_with`].
    pub async fn send(
        mut self,
        head: &request::Parts,
        body: &Bytes,
    ) -> Result<(Response<ClientBody<I>>, Option<Self>), Failure> {
        encode_head(&mut self.out, head, body.len())
            .map_err(|error| Failure { error, sent: false })?;
        let coalesce = body.len() <= COALESCE_BODY;
        if coalesce {
            self.out.extend_from_slice(body);
        }
        // The first write decides whether anything was sent.
        let out = std::mem::take(&mut self.out);
        let written = match self.io.write(&out).await {
            Ok(0) => Err(Failure {
                error: H1Error::Closed,
                sent: false,
            }),
            Ok(n) => Ok(n),
            Err(error) => Err(Failure {
                error: error.into(),
                sent: false,
            }),
        };
        let sent_err = |error: H1Error| Failure { error, sent: true };
        let result = async {
            let n = written?;
            self.io
                .write_all(&out[n..])
                .await
                .map_err(|e| sent_err(e.into()))?;
            if !coalesce {
                self.io
                    .write_all(body)
                    .await
                    .map_err(|e| sent_err(e.into()))?;
            }
            self.io.flush().await.map_err(|e| sent_err(e.into()))?;
            Ok(())
        }
        .await;
        self.out = out;
        result?;
        let reused = std::mem::replace(&mut self.reused, true);
        let retry_safe = reused && is_idempotent(&head.method);
        let parsed = match self.read_head(head.method == Method::HEAD).await {
            Ok(parsed) => parsed,
            Err(error) => {
                let nothing_back = matches!(&error, H1Error::Closed)
                    || matches!(&error, H1Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
                return Err(Failure {
                    error,
                    sent: !(retry_safe && nothing_back),
                });
            }
        };
        let Parsed {
            mut response,
            framing,
            keep_alive,
        } = parsed;
        // The common case: the whole body came with the head.
        if let Framing::Length(len) = framing
            && self.buf.len() as u64 >= len
        {
            let data = self.buf.split_to(len as usize).freeze();
            *response.body_mut() = ClientBody::full(data);
            let conn = (keep_alive && self.buf.is_empty()).then_some(self);
            return Ok((response, conn));
        }
        *response.body_mut() = ClientBody {
            state: BodyState::Streaming(Box::new(Streaming {
                conn: Mutex::new(self),
                framing,
                keep_alive,
                recycle: None,
            })),
        };
        Ok((response, None))
    }

    /// Reads until a final (non-1xx) response head is parsed.
    async fn read_head(&mut self, head_request: bool) -> Result<Parsed<I>, H1Error> {
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf, &mut self.spans, head_request)? {
                    Some(Head::Final(parsed)) => return Ok(parsed),
                    Some(Head::Informational) => continue,
                    None => {}
                }
            }
            if self.buf.len() > MAX_HEAD {
                return Err(H1Error::HeadTooLarge(MAX_HEAD));
            }
            super::reserve_read(&mut self.buf);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(H1Error::Closed);
            }
        }
    }
}

/// RFC 9110 §9.2.2: a request the upstream may safely see twice.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Writes `METHOD path HTTP/1.1`, the headers (framing headers replaced by a Content-Length
/// for `body_len` bytes) and the blank line into `out`.
fn encode_head(out: &mut Vec<u8>, head: &request::Parts, body_len: usize) -> Result<(), H1Error> {
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    if target.is_empty() {
        out.push(b'/');
    } else if target
        .bytes()
        .any(|b| b == b' ' || b == b'\r' || b == b'\n')
    {
        return Err(H1Error::Encode("the request target contains whitespace"));
    } else {
        out.extend_from_slice(target.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in &head.headers {
        if name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let needs_length = body_len > 0
        || had_length
        || matches!(head.method, Method::POST | Method::PUT | Method::PATCH);
    if needs_length {
        push_content_length(out, body_len as u64);
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone)]
enum Framing {
    /// Exactly this many bytes (0 for no body).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Decoder),
    /// Until the upstream closes the connection.
    Close,
}

struct Parsed<I> {
    response: Response<ClientBody<I>>,
    framing: Framing,
    keep_alive: bool,
}

enum Head<I> {
    Final(Parsed<I>),
    /// A 1xx other than 101, consumed from the buffer.
    Informational,
}

/// Parses a response head at the front of `buf`, consuming it when complete.
fn parse_head<I>(
    buf: &mut BytesMut,
    spans: &mut Vec<Span>,
    head_request: bool,
) -> Result<Option<Head<I>>, H1Error> {
    let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
    let mut many;
    let mut parsed = httparse::Response::new(&mut few);
    let mut result = parsed.parse(buf);
    if matches!(result, Err(httparse::Error::TooManyHeaders)) {
        many = [httparse::EMPTY_HEADER; MAX_HEADERS];
        parsed = httparse::Response::new(&mut many);
        result = parsed.parse(buf);
    }
    let len = match result {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(H1Error::Parse(error)),
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Framing("invalid status code"))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(H1Error::Framing(
            "101 Switching Protocols to a request without Upgrade",
        ));
    }
    // Where each name and value sits in the head, so the values can share its bytes.
    spans_of(buf, parsed.headers, spans);
    let head = buf.split_to(len).freeze();
    if status.is_informational() {
        return Ok(Some(Head::Informational));
    }
    let map = header_map(&head, spans).map_err(H1Error::Framing)?;
    let (framing, mut keep_alive) = framing_of(&map, status, head_request)?;
    keep_alive &= connection_persists(&map, version);
    let mut response = Response::new(ClientBody::full(Bytes::new()));
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = map;
    Ok(Some(Head::Final(Parsed {
        response,
        framing,
        keep_alive,
    })))
}

/// The body's framing, and whether it lets the connection be reused.
fn framing_of(
    headers: &HeaderMap,
    status: StatusCode,
    head_request: bool,
) -> Result<(Framing, bool), H1Error> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), true));
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        let last = codings
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .last();
        let chunked = last.is_some_and(|c| c.eq_ignore_ascii_case("chunked"));
        // With a Content-Length too, the message may have been smuggled: never reuse.
        let reusable = chunked && !headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked(Decoder::default()), reusable)
        } else {
            (Framing::Close, false)
        });
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        // A list of equal values is allowed (RFC 9110 §8.6).
        for part in value.as_bytes().split(|b| *b == b',') {
            let n = parse_length(part).ok_or(H1Error::Framing("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Framing("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 only with `keep-alive`.
fn connection_persists(headers: &HeaderMap, version: Version) -> bool {
    let has = |token: &[u8]| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), token))
    };
    if version == Version::HTTP_10 {
        has(b"keep-alive")
    } else {
        !has(b"close")
    }
}

/// A response body read from an upstream connection (or complete already).
pub struct ClientBody<I> {
    state: BodyState<I>,
}

enum BodyState<I> {
    /// Complete: this data (if not yet taken).
    Full(Option<Bytes>),
    /// Still on the connection.
    Streaming(Box<Streaming<I>>),
    /// Ended.
    Done,
}

struct Streaming<I> {
    /// In a mutex only so that the body is `Sync`; it is never contended (`get_mut`).
    conn: Mutex<ClientConn<I>>,
    framing: Framing,
    keep_alive: bool,
    recycle: Option<Recycle<I>>,
}

impl<I> std::fmt::Debug for ClientBody<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            BodyState::Full(_) => "full",
            BodyState::Streaming(_) => "streaming",
            BodyState::Done => "done",
        };
        f.debug_struct("ClientBody").field("state", &state).finish()
    }
}

impl<I> ClientBody<I> {
    fn full(data: Bytes) -> Self {
        ClientBody {
            state: if data.is_empty() {
                BodyState::Done
            } else {
                BodyState::Full(Some(data))
            },
        }
    }

    /// Where the connection goes when the body ends cleanly and the upstream keeps it open.
    /// Without this (or when the body is dropped early) the connection is closed.
    pub fn recycle_with(&mut self, recycle: Recycle<I>) {
        if let BodyState::Streaming(s) = &mut self.state {
            s.recycle = Some(recycle);
        }
    }
}

impl<I> Body for ClientBody<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        let streaming = match &mut this.state {
            BodyState::Done => return Poll::Ready(None),
            BodyState::Full(data) => {
                let data = data.take();
                this.state = BodyState::Done;
                return Poll::Ready(data.map(|d| Ok(Frame::data(d))));
            }
            BodyState::Streaming(s) => s,
        };
        let conn = streaming
            .conn
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            // Data already buffered first.
            let step = match &mut streaming.framing {
                Framing::Length(0) => Step::End,
                Framing::Length(left) if !conn.buf.is_empty() => {
                    let n = (*left).min(conn.buf.len() as u64);
                    *left -= n;
                    Step::Data(conn.buf.split_to(n as usize).freeze())
                }
                Framing::Length(_) => Step::Read,
                Framing::Chunked(decoder) => match decoder.decode(&mut conn.buf) {
                    Ok(Decoded::Data(d)) => Step::Data(d),
                    Ok(Decoded::NeedMore) => Step::Read,
                    Ok(Decoded::End) => Step::End,
                    Err(e) => Step::Fail(e),
                },
                Framing::Close if !conn.buf.is_empty() => Step::Data(conn.buf.split().freeze()),
                Framing::Close => Step::Read,
            };
            match step {
                Step::Data(d) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                Step::Fail(e) => {
                    this.state = BodyState::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                Step::End => {
                    let done = std::mem::replace(&mut this.state, BodyState::Done);
                    if let BodyState::Streaming(s) = done {
                        let Streaming {
                            conn,
                            keep_alive,
                            recycle,
                            ..
                        } = *s;
                        let conn = conn.into_inner().unwrap_or_else(|p| p.into_inner());
                        if let Some(recycle) = recycle
                            && keep_alive
                            && conn.buf.is_empty()
                        {
                            recycle(conn);
                        }
                    }
                    return Poll::Ready(None);
                }
                Step::Read => {
                    super::reserve_read(&mut conn.buf);
                    match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(0)) => {
                            if matches!(streaming.framing, Framing::Close) {
                                streaming.framing = Framing::Length(0);
                                streaming.keep_alive = false;
                                continue;
                            }
                            this.state = BodyState::Done;
                            return Poll::Ready(Some(Err(H1Error::Closed)));
                        }
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => {
                            this.state = BodyState::Done;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            BodyState::Done => true,
            BodyState::Full(d) => d.is_none(),
            BodyState::Streaming(s) => matches!(s.framing, Framing::Length(0)),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            BodyState::Streaming(s) => match s.framing {
                Framing::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
        }
    }
}

enum Step {
    Data(Bytes),
    Read,
    End,
    Fail(H1Error),
}
