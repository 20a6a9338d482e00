//! Test support: a fake discovery server whose pushes the test drives, echo backends, a small
//! HTTP client, and a proxy started on port 0.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use flotilla_proto::discovery::v1::discovery_service_server::{
    DiscoveryService, DiscoveryServiceServer,
};
use flotilla_proto::discovery::v1::resource::Kind;
use flotilla_proto::discovery::v1::{
    CLUSTER_TYPE, Cluster, DiscoveryRequest, DiscoveryResponse, Endpoint, ROUTE_TYPE, Resource,
    Route,
};
use flotilla_proxy::{BoundProxy, ConfigHandle, ProxyConfig, ProxyError};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Status;

/// Deadline for every wait in the tests.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "flotilla_proxy=debug".into()),
        )
        .try_init();
}

/// Awaits `fut`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {DEADLINE:?} waiting for {what}"))
}

/// Polls `check` until it returns `Some`, failing after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(what, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

// ---------------------------------------------------------------- fake discovery server

type ResponseTx = mpsc::Sender<Result<DiscoveryResponse, Status>>;

struct FakeState {
    current: watch::Sender<Option<ResponseTx>>,
    requests: mpsc::UnboundedSender<DiscoveryRequest>,
    streams: AtomicUsize,
}

#[derive(Clone)]
struct FakeService(Arc<FakeState>);

