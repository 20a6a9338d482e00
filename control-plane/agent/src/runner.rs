//! The alloc runner: one per allocation.
//!
//! An [`AllocHandle`] owns one allocation: one [task runner](crate::task) per task, started
//! in [lifecycle](crate::lifecycle) order, one loop per service check (with `check_restart`
//! watching), the allocation's status, which it recomputes on every change and hands to the
//! [`Reporter`] when it differs from what was last reported, and its
//! [persisted state](crate::state), rewritten on every task change so that a restarted agent
//! can re-attach to the tasks.
//!
//! Stopping an allocation stops its tasks (main tasks, then sidecars, then runs the poststop
//! tasks); detaching (agent shutdown without `stop_tasks_on_shutdown`) leaves them running.
//!
//! Stops are traffic-aware: when the allocation itself is stopped ([`AllocHandle::stop`]: the
//! server stopped or evicted it and already removed its services from the catalog, so every
//! proxy is dropping it from its endpoints) each running task keeps running for its
//! [`shutdown_delay`] (counted from the stop) before it gets its kill signal, so requests
//! already routed to it still find it. A stop for the agent's own shutdown
//! ([`AllocHandle::stop_now`]) does not wait, and cuts a delay already running short.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flotilla_drivers::Drivers;
use flotilla_proto::agent::v1 as pb;
use flotilla_types::{
    ALLOC_CLIENT_COMPLETE, ALLOC_CLIENT_FAILED, ALLOC_CLIENT_PENDING, ALLOC_CLIENT_RUNNING,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::checks::{self, CheckRestartWatch, CheckResult, CheckUpdate};
use crate::env::NodeContext;
use crate::lifecycle::{Hook, Lifecycle, Orchestrator, Step, StopCause};
use crate::report::Reporter;
use crate::state::{SavedAlloc, SavedTask};
use crate::task::{RestartReason, TaskControl, TaskRunner, TaskUpdate};

/// Task states (Nomad's names).
pub const TASK_PENDING: &str = "pending";
pub const TASK_RUNNING: &str = "running";
pub const TASK_DEAD: &str = "dead";

/// What every alloc runner shares.
#[derive(Debug)]
pub struct RunnerContext {
    pub data_dir: PathBuf,
    pub node: NodeContext,
    pub drivers: Drivers,
    pub reporter: Reporter,
    pub http: reqwest::Client,
    /// The node's host volumes: name → path.
    pub host_volumes: BTreeMap<String, PathBuf>,
}

/// How an allocation was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// The allocation is stopped: its services have left the catalog. Each running task gets
    /// its kill signal once its [`shutdown_delay`] has passed since `since`.
    Drain { since: Instant },
    /// Stop every task at once (the agent is shutting down).
    Now,
}

/// A task's effective shutdown delay: the larger of its group's `shutdown_delay` and its own.
pub fn shutdown_delay(alloc: &pb::Allocation, task: &pb::Task) -> Duration {
    Duration::from_millis(alloc.shutdown_delay_ms.max(task.shutdown_delay_ms))
}

/// A running allocation.
#[derive(Debug)]
pub struct AllocHandle {
    stop: watch::Sender<Option<StopRequest>>,
    detach: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    controls: BTreeMap<String, TaskControl>,
}

