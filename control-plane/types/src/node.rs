use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A client node running an agent (Nomad's `structs.Node`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub datacenter: String,
    pub node_class: String,
    /// `initializing`, `ready` or `down`.
    pub status: String,
    pub status_description: String,
    /// `eligible` or `ineligible`.
    pub scheduling_eligibility: String,
    pub drain: bool,
    /// Set while a drain is in progress.
    pub drain_strategy: Option<DrainStrategy>,
    pub attributes: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
    pub node_resources: NodeResources,
    pub drivers: BTreeMap<String, DriverInfo>,
    /// Host volumes the node offers, by name (Nomad's `HostVolumes`).
    pub host_volumes: BTreeMap<String, ClientHostVolume>,
    /// The address workloads on this node are reached at (host IP).
    pub address: String,
    /// `host:port` of the agent's HTTP endpoint (logs and other node-local reads).
    #[serde(rename = "HTTPAddr")]
    pub http_addr: String,
    /// `host:port` of the node proxy's inbound listener, where other nodes' proxies send traffic.
    pub proxy_addr: String,
    /// Nanoseconds since the Unix epoch of the last status change.
    pub status_updated_at: i64,
    pub create_index: u64,
    pub modify_index: u64,
}

pub const NODE_STATUS_INIT: &str = "initializing";
pub const NODE_STATUS_READY: &str = "ready";
pub const NODE_STATUS_DOWN: &str = "down";

pub const NODE_ELIGIBLE: &str = "eligible";
pub const NODE_INELIGIBLE: &str = "ineligible";

impl Node {
    /// Whether new allocations may be placed here.
    pub fn schedulable(&self) -> bool {
        self.status == NODE_STATUS_READY
            && self.scheduling_eligibility == NODE_ELIGIBLE
            && !self.drain
    }

    /// Whether the node has this driver, detected and healthy.
    pub fn has_driver(&self, name: &str) -> bool {
        self.drivers
            .get(name)
            .is_some_and(|d| d.detected && d.healthy)
    }
}

/// A host volume a node offers (Nomad's `ClientHostVolumeConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ClientHostVolume {
    pub name: String,
    pub path: String,
    pub read_only: bool,
}

/// How a node drains (Nomad's `DrainStrategy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DrainStrategy {
    /// Nanoseconds allowed for the drain; 0 means no deadline, negative means force now.
    pub deadline: i64,
    /// Leave system jobs' allocations on the node.
    pub ignore_system_jobs: bool,
    /// Unix nanos after which remaining allocations are stopped (0 = none).
    pub force_deadline: i64,
    /// Unix nanos when the drain started.
    pub started_at: i64,
}

/// What a node offers (Nomad's `NodeResources`, simplified to what the scheduler uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeResources {
    pub cpu: NodeCpu,
    pub memory: NodeMemory,
    pub min_dynamic_port: u16,
    pub max_dynamic_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeCpu {
    pub cpu_shares: u64,
    pub total_core_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeMemory {
    #[serde(rename = "MemoryMB")]
    pub memory_mb: u64,
}

/// A driver as a node reports it (Nomad's `DriverInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DriverInfo {
    pub detected: bool,
    pub healthy: bool,
    pub health_description: String,
}

/// One row of `GET /v1/nodes` (Nomad's `NodeListStub`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeListStub {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub address: String,
    pub datacenter: String,
    pub node_class: String,
    pub status: String,
    pub status_description: String,
    pub scheduling_eligibility: String,
    pub drain: bool,
    pub drivers: BTreeMap<String, DriverInfo>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl From<&Node> for NodeListStub {
    fn from(n: &Node) -> Self {
        Self {
            id: n.id.clone(),
            name: n.name.clone(),
            address: n.address.clone(),
            datacenter: n.datacenter.clone(),
            node_class: n.node_class.clone(),
            status: n.status.clone(),
            status_description: n.status_description.clone(),
            scheduling_eligibility: n.scheduling_eligibility.clone(),
            drain: n.drain,
            drivers: n.drivers.clone(),
            create_index: n.create_index,
            modify_index: n.modify_index,
        }
    }
}
