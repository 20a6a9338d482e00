//! The task runner: one per task of an allocation.
//!
//! It waits for its lifecycle gate, builds the task directory and environment, fetches
//! [`artifacts`](crate::artifacts), renders [`templates`](crate::template), writes the dispatch
//! payload, starts the task through its driver (or re-attaches to it after an agent restart),
//! waits for it, applies the [restart policy](crate::restart), obeys commands (restart, signal)
//! and stops it gracefully on request — when the allocation itself is stopped, only after the
//! task's shutdown delay. Every change of its state goes to the alloc runner as a
//! [`TaskUpdate`], with the driver's [`RecoverState`] while the task runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_drivers::{
    Driver, DriverError, ExitResult, MountSpec, PortMapping, RecoverState, Signal, TaskHandle,
    TaskSpec, parse_signal,
};
use flotilla_proto::agent::v1 as pb;
use tokio::sync::{mpsc, oneshot, watch};

use crate::env::{DirView, TaskDirs, interpolate_json, task_env};
use crate::lifecycle::{Lifecycle, StopCause};
use crate::restart::{Decision, JobKind, RestartPolicy, RestartTracker};
use crate::runner::{RunnerContext, TASK_DEAD, TASK_PENDING, TASK_RUNNING};

/// `kill_timeout` when the task gives none (Nomad's default).
const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Events kept per task, newest last (Nomad keeps 10).
const MAX_EVENTS: usize = 10;
/// Nomad's `logs` defaults: 10 files of 10 MB.
const DEFAULT_LOG_FILES: u32 = 10;
const DEFAULT_LOG_FILE_MB: u64 = 10;

/// A task runner's news for its alloc runner.
#[derive(Debug, Clone)]
pub struct TaskUpdate {
    pub name: String,
    pub state: pb::TaskState,
    /// How to find the task again while it runs.
    pub handle: Option<RecoverState>,
}

/// Why a task is restarted in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartReason {
    /// `alloc restart` (the agent's HTTP API): immediate, not counted against the policy.
    User,
    /// A `check_restart` check failed too often: counted as a failure by the restart policy.
    CheckUnhealthy(String),
}

/// A request for a running task.
#[derive(Debug)]
pub enum TaskCommand {
    Restart {
        reason: RestartReason,
        reply: Option<oneshot::Sender<Result<(), String>>>,
    },
    Signal {
        signal: Signal,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// Sends commands to one task of a live allocation. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskControl {
    tx: mpsc::UnboundedSender<TaskCommand>,
}

impl TaskControl {
    /// A control and the receiving end for the task runner.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<TaskCommand>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }

    /// Restarts the task in place; an error when it is not running.
    pub async fn restart(&self, reason: RestartReason) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.send(TaskCommand::Restart {
            reason,
            reply: Some(reply),
        });
        answer.await.unwrap_or_else(|_| Err(NOT_RUNNING.into()))
    }

    /// Restarts the task without waiting for an answer.
    pub fn request_restart(&self, reason: RestartReason) {
        self.send(TaskCommand::Restart {
            reason,
            reply: None,
        });
    }

    /// Sends `signal` to the task; an error when it is not running.
    pub async fn signal(&self, signal: Signal) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.send(TaskCommand::Signal { signal, reply });
        answer.await.unwrap_or_else(|_| Err(NOT_RUNNING.into()))
    }

    fn send(&self, cmd: TaskCommand) {
        // A closed channel means the runner has ended: the dropped reply says "not running".
        let _ = self.tx.send(cmd);
    }
}

const NOT_RUNNING: &str = "Task not running";

/// Nomad's event for a failed prestart hook (template, dispatch payload).
const TASK_HOOK_FAILED: &str = "Task hook failed";

fn reject(cmd: TaskCommand, why: &str) {
    let reply = match cmd {
        TaskCommand::Restart { reply, .. } => reply,
        TaskCommand::Signal { reply, .. } => Some(reply),
    };
    if let Some(reply) = reply {
        let _ = reply.send(Err(why.to_string()));
    }
}

