//! Reconciliation for service and batch jobs: what must change for the job's allocations to
//! match its specification (Nomad's `allocReconciler`).

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_store::State;
use flotilla_types::*;

use crate::rollout::{self, Rollout};

/// Past reschedule events kept on an allocation whose policy is unlimited (Nomad keeps 5 and
/// doubles the last delay; the delay here is `delay_for(events + 1)`, so enough are kept for
/// the default policy to reach its `max_delay`).
const MAX_PAST_RESCHEDULE_EVENTS: usize = 10;
/// A failed allocation due within this long is replaced now rather than by a follow-up
/// evaluation (Nomad's `rescheduleWindowSize`).
const RESCHEDULE_WINDOW: i64 = NANOS_PER_SEC;
/// Follow-ups due within this long of the first of a batch share its evaluation (Nomad's
/// `batchedFailedAllocWindowSize`).
const FOLLOWUP_BATCH_WINDOW: i64 = 5 * NANOS_PER_SEC;

pub const DESC_JOB_STOPPED: &str = "alloc not needed since job was stopped";
pub const DESC_GROUP_REMOVED: &str = "alloc not needed since its group was removed from the job";
pub const DESC_NOT_NEEDED: &str = "alloc not needed due to job update";
pub const DESC_UPDATING: &str = "alloc is being updated due to job update";
pub const DESC_MIGRATING: &str = "alloc is being migrated";
pub const DESC_LOST: &str = "alloc is lost since its node is down";
pub const DESC_RESCHEDULED: &str = "alloc was rescheduled because it failed";
pub const DESC_DUPLICATE: &str = "alloc not needed: duplicate instance";
pub const DESC_REPLACED_BY_CANARY: &str =
    "alloc not needed as it was replaced by a promoted canary";
pub const DESC_CANARY_ENDED: &str = "alloc not needed as its deployment ended before promotion";

/// What must change for a job to match its specification.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Allocations to stop: the allocation, the desired status to give it, and why.
    pub stop: Vec<(Arc<Allocation>, &'static str, String)>,
    /// Allocations on nodes that are down or gone: marked lost (and stopped).
    pub lost: Vec<Arc<Allocation>>,
    /// Instances to place.
    pub place: Vec<Placement>,
    /// Allocations of an older job version whose change needs no restart: updated in place
    /// (if their node still satisfies the job's constraints).
    pub inplace: Vec<Arc<Allocation>>,
    /// Failed allocations to replace later: `(allocation id, unix nanos)`, times batched.
    pub followups: Vec<(String, i64)>,
    /// The job's allocations that hold resources (not terminal), stopped ones included.
    pub live: Vec<Arc<Allocation>>,
    /// The current version's deployment and what it allows now.
    pub(crate) rollout: Rollout,
    /// Deployments to mark cancelled (superseded by a newer version, or the job stopped).
    pub cancel: Vec<Deployment>,
}

/// One instance to place: its group and index (`web[2]`), and the allocation it replaces.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub group: String,
    pub index: u32,
    /// The allocation this one replaces (lost, migrated, updated, finished or failed).
    pub previous: Option<Arc<Allocation>>,
    /// For the replacement of a failed allocation: the reschedule history it carries (with the
    /// new event last). Nodes in it are penalised.
    pub reschedule: Option<RescheduleTracker>,
    /// A canary of the deployment: runs next to the instance at its index until promoted.
    pub canary: bool,
}

/// What the reschedule policy says about a failed allocation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reschedule {
    /// Replace it now; the replacement carries this tracker.
    Now(RescheduleTracker),
    /// Replace it at this time (unix nanos).
    Later(i64),
    /// Attempts are used up (or the policy allows none): leave it failed.
    Never,
}

/// When the allocation last changed state: the latest task finish, else its modify time
/// (Nomad's `LastEventTime`).
fn last_event_time(a: &Allocation) -> i64 {
    a.task_states
        .values()
        .filter_map(|s| humantime::parse_rfc3339_weak(&s.finished_at).ok())
        .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .max()
        .unwrap_or(a.modify_time)
}

