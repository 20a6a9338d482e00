//! The inline HTTP/1.1 server loop (`flotilla_proxy::h1::server`) over real TCP sockets: each
//! test accepts one connection, runs `serve` on it in a task, and plays a raw client that writes
//! exact request bytes and reads exact response bytes, so framing, keep-alive, pipelining,
//! rejections, the handoff to hyper and the drain are checked on the wire.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flotilla_proxy::drain::Drain;
use flotilla_proxy::h1::H1Error;
use flotilla_proxy::h1::io::Prefixed;
use flotilla_proxy::h1::server::{self, Outcome};
use http::{HeaderValue, Method, Request, Response, Version, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// Fails a test that hangs instead of blocking the run.
async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("the test timed out")
}

/// The server's end of the TCP connection, counting the bytes `serve` reads so the client can
/// wait until a write has been consumed before sending the next one.
struct Tap {
    inner: TcpStream,
    read: watch::Sender<usize>,
}

impl AsyncRead for Tap {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read.send_modify(|total| *total += n);
        }
        polled
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How `serve` left the connection. The server's socket is handed back rather than dropped, so
/// closing it with unread bytes cannot reset the connection before the client has read the
/// answer.
struct Served {
    outcome: Result<Outcome, H1Error>,
    buf: BytesMut,
    stream: TcpStream,
}

/// A raw client connected to `serve` running in a task.
struct Conn {
    client: TcpStream,
    server: JoinHandle<Served>,
    /// Bytes `serve` has read.
    read: watch::Receiver<usize>,
    /// Bytes the client has written.
    sent: Vec<u8>,
}

/// Accepts one connection on 127.0.0.1 and serves it with `handler`.
async fn start<H, Fut, B>(drain: &Drain, handler: H) -> Conn
where
    H: FnMut(Request<Bytes>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<B>> + Send,
    B: Body<Data = Bytes> + Unpin + Send,
    B::Error: std::fmt::Display + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (read_tx, read) = watch::channel(0);
    let drain = drain.clone();
    let server = tokio::spawn(async move {
        let (inner, _) = listener.accept().await.unwrap();
        let mut tap = Tap {
            inner,
            read: read_tx,
        };
        let mut buf = BytesMut::new();
        let outcome = server::serve(&mut tap, &mut buf, &drain, handler).await;
        Served {
            outcome,
            buf,
            stream: tap.inner,
        }
    });
    let client = TcpStream::connect(addr).await.unwrap();
    Conn {
        client,
        server,
        read,
        sent: Vec::new(),
    }
}

impl Conn {
    /// Writes `bytes` in one write.
    async fn send(&mut self, bytes: &[u8]) {
        self.client.write_all(bytes).await.unwrap();
        self.sent.extend_from_slice(bytes);
    }

    /// Writes `bytes` and waits until the server has read everything sent so far.
    async fn send_and_wait_read(&mut self, bytes: &[u8]) {
        self.send(bytes).await;
        let sent = self.sent.len();
        self.read
            .wait_for(|read| *read >= sent)
            .await
            .expect("the server stopped before reading what was sent");
    }

    /// Reads exactly `expected.len()` bytes and checks they are `expected`.
    async fn expect(&mut self, expected: &str) {
        let mut got = vec![0; expected.len()];
        self.client.read_exact(&mut got).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&got), expected);
    }

    /// Reads until the server closes the connection.
    async fn read_to_eof(&mut self) -> String {
        let mut got = Vec::new();
        self.client.read_to_end(&mut got).await.unwrap();
        String::from_utf8(got).unwrap()
    }

    /// Checks the server closed the connection with nothing more to read.
    async fn expect_eof(&mut self) {
        assert_eq!(self.read_to_eof().await, "");
    }

    /// Waits for `serve` to return.
    async fn served(&mut self) -> Served {
        (&mut self.server).await.expect("the server task panicked")
    }

    /// Closes the client's side, so `serve` sees EOF.
    async fn close_write(&mut self) {
        self.client.shutdown().await.unwrap();
    }
}

