//! Deployments as the scheduler sees them (Nomad's deployment half of `allocReconciler`): which
//! deployment a job version rolls out under, how many old instances may be replaced now
//! (`max_parallel` minus the new ones not yet healthy), and which canaries to place or stop.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_store::State;
use flotilla_types::*;

/// The rollout of the job's current version: its deployment (found or made now) and, per group
/// with a rolling update, what may happen in this evaluation.
#[derive(Debug, Default)]
pub(crate) struct Rollout {
    /// The job version's deployment, if it has one.
    pub deployment: Option<Deployment>,
    /// The deployment is made by this evaluation (written with the plan).
    pub created: bool,
    pub groups: BTreeMap<String, GroupRollout>,
}

/// One group's part of the rollout.
#[derive(Debug, Default)]
pub(crate) struct GroupRollout {
    /// Old instances that may still be replaced in this evaluation.
    pub updates_left: usize,
    /// Canaries still to place.
    pub canaries_to_place: u32,
    /// Indexes the group's live canaries hold.
    pub canary_indexes: Vec<u32>,
}

impl Rollout {
    /// Take one replacement of an old instance of `group` from what the rollout allows now.
    /// Groups without a rolling update replace every old instance at once.
    pub fn take_update(&mut self, group: &str) -> bool {
        match self.groups.get_mut(group) {
            None => true,
            Some(g) if g.updates_left > 0 => {
                g.updates_left -= 1;
                true
            }
            Some(_) => false,
        }
    }
}

/// The deployment of the job's current version (the same job, not an earlier one purged and
/// registered again).
pub(crate) fn current_deployment<'s>(state: &'s State, job: &Job) -> Option<&'s Arc<Deployment>> {
    state
        .latest_deployment(&job.namespace, &job.id)
        .filter(|d| d.job_version == job.version && d.job_create_index == job.create_index)
}

/// Deployments of the job that must stop following it: active ones of other versions (a newer
/// version supersedes them) or of a stopped job.
pub(crate) fn cancelled(
    state: &State,
    job: Option<&Job>,
    namespace: &str,
    id: &str,
    now: i64,
) -> Vec<Deployment> {
    state
        .deployments_by_job(namespace, id)
        .into_iter()
        .filter(|d| d.active())
        .filter_map(|d| {
            let why = match job {
                None => DEPLOYMENT_DESC_STOPPED_JOB,
                Some(j) if j.stop => DEPLOYMENT_DESC_STOPPED_JOB,
                Some(j) if d.job_version != j.version || d.job_create_index != j.create_index => {
                    DEPLOYMENT_DESC_NEWER_JOB
                }
                Some(_) => return None,
            };
            let mut d = (**d).clone();
            d.status = DEPLOYMENT_STATUS_CANCELLED.to_string();
            d.status_description = why.to_string();
            d.modify_time = now;
            Some(d)
        })
        .collect()
}

/// Plan the rollout of `job` given its live allocations. `outdated(group)` says how many of
/// the group's running instances (canaries excluded) run an older version that needs replacing.
pub(crate) fn plan(
    state: &State,
    job: &Job,
    live: &[Arc<Allocation>],
    outdated: &BTreeMap<&str, usize>,
    missing: &BTreeMap<&str, u32>,
    now: i64,
) -> Rollout {
    let rolling: Vec<&TaskGroup> = job
        .task_groups
        .iter()
        .filter(|g| g.rolling_update().is_some())
        .collect();
    if job.job_type != JOB_TYPE_SERVICE || job.stop || rolling.is_empty() {
        return Rollout::default();
    }
    let mut out = Rollout::default();
    let existing = current_deployment(state, job).map(|d| (**d).clone());
    let deployment = match existing {
        Some(d) => d,
        None => {
            // A new version: roll it out under a new deployment, if any group has work to do.
            let work = rolling.iter().any(|g| {
                outdated.get(g.name.as_str()).copied().unwrap_or(0) > 0
                    || missing.get(g.name.as_str()).copied().unwrap_or(0) > 0
            });
            if !work {
                return out;
            }
            out.created = true;
            new_deployment(job, &rolling, outdated, now)
        }
    };
    for g in &rolling {
        let Some(update) = g.rolling_update() else {
            continue;
        };
        let Some(ds) = deployment.task_groups.get(&g.name) else {
            continue;
        };
        let mut gr = GroupRollout::default();
        let mine: Vec<&Arc<Allocation>> = live
            .iter()
            .filter(|a| a.task_group == g.name && a.deployment_id == deployment.id)
            .collect();
        for a in &mine {
            if a.is_canary()
                && !ds.promoted
                && let Some(i) = a.index()
            {
                gr.canary_indexes.push(i);
            }
        }
        if deployment.status == DEPLOYMENT_STATUS_RUNNING {
            if ds.desired_canaries > 0 && !ds.promoted {
                let placed = u32::try_from(gr.canary_indexes.len()).unwrap_or(u32::MAX);
                gr.canaries_to_place = ds.desired_canaries.saturating_sub(placed);
            } else {
                let in_flight = mine
                    .iter()
                    .filter(|a| a.deployment_health() != Some(true))
                    .count();
                gr.updates_left = (update.max_parallel as usize).saturating_sub(in_flight);
            }
        }
        out.groups.insert(g.name.clone(), gr);
    }
    out.deployment = Some(deployment);
    out
}

fn new_deployment(
    job: &Job,
    rolling: &[&TaskGroup],
    outdated: &BTreeMap<&str, usize>,
    now: i64,
) -> Deployment {
    let mut groups = BTreeMap::new();
    for g in rolling {
        let Some(u) = g.rolling_update() else {
            continue;
        };
        // Canaries only make sense next to an older version still running.
        let canaries = if outdated.get(g.name.as_str()).copied().unwrap_or(0) > 0 {
            u.canary
        } else {
            0
        };
        groups.insert(
            g.name.clone(),
            DeploymentState {
                auto_revert: u.auto_revert,
                auto_promote: u.auto_promote,
                progress_deadline: u.progress_deadline,
                require_progress_by: if u.progress_deadline > 0 {
                    now.saturating_add(u.progress_deadline)
                } else {
                    0
                },
                promoted: false,
                desired_canaries: canaries,
                desired_total: g.count,
                ..Default::default()
            },
        );
    }
    // The id is given when the plan is made (the reconciler stays deterministic).
    Deployment {
        namespace: job.namespace.clone(),
        job_id: job.id.clone(),
        job_version: job.version,
        job_modify_index: job.job_modify_index,
        job_create_index: job.create_index,
        task_groups: groups,
        status: DEPLOYMENT_STATUS_RUNNING.to_string(),
        status_description: DEPLOYMENT_DESC_RUNNING.to_string(),
        create_time: now,
        modify_time: now,
        ..Default::default()
    }
}
