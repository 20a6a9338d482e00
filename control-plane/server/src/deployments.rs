//! The deployment watcher (Nomad's `deploymentwatcher` plus the client's allocation health
//! tracker, done on the server from what agents report).
//!
//! For every running deployment it:
//! - judges each of its allocations once: **healthy** when, for `min_healthy_time` without
//!   interruption, its tasks run and (with `health_check = "checks"`) every service it declares
//!   is in the catalog and passing; **unhealthy** when it fails or is not healthy by
//!   `healthy_deadline` after it was placed (`manual`: never judged here);
//! - counts placed, healthy and unhealthy allocations per group and moves `require_progress_by`
//!   on each newly healthy one;
//! - fails the deployment on an unhealthy allocation or a missed progress deadline, reverting
//!   the job to its latest stable version when a group has `auto_revert`;
//! - promotes canaries itself when every group with canaries has `auto_promote` and all of
//!   them are healthy;
//! - marks the deployment successful (and the job version stable) once every group is promoted
//!   and has `desired_total` healthy allocations;
//! - writes an evaluation whenever the rollout may take its next step.
//!
//! Every pass is a read-modify-write ([`Store::apply_with`]), so an operator's promote, pause or
//! fail in between is never overwritten.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_store::{Op, State, Store};
use flotilla_types::*;
use tracing::{info, warn};

/// How often deadlines and `min_healthy_time` are looked at when nothing else changes.
const TICK: Duration = Duration::from_millis(200);

/// When each allocation under watch was first seen healthy, without interruption since.
#[derive(Debug, Default)]
pub struct HealthClock {
    since: HashMap<String, i64>,
}

