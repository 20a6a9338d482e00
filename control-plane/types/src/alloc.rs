use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Job, Resources};

/// One placed instance of a task group on a node (Nomad's `structs.Allocation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Allocation {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    /// `<job>.<group>[<index>]`.
    pub name: String,
    pub namespace: String,
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub node_name: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    /// The job as it was when this allocation was placed.
    pub job: Option<std::sync::Arc<Job>>,
    pub task_group: String,
    pub allocated_resources: AllocatedResources,
    /// What the server wants: `run`, `stop` or `evict`.
    pub desired_status: String,
    pub desired_description: String,
    /// What the node reports: `pending`, `running`, `complete`, `failed` or `lost`.
    pub client_status: String,
    pub client_description: String,
    pub task_states: BTreeMap<String, TaskState>,
    /// The allocation this one replaces, if any.
    #[serde(rename = "PreviousAllocation")]
    pub previous_allocation: String,
    /// The allocation that replaced this one, if any.
    #[serde(rename = "NextAllocation")]
    pub next_allocation: String,
    /// Replacements so far in this line of allocations (for the reschedule policy).
    pub reschedule_tracker: Option<RescheduleTracker>,
    /// The delayed evaluation that will replace this failed allocation.
    #[serde(rename = "FollowupEvalID")]
    pub followup_eval_id: String,
    /// Server-side requests to the scheduler about this allocation (drain migrations).
    pub desired_transition: DesiredTransition,
    /// The deployment that placed this allocation (empty when its group has no `update` block).
    #[serde(rename = "DeploymentID")]
    pub deployment_id: String,
    /// Its health as the deployment watcher judged it, and whether it is a canary.
    pub deployment_status: Option<AllocDeploymentStatus>,
    pub create_index: u64,
    pub modify_index: u64,
    /// Nanoseconds since the Unix epoch.
    pub create_time: i64,
    pub modify_time: i64,
}

pub const ALLOC_DESIRED_RUN: &str = "run";
pub const ALLOC_DESIRED_STOP: &str = "stop";
pub const ALLOC_DESIRED_EVICT: &str = "evict";

pub const ALLOC_CLIENT_PENDING: &str = "pending";
pub const ALLOC_CLIENT_RUNNING: &str = "running";
pub const ALLOC_CLIENT_COMPLETE: &str = "complete";
pub const ALLOC_CLIENT_FAILED: &str = "failed";
pub const ALLOC_CLIENT_LOST: &str = "lost";

impl Allocation {
    /// The instance index from the name (`web[2]` → 2).
    pub fn index(&self) -> Option<u32> {
        let open = self.name.rfind('[')?;
        self.name[open + 1..].strip_suffix(']')?.parse().ok()
    }

    /// The server no longer wants it to run.
    pub fn desired_terminal(&self) -> bool {
        self.desired_status == ALLOC_DESIRED_STOP || self.desired_status == ALLOC_DESIRED_EVICT
    }

    /// The node reports it finished, failed or lost.
    pub fn client_terminal(&self) -> bool {
        matches!(
            self.client_status.as_str(),
            ALLOC_CLIENT_COMPLETE | ALLOC_CLIENT_FAILED | ALLOC_CLIENT_LOST
        )
    }

    /// Either side considers it done: it holds no resources any more.
    pub fn terminal(&self) -> bool {
        self.desired_terminal() || self.client_terminal()
    }

    /// The allocated host port for a label.
    pub fn port(&self, label: &str) -> Option<&AllocatedPort> {
        self.allocated_resources
            .shared
            .ports
            .iter()
            .find(|p| p.label == label)
    }

    /// The group this allocation runs, from its embedded job.
    pub fn group(&self) -> Option<&crate::TaskGroup> {
        self.job.as_ref()?.group(&self.task_group)
    }

    /// Resources this allocation holds on its node.
    pub fn comparable_resources(&self) -> Resources {
        self.allocated_resources
            .tasks
            .values()
            .fold(Resources::default(), |acc, t| Resources {
                cpu: acc.cpu + t.cpu.cpu_shares,
                memory_mb: acc.memory_mb + t.memory.memory_mb,
            })
    }

    /// Placed as a canary of its deployment.
    pub fn is_canary(&self) -> bool {
        self.deployment_status.as_ref().is_some_and(|s| s.canary)
    }

    /// The deployment watcher's verdict: `Some(true)` healthy, `Some(false)` unhealthy, `None`
    /// not yet decided.
    pub fn deployment_health(&self) -> Option<bool> {
        self.deployment_status.as_ref().and_then(|s| s.healthy)
    }

    /// A short id (the first 8 characters), as Nomad's CLI prints.
    pub fn short_id(&self) -> &str {
        short_id(&self.id)
    }
}

