//! The example workload shipped with Flotilla: a tiny HTTP server that answers with its
//! allocation id and node name, so load balancing through the mesh is visible.
//!
//! `GET /health` answers `ok`; every other path answers
//! `hello from allocation <id> on node <node>` (plus the path), with the same facts in the
//! `x-alloc-id` and `x-node` headers. Run it with `flotilla demo-app --listen ADDR`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// Who this instance is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub alloc_id: String,
    pub node: String,
}

/// Serve until the process is stopped.
pub async fn serve(listen: SocketAddr, who: Identity) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("demo-app: listen on {listen}: {e}")))?;
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

async fn answer(
    req: Request<Incoming>,
    who: Arc<Identity>,
) -> Result<Response<Full<Bytes>>, Infallible> {
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
