//! The ingress listener: HTTP/1.1 (and h2c with prior knowledge) from clients, routed by host
//! and path to a service, forwarded by the L7 path ([`l7::forward`]).
//!
//! The accept loop hands each connection to a forwarding worker ([`crate::workers`]), which
//! serves it with the inline HTTP/1.1 loop ([`h1::server`]) or, for h2c, upgrades and streamed
//! bodies, with hyper. Per request: load the snapshot once → [`router::resolve`] → [`l7::forward`]
//! on the worker's own [`Upstream`] pool.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::access_log::{AccessLog, RequestHead, ResponseFlags};
use crate::drain::Drain;
use crate::error::RequestError;
use crate::h1::{self, io::Prefixed, server::Outcome};
use crate::l7::{self, DownstreamBody};
use crate::router::{self, normalize_host};
use crate::snapshot::ConfigHandle;
use crate::tls::issuer::INGRESS_SERVICE;
use crate::upstream::Upstream;
use crate::workers::Workers;

pub use crate::l7::ResponseBody;

/// State shared by ingress connections.
#[derive(Debug)]
pub struct Ingress {
    config: ConfigHandle,
    upstream: Arc<Upstream>,
    access_log: Option<Arc<AccessLog>>,
}

impl Ingress {
    /// Ingress routing with `config`, sending through `upstream`, logging to `access_log`.
    pub fn new(
        config: ConfigHandle,
        upstream: Arc<Upstream>,
        access_log: Option<Arc<AccessLog>>,
    ) -> Arc<Self> {
        Arc::new(Ingress {
            config,
            upstream,
            access_log,
        })
    }

    /// Proxies one request; every failure becomes a plain-text error response.
    pub async fn handle(
        &self,
        req: Request<DownstreamBody>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let head = self.access_log.as_ref().map(|_| RequestHead::capture(&req));
        // A header value clone shares the request's buffer: no copy.
        let raw_host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| header::HeaderValue::from_str(a.as_str()).ok())
        });
        let raw_host = raw_host.as_ref().and_then(|h| h.to_str().ok());
        let host = normalize_host(raw_host.unwrap_or(""));
        let mut report = l7::Report::default();
        // Routed and forwarded here rather than in a helper `async fn`: every level of async
        // nesting is one more move of the (large) request future per request.
        let snapshot = self.config.load();
        let result = match router::resolve(&snapshot, &host, req.uri().path()) {
            None => Err(RequestError::NoRoute {
                host: host.to_string(),
                path: req.uri().path().to_owned(),
            }),
            Some(service) => {
                let forward = l7::Forward {
                    service,
                    source: INGRESS_SERVICE,
                    peer,
                    raw_host,
                    scheme: "http",
                    detailed: self.access_log.is_some(),
                };
                l7::forward(&snapshot, &self.upstream, forward, req, &mut report).await
            }
        };
        let (resp, flags) = match result {
            Ok(resp) => {
                let flags = if report.retries_exhausted {
                    ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED
                } else {
                    ResponseFlags::NONE
                };
                (resp, flags)
            }
            Err(error) => {
                let status = error.status();
                if status == StatusCode::BAD_GATEWAY {
                    warn!(%peer, %host, status = status.as_u16(), %error, "request failed");
                } else {
                    debug!(%peer, %host, status = status.as_u16(), %error, "request refused");
                }
                (error_response(&error), flags_of(&error))
            }
        };
        let status = resp.status();
        if let Some(m) = &report.route_metrics {
            m.record(status, started.elapsed());
        }
        if let (Some(log), Some(head)) = (&self.access_log, &head) {
            let user_agent = head.user_agent.as_ref().and_then(|v| v.to_str().ok());
            let request_id = head.request_id.as_ref().and_then(|v| v.to_str().ok());
            let mut entry = head.entry(status);
            entry.response_flags = flags;
            entry.duration = started.elapsed();
            entry.upstream_cluster = report.cluster.as_deref();
            entry.upstream_host = report.endpoint;
            entry.route = report.route.as_deref();
            entry.attempts = report.attempts;
            entry.downstream_remote_address = Some(peer);
            entry.user_agent = user_agent;
            entry.request_id = request_id;
            log.log(entry);
        }
        resp
    }
}

