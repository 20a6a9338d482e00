//! The inbound listener: other nodes' proxies connect here with mutual TLS 1.3 and open
//! `CONNECT <workload addr>` tunnels, whose bytes are copied to the local workload.
//!
//! Checks, all before any byte reaches a workload:
//! 1. the handshake: the client certificate must chain to a current root, be valid now, and
//!    carry exactly one SPIFFE ID in this trust domain ([`crate::tls::verify`]); the SNI names
//!    the destination service, and only a service with a certificate here can be named;
//! 2. the intention from the caller's service to the destination service;
//! 3. the CONNECT target must be an instance of that destination service on this node.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::drain::Drain;
use crate::snapshot::ConfigHandle;
use crate::stats::{Stats, inc};
use crate::tls::{MeshTls, SpiffeId, spiffe::spiffe_id_of};

/// How long a peer gets to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by inbound connections.
#[derive(Debug)]
pub struct Inbound {
    config: ConfigHandle,
    tls: Arc<MeshTls>,
    stats: Arc<Stats>,
    connect_timeout: Duration,
}

impl Inbound {
    /// Inbound tunnels checked against `config`, authenticated with `tls`.
    pub fn new(
        config: ConfigHandle,
        tls: Arc<MeshTls>,
        stats: Arc<Stats>,
        connect_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Inbound {
            config,
            tls,
            stats,
            connect_timeout,
        })
    }
}

/// Who is calling whom on one mTLS connection.
#[derive(Debug, Clone)]
struct Peers {
    addr: SocketAddr,
    source: SpiffeId,
    destination: SpiffeId,
}

/// Accepts connections until the drain starts.
pub async fn serve(listener: TcpListener, inbound: Arc<Inbound>, drain: Drain) {
    while let Some((tcp, peer)) = drain.accept(&listener, "inbound").await {
        let acceptor = match inbound.tls.acceptor() {
            Ok(a) => a,
            Err(error) => {
                warn!(%peer, %error, "cannot build the inbound TLS config");
                continue;
            }
        };
        let (inbound, conn_drain) = (inbound.clone(), drain.clone());
        drain.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    inc(&inbound.stats.inbound_handshake_failed);
                    warn!(%peer, %error, "inbound mTLS handshake failed");
                    return;
                }
                Err(_) => {
                    inc(&inbound.stats.inbound_handshake_failed);
                    warn!(%peer, "inbound mTLS handshake timed out");
                    return;
                }
            };
            let (_, conn) = tls.get_ref();
            let source = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| "no client certificate".to_string())
                .and_then(|c| spiffe_id_of(c));
            // The identity this side presented: the SNI arrives lower-cased, while
            // service names may contain capitals.
            let destination = conn
                .server_name()
                .ok_or_else(|| "no server name".to_string())
                .and_then(|n| {
                    inbound
                        .tls
                        .certs()
                        .for_server_name(n)
                        .map(|c| c.id.clone())
                        .ok_or_else(|| format!("no certificate for server name {n:?}"))
                });
            match (source, destination) {
                (Ok(source), Ok(destination)) => {
                    let peers = Peers {
                        addr: peer,
                        source,
                        destination,
                    };
                    serve_connection(tls, peers, inbound, conn_drain).await;
                }
                (Err(e), _) | (_, Err(e)) => {
                    inc(&inbound.stats.inbound_handshake_failed);
                    warn!(%peer, error = %e, "inbound connection without usable identities");
                }
            }
        });
    }
}

/// Serves one authenticated node-to-node connection.
async fn serve_connection<I>(io: I, peers: Peers, inbound: Arc<Inbound>, drain: Drain)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tunnels = drain.clone();
    let peer = peers.addr;
    let peers = Arc::new(peers);
    let svc = service_fn(move |req| {
        let (inbound, tunnels, peers) = (inbound.clone(), tunnels.clone(), peers.clone());
        async move { Ok::<_, Infallible>(handle(&inbound, &tunnels, &peers, req).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    if let Err(error) = drain.serve(conn).await {
        debug!(%peer, %error, "inbound connection ended with error");
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn handle(
    inbound: &Inbound,
    tunnels: &Drain,
    peers: &Peers,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let peer = peers.addr;
    if req.method() != Method::CONNECT {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "the inbound listener only accepts CONNECT, got {}\n",
                req.method()
            ),
        );
    }
    let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
    let Ok(target) = authority.parse::<SocketAddr>() else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("CONNECT target {authority:?} is not an ip:port address\n"),
        );
    };
    let snapshot = inbound.config.load();
    let (source, destination) = (&peers.source.service, &peers.destination.service);
    let decision = snapshot.authorize(source, destination);
    if decision.denied() {
        inc(&inbound.stats.inbound_denied);
        let why = decision.reason();
        warn!(%peer, %source, %destination, %why, "refused connection");
        return text(
            StatusCode::FORBIDDEN,
            format!("{source} => {destination}: {why}\n"),
        );
    }
    if !snapshot.is_local_endpoint_of(destination, target) {
        // 421, not 403: during a rollout this node may drop a stopping instance a moment
        // before the caller does; nothing was forwarded, so the caller tries another instance.
        warn!(%peer, %target, %destination, "refused tunnel to an address that is not a local instance of the service");
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            format!("{target} is not an instance of {destination} on this node\n"),
        );
    }
    drop(snapshot);
    let upstream =
        match tokio::time::timeout(inbound.connect_timeout, TcpStream::connect(target)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(error)) => {
                warn!(%peer, %target, %error, "tunnel connect to local endpoint failed");
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("connect to local endpoint {target}: {error}\n"),
                );
            }
            Err(_) => {
                return text(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "connect to local endpoint {target}: timed out after {:?}\n",
                        inbound.connect_timeout
                    ),
                );
            }
        };
    let _ = upstream.set_nodelay(true);
    inc(&inbound.stats.inbound_tunnels);
    inc(&inbound.stats.forwarded_copy);
    debug!(%peer, %target, %source, %destination, "tunnel open");
    tunnels.spawn(async move {
        let mut upstream = upstream;
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let mut downstream = TokioIo::new(upgraded);
                match flotilla_forward::forward_streams(&mut downstream, &mut upstream).await {
                    Ok((rx, tx)) => debug!(%peer, %target, rx, tx, "tunnel closed"),
                    Err(error) => debug!(%peer, %target, %error, "tunnel closed with error"),
                }
            }
            Err(error) => debug!(%peer, %target, %error, "tunnel upgrade failed"),
        }
    });
    Response::new(Full::new(Bytes::new()))
}