/// How one run of the task ended.
enum RunEnd {
    /// It ended by itself (or never started).
    Exited { success: bool, recoverable: bool },
    /// It was stopped on request.
    Stopped,
    /// The agent is shutting down and leaves it running.
    Detached,
    /// It was stopped to be started again; `failure` when the restart policy counts it.
    Restart { failure: bool },
}

/// How the wait for the shutdown delay ended.
enum DelayEnd {
    /// Time to send the kill signal (the delay passed, there was none, or it was cut short).
    Kill,
    /// The task ended by itself meanwhile.
    Exited(ExitResult),
    /// The agent is shutting down and leaves the task running.
    Detach,
}

/// A failed preparation step: the event to record and whether trying again could help.
struct SetupError {
    event: &'static str,
    message: String,
    recoverable: bool,
}

/// Drivers that run tasks in a container with Nomad's directory layout mounted at `/alloc`,
/// `/local` and `/secrets`.
fn uses_container_paths(driver: &str) -> bool {
    driver == "docker"
}

/// What stays the same across the task's runs.
struct Fixed {
    driver: Arc<dyn Driver>,
    dirs: TaskDirs,
    /// Where the task sees its directories.
    view: DirView,
    kill_signal: Signal,
    kill_timeout: Duration,
    mounts: Vec<MountSpec>,
}

/// The Connect upstreams of all the allocation's services: tasks see them as
/// `NOMAD_UPSTREAM_*` variables.
fn alloc_upstreams(alloc: &pb::Allocation) -> Vec<flotilla_types::ConsulUpstream> {
    alloc
        .services
        .iter()
        .flat_map(|s| s.upstreams.iter())
        .map(|u| flotilla_types::ConsulUpstream {
            destination_name: u.destination_name.clone(),
            destination_namespace: u.destination_namespace.clone(),
            local_bind_port: u16::try_from(u.local_bind_port).unwrap_or_default(),
            local_bind_address: u.local_bind_address.clone(),
            datacenter: u.datacenter.clone(),
        })
        .collect()
}

pub(crate) struct TaskRunner {
    pub ctx: Arc<RunnerContext>,
    pub alloc: Arc<pb::Allocation>,
    pub task: pb::Task,
    pub lifecycle: Lifecycle,
    pub state: pb::TaskState,
    /// Set when re-attaching after an agent restart; then set while the task runs.
    pub recover: Option<RecoverState>,
    pub updates: mpsc::UnboundedSender<TaskUpdate>,
    pub stop: watch::Receiver<Option<StopCause>>,
    pub gate: watch::Receiver<bool>,
    pub commands: mpsc::UnboundedReceiver<TaskCommand>,
    /// How long the task keeps running after its allocation is stopped.
    pub shutdown_delay: Duration,
    /// When the allocation's stop with shutdown delays was asked; `None`: kill at once.
    pub drain: watch::Receiver<Option<Instant>>,
}

