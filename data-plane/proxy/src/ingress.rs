//! The ingress listener: HTTP/1.1 (and h2c with prior knowledge) from clients, routed by host
//! and path to a cluster, balanced round robin over its healthy endpoints, forwarded upstream.
//!
//! Per request: load the snapshot once → [`router::resolve`] → pick endpoints in round-robin
//! order → [`Upstream::send`]; a connect failure (nothing sent) moves on to the next endpoint.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, Version, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::drain::Drain;
use crate::error::RequestError;
use crate::headers;
use crate::router::{self, normalize_host};
use crate::snapshot::ConfigHandle;
use crate::tls::issuer::INGRESS_SERVICE;
use crate::upstream::{SendError, Upstream, UpstreamBody};

/// Body type of responses to ingress clients.
pub type ResponseBody = BoxBody<Bytes, hyper::Error>;

/// At most this many endpoints are tried for one request when connects fail.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// State shared by ingress connections.
#[derive(Debug)]
pub struct Ingress {
    config: ConfigHandle,
    upstream: Arc<Upstream>,
}

impl Ingress {
    /// Ingress routing with `config`, sending through `upstream`.
    pub fn new(config: ConfigHandle, upstream: Arc<Upstream>) -> Arc<Self> {
        Arc::new(Ingress { config, upstream })
    }

    /// Proxies one request; every failure becomes a plain-text error response.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let raw_host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .map(str::to_owned);
        let host = normalize_host(raw_host.as_deref().unwrap_or(""));
        match self
            .proxy(req, peer, raw_host.as_deref(), &host, &path)
            .await
        {
            Ok(resp) => {
                debug!(%peer, %method, %host, %path, status = resp.status().as_u16(), "proxied");
                resp
            }
            Err(error) => {
                let status = error.status();
                if status == StatusCode::BAD_GATEWAY {
                    warn!(%peer, %method, %host, %path, status = status.as_u16(), %error, "request failed");
                } else {
                    debug!(%peer, %method, %host, %path, status = status.as_u16(), %error, "request refused");
                }
                error_response(&error)
            }
        }
    }

    async fn proxy(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        raw_host: Option<&str>,
        host: &str,
        path: &str,
    ) -> Result<Response<ResponseBody>, RequestError> {
        let snapshot = self.config.load();
        let Some(service) = router::resolve(&snapshot, host, path) else {
            return Err(RequestError::NoRoute {
                host: host.to_owned(),
                path: path.to_owned(),
            });
        };
        let no_healthy = || RequestError::NoHealthyInstance {
            service: service.to_owned(),
        };
        let cluster = snapshot.cluster(service).ok_or_else(no_healthy)?;
        let healthy = cluster.healthy();
        if healthy.is_empty() {
            return Err(no_healthy());
        }
        let decision = snapshot.authorize(INGRESS_SERVICE, service);
        if decision.denied() {
            return Err(RequestError::Denied {
                caller: INGRESS_SERVICE.to_owned(),
                destination: service.to_owned(),
                reason: decision.reason(),
            });
        }
        let mut req = prepare_request(req, peer, raw_host);
        let mut last_failure = None;
        for index in cluster
            .balancer()
            .attempts(healthy.len(), MAX_CONNECT_ATTEMPTS)
        {
            let endpoint = &healthy[index];
            let target = endpoint.target();
            match self.upstream.send(target.clone(), req).await {
                Ok(resp) => return Ok(finish_response(resp)),
                Err(SendError::Connect { error, request }) => {
                    if let Some(why) = error.denial() {
                        // The peer's intentions said no; another instance would say the same.
                        return Err(RequestError::Denied {
                            caller: INGRESS_SERVICE.to_owned(),
                            destination: service.to_owned(),
                            reason: why.to_owned(),
                        });
                    }
                    warn!(service, %target, %error, "upstream connect failed (nothing sent; safe to retry)");
                    req = *request;
                    last_failure = Some((endpoint.address, error));
                }
                Err(SendError::Request(error)) => {
                    return Err(RequestError::Upstream {
                        service: service.to_owned(),
                        endpoint: endpoint.address,
                        error,
                    });
                }
            }
        }
        match last_failure {
            Some((endpoint, error)) => Err(RequestError::Connect {
                service: service.to_owned(),
                endpoint,
                error,
            }),
            None => Err(no_healthy()),
        }
    }
}

/// Rewrites a client request for the upstream hop: origin-form URI, HTTP/1.1, Host kept (or
/// taken from the h2 `:authority`), hop-by-hop headers stripped, `x-forwarded-*` set.
fn prepare_request(
    req: Request<Incoming>,
    peer: SocketAddr,
    raw_host: Option<&str>,
) -> Request<UpstreamBody> {
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = parts.uri.path_and_query().cloned();
    parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    if !parts.headers.contains_key(header::HOST)
        && let Some(host) = raw_host.and_then(|h| header::HeaderValue::from_str(h).ok())
    {
        parts.headers.insert(header::HOST, host);
    }
    headers::set_forwarded(&mut parts.headers, peer, raw_host, "http");
    Request::from_parts(parts, body.boxed())
}

fn finish_response(resp: Response<Incoming>) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.boxed())
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

/// Accepts connections until the drain starts.
pub async fn serve(listener: TcpListener, ingress: Arc<Ingress>, drain: Drain) {
    while let Some((tcp, peer)) = drain.accept(&listener, "ingress").await {
        let (ingress, conn_drain) = (ingress.clone(), drain.clone());
        drain.spawn(serve_connection(tcp, peer, ingress, conn_drain));
    }
}

/// Serves one client connection (HTTP/1.1 or h2c prior knowledge) over any byte stream.
pub async fn serve_connection<I>(io: I, peer: SocketAddr, ingress: Arc<Ingress>, drain: Drain)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let ingress = ingress.clone();
        async move { Ok::<_, Infallible>(ingress.handle(req, peer).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    if let Err(error) = drain.serve(conn).await {
        debug!(%peer, %error, "ingress connection ended with error");
    }
}
