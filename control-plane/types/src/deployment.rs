use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The rollout of one job version (Nomad's `structs.Deployment`): created by the scheduler when
/// a service job with an `update` block gets a new version, driven by the server's deployment
/// watcher from the allocations' health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Deployment {
    #[serde(rename = "ID")]
    pub id: String,
    pub namespace: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    pub job_version: u64,
    pub job_modify_index: u64,
    pub job_create_index: u64,
    /// Per task group with an update strategy.
    pub task_groups: BTreeMap<String, DeploymentState>,
    /// `running`, `paused`, `successful`, `failed` or `cancelled`.
    pub status: String,
    pub status_description: String,
    pub create_index: u64,
    pub modify_index: u64,
    /// Unix nanoseconds.
    pub create_time: i64,
    pub modify_time: i64,
}

/// One task group's part of a deployment (Nomad's `DeploymentState`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeploymentState {
    pub auto_revert: bool,
    pub auto_promote: bool,
    /// Nanoseconds an allocation has to become healthy before the deployment fails (0: none).
    pub progress_deadline: i64,
    /// Unix nanoseconds by which the next allocation must be healthy (0: not yet running).
    pub require_progress_by: i64,
    /// Canaries have been promoted (or the group has none).
    pub promoted: bool,
    /// Allocation IDs of the canaries placed.
    pub placed_canaries: Vec<String>,
    pub desired_canaries: u32,
    pub desired_total: u32,
    pub placed_allocs: u32,
    pub healthy_allocs: u32,
    pub unhealthy_allocs: u32,
}

pub const DEPLOYMENT_STATUS_RUNNING: &str = "running";
pub const DEPLOYMENT_STATUS_PAUSED: &str = "paused";
pub const DEPLOYMENT_STATUS_SUCCESSFUL: &str = "successful";
pub const DEPLOYMENT_STATUS_FAILED: &str = "failed";
pub const DEPLOYMENT_STATUS_CANCELLED: &str = "cancelled";

pub const DEPLOYMENT_DESC_RUNNING: &str = "Deployment is running";
pub const DEPLOYMENT_DESC_NEEDS_PROMOTION: &str =
    "Deployment is running but requires manual promotion";
pub const DEPLOYMENT_DESC_AUTO_PROMOTION: &str =
    "Deployment is running pending automatic promotion";
pub const DEPLOYMENT_DESC_PAUSED: &str = "Deployment is paused";
pub const DEPLOYMENT_DESC_SUCCESSFUL: &str = "Deployment completed successfully";
pub const DEPLOYMENT_DESC_STOPPED_JOB: &str = "Cancelled because job is stopped";
pub const DEPLOYMENT_DESC_NEWER_JOB: &str = "Cancelled due to newer version of job";
pub const DEPLOYMENT_DESC_UNHEALTHY: &str = "Failed due to unhealthy allocations";
pub const DEPLOYMENT_DESC_PROGRESS_DEADLINE: &str = "Failed due to progress deadline";
pub const DEPLOYMENT_DESC_FAILED_BY_USER: &str = "Deployment marked as failed";

/// Evaluation trigger for the evaluations the deployment watcher creates.
pub const TRIGGER_DEPLOYMENT_WATCHER: &str = "deployment-watcher";
/// Evaluation trigger for a job reverted to an earlier version.
pub const TRIGGER_JOB_REVERT: &str = "job-revert";

impl Deployment {
    /// Still rolling out (running or paused): the scheduler follows it.
    pub fn active(&self) -> bool {
        self.status == DEPLOYMENT_STATUS_RUNNING || self.status == DEPLOYMENT_STATUS_PAUSED
    }

    /// Whether a group's canaries (if it has any) still wait for promotion.
    pub fn awaiting_promotion(&self, group: &str) -> bool {
        self.task_groups
            .get(group)
            .is_some_and(|s| s.desired_canaries > 0 && !s.promoted)
    }

    /// A short id (the first 8 characters), as Nomad's CLI prints.
    pub fn short_id(&self) -> &str {
        crate::short_id(&self.id)
    }
}

impl crate::TaskGroup {
    /// The group's update strategy when it rolls out through deployments: Nomad treats a
    /// strategy with `max_parallel = 0` as none (every instance is replaced at once).
    pub fn rolling_update(&self) -> Option<&crate::UpdateStrategy> {
        self.update.as_ref().filter(|u| u.max_parallel > 0)
    }
}

/// The body of `POST /v1/deployment/promote/:id`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeploymentPromoteRequest {
    #[serde(rename = "DeploymentID")]
    pub deployment_id: String,
    /// Promote every group (else only `groups`).
    pub all: bool,
    pub groups: Vec<String>,
}

/// The body of `POST /v1/deployment/pause/:id`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeploymentPauseRequest {
    #[serde(rename = "DeploymentID")]
    pub deployment_id: String,
    pub pause: bool,
}

/// The body of `POST /v1/deployment/fail/:id`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeploymentFailRequest {
    #[serde(rename = "DeploymentID")]
    pub deployment_id: String,
}

/// The answer to a deployment promote, pause or fail (Nomad's `DeploymentUpdateResponse`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeploymentUpdateResponse {
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub eval_create_index: u64,
    pub deployment_modify_index: u64,
    /// Set when failing the deployment reverted the job.
    pub reverted_job_version: Option<u64>,
    pub index: u64,
}

/// The body of `POST /v1/job/:id/revert`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobRevertRequest {
    #[serde(rename = "JobID")]
    pub job_id: String,
    pub job_version: u64,
    /// Refuse unless the job's current version is this one.
    pub enforce_prior_version: Option<u64>,
}

/// The answer to `GET /v1/job/:id/versions`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobVersionsResponse {
    /// Newest first.
    pub versions: Vec<crate::Job>,
    pub index: u64,
}

impl crate::Job {
    /// The job that reverting `self` to the kept version `target` registers: `target`'s
    /// specification as the next version (Nomad's `Job.Revert`), not yet stable.
    pub fn reverted_to(&self, target: &crate::Job, now: i64) -> crate::Job {
        crate::Job {
            version: self.version + 1,
            stable: false,
            stop: false,
            submit_time: now,
            status: String::new(),
            create_index: self.create_index,
            modify_index: self.modify_index,
            // Stamped by the store: a new specification.
            job_modify_index: 0,
            ..target.clone()
        }
    }
}