impl TaskRunner {
    fn event(&mut self, kind: &str, message: impl Into<String>) -> &mut pb::TaskEvent {
        self.state.events.push(pb::TaskEvent {
            r#type: kind.into(),
            time_unix_nanos: crate::runner::now_nanos(),
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
        let _ = self.updates.send(TaskUpdate {
            name: self.task.name.clone(),
            state: self.state.clone(),
            handle: self.recover.clone(),
        });
    }

    fn finish(&mut self, failed: bool) {
        self.recover = None;
        self.state.state = TASK_DEAD.into();
        self.state.failed = failed;
        self.state.finished_at = crate::runner::now_rfc3339();
        self.publish();
    }

    fn stop_cause(&self) -> Option<StopCause> {
        self.stop.borrow().clone()
    }

    pub async fn run(mut self) {
        let alloc_id = self.alloc.id.clone();
        let task_name = self.task.name.clone();
        let reattaching = self.recover.is_some();
        if self.state.events.is_empty() {
            self.event("Received", "Task received by client");
            self.publish();
        }
        if !reattaching && !self.wait_for_gate().await {
            return self.killed_before_start();
        }

        let fixed = match self.setup(reattaching) {
            Ok(f) => f,
            Err((event, message)) => return self.fail_setup(event, message),
        };
        let mut tracker = RestartTracker::new(
            RestartPolicy::from_proto(self.task.restart.as_ref()),
            self.lifecycle
                .job_kind(JobKind::from_job_type(&self.alloc.job_type)),
        );
        // Artifacts are fetched once (a re-attached task already has them).
        let mut artifacts_done = reattaching;
        let mut reattach = self.recover.take();

        loop {
            // A task to re-attach to runs already: it is recovered first, even to stop it.
            if reattach.is_none() && self.stop_cause().is_some() {
                return self.killed_before_start();
            }
            let prepared = if reattach.is_some() {
                Ok(self.reattach_spec(&fixed))
            } else {
                self.prepare(&fixed, &mut artifacts_done)
            };
            let end = match prepared {
                Ok(spec) => self.run_once(&fixed, spec, reattach.take()).await,
                Err(err) => {
                    tracing::warn!(alloc_id = %alloc_id, task = %task_name, error = %err.message, "preparing the task failed");
                    self.event(err.event, err.message);
                    self.publish();
                    RunEnd::Exited {
                        success: false,
                        recoverable: err.recoverable,
                    }
                }
            };
            if matches!(end, RunEnd::Exited { .. })
                && let Some(cause) = self.stop_cause().filter(|c| *c != StopCause::Detach)
            {
                // It ended (or was found gone) while being asked to stop: no restart.
                self.note_cause(&cause);
                self.finish(false);
                return;
            }
            let decision = match end {
                RunEnd::Stopped | RunEnd::Detached => return,
                RunEnd::Restart { failure: false } => Decision::Restart {
                    delay: Duration::ZERO,
                    reason: "Restart requested by the user".into(),
                },
                RunEnd::Restart { failure: true } => tracker.decide(Instant::now(), false, true),
                RunEnd::Exited {
                    success,
                    recoverable,
                } => tracker.decide(Instant::now(), success, recoverable),
            };
            match decision {
                Decision::Restart { delay, reason } => {
                    self.state.state = TASK_PENDING.into();
                    self.state.restarts += 1;
                    self.event(
                        "Restarting",
                        format!(
                            "Task restarting in {}: {reason}",
                            crate::runner::human(delay)
                        ),
                    );
                    self.publish();
                    tracing::info!(alloc_id = %alloc_id, task = %task_name, delay = ?delay, reason = %reason, "restarting task");
                    self.wait_restart_delay(delay).await;
                }
                Decision::Stop { failed, reason } => {
                    tracing::info!(alloc_id = %alloc_id, task = %task_name, failed, reason = %reason, "not restarting task");
                    self.event("Not Restarting", reason);
                    self.finish(failed);
                    return;
                }
            }
        }
    }

    /// Waits until the task may start (true) or is stopped first (false).
    async fn wait_for_gate(&mut self) -> bool {
        let mut gate = self.gate.clone();
        let mut stop = self.stop.clone();
        loop {
            if self.stop_cause().is_some() {
                return false;
            }
            if *gate.borrow() {
                return true;
            }
            tokio::select! {
                changed = gate.changed() => {
                    // The alloc runner went away: nothing will open the gate.
                    if changed.is_err() {
                        return false;
                    }
                }
                _ = stop.wait_for(Option::is_some) => {}
                Some(cmd) = self.commands.recv() => reject(cmd, "Task has not started yet"),
            }
        }
    }

    async fn wait_restart_delay(&mut self, delay: Duration) {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                _ = &mut sleep => return,
                _ = stop.wait_for(Option::is_some) => return,
                Some(cmd) = self.commands.recv() => reject(cmd, "Task is waiting to restart"),
            }
        }
    }