/// Follow running deployments until `shutdown` fires.
pub async fn run(store: Arc<dyn Store>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut changes = store.subscribe();
    let mut clock = HealthClock::default();
    loop {
        let now = crate::now_nanos();
        let result = store.apply_with(&mut |state| review(state, &mut clock, now, crate::new_id));
        if let Err(e) = result {
            warn!(error = %e, "deployment watcher: writing deployment state failed");
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// One pass over every running or paused deployment: the writes it calls for at `now`.
pub fn review(
    state: &State,
    clock: &mut HealthClock,
    now: i64,
    mut new_id: impl FnMut() -> String,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut watched: HashSet<String> = HashSet::new();
    for d in state.deployments.values().filter(|d| d.active()) {
        let Some(job) = state.job(&d.namespace, &d.job_id) else {
            continue;
        };
        ops.extend(review_one(
            state,
            job,
            d,
            clock,
            now,
            &mut new_id,
            &mut watched,
        ));
    }
    clock.since.retain(|id, _| watched.contains(id));
    ops
}

fn review_one(
    state: &State,
    job: &Job,
    d: &Deployment,
    clock: &mut HealthClock,
    now: i64,
    new_id: &mut impl FnMut() -> String,
    watched: &mut HashSet<String>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut next = d.clone();
    let mut progressed = false;
    let mut unhealthy = false;
    for g in next.task_groups.values_mut() {
        g.placed_allocs = 0;
        g.healthy_allocs = 0;
        g.unhealthy_allocs = 0;
        g.placed_canaries.clear();
    }
    let allocs = state
        .allocs_by_job(&d.namespace, &d.job_id)
        .filter(|a| a.deployment_id == d.id);
    for a in allocs {
        // Copied only when a verdict is written.
        let verdict = judge(state, a, clock, now, watched);
        if let Some(verdict) = verdict {
            let mut judged = (**a).clone();
            let status = judged
                .deployment_status
                .get_or_insert_with(Default::default);
            status.healthy = Some(verdict);
            status.timestamp = now;
            if verdict {
                progressed = true;
            } else {
                unhealthy = true;
                info!(alloc = %a.id, deployment = %d.id, "deployment: allocation unhealthy");
            }
            judged.modify_time = now;
            ops.push(Op::PutAlloc(judged));
        }
        let Some(g) = next.task_groups.get_mut(&a.task_group) else {
            continue;
        };
        g.placed_allocs += 1;
        if a.is_canary() {
            g.placed_canaries.push(a.id.clone());
        }
        match verdict.or(a.deployment_health()) {
            Some(true) if !a.desired_terminal() => g.healthy_allocs += 1,
            Some(false) => g.unhealthy_allocs += 1,
            _ => {}
        }
    }
    let running = d.status == DEPLOYMENT_STATUS_RUNNING;
    let mut promoted_now = false;
    let canary_groups: Vec<&DeploymentState> = next
        .task_groups
        .values()
        .filter(|g| g.desired_canaries > 0 && !g.promoted)
        .collect();
    let canaries_ready = canary_groups.iter().all(|g| canaries_healthy(state, g));
    if running
        && !canary_groups.is_empty()
        && canaries_ready
        && canary_groups.iter().all(|g| g.auto_promote)
    {
        for g in next.task_groups.values_mut() {
            if g.desired_canaries > 0 {
                g.promoted = true;
            }
        }
        promoted_now = true;
        info!(deployment = %d.id, job = %d.job_id, "deployment: canaries promoted automatically");
    }
    for g in next.task_groups.values_mut() {
        if g.progress_deadline <= 0 {
            continue;
        }
        let waiting = g.desired_canaries > 0 && !g.promoted && canaries_healthy(state, g);
        if progressed || waiting || promoted_now {
            // Healthy canaries waiting for an operator are not a stalled rollout.
            g.require_progress_by = now.saturating_add(g.progress_deadline);
        }
    }
    let missed_deadline = next
        .task_groups
        .values()
        .any(|g| g.require_progress_by > 0 && now > g.require_progress_by && !group_done(g));
    if running && (unhealthy || missed_deadline) {
        let why = if unhealthy {
            DEPLOYMENT_DESC_UNHEALTHY
        } else {
            DEPLOYMENT_DESC_PROGRESS_DEADLINE
        };
        let failed = state.fail_deployment_ops(&next, why, now, new_id());
        warn!(
            deployment = %d.id, job = %d.job_id, version = d.job_version,
            reverted_to = ?failed.reverted_to, "deployment failed: {why}"
        );
        ops.extend(failed.ops);
        return ops;
    }
    if running && next.task_groups.values().all(group_done) {
        next.status = DEPLOYMENT_STATUS_SUCCESSFUL.to_string();
        next.status_description = DEPLOYMENT_DESC_SUCCESSFUL.to_string();
        info!(deployment = %d.id, job = %d.job_id, version = d.job_version, "deployment successful");
        if job.version == d.job_version && !job.stable {
            let mut stable = job.clone();
            stable.stable = true;
            ops.push(Op::PutJob(stable));
        }
    } else if running {
        next.status_description = if next
            .task_groups
            .values()
            .any(|g| g.desired_canaries > 0 && !g.promoted)
        {
            if next
                .task_groups
                .values()
                .all(|g| g.auto_promote || g.desired_canaries == 0)
            {
                DEPLOYMENT_DESC_AUTO_PROMOTION
            } else {
                DEPLOYMENT_DESC_NEEDS_PROMOTION
            }
        } else {
            DEPLOYMENT_DESC_RUNNING
        }
        .to_string();
    }
    // Always a new evaluation: a pending one may already be planning from an older snapshot.
    if (progressed || promoted_now) && running {
        ops.push(Op::PutEval(Evaluation::for_job(
            job,
            TRIGGER_DEPLOYMENT_WATCHER,
            new_id(),
            now,
        )));
    }
    if next != *d {
        next.modify_time = now;
        ops.push(Op::PutDeployment(next));
    }
    ops.extend(canary_tag_ops(state, job));
    ops
}

/// A group is done when its canaries (if any) are promoted and it has as many healthy
/// allocations as it wants.
fn group_done(g: &DeploymentState) -> bool {
    (g.desired_canaries == 0 || g.promoted) && g.healthy_allocs >= g.desired_total
}

/// Every canary the group wants is placed and healthy.
fn canaries_healthy(state: &State, g: &DeploymentState) -> bool {
    state.healthy_canaries(g) >= g.desired_canaries as usize
}

/// The verdict on `a` reached at `now`, if one is due: `Some(true)` healthy, `Some(false)`
/// unhealthy. Allocations already judged, stopped or watched manually get none.
fn judge(
    state: &State,
    a: &Allocation,
    clock: &mut HealthClock,
    now: i64,
    watched: &mut HashSet<String>,
) -> Option<bool> {
    if a.deployment_health().is_some() || a.desired_terminal() {
        return None;
    }
    let group = a.group()?;
    let update = group.rolling_update()?;
    if update.health_check == "manual" {
        return None;
    }
    if a.client_status == ALLOC_CLIENT_FAILED || a.client_status == ALLOC_CLIENT_LOST {
        return Some(false);
    }
    watched.insert(a.id.clone());
    let tasks_running = a.client_status == ALLOC_CLIENT_RUNNING
        && group.tasks.iter().all(|t| {
            a.task_states
                .get(&t.name)
                .is_some_and(|s| s.state == "running" || t.lifecycle.is_some())
        });
    let checks_passing = update.health_check == "task_states" || {
        let registered: Vec<_> = state.services_by_alloc(&a.id).collect();
        registered.len() >= group.all_services().count() && registered.iter().all(|s| s.healthy())
    };
    if tasks_running && checks_passing {
        let since = *clock.since.entry(a.id.clone()).or_insert(now);
        if now.saturating_sub(since) >= update.min_healthy_time {
            return Some(true);
        }
    } else {
        clock.since.remove(&a.id);
    }
    // From when it joined the deployment (an instance updated in place joined late).
    let joined = a
        .deployment_status
        .as_ref()
        .map_or(a.create_time, |s| s.timestamp.max(a.create_time));
    if update.healthy_deadline > 0 && now.saturating_sub(joined) > update.healthy_deadline {
        return Some(false);
    }
    None
}

/// The tags a catalog registration of `svc` carries for allocation `a`: its `canary_tags`
/// while `a` is an unpromoted canary (when it has some), else its `tags`.
pub fn registration_tags<'s>(state: &State, a: &Allocation, svc: &'s Service) -> &'s [String] {
    if !svc.canary_tags.is_empty() && state.unpromoted_canary(a) {
        &svc.canary_tags
    } else {
        &svc.tags
    }
}

/// Registrations of the job's allocations whose tags no longer match (a promotion turned
/// canary tags back into the normal ones).
fn canary_tag_ops(state: &State, job: &Job) -> Vec<Op> {
    let mut ops = Vec::new();
    for a in state
        .allocs_by_job(&job.namespace, &job.id)
        .filter(|a| !a.terminal() && a.is_canary())
    {
        let Some(group) = a.group() else { continue };
        for reg in state.services_by_alloc(&a.id) {
            let Some(svc) = group.all_services().find(|s| s.name == reg.service_name) else {
                continue;
            };
            let tags = registration_tags(state, a, svc);
            if reg.tags != tags {
                let mut r = (**reg).clone();
                r.tags = tags.to_vec();
                ops.push(Op::PutService(r));
            }
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_store::MemStore;

    const S: i64 = NANOS_PER_SEC;

    fn job(version: u64, update: UpdateStrategy) -> Job {
        let mut j = Job {
            id: "web".into(),
            job_type: JOB_TYPE_SERVICE.into(),
            version,
            task_groups: vec![TaskGroup {
                name: "g".into(),
                count: 2,
                update: Some(update),
                tasks: vec![Task {
                    name: "t".into(),
                    env: [("V".to_string(), version.to_string())].into(),
                    ..Default::default()
                }],
                services: vec![Service {
                    name: "web".into(),
                    port_label: "http".into(),
                    tags: vec!["urlprefix-/".into()],
                    canary_tags: vec!["canary".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        j.canonicalize();
        j
    }

    fn update() -> UpdateStrategy {
        UpdateStrategy {
            max_parallel: 1,
            health_check: "checks".into(),
            min_healthy_time: 2 * S,
            healthy_deadline: 10 * S,
            progress_deadline: 0,
            ..Default::default()
        }
    }

    fn deployment(job: &Job, canaries: u32) -> Deployment {
        let u = job.task_groups[0].update.clone().unwrap();
        Deployment {
            id: "d".into(),
            namespace: "default".into(),
            job_id: job.id.clone(),
            job_version: job.version,
            job_create_index: job.create_index,
            status: DEPLOYMENT_STATUS_RUNNING.into(),
            task_groups: [(
                "g".to_string(),
                DeploymentState {
                    auto_revert: u.auto_revert,
                    auto_promote: u.auto_promote,
                    progress_deadline: u.progress_deadline,
                    desired_canaries: canaries,
                    desired_total: 2,
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    fn alloc(id: &str, job: &Job, canary: bool, created: i64) -> Allocation {
        Allocation {
            id: id.into(),
            name: format!("web.g[{}]", if canary { 0 } else { 1 }),
            namespace: "default".into(),
            job_id: job.id.clone(),
            job: Some(Arc::new(job.clone())),
            task_group: "g".into(),
            desired_status: ALLOC_DESIRED_RUN.into(),
            client_status: ALLOC_CLIENT_RUNNING.into(),
            task_states: [(
                "t".to_string(),
                TaskState {
                    state: "running".into(),
                    ..Default::default()
                },
            )]
            .into(),
            deployment_id: "d".into(),
            deployment_status: canary.then(|| AllocDeploymentStatus {
                canary: true,
                ..Default::default()
            }),
            create_time: created,
            ..Default::default()
        }
    }

    fn registration(alloc: &str, status: &str, tags: &[&str]) -> ServiceRegistration {
        ServiceRegistration {
            id: format!("reg-{alloc}"),
            service_name: "web".into(),
            namespace: "default".into(),
            job_id: "web".into(),
            alloc_id: alloc.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            status: status.into(),
            ..Default::default()
        }
    }

    /// Run one watcher pass at `now` and commit it.
    fn pass(store: &MemStore, clock: &mut HealthClock, now: i64) {
        let mut n = 0;
        store
            .apply_with(&mut |state| {
                review(state, clock, now, || {
                    n += 1;
                    format!("id-{now}-{n}")
                })
            })
            .unwrap();
    }

    fn health(store: &MemStore, id: &str) -> Option<bool> {
        store.snapshot().alloc(id).unwrap().deployment_health()
    }

    #[test]
    fn healthy_after_min_healthy_time_then_successful_and_stable() {
        let j = job(1, update());
        let store = MemStore::new();
        store
            .apply(vec![
                Op::PutJob(j.clone()),
                Op::PutDeployment(deployment(&j, 0)),
                Op::PutAlloc(alloc("a1", &j, false, 0)),
                Op::PutAlloc(alloc("a2", &j, false, 0)),
                Op::PutService(registration("a1", HEALTH_PASSING, &["urlprefix-/"])),
                Op::PutService(registration("a2", HEALTH_CRITICAL, &["urlprefix-/"])),
            ])
            .unwrap();
        let mut clock = HealthClock::default();
        pass(&store, &mut clock, S);
        assert_eq!(health(&store, "a1"), None, "not healthy for 2 s yet");
        pass(&store, &mut clock, 3 * S - 1);
        assert_eq!(health(&store, "a1"), None);
        pass(&store, &mut clock, 3 * S);
        assert_eq!(health(&store, "a1"), Some(true));
        assert_eq!(health(&store, "a2"), None, "its check is failing");
        let state = store.snapshot();
        let d = state.deployment("d").unwrap();
        assert_eq!(d.task_groups["g"].healthy_allocs, 1);
        assert_eq!(d.task_groups["g"].placed_allocs, 2);
        assert_eq!(d.status, DEPLOYMENT_STATUS_RUNNING);
        assert!(
            state
                .pending_evals()
                .any(|e| e.triggered_by == TRIGGER_DEPLOYMENT_WATCHER),
            "a healthy instance lets the rollout take its next step"
        );

        // a2's check passes, fails again (the clock restarts), then passes for long enough.
        store
            .apply(vec![Op::PutService(registration(
                "a2",
                HEALTH_PASSING,
                &[],
            ))])
            .unwrap();
        pass(&store, &mut clock, 4 * S);
        store
            .apply(vec![Op::PutService(registration(
                "a2",
                HEALTH_CRITICAL,
                &[],
            ))])
            .unwrap();
        pass(&store, &mut clock, 5 * S);
        store
            .apply(vec![Op::PutService(registration(
                "a2",
                HEALTH_PASSING,
                &[],
            ))])
            .unwrap();
        pass(&store, &mut clock, 6 * S);
        pass(&store, &mut clock, 7 * S);
        assert_eq!(
            health(&store, "a2"),
            None,
            "interrupted: 2 s not yet reached"
        );
        pass(&store, &mut clock, 8 * S);
        assert_eq!(health(&store, "a2"), Some(true));
        pass(&store, &mut clock, 8 * S + 1);
        let state = store.snapshot();
        let d = state.deployment("d").unwrap();
        assert_eq!(d.status, DEPLOYMENT_STATUS_SUCCESSFUL, "{d:?}");
        assert_eq!(d.status_description, DEPLOYMENT_DESC_SUCCESSFUL);
        assert!(state.job("default", "web").unwrap().stable);
        assert!(state.job_version("default", "web", 1).unwrap().stable);
    }

    #[test]
    fn unhealthy_by_the_deadline_fails_and_reverts_to_the_stable_version() {
        let mut u = update();
        u.auto_revert = true;
        let mut v1 = job(1, u.clone());
        v1.stable = true;
        let v2 = job(2, u);
        let store = MemStore::new();
        store.apply(vec![Op::PutJob(v1)]).unwrap();
        store
            .apply(vec![
                Op::PutJob(v2.clone()),
                Op::PutDeployment(deployment(&v2, 0)),
                Op::PutAlloc(alloc("a1", &v2, false, 0)),
                Op::PutService(registration("a1", HEALTH_CRITICAL, &[])),
            ])
            .unwrap();
        let mut clock = HealthClock::default();
        pass(&store, &mut clock, 9 * S);
        assert_eq!(health(&store, "a1"), None);
        pass(&store, &mut clock, 10 * S + 1);
        assert_eq!(health(&store, "a1"), Some(false));
        let state = store.snapshot();
        let d = state.deployment("d").unwrap();
        assert_eq!(d.status, DEPLOYMENT_STATUS_FAILED);
        assert_eq!(
            d.status_description,
            "Failed due to unhealthy allocations - rolling back to job version 1"
        );
        let job = state.job("default", "web").unwrap();
        assert_eq!(job.version, 3, "the revert is a new version");
        assert_eq!(
            job.task_groups[0].tasks[0].env["V"], "1",
            "with version 1's spec"
        );
        assert!(!job.stable);
        assert!(
            state
                .pending_evals()
                .any(|e| e.triggered_by == TRIGGER_JOB_REVERT)
        );
    }

    #[test]
    fn a_failed_allocation_fails_the_deployment_without_revert() {
        let j = job(1, update());
        let store = MemStore::new();
        let mut a = alloc("a1", &j, false, 0);
        a.client_status = ALLOC_CLIENT_FAILED.into();
        store
            .apply(vec![
                Op::PutJob(j.clone()),
                Op::PutDeployment(deployment(&j, 0)),
                Op::PutAlloc(a),
            ])
            .unwrap();
        pass(&store, &mut HealthClock::default(), S);
        let state = store.snapshot();
        let d = state.deployment("d").unwrap();
        assert_eq!(d.status, DEPLOYMENT_STATUS_FAILED);
        assert_eq!(d.status_description, DEPLOYMENT_DESC_UNHEALTHY);
        assert_eq!(state.job("default", "web").unwrap().version, 1);
    }

    #[test]
    fn progress_deadline_fails_a_stalled_rollout() {
        let mut u = update();
        u.healthy_deadline = 0;
        u.progress_deadline = 5 * S;
        let j = job(1, u);
        let store = MemStore::new();
        let mut d = deployment(&j, 0);
        d.task_groups.get_mut("g").unwrap().require_progress_by = 5 * S;
        store
            .apply(vec![
                Op::PutJob(j.clone()),
                Op::PutDeployment(d),
                Op::PutAlloc(alloc("a1", &j, false, 0)),
            ])
            .unwrap();
        let mut clock = HealthClock::default();
        pass(&store, &mut clock, 4 * S);
        assert_eq!(
            store.snapshot().deployment("d").unwrap().status,
            DEPLOYMENT_STATUS_RUNNING
        );
        pass(&store, &mut clock, 5 * S + 1);
        let d = store.snapshot().deployment("d").unwrap().clone();
        assert_eq!(d.status, DEPLOYMENT_STATUS_FAILED);
        assert_eq!(d.status_description, DEPLOYMENT_DESC_PROGRESS_DEADLINE);
    }

    #[test]
    fn canaries_carry_canary_tags_and_auto_promote_when_healthy() {
        let mut u = update();
        u.canary = 1;
        u.auto_promote = true;
        let j = job(1, u);
        let store = MemStore::new();
        store
            .apply(vec![
                Op::PutJob(j.clone()),
                Op::PutDeployment(deployment(&j, 1)),
                Op::PutAlloc(alloc("c1", &j, true, 0)),
                Op::PutService(registration("c1", HEALTH_PASSING, &["urlprefix-/"])),
            ])
            .unwrap();
        let mut clock = HealthClock::default();
        pass(&store, &mut clock, S);
        let state = store.snapshot();
        assert_eq!(state.services["reg-c1"].tags, vec!["canary"]);
        assert_eq!(
            state.deployment("d").unwrap().status_description,
            DEPLOYMENT_DESC_AUTO_PROMOTION
        );
        pass(&store, &mut clock, 3 * S);
        assert_eq!(health(&store, "c1"), Some(true));
        pass(&store, &mut clock, 3 * S + 1);
        let state = store.snapshot();
        assert!(state.deployment("d").unwrap().task_groups["g"].promoted);
        pass(&store, &mut clock, 3 * S + 2);
        assert_eq!(
            store.snapshot().services["reg-c1"].tags,
            vec!["urlprefix-/"],
            "promoted: the normal tags again"
        );
    }

    #[test]
    fn manual_promotion_is_awaited() {
        let mut u = update();
        u.canary = 1;
        let j = job(1, u);
        let store = MemStore::new();
        store
            .apply(vec![
                Op::PutJob(j.clone()),
                Op::PutDeployment(deployment(&j, 1)),
                Op::PutAlloc(alloc("c1", &j, true, 0)),
                Op::PutService(registration("c1", HEALTH_PASSING, &[])),
            ])
            .unwrap();
        let mut clock = HealthClock::default();
        for t in [S, 3 * S, 4 * S, 60 * S] {
            pass(&store, &mut clock, t);
        }
        let state = store.snapshot();
        let d = state.deployment("d").unwrap();
        assert!(!d.task_groups["g"].promoted);
        assert_eq!(d.status, DEPLOYMENT_STATUS_RUNNING);
        assert_eq!(d.status_description, DEPLOYMENT_DESC_NEEDS_PROMOTION);
    }
}