#[tonic::async_trait]
impl DiscoveryService for FakeService {
    type StreamStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        self.0.streams.fetch_add(1, Ordering::SeqCst);
        self.0.current.send_replace(Some(tx));
        let requests = self.0.requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = incoming.message().await {
                let _ = requests.send(req);
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// A discovery server on 127.0.0.1:0. The test pushes responses and reads the proxy's
/// requests (initial, ACK, NACK).
pub struct FakeDiscovery {
    pub addr: SocketAddr,
    state: Arc<FakeState>,
    requests: Mutex<mpsc::UnboundedReceiver<DiscoveryRequest>>,
    server: JoinHandle<()>,
}

impl Drop for FakeDiscovery {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeDiscovery {
    pub async fn start() -> FakeDiscovery {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (requests_tx, requests_rx) = mpsc::unbounded_channel();
        let state = Arc::new(FakeState {
            current: watch::channel(None).0,
            requests: requests_tx,
            streams: AtomicUsize::new(0),
        });
        let svc = DiscoveryServiceServer::new(FakeService(state.clone()));
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        FakeDiscovery {
            addr,
            state,
            requests: Mutex::new(requests_rx),
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn streams_opened(&self) -> usize {
        self.state.streams.load(Ordering::SeqCst)
    }

    /// Sends a response on the current stream (waiting for one to be open).
    pub async fn push(&self, type_url: &str, version: &str, nonce: &str, resources: Vec<Resource>) {
        let mut current = self.state.current.subscribe();
        let tx = within("a discovery stream", current.wait_for(|c| c.is_some()))
            .await
            .unwrap()
            .clone()
            .unwrap();
        tx.send(Ok(DiscoveryResponse {
            version_info: version.into(),
            type_url: type_url.into(),
            nonce: nonce.into(),
            resources,
        }))
        .await
        .unwrap();
    }

    /// Ends the current stream with an error status.
    pub async fn fail_stream(&self) {
        if let Some(tx) = self.state.current.send_replace(None) {
            let _ = tx.send(Err(Status::unavailable("test: stream cut"))).await;
        }
    }

    pub async fn next_request(&self) -> DiscoveryRequest {
        let mut rx = self.requests.lock().await;
        within("a discovery request", rx.recv()).await.unwrap()
    }

    /// The proxy's reply (ACK or NACK) to the response with `nonce`.
    pub async fn reply_to(&self, nonce: &str) -> DiscoveryRequest {
        loop {
            let req = self.next_request().await;
            if req.response_nonce == nonce {
                return req;
            }
        }
    }

    /// Pushes clusters then routes as version `version` and asserts both are ACKed.
    pub async fn configure(&self, version: &str, clusters: Vec<Resource>, routes: Vec<Resource>) {
        let (cn, rn) = (format!("c-{version}"), format!("r-{version}"));
        self.push(CLUSTER_TYPE, version, &cn, clusters).await;
        let ack = self.reply_to(&cn).await;
        assert_eq!(ack.error_detail, None, "clusters NACKed");
        assert_eq!(ack.version_info, version);
        self.push(ROUTE_TYPE, version, &rn, routes).await;
        let ack = self.reply_to(&rn).await;
        assert_eq!(ack.error_detail, None, "routes NACKed");
        assert_eq!(ack.version_info, version);
    }
}

pub fn local(addr: SocketAddr, healthy: bool) -> Endpoint {
    Endpoint {
        address: addr.to_string(),
        node_id: "self".into(),
        local: true,
        proxy_addr: String::new(),
        healthy,
        alloc_id: format!("alloc-{}", addr.port()),
    }
}

pub fn remote(addr: SocketAddr, proxy: SocketAddr) -> Endpoint {
    Endpoint {
        address: addr.to_string(),
        node_id: "other".into(),
        local: false,
        proxy_addr: proxy.to_string(),
        healthy: true,
        alloc_id: format!("alloc-{}", addr.port()),
    }
}

pub fn cluster(name: &str, endpoints: Vec<Endpoint>) -> Resource {
    Resource {
        name: name.into(),
        kind: Some(Kind::Cluster(Cluster {
            name: name.into(),
            namespace: "default".into(),
            endpoints,
        })),
    }
}

pub fn route(host: &str, path_prefix: &str, cluster: &str) -> Resource {
    Resource {
        name: format!("{host}{path_prefix}->{cluster}"),
        kind: Some(Kind::Route(Route {
            host: host.into(),
            path_prefix: path_prefix.into(),
            cluster: cluster.into(),
        })),
    }
}

// ---------------------------------------------------------------- backends

/// An HTTP/1.1 backend answering its id, echoing what it saw in `x-echo-*` headers.
pub struct Backend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn echo(id: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(id.to_owned())));
    let h = resp.headers_mut();
    h.insert("x-backend", id.parse().unwrap());
    h.insert("x-echo-path", req.uri().to_string().parse().unwrap());
    for (from, to) in [
        ("host", "x-echo-host"),
        ("x-forwarded-for", "x-echo-xff"),
        ("x-forwarded-host", "x-echo-xfh"),
        ("x-forwarded-proto", "x-echo-xfp"),
        ("x-custom", "x-echo-custom"),
        ("connection", "x-echo-connection"),
    ] {
        if let Some(v) = req.headers().get(from) {
            h.insert(to, v.clone());
        }
    }
    resp
}

pub async fn echo_backend(id: &str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let (id, count) = (id.to_owned(), connections.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let id = id.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let resp = echo(&id, &req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Backend {
        addr,
        connections,
        task,
    }
}

/// A backend that holds each request until released: `started` receives one message per
/// request; sending on `release` lets them all answer `slow-done`.
pub struct SlowBackend {
    pub addr: SocketAddr,
    pub started: mpsc::UnboundedReceiver<()>,
    pub release: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for SlowBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn slow_backend() -> SlowBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (started_tx, started) = mpsc::unbounded_channel();
    let (release, release_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (started_tx, release_rx) = (started_tx.clone(), release_rx.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let (started_tx, mut release_rx) = (started_tx.clone(), release_rx.clone());
                    async move {
                        let _ = started_tx.send(());
                        let _ = release_rx.wait_for(|r| *r).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("slow-done"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    SlowBackend {
        addr,
        started,
        release,
        task,
    }
}

/// An address nothing listens on.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

// ---------------------------------------------------------------- client

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn read_reply(resp: Response<Incoming>) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// One HTTP/1.1 request on a new connection.
pub async fn send(addr: SocketAddr, req: Request<Empty<Bytes>>) -> Result<Reply, String> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
        Ok(read_reply(resp).await)
    };
    within("an HTTP reply", fut).await
}

pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    get_with(addr, host, path, &[]).await
}

pub async fn get_with(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::get(path).header(header::HOST, host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(addr, b.body(Empty::new()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {host}{path} via {addr}: {e}"))
}

/// One HTTP/2 (prior knowledge, h2c) request on a new connection.
pub async fn get_h2(addr: SocketAddr, uri: &str) -> Reply {
    let fut = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
        read_reply(tx.send_request(req).await.unwrap()).await
    };
    within("an h2 reply", fut).await
}

/// Counts of each body over `n` requests.
pub async fn tally(addr: SocketAddr, host: &str, path: &str, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = get(addr, host, path).await;
        assert_eq!(r.status, StatusCode::OK, "body: {}", r.body);
        *seen.entry(r.body).or_default() += 1;
    }
    seen
}

// ---------------------------------------------------------------- proxy

pub struct TestProxy {
    pub ingress: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub config: ConfigHandle,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), ProxyError>>>,
}

impl TestProxy {
    pub async fn start(node_id: &str, server: String) -> TestProxy {
        Self::start_with(node_id, server, Duration::from_secs(5)).await
    }

    pub async fn start_with(node_id: &str, server: String, grace: Duration) -> TestProxy {
        let lo = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let bound = BoundProxy::bind(ProxyConfig {
            ingress_addr: lo(0),
            inbound_addr: lo(0),
            admin_addr: Some(lo(0)),
        })
        .await
        .unwrap()
        .with_drain_grace(grace);
        let (ingress, inbound, admin) = (
            bound.ingress_addr(),
            bound.inbound_addr(),
            bound.admin_addr(),
        );
        let config = bound.config();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.run(node_id.into(), server, async {
            let _ = rx.await;
        }));
        TestProxy {
            ingress,
            inbound,
            admin,
            config,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Starts shutdown; returns the `run` task to await.
    pub fn shutdown(&mut self) -> JoinHandle<Result<(), ProxyError>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("shutdown called twice")
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A fake server and a proxy connected to it, with its initial requests consumed.
pub async fn proxy_with_server(node_id: &str) -> (FakeDiscovery, TestProxy) {
    init_tracing();
    let fake = FakeDiscovery::start().await;
    let proxy = TestProxy::start(node_id, fake.url()).await;
    let mut types = vec![
        fake.next_request().await.type_url,
        fake.next_request().await.type_url,
    ];
    types.sort();
    let mut want = vec![CLUSTER_TYPE.to_owned(), ROUTE_TYPE.to_owned()];
    want.sort();
    assert_eq!(types, want);
    (fake, proxy)
}
