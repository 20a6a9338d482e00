//! The example workload shipped with Flotilla: a tiny HTTP, WebSocket and gRPC server that
//! answers with its allocation id and node name, so load balancing through the mesh is visible,
//! and that can play the parts a deployment or a proxy test needs: a version, a slow start, a
//! broken release, a failing instance, a request that fails once.
//!
//! - `GET /health` answers `ok` (200); with [`Config::healthy_after`] it answers 503 until that
//!   long after start, and with [`Config::unhealthy`] always 500 — the checks a deployment
//!   waits on.
//! - `POST /echo` answers with the request body (up to [`ECHO_LIMIT`] bytes, 413 beyond), for
//!   latency benchmarks.
//! - `GET /upstream/<name>/<path>` calls `/<path>` on the Connect upstream `<name>` (at
//!   `$NOMAD_UPSTREAM_ADDR_<name>`, i.e. through the node proxy's localhost listener) and
//!   answers `via upstream <name>: <its answer>`.
//! - `/fail-once/<key>` (any method) answers 503 `failing once for <key>` the first time a key
//!   is asked for, then 200 (`ok from allocation <id>: <key>`): for retry tests. The keys are
//!   remembered per process, the [`FAIL_ONCE_KEYS`] most recent ones.
//! - `GET /ws` upgrades to a WebSocket (HTTP/1.1 only): the server first sends the text
//!   `hello from <alloc id>`, then echoes every text and binary message.
//! - gRPC: a request whose `content-type` starts with `application/grpc` is a call to the
//!   `flotilla.demo.v1.Echo` service (see `proto/flotilla/demo/v1/echo.proto`): `Say` (unary),
//!   `Count` (server streaming) and `Chat` (bidirectional). The port speaks HTTP/1.1 and HTTP/2
//!   (h2c with prior knowledge), so gRPC clients connect to it in plain text.
//! - Every other path answers `hello from allocation <id> on node <node>`, then ` version <v>`
//!   when [`Config::version`] is set, then the path, with the same facts in the `x-alloc-id`,
//!   `x-node` and `x-app-version` headers (`x-alloc-id` and `x-node` are on every response,
//!   `x-app-version` too when a version is set).
//!
//! With [`Config::fail_status`] every request but `GET /health` (and `HEAD`) answers that
//! status, gRPC calls and WebSocket handshakes included: an instance that is broken while its
//! health check passes, for outlier-detection tests.
//!
//! [`serve`] runs until SIGTERM or SIGINT, then stops accepting, lets requests in flight finish
//! within [`Config::drain_grace`] and returns `Ok`: a stopped instance fails no request it
//! took (WebSocket connections, once upgraded, are not waited for). Run it with
//! `flotilla demo-app --listen ADDR [--app-version V] [--healthy-after 3s] [--unhealthy]
//! [--fail-status 500]`.

mod grpc;
mod ws;

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use flotilla_proto::demo::v1::echo_server::EchoServer;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
pub use hyper::StatusCode;
use hyper::body::{Body, Incoming};
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response};
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
    /// Every request but `GET /health` answers this status (see [`parse_fail_status`]).
    pub fail_status: Option<StatusCode>,
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
            fail_status: None,
        }
    }
}

/// Parses `--fail-status`: an HTTP status from 200 to 599.
pub fn parse_fail_status(s: &str) -> Result<StatusCode, String> {
    let code: u16 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number; expected an HTTP status such as 500"))?;
    if !(200..=599).contains(&code) {
        return Err(format!(
            "{code} is not a final HTTP status; expected one from 200 to 599"
        ));
    }
    StatusCode::from_u16(code).map_err(|e| format!("{code}: {e}"))
}

/// How many keys `/fail-once/<key>` remembers; past that the oldest are forgotten (and would
/// fail once more).
pub const FAIL_ONCE_KEYS: usize = 100_000;

/// The keys `/fail-once/` has seen, at most `limit` of them, the oldest forgotten first.
#[derive(Debug)]
struct SeenKeys {
    keys: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
    limit: usize,
}

impl SeenKeys {
    fn new(limit: usize) -> Self {
        Self {
            keys: HashSet::new(),
            order: VecDeque::new(),
            limit,
        }
    }