type Seen = Arc<Mutex<Vec<Request<Bytes>>>>;
type Answer = std::future::Ready<Response<Full<Bytes>>>;

/// A handler that records each request and answers `200` with an `x-handler` header and the
/// request target as the body.
fn recorder() -> (Seen, impl FnMut(Request<Bytes>) -> Answer + Send + 'static) {
    let seen = Seen::default();
    let log = seen.clone();
    let handler = move |req: Request<Bytes>| {
        let target = req.uri().to_string();
        log.lock().unwrap().push(req);
        let mut resp = Response::new(Full::new(Bytes::from(target)));
        resp.headers_mut()
            .insert("x-handler", HeaderValue::from_static("yes"));
        std::future::ready(resp)
    };
    (seen, handler)
}

/// The exact answer of [`recorder`] to a request for `target`.
fn recorded(target: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nx-handler: yes\r\ncontent-length: {}\r\n\r\n{target}",
        target.len()
    )
}

/// Decodes a complete chunked body, checking it ends with the last chunk.
fn dechunk(mut wire: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, rest) = wire.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size, 16).expect("hex chunk size");
        if size == 0 {
            assert_eq!(
                rest, "\r\n",
                "no trailers, and nothing after the last chunk"
            );
            return body;
        }
        body.push_str(&rest[..size]);
        wire = rest[size..]
            .strip_prefix("\r\n")
            .expect("CRLF after chunk data");
    }
}

#[tokio::test]
async fn get_without_body_then_keep_alive() {
    within(async {
        let (seen, handler) = recorder();
        let mut conn = start(&Drain::new(), handler).await;
        conn.send(
            b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\nX-Multi: a\r\nX-Multi: b\r\n\r\n",
        )
        .await;
        conn.expect(&recorded("/path?q=1")).await;
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 1);
            let req = &seen[0];
            assert_eq!(req.method(), Method::GET);
            assert_eq!(req.uri(), "/path?q=1");
            assert_eq!(req.version(), Version::HTTP_11);
            assert_eq!(req.headers()[header::HOST], "example.com");
            let multi: Vec<_> = req.headers().get_all("x-multi").iter().collect();
            assert_eq!(multi, ["a", "b"]);
            assert_eq!(req.headers().len(), 3);
            assert!(req.body().is_empty());
        }

        // Keep-alive: a second request on the same connection.
        conn.send(b"GET /second HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .await;
        conn.expect(&recorded("/second")).await;
        assert_eq!(seen.lock().unwrap()[1].uri(), "/second");

        conn.close_write().await;
        let served = conn.served().await;
        assert_eq!(served.outcome.unwrap(), Outcome::Closed);
        assert!(served.buf.is_empty());
        assert_eq!(seen.lock().unwrap().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn post_body_in_two_writes() {
    within(async {
        let (seen, handler) = recorder();
        let mut conn = start(&Drain::new(), handler).await;
        conn.send_and_wait_read(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhe")
            .await;
        assert!(
            seen.lock().unwrap().is_empty(),
            "the body is not complete yet"
        );
        conn.send(b"llo").await;
        conn.expect(&recorded("/upload")).await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method(), Method::POST);
        assert_eq!(seen[0].body(), &Bytes::from_static(b"hello"));
    })
    .await;
}

#[tokio::test]
async fn pipelined_requests_answered_in_order() {
    within(async {
        let (seen, handler) = recorder();
        let mut conn = start(&Drain::new(), handler).await;
        conn.send(
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
              GET /three HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await;
        conn.expect(&(recorded("/one") + &recorded("/two") + &recorded("/three")))
            .await;
        let seen = seen.lock().unwrap();
        let targets: Vec<_> = seen.iter().map(|r| r.uri().to_string()).collect();
        assert_eq!(targets, ["/one", "/two", "/three"]);
        assert_eq!(seen[1].body(), &Bytes::from_static(b"abc"));
        assert!(seen[2].body().is_empty());
    })
    .await;
}

#[tokio::test]
async fn streaming_body_is_chunked_and_not_held_back() {
    within(async {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let mut rx = Some(rx);
        let handler = move |_req: Request<Bytes>| {
            let rx = rx.take().expect("one request");
            async move {
                let mut resp = Response::new(StreamBody::new(ReceiverStream::new(rx)));
                resp.headers_mut()
                    .insert("x-stream", HeaderValue::from_static("1"));
                resp
            }
        };
        let mut conn = start(&Drain::new(), handler).await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"hello"))))
            .await
            .unwrap();
        conn.send(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n").await;

        let head = "HTTP/1.1 200 OK\r\nx-stream: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        let chunks = [
            "5\r\nhello\r\n",
            "6\r\n world\r\n",
            "1\r\n!\r\n",
            "0\r\n\r\n",
        ];
        // The first frame arrives before the second one exists.
        conn.expect(&format!("{head}{}", chunks[0])).await;
        tx.send(Ok(Frame::data(Bytes::from_static(b" world"))))
            .await
            .unwrap();
        conn.expect(chunks[1]).await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"!"))))
            .await
            .unwrap();
        drop(tx);
        conn.expect(&chunks[2..].concat()).await;
        assert_eq!(dechunk(&chunks.concat()), "hello world!");

        // The connection is still usable: the body's end was framed.
        conn.close_write().await;
        assert_eq!(conn.served().await.outcome.unwrap(), Outcome::Closed);
    })
    .await;
}

