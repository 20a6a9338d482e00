//! The example workload shipped with Flotilla: a tiny HTTP server that answers with its
//! allocation id and node name, so load balancing through the mesh is visible, and that can
//! play the parts a deployment needs: a version, a slow start, a broken release.
//!
//! - `GET /health` answers `ok` (200); with [`Config::healthy_after`] it answers 503 until that
//!   long after start, and with [`Config::unhealthy`] always 500 — the checks a deployment
//!   waits on.
//! - `POST /echo` answers with the request body (up to [`ECHO_LIMIT`] bytes, 413 beyond), for
//!   latency benchmarks.
//! - `GET /upstream/<name>/<path>` calls `/<path>` on the Connect upstream `<name>` (at
//!   `$NOMAD_UPSTREAM_ADDR_<name>`, i.e. through the node proxy's localhost listener) and
//!   answers `via upstream <name>: <its answer>`.
//! - Every other path answers `hello from allocation <id> on node <node>`, then ` version <v>`
//!   when [`Config::version`] is set, then the path, with the same facts in the `x-alloc-id`,
//!   `x-node` and `x-app-version` headers (`x-app-version` is on every response when a version
//!   is set).
//!
//! [`serve`] runs until SIGTERM or SIGINT, then stops accepting, lets requests in flight finish
//! within [`Config::drain_grace`] and returns `Ok`: a stopped instance fails no request it
//! took. Run it with `flotilla demo-app --listen ADDR [--app-version V] [--healthy-after 3s]
//! [--unhealthy]`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::time::Instant;

/// How long requests in flight may take to finish once shutdown is asked for.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Who this instance is and how it behaves.
#[derive(Debug, Clone)]
pub struct Config {
    pub alloc_id: String,
    pub node: String,
    /// The application version, in answers and the `x-app-version` header; empty: none.
    pub version: String,
    /// `GET /health` answers 503 until this long after start (zero: healthy at once).
    pub healthy_after: Duration,
    /// `GET /health` always answers 500.
    pub unhealthy: bool,
    /// Once shutdown is asked for, how long requests in flight may take to finish.
    pub drain_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            alloc_id: "unknown".into(),
            node: "unknown".into(),
            version: String::new(),
            healthy_after: Duration::ZERO,
            unhealthy: false,
            drain_grace: DRAIN_GRACE,
        }
    }
}

/// The largest request body `POST /echo` sends back; a larger one gets 413.
pub const ECHO_LIMIT: usize = 1 << 20;

/// Serve on `listen` until SIGTERM or SIGINT, then drain (see [`serve_on`]).
pub async fn serve(listen: SocketAddr, config: Config) -> std::io::Result<()> {
    // Installed before the first accept, so a stop signal never kills the process outright.
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("demo-app: listen on {listen}: {e}")))?;
    serve_on(listener, config, shutdown).await
}

/// A future that resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Serve on a bound listener until `shutdown` resolves (or an accept fails); then stop
/// accepting, let requests in flight finish within [`Config::drain_grace`] (idle keep-alive
/// connections are closed at once) and return.
pub async fn serve_on<S>(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = S>,
) -> std::io::Result<()>
where
    S: std::fmt::Display,
{
    eprintln!(
        "demo-app: allocation {} on node {}{} listening on {}",
        config.alloc_id,
        config.node,
        version_suffix(&config.version),
        listener.local_addr()?
    );
    let grace = config.drain_grace;
    let state = Arc::new(State {
        config,
        started: Instant::now(),
    });
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let result = loop {
        let accepted = tokio::select! {
            why = &mut shutdown => {
                eprintln!("demo-app: {why}: no longer accepting; draining requests in flight");
                break Ok(());
            }
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => break Err(e),
        };
        let state = state.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| answer(req, state.clone()));
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            let _ = watcher.watch(conn).await;
        });
    };
    drop(listener);
    let in_flight = graceful.count();
    tokio::select! {
        () = graceful.shutdown() => {
            eprintln!("demo-app: drained {in_flight} connection(s); exiting");
        }
        () = tokio::time::sleep(grace) => {
            eprintln!(
                "demo-app: requests still in flight after {grace:?}; exiting anyway"
            );
        }
    }
    result
}

