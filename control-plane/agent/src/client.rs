//! The connection to the server: registration and heartbeats.
//!
//! The gRPC channel is lazy and reconnects by itself, so a server that is down at start-up or
//! restarts later only shows up as failed calls, which are logged and retried with a capped
//! backoff. Running tasks are never touched because of the server.

use std::time::Duration;

use flotilla_proto::agent::v1 as pb;
use flotilla_proto::agent::v1::agent_service_client::AgentServiceClient;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::AgentError;

/// Client of the server's `AgentService`.
pub type ServerClient = AgentServiceClient<Channel>;

/// How long one unary call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat TTL assumed when the server returns 0.
const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// A lazily connecting client for `url`.
pub fn connect(url: &str) -> Result<ServerClient, AgentError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| AgentError::Config {
            field: "server",
            message: format!("{url:?}: {e}"),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    Ok(AgentServiceClient::new(endpoint.connect_lazy()))
}

/// Exponential backoff between retries, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    /// The wait before the next attempt; doubles each time up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Registers, then heartbeats at a third of the TTL, for ever (until `shutdown`). Registers
/// again when the server forgets the node. `registered` turns true after the first success.
pub async fn keep_registered(
    client: ServerClient,
    node: pb::Node,
    registered: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let node_id = node.id.clone();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
    'register: loop {
        // Register, retrying until the server answers.
        let mut ttl = loop {
            let mut c = client.clone();
            let req = pb::RegisterRequest {
                node: Some(node.clone()),
            };
            match tokio::time::timeout(CALL_TIMEOUT, c.register(req)).await {
                Ok(Ok(resp)) => {
                    let ttl = ttl_from_ms(resp.get_ref().heartbeat_ttl_ms);
                    tracing::info!(node_id = %node_id, ttl = ?ttl, "registered with the server");
                    backoff.reset();
                    break ttl;
                }
                Ok(Err(status)) => {
                    tracing::warn!(node_id = %node_id, code = ?status.code(), error = %status.message(), "registration failed, retrying");
                }
                Err(_) => {
                    tracing::warn!(node_id = %node_id, timeout = ?CALL_TIMEOUT, "registration timed out, retrying");
                }
            }
            if sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await {
                return;
            }
        };
        registered.send_replace(true);

        // Heartbeat until the server forgets us.
        let mut wait = ttl / 3;
        loop {
            if sleep_or_shutdown(wait, &mut shutdown).await {
                return;
            }
            let mut c = client.clone();
            let req = pb::HeartbeatRequest {
                node_id: node_id.clone(),
            };
            match tokio::time::timeout(CALL_TIMEOUT, c.heartbeat(req)).await {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    if !resp.known {
                        tracing::warn!(node_id = %node_id, "server does not know this node, registering again");
                        continue 'register;
                    }
                    ttl = ttl_from_ms(resp.heartbeat_ttl_ms);
                    wait = ttl / 3;
                    backoff.reset();
                }
                Ok(Err(status)) => {
                    // Keep trying sooner than usual so the TTL is not missed, but never
                    // faster than the backoff allows.
                    wait = backoff.next_delay().min(ttl / 3);
                    tracing::warn!(node_id = %node_id, code = ?status.code(), error = %status.message(), retry_in = ?wait, "heartbeat failed");
                }
                Err(_) => {
                    wait = backoff.next_delay().min(ttl / 3);
                    tracing::warn!(node_id = %node_id, retry_in = ?wait, "heartbeat timed out");
                }
            }
        }
    }
}

fn ttl_from_ms(ms: u64) -> Duration {
    if ms == 0 {
        DEFAULT_TTL
    } else {
        Duration::from_millis(ms).max(Duration::from_millis(300))
    }
}

/// Sleeps for `d`; true if shutdown was requested meanwhile (or before).
pub async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.wait_for(|s| *s) => true,
    };
    stopped || *shutdown.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
