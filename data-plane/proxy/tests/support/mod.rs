//! Test support: a fake control plane (discovery stream whose pushes the test drives, and a
//! certificate service signing with a real test CA), echo backends, a small HTTP client, raw
//! mesh TLS clients and a fake peer, and a proxy started on port 0.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use flotilla_ca::CaRoot;
use flotilla_proto::ca::v1::certificate_service_server::{
    CertificateService, CertificateServiceServer,
};
use flotilla_proto::ca::v1::{SignRequest, SignResponse};
use flotilla_proto::discovery::v1::discovery_service_server::{
    DiscoveryService, DiscoveryServiceServer,
};
use flotilla_proto::discovery::v1::resource::Kind;
use flotilla_proto::discovery::v1::{
    ALL_TYPES, AUTHORIZATION_TYPE, Authorization, CLUSTER_TYPE, Cluster, DiscoveryRequest,
    DiscoveryResponse, Endpoint, IntentionRule, LISTENER_TYPE, Listener, ROUTE_TYPE, Resource,
    Route, TRUST_BUNDLE_TYPE, TrustBundle,
};
use flotilla_proxy::{BoundProxy, ConfigHandle, NodeIdentity, ProxyConfig, ProxyError};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

// ---------------------------------------------------------------- test CA

/// The trust domain of the test mesh.
pub const TRUST_DOMAIN: &str = "abcd1234.flotilla";
/// The datacenter every test node is in.
pub const DC: &str = "dc1";
/// Lifetime of the leaves the fake control plane signs (long enough that no renewal happens
/// during a test).
pub const LEAF_TTL: Duration = Duration::from_secs(3600);

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The SPIFFE ID of `service` (namespace `default`) in the test trust domain.
pub fn spiffe(service: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/dc/{DC}/svc/{service}")
}

/// The server name (SNI) naming `service` in the test trust domain.
pub fn sni(service: &str) -> String {
    format!("{service}.default.{DC}.svc.{TRUST_DOMAIN}")
}

/// The secret every test node registered with.
pub fn node_secret(node_id: &str) -> String {
    format!("secret-of-{node_id}")
}

/// A certificate chain and its key, for raw TLS clients and fake peers.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// One certificate the fake control plane signed.
#[derive(Debug, Clone)]
pub struct Signed {
    pub node_id: String,
    pub spiffe_id: String,
    pub root_id: String,
    pub not_after: i64,
}

struct CaInner {
    trust_domain: String,
    leaf_ttl: Duration,
    /// Newest first; exactly one is active.
    roots: Vec<CaRoot>,
    signed: Vec<Signed>,
}