#[tokio::test]
async fn head_sends_headers_without_body() {
    within(async {
        let handler = |req: Request<Bytes>| {
            let target = req.uri().to_string();
            async move {
                let mut resp = Response::new(Full::new(Bytes::from_static(b"0123456789")));
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
                resp.headers_mut()
                    .insert("x-target", HeaderValue::from_str(&target).unwrap());
                resp
            }
        };
        let mut conn = start(&Drain::new(), handler).await;
        conn.send(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n").await;
        conn.send(b"GET /g HTTP/1.1\r\nHost: a\r\n\r\n").await;
        // The HEAD answer's head is followed directly by the GET answer: no body bytes between.
        conn.expect(
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\nx-target: /h\r\n\r\n\
             HTTP/1.1 200 OK\r\nx-target: /g\r\ncontent-length: 10\r\n\r\n0123456789",
        )
        .await;
        conn.close_write().await;
        let served = conn.served().await;
        assert_eq!(served.outcome.unwrap(), Outcome::Closed);
    })
    .await;
}

#[tokio::test]
async fn connection_close_from_client() {
    within(async {
        let (seen, handler) = recorder();
        let mut conn = start(&Drain::new(), handler).await;
        conn.send(b"GET /bye HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n")
            .await;
        assert_eq!(
            conn.read_to_eof().await,
            "HTTP/1.1 200 OK\r\nx-handler: yes\r\ncontent-length: 4\r\nconnection: close\r\n\r\n/bye"
        );
        assert_eq!(conn.served().await.outcome.unwrap(), Outcome::Closed);
        assert_eq!(seen.lock().unwrap().len(), 1);
    })
    .await;
}

/// Sends `request`, expects an answer with `status_line` and `connection: close`, EOF, a closed
/// outcome, and a handler that was never called.
async fn assert_rejected(request: &[u8], status_line: &str) {
    let (seen, handler) = recorder();
    let mut conn = start(&Drain::new(), handler).await;
    conn.send(request).await;
    let answer = conn.read_to_eof().await;
    let (head, _body) = answer.split_once("\r\n\r\n").expect("a complete answer");
    let mut lines = head.split("\r\n");
    assert_eq!(lines.next(), Some(status_line), "answer: {answer:?}");
    assert!(
        lines.any(|l| l == "connection: close"),
        "answer: {answer:?}"
    );
    assert_eq!(conn.served().await.outcome.unwrap(), Outcome::Closed);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn malformed_request_line_is_400() {
    within(assert_rejected(
        b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
    ))
    .await;
}

#[tokio::test]
async fn too_many_headers_is_431() {
    within(async {
        let mut request = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..128 {
            request.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        assert_rejected(&request, "HTTP/1.1 431 Request Header Fields Too Large").await;
    })
    .await;
}

#[tokio::test]
async fn complete_head_over_64k_is_431() {
    within(async {
        let mut request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        request.resize(request.len() + 70_000, b'a');
        request.extend_from_slice(b"\r\n\r\n");
        assert_rejected(&request, "HTTP/1.1 431 Request Header Fields Too Large").await;
    })
    .await;
}

#[tokio::test]
async fn unfinished_head_over_64k_is_431() {
    within(async {
        // One byte over the limit and no end of head: the server has read it all when it answers.
        let mut request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        request.resize(server::MAX_HEAD + 1, b'a');
        assert_rejected(&request, "HTTP/1.1 431 Request Header Fields Too Large").await;
    })
    .await;
}

#[tokio::test]
async fn invalid_content_length_is_400() {
    within(assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
    ))
    .await;
}

#[tokio::test]
async fn conflicting_content_lengths_are_400() {
    within(assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "HTTP/1.1 400 Bad Request",
    ))
    .await;
}

/// Sends each of `writes` (waiting until the server has read one before the next), expects a
/// handoff with the bytes read left untouched in `buf`, and a handler that was never called.
/// Returns the connection and what the server handed back.
async fn assert_handoff(writes: &[&[u8]]) -> (Conn, Served) {
    let (seen, handler) = recorder();
    let mut conn = start(&Drain::new(), handler).await;
    let (last, first) = writes.split_last().unwrap();
    for write in first {
        conn.send_and_wait_read(write).await;
    }
    conn.send(last).await;
    let served = conn.served().await;
    assert_eq!(served.outcome.as_ref().unwrap(), &Outcome::Handoff);
    assert!(seen.lock().unwrap().is_empty(), "the handler was called");
    let read = *conn.read.borrow();
    assert_eq!(served.buf.len(), read, "bytes read were consumed");
    assert_eq!(
        String::from_utf8_lossy(&served.buf),
        String::from_utf8_lossy(&conn.sent[..read])
    );
    (conn, served)
}

#[tokio::test]
async fn chunked_request_is_handed_off() {
    within(async {
        let head = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (_conn, served) =
            assert_handoff(&[&[&head[..], b"5\r\nhello\r\n0\r\n\r\n"].concat()]).await;
        assert!(served.buf.starts_with(head));
    })
    .await;
}

#[tokio::test]
async fn expect_continue_is_handed_off() {
    within(async {
        let head =
            b"PUT /e HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
        let (_conn, served) = assert_handoff(&[head]).await;
        assert_eq!(&served.buf[..], head);
    })
    .await;
}

#[tokio::test]
async fn upgrade_is_handed_off() {
    within(async {
        let head = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let (_conn, served) = assert_handoff(&[head]).await;
        assert_eq!(&served.buf[..], head);
    })
    .await;
}

#[tokio::test]
async fn http10_is_handed_off() {
    within(async {
        let head = b"GET /old HTTP/1.0\r\nHost: a\r\n\r\n";
        let (_conn, served) = assert_handoff(&[head]).await;
        assert_eq!(&served.buf[..], head);
    })
    .await;
}

#[tokio::test]
async fn body_over_64k_is_handed_off() {
    within(async {
        let head = b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n";
        let (_conn, served) = assert_handoff(&[head]).await;
        assert_eq!(&served.buf[..], head);
    })
    .await;
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test]
async fn h2_preface_is_handed_off() {
    within(async {
        let (_conn, served) = assert_handoff(&[PREFACE]).await;
        assert_eq!(&served.buf[..], PREFACE);
    })
    .await;
}

#[tokio::test]
async fn h2_preface_in_two_writes_is_handed_off() {
    within(async {
        let (a, b) = PREFACE.split_at(8);
        let (_conn, served) = assert_handoff(&[a, b]).await;
        assert_eq!(&served.buf[..], PREFACE);
    })
    .await;
}

#[tokio::test]
async fn handoff_after_inline_request_keeps_only_the_next_request() {
    within(async {
        let (seen, handler) = recorder();
        let mut conn = start(&Drain::new(), handler).await;
        conn.send(b"GET /inline HTTP/1.1\r\nHost: a\r\n\r\n").await;
        conn.expect(&recorded("/inline")).await;
        let next =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        conn.send(next).await;
        let served = conn.served().await;
        assert_eq!(served.outcome.unwrap(), Outcome::Handoff);
        assert_eq!(&served.buf[..], next);
        assert_eq!(seen.lock().unwrap().len(), 1);
    })
    .await;
}

/// After a handoff, hyper serving `Prefixed::new(buf, stream)` sees the request whole: the
/// buffered head and part of the body, then the rest of the body from the socket.
#[tokio::test]
async fn hyper_serves_the_handed_off_connection() {
    within(async {
        let first = b"POST /echo HTTP/1.0\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello";
        let (mut conn, served) = assert_handoff(&[first]).await;
        let io = Prefixed::new(served.buf, served.stream);
        let hyper_task = tokio::spawn(async move {
            let svc = service_fn(|req: Request<Incoming>| async move {
                let target = req.uri().to_string();
                let body = req.into_body().collect().await?.to_bytes();
                let mut answer = format!("{target}:").into_bytes();
                answer.extend_from_slice(&body);
                Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(answer))))
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), svc)
                .await
        });
        conn.send(b" world").await;
        let answer = conn.read_to_eof().await;
        let (head, body) = answer.split_once("\r\n\r\n").expect("a complete answer");
        assert!(
            head.starts_with("HTTP/1.0 200 OK\r\n"),
            "answer: {answer:?}"
        );
        assert_eq!(body, "/echo:hello world");
        hyper_task.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test]
