//! Task lifecycle (Nomad's `lifecycle { hook, sidecar }`): in which order an allocation's
//! tasks start and stop.
//!
//! - `prestart` tasks start first. Ephemeral ones (not sidecars) must run to completion
//!   (exit 0) before the main tasks start; sidecars must have started. A prestart task that
//!   fails for good fails the allocation.
//! - main tasks (no `lifecycle`) start next;
//! - `poststart` tasks start once every main task has started;
//! - when every non-sidecar task (main and ephemeral) has ended, the sidecars are stopped;
//! - `poststop` tasks start once every other task has ended, whatever the reason (completion,
//!   failure or a stop request), and run to completion.
//!
//! On a stop request (or when a task fails for good) the non-sidecar tasks are stopped first,
//! then the sidecars, then the poststop tasks run.
//!
//! [`Orchestrator`] is the pure decision: given the tasks' states it says which gates to open
//! and which tasks to stop; the alloc runner carries the steps out.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_proto::agent::v1 as pb;

use crate::restart::JobKind;

/// `lifecycle.hook`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Prestart,
    /// A task without a lifecycle block.
    Main,
    Poststart,
    Poststop,
}

/// A task's place in the allocation's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    pub hook: Hook,
    /// Keeps running alongside the main tasks (prestart and poststart only).
    pub sidecar: bool,
}

impl Lifecycle {
    pub const MAIN: Lifecycle = Lifecycle {
        hook: Hook::Main,
        sidecar: false,
    };

    /// From the wire; an unknown hook is an error naming it.
    pub fn parse(hook: &str, sidecar: bool) -> Result<Self, String> {
        let hook = match hook.trim().to_ascii_lowercase().as_str() {
            "" => Hook::Main,
            "prestart" => Hook::Prestart,
            "poststart" => Hook::Poststart,
            "poststop" => Hook::Poststop,
            other => {
                return Err(format!(
                    "lifecycle hook: expected prestart, poststart or poststop, got {other:?}"
                ));
            }
        };
        // A poststop task runs after everything else has stopped: it cannot be a sidecar.
        let sidecar = sidecar && matches!(hook, Hook::Prestart | Hook::Poststart);
        Ok(Self { hook, sidecar })
    }

    /// The task's lifecycle; an invalid hook counts as a main task (its runner fails it).
    pub fn of(task: &pb::Task) -> Self {
        Self::parse(&task.lifecycle_hook, task.lifecycle_sidecar).unwrap_or(Self::MAIN)
    }

    /// A hook task that runs to completion.
    pub fn ephemeral(self) -> bool {
        self.hook != Hook::Main && !self.sidecar
    }

    /// Whether a successful exit ends the task: always for ephemeral hook tasks, otherwise
    /// as the job type says.
    pub fn job_kind(self, job: JobKind) -> JobKind {
        if self.ephemeral() {
            JobKind::Batch
        } else {
            job
        }
    }
}

/// Why a task is being stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopCause {
    /// The server (or the agent shutting down) asked.
    Requested,
    /// Another task of the allocation failed for good.
    SiblingFailed(String),
    /// Every non-sidecar task has ended: the sidecars are no longer needed.
    MainTasksDead,
    /// The agent is shutting down and leaves the task running (it re-attaches on restart).
    Detach,
}

/// One thing for the alloc runner to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Let the task start.
    Open(String),
    /// Stop the task (or keep it from ever starting).
    Stop(String, StopCause),
}

/// Decides the allocation's lifecycle steps; remembers what it already decided so each step
/// is returned once.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    tasks: Vec<(String, Lifecycle)>,
    opened: BTreeSet<String>,
    stopped: BTreeSet<String>,
    failure: Option<String>,
}

impl Orchestrator {
    pub fn new(tasks: Vec<(String, Lifecycle)>) -> Self {
        Self {
            tasks,
            opened: BTreeSet::new(),
            stopped: BTreeSet::new(),
            failure: None,
        }
    }

    /// Every task's lifecycle, by name.
    pub fn lifecycles(&self) -> BTreeMap<String, Lifecycle> {
        self.tasks.iter().cloned().collect()
    }

