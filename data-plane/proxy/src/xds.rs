//! The discovery client: one bidi gRPC stream to the control plane, state of the world per
//! resource type, ACK or NACK per response.
//!
//! Connect (retrying forever with capped exponential backoff) → send one request per type →
//! for each response: validate everything, swap in a new snapshot, ACK with the response's
//! version and nonce; or NACK (same nonce, last applied version, an error message naming the
//! resource and field) and keep serving the old snapshot. On stream errors: reconnect; the data
//! plane keeps serving the last snapshot meanwhile.

use std::time::Duration;

use flotilla_proto::discovery::v1::discovery_service_client::DiscoveryServiceClient;
use flotilla_proto::discovery::v1::{DiscoveryRequest, DiscoveryResponse, ErrorDetail};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::error::ProxyError;
use crate::snapshot::ConfigHandle;

/// The resource types this proxy subscribes to.
pub const TYPES: [&str; 5] = flotilla_proto::discovery::v1::ALL_TYPES;

/// gRPC status code sent in NACKs: INVALID_ARGUMENT.
const NACK_CODE: i32 = 3;

/// Parses the control plane URL once, so a typo fails start-up instead of retrying forever.
pub fn endpoint(server: &str) -> Result<Endpoint, ProxyError> {
    let invalid = |reason: String| ProxyError::InvalidServer {
        url: server.to_owned(),
        reason,
    };
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        return Err(invalid("the scheme must be http:// or https://".into()));
    }
    let endpoint = Endpoint::from_shared(server.to_owned()).map_err(|e| invalid(e.to_string()))?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10)))
}

/// Capped exponential backoff between reconnect attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubles each time, never exceeds `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to the initial delay (after a stream that worked).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// How a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("server closed the stream")]
    Closed,
}

/// The discovery client for one node.
#[derive(Debug)]
pub struct DiscoveryClient {
    node_id: String,
    endpoint: Endpoint,
    config: ConfigHandle,
    backoff: Backoff,
}

impl DiscoveryClient {
    /// A client that applies what `endpoint` pushes for `node_id` to `config`.
    pub fn new(node_id: String, endpoint: Endpoint, config: ConfigHandle) -> Self {
        DiscoveryClient {
            node_id,
            endpoint,
            config,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
        }
    }

    /// Runs forever: connect, stream, reconnect. Cancel by dropping the future.
    pub async fn run(mut self) {
        let server = self.endpoint.uri().to_string();
        let mut attempt: u64 = 0;
        loop {
            attempt += 1;
            let mut applied_any = false;
            let error = self.stream_once(&mut applied_any).await;
            if applied_any {
                self.backoff.reset();
                attempt = 1;
            }
            let delay = self.backoff.next_delay();
            warn!(
                %server,
                node_id = %self.node_id,
                attempt,
                retry_in_ms = delay.as_millis() as u64,
                %error,
                "discovery stream failed; serving the last config meanwhile"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn stream_once(&mut self, got_response: &mut bool) -> StreamError {
        let channel: Channel = match self.endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let mut client = DiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
        for type_url in TYPES {
            let initial = DiscoveryRequest {
                node_id: self.node_id.clone(),
                type_url: type_url.to_owned(),
                // The last applied version, empty on the very first connect, so a server that
                // compares versions can skip resending what this proxy already has.
                version_info: self.config.version_of(type_url),
                response_nonce: String::new(),
                error_detail: None,
            };
            if tx.send(initial).await.is_err() {
                return StreamError::Closed;
            }
        }
        let mut responses = match client.stream(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => return status.into(),
        };
        info!(node_id = %self.node_id, server = %self.endpoint.uri(), "discovery stream open");
        loop {
            let response = match responses.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return StreamError::Closed,
                Err(status) => return status.into(),
            };
            *got_response = true;
            let reply = self.handle(&response);
            if tx.send(reply).await.is_err() {
                return StreamError::Closed;
            }
        }
    }

    /// Applies one response and builds its ACK or NACK.
    fn handle(&self, response: &DiscoveryResponse) -> DiscoveryRequest {
        let mut reply = DiscoveryRequest {
            node_id: self.node_id.clone(),
            type_url: response.type_url.clone(),
            version_info: String::new(),
            response_nonce: response.nonce.clone(),
            error_detail: None,
        };
        match self.config.apply_response(response) {
            Ok(()) => {
                info!(
                    type_url = %response.type_url,
                    version = %response.version_info,
                    nonce = %response.nonce,
                    resources = response.resources.len(),
                    "applied discovery response"
                );
                reply.version_info = response.version_info.clone();
            }
            Err(error) => {
                let version_info = self.config.version_of(&response.type_url);
                warn!(
                    type_url = %response.type_url,
                    version = %response.version_info,
                    nonce = %response.nonce,
                    kept_version = %version_info,
                    %error,
                    "rejected discovery response; keeping the previous config"
                );
                reply.version_info = version_info;
                reply.error_detail = Some(ErrorDetail {
                    code: NACK_CODE,
                    message: error.to_string(),
                });
            }
        }
        debug!(type_url = %reply.type_url, nack = reply.error_detail.is_some(), "replying");
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn server_url_validated() {
        assert!(endpoint("http://127.0.0.1:4647").is_ok());
        let err = endpoint("127.0.0.1:4647").unwrap_err();
        assert!(err.to_string().contains("\"127.0.0.1:4647\""), "{err}");
    }
}