/// Decide what to do with failed allocation `a` under `policy`: Nomad's
/// `NextRescheduleTime` and `updateByReschedulable`, with the delay from
/// [`ReschedulePolicy::delay_for`] of the attempt number.
pub(crate) fn reschedule_decision(
    a: &Allocation,
    policy: Option<&ReschedulePolicy>,
    eval_id: &str,
    now: i64,
) -> Reschedule {
    let Some(p) = policy else {
        return Reschedule::Never;
    };
    let failed_at = last_event_time(a);
    let events: &[RescheduleEvent] = a
        .reschedule_tracker
        .as_ref()
        .map_or(&[], |t| t.events.as_slice());
    let attempt = u32::try_from(events.len() + 1).unwrap_or(u32::MAX);
    let delay = p.delay_for(attempt);
    let eligible = if p.unlimited {
        true
    } else if p.attempts == 0 {
        false
    } else {
        let attempted = events
            .iter()
            .filter(|e| failed_at.saturating_sub(e.reschedule_time) < p.interval)
            .count();
        attempted < p.attempts as usize && (events.is_empty() || delay < p.interval)
    };
    if !eligible {
        return Reschedule::Never;
    }
    let at = failed_at.saturating_add(delay);
    let followup_due = !a.followup_eval_id.is_empty() && a.followup_eval_id == eval_id;
    if !followup_due && at.saturating_sub(now) > RESCHEDULE_WINDOW {
        return Reschedule::Later(at);
    }
    // Carry the history: events within the interval (bounded policies) or the last few.
    let mut kept: Vec<RescheduleEvent> = if p.unlimited || p.attempts == 0 {
        events[events.len().saturating_sub(MAX_PAST_RESCHEDULE_EVENTS)..].to_vec()
    } else {
        events
            .iter()
            .filter(|e| p.interval > 0 && now.saturating_sub(e.reschedule_time) <= p.interval)
            .cloned()
            .collect()
    };
    kept.push(RescheduleEvent {
        reschedule_time: now,
        prev_alloc_id: a.id.clone(),
        prev_node_id: a.node_id.clone(),
        delay,
    });
    Reschedule::Now(RescheduleTracker { events: kept })
}

/// Whether going from `old` to `new` needs the allocation restarted (Nomad's `tasksUpdated`):
/// anything about the tasks but their services (save the services' Connect upstreams), the
/// network, volumes, ephemeral disk, or meta.
pub(crate) fn destructive(old_job: &Job, old: &TaskGroup, new_job: &Job, new: &TaskGroup) -> bool {
    if old_job.meta != new_job.meta
        || old.meta != new.meta
        || old.networks != new.networks
        || old.volumes != new.volumes
        || old.ephemeral_disk != new.ephemeral_disk
        || old.tasks.len() != new.tasks.len()
        || upstreams_changed(old, new)
    {
        return true;
    }
    old.tasks.iter().zip(&new.tasks).any(|(a, b)| {
        a.name != b.name
            || a.driver != b.driver
            || a.config != b.config
            || a.env != b.env
            || a.resources != b.resources
            || a.kill_timeout != b.kill_timeout
            || a.kill_signal != b.kill_signal
            || a.meta != b.meta
            || a.lifecycle != b.lifecycle
            || a.artifacts != b.artifacts
            || a.templates != b.templates
            || a.log_config != b.log_config
            || a.user != b.user
            || a.volume_mounts != b.volume_mounts
            || a.dispatch_payload != b.dispatch_payload
    })
}

/// Whether the group's Connect upstreams differ: tasks see them in their environment
/// (`NOMAD_UPSTREAM_ADDR_*`) and the listeners must be free on the node, so a change needs a new
/// allocation, placed like one (as Nomad treats Connect changes).
fn upstreams_changed(old: &TaskGroup, new: &TaskGroup) -> bool {
    !old.upstreams()
        .map(|(_, u)| u)
        .eq(new.upstreams().map(|(_, u)| u))
}

/// Whether allocation `a` runs an older version of `job` (by `job_modify_index`), and if so
/// whether moving it to the new version is destructive.
fn version_change(a: &Allocation, job: &Job, group: &TaskGroup) -> Option<bool> {
    let Some(old_job) = a.job.as_deref() else {
        return Some(true);
    };
    if old_job.job_modify_index == job.job_modify_index {
        return None;
    }
    Some(
        old_job
            .group(&a.task_group)
            .is_none_or(|old| destructive(old_job, old, job, group)),
    )
}