/// What every request handler sees.
#[derive(Debug)]
struct State {
    config: Config,
    started: Instant,
}

/// `" version V"`, or nothing without a version.
fn version_suffix(version: &str) -> String {
    if version.is_empty() {
        String::new()
    } else {
        format!(" version {version}")
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
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = route(req, &state).await;
    let version = &state.config.version;
    if !version.is_empty()
        && let Ok(value) = hyper::header::HeaderValue::from_str(version)
    {
        resp.headers_mut().insert("x-app-version", value);
    }
    Ok(resp)
}

/// `GET /health`: (status, body) from the configured behaviour and the time since start.
fn health(config: &Config, since_start: Duration) -> (StatusCode, String) {
    if config.unhealthy {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "unhealthy (--unhealthy)\n".to_string(),
        )
    } else if since_start < config.healthy_after {
        let left = config.healthy_after - since_start;
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("starting: healthy in {} ms\n", left.as_millis().max(1)),
        )
    } else {
        (StatusCode::OK, "ok\n".to_string())
    }
}

fn text(status: StatusCode, body: String, state: &State) -> Response<Full<Bytes>> {
    let who = &state.config;
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-alloc-id", who.alloc_id.as_str())
        .header("x-node", who.node.as_str())
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error\n"))))
}

async fn route(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let who = &state.config;
    if req.method() == Method::POST && req.uri().path() == "/echo" {
        let (status, body) = echo_body(req.into_body()).await;
        let content_type = if status == StatusCode::OK {
            "application/octet-stream"
        } else {
            "text/plain; charset=utf-8"
        };
        return Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("x-alloc-id", who.alloc_id.as_str())
            .header("x-node", who.node.as_str())
            .body(Full::new(body))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error\n"))));
    }
    if let Some((name, path)) = upstream_call(req.uri().path()) {
        let var = upstream_env(name);
        let (status, body) = match std::env::var(&var) {
            Err(_) => (
                StatusCode::BAD_GATEWAY,
                format!("{var} is not set: no upstream {name:?}\n"),
            ),
            Ok(addr) => match call_upstream(&addr, &path).await {
                Ok((status, body)) => (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    format!("via upstream {name}: {body}"),
                ),
                Err(e) => (StatusCode::BAD_GATEWAY, format!("upstream {name}: {e}\n")),
            },
        };
        return text(status, body, state);
    }
    if req.uri().path() == "/health" {
        let (status, body) = health(who, state.started.elapsed());
        return text(status, body, state);
    }
    let body = format!(
        "hello from allocation {} on node {}{} (path {})\n",
        who.alloc_id,
        who.node,
        version_suffix(&who.version),
        req.uri().path()
    );
    text(StatusCode::OK, body, state)
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

    fn config() -> Config {
        Config {
            alloc_id: "a1".into(),
            node: "n1".into(),
            ..Config::default()
        }
    }

    async fn start() -> SocketAddr {
        start_with(config()).await
    }

    async fn start_with(config: Config) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_on(listener, config, std::future::pending::<&str>()));
        addr
    }

    /// One GET over a fresh connection: (status, headers, body).
    async fn get(addr: SocketAddr, path: &str) -> (StatusCode, hyper::HeaderMap, String) {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", "demo")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn health_follows_the_configuration() {
        let mut c = config();
        assert_eq!(health(&c, Duration::ZERO), (StatusCode::OK, "ok\n".into()));
        c.healthy_after = Duration::from_secs(3);
        let (status, body) = health(&c, Duration::from_millis(500));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "starting: healthy in 2500 ms\n");
        assert_eq!(health(&c, Duration::from_secs(3)).0, StatusCode::OK);
        c.unhealthy = true;
        assert_eq!(
            health(&c, Duration::from_secs(60)).0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[tokio::test]
    async fn version_is_in_the_answer_and_on_every_response() {
        let addr = start_with(Config {
            version: "v2".into(),
            ..config()
        })
        .await;
        let (status, headers, body) = get(addr, "/x").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            "hello from allocation a1 on node n1 version v2 (path /x)\n"
        );
        assert_eq!(headers["x-app-version"], "v2");
        for path in ["/health", "/upstream/nope/x"] {
            let (_, headers, _) = get(addr, path).await;
            assert_eq!(headers["x-app-version"], "v2", "GET {path}");
        }

        // Without a version: the answer as before, and no header.
        let addr = start().await;
        let (_, headers, body) = get(addr, "/x").await;
        assert_eq!(body, "hello from allocation a1 on node n1 (path /x)\n");
        assert!(!headers.contains_key("x-app-version"));
    }

    #[tokio::test]
    async fn healthy_after_a_delay_and_serving_meanwhile() {
        let addr = start_with(Config {
            healthy_after: Duration::from_millis(600),
            ..config()
        })
        .await;
        let (status, _, body) = get(addr, "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.starts_with("starting: healthy in"), "{body}");
        // Other paths serve from the start.
        assert_eq!(get(addr, "/").await.0, StatusCode::OK);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _, body) = get(addr, "/health").await;
            if status == StatusCode::OK {
                assert_eq!(body, "ok\n");
                break;
            }
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(Instant::now() < deadline, "never became healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn unhealthy_always_fails_its_check() {
        let addr = start_with(Config {
            unhealthy: true,
            ..config()
        })
        .await;
        let (status, _, body) = get(addr, "/health").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, "unhealthy (--unhealthy)\n");
        assert_eq!(get(addr, "/").await.0, StatusCode::OK);
    }

    /// Starts a server that stops when the returned sender fires; the handle yields
    /// `serve_on`'s result.
    async fn stoppable(
        grace: Duration,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = Config {
            drain_grace: grace,
            ..config()
        };
        let server = tokio::spawn(serve_on(listener, config, async move {
            let _ = stopped.await;
            "test stop"
        }));
        (addr, stop, server)
    }

    /// Sends the head of `POST /echo` with a 10-byte body and its first 5 bytes, and waits
    /// until the server has read them (the request is in flight).
    async fn half_sent_echo(addr: SocketAddr) -> tokio::net::TcpStream {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"POST /echo HTTP/1.1\r\nhost: demo\r\ncontent-length: 10\r\n\r\nhello")
            .await
            .unwrap();
        tcp
    }

    #[tokio::test]
    async fn shutdown_lets_requests_in_flight_finish_and_refuses_new_ones() {
        let (addr, stop, server) = stoppable(Duration::from_secs(10)).await;
        // An idle keep-alive connection, and a request half sent.
        let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut busy = half_sent_echo(addr).await;
        // Make sure the server has taken both connections before stopping it.
        assert_eq!(get(addr, "/health").await.0, StatusCode::OK);

        stop.send(()).unwrap();
        // New connections are refused once the listener is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "still accepting after shutdown");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!server.is_finished(), "returned with a request in flight");

        // The request in flight completes.
        busy.write_all(b"world").await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), busy.read_to_end(&mut got))
            .await
            .expect("the answer, then the connection closed")
            .unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("helloworld"), "{text}");

        // Then the server returns Ok, the idle connection closed without waiting for grace.
        let result = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve_on returns once drained");
        result.unwrap().unwrap();
        drop(idle);
    }

    #[tokio::test]
    async fn shutdown_waits_no_longer_than_the_grace() {
        let (addr, stop, server) = stoppable(Duration::from_millis(300)).await;
        let _stuck = half_sent_echo(addr).await;
        assert_eq!(get(addr, "/health").await.0, StatusCode::OK);
        let asked = Instant::now();
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve_on returns after the grace")
            .unwrap()
            .unwrap();
        assert!(asked.elapsed() >= Duration::from_millis(300));
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
