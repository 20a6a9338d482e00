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
    /// Host volumes this node offers (Nomad's client `host_volume` blocks): name → absolute
    /// path of an existing directory. Reported at registration; a group `volume` whose
    /// `source` names one is mounted into its tasks.
    pub host_volumes: BTreeMap<String, PathBuf>,
    /// Stop every task when the agent shuts down. Off by default, as in Nomad: tasks keep
    /// running and the next agent on the same data dir re-attaches to them. `flotilla dev`
    /// and tests turn it on.
    pub stop_tasks_on_shutdown: bool,
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
            host_volumes: BTreeMap::new(),
            stop_tasks_on_shutdown: false,
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
        for (name, path) in &self.host_volumes {
            if name.trim().is_empty() {
                return Err(invalid("host_volumes", "a volume name is empty".into()));
            }
            if !path.is_absolute() {
                return Err(invalid(
                    "host_volumes",
                    format!(
                        "volume {name:?}: expected an absolute path, got {:?}",
                        path.display().to_string()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks that every host volume is an existing directory (touches the disk).
    pub fn check_host_volumes(&self) -> Result<(), AgentError> {
        for (name, path) in &self.host_volumes {
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(AgentError::Config {
                        field: "host_volumes",
                        message: format!("volume {name:?}: {} is not a directory", path.display()),
                    });
                }
                Err(e) => {
                    return Err(AgentError::Config {
                        field: "host_volumes",
                        message: format!("volume {name:?}: {}: {e}", path.display()),
                    });
                }
            }
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
        let bad = AgentConfig {
            host_volumes: BTreeMap::from([("data".to_string(), PathBuf::from("rel/dir"))]),
            ..AgentConfig::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("host_volumes") && err.contains("rel/dir"),
            "{err}"
        );
    }

    #[test]
    fn host_volumes_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let ok = AgentConfig {
            host_volumes: BTreeMap::from([("data".to_string(), dir.path().to_path_buf())]),
            ..AgentConfig::default()
        };
        ok.check_host_volumes().unwrap();
        let missing = dir.path().join("missing");
        let bad = AgentConfig {
            host_volumes: BTreeMap::from([("data".to_string(), missing.clone())]),
            ..AgentConfig::default()
        };
        let err = bad.check_host_volumes().unwrap_err().to_string();
        assert!(
            err.contains("\"data\"") && err.contains(&missing.display().to_string()),
            "{err}"
        );
    }
}