    /// The task was stopped before it (re)started.
    fn killed_before_start(&mut self) {
        let Some(cause) = self.stop_cause() else {
            return;
        };
        if cause == StopCause::Detach {
            return;
        }
        self.note_cause(&cause);
        let message = if self.state.started_at.is_empty() {
            "Task killed before it started"
        } else {
            "Task killed while waiting to restart"
        };
        self.event("Killed", message);
        self.finish(false);
    }

    /// Directories, lifecycle, kill settings, driver and volumes: what never changes. An error
    /// is the event type and its message.
    fn setup(&mut self, reattaching: bool) -> Result<Fixed, (&'static str, String)> {
        const SETUP: &str = "Setup Failure";
        const DRIVER: &str = "Driver Failure";
        if !reattaching {
            self.event("Task Setup", "Building Task Directory");
            self.publish();
        }
        let dirs = TaskDirs::new(&self.ctx.data_dir, &self.alloc.id, &self.task.name);
        dirs.create().map_err(|err| {
            (
                SETUP,
                format!(
                    "creating task directories under {}: {err}",
                    dirs.task_dir.display()
                ),
            )
        })?;
        Lifecycle::parse(&self.task.lifecycle_hook, self.task.lifecycle_sidecar)
            .map_err(|m| (SETUP, m))?;
        let kill_signal = parse_signal(&self.task.kill_signal)
            .map_err(|err| (DRIVER, format!("kill_signal: {err}")))?;
        let kill_timeout = if self.task.kill_timeout_ms == 0 {
            DEFAULT_KILL_TIMEOUT
        } else {
            Duration::from_millis(self.task.kill_timeout_ms)
        };
        let Some(driver) = self.ctx.drivers.get(&self.task.driver) else {
            let known: Vec<_> = self.ctx.drivers.iter().map(|d| d.name()).collect();
            return Err((
                DRIVER,
                format!(
                    "unknown driver {:?} (this node has {})",
                    self.task.driver,
                    known.join(", ")
                ),
            ));
        };
        let mut mounts = Vec::new();
        let view = if uses_container_paths(&self.task.driver) {
            let inside = DirView::container();
            for (source, target) in [
                (&dirs.alloc_dir, &inside.alloc_dir),
                (&dirs.local_dir, &inside.task_dir),
                (&dirs.secrets_dir, &inside.secrets_dir),
            ] {
                mounts.push(MountSpec {
                    source: source.clone(),
                    target: target.clone(),
                    read_only: false,
                });
            }
            inside
        } else {
            dirs.host_view()
        };
        mounts.extend(
            volume_mounts(&self.alloc, &self.task, &self.ctx.host_volumes)
                .map_err(|m| (SETUP, m))?,
        );
        Ok(Fixed {
            driver,
            dirs,
            view,
            kill_signal,
            kill_timeout,
            mounts,
        })
    }

    /// The spec of a task that already runs: nothing is fetched, rendered or written again,
    /// and a config that no longer parses does not keep the agent from finding the task.
    fn reattach_spec(&self, fixed: &Fixed) -> TaskSpec {
        let env = task_env(
            &self.alloc,
            &self.task,
            &self.ctx.node,
            &fixed.view,
            &alloc_upstreams(&self.alloc),
        );
        let config = crate::runner::parse_config(&self.task.config_json)
            .map(|c| interpolate_json(&c, &env, &self.ctx.node))
            .unwrap_or_else(|_| serde_json::Value::Object(Default::default()));
        self.spec(fixed, config, env)
    }