/// Compare the job's groups with the allocations that exist for it (service and batch jobs).
///
/// - A stopped or deleted job: every live allocation is stopped.
/// - An allocation whose node is down or unknown is lost and replaced.
/// - An allocation marked for migration (its node drains) is stopped and replaced elsewhere.
/// - A failed allocation follows the group's reschedule policy: replaced now when its delay has
///   passed, a follow-up when it has not, left failed when attempts are used up.
/// - An allocation of an older job version is replaced when the change is destructive, else
///   updated in place.
/// - Indexes `0..count` are kept filled; allocations at an index ≥ count, or duplicates, stop.
/// - A service allocation that completed is replaced; a batch one is done (never replaced,
///   unless the job changed destructively).
pub fn reconcile(state: &State, job: Option<&Job>, eval: &Evaluation, now: i64) -> Reconciled {
    let mut out = Reconciled::default();
    let all: Vec<&Arc<Allocation>> = state.allocs_by_job(&eval.namespace, &eval.job_id).collect();
    out.live = all
        .iter()
        .filter(|a| !a.terminal())
        .map(|a| (*a).clone())
        .collect();
    out.cancel = rollout::cancelled(state, job, &eval.namespace, &eval.job_id, now);

    let Some(job) = job.filter(|j| !j.stop) else {
        for a in all {
            if !a.desired_terminal() && !a.client_terminal() {
                out.stop
                    .push((a.clone(), ALLOC_DESIRED_STOP, DESC_JOB_STOPPED.into()));
            }
        }
        return out;
    };
    let batch = job.job_type == JOB_TYPE_BATCH || job.job_type == JOB_TYPE_SYSBATCH;

    // Group the allocations that still matter by task group and index, oldest first.
    // Canaries waiting for promotion stand beside the index they will take over.
    let mut by_group: BTreeMap<&str, BTreeMap<u32, Vec<&Arc<Allocation>>>> = BTreeMap::new();
    let mut canaries: Vec<&Arc<Allocation>> = Vec::new();
    for a in &all {
        // Stopped allocations are gone, except batch work that finished: it stays done.
        if a.desired_terminal() && !(batch && a.client_status == ALLOC_CLIENT_COMPLETE) {
            continue;
        }
        if state.unpromoted_canary(a) {
            if !a.terminal() {
                canaries.push(a);
            }
            continue;
        }
        let index = a.index().unwrap_or(u32::MAX);
        by_group
            .entry(a.task_group.as_str())
            .or_default()
            .entry(index)
            .or_default()
            .push(a);
    }
    for indexes in by_group.values_mut() {
        for allocs in indexes.values_mut() {
            allocs.sort_by(|a, b| (a.create_index, &a.id).cmp(&(b.create_index, &b.id)));
        }
    }

    for (group_name, indexes) in &by_group {
        if job.group(group_name).is_none() {
            for a in indexes.values().flatten() {
                if !a.terminal() {
                    out.stop
                        .push(((*a).clone(), ALLOC_DESIRED_STOP, DESC_GROUP_REMOVED.into()));
                }
            }
        }
    }

    out.rollout = plan_rollout(state, job, &by_group, &out.live, now);
    let running =
        out.rollout.deployment.as_ref().filter(|d| {
            d.status == DEPLOYMENT_STATUS_RUNNING || d.status == DEPLOYMENT_STATUS_PAUSED
        });
    for a in canaries {
        if running.is_none_or(|d| d.id != a.deployment_id) {
            out.stop
                .push((a.clone(), ALLOC_DESIRED_STOP, DESC_CANARY_ENDED.into()));
        }
    }

    let mut later: Vec<(String, i64)> = Vec::new();
    for group in &job.task_groups {
        let indexes = by_group.get(group.name.as_str());
        for index in 0..group.count {
            let allocs = indexes.and_then(|m| m.get(&index));
            let mut filled = false;
            let mut previous: Option<&Arc<Allocation>> = None;
            let mut reschedule: Option<(&Arc<Allocation>, RescheduleTracker)> = None;
            for a in allocs.into_iter().flatten() {
                if a.desired_terminal() {
                    // Batch work that finished.
                    filled = true;
                    continue;
                }
                if !a.next_allocation.is_empty() && a.client_terminal() {
                    // Already replaced.
                    continue;
                }
                let node_down = state
                    .node(&a.node_id)
                    .is_none_or(|n| n.status == NODE_STATUS_DOWN);
                if node_down && !a.client_terminal() {
                    out.lost.push((*a).clone());
                    previous = Some(a);
                    continue;
                }
                match a.client_status.as_str() {
                    ALLOC_CLIENT_COMPLETE => {
                        if batch && version_change(a, job, group) != Some(true) {
                            filled = true;
                        } else {
                            previous = Some(a);
                        }
                        continue;
                    }
                    ALLOC_CLIENT_LOST => {
                        if batch {
                            filled = true;
                        } else {
                            previous = Some(a);
                        }
                        continue;
                    }
                    ALLOC_CLIENT_FAILED => {
                        let policy = a
                            .group()
                            .and_then(|g| g.reschedule_policy.as_ref())
                            .or(group.reschedule_policy.as_ref());
                        match reschedule_decision(a, policy, &eval.id, now) {
                            Reschedule::Now(tracker) => reschedule = Some((a, tracker)),
                            Reschedule::Later(at) => {
                                filled = true;
                                if a.followup_eval_id.is_empty() {
                                    later.push((a.id.clone(), at));
                                }
                            }
                            Reschedule::Never => filled = true,
                        }
                        continue;
                    }
                    _ => {}
                }
                if a.desired_transition.migrate {
                    out.stop
                        .push(((*a).clone(), ALLOC_DESIRED_STOP, DESC_MIGRATING.into()));
                    previous = Some(a);
                    continue;
                }
                if filled {
                    out.stop
                        .push(((*a).clone(), ALLOC_DESIRED_STOP, DESC_DUPLICATE.into()));
                    continue;
                }
                match version_change(a, job, group) {
                    Some(true) => {
                        let replaced = allocs.into_iter().flatten().any(|b| {
                            b.id != a.id && !b.terminal() && version_change(b, job, group).is_none()
                        });
                        if replaced {
                            // A promoted canary of the new version holds this index now.
                            out.stop.push((
                                (*a).clone(),
                                ALLOC_DESIRED_STOP,
                                DESC_REPLACED_BY_CANARY.into(),
                            ));
                            continue;
                        }
                        if !out.rollout.take_update(&group.name) {
                            // Not yet: max_parallel new instances are still becoming healthy,
                            // or canaries wait for promotion.
                            filled = true;
                            continue;
                        }
                        out.stop
                            .push(((*a).clone(), ALLOC_DESIRED_STOP, DESC_UPDATING.into()));
                        previous = Some(a);
                        continue;
                    }
                    Some(false) => out.inplace.push((*a).clone()),
                    None => {}
                }
                filled = true;
            }
            if filled {
                continue;
            }
            out.place.push(match reschedule {
                Some((failed, tracker)) => Placement {
                    group: group.name.clone(),
                    index,
                    previous: Some(failed.clone()),
                    reschedule: Some(tracker),
                    canary: false,
                },
                None => Placement {
                    group: group.name.clone(),
                    index,
                    previous: previous.cloned(),
                    reschedule: None,
                    canary: false,
                },
            });
        }
        // Canaries of the new version, beside the first indexes without one.
        if let Some(gr) = out.rollout.groups.get(&group.name) {
            let free = (0..group.count.max(gr.canaries_to_place))
                .filter(|i| !gr.canary_indexes.contains(i))
                .take(gr.canaries_to_place as usize);
            for index in free {
                out.place.push(Placement {
                    group: group.name.clone(),
                    index,
                    previous: None,
                    reschedule: None,
                    canary: true,
                });
            }
        }
        // Scale down: anything at an index beyond the count.
        if let Some(indexes) = indexes {
            for (_, allocs) in indexes.range(group.count..) {
                for a in allocs {
                    if !a.terminal() {
                        out.stop
                            .push(((*a).clone(), ALLOC_DESIRED_STOP, DESC_NOT_NEEDED.into()));
                    }
                }
            }
        }
    }
    out.followups = batch_followups(later);
    out
}

