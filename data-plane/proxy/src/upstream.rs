//! Upstream connections: connect directly or through a peer proxy's CONNECT tunnel (over mTLS,
//! as the node's ingress identity), and pool HTTP/1.1 connections per [`Target`] — so L7
//! traffic to another node reuses established TLS connections.
//!
//! A connection is checked out (idle one, or a new one) before the request is handed over, so a
//! connect failure gives the request back to the caller, which may try another endpoint. A pooled
//! connection that turns out closed before the request was written also gives it back, and a
//! fresh connection is tried once.
//!
//! Idle connections close after the idle timeout; sooner when there are more than the traffic
//! uses: each purge period closes half of those no request needed during the whole period
//! (a burst of hundreds of h2 streams leaves hundreds behind).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use crate::FastMap;
pub use crate::config::Target;
use crate::h1::client::Failure;
use crate::h1::{ClientBody, ClientConn, H1Error};
use crate::metrics::ClusterMetrics;
use crate::tls::MeshTls;
use crate::tls::issuer::{INGRESS_NAMESPACE, INGRESS_SERVICE};

/// Body type of requests sent upstream.
pub type UpstreamBody = BoxBody<Bytes, hyper::Error>;

/// Timeouts and pool limits.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Covers TCP connect, the tunnel handshake and the HTTP/1.1 handshake.
    pub connect_timeout: Duration,
    /// Idle pooled connections older than this are closed.
    pub idle_timeout: Duration,
    /// Every period, half (rounded up) of the connections to a target that sat idle for the
    /// whole period are closed, oldest first, as HAProxy's `pool-purge-delay` does: a burst's
    /// surplus shrinks geometrically to what the traffic uses, instead of staying open until
    /// the idle timeout.
    pub idle_purge_period: Duration,
    /// At most this many HTTP/1.1 connections are pooled per target (busy or idle): enough for
    /// an h2 client's hundreds of concurrent streams without connecting per request.
    pub max_idle_per_target: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            idle_purge_period: Duration::from_secs(5),
            max_idle_per_target: 512,
        }
    }
}

/// Why no connection to an endpoint could be made. Nothing was sent: safe to retry elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect to the endpoint (or to the peer proxy) failed.
    #[error("connect to {addr}: {error}")]
    Tcp { addr: SocketAddr, error: io::Error },
    /// The whole connect step took longer than the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The mTLS handshake with the peer proxy failed (or this node has no certificate yet).
    #[error("mTLS to proxy {proxy}: {error}")]
    Tls { proxy: SocketAddr, error: io::Error },
    /// The endpoint's identity is unknown (the control plane's CA is not set up), so the
    /// peer proxy cannot be authenticated.
    #[error("endpoint behind proxy {proxy} has no identity to verify")]
    NoIdentity { proxy: SocketAddr },
    /// The peer proxy refused or broke the CONNECT tunnel.
    #[error("tunnel through proxy {proxy}: {error}")]
    Tunnel {
        proxy: SocketAddr,
        error: TunnelError,
    },
    /// The HTTP/1.1 handshake on the new connection failed.
    #[error("HTTP handshake: {0}")]
    Handshake(hyper::Error),
    /// A new connection failed before the request reached the upstream.
    #[error("new connection failed before the request was sent: {0}")]
    Fresh(H1Error),
    /// The connection closed before the request could be written.
    #[error("connection closed before the request was sent: {0}")]
    Closed(hyper::Error),
}

impl ConnectError {
    /// The peer proxy's reason when its intentions refused the tunnel (403): trying another
    /// instance of the same service would be refused too.
    pub fn denial(&self) -> Option<&str> {
        match self {
            ConnectError::Tunnel {
                error:
                    TunnelError::Refused {
                        status: StatusCode::FORBIDDEN,
                        message,
                    },
                ..
            } => Some(message),
            _ => None,
        }
    }
}

/// A CONNECT tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// HTTP exchange with the peer proxy failed.
    #[error("CONNECT exchange failed: {0}")]
    Http(#[from] hyper::Error),
    /// The peer proxy answered with a status other than 200.
    #[error("peer proxy answered {status}: {message}")]
    Refused { status: StatusCode, message: String },
}

