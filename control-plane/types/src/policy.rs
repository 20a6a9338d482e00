//! Placement rules and life-cycle policies of jobs, groups and tasks (Nomad's shapes).

use serde::{Deserialize, Serialize};

/// A hard placement rule (Nomad's `structs.Constraint`). `LTarget`/`RTarget` are literals or
/// `${attr.*}`, `${meta.*}`, `${node.*}` references resolved against each node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Constraint {
    #[serde(rename = "LTarget")]
    pub l_target: String,
    #[serde(rename = "RTarget")]
    pub r_target: String,
    /// `=`, `!=`, `<`, `<=`, `>`, `>=`, `regexp`, `version`, `semver`, `set_contains`,
    /// `set_contains_any`, `is_set`, `is_not_set`, `distinct_hosts`, `distinct_property`.
    pub operand: String,
}

pub const CONSTRAINT_DISTINCT_HOSTS: &str = "distinct_hosts";
pub const CONSTRAINT_DISTINCT_PROPERTY: &str = "distinct_property";

/// A soft placement preference with a weight in -100..=100 (Nomad's `structs.Affinity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Affinity {
    #[serde(rename = "LTarget")]
    pub l_target: String,
    #[serde(rename = "RTarget")]
    pub r_target: String,
    pub operand: String,
    pub weight: i8,
}

/// Spread instances over the values of a node attribute (Nomad's `structs.Spread`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Spread {
    pub attribute: String,
    pub weight: i8,
    pub spread_target: Vec<SpreadTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct SpreadTarget {
    pub value: String,
    pub percent: u8,
}

/// When and how failed allocations are replaced (Nomad's `structs.ReschedulePolicy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ReschedulePolicy {
    pub attempts: u32,
    /// Nanoseconds.
    pub interval: i64,
    /// Nanoseconds before the first replacement.
    pub delay: i64,
    /// `constant`, `exponential` or `fibonacci`.
    pub delay_function: String,
    /// Nanoseconds.
    pub max_delay: i64,
    pub unlimited: bool,
}

impl Default for ReschedulePolicy {
    fn default() -> Self {
        Self::default_for(crate::JOB_TYPE_SERVICE)
    }
}

impl ReschedulePolicy {
    /// Nomad's defaults: services retry forever with exponential delay from 30 s up to 1 h;
    /// batch jobs once per 24 h after 5 s; system jobs are never rescheduled.
    pub fn default_for(job_type: &str) -> Self {
        let s = crate::NANOS_PER_SEC;
        match job_type {
            crate::JOB_TYPE_BATCH => Self {
                attempts: 1,
                interval: 24 * 3600 * s,
                delay: 5 * s,
                delay_function: "constant".into(),
                max_delay: 0,
                unlimited: false,
            },
            crate::JOB_TYPE_SYSTEM | crate::JOB_TYPE_SYSBATCH => Self {
                attempts: 0,
                interval: 0,
                delay: 0,
                delay_function: "constant".into(),
                max_delay: 0,
                unlimited: false,
            },
            _ => Self {
                attempts: 0,
                interval: 0,
                delay: 30 * s,
                delay_function: "exponential".into(),
                max_delay: 3600 * s,
                unlimited: true,
            },
        }
    }

    /// The delay before replacement number `attempt` (1-based).
    pub fn delay_for(&self, attempt: u32) -> i64 {
        let base = self.delay.max(0);
        let d = match self.delay_function.as_str() {
            "exponential" => base.saturating_mul(1i64 << attempt.saturating_sub(1).min(40)),
            "fibonacci" => {
                let (mut a, mut b) = (base, base);
                for _ in 1..attempt {
                    (a, b) = (b, a.saturating_add(b));
                }
                a
            }
            _ => base,
        };
        if self.max_delay > 0 {
            d.min(self.max_delay)
        } else {
            d
        }
    }
}

