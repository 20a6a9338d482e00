//! The inline HTTP/1.1 client (`flotilla_proxy::h1`) over real TCP sockets: each test plays a raw
//! upstream that reads the client's request bytes and writes exact response bytes, so framing,
//! connection reuse and the errors a broken upstream causes are checked on the wire.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flotilla_proxy::h1::client::Failure;
use flotilla_proxy::h1::{ClientBody, ClientConn, H1Error};
use http::{Method, StatusCode, Version, request};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Conn = ClientConn<TcpStream>;

/// Fails a test that hangs instead of blocking the run.
async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("the test timed out")
}

/// A client connection and the upstream's end of the same TCP connection.
async fn connect() -> (Conn, Upstream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (
        ClientConn::new(client, None),
        Upstream {
            sock: server,
            buf: Vec::new(),
        },
    )
}

/// The raw upstream side of a connection.
struct Upstream {
    sock: TcpStream,
    /// Bytes read and not yet returned as part of a request.
    buf: Vec<u8>,
}

impl Upstream {
    /// Reads one whole request (head, and a body as long as its `content-length`) and returns
    /// its exact bytes.
    async fn request(&mut self) -> String {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
        let body_len = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.trim().parse::<usize>().unwrap());
        while self.buf.len() < head_end + body_len {
            self.fill().await;
        }
        let request = self.buf.drain(..head_end + body_len).collect();
        String::from_utf8(request).unwrap()
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the client closed the connection mid-request");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Writes `bytes` and flushes them onto the wire.
    async fn write(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
        self.sock.flush().await.unwrap();
    }

    /// Reads one request and answers it with `response`; returns the request.
    async fn answer(&mut self, response: &[u8]) -> String {
        let request = self.request().await;
        self.write(response).await;
        request
    }
}

fn parts(method: Method, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

fn get(uri: &str) -> request::Parts {
    parts(Method::GET, uri, &[("host", "example.test")])
}

type Sent = Result<(http::Response<ClientBody<TcpStream>>, Option<Conn>), Failure>;

/// Sends `head` with `body` on `conn` (owning both, so the future can be joined with the
/// upstream's side).
async fn send(conn: Conn, head: request::Parts, body: &'static [u8]) -> Sent {
    conn.send(&head, &Bytes::from_static(body)).await
}

/// Sends `head` + `body` on `conn` while the upstream answers it with `response`; returns the
/// client's result and the request bytes the upstream received.
async fn exchange(
    conn: Conn,
    upstream: &mut Upstream,
    head: request::Parts,
    body: &'static [u8],
    response: &[u8],
) -> (Sent, String) {
    tokio::join!(send(conn, head, body), upstream.answer(response))
}

async fn body_bytes(body: ClientBody<TcpStream>) -> Bytes {
    body.collect().await.unwrap().to_bytes()
}

/// A recycle hook that parks the connection it is given in the returned slot.
fn recycle_slot(body: &mut ClientBody<TcpStream>) -> Arc<Mutex<Option<Conn>>> {
    let slot = Arc::new(Mutex::new(None));
    let hook = Arc::clone(&slot);
    body.recycle_with(Box::new(move |conn| *hook.lock().unwrap() = Some(conn)));
    slot
}

/// A request that is expected to fail; panics with the response otherwise.
async fn send_failing(conn: Conn, head: request::Parts) -> Failure {
    match send(conn, head, b"").await {
        Ok((response, _)) => panic!("expected a failure, got {response:?}"),
        Err(failure) => failure,
    }
}

#[tokio::test]
async fn content_length_body_with_head_hands_the_connection_back() {
    within(async {
        let (conn, mut upstream) = connect().await;

        // A GET with no body: the target in origin form, no content-length.
        let (result, request) = exchange(
            conn,
            &mut upstream,
            get("http://example.test/path?q=1"),
            b"",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test: a\r\nX-Test: b\r\n\r\nhello",
        )
        .await;
        assert_eq!(
            request,
            "GET /path?q=1 HTTP/1.1\r\nhost: example.test\r\n\r\n"
        );
        let (response, conn) = result.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), Version::HTTP_11);
        assert_eq!(response.headers()["content-length"], "5");
        let values: Vec<_> = response.headers().get_all("x-test").iter().collect();
        assert_eq!(values, ["a", "b"]);
        assert_eq!(body_bytes(response.into_body()).await, "hello");
        let conn = conn.expect("the connection is handed back");

        // A POST on the same connection: the caller's framing headers are replaced by the
        // length of the body actually sent.
        let post = parts(
            Method::POST,
            "/submit",
            &[
                ("host", "example.test"),
                ("content-length", "99"),
                ("transfer-encoding", "chunked"),
            ],
        );
        let (result, request) = exchange(
            conn,
            &mut upstream,
            post,
            b"abc",
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(
            request,
            "POST /submit HTTP/1.1\r\nhost: example.test\r\ncontent-length: 3\r\n\r\nabc"
        );
        let (response, conn) = result.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert!(body_bytes(response.into_body()).await.is_empty());
        assert!(conn.is_some(), "the connection is handed back again");
    })
    .await;
}

