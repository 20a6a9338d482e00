//! The inbound listener: other nodes' proxies open `CONNECT <workload addr>` tunnels here, and
//! the bytes are copied to the local workload.
//!
//! Only targets that are **local** endpoints in the current snapshot are allowed (403
//! otherwise), so the listener cannot be used to reach arbitrary addresses. The transport is
//! plaintext TCP today; [`serve_connection`] is generic over the stream so a TLS layer can be
//! put in front without touching the tunnel logic.

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
use tracing::{debug, info, warn};

use crate::drain::Drain;
use crate::snapshot::ConfigHandle;

/// State shared by inbound connections.
#[derive(Debug)]
pub struct Inbound {
    config: ConfigHandle,
    connect_timeout: Duration,
}

impl Inbound {
    /// Inbound tunnels checked against `config`.
    pub fn new(config: ConfigHandle, connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Inbound {
            config,
            connect_timeout,
        })
    }
}

/// Accepts connections until the drain starts.
pub async fn serve(listener: TcpListener, inbound: Arc<Inbound>, drain: Drain) {
    let addr = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            () = drain.signaled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let (inbound, conn_drain) = (inbound.clone(), drain.clone());
                drain.spawn(serve_connection(tcp, peer, inbound, conn_drain));
            }
            Err(error) => {
                warn!(listener = "inbound", ?addr, %error, "accept failed");
                // Typically out of file descriptors: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    info!(listener = "inbound", ?addr, "stopped accepting");
}

/// Serves one node-to-node connection over any byte stream.
pub async fn serve_connection<I>(io: I, peer: SocketAddr, inbound: Arc<Inbound>, drain: Drain)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tunnels = drain.clone();
    let svc = service_fn(move |req| {
        let (inbound, tunnels) = (inbound.clone(), tunnels.clone());
        async move { Ok::<_, Infallible>(handle(&inbound, &tunnels, peer, req).await) }
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
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
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
    if !inbound.config.load().is_local_endpoint(target) {
        warn!(%peer, %target, "refused tunnel to an address that is not a local endpoint");
        return text(
            StatusCode::FORBIDDEN,
            format!("{target} is not a local endpoint on this node\n"),
        );
    }
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
    debug!(%peer, %target, "tunnel open");
    tunnels.spawn(async move {
        let mut upstream = upstream;
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let mut downstream = TokioIo::new(upgraded);
                match tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
                    Ok((rx, tx)) => debug!(%peer, %target, rx, tx, "tunnel closed"),
                    Err(error) => debug!(%peer, %target, %error, "tunnel closed with error"),
                }
            }
            Err(error) => debug!(%peer, %target, %error, "tunnel upgrade failed"),
        }
    });
    Response::new(Full::new(Bytes::new()))
}
