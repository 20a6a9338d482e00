//! The alloc runner and its task runners.
//!
//! An [`AllocHandle`] owns one allocation: one task runner per task (directories, environment,
//! interpolation, driver start, restart policy, graceful stop), one loop per service check,
//! and the allocation's status, which it recomputes on every change and hands to the
//! [`Reporter`] when it differs from what was last reported.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flotilla_drivers::{Driver, Drivers, ExitResult, TaskSpec, parse_signal};
use flotilla_proto::agent::v1 as pb;
use flotilla_types::{
    ALLOC_CLIENT_COMPLETE, ALLOC_CLIENT_FAILED, ALLOC_CLIENT_PENDING, ALLOC_CLIENT_RUNNING,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::checks::{self, CheckResult, CheckUpdate};
use crate::env::{NodeContext, TaskDirs, interpolate_json, task_env};
use crate::report::Reporter;
use crate::restart::{Decision, JobKind, RestartPolicy, RestartTracker};

/// Task states (Nomad's names).
pub const TASK_PENDING: &str = "pending";
pub const TASK_RUNNING: &str = "running";
pub const TASK_DEAD: &str = "dead";

/// `kill_timeout` when the task gives none (Nomad's default).
const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Events kept per task, newest last (Nomad keeps 10).
const MAX_EVENTS: usize = 10;

/// What every alloc runner shares.
#[derive(Debug)]
pub struct RunnerContext {
    pub data_dir: std::path::PathBuf,
    pub node: NodeContext,
    pub drivers: Drivers,
    pub reporter: Reporter,
    pub http: reqwest::Client,
}

/// Why tasks are being stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StopCause {
    /// The server (or the agent shutting down) asked.
    Requested,
    /// Another task of the allocation failed for good.
    SiblingFailed(String),
}

/// A running allocation.
#[derive(Debug)]
pub struct AllocHandle {
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

impl AllocHandle {
    /// Starts running `alloc`.
    pub fn spawn(ctx: Arc<RunnerContext>, alloc: pb::Allocation) -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        tokio::spawn(run_alloc(ctx, alloc, stop_rx, done_tx));
        Self {
            stop: stop_tx,
            done: done_rx,
        }
    }

    /// Asks every task to stop (kill signal, kill timeout, then SIGKILL). Idempotent.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Every task has ended and the final status was handed to the reporter.
    pub fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    /// A receiver that turns true when the allocation is done.
    pub fn done_receiver(&self) -> watch::Receiver<bool> {
        self.done.clone()
    }

    /// Waits until the allocation is done.
    pub async fn wait(&self) {
        let mut done = self.done.clone();
        // Err: the runner vanished (runtime shutting down), which also means done.
        let _ = done.wait_for(|d| *d).await;
    }
}

/// The allocation's status as the runner sees it.
#[derive(Debug, Clone)]
struct AllocState {
    tasks: BTreeMap<String, pb::TaskState>,
    /// Per service, per check: the latest result (None before the first).
    checks: Vec<Vec<Option<CheckResult>>>,
    last_reported: Option<pb::AllocationStatus>,
}

