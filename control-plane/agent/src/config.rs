//! The agent's configuration, validated once at start-up.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::AgentError;

/// How to run one node agent. Build it at the edge (flags, config file) and hand it to
/// [`bind`](crate::bind).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node's name (Nomad's `name`; the host name is a good default).
    pub name: String,
    /// Datacenter, `dc1` unless the caller says otherwise.
    pub datacenter: String,
    pub node_class: String,
    /// The IP workloads bind to and are reached at, e.g. `127.0.0.1`.
    pub address: String,
    /// gRPC URL of the server, e.g. `http://127.0.0.1:4647`.
    pub server: String,
    /// Where the node id, allocation directories and logs live.
    pub data_dir: PathBuf,
    /// Where the agent's HTTP endpoint (logs) listens; port 0 picks one.
    pub http_addr: SocketAddr,
    /// `host:port` of this node's proxy inbound listener, reported at registration.
    pub proxy_addr: String,
    /// Total CPU in MHz; `None` reads `/proc/cpuinfo` (cores × MHz, or 1000 × cores).
    pub cpu_mhz: Option<u64>,
    /// Memory in MB; `None` reads `MemTotal` from `/proc/meminfo`.
    pub memory_mb: Option<u64>,
    /// Node meta, visible to constraints and to `${meta.<key>}`.
    pub meta: BTreeMap<String, String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            name: crate::node::hostname().unwrap_or_else(|| "flotilla-node".into()),
            datacenter: "dc1".into(),
            node_class: String::new(),
            address: "127.0.0.1".into(),
            server: "http://127.0.0.1:4647".into(),
            data_dir: PathBuf::from("/var/lib/flotilla/agent"),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            proxy_addr: String::new(),
            cpu_mhz: None,
            memory_mb: None,
            meta: BTreeMap::new(),
        }
    }
}

impl AgentConfig {
    /// Checks what can be checked without touching the network or the disk.
    pub fn validate(&self) -> Result<(), AgentError> {
        let invalid = |field: &'static str, message: String| AgentError::Config { field, message };
        if self.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty".into()));
        }
        if self.datacenter.trim().is_empty() {
            return Err(invalid("datacenter", "must not be empty".into()));
        }
        if self.address.parse::<IpAddr>().is_err() {
            return Err(invalid(
                "address",
                format!("expected an IP address, got {:?}", self.address),
            ));
        }
        let url = self.server.as_str();
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || tonic::transport::Endpoint::from_shared(url.to_string()).is_err()
        {
            return Err(invalid(
                "server",
                format!("expected a URL such as http://127.0.0.1:4647, got {url:?}"),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let ok = AgentConfig::default();
        ok.validate().unwrap();
        let bad = AgentConfig {
            address: "localhost".into(),
            ..AgentConfig::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("address") && err.contains("localhost"),
            "{err}"
        );
        let bad = AgentConfig {
            server: "127.0.0.1:4647".into(),
            ..AgentConfig::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.starts_with("config server:"), "{err}");
    }
}