    /// The steps due now, given the tasks' states and whether a stop was requested.
    pub fn advance(
        &mut self,
        states: &BTreeMap<String, pb::TaskState>,
        stop_requested: bool,
    ) -> Vec<Step> {
        let dead = |n: &str| {
            states
                .get(n)
                .is_some_and(|s| s.state == crate::runner::TASK_DEAD)
        };
        let failed = |n: &str| {
            states
                .get(n)
                .is_some_and(|s| s.state == crate::runner::TASK_DEAD && s.failed)
        };
        let ran = |n: &str| states.get(n).is_some_and(|s| !s.started_at.is_empty());

        if self.failure.is_none() {
            self.failure = self
                .tasks
                .iter()
                .find(|(n, _)| failed(n))
                .map(|(n, _)| n.clone());
        }
        let cause = match (&self.failure, stop_requested) {
            (Some(f), _) => Some(StopCause::SiblingFailed(f.clone())),
            (None, true) => Some(StopCause::Requested),
            (None, false) => None,
        };

        let names = |pred: &dyn Fn(Lifecycle) -> bool| -> Vec<String> {
            self.tasks
                .iter()
                .filter(|(_, lc)| pred(*lc))
                .map(|(n, _)| n.clone())
                .collect()
        };
        let prestart = names(&|lc| lc.hook == Hook::Prestart);
        let main = names(&|lc| lc.hook == Hook::Main);
        let poststart = names(&|lc| lc.hook == Hook::Poststart);
        let poststop = names(&|lc| lc.hook == Hook::Poststop);
        let non_sidecar_work = names(&|lc| lc.hook != Hook::Poststop && !lc.sidecar);
        let sidecars = names(&|lc| lc.sidecar);

        let mut opens = Vec::new();
        let mut stops = Vec::new();
        match &cause {
            Some(cause) => {
                stops.extend(non_sidecar_work.iter().map(|n| (n.clone(), cause.clone())));
                if non_sidecar_work.iter().all(|n| dead(n)) {
                    stops.extend(sidecars.iter().map(|n| (n.clone(), cause.clone())));
                }
            }
            None => {
                opens.extend(prestart.iter().cloned());
                let lifecycle = self.lifecycles();
                let prestart_done = prestart.iter().all(|n| {
                    if lifecycle.get(n).is_some_and(|lc| lc.sidecar) {
                        ran(n)
                    } else {
                        dead(n) && !failed(n)
                    }
                });
                if prestart_done {
                    opens.extend(main.iter().cloned());
                    if main.iter().all(|n| ran(n)) {
                        opens.extend(poststart.iter().cloned());
                    }
                }
                if prestart_done && non_sidecar_work.iter().all(|n| dead(n)) {
                    stops.extend(
                        sidecars
                            .iter()
                            .map(|n| (n.clone(), StopCause::MainTasksDead)),
                    );
                }
            }
        }
        let all_but_poststop_dead = self
            .tasks
            .iter()
            .filter(|(_, lc)| lc.hook != Hook::Poststop)
            .all(|(n, _)| dead(n));
        if all_but_poststop_dead {
            opens.extend(poststop.iter().cloned());
        }

        let mut steps = Vec::new();
        for (name, cause) in stops {
            if !dead(&name) && self.stopped.insert(name.clone()) {
                steps.push(Step::Stop(name, cause));
            }
        }
        for name in opens {
            if !self.stopped.contains(&name) && self.opened.insert(name.clone()) {
                steps.push(Step::Open(name));
            }
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{TASK_DEAD, TASK_PENDING, TASK_RUNNING};

    fn lc(hook: &str, sidecar: bool) -> Lifecycle {
        Lifecycle::parse(hook, sidecar).unwrap()
    }

    fn st(state: &str, started: bool, failed: bool) -> pb::TaskState {
        pb::TaskState {
            state: state.into(),
            failed,
            started_at: if started { "t".into() } else { String::new() },
            ..Default::default()
        }
    }

    fn states(list: &[(&str, pb::TaskState)]) -> BTreeMap<String, pb::TaskState> {
        list.iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect()
    }

    fn orch() -> Orchestrator {
        Orchestrator::new(vec![
            ("init".into(), lc("prestart", false)),
            ("proxy".into(), lc("prestart", true)),
            ("main".into(), lc("", false)),
            ("after".into(), lc("poststart", false)),
            ("cleanup".into(), lc("poststop", false)),
        ])
    }

    fn show(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Open(n) => format!("open {n}"),
                Step::Stop(n, c) => format!("stop {n} {c:?}"),
            })
            .collect()
    }

