//! The example workload shipped with Flotilla: a tiny HTTP server that answers with its
//! allocation id and node name, so load balancing through the mesh is visible.
//!
//! `GET /health` answers `ok`; `POST /echo` answers with the request body (up to
//! [`ECHO_LIMIT`] bytes, 413 beyond), for latency benchmarks; `GET /upstream/<name>/<path>`
//! calls `/<path>` on the Connect upstream `<name>` (at `$NOMAD_UPSTREAM_ADDR_<name>`, i.e.
//! through the node proxy's localhost listener) and answers `via upstream <name>: <its
//! answer>`; every other path answers
//! `hello from allocation <id> on node <node>` (plus the path), with the same facts in the
//! `x-alloc-id` and `x-node` headers. Run it with `flotilla demo-app --listen ADDR`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// Who this instance is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub alloc_id: String,
    pub node: String,
}

/// The largest request body `POST /echo` sends back; a larger one gets 413.
pub const ECHO_LIMIT: usize = 1 << 20;

/// Serve until the process is stopped.
pub async fn serve(listen: SocketAddr, who: Identity) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("demo-app: listen on {listen}: {e}")))?;
    serve_on(listener, who).await
}

/// Serve on a bound listener until the process is stopped (or an accept fails).
pub async fn serve_on(listener: tokio::net::TcpListener, who: Identity) -> std::io::Result<()> {
    eprintln!(
        "demo-app: allocation {} on node {} listening on {}",
        who.alloc_id,
        who.node,
        listener.local_addr()?
    );
    let who = Arc::new(who);
    loop {
        let (stream, _) = listener.accept().await?;
        let who = who.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| answer(req, who.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// `/upstream/<name>/<rest>` → (name, "/<rest>").
fn upstream_call(path: &str) -> Option<(&str, String)> {
    let rest = path.strip_prefix("/upstream/")?;
    let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
    (!name.is_empty()).then(|| (name, format!("/{tail}")))
}

/// The env var name Nomad uses for an upstream's address.
fn upstream_env(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("NOMAD_UPSTREAM_ADDR_{clean}")
}

/// One GET over a fresh connection to `addr` (the localhost upstream listener).
async fn call_upstream(addr: &str, path: &str) -> Result<(u16, String), String> {
    use http_body_util::Empty;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", addr)
        .header("connection", "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tx
        .send_request(req)
        .await
        .map_err(|e| format!("request to {addr}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer of {addr}: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The body of `POST /echo` to send back: (200, the body), or 413 past [`ECHO_LIMIT`], or 400
/// if it could not be read.
async fn echo_body<B>(body: B) -> (StatusCode, Bytes)
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            Bytes::from(format!("echo: the body is over {ECHO_LIMIT} bytes\n")),
        )
    };
    // A declared length over the limit is refused before reading anything.
    if body.size_hint().lower() > ECHO_LIMIT as u64 {
        return too_large();
    }
    match Limited::new(body, ECHO_LIMIT).collect().await {
        Ok(collected) => (StatusCode::OK, collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => too_large(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Bytes::from(format!("echo: reading the body: {e}\n")),
        ),
    }
}

async fn answer(
    req: Request<Incoming>,
    who: Arc<Identity>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == Method::POST && req.uri().path() == "/echo" {
        let (status, body) = echo_body(req.into_body()).await;
        let content_type = if status == StatusCode::OK {
            "application/octet-stream"
        } else {
            "text/plain; charset=utf-8"
        };
        let resp = Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("x-alloc-id", who.alloc_id.as_str())
            .header("x-node", who.node.as_str())
            .body(Full::new(body));
        return Ok(
            resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error\n"))))
        );
    }
    if let Some((name, path)) = upstream_call(req.uri().path()) {
        let var = upstream_env(name);
        let (status, body) = match std::env::var(&var) {
            Err(_) => (502, format!("{var} is not set: no upstream {name:?}\n")),
            Ok(addr) => match call_upstream(&addr, &path).await {
                Ok((status, body)) => (status, format!("via upstream {name}: {body}")),
                Err(e) => (502, format!("upstream {name}: {e}\n")),
            },
        };
        let resp = Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .header("x-alloc-id", who.alloc_id.as_str())
            .body(Full::new(Bytes::from(body)));
        return Ok(
            resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error\n"))))
        );
    }
    let body = if req.uri().path() == "/health" {
        "ok\n".to_string()
    } else {
        format!(
            "hello from allocation {} on node {} (path {})\n",
            who.alloc_id,
            who.node,
            req.uri().path()
        )
    };
    let resp = Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-alloc-id", who.alloc_id.as_str())
        .header("x-node", who.node.as_str())
        .body(Full::new(Bytes::from(body)));
    Ok(resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"hello\n")))))
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body_util::Empty;
    use hyper::body::Frame;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A body of chunks that declares no length (like a chunked request).
    struct Chunks(Vec<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(if self.0.is_empty() {
                None
            } else {
                Some(Ok(Frame::data(self.0.remove(0))))
            })
        }
    }

    #[tokio::test]
    async fn echo_body_limits() {
        let kib: Bytes = (0..1024).map(|i| i as u8).collect::<Vec<u8>>().into();
        assert_eq!(
            echo_body(Full::new(kib.clone())).await,
            (StatusCode::OK, kib.clone())
        );
        let full = Bytes::from(vec![7u8; ECHO_LIMIT]);
        let (status, body) = echo_body(Full::new(full.clone())).await;
        assert_eq!((status, body.len()), (StatusCode::OK, ECHO_LIMIT));
        // Declared too large: refused up front.
        let (status, _) = echo_body(Full::new(Bytes::from(vec![0u8; ECHO_LIMIT + 1]))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        // Undeclared length: refused once the limit is crossed.
        let half = Bytes::from(vec![1u8; ECHO_LIMIT / 2]);
        let (status, _) = echo_body(Chunks(vec![half.clone(), half.clone()])).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) =
            echo_body(Chunks(vec![half.clone(), half, Bytes::from_static(b"x")])).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let (status, body) = echo_body(Chunks(Vec::new())).await;
        assert_eq!((status, body.len()), (StatusCode::OK, 0));
    }

    async fn start() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let who = Identity {
            alloc_id: "a1".into(),
            node: "n1".into(),
        };
        tokio::spawn(serve_on(listener, who));
        addr
    }

    #[tokio::test]
    async fn echo_over_http_keeps_the_other_paths() {
        let addr = start().await;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let body: Bytes = (0..1024).map(|i| (i * 7) as u8).collect::<Vec<u8>>().into();
        // Several requests over one keep-alive connection.
        for _ in 0..3 {
            let req = Request::post("/echo")
                .header("host", "demo")
                .body(http_body_util::Either::Left(Full::new(body.clone())))
                .unwrap();
            let resp = tx.send_request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()["x-alloc-id"], "a1");
            let got = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(got, body);
        }
        for (path, want) in [
            ("/health", "ok\n".to_string()),
            (
                "/echo",
                "hello from allocation a1 on node n1 (path /echo)\n".to_string(),
            ),
        ] {
            let req = Request::get(path)
                .header("host", "demo")
                .body(http_body_util::Either::Right(Empty::<Bytes>::new()))
                .unwrap();
            let resp = tx.send_request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
            let got = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(String::from_utf8_lossy(&got), want, "GET {path}");
        }
    }

    #[tokio::test]
    async fn echo_refuses_a_declared_body_over_the_limit() {
        let addr = start().await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /echo HTTP/1.1\r\nhost: demo\r\ncontent-length: {}\r\n\r\n",
            ECHO_LIMIT + 1
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let read = async {
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed without an answer");
                got.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("an answer without the body being sent");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    }
}
