//! The admin listener: `GET /ready`, `GET /config_dump` (certificates listed without their
//! keys; any PEM private key that reaches the dump is redacted), `GET /stats` (counters as
//! JSON) and `GET /metrics` (Prometheus text exposition, see [`crate::metrics`]).
//!
//! It runs on its own OS thread with a current-thread tokio runtime, so a slow scrape or a
//! flood of admin requests never competes with the forwarding runtime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::snapshot::ConfigHandle;
use crate::stats::Stats;
use crate::tls::Certs;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The current config, for `/ready` and `/config_dump`.
    pub config: ConfigHandle,
    /// Counters, for `/stats` and `/metrics`.
    pub stats: Arc<Stats>,
    /// Installed certificates, listed (without keys) in `/config_dump`.
    pub certs: Arc<Certs>,
    /// The metrics rendered on `/metrics`.
    pub metrics: Arc<Metrics>,
}

/// A running admin server; [`AdminServer::stop`] ends it and waits for its thread.
#[derive(Debug)]
pub struct AdminServer {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Starts serving `listener` (already bound) on a new thread.
    pub fn start(
        listener: std::net::TcpListener,
        addr: SocketAddr,
        config: AdminState,
    ) -> Result<AdminServer, ProxyError> {
        let thread_err = |error| ProxyError::AdminThread { addr, error };
        listener.set_nonblocking(true).map_err(thread_err)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(thread_err)?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("flotilla-proxy-admin".into())
            .spawn(move || runtime.block_on(serve(listener, addr, config, stop_rx)))
            .map_err(thread_err)?;
        Ok(AdminServer {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Stops accepting, drops open admin connections and joins the thread.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Joining blocks; keep it off the async worker.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    config: AdminState,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(error) => {
            warn!(listener = "admin", %addr, %error, "cannot serve admin listener");
            return;
        }
    };
    info!(listener = "admin", %addr, "serving");
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                warn!(listener = "admin", %addr, %error, "accept failed");
                continue;
            }
        };
        let config = config.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let config = config.clone();
                async move { Ok::<_, Infallible>(handle(&config, &req)) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                debug!(%peer, %error, "admin connection ended with error");
            }
        });
    }
    info!(listener = "admin", %addr, "stopped");
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

fn json_response(value: &serde_json::Value) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(json) => respond(StatusCode::OK, "application/json", json + "\n"),
        Err(error) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("cannot encode: {error}\n"),
        ),
    }
}

fn handle(admin: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let config = &admin.config;
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET is supported\n".into(),
        );
    }
    match req.uri().path() {
        "/ready" => {
            let snapshot = config.load();
            if snapshot.is_ready() {
                respond(StatusCode::OK, TEXT, "ready\n".into())
            } else {
                let versions = snapshot.versions();
                let missing: Vec<&str> = flotilla_proto::discovery::v1::ALL_TYPES
                    .into_iter()
                    .filter(|t| versions.of(t).is_none())
                    .map(|t| t.rsplit('.').next().unwrap_or(t))
                    .collect();
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("not ready: waiting for {}\n", missing.join(", ")),
                )
            }
        }
        "/config_dump" => {
            let mut dump = config.load().to_json();
            let mut certs: Vec<serde_json::Value> = admin
                .certs
                .all()
                .values()
                .map(|c| {
                    serde_json::json!({
                        "spiffe_id": c.id.to_string(),
                        "not_before": c.not_before,
                        "not_after": c.not_after,
                        "renew_at": c.renew_at,
                        "root_id": c.root_id,
                        "private_key": "[redacted]",
                    })
                })
                .collect();
            certs.sort_by(|a, b| a["spiffe_id"].as_str().cmp(&b["spiffe_id"].as_str()));
            dump["certificates"] = serde_json::Value::Array(certs);
            redact_private_keys(&mut dump);
            json_response(&dump)
        }
        "/stats" => json_response(&admin.stats.to_json()),
        "/metrics" => respond(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            admin.metrics.render(&admin.stats),
        ),
        other => respond(
            StatusCode::NOT_FOUND,
            TEXT,
            format!("no admin endpoint {other:?}; try /ready, /config_dump, /stats or /metrics\n"),
        ),
    }
}

/// Replaces every string holding a PEM private key with `"[redacted]"`. The dump is built
/// without keys; this keeps one added later by mistake (a new field of a snapshot type) from
/// ever being served.
fn redact_private_keys(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) if s.contains("PRIVATE KEY") => {
            *s = "[redacted]".to_owned();
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_private_keys),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(redact_private_keys),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_are_redacted_anywhere_in_the_dump() {
        let key = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n";
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let mut dump = serde_json::json!({
            "trust": {"roots_pem": [cert], "key": key},
            "certificates": [{"private_key": "-----BEGIN EC PRIVATE KEY-----\n..."}],
            "n": 3,
        });
        redact_private_keys(&mut dump);
        assert_eq!(dump["trust"]["key"], "[redacted]");
        assert_eq!(dump["trust"]["roots_pem"][0], cert);
        assert_eq!(dump["certificates"][0]["private_key"], "[redacted]");
        assert_eq!(dump["n"], 3);
        assert!(!dump.to_string().contains("PRIVATE KEY"));
    }
}