/// Nomad's `AllocDeploymentStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocDeploymentStatus {
    /// `None` until the deployment watcher decides.
    pub healthy: Option<bool>,
    /// When the allocation joined its deployment, then when the verdict was reached (unix
    /// nanoseconds).
    pub timestamp: i64,
    pub canary: bool,
    pub modify_index: u64,
}

/// Past replacements of an allocation line (Nomad's `RescheduleTracker`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct RescheduleTracker {
    pub events: Vec<RescheduleEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct RescheduleEvent {
    /// Nanoseconds since the Unix epoch.
    pub reschedule_time: i64,
    #[serde(rename = "PrevAllocID")]
    pub prev_alloc_id: String,
    #[serde(rename = "PrevNodeID")]
    pub prev_node_id: String,
    /// Nanoseconds waited before this replacement.
    pub delay: i64,
}

/// Nomad's `DesiredTransition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DesiredTransition {
    /// Move the allocation off its node (drain).
    pub migrate: bool,
}

/// The first 8 characters of an id, as Nomad's CLI prints them.
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Resources the scheduler gave an allocation (Nomad's `AllocatedResources`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocatedResources {
    pub tasks: BTreeMap<String, AllocatedTaskResources>,
    pub shared: AllocatedSharedResources,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocatedTaskResources {
    pub cpu: AllocatedCpu,
    pub memory: AllocatedMemory,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocatedCpu {
    pub cpu_shares: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocatedMemory {
    #[serde(rename = "MemoryMB")]
    pub memory_mb: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocatedSharedResources {
    pub ports: Vec<AllocatedPort>,
}

/// A port given to an allocation (Nomad's `AllocatedPortMapping`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocatedPort {
    pub label: String,
    /// The port on the host.
    pub value: u16,
    /// The port inside the task; equal to `value` unless the job maps it.
    pub to: u16,
    #[serde(rename = "HostIP")]
    pub host_ip: String,
}

/// A task's life as the node reports it (Nomad's `structs.TaskState`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskState {
    /// `pending`, `running` or `dead`.
    pub state: String,
    pub failed: bool,
    pub restarts: u64,
    /// RFC 3339 times, empty when not yet.
    pub started_at: String,
    pub finished_at: String,
    pub events: Vec<TaskEvent>,
}

/// Something that happened to a task (Nomad's `structs.TaskEvent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskEvent {
    /// `Received`, `Started`, `Terminated`, `Restarting`, `Not Restarting`, `Killing`, `Killed`,
    /// `Driver Failure`, …
    #[serde(rename = "Type")]
    pub event_type: String,
    /// Nanoseconds since the Unix epoch.
    pub time: i64,
    pub display_message: String,
    pub exit_code: i32,
    pub signal: i32,
}

/// One row of `GET /v1/allocations` and `GET /v1/job/:id/allocations` (Nomad's `AllocListStub`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocListStub {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub name: String,
    pub namespace: String,
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub node_name: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    pub job_version: u64,
    pub task_group: String,
    pub desired_status: String,
    pub desired_description: String,
    pub client_status: String,
    pub client_description: String,
    pub task_states: BTreeMap<String, TaskState>,
    #[serde(rename = "DeploymentID")]
    pub deployment_id: String,
    pub deployment_status: Option<AllocDeploymentStatus>,
    pub create_index: u64,
    pub modify_index: u64,
    pub create_time: i64,
    pub modify_time: i64,
}

impl From<&Allocation> for AllocListStub {
    fn from(a: &Allocation) -> Self {
        Self {
            id: a.id.clone(),
            eval_id: a.eval_id.clone(),
            name: a.name.clone(),
            namespace: a.namespace.clone(),
            node_id: a.node_id.clone(),
            node_name: a.node_name.clone(),
            job_id: a.job_id.clone(),
            job_version: a.job.as_ref().map(|j| j.version).unwrap_or_default(),
            task_group: a.task_group.clone(),
            desired_status: a.desired_status.clone(),
            desired_description: a.desired_description.clone(),
            client_status: a.client_status.clone(),
            client_description: a.client_description.clone(),
            task_states: a.task_states.clone(),
            deployment_id: a.deployment_id.clone(),
            deployment_status: a.deployment_status.clone(),
            create_index: a.create_index,
            modify_index: a.modify_index,
            create_time: a.create_time,
            modify_time: a.modify_time,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_from_name() {
        let a = Allocation {
            name: "hello.web[12]".into(),
            ..Default::default()
        };
        assert_eq!(a.index(), Some(12));
        let b = Allocation {
            name: "weird".into(),
            ..Default::default()
        };
        assert_eq!(b.index(), None);
    }
}