async fn drain_closes_an_idle_connection() {
    within(async {
        let (_seen, handler) = recorder();
        let drain = Drain::new();
        let mut conn = start(&drain, handler).await;
        conn.send(b"GET /before HTTP/1.1\r\nHost: a\r\n\r\n").await;
        conn.expect(&recorded("/before")).await;
        drain.signal();
        let served = tokio::time::timeout(Duration::from_secs(2), conn.served())
            .await
            .expect("serve did not return promptly after the drain");
        assert_eq!(served.outcome.unwrap(), Outcome::Closed);
        drop(served.stream);
        conn.expect_eof().await;
    })
    .await;
}

#[tokio::test]
async fn drain_lets_the_request_in_flight_finish_with_close() {
    within(async {
        let (started_tx, started) = oneshot::channel::<()>();
        let (release, release_rx) = oneshot::channel::<()>();
        let mut hooks = Some((started_tx, release_rx));
        let handler = move |_req: Request<Bytes>| {
            let (started_tx, release_rx) = hooks.take().expect("one request");
            async move {
                started_tx.send(()).unwrap();
                release_rx.await.unwrap();
                Response::new(Full::new(Bytes::from_static(b"done")))
            }
        };
        let drain = Drain::new();
        let mut conn = start(&drain, handler).await;
        conn.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n").await;
        started.await.unwrap();
        drain.signal();
        release.send(()).unwrap();
        assert_eq!(
            conn.read_to_eof().await,
            "HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndone"
        );
        assert_eq!(conn.served().await.outcome.unwrap(), Outcome::Closed);
    })
    .await;
}

/// A body of a declared 10 bytes that yields 5 and then fails.
struct FailingBody {
    sent: bool,
}

impl Body for FailingBody {
    type Data = Bytes;
    type Error = &'static str;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
        if self.sent {
            Poll::Ready(Some(Err("the body failed")))
        } else {
            self.sent = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"hello")))))
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(10)
    }
}

#[tokio::test]
async fn failing_body_closes_the_connection() {
    within(async {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let handler = move |_req: Request<Bytes>| {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Response::new(FailingBody { sent: false }))
        };
        let mut conn = start(&Drain::new(), handler).await;
        // A second request is already waiting: it must not be answered on a broken framing.
        conn.send(b"GET /fail HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
            .await;
        assert_eq!(
            conn.read_to_eof().await,
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello"
        );
        assert_eq!(conn.served().await.outcome.unwrap(), Outcome::Closed);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    })
    .await;
}