#[tokio::test]
async fn content_length_body_after_the_head_is_recycled() {
    within(async {
        let (conn, mut upstream) = connect().await;
        let server = async {
            upstream.request().await;
            upstream
                .write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello")
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            upstream.write(b" world").await;
        };
        let (result, ()) = tokio::join!(send(conn, get("/"), b""), server);
        let (mut response, conn) = result.unwrap();
        assert!(conn.is_none(), "the body is still on the connection");
        let slot = recycle_slot(response.body_mut());
        assert_eq!(body_bytes(response.into_body()).await, "hello world");
        let conn = slot.lock().unwrap().take().expect("recycled");

        let (result, _) = exchange(
            conn,
            &mut upstream,
            get("/again"),
            b"",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        )
        .await;
        assert_eq!(result.unwrap().0.status(), StatusCode::NO_CONTENT);
    })
    .await;
}

#[tokio::test]
async fn chunked_body_in_pieces_with_extensions_and_trailers_is_recycled() {
    within(async {
        let (conn, mut upstream) = connect().await;
        let pieces: [&[u8]; 6] = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n7;name=value",
            b"\r\n, world\r",
            b"\n0\r\n",
            b"x-checksum: 1\r\nx-other:",
            b" 2\r\n\r\n",
        ];
        let server = async {
            upstream.request().await;
            for piece in pieces {
                upstream.write(piece).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let (result, ()) = tokio::join!(send(conn, get("/chunked"), b""), server);
        let (mut response, conn) = result.unwrap();
        assert!(conn.is_none(), "the body is still on the connection");
        assert_eq!(response.headers()["transfer-encoding"], "chunked");
        let slot = recycle_slot(response.body_mut());
        assert_eq!(body_bytes(response.into_body()).await, "hello, world");
        let conn = slot
            .lock()
            .unwrap()
            .take()
            .expect("the connection is recycled when the body ends");

        let (result, request) = exchange(
            conn,
            &mut upstream,
            get("/second"),
            b"",
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond",
        )
        .await;
        assert_eq!(
            request,
            "GET /second HTTP/1.1\r\nhost: example.test\r\n\r\n"
        );
        let (response, conn) = result.unwrap();
        assert_eq!(body_bytes(response.into_body()).await, "second");
        assert!(conn.is_some());
    })
    .await;
}

#[tokio::test]
async fn close_delimited_body_reads_to_eof_and_is_not_recycled() {
    within(async {
        let (conn, mut upstream) = connect().await;
        let server = async {
            upstream.request().await;
            upstream.write(b"HTTP/1.1 200 OK\r\n\r\nuntil ").await;
            tokio::time::sleep(Duration::from_millis(10)).await;
            upstream.write(b"the end").await;
            upstream.sock.shutdown().await.unwrap();
        };
        let (result, ()) = tokio::join!(send(conn, get("/"), b""), server);
        let (mut response, conn) = result.unwrap();
        assert!(conn.is_none());
        let slot = recycle_slot(response.body_mut());
        assert_eq!(body_bytes(response.into_body()).await, "until the end");
        assert!(slot.lock().unwrap().is_none(), "never recycled");
    })
    .await;
}

#[tokio::test]
async fn informational_responses_are_skipped() {
    within(async {
        let (conn, mut upstream) = connect().await;
        let server = async {
            upstream.request().await;
            upstream.write(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            tokio::time::sleep(Duration::from_millis(10)).await;
            upstream
                .write(
                    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n\
                      HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                )
                .await;
        };
        let post = parts(Method::POST, "/upload", &[("expect", "100-continue")]);
        let (result, ()) = tokio::join!(send(conn, post, b"data"), server);
        let (response, conn) = result.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!response.headers().contains_key("link"));
        assert_eq!(body_bytes(response.into_body()).await, "ok");
        assert!(conn.is_some());
    })
    .await;
}

#[tokio::test]
async fn head_response_has_no_body_whatever_its_content_length() {
    within(async {
        let (conn, mut upstream) = connect().await;
        let head = parts(Method::HEAD, "/file", &[]);
        let (result, request) = exchange(
            conn,
            &mut upstream,
            head,
            b"",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        )
        .await;
        assert_eq!(request, "HEAD /file HTTP/1.1\r\n\r\n");
        let (response, conn) = result.unwrap();
        assert_eq!(response.headers()["content-length"], "10");
        assert!(body_bytes(response.into_body()).await.is_empty());
        let mut conn = conn.expect("the connection is handed back");
        assert!(conn.is_reusable());

        // The next response is read as the next response, not as the HEAD's body.
        let (result, _) = exchange(
            conn,
            &mut upstream,
            get("/next"),
            b"",
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext",
        )
        .await;
        assert_eq!(body_bytes(result.unwrap().0.into_body()).await, "next");
    })
    .await;
}

#[tokio::test]
async fn connection_close_responses_do_not_hand_the_connection_back() {
    for response in [
        &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok",
        // HTTP/1.0 closes unless asked to keep alive.
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ] {
        within(async {
            let (conn, mut upstream) = connect().await;
            let (result, _) = exchange(conn, &mut upstream, get("/"), b"", response).await;
            let (response, conn) = result.unwrap();
            assert!(conn.is_none(), "the connection is not handed back");
            assert_eq!(body_bytes(response.into_body()).await, "ok");
        })
        .await;
    }

    within(async {
        let (conn, mut upstream) = connect().await;
        let response = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok";
        let (result, _) = exchange(conn, &mut upstream, get("/"), b"", response).await;
        let (response, conn) = result.unwrap();
        assert_eq!(response.version(), Version::HTTP_10);
        assert!(conn.is_some(), "HTTP/1.0 keep-alive keeps the connection");
    })
    .await;
}

#[tokio::test]
async fn garbage_head_is_a_parse_error() {
    within(async {
        let (conn, mut upstream) = connect().await;
        let (result, _) = exchange(conn, &mut upstream, get("/"), b"", b"SMTP ready\r\n\r\n").await;
        let failure = result.unwrap_err();
        assert!(matches!(failure.error, H1Error::Parse(_)), "{failure:?}");
        assert!(failure.sent);
    })
    .await;
}

#[tokio::test]
async fn conflicting_content_lengths_are_a_framing_error() {
    within(async {
        let (conn, mut upstream) = connect().await;
        let (result, _) = exchange(
            conn,
            &mut upstream,
            get("/"),
            b"",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        )
        .await;
        let failure = result.unwrap_err();
        assert!(matches!(failure.error, H1Error::Framing(_)), "{failure:?}");
        assert!(failure.sent);
    })
    .await;
}

#[tokio::test]
async fn fresh_connection_closed_without_an_answer_may_have_been_seen() {
    within(async {
        let (conn, mut upstream) = connect().await;
        let server = async move {
            upstream.request().await;
            drop(upstream);
        };
        let (failure, ()) = tokio::join!(send_failing(conn, get("/")), server);
        assert!(
            matches!(failure.error, H1Error::Closed | H1Error::Io(_)),
            "{failure:?}"
        );
        assert!(failure.sent, "a fresh connection's request counts as seen");
    })
    .await;
}

#[tokio::test]
async fn reused_connection_closed_without_an_answer() {
    // The upstream closes the idle connection (a keep-alive timeout) before the next request
    // arrives, or after reading it without an answer. An idempotent request on a reused
    // connection counts as not seen, so it may go to another connection; a POST does not.
    for (method, reads_request, sent) in [
        (Method::GET, false, false),
        (Method::GET, true, false),
        (Method::POST, true, true),
    ] {
        within(async {
            let (conn, mut upstream) = connect().await;
            let (result, _) = exchange(
                conn,
                &mut upstream,
                get("/first"),
                b"",
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            )
            .await;
            let conn = result.unwrap().1.expect("the connection is handed back");
            let second = parts(method.clone(), "/second", &[]);
            let failure = if reads_request {
                let server = async move {
                    upstream.request().await;
                    drop(upstream);
                };
                tokio::join!(send_failing(conn, second), server).0
            } else {
                drop(upstream);
                send_failing(conn, second).await
            };
            assert!(
                matches!(failure.error, H1Error::Closed | H1Error::Io(_)),
                "{method} {reads_request}: {failure:?}"
            );
            assert_eq!(failure.sent, sent, "{method} {reads_request}");
        })
        .await;
    }
}

#[tokio::test]
async fn is_reusable_notices_the_upstream_closing() {
    within(async {
        let (conn, mut upstream) = connect().await;
        let (result, _) = exchange(
            conn,
            &mut upstream,
            get("/"),
            b"",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        let mut conn = result.unwrap().1.expect("the connection is handed back");
        assert!(conn.is_reusable(), "open and idle");

        drop(upstream);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while conn.is_reusable() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "is_reusable never noticed the close"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // Bytes no request asked for make an idle connection unusable too.
    within(async {
        let (conn, mut upstream) = connect().await;
        let (result, _) = exchange(
            conn,
            &mut upstream,
            get("/"),
            b"",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        let mut conn = result.unwrap().1.expect("the connection is handed back");
        assert!(conn.is_reusable());
        upstream
            .write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while conn.is_reusable() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "is_reusable never noticed the stray bytes"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn body_cut_short_is_a_closed_error() {
    within(async {
        let (conn, mut upstream) = connect().await;
        let server = async move {
            upstream
                .answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcd")
                .await;
            drop(upstream);
        };
        let (result, ()) = tokio::join!(send(conn, get("/"), b""), server);
        let (mut response, conn) = result.unwrap();
        assert!(conn.is_none());
        let slot = recycle_slot(response.body_mut());
        let mut body = response.into_body();
        let mut data = Vec::new();
        let error = loop {
            match body.frame().await {
                Some(Ok(frame)) => data.extend_from_slice(&frame.into_data().unwrap()),
                Some(Err(error)) => break error,
                None => panic!("the body ended without an error"),
            }
        };
        assert_eq!(data, b"abcd");
        assert!(matches!(error, H1Error::Closed), "{error:?}");
        assert!(body.frame().await.is_none(), "nothing after the error");
        assert!(slot.lock().unwrap().is_none(), "never recycled");
    })
    .await;
}