    /// Environment, artifacts, templates, payload and config for one start.
    fn prepare(
        &mut self,
        fixed: &Fixed,
        artifacts_done: &mut bool,
    ) -> Result<TaskSpec, SetupError> {
        let dirs = &fixed.dirs;
        let mut env = task_env(
            &self.alloc,
            &self.task,
            &self.ctx.node,
            &fixed.view,
            &alloc_upstreams(&self.alloc),
        );
        if !*artifacts_done {
            if !self.task.artifacts.is_empty() {
                self.event("Downloading Artifacts", "Client is downloading artifacts");
                self.publish();
            }
            for artifact in &self.task.artifacts {
                crate::artifacts::fetch(&dirs.task_dir, artifact).map_err(|e| SetupError {
                    event: "Failed Artifact Download",
                    message: e.to_string(),
                    recoverable: true,
                })?;
            }
            *artifacts_done = true;
        }
        // Templates see the environment without the variables of other templates, as in Nomad.
        let base_env = env.clone();
        for tmpl in &self.task.templates {
            let vars =
                crate::template::render_into(&dirs.task_dir, tmpl, &base_env).map_err(|e| {
                    SetupError {
                        event: TASK_HOOK_FAILED,
                        message: format!("Template failed: {e}"),
                        recoverable: false,
                    }
                })?;
            env.extend(vars);
        }
        if !self.task.dispatch_payload_file.is_empty() {
            write_payload(
                &dirs.local_dir,
                &self.task.dispatch_payload_file,
                &self.alloc.payload,
            )
            .map_err(|message| SetupError {
                event: TASK_HOOK_FAILED,
                message,
                recoverable: true,
            })?;
        }
        let config = crate::runner::parse_config(&self.task.config_json)
            .map(|c| interpolate_json(&c, &env, &self.ctx.node))
            .map_err(|message| SetupError {
                event: "Driver Failure",
                message,
                recoverable: false,
            })?;
        Ok(self.spec(fixed, config, env))
    }

    fn spec(
        &self,
        fixed: &Fixed,
        config: serde_json::Value,
        env: BTreeMap<String, String>,
    ) -> TaskSpec {
        let dirs = &fixed.dirs;
        let alloc_id = self.alloc.id.clone();
        TaskSpec {
            name: format!(
                "{}/{}",
                alloc_id.get(..8).unwrap_or(&alloc_id),
                self.task.name
            ),
            config,
            env,
            task_dir: dirs.task_dir.clone(),
            stdout_path: dirs.stdout.clone(),
            stderr_path: dirs.stderr.clone(),
            alloc_id,
            task_name: self.task.name.clone(),
            ports: port_mappings(&self.alloc),
            mounts: fixed.mounts.clone(),
            user: Some(self.task.user.trim().to_string()).filter(|u| !u.is_empty()),
            log_max_files: if self.task.log_max_files == 0 {
                DEFAULT_LOG_FILES
            } else {
                self.task.log_max_files
            },
            log_max_file_size_mb: if self.task.log_max_file_size_mb == 0 {
                DEFAULT_LOG_FILE_MB
            } else {
                self.task.log_max_file_size_mb
            },
        }
    }