async fn run_alloc(
    ctx: Arc<RunnerContext>,
    alloc: pb::Allocation,
    mut stop_rx: watch::Receiver<bool>,
    done_tx: watch::Sender<bool>,
) {
    let alloc = Arc::new(alloc);
    tracing::info!(alloc_id = %alloc.id, name = %alloc.name, tasks = alloc.tasks.len(), "starting allocation");
    let mut state = AllocState {
        tasks: alloc
            .tasks
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    pb::TaskState {
                        state: TASK_PENDING.into(),
                        ..Default::default()
                    },
                )
            })
            .collect(),
        checks: alloc
            .services
            .iter()
            .map(|s| vec![None; s.checks.len()])
            .collect(),
        last_reported: None,
    };
    report_if_changed(&ctx.reporter, &alloc, &mut state);

    let (task_tx, mut task_rx) = mpsc::unbounded_channel::<(String, pb::TaskState)>();
    let (check_tx, mut check_rx) = mpsc::unbounded_channel::<CheckUpdate>();
    let (task_stop_tx, task_stop_rx) = watch::channel::<Option<StopCause>>(None);

    let mut tasks = JoinSet::new();
    for task in &alloc.tasks {
        let runner = TaskRunner {
            ctx: ctx.clone(),
            alloc: alloc.clone(),
            task: task.clone(),
            state: pb::TaskState {
                state: TASK_PENDING.into(),
                ..Default::default()
            },
            updates: task_tx.clone(),
            stop: task_stop_rx.clone(),
        };
        tasks.spawn(runner.run());
    }
    drop(task_tx);

    let mut check_loops = JoinSet::new();
    for (si, service) in alloc.services.iter().enumerate() {
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
    while !tasks.is_empty() {
        tokio::select! {
            Some((name, ts)) = task_rx.recv() => {
                let failed = ts.state == TASK_DEAD && ts.failed;
                state.tasks.insert(name.clone(), ts);
                if failed && task_stop_tx.borrow().is_none() {
                    tracing::warn!(alloc_id = %alloc.id, task = %name, "task failed, stopping the other tasks");
                    task_stop_tx.send_replace(Some(StopCause::SiblingFailed(name)));
                }
            }
            Some(update) = check_rx.recv() => {
                if let Some(slot) = state.checks.get_mut(update.service).and_then(|s| s.get_mut(update.check)) {
                    *slot = Some(update.result);
                }
            }
            changed = stop_rx.changed(), if !stopping => {
                // Err: the handle was dropped, which also means stop.
                if changed.is_err() || *stop_rx.borrow() {
                    stopping = true;
                    tracing::info!(alloc_id = %alloc.id, "stopping allocation");
                    if task_stop_tx.borrow().is_none() {
                        task_stop_tx.send_replace(Some(StopCause::Requested));
                    }
                }
            }
            joined = tasks.join_next() => {
                if let Some(Err(err)) = joined {
                    tracing::error!(alloc_id = %alloc.id, error = %err, "task runner crashed");
                }
            }
        }
        report_if_changed(&ctx.reporter, &alloc, &mut state);
    }
    // Every task runner has returned; take their last words.
    while let Ok((name, ts)) = task_rx.try_recv() {
        state.tasks.insert(name, ts);
    }
    check_loops.abort_all();
    report_if_changed(&ctx.reporter, &alloc, &mut state);
    tracing::info!(
        alloc_id = %alloc.id,
        status = state.last_reported.as_ref().map(|s| s.client_status.as_str()).unwrap_or(""),
        "allocation finished"
    );
    done_tx.send_replace(true);
}

fn report_if_changed(reporter: &Reporter, alloc: &pb::Allocation, state: &mut AllocState) {
    let status = alloc_status(alloc, &state.tasks, &state.checks);
    if state.last_reported.as_ref() != Some(&status) {
        tracing::debug!(alloc_id = %alloc.id, status = %status.client_status, "allocation status changed");
        reporter.update(status.clone());
        state.last_reported = Some(status);
    }
}

/// The allocation's client status from its tasks: `failed` if any task failed for good,
/// `complete` when all are dead, `running` once every task has started at least once, else
/// `pending`.
pub fn client_status(tasks: &BTreeMap<String, pb::TaskState>) -> (&'static str, &'static str) {
    if tasks.values().any(|t| t.failed) {
        return (ALLOC_CLIENT_FAILED, "Failed tasks");
    }
    if tasks.values().all(|t| t.state == TASK_DEAD) {
        return (ALLOC_CLIENT_COMPLETE, "All tasks have completed");
    }
    if tasks.values().all(|t| !t.started_at.is_empty()) {
        return (ALLOC_CLIENT_RUNNING, "Tasks are running");
    }
    (ALLOC_CLIENT_PENDING, "No tasks have started")
}