/// A real CA made with `flotilla-ca`, shared by the fake control planes of one test.
#[derive(Clone)]
pub struct TestCa(Arc<std::sync::Mutex<CaInner>>);

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A CA for [`TRUST_DOMAIN`].
    pub fn new() -> TestCa {
        Self::with_trust_domain(TRUST_DOMAIN)
    }

    /// A CA for another trust domain (to test refusals).
    pub fn with_trust_domain(trust_domain: &str) -> TestCa {
        // Backdated an hour, so expired leaves can be signed "in the past".
        let root =
            flotilla_ca::generate_root(trust_domain, now_secs() - 3600, flotilla_ca::ROOT_VALIDITY)
                .unwrap();
        TestCa(Arc::new(std::sync::Mutex::new(CaInner {
            trust_domain: trust_domain.to_string(),
            leaf_ttl: LEAF_TTL,
            roots: vec![root],
            signed: Vec::new(),
        })))
    }

    /// Leaves signed for proxies from now on live `ttl` (default [`LEAF_TTL`]).
    pub fn set_leaf_ttl(&self, ttl: Duration) {
        self.inner().leaf_ttl = ttl;
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, CaInner> {
        self.0.lock().unwrap()
    }

    pub fn trust_domain(&self) -> String {
        self.inner().trust_domain.clone()
    }

    pub fn active_root_id(&self) -> String {
        let inner = self.inner();
        inner.roots.iter().find(|r| r.active).unwrap().id.clone()
    }

    /// Every root's ID, newest first.
    pub fn root_ids(&self) -> Vec<String> {
        self.inner().roots.iter().map(|r| r.id.clone()).collect()
    }

    /// What the fake control plane has signed so far.
    pub fn signed(&self) -> Vec<Signed> {
        self.inner().signed.clone()
    }

    /// The trust bundle resource: every root, and the active one's ID.
    pub fn bundle(&self) -> Resource {
        let inner = self.inner();
        Resource {
            name: "trust-bundle".into(),
            kind: Some(Kind::TrustBundle(TrustBundle {
                trust_domain: inner.trust_domain.clone(),
                roots_pem: inner.roots.iter().map(|r| r.root_cert.clone()).collect(),
                active_root_id: inner.roots.iter().find(|r| r.active).unwrap().id.clone(),
            })),
        }
    }

    /// Rotates to a new root with `flotilla_ca::rotate` (cross-signed by the current one, which
    /// stays in the bundle). Returns the new active root's ID.
    pub fn rotate(&self) -> String {
        let mut inner = self.inner();
        let now = now_secs();
        let new_root =
            flotilla_ca::generate_root(&inner.trust_domain, now - 3600, flotilla_ca::ROOT_VALIDITY)
                .unwrap();
        // `rotate` works on the whole CA state; rebuild it around the roots we hold.
        let active = inner.roots.iter().find(|r| r.active).unwrap().clone();
        let mut state = flotilla_ca::bootstrap(&inner.trust_domain, LEAF_TTL, active);
        state.roots = inner.roots.clone();
        let next = flotilla_ca::rotate(&state, new_root, now).unwrap();
        inner.roots = next.roots;
        inner.roots.iter().find(|r| r.active).unwrap().id.clone()
    }

    /// Signs `csr_pem` for `spiffe_id` with the active root.
    fn sign(
        &self,
        csr_pem: &str,
        spiffe_id: &str,
        ttl: Duration,
        now: i64,
    ) -> Result<(flotilla_ca::SignedLeaf, String), String> {
        let inner = self.inner();
        let root = inner.roots.iter().find(|r| r.active).unwrap();
        let leaf = flotilla_ca::sign_leaf(root, csr_pem, spiffe_id, ttl, now)
            .map_err(|e| e.to_string())?;
        Ok((leaf, root.id.clone()))
    }

    /// A key and a certificate for `service` of this CA's trust domain, valid now.
    pub fn issue(&self, service: &str) -> Identity {
        self.issue_at(service, now_secs(), LEAF_TTL)
    }

    /// Like [`TestCa::issue`], signed as if at `now` with `ttl` (an expired one when both are
    /// small enough).
    pub fn issue_at(&self, service: &str, now: i64, ttl: Duration) -> Identity {
        let id = format!(
            "spiffe://{}/ns/default/dc/{DC}/svc/{service}",
            self.trust_domain()
        );
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(id.clone().try_into().unwrap())];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let (leaf, _) = self.sign(&csr, &id, ttl, now).unwrap();
        let chain = std::iter::once(&leaf.cert_pem)
            .chain(&leaf.intermediates_pem)
            .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .collect();
        Identity {
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

impl TestCa {
    /// A leaf signed directly by the active root (no `sign_leaf` checks) carrying `uris` as its
    /// URI SANs: to make certificates the CA itself would refuse to issue.
    pub fn issue_raw(&self, uris: &[&str]) -> Identity {
        let root = {
            let inner = self.inner();
            inner.roots.iter().find(|r| r.active).unwrap().clone()
        };
        let root_key = rcgen::KeyPair::from_pem(&root.private_key).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&root.root_cert, root_key).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI(u.to_string().try_into().unwrap()))
            .collect();
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = std::time::SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + LEAF_TTL).into();
        let cert = params.signed_by(&key, &issuer).unwrap();
        Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// The fake control plane's `CertificateService`: checks the node's secret and signs the CSR
/// for the service's SPIFFE ID, like the real server (which also checks the node runs it).
#[derive(Clone)]
struct FakeCa(TestCa);

#[tonic::async_trait]
impl CertificateService for FakeCa {
    async fn sign(
        &self,
        request: tonic::Request<SignRequest>,
    ) -> Result<tonic::Response<SignResponse>, Status> {
        let req = request.into_inner();
        if req.node_secret != node_secret(&req.node_id) {
            return Err(Status::permission_denied("wrong node secret"));
        }
        let namespace = if req.namespace.is_empty() {
            "default"
        } else {
            req.namespace.as_str()
        };
        let id = format!(
            "spiffe://{}/ns/{namespace}/dc/{DC}/svc/{}",
            self.0.trust_domain(),
            req.service
        );
        let ttl = self.0.inner().leaf_ttl;
        let (leaf, root_id) = self
            .0
            .sign(&req.csr_pem, &id, ttl, now_secs())
            .map_err(Status::invalid_argument)?;
        self.0.inner().signed.push(Signed {
            node_id: req.node_id.clone(),
            spiffe_id: id.clone(),
            root_id: root_id.clone(),
            not_after: leaf.not_after,
        });
        Ok(tonic::Response::new(SignResponse {
            cert_pem: leaf.cert_pem,
            intermediates_pem: leaf.intermediates_pem,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            spiffe_id: leaf.spiffe_id,
            root_id,
        }))
    }
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

/// A fake control plane on 127.0.0.1:0: the discovery stream (the test pushes responses and
/// reads the proxy's requests: initial, ACK, NACK) and the `CertificateService`, signing with
/// a [`TestCa`].
pub struct FakeDiscovery {
    pub addr: SocketAddr,
    pub ca: TestCa,
    state: Arc<FakeState>,
    requests: Mutex<mpsc::UnboundedReceiver<DiscoveryRequest>>,
    nonces: AtomicUsize,
    server: JoinHandle<()>,
}

impl Drop for FakeDiscovery {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Everything a node is told, for [`FakeDiscovery::configure_mesh`]. The trust bundle always
/// comes from the fake's CA.
#[derive(Default)]
pub struct Mesh {
    pub clusters: Vec<Resource>,
    pub routes: Vec<Resource>,
    pub listeners: Vec<Resource>,
    /// `None`: allow everything (default action allow, no intentions).
    pub authorization: Option<Resource>,
}

impl FakeDiscovery {
    /// A fake control plane with its own CA.
    pub async fn start() -> FakeDiscovery {
        Self::start_with_ca(TestCa::new()).await
    }

    /// A fake control plane signing with `ca` (share one between the fakes of several nodes).
    pub async fn start_with_ca(ca: TestCa) -> FakeDiscovery {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (requests_tx, requests_rx) = mpsc::unbounded_channel();
        let state = Arc::new(FakeState {
            current: watch::channel(None).0,
            requests: requests_tx,
            streams: AtomicUsize::new(0),
        });
        let svc = DiscoveryServiceServer::new(FakeService(state.clone()));
        let certs = CertificateServiceServer::new(FakeCa(ca.clone()));
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .add_service(certs)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        FakeDiscovery {
            addr,
            ca,
            state,
            requests: Mutex::new(requests_rx),
            nonces: AtomicUsize::new(0),
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

    /// Pushes `resources` as `version` of `type_url` and asserts the proxy ACKs it.
    pub async fn push_ok(&self, type_url: &str, version: &str, resources: Vec<Resource>) {
        let n = self.nonces.fetch_add(1, Ordering::SeqCst);
        let nonce = format!("n{n}");
        self.push(type_url, version, &nonce, resources).await;
        let ack = self.reply_to(&nonce).await;
        assert_eq!(
            ack.error_detail, None,
            "{type_url} version {version} NACKed"
        );
        assert_eq!(ack.version_info, version);
    }

    /// Pushes the CA's current trust bundle.
    pub async fn push_trust(&self, version: &str) {
        self.push_ok(TRUST_BUNDLE_TYPE, version, vec![self.ca.bundle()])
            .await;
    }

    /// Pushes the authorization resource.
    pub async fn push_authorization(&self, version: &str, authorization: Resource) {
        self.push_ok(AUTHORIZATION_TYPE, version, vec![authorization])
            .await;
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

    /// Pushes clusters and routes, no upstream listeners, the CA's trust bundle and an
    /// allow-all authorization as version `version`, and asserts all are ACKed.
    pub async fn configure(&self, version: &str, clusters: Vec<Resource>, routes: Vec<Resource>) {
        self.configure_mesh(
            version,
            Mesh {
                clusters,
                routes,
                ..Mesh::default()
            },
        )
        .await;
    }

    /// Pushes every resource type as version `version` and asserts all are ACKed.
    pub async fn configure_mesh(&self, version: &str, mesh: Mesh) {
        self.push_ok(CLUSTER_TYPE, version, mesh.clusters).await;
        self.push_ok(ROUTE_TYPE, version, mesh.routes).await;
        self.push_ok(LISTENER_TYPE, version, mesh.listeners).await;
        self.push_trust(version).await;
        let authorization = mesh
            .authorization
            .unwrap_or_else(|| intentions("allow", &[]));
        self.push_authorization(version, authorization).await;
    }
}

/// A local endpoint; its identity is filled in by [`cluster`].
pub fn local(addr: SocketAddr, healthy: bool) -> Endpoint {
    Endpoint {
        address: addr.to_string(),
        node_id: "self".into(),
        local: true,
        proxy_addr: String::new(),
        healthy,
        alloc_id: format!("alloc-{}", addr.port()),
        identity: String::new(),
        ..Default::default()
    }
}

/// A remote endpoint behind `proxy`; its identity is filled in by [`cluster`].
pub fn remote(addr: SocketAddr, proxy: SocketAddr) -> Endpoint {
    Endpoint {
        address: addr.to_string(),
        node_id: "other".into(),
        local: false,
        proxy_addr: proxy.to_string(),
        healthy: true,
        alloc_id: format!("alloc-{}", addr.port()),
        identity: String::new(),
        ..Default::default()
    }
}

/// A cluster; endpoints without an identity get the service's SPIFFE ID, as the server sends.
pub fn cluster(name: &str, endpoints: Vec<Endpoint>) -> Resource {
    let endpoints = endpoints
        .into_iter()
        .map(|mut e| {
            if e.identity.is_empty() {
                e.identity = spiffe(name);
            }
            e
        })
        .collect();
    Resource {
        name: name.into(),
        kind: Some(Kind::Cluster(Cluster {
            name: name.into(),
            namespace: "default".into(),
            endpoints,
            ..Default::default()
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

/// An upstream listener on `127.0.0.1:<port>` carrying `source`'s connections to `destination`.
pub fn listener(source: &str, destination: &str, port: u16) -> Resource {
    let name = format!("alloc-{source}/{destination}");
    Resource {
        name: name.clone(),
        kind: Some(Kind::Listener(Listener {
            name,
            alloc_id: format!("alloc-{source}"),
            source_service: source.into(),
            namespace: "default".into(),
            destination: destination.into(),
            destination_namespace: "default".into(),
            bind_address: "127.0.0.1".into(),
            bind_port: u32::from(port),
        })),
    }
}

/// The authorization resource: `default` ("allow"/"deny") and `(source, destination, action)`
/// intentions (exact ones take precedence over wildcards).
pub fn intentions(default: &str, rules: &[(&str, &str, &str)]) -> Resource {
    Resource {
        name: "intentions".into(),
        kind: Some(Kind::Authorization(Authorization {
            default_action: default.into(),
            intentions: rules
                .iter()
                .map(|(source, destination, action)| IntentionRule {
                    source: (*source).into(),
                    destination: (*destination).into(),
                    action: (*action).into(),
                    precedence: if *source == "*" || *destination == "*" {
                        5
                    } else {
                        9
                    },
                })
                .collect(),
        })),
    }
}

/// A port that was free a moment ago (upstream listeners need a fixed port).
pub async fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768–60999 by default), so a `bind(…:0)` elsewhere in
    // the tests cannot take the port before the proxy binds it, and never the same port twice
    // in one process (tests run concurrently).
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = (std::process::id() % 97) * 120;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (base + n) % 12_000;
        if TcpListener::bind(("127.0.0.1", port as u16)).await.is_ok() {
            return port as u16;
        }
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

/// A [`slow_backend`] that `fake` serves as cluster `slow` (config version `1`), so
/// `slow.service.flotilla` reaches it through the proxy's ingress.
pub async fn slow_cluster(fake: &FakeDiscovery) -> SlowBackend {
    let slow = slow_backend().await;
    fake.configure(
        "1",
        vec![cluster("slow", vec![local(slow.addr, true)])],
        vec![],
    )
    .await;
    slow
}

/// A raw TCP echo server counting the connections it accepted.
pub struct TcpEcho {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpEcho {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

pub async fn tcp_echo() -> TcpEcho {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    TcpEcho {
        addr,
        accepted,
        task,
    }
}

/// Connects to `addr`, sends `payload` and expects it back (an echo at the far end). Never
/// takes longer than 5 s.
pub async fn roundtrip(addr: SocketAddr, payload: &[u8]) -> Result<(), String> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        echo_exchange(&mut tcp, payload).await
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err(format!("{addr}: no echo within 5 s")))
}

/// Writes `payload` on `io` and reads it back.
pub async fn echo_exchange<IO>(io: &mut IO, payload: &[u8]) -> Result<(), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    io.write_all(payload)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0; payload.len()];
    io.read_exact(&mut back)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if back != payload {
        return Err(format!(
            "echo mismatch: sent {:?}, got {:?}",
            String::from_utf8_lossy(payload),
            String::from_utf8_lossy(&back)
        ));
    }
    Ok(())
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

// ---------------------------------------------------------------- raw mesh TLS

/// Accepts any server certificate (still checks the handshake signature): the tests using it
/// examine the server's side.
#[derive(Debug)]
pub struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client presenting `identity` (or no certificate), offering `versions`, trusting any
/// server, without session resumption (every connection is a full handshake).
pub fn raw_client(
    identity: Option<&Identity>,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let provider = ring();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)));
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![flotilla_proxy::tls::ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// TLS 1.3 and 1.2 offered; the server picks.
pub fn raw_client_any_version(identity: Option<&Identity>) -> Arc<ClientConfig> {
    raw_client(
        identity,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
}

/// A TLS connection to `addr` naming `server_name`.
pub async fn raw_tls(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    within(
        "a TLS handshake",
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
}

/// How a CONNECT through a peer's inbound listener ended.
pub enum Tunnel {
    /// The TLS handshake failed.
    Handshake(std::io::Error),
    /// The handshake passed but the CONNECT exchange failed (e.g. the server's alert about
    /// our certificate arrived: in TLS 1.3 the client finishes first).
    Broken(String),
    /// The peer answered with a status other than 200.
    Refused(StatusCode, String),
    /// 200: the tunnel, and the negotiated protocol version.
    Open(
        TokioIo<hyper::upgrade::Upgraded>,
        Option<rustls::ProtocolVersion>,
    ),
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tunnel::Handshake(e) => write!(f, "Handshake({e})"),
            Tunnel::Broken(e) => write!(f, "Broken({e})"),
            Tunnel::Refused(s, m) => write!(f, "Refused({s}, {m:?})"),
            Tunnel::Open(_, v) => write!(f, "Open({v:?})"),
        }
    }
}

/// mTLS to the inbound listener at `addr` naming `server_name`, then `CONNECT target`.
pub async fn raw_tunnel(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
    target: SocketAddr,
) -> Tunnel {
    let tls = match raw_tls(config, addr, server_name).await {
        Ok(tls) => tls,
        Err(e) => return Tunnel::Handshake(e),
    };
    let version = tls.get_ref().1.protocol_version();
    match within(
        "a CONNECT answer",
        flotilla_proxy::upstream::open_tunnel(tls, target),
    )
    .await
    {
        Ok(upgraded) => Tunnel::Open(TokioIo::new(upgraded), version),
        Err(flotilla_proxy::upstream::TunnelError::Refused { status, message }) => {
            Tunnel::Refused(status, message)
        }
        Err(e) => Tunnel::Broken(e.to_string()),
    }
}

/// A fake peer proxy: TLS with a fixed certificate whatever the SNI (no client auth), then
/// answers any `CONNECT` with 200 and echoes the tunnel's bytes itself.
pub struct FakePeer {
    pub addr: SocketAddr,
    /// TLS handshakes that completed.
    pub handshakes: Arc<AtomicUsize>,
    /// CONNECT requests answered.
    pub connects: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn fake_peer(identity: Identity) -> FakePeer {
    let mut config = rustls::ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .unwrap();
    config.alpn_protocols = vec![flotilla_proxy::tls::ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (handshakes, connects) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h, c) = (handshakes.clone(), connects.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, h, c) = (acceptor.clone(), h.clone(), c.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                h.fetch_add(1, Ordering::SeqCst);
                // Read the request head byte by byte, so nothing of the tunnel is consumed.
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    match tls.read(&mut b).await {
                        Ok(1) => head.push(b[0]),
                        _ => return,
                    }
                }
                if !head.starts_with(b"CONNECT ") {
                    return;
                }
                c.fetch_add(1, Ordering::SeqCst);
                if tls.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    FakePeer {
        addr,
        handshakes,
        connects,
        task,
    }
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
        let node = NodeIdentity {
            node_id: node_id.into(),
            node_secret: node_secret(node_id),
            datacenter: DC.into(),
        };
        let task = tokio::spawn(bound.run(node, Some(server), async {
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

    fn admin(&self) -> SocketAddr {
        self.admin.expect("the test proxy has an admin listener")
    }

    /// `GET /stats` from the admin listener.
    pub async fn stats(&self) -> serde_json::Value {
        let r = get(self.admin(), "localhost", "/stats").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }

    /// One counter of `/stats`.
    pub async fn stat(&self, name: &str) -> u64 {
        let stats = self.stats().await;
        stats[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name:?} in {stats}"))
    }

    /// Waits until counter `name` is at least `min`; returns its value.
    pub async fn wait_stat(&self, name: &str, min: u64) -> u64 {
        eventually(&format!("{name} >= {min}"), || async {
            let v = self.stat(name).await;
            (v >= min).then_some(v)
        })
        .await
    }

    /// `GET /config_dump` from the admin listener.
    pub async fn config_dump(&self) -> serde_json::Value {
        let r = get(self.admin(), "localhost", "/config_dump").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }

    /// The installed certificates as (SPIFFE ID, root ID), from `/config_dump`.
    pub async fn certificates(&self) -> Vec<(String, String)> {
        let dump = self.config_dump().await;
        dump["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["spiffe_id"].as_str().unwrap().to_string(),
                    c["root_id"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Waits until the proxy holds a certificate for each of `services`.
    pub async fn wait_for_certs(&self, services: &[&str]) {
        let want: Vec<String> = services.iter().map(|s| spiffe(s)).collect();
        eventually(&format!("certificates for {services:?}"), || async {
            let have = self.certificates().await;
            want.iter()
                .all(|w| have.iter().any(|(id, _)| id == w))
                .then_some(())
        })
        .await
    }

    /// Waits until every certificate the proxy holds (at least one) was signed by `root_id`.
    pub async fn wait_for_root(&self, root_id: &str) -> Vec<(String, String)> {
        eventually(
            &format!("all certificates signed by root {root_id}"),
            || async {
                let have = self.certificates().await;
                (!have.is_empty() && have.iter().all(|(_, r)| r == root_id)).then_some(have)
            },
        )
        .await
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
    let mut types = Vec::new();
    for _ in ALL_TYPES {
        types.push(fake.next_request().await.type_url);
    }
    types.sort();
    let mut want: Vec<String> = ALL_TYPES.iter().map(|t| t.to_string()).collect();
    want.sort();
    assert_eq!(types, want);
    (fake, proxy)
}