/// The access log's response flags for a failed request.
fn flags_of(error: &RequestError) -> ResponseFlags {
    match error {
        RequestError::NoRoute { .. } => ResponseFlags::NO_ROUTE_FOUND,
        RequestError::NoHealthyInstance { .. } => ResponseFlags::NO_HEALTHY_UPSTREAM,
        RequestError::Connect { .. } => ResponseFlags::UPSTREAM_CONNECT_FAILURE,
        RequestError::Overflow { .. } => ResponseFlags::UPSTREAM_OVERFLOW,
        RequestError::RateLimited { .. } => ResponseFlags::RATE_LIMITED,
        RequestError::Timeout { .. } => ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
        RequestError::Upstream { .. }
        | RequestError::Denied { .. }
        | RequestError::BadRequestBody { .. } => ResponseFlags::NONE,
    }
}

fn error_response(error: &RequestError) -> Response<ResponseBody> {
    let body = Full::new(Bytes::from(format!("{error}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = error.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Accepts connections until the drain starts, handing each to the least-loaded worker, which
/// serves it with its own [`Ingress`] (`ingresses[i]` for worker `i`: its own upstream pool).
pub async fn serve(
    listener: TcpListener,
    ingresses: Vec<Arc<Ingress>>,
    workers: Arc<Workers>,
    drain: Drain,
) {
    while let Some((tcp, peer)) = drain.accept(&listener, "ingress").await {
        let worker = workers.least_loaded();
        let Some(ingress) = ingresses.get(worker).or(ingresses.first()).cloned() else {
            return;
        };
        // Moves to the worker's reactor there; the socket stays non-blocking.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(error) => {
                warn!(%peer, %error, "cannot hand the ingress connection to a worker");
                continue;
            }
        };
        let conn_drain = drain.clone();
        workers.spawn(worker, &drain, async move {
            match TcpStream::from_std(tcp) {
                Ok(tcp) => serve_connection(tcp, peer, ingress, conn_drain).await,
                Err(error) => warn!(%peer, %error, "worker cannot take the ingress connection"),
            }
        });
    }
}

/// Serves one client connection over any byte stream: HTTP/1.1 on the inline loop
/// ([`h1::server`]), handed to hyper for h2c (prior knowledge), upgrades and streamed bodies.
pub async fn serve_connection<I>(mut io: I, peer: SocketAddr, ingress: Arc<Ingress>, drain: Drain)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::new();
    let outcome = h1::server::serve(&mut io, &mut buf, &drain, |req: Request<Bytes>| {
        ingress.handle(req.map(DownstreamBody::Kept), peer)
    })
    .await;
    match outcome {
        Ok(Outcome::Closed) => {}
        Ok(Outcome::Handoff) => {
            serve_with_hyper(Prefixed::new(buf, io), peer, ingress, drain).await
        }
        Err(error) => debug!(%peer, %error, "ingress connection ended with error"),
    }
}

/// Serves the connection with hyper (HTTP/1.1 with upgrades, or h2c with prior knowledge).
async fn serve_with_hyper<I>(io: I, peer: SocketAddr, ingress: Arc<Ingress>, drain: Drain)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Each h2 stream is a task of its own, and tokio moves a task's future several times
    // while spawning and finishing it: boxed, the request's (large) future is not moved.
    let svc = service_fn(move |req: Request<Incoming>| {
        let ingress = ingress.clone();
        Box::pin(async move {
            Ok::<_, Infallible>(ingress.handle(req.map(DownstreamBody::Hyper), peer).await)
        })
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    if let Err(error) = drain.serve(conn).await {
        debug!(%peer, %error, "ingress connection ended with error");
    }
}