/// Opens a CONNECT tunnel to `target` over `io` (a connection to a peer proxy's inbound
/// listener). Generic over the transport so a TLS stream can be passed later.
pub async fn open_tunnel<I>(io: I, target: SocketAddr) -> Result<Upgraded, TunnelError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = http1::Builder::new()
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            debug!(%target, %error, "tunnel handshake connection ended with error");
        }
    });
    let authority = target.to_string();
    let mut req = Request::new(Empty::new());
    *req.method_mut() = Method::CONNECT;
    match authority.parse() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => {
            return Err(TunnelError::Refused {
                status: StatusCode::BAD_REQUEST,
                message: format!("cannot form a CONNECT URI from {authority:?}"),
            });
        }
    }
    if let Ok(host) = header::HeaderValue::from_str(&authority) {
        req.headers_mut().insert(header::HOST, host);
    }
    let resp = tx.send_request(req).await?;
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let message = match Limited::new(resp.into_body(), 1024).collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).trim().to_owned(),
            Err(_) => String::new(),
        };
        return Err(TunnelError::Refused { status, message });
    }
    Ok(hyper::upgrade::on(resp).await?)
}

/// The request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection; the request is handed back untouched (`None` when it was lent).
    Connect {
        error: ConnectError,
        request: Option<Box<Request<UpstreamBody>>>,
    },
    /// The request was (maybe partly) sent; it is gone.
    Request(UpstreamError),
}

/// An upstream exchange or response body failed, in hyper's client or the inline one.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    H1(#[from] H1Error),
}

/// A response body from an upstream: from hyper's client (HTTP/2, upgrades, streamed
/// requests) or from the inline HTTP/1.1 client.
pub enum UpstreamResponseBody {
    Hyper(Incoming),
    H1(ClientBody<Io>),
}

impl std::fmt::Debug for UpstreamResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamResponseBody::Hyper(b) => b.fmt(f),
            UpstreamResponseBody::H1(b) => b.fmt(f),
        }
    }
}

impl http_body::Body for UpstreamResponseBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, UpstreamError>>> {
        match self.get_mut() {
            UpstreamResponseBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamResponseBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamResponseBody::Hyper(b) => b.is_end_stream(),
            UpstreamResponseBody::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamResponseBody::Hyper(b) => b.size_hint(),
            UpstreamResponseBody::H1(b) => b.size_hint(),
        }
    }
}

/// A failed `try_send_request`: the request handed back when the connection closed before it
/// was written (safe to send elsewhere), else the error.
fn unsent(mut e: hyper::client::conn::TrySendError<Request<UpstreamBody>>) -> SendError {
    match e.take_message() {
        Some(request) => SendError::Connect {
            error: ConnectError::Closed(e.into_error()),
            request: Some(Box::new(request)),
        },
        None => SendError::Request(e.into_error().into()),
    }
}

/// Connections per target, each with the time it was pooled.
struct Pool<T> {
    map: Mutex<FastMap<Target, Vec<(T, Instant)>>>,
}

impl<T> Pool<T> {
    fn new() -> Self {
        Pool {
            map: Mutex::new(FastMap::default()),
        }
    }

    /// The most recently pooled connection to `target` that is `ready`, looking from the most
    /// recent; connections that are not `alive` or older than `timeout` are dropped on the
    /// way, connections alive but not ready (busy) stay.
    fn take(
        &self,
        target: &Target,
        timeout: Duration,
        mut alive: impl FnMut(&mut T) -> bool,
        ready: impl Fn(&T) -> bool,
    ) -> Option<T> {
        let mut map = self.map.lock().ok()?;
        let conns = map.get_mut(target)?;
        let mut found = None;
        let now = Instant::now();
        for i in (0..conns.len()).rev() {
            let (conn, since) = &mut conns[i];
            if now.duration_since(*since) >= timeout || !alive(conn) {
                conns.swap_remove(i);
            } else if ready(conn) {
                found = Some(conns.swap_remove(i).0);
                break;
            }
        }
        if conns.is_empty() {
            map.remove(target);
        }
        found
    }

    /// Pools `conn` unless `target` already has `max`.
    fn put(&self, target: Target, conn: T, max: usize) {
        self.put_at(target, conn, max, Instant::now());
    }

