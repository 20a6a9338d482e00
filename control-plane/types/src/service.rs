use serde::{Deserialize, Serialize};

/// One instance of a service in the catalog (Nomad's `ServiceRegistration`, plus health).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRegistration {
    /// `_flotilla-task-<alloc>-<group>-<service>-<port label>`, unique per instance.
    #[serde(rename = "ID")]
    pub id: String,
    pub service_name: String,
    pub namespace: String,
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub datacenter: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    #[serde(rename = "AllocID")]
    pub alloc_id: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    /// `passing` when every check passes (or there are none), `critical` otherwise.
    pub status: String,
    pub create_index: u64,
    pub modify_index: u64,
}

pub const HEALTH_PASSING: &str = "passing";
pub const HEALTH_CRITICAL: &str = "critical";

impl ServiceRegistration {
    pub fn healthy(&self) -> bool {
        self.status == HEALTH_PASSING
    }
}

/// One entry of `GET /v1/services` (Nomad's `ServiceRegistrationListStub`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceListStub {
    pub namespace: String,
    pub services: Vec<ServiceNameStub>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceNameStub {
    pub service_name: String,
    pub tags: Vec<String>,
}
