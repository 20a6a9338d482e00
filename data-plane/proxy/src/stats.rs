//! Counters of the node proxy, served as JSON on the admin port's `/stats`.
//!
//! Plain relaxed atomics: incrementing one is the only cost on the data path.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

/// Every counter the proxy keeps.
#[derive(Debug, Default)]
pub struct Stats {
    /// Outbound mesh handshakes with a full key exchange and certificate check.
    pub tls_full: AtomicU64,
    /// Outbound mesh handshakes that resumed an earlier session (TLS 1.3 ticket).
    pub tls_resumed: AtomicU64,
    /// Outbound mesh handshakes that failed.
    pub tls_failed: AtomicU64,
    /// Inbound mTLS handshakes that failed (no/invalid client certificate, wrong trust domain…).
    pub inbound_handshake_failed: AtomicU64,
    /// Inbound tunnels refused by an intention.
    pub inbound_denied: AtomicU64,
    /// Inbound tunnels opened to a local workload.
    pub inbound_tunnels: AtomicU64,
    /// Connections accepted on upstream listeners.
    pub outbound_connections: AtomicU64,
    /// Upstream connections refused by an intention (here or by the peer).
    pub outbound_denied: AtomicU64,
    /// Upstream connections that found no reachable healthy instance.
    pub outbound_failed: AtomicU64,
    /// Plaintext legs forwarded with splice(2).
    pub forwarded_splice: AtomicU64,
    /// Legs forwarded with a buffered copy (TLS legs, or where splice was not possible).
    pub forwarded_copy: AtomicU64,
}

/// Adds one to `counter`.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// All counters as a JSON object.
    pub fn to_json(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "tls_handshakes_full": g(&self.tls_full),
            "tls_handshakes_resumed": g(&self.tls_resumed),
            "tls_handshakes_failed": g(&self.tls_failed),
            "inbound_handshakes_failed": g(&self.inbound_handshake_failed),
            "inbound_denied": g(&self.inbound_denied),
            "inbound_tunnels": g(&self.inbound_tunnels),
            "outbound_connections": g(&self.outbound_connections),
            "outbound_denied": g(&self.outbound_denied),
            "outbound_failed": g(&self.outbound_failed),
            "forwarded_splice": g(&self.forwarded_splice),
            "forwarded_copy": g(&self.forwarded_copy),
        })
    }
}