    fn put_at(&self, target: Target, conn: T, max: usize, now: Instant) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        let conns = map.entry(target).or_default();
        if conns.len() < max {
            conns.push((conn, now));
        }
    }

    /// Drops every connection that is not `alive` or older than `timeout`, then, per target,
    /// half (rounded up) of the surplus, oldest first: the `ready` connections pooled at least
    /// `purge_after` before `now`, which no request needed since.
    fn prune(
        &self,
        now: Instant,
        timeout: Duration,
        purge_after: Duration,
        mut alive: impl FnMut(&mut T) -> bool,
        ready: impl Fn(&T) -> bool,
    ) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        map.retain(|_, conns| {
            conns.retain_mut(|(c, since)| now.duration_since(*since) < timeout && alive(c));
            let surplus =
                |(c, since): &(T, Instant)| now.duration_since(*since) >= purge_after && ready(c);
            let mut purge = conns.iter().filter(|&c| surplus(c)).count().div_ceil(2);
            if purge > 0 {
                // Oldest first; this also leaves the most recent last, where `take` looks first.
                conns.sort_by_key(|(_, since)| *since);
                conns.retain(|c| {
                    let keep = purge == 0 || !surplus(c);
                    purge -= usize::from(!keep);
                    keep
                });
            }
            !conns.is_empty()
        });
    }
}

/// Pooled HTTP/1.1 client (and one multiplexed HTTP/2 connection per target) for upstream
/// endpoints.
pub struct Upstream {
    cfg: UpstreamConfig,
    tls: Arc<MeshTls>,
    /// hyper's HTTP/1.1 connections, for requests with streamed bodies.
    idle: Pool<SendRequest<UpstreamBody>>,
    /// Inline HTTP/1.1 connections ([`crate::h1`]) for requests with kept bodies.
    h1: Pool<ClientConn<Io>>,
    h2: Mutex<FastMap<Target, http2::SendRequest<UpstreamBody>>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("cfg", &self.cfg).finish()
    }
}

impl Upstream {
    /// An empty pool.
    pub fn new(cfg: UpstreamConfig, tls: Arc<MeshTls>) -> Arc<Self> {
        Arc::new(Upstream {
            cfg,
            tls,
            idle: Pool::new(),
            h1: Pool::new(),
            h2: Mutex::new(FastMap::default()),
        })
    }

    /// Sends a request with a kept body (`head` with origin-form URI and Host, and `body`,
    /// maybe empty) to `target` on a pooled inline HTTP/1.1 connection ([`crate::h1`]). Both
    /// are only borrowed, so a failed attempt leaves them for the next one.
    pub async fn send_kept(
        self: &Arc<Self>,
        target: &Target,
        head: &http::request::Parts,
        body: &Bytes,
        metrics: &ClusterMetrics,
    ) -> Result<Response<UpstreamResponseBody>, SendError> {
        loop {
            let (conn, fresh) = match self.take_h1(target) {
                Some(conn) => (conn, false),
                None => {
                    let connected = self
                        .connect_with(target, |io| async {
                            Ok(ClientConn::new(io, Some(metrics.connect())))
                        })
                        .await;
                    match connected {
                        Ok(conn) => (conn, true),
                        Err(error) => {
                            return Err(SendError::Connect {
                                error,
                                request: None,
                            });
                        }
                    }
                }
            };
            match conn.send(head, body).await {
                Ok((mut resp, conn)) => {
                    match conn {
                        Some(conn) => self.release_h1(target.clone(), conn),
                        None => {
                            let (pool, target) = (self.clone(), target.clone());
                            resp.body_mut()
                                .recycle_with(Box::new(move |conn| pool.release_h1(target, conn)));
                        }
                    }
                    return Ok(resp.map(UpstreamResponseBody::H1));
                }
                Err(Failure { error, sent: false }) if fresh => {
                    return Err(SendError::Connect {
                        error: ConnectError::Fresh(error),
                        request: None,
                    });
                }
                Err(Failure { error, sent: false }) => {
                    debug!(%target, %error, "pooled connection unusable; trying another");
                }
                Err(Failure { error, sent: true }) => return Err(SendError::Request(error.into())),
            }
        }
    }

    /// An idle inline connection to `target` that is still open.
    fn take_h1(&self, target: &Target) -> Option<ClientConn<Io>> {
        self.h1.take(
            target,
            self.cfg.idle_timeout,
            ClientConn::is_reusable,
            |_| true,
        )
    }

    fn release_h1(&self, target: Target, conn: ClientConn<Io>) {
        self.h1.put(target, conn, self.cfg.max_idle_per_target);
    }