/// Nomad's `update` block (`structs.UpdateStrategy`): how new versions roll out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct UpdateStrategy {
    /// Nanoseconds between groups of updates (job-level `stagger`).
    pub stagger: i64,
    pub max_parallel: u32,
    /// `checks`, `task_states` or `manual`.
    pub health_check: String,
    /// Nanoseconds.
    pub min_healthy_time: i64,
    /// Nanoseconds.
    pub healthy_deadline: i64,
    /// Nanoseconds.
    pub progress_deadline: i64,
    pub auto_revert: bool,
    pub auto_promote: bool,
    pub canary: u32,
}

/// Run the job on a cron schedule (Nomad's `structs.PeriodicConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct PeriodicConfig {
    pub enabled: bool,
    /// Cron expression.
    pub spec: String,
    pub spec_type: String,
    pub prohibit_overlap: bool,
    pub time_zone: String,
}

/// The job is a template instantiated by `job dispatch` (Nomad's `ParameterizedJobConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ParameterizedJobConfig {
    /// `optional`, `required` or `forbidden`.
    pub payload: String,
    pub meta_required: Vec<String>,
    pub meta_optional: Vec<String>,
}

/// A group's request for a host volume (Nomad's `structs.VolumeRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct VolumeRequest {
    pub name: String,
    /// `host` (only kind supported).
    #[serde(rename = "Type")]
    pub volume_type: String,
    pub source: String,
    pub read_only: bool,
}

/// Where a task sees a group volume (Nomad's `structs.VolumeMount`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct VolumeMount {
    pub volume: String,
    pub destination: String,
    pub read_only: bool,
}

/// Scratch disk of the group (Nomad's `structs.EphemeralDisk`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EphemeralDisk {
    pub sticky: bool,
    #[serde(rename = "SizeMB")]
    pub size_mb: u64,
    pub migrate: bool,
}

impl Default for EphemeralDisk {
    fn default() -> Self {
        Self {
            sticky: false,
            size_mb: 300,
            migrate: false,
        }
    }
}

/// When a task runs relative to the main tasks (Nomad's `TaskLifecycleConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskLifecycle {
    /// `prestart`, `poststart` or `poststop`.
    pub hook: String,
    /// Keeps running alongside the main tasks.
    pub sidecar: bool,
}

/// A file fetched into the task directory before start (Nomad's `TaskArtifact`); local sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskArtifact {
    pub getter_source: String,
    pub getter_options: std::collections::BTreeMap<String, String>,
    pub relative_dest: String,
    /// `any`, `file` or `dir`.
    pub getter_mode: String,
}

/// A file rendered into the task directory (Nomad's `structs.Template`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Template {
    pub source_path: String,
    pub dest_path: String,
    pub embedded_tmpl: String,
    /// `noop`, `restart` or `signal`.
    pub change_mode: String,
    pub change_signal: String,
    /// Render as `KEY=value` lines loaded into the task's environment.
    pub envvars: bool,
    pub perms: String,
    pub left_delim: String,
    pub right_delim: String,
}

/// Log rotation of a task (Nomad's `structs.LogConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LogConfig {
    pub max_files: u32,
    #[serde(rename = "MaxFileSizeMB")]
    pub max_file_size_mb: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            max_files: 10,
            max_file_size_mb: 10,
        }
    }
}

/// Restart the task when its service check stays unhealthy (Nomad's `CheckRestart`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct CheckRestart {
    pub limit: u32,
    /// Nanoseconds after start before failures count.
    pub grace: i64,
    pub ignore_warnings: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reschedule_delays() {
        let s = crate::NANOS_PER_SEC;
        let p = ReschedulePolicy::default();
        assert_eq!(p.delay_for(1), 30 * s);
        assert_eq!(p.delay_for(2), 60 * s);
        assert_eq!(p.delay_for(20), 3600 * s);
        let f = ReschedulePolicy {
            delay: s,
            delay_function: "fibonacci".into(),
            ..p
        };
        assert_eq!(
            (1..=5).map(|i| f.delay_for(i) / s).collect::<Vec<_>>(),
            [1, 1, 2, 3, 5]
        );
    }
}