    #[test]
    fn parses_hooks() {
        assert_eq!(lc("", false), Lifecycle::MAIN);
        assert_eq!(lc("PreStart", true).hook, Hook::Prestart);
        assert!(!lc("poststop", true).sidecar, "poststop is never a sidecar");
        assert!(lc("prestart", false).ephemeral());
        assert!(!lc("prestart", true).ephemeral());
        assert!(!Lifecycle::MAIN.ephemeral());
        let err = Lifecycle::parse("during", false).unwrap_err();
        assert!(err.contains("during"), "{err}");
        assert_eq!(
            lc("poststart", false).job_kind(JobKind::Service),
            JobKind::Batch
        );
        assert_eq!(Lifecycle::MAIN.job_kind(JobKind::Service), JobKind::Service);
    }

    #[test]
    fn runs_in_order() {
        let mut o = orch();
        let pending = st(TASK_PENDING, false, false);
        let mut s = states(&[
            ("init", pending.clone()),
            ("proxy", pending.clone()),
            ("main", pending.clone()),
            ("after", pending.clone()),
            ("cleanup", pending.clone()),
        ]);
        assert_eq!(show(&o.advance(&s, false)), ["open init", "open proxy"]);
        s.insert("proxy".into(), st(TASK_RUNNING, true, false));
        assert!(o.advance(&s, false).is_empty(), "init has not completed");
        s.insert("init".into(), st(TASK_DEAD, true, false));
        assert_eq!(show(&o.advance(&s, false)), ["open main"]);
        s.insert("main".into(), st(TASK_RUNNING, true, false));
        assert_eq!(show(&o.advance(&s, false)), ["open after"]);
        s.insert("after".into(), st(TASK_DEAD, true, false));
        assert!(o.advance(&s, false).is_empty());
        // The main task completes: the sidecar goes, then the poststop task runs.
        s.insert("main".into(), st(TASK_DEAD, true, false));
        assert_eq!(show(&o.advance(&s, false)), ["stop proxy MainTasksDead"]);
        s.insert("proxy".into(), st(TASK_DEAD, true, false));
        assert_eq!(show(&o.advance(&s, false)), ["open cleanup"]);
        assert!(o.advance(&s, false).is_empty());
    }

    #[test]
    fn a_failed_prestart_task_fails_everything_but_poststop_runs() {
        let mut o = orch();
        let pending = st(TASK_PENDING, false, false);
        let mut s = states(&[
            ("init", pending.clone()),
            ("proxy", st(TASK_RUNNING, true, false)),
            ("main", pending.clone()),
            ("after", pending.clone()),
            ("cleanup", pending.clone()),
        ]);
        o.advance(&s, false);
        s.insert("init".into(), st(TASK_DEAD, true, true));
        let steps = show(&o.advance(&s, false));
        assert_eq!(
            steps,
            [
                "stop main SiblingFailed(\"init\")",
                "stop after SiblingFailed(\"init\")"
            ]
        );
        s.insert("main".into(), st(TASK_DEAD, false, false));
        s.insert("after".into(), st(TASK_DEAD, false, false));
        assert_eq!(
            show(&o.advance(&s, false)),
            ["stop proxy SiblingFailed(\"init\")"]
        );
        s.insert("proxy".into(), st(TASK_DEAD, true, false));
        assert_eq!(show(&o.advance(&s, false)), ["open cleanup"]);
    }

    #[test]
    fn a_stop_request_stops_main_then_sidecars_then_runs_poststop() {
        let mut o = orch();
        let mut s = states(&[
            ("init", st(TASK_DEAD, true, false)),
            ("proxy", st(TASK_RUNNING, true, false)),
            ("main", st(TASK_RUNNING, true, false)),
            ("after", st(TASK_DEAD, true, false)),
            ("cleanup", st(TASK_PENDING, false, false)),
        ]);
        o.advance(&s, false);
        assert_eq!(show(&o.advance(&s, true)), ["stop main Requested"]);
        s.insert("main".into(), st(TASK_DEAD, true, false));
        assert_eq!(show(&o.advance(&s, true)), ["stop proxy Requested"]);
        s.insert("proxy".into(), st(TASK_DEAD, true, false));
        assert_eq!(show(&o.advance(&s, true)), ["open cleanup"]);
    }

    #[test]
    fn plain_tasks_open_at_once() {
        let mut o = Orchestrator::new(vec![
            ("a".into(), Lifecycle::MAIN),
            ("b".into(), Lifecycle::MAIN),
        ]);
        let s = states(&[
            ("a", st(TASK_PENDING, false, false)),
            ("b", st(TASK_PENDING, false, false)),
        ]);
        assert_eq!(show(&o.advance(&s, false)), ["open a", "open b"]);
        assert!(o.advance(&s, false).is_empty());
    }
}