    /// Sends `req` (origin-form URI, Host header set) to `target`.
    pub async fn send(
        self: &Arc<Self>,
        target: Target,
        mut req: Request<UpstreamBody>,
        metrics: &ClusterMetrics,
    ) -> Result<Response<Incoming>, SendError> {
        // Pooled connections first; one that closed under us hands the request back.
        while let Some(mut tx) = self.take_idle(&target) {
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    self.release(target, tx);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(r) => {
                        debug!(%target, error = %e.error(), "pooled connection unusable; retrying");
                        req = r;
                    }
                    None => return Err(SendError::Request(e.into_error().into())),
                },
            }
        }
        let mut tx = match self.connect(&target, metrics).await {
            Ok(tx) => tx,
            Err(error) => {
                return Err(SendError::Connect {
                    error,
                    request: Some(Box::new(req)),
                });
            }
        };
        match tx.try_send_request(req).await {
            Ok(resp) => {
                self.release(target, tx);
                Ok(resp)
            }
            Err(e) => Err(unsent(e)),
        }
    }

    /// Sends `req` over HTTP/2 (h2c, or h2 inside the mesh tunnel) to `target`, on the one
    /// multiplexed connection kept per target. `req` must have an absolute URI.
    pub async fn send_h2(
        self: &Arc<Self>,
        target: Target,
        req: Request<UpstreamBody>,
        metrics: &ClusterMetrics,
    ) -> Result<Response<Incoming>, SendError> {
        let existing = self
            .h2
            .lock()
            .ok()
            .and_then(|m| m.get(&target).filter(|tx| !tx.is_closed()).cloned());
        let mut tx = match existing {
            Some(tx) => tx,
            None => {
                let connected = self
                    .connect_with(&target, |io| handshake_h2(io, metrics.clone()))
                    .await;
                match connected {
                    Ok(tx) => {
                        if let Ok(mut m) = self.h2.lock() {
                            m.insert(target.clone(), tx.clone());
                        }
                        tx
                    }
                    Err(error) => {
                        return Err(SendError::Connect {
                            error,
                            request: Some(Box::new(req)),
                        });
                    }
                }
            }
        };
        let sent = tx.try_send_request(req).await.map_err(unsent);
        if let Err(SendError::Connect { .. }) = &sent
            && let Ok(mut m) = self.h2.lock()
        {
            m.remove(&target);
        }
        sent
    }

    /// Sends an HTTP/1.1 upgrade request (e.g. WebSocket) on a new connection of its own, which
    /// becomes the tunnel once the upstream answers 101.
    pub async fn send_upgrade(
        self: &Arc<Self>,
        target: Target,
        req: Request<UpstreamBody>,
        metrics: &ClusterMetrics,
    ) -> Result<Response<Incoming>, SendError> {
        let connected = self
            .connect_with(&target, |io| handshake_upgradable(io, metrics.clone()))
            .await;
        let mut tx: SendRequest<UpstreamBody> = match connected {
            Ok(tx) => tx,
            Err(error) => {
                return Err(SendError::Connect {
                    error,
                    request: Some(Box::new(req)),
                });
            }
        };
        tx.try_send_request(req).await.map_err(unsent)
    }

    /// Drops idle connections that are closed or past the idle timeout, and half of each
    /// target's surplus (see [`UpstreamConfig::idle_purge_period`]). Called once per purge
    /// period.
    pub fn prune(&self) {
        let (now, timeout) = (Instant::now(), self.cfg.idle_timeout);
        let purge_after = self.cfg.idle_purge_period;
        let open = |tx: &mut SendRequest<_>| !tx.is_closed();
        self.idle
            .prune(now, timeout, purge_after, open, SendRequest::is_ready);
        self.h1
            .prune(now, timeout, purge_after, ClientConn::is_reusable, |_| true);
        if let Ok(mut h2) = self.h2.lock() {
            h2.retain(|_, tx| !tx.is_closed());
        }
    }

    /// A pooled connection to `target` ready for a request. Connections still busy with a
    /// response stay pooled; closed or expired ones are dropped.
    fn take_idle(&self, target: &Target) -> Option<SendRequest<UpstreamBody>> {
        self.idle.take(
            target,
            self.cfg.idle_timeout,
            |tx| !tx.is_closed(),
            SendRequest::is_ready,
        )
    }

    /// Pools the connection at once, while its response may still be streaming: HTTP/1.1
    /// takes the next request only after that, so [`Self::take_idle`] skips it until then.
    fn release(&self, target: Target, tx: SendRequest<UpstreamBody>) {
        self.idle.put(target, tx, self.cfg.max_idle_per_target);
    }

    async fn connect(
        &self,
        target: &Target,
        metrics: &ClusterMetrics,
    ) -> Result<SendRequest<UpstreamBody>, ConnectError> {
        self.connect_with(target, |io| handshake(io, metrics.clone()))
            .await
    }

    /// A stream to `target` and `handshake` on it, both within the connect timeout.
    async fn connect_with<T, F, Fut>(
        &self,
        target: &Target,
        handshake: F,
    ) -> Result<T, ConnectError>
    where
        F: FnOnce(Io) -> Fut,
        Fut: Future<Output = Result<T, ConnectError>>,
    {
        let timeout = self.cfg.connect_timeout;
        // Boxed: connecting (TCP, TLS, the mesh tunnel, a handshake) is rare on a warm pool,
        // and its large future would otherwise be part of every request's future.
        Box::pin(tokio::time::timeout(timeout, async {
            handshake(connect_io(&self.tls, target).await?).await
        }))
        .await
        .unwrap_or(Err(ConnectError::Timeout(timeout)))
    }
}

