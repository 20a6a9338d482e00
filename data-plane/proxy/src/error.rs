//! Errors: [`ProxyError`] for start-up and life cycle, [`RequestError`] for one proxied request.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use http::StatusCode;

use crate::upstream::ConnectError;

/// Which listener an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Edge HTTP listener (clients → services).
    Ingress,
    /// Node-to-node tunnel listener (other proxies → local workloads).
    Inbound,
    /// Admin HTTP listener (`/ready`, `/config_dump`).
    Admin,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Listener::Ingress => "ingress",
            Listener::Inbound => "inbound",
            Listener::Admin => "admin",
        })
    }
}

/// Start-up and life-cycle errors of the proxy. Messages name the listener and address.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not be bound, e.g. `ingress listener 127.0.0.1:8080: address already in use`.
    #[error("{listener} listener {addr}: {}", describe_io(.error))]
    Bind {
        listener: Listener,
        addr: SocketAddr,
        error: io::Error,
    },
    /// The mesh TLS configuration could not be built.
    #[error("mesh TLS setup: {0}")]
    Tls(rustls::Error),
    /// The admin listener's thread or runtime could not be started.
    #[error("admin listener {addr}: could not start its thread: {error}")]
    AdminThread { addr: SocketAddr, error: io::Error },
    /// The forwarding worker threads could not be started.
    #[error("forwarding workers: could not start a thread or runtime: {0}")]
    Workers(io::Error),
    /// The control plane URL given to [`crate::BoundProxy::run`] is not a valid URL.
    #[error(
        "discovery server {url:?}: invalid URL: {reason} (expected e.g. \"http://127.0.0.1:4647\")"
    )]
    InvalidServer { url: String, reason: String },
}

/// A lower-case, OS-independent description of the common bind failures.
fn describe_io(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::AddrInUse => "address already in use".to_owned(),
        io::ErrorKind::AddrNotAvailable => "address not available on this host".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => error.to_string(),
    }
}

/// Where a request-path error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client's request cannot be served (no route).
    Downstream,
    /// The configuration or an upstream endpoint failed.
    Upstream,
}

/// Why one proxied request failed. The `Display` text is the response body sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No route matches (404).
    #[error("no route for host {host:?} and path {path:?}")]
    NoRoute { host: String, path: String },
    /// The route's cluster is unknown or has no healthy endpoint (503).
    #[error("no healthy instance of service {service:?}")]
    NoHealthyInstance { service: String },
    /// No connection could be made to the endpoint (502). Nothing was sent: safe to retry.
    #[error("upstream connect error: service {service:?} endpoint {endpoint}: {error}")]
    Connect {
        service: String,
        endpoint: SocketAddr,
        error: ConnectError,
    },
    /// An intention forbids this connection (403).
    #[error("{caller} => {destination}: {reason}")]
    Denied {
        caller: String,
        destination: String,
        reason: String,
    },
    /// The client's request body could not be read (400).
    #[error("reading the request body: {error}")]
    BadRequestBody { error: String },
    /// The local rate limit of the service refused the request (429).
    #[error("rate limit of service {service:?} exceeded ({requests_per_second} requests/s)")]
    RateLimited {
        service: String,
        requests_per_second: u32,
    },
    /// A circuit breaker of the cluster is open: too many requests in flight (503).
    #[error("cluster {cluster:?}: {limit} ({max}) reached; request not sent")]
    Overflow {
        cluster: String,
        limit: &'static str,
        max: u32,
    },
    /// No response headers within the route's or the cluster's request timeout (504).
    #[error(
        "upstream request timeout: service {service:?} endpoint {endpoint}: no response within {after:?}"
    )]
    Timeout {
        service: String,
        endpoint: SocketAddr,
        after: std::time::Duration,
    },
    /// The request was (maybe partly) sent and then failed (502). Not safe to retry.
    #[error("upstream request failed: service {service:?} endpoint {endpoint}: {error}")]
    Upstream {
        service: String,
        endpoint: SocketAddr,
        error: crate::upstream::UpstreamError,
    },
}

impl RequestError {
    /// Where the error came from.
    pub fn origin(&self) -> Origin {
        match self {
            RequestError::NoRoute { .. }
            | RequestError::Denied { .. }
            | RequestError::BadRequestBody { .. }
            | RequestError::RateLimited { .. } => Origin::Downstream,
            RequestError::NoHealthyInstance { .. }
            | RequestError::Connect { .. }
            | RequestError::Overflow { .. }
            | RequestError::Timeout { .. }
            | RequestError::Upstream { .. } => Origin::Upstream,
        }
    }

    /// True when the request never reached an upstream, so sending it elsewhere is safe.
    pub fn is_retry_safe(&self) -> bool {
        match self {
            RequestError::NoRoute { .. }
            | RequestError::Upstream { .. }
            | RequestError::BadRequestBody { .. }
            | RequestError::Timeout { .. }
            | RequestError::Denied { .. } => false,
            RequestError::NoHealthyInstance { .. }
            | RequestError::Connect { .. }
            | RequestError::RateLimited { .. }
            | RequestError::Overflow { .. } => true,
        }
    }

    /// The status answered to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::NoRoute { .. } => StatusCode::NOT_FOUND,
            RequestError::Denied { .. } => StatusCode::FORBIDDEN,
            RequestError::NoHealthyInstance { .. } | RequestError::Overflow { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RequestError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            RequestError::BadRequestBody { .. } => StatusCode::BAD_REQUEST,
            RequestError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            RequestError::Connect { .. } | RequestError::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_error_names_listener_and_address() {
        let err = ProxyError::Bind {
            listener: Listener::Ingress,
            addr: "127.0.0.1:8080".parse().unwrap(),
            error: io::Error::from(io::ErrorKind::AddrInUse),
        };
        assert_eq!(
            err.to_string(),
            "ingress listener 127.0.0.1:8080: address already in use"
        );
    }

    #[test]
    fn request_errors_map_to_statuses() {
        let e = RequestError::NoHealthyInstance {
            service: "hello".into(),
        };
        assert_eq!(e.to_string(), "no healthy instance of service \"hello\"");
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.is_retry_safe());
        let e = RequestError::NoRoute {
            host: "x".into(),
            path: "/y".into(),
        };
        assert_eq!(e.to_string(), "no route for host \"x\" and path \"/y\"");
        assert_eq!(e.origin(), Origin::Downstream);
    }
}