impl AllocHandle {
    /// Starts running `alloc`. With `restored` (its state saved by an earlier agent), tasks
    /// that were running are re-attached to, tasks that had ended stay ended, and the rest
    /// start as usual.
    pub fn spawn(
        ctx: Arc<RunnerContext>,
        alloc: pb::Allocation,
        restored: Option<SavedAlloc>,
    ) -> Self {
        let (stop_tx, stop_rx) = watch::channel(None);
        let (detach_tx, detach_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        let mut controls = BTreeMap::new();
        let mut receivers = BTreeMap::new();
        for task in &alloc.tasks {
            let (control, rx) = TaskControl::channel();
            controls.insert(task.name.clone(), control);
            receivers.insert(task.name.clone(), rx);
        }
        tokio::spawn(run_alloc(
            ctx,
            alloc,
            restored,
            Signals {
                stop: stop_rx,
                detach: detach_rx,
                done: done_tx,
            },
            controls.clone(),
            receivers,
        ));
        Self {
            stop: stop_tx,
            detach: detach_tx,
            done: done_rx,
            controls,
        }
    }

    /// Stops the allocation: each task gets its kill signal (then kill timeout, then SIGKILL)
    /// once its shutdown delay has passed. Idempotent; the delay counts from the first call.
    pub fn stop(&self) {
        self.stop.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(StopRequest::Drain {
                    since: Instant::now(),
                });
                true
            } else {
                false
            }
        });
    }

    /// Stops every task without waiting for shutdown delays (also those already running):
    /// kill signal, kill timeout, then SIGKILL. Idempotent.
    pub fn stop_now(&self) {
        self.stop.send_if_modified(|current| {
            let changed = *current != Some(StopRequest::Now);
            *current = Some(StopRequest::Now);
            changed
        });
    }

    /// Lets go of the tasks without stopping them (the agent is shutting down and a later
    /// agent re-attaches). Idempotent.
    pub fn detach(&self) {
        self.detach.send_replace(true);
    }

    /// Every task has ended (or been let go) and the final status was handed to the reporter.
    pub fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    /// A receiver that turns true when the allocation is done.
    pub fn done_receiver(&self) -> watch::Receiver<bool> {
        self.done.clone()
    }

    /// Per task: where to send restart and signal requests.
    pub fn controls(&self) -> &BTreeMap<String, TaskControl> {
        &self.controls
    }

    /// Waits until the allocation is done.
    pub async fn wait(&self) {
        let mut done = self.done.clone();
        // Err: the runner vanished (runtime shutting down), which also means done.
        let _ = done.wait_for(|d| *d).await;
    }
}

struct Signals {
    stop: watch::Receiver<Option<StopRequest>>,
    detach: watch::Receiver<bool>,
    done: watch::Sender<bool>,
}

/// The allocation's status as the runner sees it.
#[derive(Debug, Clone)]
struct AllocState {
    tasks: BTreeMap<String, pb::TaskState>,
    /// Per service, per check: the latest result (None before the first).
    checks: Vec<Vec<Option<CheckResult>>>,
    last_reported: Option<pb::AllocationStatus>,
}

/// One task as the alloc runner drives it.
struct TaskSlot {
    gate: watch::Sender<bool>,
    stop: watch::Sender<Option<StopCause>>,
    /// When the runner last saw the task (re)start, for `check_restart`'s grace.
    started: Option<Instant>,
}