/// The rollout for `job`: how many of each group's running instances need replacing by a new
/// version, and how many indexes are empty, decide whether a deployment is needed.
fn plan_rollout(
    state: &State,
    job: &Job,
    by_group: &BTreeMap<&str, BTreeMap<u32, Vec<&Arc<Allocation>>>>,
    live: &[Arc<Allocation>],
    now: i64,
) -> Rollout {
    let mut outdated: BTreeMap<&str, usize> = BTreeMap::new();
    let mut missing: BTreeMap<&str, u32> = BTreeMap::new();
    for group in &job.task_groups {
        let indexes = by_group.get(group.name.as_str());
        let mut filled = 0u32;
        for index in 0..group.count {
            let changes: Vec<Option<bool>> = indexes
                .and_then(|m| m.get(&index))
                .into_iter()
                .flatten()
                .filter(|a| !a.terminal())
                .map(|a| version_change(a, job, group))
                .collect();
            if changes.is_empty() {
                continue;
            }
            filled += 1;
            // Outdated: nothing of the current version here, something needing a replacement.
            if !changes.contains(&None) && changes.contains(&Some(true)) {
                *outdated.entry(group.name.as_str()).or_default() += 1;
            }
        }
        missing.insert(group.name.as_str(), group.count.saturating_sub(filled));
    }
    rollout::plan(state, job, live, &outdated, &missing, now)
}

/// Give follow-ups due within [`FOLLOWUP_BATCH_WINDOW`] of the first of a batch that first's
/// time, so the server makes one evaluation per batch (Nomad's `createRescheduleLaterEvals`).
fn batch_followups(mut later: Vec<(String, i64)>) -> Vec<(String, i64)> {
    later.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let mut start = None;
    for (_, at) in &mut later {
        match start {
            Some(s) if *at - s < FOLLOWUP_BATCH_WINDOW => *at = s,
            _ => start = Some(*at),
        }
    }
    later
}