    /// Remembers `key`; true if it was not remembered yet.
    fn first_time(&mut self, key: &str) -> bool {
        if self.keys.contains(key) {
            return false;
        }
        while self.order.len() >= self.limit.max(1) {
            match self.order.pop_front() {
                Some(old) => self.keys.remove(&old),
                None => break,
            };
        }
        let key: Arc<str> = key.into();
        self.keys.insert(key.clone());
        self.order.push_back(key);
        true
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
        grpc: grpc::EchoService::server(config.alloc_id.clone(), config.node.clone()),
        config,
        started: Instant::now(),
        seen: Mutex::new(SeenKeys::new(FAIL_ONCE_KEYS)),
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
            // HTTP/1.1 and HTTP/2 (h2c prior knowledge, for gRPC), and upgrades (WebSocket).
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
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
    /// The keys `/fail-once/<key>` has answered.
    seen: Mutex<SeenKeys>,
    /// The gRPC echo service (cheap to clone: an `Arc` inside).
    grpc: EchoServer<grpc::EchoService>,
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

/// A response body: the HTTP routes' own, or a gRPC call's (with its trailers).
type AnswerBody = Either<Full<Bytes>, tonic::body::Body>;

async fn answer(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<AnswerBody>, Infallible> {
    let who = &state.config;
    let mut resp = if let Some(status) = failing(&req, who) {
        let why = format!(
            "failing with {} (--fail-status) in allocation {} on node {}",
            status.as_u16(),
            who.alloc_id,
            who.node
        );
        if grpc::is_grpc(&req) {
            grpc::failure::<Full<Bytes>>(status, &why).map(Either::Left)
        } else {
            text(status, format!("{why}\n"), &state).map(Either::Left)
        }
    } else if grpc::is_grpc(&req) {
        grpc::call(state.grpc.clone(), req).await.map(Either::Right)
    } else {
        route(req, &state).await.map(Either::Left)
    };
    let headers = resp.headers_mut();
    for (name, value) in [
        ("x-alloc-id", &who.alloc_id),
        ("x-node", &who.node),
        ("x-app-version", &who.version),
    ] {
        if !value.is_empty()
            && !headers.contains_key(name)
            && let Ok(value) = HeaderValue::from_str(value)
        {
            headers.insert(name, value);
        }
    }
    Ok(resp)
}

/// The status to fail `req` with under `--fail-status`: every request but the health check.
fn failing<B>(req: &Request<B>, config: &Config) -> Option<StatusCode> {
    let health_check = (req.method() == Method::GET || req.method() == Method::HEAD)
        && req.uri().path() == "/health";
    config.fail_status.filter(|_| !health_check)
}

/// `/fail-once/<key>` → the key (not empty).
fn fail_once_key(path: &str) -> Option<&str> {
    path.strip_prefix("/fail-once/").filter(|k| !k.is_empty())
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
    if let Some(key) = fail_once_key(req.uri().path()) {
        let first = state
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first_time(key);
        return if first {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("failing once for {key}\n"),
                state,
            )
        } else {
            let body = format!("ok from allocation {}: {key}\n", who.alloc_id);
            text(StatusCode::OK, body, state)
        };
    }
    if req.method() == Method::GET && req.uri().path() == "/ws" {
        return ws::accept(req, &who.alloc_id);
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

    #[test]
    fn fail_status_is_parsed_and_checked() {
        assert_eq!(
            parse_fail_status("500"),
            Ok(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(parse_fail_status(" 404 "), Ok(StatusCode::NOT_FOUND));
        for bad in ["", "abc", "101", "600", "70000", "-1"] {
            let err = parse_fail_status(bad).unwrap_err();
            assert!(err.contains("expected"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn seen_keys_fail_once_and_forget_the_oldest() {
        let mut seen = SeenKeys::new(2);
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("a"));
        assert!(seen.first_time("b"));
        assert!(seen.first_time("c")); // forgets "a"
        assert!(!seen.first_time("b"));
        assert!(!seen.first_time("c"));
        assert!(seen.first_time("a"));
        assert_eq!((seen.keys.len(), seen.order.len()), (2, 2));
        assert_eq!(fail_once_key("/fail-once/x/y"), Some("x/y"));
        assert_eq!(fail_once_key("/fail-once/"), None);
        assert_eq!(fail_once_key("/fail-oncex"), None);
    }

    /// A tonic client over h2c (prior knowledge) to the demo app at `addr`.
    async fn grpc_client(
        addr: SocketAddr,
    ) -> flotilla_proto::demo::v1::echo_client::EchoClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        flotilla_proto::demo::v1::echo_client::EchoClient::new(channel)
    }

    #[tokio::test]
    async fn fail_status_fails_everything_but_the_health_check() {
        let addr = start_with(Config {
            fail_status: Some(StatusCode::INTERNAL_SERVER_ERROR),
            ..config()
        })
        .await;
        let (status, headers, body) = get(addr, "/x").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            "failing with 500 (--fail-status) in allocation a1 on node n1\n"
        );
        assert_eq!(headers["x-alloc-id"], "a1");
        for path in ["/fail-once/k", "/ws", "/upstream/u/x"] {
            assert_eq!(
                get(addr, path).await.0,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{path}"
            );
        }
        let (status, _, body) = get(addr, "/health").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
        // gRPC calls fail too: HTTP 500, and the gRPC status a client infers from it.
        let err = grpc_client(addr)
            .await
            .say(flotilla_proto::demo::v1::SayRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unknown, "{err}");
        assert_eq!(
            err.message(),
            "failing with 500 (--fail-status) in allocation a1 on node n1"
        );

        let addr = start_with(Config {
            fail_status: Some(StatusCode::SERVICE_UNAVAILABLE),
            ..config()
        })
        .await;
        assert_eq!(get(addr, "/").await.0, StatusCode::SERVICE_UNAVAILABLE);
        let mut client = grpc_client(addr).await;
        let request = flotilla_proto::demo::v1::CountRequest {
            n: 3,
            interval_ms: 0,
        };
        let err = client.count(request).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    }

    #[tokio::test]
    async fn fail_once_fails_the_first_request_of_each_key() {
        let addr = start().await;
        let (status, _, body) = get(addr, "/fail-once/k1").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "failing once for k1\n");
        for _ in 0..2 {
            let (status, headers, body) = get(addr, "/fail-once/k1").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, "ok from allocation a1: k1\n");
            assert_eq!(headers["x-alloc-id"], "a1");
        }
        let (status, _, body) = get(addr, "/fail-once/k2").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "failing once for k2\n")
        );
        assert_eq!(get(addr, "/fail-once/k2").await.0, StatusCode::OK);
        // Another process (instance) remembers its own keys.
        let other = start().await;
        assert_eq!(
            get(other, "/fail-once/k1").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    /// The next WebSocket message, within 10 s.
    async fn next<S>(
        ws: &mut tokio_tungstenite::WebSocketStream<S>,
    ) -> Option<
        Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>,
    >
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use futures::StreamExt;
        tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a WebSocket message or the end within 10 s")
    }

    #[tokio::test]
    async fn websocket_says_hello_then_echoes() {
        use futures::SinkExt;
        use tokio_tungstenite::tungstenite::Message;

        let addr = start().await;
        let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(resp.headers()["x-alloc-id"], "a1");
        let hello = next(&mut ws).await.unwrap().unwrap();
        assert_eq!(hello, Message::text("hello from a1"));
        for msg in [
            Message::text("one"),
            Message::binary(vec![0u8, 1, 2, 255]),
            Message::text("two"),
        ] {
            ws.send(msg.clone()).await.unwrap();
            assert_eq!(next(&mut ws).await.unwrap().unwrap(), msg);
        }
        ws.close(None).await.unwrap();
        // The server returns the close, then the stream ends.
        loop {
            match next(&mut ws).await {
                Some(Ok(Message::Close(_))) => {}
                None | Some(Err(_)) => break,
                Some(Ok(other)) => panic!("after close: {other:?}"),
            }
        }

        // A plain GET is refused with 426, and the server keeps serving.
        let (status, headers, _) = get(addr, "/ws").await;
        assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(get(addr, "/x").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn grpc_unary_streaming_and_bidi_over_h2c() {
        use flotilla_proto::demo::v1::{CountRequest, SayRequest};
        use futures::{SinkExt, StreamExt};

        let addr = start().await;
        let mut client = grpc_client(addr).await;

        // Unary.
        let resp = client
            .say(SayRequest {
                message: "hi".into(),
                fail_code: 0,
            })
            .await
            .unwrap();
        assert_eq!(resp.metadata().get("x-alloc-id").unwrap(), "a1");
        let reply = resp.into_inner();
        assert_eq!(
            (
                reply.message.as_str(),
                reply.alloc_id.as_str(),
                reply.node.as_str()
            ),
            ("hi", "a1", "n1")
        );
        let err = client
            .say(SayRequest {
                message: "x".into(),
                fail_code: tonic::Code::Unavailable as u32,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
        assert!(err.message().contains("allocation a1"), "{err}");

        // Server streaming: n replies, then OK (trailers with grpc-status 0).
        for interval_ms in [0, 1] {
            let mut stream = client
                .count(CountRequest { n: 5, interval_ms })
                .await
                .unwrap()
                .into_inner();
            let mut numbers = Vec::new();
            while let Some(reply) = stream.message().await.unwrap() {
                assert_eq!(reply.alloc_id, "a1");
                numbers.push(reply.number);
            }
            assert_eq!(numbers, [1, 2, 3, 4, 5]);
            let trailers = stream.trailers().await.unwrap().unwrap();
            assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        }
        let err = client
            .count(CountRequest {
                n: 1_000_000,
                interval_ms: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

        // Bidirectional: each answer arrives before the next message is sent.
        let (mut tx, rx) = futures::channel::mpsc::channel::<SayRequest>(4);
        let mut replies = client.chat(rx).await.unwrap().into_inner();
        for word in ["a", "b", "c"] {
            tx.send(SayRequest {
                message: word.into(),
                fail_code: 0,
            })
            .await
            .unwrap();
            let reply = tokio::time::timeout(Duration::from_secs(10), replies.message())
                .await
                .expect("an answer while the request stream is open")
                .unwrap()
                .unwrap();
            assert_eq!(
                (reply.message.as_str(), reply.alloc_id.as_str()),
                (word, "a1")
            );
        }
        drop(tx);
        assert!(replies.message().await.unwrap().is_none());
        assert!(replies.next().await.is_none());

        // HTTP/1.1 on the same port still answers.
        assert_eq!(get(addr, "/x").await.0, StatusCode::OK);
    }
}