/// Health of each service: its task (or, for group services, every task) runs and every
/// check passes.
pub fn service_health(
    alloc: &pb::Allocation,
    tasks: &BTreeMap<String, pb::TaskState>,
    check_results: &[Vec<Option<CheckResult>>],
) -> Vec<pb::ServiceHealth> {
    let running = |name: &str| tasks.get(name).is_some_and(|t| t.state == TASK_RUNNING);
    alloc
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let task_ok = if s.task.is_empty() {
                !tasks.is_empty() && tasks.keys().all(|t| running(t))
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
    tasks: &BTreeMap<String, pb::TaskState>,
    check_results: &[Vec<Option<CheckResult>>],
) -> pb::AllocationStatus {
    let (status, description) = client_status(tasks);
    pb::AllocationStatus {
        alloc_id: alloc.id.clone(),
        client_status: status.into(),
        client_description: description.into(),
        task_states: tasks.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        services: service_health(alloc, tasks, check_results),
    }
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

fn human(d: Duration) -> String {
    // Whole milliseconds read better than humantime's nanosecond precision.
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// Runs one task: setup, start, wait, restart per policy, stop on request.
struct TaskRunner {
    ctx: Arc<RunnerContext>,
    alloc: Arc<pb::Allocation>,
    task: pb::Task,
    state: pb::TaskState,
    updates: mpsc::UnboundedSender<(String, pb::TaskState)>,
    stop: watch::Receiver<Option<StopCause>>,
}

/// How one run of the task ended.
enum RunEnd {
    /// It ended by itself (or never started).
    Exited { success: bool, recoverable: bool },
    /// It was stopped on request.
    Stopped,
}

impl TaskRunner {
    fn event(&mut self, kind: &str, message: impl Into<String>) -> &mut pb::TaskEvent {
        self.state.events.push(pb::TaskEvent {
            r#type: kind.into(),
            time_unix_nanos: now_nanos(),
            message: message.into(),
            exit_code: 0,
            signal: 0,
        });
        if self.state.events.len() > MAX_EVENTS {
            let extra = self.state.events.len() - MAX_EVENTS;
            self.state.events.drain(..extra);
        }
        let last = self.state.events.len() - 1;
        &mut self.state.events[last]
    }

    fn publish(&self) {
        // The alloc runner outlives its task runners; a send error only happens if it is gone.
        let _ = self
            .updates
            .send((self.task.name.clone(), self.state.clone()));
    }

    fn finish(&mut self, failed: bool) {
        self.state.state = TASK_DEAD.into();
        self.state.failed = failed;
        self.state.finished_at = now_rfc3339();
        self.publish();
    }

    fn stop_cause(&self) -> Option<StopCause> {
        self.stop.borrow().clone()
    }

    async fn run(mut self) {
        let alloc_id = self.alloc.id.clone();
        let task_name = self.task.name.clone();
        self.event("Received", "Task received by client");
        self.publish();

        // Setup: directories, environment, config, driver.
        self.event("Task Setup", "Building Task Directory");
        let dirs = TaskDirs::new(&self.ctx.data_dir, &alloc_id, &task_name);
        if let Err(err) = dirs.create() {
            self.event(
                "Setup Failure",
                format!(
                    "creating task directories under {}: {err}",
                    dirs.task_dir.display()
                ),
            );
            self.finish(true);
            return;
        }
        let env = task_env(&self.alloc, &self.task, &self.ctx.node, &dirs);
        let config = match parse_config(&self.task.config_json) {
            Ok(c) => interpolate_json(&c, &env, &self.ctx.node),
            Err(msg) => return self.fail_setup(msg),
        };
        let kill_signal = match parse_signal(&self.task.kill_signal) {
            Ok(s) => s,
            Err(err) => return self.fail_setup(format!("kill_signal: {err}")),
        };
        let kill_timeout = if self.task.kill_timeout_ms == 0 {
            DEFAULT_KILL_TIMEOUT
        } else {
            Duration::from_millis(self.task.kill_timeout_ms)
        };
        let Some(driver) = self.ctx.drivers.get(&self.task.driver) else {
            let known: Vec<_> = self.ctx.drivers.iter().map(|d| d.name()).collect();
            return self.fail_setup(format!(
                "unknown driver {:?} (this node has {})",
                self.task.driver,
                known.join(", ")
            ));
        };
        let spec = TaskSpec {
            name: format!("{}/{}", alloc_id.get(..8).unwrap_or(&alloc_id), task_name),
            config,
            env,
            task_dir: dirs.task_dir.clone(),
            stdout_path: dirs.stdout.clone(),
            stderr_path: dirs.stderr.clone(),
        };
        let mut tracker = RestartTracker::new(
            RestartPolicy::from_proto(self.task.restart.as_ref()),
            JobKind::from_job_type(&self.alloc.job_type),
        );

        loop {
            if let Some(cause) = self.stop_cause() {
                self.note_cause(&cause);
                let message = if self.state.started_at.is_empty() {
                    "Task killed before it started"
                } else {
                    "Task killed while waiting to restart"
                };
                self.event("Killed", message);
                self.finish(false);
                return;
            }
            match self
                .run_once(driver.as_ref(), &spec, kill_signal, kill_timeout)
                .await
            {
                RunEnd::Stopped => return,
                RunEnd::Exited {
                    success,
                    recoverable,
                } => match tracker.decide(Instant::now(), success, recoverable) {
                    Decision::Restart { delay, reason } => {
                        self.state.state = TASK_PENDING.into();
                        self.state.restarts += 1;
                        self.event(
                            "Restarting",
                            format!("Task restarting in {}: {reason}", human(delay)),
                        );
                        self.publish();
                        tracing::info!(alloc_id = %alloc_id, task = %task_name, delay = ?delay, reason = %reason, "restarting task");
                        let mut stop = self.stop.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = stop.wait_for(Option::is_some) => {}
                        }
                    }
                    Decision::Stop { failed, reason } => {
                        tracing::info!(alloc_id = %alloc_id, task = %task_name, failed, reason = %reason, "not restarting task");
                        self.event("Not Restarting", reason);
                        self.finish(failed);
                        return;
                    }
                },
            }
        }
    }

    fn fail_setup(&mut self, message: String) {
        tracing::warn!(alloc_id = %self.alloc.id, task = %self.task.name, error = %message, "task cannot start");
        self.event("Driver Failure", message);
        self.event("Not Restarting", "Error was unrecoverable");
        self.finish(true);
    }

    fn note_cause(&mut self, cause: &StopCause) {
        if let StopCause::SiblingFailed(sibling) = cause {
            self.event(
                "Sibling Task Failed",
                format!("Task's sibling {sibling:?} failed"),
            );
        }
    }

    async fn run_once(
        &mut self,
        driver: &dyn Driver,
        spec: &TaskSpec,
        kill_signal: flotilla_drivers::Signal,
        kill_timeout: Duration,
    ) -> RunEnd {
        let handle = match driver.start(spec.clone()).await {
            Ok(h) => h,
            Err(err) => {
                tracing::warn!(alloc_id = %self.alloc.id, task = %self.task.name, error = %err, "driver failed to start the task");
                self.event("Driver Failure", err.to_string());
                self.publish();
                return RunEnd::Exited {
                    success: false,
                    recoverable: err.is_recoverable(),
                };
            }
        };
        self.state.state = TASK_RUNNING.into();
        self.state.started_at = now_rfc3339();
        self.state.finished_at.clear();
        self.event("Started", "Task started by client");
        self.publish();
        tracing::info!(alloc_id = %self.alloc.id, task = %self.task.name, handle = handle.id(), "task started");

        let mut stop = self.stop.clone();
        let outcome = tokio::select! {
            exit = handle.wait() => Ok(exit),
            cause = stop.wait_for(Option::is_some) => Err(cause.ok().and_then(|c| c.clone())),
        };
        match outcome {
            Ok(exit) => {
                self.terminated(&exit);
                self.publish();
                RunEnd::Exited {
                    success: exit.successful(),
                    recoverable: true,
                }
            }
            Err(cause) => {
                if let Some(cause) = cause {
                    self.note_cause(&cause);
                }
                self.event(
                    "Killing",
                    format!(
                        "Sent interrupt ({}). Waiting {} before force killing",
                        kill_signal.as_str(),
                        human(kill_timeout)
                    ),
                );
                self.publish();
                let exit = handle.stop(kill_signal, kill_timeout).await;
                tracing::info!(alloc_id = %self.alloc.id, task = %self.task.name, exit = %exit, "task stopped");
                let e = self.event("Killed", "Task successfully killed");
                e.exit_code = exit.exit_code;
                e.signal = exit.signal;
                self.finish(false);
                RunEnd::Stopped
            }
        }
    }

    fn terminated(&mut self, exit: &ExitResult) {
        tracing::info!(alloc_id = %self.alloc.id, task = %self.task.name, exit = %exit, "task exited");
        let message = match &exit.error {
            Some(err) => format!("Exit Code: {}, {err}", exit.exit_code),
            None if exit.signal != 0 => {
                format!("Exit Code: {}, Signal: {}", exit.exit_code, exit.signal)
            }
            None => format!("Exit Code: {}", exit.exit_code),
        };
        let e = self.event("Terminated", message);
        e.exit_code = exit.exit_code;
        e.signal = exit.signal;
        self.state.finished_at = now_rfc3339();
    }
}

/// The task's `config` JSON; empty means an empty object.
fn parse_config(text: &str) -> Result<serde_json::Value, String> {
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
        let pending = tasks(&[
            ("a", ts(TASK_RUNNING, true, false)),
            ("b", ts(TASK_PENDING, false, false)),
        ]);
        assert_eq!(client_status(&pending).0, "pending");
        let running = tasks(&[
            ("a", ts(TASK_RUNNING, true, false)),
            ("b", ts(TASK_RUNNING, true, false)),
        ]);
        assert_eq!(client_status(&running).0, "running");
        // A task waiting to restart keeps the allocation running.
        let restarting = tasks(&[
            ("a", ts(TASK_PENDING, true, false)),
            ("b", ts(TASK_RUNNING, true, false)),
        ]);
        assert_eq!(client_status(&restarting).0, "running");
        let complete = tasks(&[
            ("a", ts(TASK_DEAD, true, false)),
            ("b", ts(TASK_DEAD, false, false)),
        ]);
        assert_eq!(client_status(&complete).0, "complete");
        let failed = tasks(&[
            ("a", ts(TASK_DEAD, true, true)),
            ("b", ts(TASK_RUNNING, true, false)),
        ]);
        assert_eq!(client_status(&failed).0, "failed");
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
            output: "ok".into(),
        });
        let fail = Some(CheckResult {
            passing: false,
            output: "refused".into(),
        });
        let running = tasks(&[("server", ts(TASK_RUNNING, true, false))]);
        let dead = tasks(&[("server", ts(TASK_DEAD, true, false))]);

        let h = service_health(&alloc, &running, &[vec![pass.clone()], vec![]]);
        assert!(h[0].healthy && h[1].healthy, "{h:?}");
        let h = service_health(&alloc, &running, &[vec![fail], vec![]]);
        assert!(!h[0].healthy && h[0].output.contains("refused"), "{h:?}");
        let h = service_health(&alloc, &running, &[vec![None], vec![]]);
        assert!(!h[0].healthy, "a check that has not run yet is not passing");
        let h = service_health(&alloc, &dead, &[vec![pass], vec![]]);
        assert!(!h[0].healthy && !h[1].healthy, "{h:?}");
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
