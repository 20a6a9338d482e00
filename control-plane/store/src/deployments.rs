//! Reads and writes about deployments shared by the API (operator actions) and the server's
//! deployment watcher: failing a deployment and reverting its job.

use std::sync::Arc;

use flotilla_types::{
    DEPLOYMENT_STATUS_FAILED, Deployment, Evaluation, Job, TRIGGER_DEPLOYMENT_WATCHER,
    TRIGGER_JOB_REVERT,
};

use crate::{Op, State};

/// What failing a deployment writes.
#[derive(Debug)]
pub struct FailedDeployment {
    pub ops: Vec<Op>,
    /// The evaluation it creates (for the reverted job, or to stop the failed rollout).
    pub eval_id: String,
    /// The version the job was reverted to, when a group asked for `auto_revert`.
    pub reverted_to: Option<u64>,
}

impl State {
    /// Whether `a` is a canary whose deployment has not promoted its group (a canary of a
    /// deployment that is gone counts as unpromoted).
    pub fn unpromoted_canary(&self, a: &flotilla_types::Allocation) -> bool {
        a.is_canary()
            && self
                .deployment(&a.deployment_id)
                .is_none_or(|d| d.awaiting_promotion(&a.task_group))
    }

    /// How many of a deployment group's placed canaries are live and judged healthy.
    pub fn healthy_canaries(&self, g: &flotilla_types::DeploymentState) -> usize {
        g.placed_canaries
            .iter()
            .filter_map(|id| self.alloc(id))
            .filter(|a| !a.terminal() && a.deployment_health() == Some(true))
            .count()
    }

    /// The newest stable version of a job older than its current version.
    pub fn latest_stable_version(&self, namespace: &str, id: &str) -> Option<&Arc<Job>> {
        let current = self.job(namespace, id)?.version;
        self.job_versions(namespace, id)
            .find(|j| j.stable && j.version < current)
    }

    /// Writes reverting job `namespace/id` to its kept version `version`: that version's
    /// specification registered as the next version, with an evaluation `eval_id`.
    pub fn revert_ops(
        &self,
        namespace: &str,
        id: &str,
        version: u64,
        trigger: &str,
        now: i64,
        eval_id: String,
    ) -> Option<Vec<Op>> {
        let current = self.job(namespace, id)?;
        let target = self.job_version(namespace, id, version)?;
        let job = current.reverted_to(target, now);
        let eval = Evaluation::for_job(&job, trigger, eval_id, now);
        Some(vec![Op::PutJob(job), Op::PutEval(eval)])
    }

    /// Writes failing deployment `d` with `description`. When one of its groups has
    /// `auto_revert`, the job goes back to its latest stable version (Nomad's wording is kept:
    /// "… - rolling back to job version N", or "… - no stable job version to auto revert to").
    pub fn fail_deployment_ops(
        &self,
        d: &Deployment,
        description: &str,
        now: i64,
        eval_id: String,
    ) -> FailedDeployment {
        let mut failed = d.clone();
        failed.status = DEPLOYMENT_STATUS_FAILED.to_string();
        failed.modify_time = now;
        let auto_revert = d.task_groups.values().any(|g| g.auto_revert);
        let job = self.job(&d.namespace, &d.job_id);
        let target = auto_revert
            .then(|| self.latest_stable_version(&d.namespace, &d.job_id))
            .flatten()
            // Only while the failed deployment's version is still the job's.
            .filter(|_| job.is_some_and(|j| j.version == d.job_version));
        let mut ops = Vec::new();
        let reverted_to = match target {
            Some(t) => {
                failed.status_description =
                    format!("{description} - rolling back to job version {}", t.version);
                ops.extend(
                    self.revert_ops(
                        &d.namespace,
                        &d.job_id,
                        t.version,
                        TRIGGER_JOB_REVERT,
                        now,
                        eval_id.clone(),
                    )
                    .unwrap_or_default(),
                );
                Some(t.version)
            }
            None => {
                failed.status_description = if auto_revert {
                    format!("{description} - no stable job version to auto revert to")
                } else {
                    description.to_string()
                };
                if let Some(job) = job {
                    ops.push(Op::PutEval(Evaluation::for_job(
                        job,
                        TRIGGER_DEPLOYMENT_WATCHER,
                        eval_id.clone(),
                        now,
                    )));
                }
                None
            }
        };
        ops.insert(0, Op::PutDeployment(failed));
        FailedDeployment {
            ops,
            eval_id,
            reverted_to,
        }
    }
}