async fn tcp_connect(addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|error| ConnectError::Tcp { addr, error })?;
    // Latency over throughput for proxied request/response traffic; failure is harmless.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// A byte stream to an endpoint: TCP to a local one, or the mesh tunnel to a remote one.
pub enum Io {
    Tcp(TcpStream),
    Tunnel(TokioIo<Upgraded>),
}

macro_rules! delegate_io {
    ($self:ident, $io:ident => $call:expr) => {
        match $self.get_mut() {
            Io::Tcp($io) => $call,
            Io::Tunnel($io) => $call,
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate_io!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate_io!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_io!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_io!(self, io => Pin::new(io).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate_io!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(io) => io.is_write_vectored(),
            Io::Tunnel(io) => io.is_write_vectored(),
        }
    }
}

async fn connect_io(tls: &MeshTls, target: &Target) -> Result<Io, ConnectError> {
    match &target.via {
        None => Ok(Io::Tcp(tcp_connect(target.addr).await?)),
        Some(via) => Ok(Io::Tunnel(TokioIo::new(
            mesh_tunnel(
                tls,
                &crate::tls::service_key(INGRESS_NAMESPACE, INGRESS_SERVICE),
                via,
                target.addr,
            )
            .await?,
        ))),
    }
}

/// TCP to the peer proxy, mTLS as local service `source_key`, then a CONNECT tunnel to `addr`.
pub async fn mesh_tunnel(
    tls: &MeshTls,
    source_key: &str,
    via: &crate::config::Via,
    addr: SocketAddr,
) -> Result<Upgraded, ConnectError> {
    let proxy = via.proxy;
    let identity = via
        .identity
        .as_ref()
        .ok_or(ConnectError::NoIdentity { proxy })?;
    let tcp = tcp_connect(proxy).await?;
    let stream = tls
        .connect(source_key, identity, tcp)
        .await
        .map_err(|error| ConnectError::Tls { proxy, error })?;
    open_tunnel(stream, addr)
        .await
        .map_err(|error| ConnectError::Tunnel { proxy, error })
}

/// HTTP/1.1 on `io`; the connection counts as open in `metrics` until it closes.
async fn handshake(
    io: Io,
    metrics: ClusterMetrics,
) -> Result<SendRequest<UpstreamBody>, ConnectError> {
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    drive(&metrics, conn, "upstream connection");
    Ok(tx)
}

/// HTTP/1.1 on `io` for a request that may switch protocols (the connection is not pooled).
async fn handshake_upgradable(
    io: Io,
    metrics: ClusterMetrics,
) -> Result<SendRequest<UpstreamBody>, ConnectError> {
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    drive(
        &metrics,
        conn.with_upgrades(),
        "upstream upgrade connection",
    );
    Ok(tx)
}

/// Runs a handshaken connection as its own task, counted as open in `metrics` (once the
/// handshake succeeded) until it ends.
fn drive<C>(metrics: &ClusterMetrics, conn: C, what: &'static str)
where
    C: Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    let gauge = metrics.connect();
    tokio::spawn(async move {
        let _gauge = gauge;
        if let Err(error) = conn.await {
            debug!(%error, "{what} ended with error");
        }
    });
}

/// HTTP/2 (prior knowledge) on `io`: one connection multiplexes every request to the target.
async fn handshake_h2(
    io: Io,
    metrics: ClusterMetrics,
) -> Result<http2::SendRequest<UpstreamBody>, ConnectError> {
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    drive(&metrics, conn, "upstream h2 connection");
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pooled connection: `id`, and whether it is ready for a request (not busy).
    #[derive(Debug, PartialEq)]
    struct Conn(u32, bool);

    fn target(port: u16) -> Target {
        Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            via: None,
        }
    }

    fn ids(pool: &Pool<Conn>, target: &Target) -> Vec<u32> {
        let map = pool.map.lock().unwrap();
        let mut ids: Vec<u32> = map
            .get(target)
            .map_or(vec![], |c| c.iter().map(|(c, _)| c.0).collect());
        ids.sort();
        ids
    }

    #[test]
    fn purge_halves_the_surplus_each_period_oldest_first() {
        const TIMEOUT: Duration = Duration::from_secs(90);
        const PERIOD: Duration = Duration::from_secs(5);
        let secs = Duration::from_secs;
        let (a, b) = (target(1), target(2));
        let pool = Pool::new();
        let t0 = Instant::now();
        // A burst left ten idle connections to `a` (older ones first) and one still busy.
        for id in 0..10 {
            pool.put_at(
                a.clone(),
                Conn(id, true),
                512,
                t0 + Duration::from_millis(id.into()),
            );
        }
        pool.put_at(a.clone(), Conn(99, false), 512, t0);
        pool.put_at(b.clone(), Conn(7, true), 512, t0);
        let prune = |now| pool.prune(now, TIMEOUT, PERIOD, |_| true, |c: &Conn| c.1);

        // Not idle for a whole period yet: all stay.
        prune(t0 + secs(4));
        assert_eq!(ids(&pool, &a).len(), 11);

        // Half of the ten idle ones go, the oldest; the busy one is never surplus.
        prune(t0 + secs(6));
        assert_eq!(ids(&pool, &a), [5, 6, 7, 8, 9, 99]);
        // Rounded up: one idle connection alone is closed.
        assert!(
            ids(&pool, &b).is_empty(),
            "the only connection to b was surplus"
        );

        // A connection a request used during the period is not surplus.
        let used = pool
            .take(&a, TIMEOUT, |_| true, |c| c.1)
            .expect("an idle connection");
        assert_eq!(
            used,
            Conn(9, true),
            "the most recently pooled is taken first"
        );
        pool.put_at(a.clone(), used, 512, t0 + secs(8));
        prune(t0 + secs(11));
        // Surplus 5, 6, 7, 8: two go.
        assert_eq!(ids(&pool, &a), [7, 8, 9, 99]);
        // Now 9 has been idle for a period too: of 7, 8 and 9, the two oldest go.
        prune(t0 + secs(16));
        assert_eq!(ids(&pool, &a), [9, 99]);
        prune(t0 + secs(21));
        assert_eq!(ids(&pool, &a), [99]);

        // The idle timeout still closes everything, busy or not, and the target is forgotten.
        prune(t0 + secs(91));
        assert!(ids(&pool, &a).is_empty());
        assert!(pool.map.lock().unwrap().is_empty());
    }

    #[test]
    fn prune_drops_closed_connections_at_once() {
        let pool = Pool::new();
        let a = target(1);
        let now = Instant::now();
        for id in 0..4 {
            pool.put_at(a.clone(), Conn(id, true), 512, now);
        }
        // A purge period far away: only the liveness check removes anything.
        pool.prune(
            now,
            Duration::from_secs(90),
            Duration::from_secs(60),
            |c| c.0 % 2 == 0,
            |c| c.1,
        );
        assert_eq!(ids(&pool, &a), [0, 2]);
    }

    #[test]
    fn put_stops_at_the_per_target_limit() {
        let pool = Pool::new();
        let a = target(1);
        for id in 0..5 {
            pool.put(a.clone(), Conn(id, true), 3);
        }
        assert_eq!(ids(&pool, &a), [0, 1, 2]);
    }
}