    fn fail_setup(&mut self, event: &str, message: String) {
        tracing::warn!(alloc_id = %self.alloc.id, task = %self.task.name, error = %message, "task cannot start");
        self.event(event, message);
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

    /// Starts the task (or re-attaches to it) and waits until it ends, is stopped or restarted.
    async fn run_once(
        &mut self,
        fixed: &Fixed,
        spec: TaskSpec,
        reattach: Option<RecoverState>,
    ) -> RunEnd {
        let driver = fixed.driver.as_ref();
        let handle = match reattach {
            Some(saved) => match driver.recover(&saved, &spec).await {
                Ok(handle) => {
                    tracing::info!(alloc_id = %self.alloc.id, task = %self.task.name, handle = handle.id(), "re-attached to task");
                    self.state.state = TASK_RUNNING.into();
                    if self.state.started_at.is_empty() {
                        self.state.started_at = crate::runner::now_rfc3339();
                    }
                    handle
                }
                Err(err) => {
                    let gone = matches!(err, DriverError::Gone { .. });
                    tracing::info!(alloc_id = %self.alloc.id, task = %self.task.name, error = %err, "cannot re-attach to task");
                    let message = if gone {
                        format!("Task was no longer running when the agent restarted: {err}")
                    } else {
                        format!("re-attaching to the task failed: {err}")
                    };
                    self.event(if gone { "Terminated" } else { "Driver Failure" }, message);
                    self.state.finished_at = crate::runner::now_rfc3339();
                    self.publish();
                    return RunEnd::Exited {
                        success: false,
                        recoverable: gone || err.is_recoverable(),
                    };
                }
            },
            None => match driver.start(spec).await {
                Ok(handle) => {
                    self.state.state = TASK_RUNNING.into();
                    self.state.started_at = crate::runner::now_rfc3339();
                    self.state.finished_at.clear();
                    self.event("Started", "Task started by client");
                    tracing::info!(alloc_id = %self.alloc.id, task = %self.task.name, handle = handle.id(), "task started");
                    handle
                }
                Err(err) => {
                    tracing::warn!(alloc_id = %self.alloc.id, task = %self.task.name, error = %err, "driver failed to start the task");
                    self.event("Driver Failure", err.to_string());
                    self.publish();
                    return RunEnd::Exited {
                        success: false,
                        recoverable: err.is_recoverable(),
                    };
                }
            },
        };
        self.recover = Some(handle.recover_state());
        self.publish();
        self.supervise(handle.as_ref(), fixed).await
    }

    /// Waits on a running task, obeying stop requests and commands.
    async fn supervise(&mut self, handle: &dyn TaskHandle, fixed: &Fixed) -> RunEnd {
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                exit = handle.wait() => {
                    self.recover = None;
                    self.terminated(&exit);
                    self.publish();
                    return RunEnd::Exited {
                        success: exit.successful(),
                        recoverable: true,
                    };
                }
                cause = async { stop.wait_for(Option::is_some).await.ok().and_then(|c| c.clone()) } => {
                    if cause == Some(StopCause::Detach) {
                        tracing::info!(alloc_id = %self.alloc.id, task = %self.task.name, handle = handle.id(), "leaving task running");
                        return RunEnd::Detached;
                    }
                    if let Some(cause) = &cause {
                        self.note_cause(cause);
                    }
                    if cause == Some(StopCause::Requested) {
                        match self.wait_shutdown_delay(handle).await {
                            DelayEnd::Kill => {}
                            DelayEnd::Exited(exit) => {
                                self.recover = None;
                                self.terminated(&exit);
                                self.finish(false);
                                return RunEnd::Stopped;
                            }
                            DelayEnd::Detach => {
                                tracing::info!(alloc_id = %self.alloc.id, task = %self.task.name, handle = handle.id(), "leaving task running");
                                return RunEnd::Detached;
                            }
                        }
                    }
                    self.kill(handle, fixed).await;
                    self.finish(false);
                    return RunEnd::Stopped;
                }
                Some(cmd) = self.commands.recv() => match cmd {
                    TaskCommand::Signal { signal, reply } => {
                        let _ = reply.send(self.signal(handle, signal));
                    }
                    TaskCommand::Restart { reason, reply } => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(()));
                        }
                        let message = match &reason {
                            RestartReason::User => "User requested task to restart".to_string(),
                            RestartReason::CheckUnhealthy(why) => format!("healthcheck: {why}"),
                        };
                        tracing::info!(alloc_id = %self.alloc.id, task = %self.task.name, reason = %message, "restarting task on request");
                        self.event("Restart Signaled", message);
                        self.publish();
                        let exit = self.kill(handle, fixed).await;
                        self.recover = None;
                        self.terminated(&exit);
                        self.publish();
                        return RunEnd::Restart {
                            failure: reason != RestartReason::User,
                        };
                    }
                },
            }
        }
    }

    /// The allocation is stopped and its services are leaving every proxy's endpoints: keeps
    /// the task running until its shutdown delay has passed since the stop, so requests already
    /// on their way still find it. Signals still reach the task; restarts are refused.
    async fn wait_shutdown_delay(&mut self, handle: &dyn TaskHandle) -> DelayEnd {
        let mut drain = self.drain.clone();
        let Some(since) = *drain.borrow_and_update() else {
            return DelayEnd::Kill;
        };
        let left = self.shutdown_delay.saturating_sub(since.elapsed());
        if left.is_zero() {
            return DelayEnd::Kill;
        }
        tracing::info!(
            alloc_id = %self.alloc.id,
            task = %self.task.name,
            shutdown_delay = %crate::runner::human(self.shutdown_delay),
            remaining = %crate::runner::human(left),
            "allocation stopped; waiting for the shutdown delay before sending the kill signal"
        );
        self.event(
            "Waiting for shutdown delay",
            format!(
                "Waiting for shutdown_delay of {} before killing the task.",
                crate::runner::human(self.shutdown_delay)
            ),
        );
        self.publish();
        let sleep = tokio::time::sleep(left);
        tokio::pin!(sleep);
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                () = &mut sleep => return DelayEnd::Kill,
                exit = handle.wait() => return DelayEnd::Exited(exit),
                changed = drain.changed() => {
                    if changed.is_err() || drain.borrow_and_update().is_none() {
                        tracing::info!(alloc_id = %self.alloc.id, task = %self.task.name, "stopping now: shutdown delay cut short");
                        return DelayEnd::Kill;
                    }
                }
                changed = stop.changed() => {
                    // Err: the alloc runner is gone; nobody waits for the delay any more.
                    if changed.is_err() {
                        return DelayEnd::Kill;
                    }
                    if *stop.borrow_and_update() == Some(StopCause::Detach) {
                        return DelayEnd::Detach;
                    }
                }
                Some(cmd) = self.commands.recv() => match cmd {
                    TaskCommand::Signal { signal, reply } => {
                        let _ = reply.send(self.signal(handle, signal));
                    }
                    cmd @ TaskCommand::Restart { .. } => reject(cmd, "Task is shutting down"),
                },
            }
        }
    }

    /// Sends `signal` to the running task (the signal command), recording it.
    fn signal(&mut self, handle: &dyn TaskHandle, signal: Signal) -> Result<(), String> {
        let result = handle.signal(signal).map_err(|e| e.to_string());
        if result.is_ok() {
            self.event(
                "Signaling",
                format!("Task being sent signal {}", signal.as_str()),
            );
            self.publish();
        }
        result
    }

    /// Graceful stop: kill signal, kill timeout, then SIGKILL.
    async fn kill(&mut self, handle: &dyn TaskHandle, fixed: &Fixed) -> ExitResult {
        self.event(
            "Killing",
            format!(
                "Sent interrupt ({}). Waiting {} before force killing",
                fixed.kill_signal.as_str(),
                crate::runner::human(fixed.kill_timeout)
            ),
        );
        self.publish();
        let exit = handle.stop(fixed.kill_signal, fixed.kill_timeout).await;
        tracing::info!(alloc_id = %self.alloc.id, task = %self.task.name, exit = %exit, "task stopped");
        let e = self.event("Killed", "Task successfully killed");
        e.exit_code = exit.exit_code;
        e.signal = exit.signal;
        exit
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
        self.state.finished_at = crate::runner::now_rfc3339();
    }
}