async fn run_alloc(
    ctx: Arc<RunnerContext>,
    alloc: pb::Allocation,
    restored: Option<SavedAlloc>,
    mut signals: Signals,
    controls: BTreeMap<String, TaskControl>,
    mut receivers: BTreeMap<String, mpsc::UnboundedReceiver<crate::task::TaskCommand>>,
) {
    let alloc = Arc::new(alloc);
    let restored_tasks = restored.map(|r| r.tasks).unwrap_or_default();
    tracing::info!(
        alloc_id = %alloc.id,
        name = %alloc.name,
        tasks = alloc.tasks.len(),
        restored = !restored_tasks.is_empty(),
        "starting allocation"
    );
    let mut saved = SavedAlloc {
        alloc: (*alloc).clone(),
        tasks: alloc
            .tasks
            .iter()
            .map(|t| {
                let prior = restored_tasks.get(&t.name).cloned();
                let task = prior.unwrap_or_else(|| SavedTask {
                    state: pb::TaskState {
                        state: TASK_PENDING.into(),
                        ..Default::default()
                    },
                    handle: None,
                });
                (t.name.clone(), task)
            })
            .collect(),
    };
    let mut state = AllocState {
        tasks: saved
            .tasks
            .iter()
            .map(|(n, t)| (n.clone(), t.state.clone()))
            .collect(),
        checks: alloc
            .services
            .iter()
            .map(|s| vec![None; s.checks.len()])
            .collect(),
        last_reported: None,
    };
    let mut orchestrator = Orchestrator::new(
        alloc
            .tasks
            .iter()
            .map(|t| (t.name.clone(), Lifecycle::of(t)))
            .collect(),
    );
    let lifecycles = orchestrator.lifecycles();
    persist(&ctx, &saved).await;
    report_if_changed(&ctx.reporter, &alloc, &lifecycles, &mut state);

    let (task_tx, mut task_rx) = mpsc::unbounded_channel::<TaskUpdate>();
    let (check_tx, mut check_rx) = mpsc::unbounded_channel::<CheckUpdate>();
    // When the allocation's stop (with shutdown delays) was asked; None: kill at once.
    let (drain_tx, drain_rx) = watch::channel::<Option<Instant>>(None);

    let mut slots: BTreeMap<String, TaskSlot> = BTreeMap::new();
    let mut tasks = JoinSet::new();
    for task in &alloc.tasks {
        let (gate_tx, gate_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel::<Option<StopCause>>(None);
        let prior = saved.tasks.get(&task.name).cloned();
        let (task_state, handle) = match prior {
            Some(p) => (p.state, p.handle),
            None => (pb::TaskState::default(), None),
        };
        let running_since = handle.as_ref().map(|_| Instant::now());
        slots.insert(
            task.name.clone(),
            TaskSlot {
                gate: gate_tx,
                stop: stop_tx,
                started: running_since,
            },
        );
        let Some(commands) = receivers.remove(&task.name) else {
            continue;
        };
        if handle.is_none() && task_state.state == TASK_DEAD {
            // It ended for good before the agent restarted: nothing to run.
            continue;
        }
        let runner = TaskRunner {
            ctx: ctx.clone(),
            alloc: alloc.clone(),
            task: task.clone(),
            lifecycle: lifecycles
                .get(&task.name)
                .copied()
                .unwrap_or(Lifecycle::MAIN),
            state: task_state,
            recover: handle,
            updates: task_tx.clone(),
            stop: stop_rx,
            gate: gate_rx,
            commands,
            shutdown_delay: shutdown_delay(&alloc, task),
            drain: drain_rx.clone(),
        };
        tasks.spawn(runner.run());
    }
    drop(task_tx);

    let mut check_loops = JoinSet::new();
    let mut watchers: Vec<Vec<Option<CheckRestartWatch>>> = Vec::new();
    for (si, service) in alloc.services.iter().enumerate() {
        watchers.push(
            service
                .checks
                .iter()
                .map(CheckRestartWatch::from_check)
                .collect(),
        );
        for ci in 0..service.checks.len() {
            check_loops.spawn(checks::run_loop(
                ctx.http.clone(),
                (*alloc).clone(),
                si,
                ci,
                ctx.node.address.clone(),
                check_tx.clone(),
            ));
        }
    }
    drop(check_tx);

    let mut stopping = false;
    // A stop at once was asked (or the handle is gone): nothing more to hear on `stop`.
    let mut stop_settled = false;
    let mut detaching = false;
    // The handle was dropped without detaching: only `stop` matters then.
    let mut detach_gone = false;
    apply(orchestrator.advance(&state.tasks, stopping), &slots);
    while !tasks.is_empty() {
        tokio::select! {
            Some(update) = task_rx.recv() => {
                record(&mut state, &mut saved, &mut slots, &alloc, &mut watchers, update);
                persist(&ctx, &saved).await;
            }
            Some(update) = check_rx.recv() => {
                check_restart(&alloc, &lifecycles, &slots, &controls, &mut watchers, &update);
                if let Some(slot) = state.checks.get_mut(update.service).and_then(|s| s.get_mut(update.check)) {
                    *slot = Some(update.result);
                }
            }
            changed = signals.stop.changed(), if !stop_settled => {
                // Err: the handle was dropped, which means stop at once.
                let request = if changed.is_err() {
                    Some(StopRequest::Now)
                } else {
                    *signals.stop.borrow()
                };
                match request {
                    Some(StopRequest::Drain { since }) if !stopping => {
                        stopping = true;
                        drain_tx.send_replace(Some(since));
                        let longest = alloc
                            .tasks
                            .iter()
                            .map(|t| shutdown_delay(&alloc, t))
                            .max()
                            .unwrap_or_default();
                        tracing::info!(
                            alloc_id = %alloc.id,
                            shutdown_delay = %human(longest),
                            "stopping allocation; tasks get their kill signal after their shutdown delay"
                        );
                    }
                    Some(StopRequest::Now) => {
                        stop_settled = true;
                        if drain_tx.send_replace(None).is_some() {
                            tracing::info!(alloc_id = %alloc.id, "stopping allocation now; shutdown delays cut short");
                        } else if !stopping {
                            tracing::info!(alloc_id = %alloc.id, "stopping allocation");
                        }
                        stopping = true;
                    }
                    _ => {}
                }
            }
            changed = signals.detach.changed(), if !detaching && !detach_gone => {
                if changed.is_err() {
                    detach_gone = true;
                } else if *signals.detach.borrow() {
                    detaching = true;
                    tracing::info!(alloc_id = %alloc.id, "leaving the allocation's tasks running");
                    for slot in slots.values() {
                        slot.stop.send_replace(Some(StopCause::Detach));
                    }
                }
            }
            joined = tasks.join_next() => {
                if let Some(Err(err)) = joined {
                    tracing::error!(alloc_id = %alloc.id, error = %err, "task runner crashed");
                }
            }
        }
        if !detaching {
            apply(orchestrator.advance(&state.tasks, stopping), &slots);
            report_if_changed(&ctx.reporter, &alloc, &lifecycles, &mut state);
        }
    }
    // Every task runner has returned; take their last words.
    while let Ok(update) = task_rx.try_recv() {
        record(
            &mut state,
            &mut saved,
            &mut slots,
            &alloc,
            &mut watchers,
            update,
        );
    }
    check_loops.abort_all();
    persist(&ctx, &saved).await;
    if detaching {
        tracing::info!(alloc_id = %alloc.id, "allocation detached");
    } else {
        report_if_changed(&ctx.reporter, &alloc, &lifecycles, &mut state);
        tracing::info!(
            alloc_id = %alloc.id,
            status = state.last_reported.as_ref().map(|s| s.client_status.as_str()).unwrap_or(""),
            "allocation finished"
        );
    }
    signals.done.send_replace(true);
}

/// Takes a task runner's news into the status and the persisted state.
fn record(
    state: &mut AllocState,
    saved: &mut SavedAlloc,
    slots: &mut BTreeMap<String, TaskSlot>,
    alloc: &pb::Allocation,
    watchers: &mut [Vec<Option<CheckRestartWatch>>],
    update: TaskUpdate,
) {
    let TaskUpdate {
        name,
        state: ts,
        handle,
    } = update;
    if let Some(slot) = slots.get_mut(&name) {
        let previous = state.tasks.get(&name);
        let restarted = ts.state == TASK_RUNNING
            && previous.is_none_or(|p| p.state != TASK_RUNNING || p.started_at != ts.started_at);
        if restarted {
            slot.started = Some(Instant::now());
            // Failures counted against the previous run do not carry over.
            for (si, service) in alloc.services.iter().enumerate() {
                if service.task.is_empty() || service.task == name {
                    for w in watchers.get_mut(si).into_iter().flatten().flatten() {
                        w.reset();
                    }
                }
            }
        } else if ts.state != TASK_RUNNING {
            slot.started = None;
        }
    }
    saved.tasks.insert(
        name.clone(),
        SavedTask {
            state: ts.clone(),
            handle,
        },
    );
    state.tasks.insert(name, ts);
}

/// Feeds a check result to its `check_restart` watcher and restarts the service's task(s)
/// when the watcher says so.
fn check_restart(
    alloc: &pb::Allocation,
    lifecycles: &BTreeMap<String, Lifecycle>,
    slots: &BTreeMap<String, TaskSlot>,
    controls: &BTreeMap<String, TaskControl>,
    watchers: &mut [Vec<Option<CheckRestartWatch>>],
    update: &CheckUpdate,
) {
    let Some(watch) = watchers
        .get_mut(update.service)
        .and_then(|s| s.get_mut(update.check))
        .and_then(Option::as_mut)
    else {
        return;
    };
    let Some(service) = alloc.services.get(update.service) else {
        return;
    };
    // Group services restart the main tasks.
    let targets: Vec<&str> = if service.task.is_empty() {
        lifecycles
            .iter()
            .filter(|(_, lc)| lc.hook == Hook::Main)
            .map(|(n, _)| n.as_str())
            .collect()
    } else {
        vec![service.task.as_str()]
    };
    // The grace period runs from the (last) start of the youngest target.
    let since_start = targets
        .iter()
        .map(|t| slots.get(*t).and_then(|s| s.started).map(|i| i.elapsed()))
        .try_fold(Duration::MAX, |acc, d| d.map(|d| acc.min(d)));
    if !watch.observe(&update.result, since_start) {
        return;
    }
    let check_name = service
        .checks
        .get(update.check)
        .map(|c| c.name.as_str())
        .unwrap_or("");
    let why = format!(
        "check {check_name:?} of service {:?} unhealthy: {}",
        service.name, update.result.output
    );
    tracing::info!(alloc_id = %alloc.id, service = %service.name, check = %check_name, "check_restart limit reached, restarting");
    for t in targets {
        if let Some(control) = controls.get(t) {
            control.request_restart(RestartReason::CheckUnhealthy(why.clone()));
        }
    }
}

/// Carries out the orchestrator's steps.
fn apply(steps: Vec<Step>, slots: &BTreeMap<String, TaskSlot>) {
    for step in steps {
        match step {
            Step::Open(name) => {
                if let Some(slot) = slots.get(&name) {
                    slot.gate.send_replace(true);
                }
            }
            Step::Stop(name, cause) => {
                if let Some(slot) = slots.get(&name) {
                    slot.stop.send_if_modified(|current| {
                        if current.is_none() {
                            *current = Some(cause.clone());
                            true
                        } else {
                            false
                        }
                    });
                }
            }
        }
    }
}

async fn persist(ctx: &RunnerContext, saved: &SavedAlloc) {
    if let Err(err) = crate::state::save(&ctx.data_dir, saved).await {
        tracing::warn!(alloc_id = %saved.alloc.id, error = %err, "cannot save the allocation's state; a restarted agent may not find its tasks");
    }
}

fn report_if_changed(
    reporter: &Reporter,
    alloc: &pb::Allocation,
    lifecycles: &BTreeMap<String, Lifecycle>,
    state: &mut AllocState,
) {
    let status = alloc_status(alloc, lifecycles, &state.tasks, &state.checks);
    if state.last_reported.as_ref() != Some(&status) {
        tracing::debug!(alloc_id = %alloc.id, status = %status.client_status, "allocation status changed");
        reporter.update(status.clone());
        state.last_reported = Some(status);
    }
}

/// The allocation's client status from its tasks: `failed` if any task failed for good,
/// `complete` when all are dead, `running` once every main task (every task when there are no
/// main tasks) has started at least once, else `pending`. Hook tasks that have not run yet
/// (poststart, poststop) do not hold the allocation in `pending`.
pub fn client_status(
    tasks: &BTreeMap<String, pb::TaskState>,
    lifecycles: &BTreeMap<String, Lifecycle>,
) -> (&'static str, &'static str) {
    if tasks.values().any(|t| t.failed) {
        return (ALLOC_CLIENT_FAILED, "Failed tasks");
    }
    if tasks.values().all(|t| t.state == TASK_DEAD) {
        return (ALLOC_CLIENT_COMPLETE, "All tasks have completed");
    }
    let is_main = |name: &str| lifecycles.get(name).is_none_or(|lc| lc.hook == Hook::Main);
    let has_main = tasks.keys().any(|n| is_main(n));
    if tasks
        .iter()
        .filter(|(n, _)| !has_main || is_main(n))
        .all(|(_, t)| !t.started_at.is_empty())
    {
        return (ALLOC_CLIENT_RUNNING, "Tasks are running");
    }
    (ALLOC_CLIENT_PENDING, "No tasks have started")
}

/// Health of each service: its task (or, for group services, every main task and sidecar)
/// runs and every check passes.
pub fn service_health(
    alloc: &pb::Allocation,
    lifecycles: &BTreeMap<String, Lifecycle>,
    tasks: &BTreeMap<String, pb::TaskState>,
    check_results: &[Vec<Option<CheckResult>>],
) -> Vec<pb::ServiceHealth> {
    let running = |name: &str| tasks.get(name).is_some_and(|t| t.state == TASK_RUNNING);
    let long_running = |name: &str| lifecycles.get(name).is_none_or(|lc| !lc.ephemeral());
    alloc
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let task_ok = if s.task.is_empty() {
                !tasks.is_empty() && tasks.keys().filter(|t| long_running(t)).all(|t| running(t))
            } else {
                running(&s.task)
            };
            let results = check_results.get(i).map(Vec::as_slice).unwrap_or(&[]);
            let checks_ok = results
                .iter()
                .all(|r| r.as_ref().is_some_and(|r| r.passing));
            let output = if !task_ok {
                if s.task.is_empty() {
                    "tasks are not running".to_string()
                } else {
                    format!("task {:?} is not running", s.task)
                }
            } else {
                results
                    .iter()
                    .zip(&s.checks)
                    .map(|(r, c)| match r {
                        Some(r) => format!("{}: {}", c.name, r.output),
                        None => format!("{}: not run yet", c.name),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            pb::ServiceHealth {
                service_name: s.name.clone(),
                port_label: s.port_label.clone(),
                healthy: task_ok && checks_ok,
                output,
            }
        })
        .collect()
}

fn alloc_status(
    alloc: &pb::Allocation,
    lifecycles: &BTreeMap<String, Lifecycle>,
    tasks: &BTreeMap<String, pb::TaskState>,
    check_results: &[Vec<Option<CheckResult>>],
) -> pb::AllocationStatus {
    let (status, description) = client_status(tasks, lifecycles);
    pb::AllocationStatus {
        alloc_id: alloc.id.clone(),
        client_status: status.into(),
        client_description: description.into(),
        task_states: tasks.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        services: service_health(alloc, lifecycles, tasks, check_results),
    }
}

pub(crate) fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

pub(crate) fn human(d: Duration) -> String {
    // Whole milliseconds read better than humantime's nanosecond precision.
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// The task's `config` JSON; empty means an empty object.
pub(crate) fn parse_config(text: &str) -> Result<serde_json::Value, String> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err("config: expected a JSON object".into()),
        Err(e) => Err(format!("config: invalid JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(state: &str, started: bool, failed: bool) -> pb::TaskState {
        pb::TaskState {
            state: state.into(),
            failed,
            started_at: if started {
                "2024-01-01T00:00:00Z".into()
            } else {
                String::new()
            },
            ..Default::default()
        }
    }

    fn tasks(list: &[(&str, pb::TaskState)]) -> BTreeMap<String, pb::TaskState> {
        list.iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect()
    }

    #[test]
    fn client_status_follows_the_tasks() {
        let none = BTreeMap::new();
        let pending = tasks(&[
            ("a", ts(TASK_RUNNING, true, false)),
            ("b", ts(TASK_PENDING, false, false)),
        ]);
        assert_eq!(client_status(&pending, &none).0, "pending");
        let running = tasks(&[
            ("a", ts(TASK_RUNNING, true, false)),
            ("b", ts(TASK_RUNNING, true, false)),
        ]);
        assert_eq!(client_status(&running, &none).0, "running");
        // A task waiting to restart keeps the allocation running.
        let restarting = tasks(&[
            ("a", ts(TASK_PENDING, true, false)),
            ("b", ts(TASK_RUNNING, true, false)),
        ]);
        assert_eq!(client_status(&restarting, &none).0, "running");
        let complete = tasks(&[
            ("a", ts(TASK_DEAD, true, false)),
            ("b", ts(TASK_DEAD, false, false)),
        ]);
        assert_eq!(client_status(&complete, &none).0, "complete");
        let failed = tasks(&[
            ("a", ts(TASK_DEAD, true, true)),
            ("b", ts(TASK_RUNNING, true, false)),
        ]);
        assert_eq!(client_status(&failed, &none).0, "failed");

        // Hook tasks: a completed prestart task and a poststop task that has not run yet do
        // not keep the allocation pending.
        let lifecycles = BTreeMap::from([
            (
                "init".to_string(),
                Lifecycle::parse("prestart", false).unwrap(),
            ),
            ("main".to_string(), Lifecycle::MAIN),
            (
                "cleanup".to_string(),
                Lifecycle::parse("poststop", false).unwrap(),
            ),
        ]);
        let hooked = tasks(&[
            ("init", ts(TASK_DEAD, true, false)),
            ("main", ts(TASK_RUNNING, true, false)),
            ("cleanup", ts(TASK_PENDING, false, false)),
        ]);
        assert_eq!(client_status(&hooked, &lifecycles).0, "running");
        let before_main = tasks(&[
            ("init", ts(TASK_RUNNING, true, false)),
            ("main", ts(TASK_PENDING, false, false)),
            ("cleanup", ts(TASK_PENDING, false, false)),
        ]);
        assert_eq!(client_status(&before_main, &lifecycles).0, "pending");
    }

    #[test]
    fn services_are_healthy_when_task_runs_and_checks_pass() {
        let alloc = pb::Allocation {
            services: vec![
                pb::Service {
                    name: "web".into(),
                    port_label: "http".into(),
                    task: "server".into(),
                    checks: vec![pb::Check {
                        name: "alive".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                pb::Service {
                    name: "plain".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let pass = Some(CheckResult {
            passing: true,
            warning: false,
            output: "ok".into(),
        });
        let fail = Some(CheckResult {
            passing: false,
            warning: false,
            output: "refused".into(),
        });
        let lc = BTreeMap::new();
        let running = tasks(&[("server", ts(TASK_RUNNING, true, false))]);
        let dead = tasks(&[("server", ts(TASK_DEAD, true, false))]);

        let h = service_health(&alloc, &lc, &running, &[vec![pass.clone()], vec![]]);
        assert!(h[0].healthy && h[1].healthy, "{h:?}");
        let h = service_health(&alloc, &lc, &running, &[vec![fail], vec![]]);
        assert!(!h[0].healthy && h[0].output.contains("refused"), "{h:?}");
        let h = service_health(&alloc, &lc, &running, &[vec![None], vec![]]);
        assert!(!h[0].healthy, "a check that has not run yet is not passing");
        let h = service_health(&alloc, &lc, &dead, &[vec![pass], vec![]]);
        assert!(!h[0].healthy && !h[1].healthy, "{h:?}");
    }

    #[test]
    fn shutdown_delay_is_the_larger_of_group_and_task() {
        let mut alloc = pb::Allocation {
            shutdown_delay_ms: 2_000,
            ..Default::default()
        };
        let mut task = pb::Task {
            shutdown_delay_ms: 500,
            ..Default::default()
        };
        assert_eq!(shutdown_delay(&alloc, &task), Duration::from_secs(2));
        task.shutdown_delay_ms = 3_000;
        assert_eq!(shutdown_delay(&alloc, &task), Duration::from_secs(3));
        alloc.shutdown_delay_ms = 0;
        task.shutdown_delay_ms = 0;
        assert_eq!(shutdown_delay(&alloc, &task), Duration::ZERO);
    }

    #[test]
    fn config_json() {
        assert_eq!(parse_config("").unwrap(), serde_json::json!({}));
        assert!(parse_config("[1]").unwrap_err().contains("object"));
        assert!(
            parse_config("{")
                .unwrap_err()
                .starts_with("config: invalid JSON")
        );
    }
}
