use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A unit of scheduler work: "look at this job again" (Nomad's `structs.Evaluation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Evaluation {
    #[serde(rename = "ID")]
    pub id: String,
    pub namespace: String,
    pub priority: i32,
    /// The job's type, which picks the scheduler.
    #[serde(rename = "Type")]
    pub eval_type: String,
    /// `job-register`, `job-deregister`, `node-update`, `alloc-failure`, `queued-allocs`, …
    pub triggered_by: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    #[serde(rename = "JobModifyIndex")]
    pub job_modify_index: u64,
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// `pending`, `complete`, `failed`, `blocked` or `canceled`.
    pub status: String,
    pub status_description: String,
    /// Groups that could not be placed, and why.
    #[serde(rename = "FailedTGAllocs")]
    pub failed_tg_allocs: BTreeMap<String, AllocMetric>,
    /// The blocked evaluation created when this one could not place everything.
    pub blocked_eval: String,
    /// The evaluation this one follows up.
    pub previous_eval: String,
    /// Nanoseconds since the Unix epoch before which the evaluation must not run (delayed
    /// reschedules).
    pub wait_until: i64,
    /// Instances per group still waiting for a place.
    pub queued_allocations: BTreeMap<String, u64>,
    pub create_index: u64,
    pub modify_index: u64,
    pub create_time: i64,
    pub modify_time: i64,
}

pub const EVAL_STATUS_PENDING: &str = "pending";
pub const EVAL_STATUS_COMPLETE: &str = "complete";
pub const EVAL_STATUS_FAILED: &str = "failed";
pub const EVAL_STATUS_BLOCKED: &str = "blocked";
pub const EVAL_STATUS_CANCELED: &str = "canceled";

pub const TRIGGER_JOB_REGISTER: &str = "job-register";
pub const TRIGGER_JOB_DEREGISTER: &str = "job-deregister";
pub const TRIGGER_NODE_UPDATE: &str = "node-update";
pub const TRIGGER_ALLOC_FAILURE: &str = "alloc-failure";
pub const TRIGGER_QUEUED_ALLOCS: &str = "queued-allocs";
pub const TRIGGER_NODE_DRAIN: &str = "node-drain";
pub const TRIGGER_RETRY_FAILED_ALLOC: &str = "alloc-failure-retry";
pub const TRIGGER_PERIODIC_JOB: &str = "periodic-job";
pub const TRIGGER_JOB_DISPATCH: &str = "job-dispatch";

impl Evaluation {
    pub fn terminal(&self) -> bool {
        matches!(
            self.status.as_str(),
            EVAL_STATUS_COMPLETE | EVAL_STATUS_FAILED | EVAL_STATUS_CANCELED
        )
    }
}

/// Why placements failed (Nomad's `AllocMetric`, the fields operators read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocMetric {
    pub nodes_evaluated: u64,
    pub nodes_filtered: u64,
    pub nodes_available: BTreeMap<String, u64>,
    /// Reason → number of nodes filtered for it (e.g. `missing driver "docker"`).
    pub constraint_filtered: BTreeMap<String, u64>,
    pub nodes_exhausted: u64,
    /// Dimension → number of nodes out of it (`cpu`, `memory`, `network: port 8080 in use`).
    pub dimension_exhausted: BTreeMap<String, u64>,
    /// Number of instances that could not be placed.
    pub coalesced_failures: u64,
}

impl AllocMetric {
    /// A one-line account for people: "2 nodes out of memory; 1 node missing driver …".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.nodes_evaluated == 0 {
            parts.push("no nodes were eligible for evaluation".to_string());
        }
        for (why, n) in &self.constraint_filtered {
            parts.push(format!("{n} node(s) filtered: {why}"));
        }
        for (dim, n) in &self.dimension_exhausted {
            parts.push(format!("{n} node(s) exhausted on {dim}"));
        }
        if parts.is_empty() {
            parts.push(format!("{} node(s) evaluated", self.nodes_evaluated));
        }
        parts.join("; ")
    }
}

impl Evaluation {
    /// A new pending evaluation of `job`; the id and time are passed in.
    pub fn for_job(job: &crate::Job, triggered_by: &str, id: String, now: i64) -> Self {
        Self {
            id,
            namespace: job.namespace.clone(),
            priority: job.priority,
            eval_type: job.job_type.clone(),
            triggered_by: triggered_by.to_string(),
            job_id: job.id.clone(),
            job_modify_index: job.job_modify_index,
            status: EVAL_STATUS_PENDING.to_string(),
            create_time: now,
            modify_time: now,
            ..Default::default()
        }
    }
}