/// The allocation's ports as the drivers take them.
pub fn port_mappings(alloc: &pb::Allocation) -> Vec<PortMapping> {
    alloc
        .ports
        .iter()
        .filter_map(|p| {
            let host_port = u16::try_from(p.value).ok()?;
            let to = if p.to == 0 {
                host_port
            } else {
                u16::try_from(p.to).ok()?
            };
            Some(PortMapping {
                label: p.label.clone(),
                host_ip: p.host_ip.clone(),
                host_port,
                to,
            })
        })
        .collect()
}

/// The task's `volume_mount`s resolved through the group's volumes to the node's host volumes.
pub fn volume_mounts(
    alloc: &pb::Allocation,
    task: &pb::Task,
    host_volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<MountSpec>, String> {
    task.volume_mounts
        .iter()
        .map(|vm| {
            let Some(req) = alloc.volumes.get(&vm.volume) else {
                let known: Vec<_> = alloc.volumes.keys().map(String::as_str).collect();
                return Err(format!(
                    "volume_mount: the group has no volume {:?} (it has: {})",
                    vm.volume,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            };
            if !req.r#type.is_empty() && req.r#type != "host" {
                return Err(format!(
                    "volume {:?}: type {:?} is not supported (only host volumes)",
                    vm.volume, req.r#type
                ));
            }
            let source = if req.source.is_empty() {
                &vm.volume
            } else {
                &req.source
            };
            let Some(path) = host_volumes.get(source) else {
                let known: Vec<_> = host_volumes.keys().map(String::as_str).collect();
                return Err(format!(
                    "volume {:?}: this node has no host volume {source:?} (it has: {})",
                    vm.volume,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            };
            Ok(MountSpec {
                source: path.clone(),
                target: vm.destination.clone(),
                read_only: vm.read_only || req.read_only,
            })
        })
        .collect()
}

/// Writes the dispatch payload to `local/<file>`.
fn write_payload(local_dir: &std::path::Path, file: &str, payload: &[u8]) -> Result<(), String> {
    let path = crate::template::within(local_dir, file)
        .map_err(|m| format!("dispatch_payload file: {m}"))?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("dispatch_payload: creating {}: {e}", parent.display()))?;
    }
    std::fs::write(&path, payload)
        .map_err(|e| format!("dispatch_payload: writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_resolve_through_group_and_node_volumes() {
        let alloc = pb::Allocation {
            volumes: [(
                "data".to_string(),
                pb::VolumeRequest {
                    name: "data".into(),
                    r#type: "host".into(),
                    source: "shared-data".into(),
                    read_only: true,
                },
            )]
            .into(),
            ..Default::default()
        };
        let task = pb::Task {
            volume_mounts: vec![pb::VolumeMount {
                volume: "data".into(),
                destination: "/srv/data".into(),
                read_only: false,
            }],
            ..Default::default()
        };
        let node = BTreeMap::from([("shared-data".to_string(), PathBuf::from("/mnt/d"))]);
        let m = volume_mounts(&alloc, &task, &node).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].source, PathBuf::from("/mnt/d"));
        assert_eq!(m[0].target, "/srv/data");
        assert!(m[0].read_only, "the group's read_only wins");

        let err = volume_mounts(&alloc, &task, &BTreeMap::new()).unwrap_err();
        assert!(err.contains("shared-data") && err.contains("none"), "{err}");
        let mut other = task.clone();
        other.volume_mounts[0].volume = "logs".into();
        let err = volume_mounts(&alloc, &other, &node).unwrap_err();
        assert!(err.contains("\"logs\"") && err.contains("data"), "{err}");
    }

    #[test]
    fn ports_map_host_to_task() {
        let alloc = pb::Allocation {
            ports: vec![
                pb::Port {
                    label: "http".into(),
                    value: 20000,
                    to: 8080,
                    host_ip: "10.0.0.1".into(),
                },
                pb::Port {
                    label: "raw".into(),
                    value: 20001,
                    to: 0,
                    host_ip: String::new(),
                },
            ],
            ..Default::default()
        };
        let p = port_mappings(&alloc);
        assert_eq!((p[0].host_port, p[0].to), (20000, 8080));
        assert_eq!(p[0].host_ip, "10.0.0.1");
        assert_eq!((p[1].host_port, p[1].to), (20001, 20001));
    }

    #[test]
    fn payload_stays_in_local() {
        let dir = tempfile::tempdir().unwrap();
        write_payload(dir.path(), "in/payload.json", b"{}").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("in/payload.json")).unwrap(),
            b"{}"
        );
        assert!(write_payload(dir.path(), "../x", b"").is_err());
    }
}
