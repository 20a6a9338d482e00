//! The allocation manager: reconciles each full set from the server with the alloc runners.
//!
//! The decision is a pure function ([`plan`]) of the set and what runs here; the manager
//! applies it. An allocation is started at most once per agent run, whatever the server sends.
//!
//! After an agent restart the allocations saved in the data dir ([`crate::state`]) are taken
//! up when the first set arrives ([`recovery_plan`]): those the server still wants re-attach
//! to their running tasks, the others are re-attached to and stopped. Then every driver reaps
//! what nobody owns any more (`Driver::reap_unowned`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use flotilla_proto::agent::v1 as pb;
use flotilla_types::{
    ALLOC_CLIENT_COMPLETE, ALLOC_CLIENT_FAILED, ALLOC_CLIENT_LOST, ALLOC_DESIRED_EVICT,
    ALLOC_DESIRED_RUN, ALLOC_DESIRED_STOP,
};
use tokio::sync::watch;

use crate::runner::{AllocHandle, RunnerContext};
use crate::state::SavedAlloc;
use crate::task::TaskControl;

/// Where an allocation stands on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its runner is working (tasks running, restarting or stopping).
    Running,
    /// Its runner finished; the handle is still kept.
    Done,
    /// It finished and left the server's set; only its id is remembered.
    Forgotten,
}

/// One step of reconciliation.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start running it.
    Start(Box<pb::Allocation>),
    /// Stop its tasks.
    Stop(String),
    /// Drop its runner (finished and no longer in the set).
    Forget(String),
    /// The server wants it stopped but still thinks it runs, and it does not run here (for
    /// example after the agent restarted): tell the server it is complete.
    ReportStopped(String),
}

fn client_terminal(status: &str) -> bool {
    matches!(
        status,
        ALLOC_CLIENT_COMPLETE | ALLOC_CLIENT_FAILED | ALLOC_CLIENT_LOST
    )
}

/// What to do about `set` given what runs here (`known`) and which allocations were already
/// reported stopped (`reported`).
pub fn plan(
    set: &[pb::Allocation],
    known: &HashMap<String, Phase>,
    reported: &HashSet<String>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut in_set = HashSet::new();
    for alloc in set {
        in_set.insert(alloc.id.as_str());
        let phase = known.get(&alloc.id).copied();
        match alloc.desired_status.as_str() {
            ALLOC_DESIRED_RUN => {
                if phase.is_none() && !client_terminal(&alloc.client_status) {
                    actions.push(Action::Start(Box::new(alloc.clone())));
                }
            }
            ALLOC_DESIRED_STOP | ALLOC_DESIRED_EVICT => match phase {
                Some(Phase::Running) => actions.push(Action::Stop(alloc.id.clone())),
                Some(_) => {}
                None => {
                    if !client_terminal(&alloc.client_status) && !reported.contains(&alloc.id) {
                        actions.push(Action::ReportStopped(alloc.id.clone()));
                    }
                }
            },
            other => {
                tracing::warn!(alloc_id = %alloc.id, desired_status = %other, "unknown desired status, ignoring");
            }
        }
    }
    let mut gone: Vec<(&String, &Phase)> = known
        .iter()
        .filter(|(id, _)| !in_set.contains(id.as_str()))
        .collect();
    gone.sort_by_key(|(id, _)| *id);
    for (id, phase) in gone {
        match phase {
            Phase::Running => actions.push(Action::Stop(id.clone())),
            Phase::Done => actions.push(Action::Forget(id.clone())),
            Phase::Forgotten => {}
        }
    }
    actions
}

/// What to do with a saved allocation when the first set arrives after a restart.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery {
    /// Still wanted: run it (the server's latest version), re-attaching to its tasks.
    Resume(Box<pb::Allocation>, Box<SavedAlloc>),
    /// No longer wanted: re-attach to its tasks and stop them.
    Stop(Box<SavedAlloc>),
    /// Nothing runs and the server has nothing to learn about it.
    Ignore(String),
}

/// Decides the fate of each saved allocation given the server's first set.
pub fn recovery_plan(saved: Vec<SavedAlloc>, set: &[pb::Allocation]) -> Vec<Recovery> {
    let by_id: HashMap<&str, &pb::Allocation> = set.iter().map(|a| (a.id.as_str(), a)).collect();
    saved
        .into_iter()
        .map(|s| match by_id.get(s.alloc.id.as_str()) {
            Some(latest)
                if latest.desired_status == ALLOC_DESIRED_RUN
                    && !client_terminal(&latest.client_status) =>
            {
                Recovery::Resume(Box::new((*latest).clone()), Box::new(s))
            }
            // Finished and the server agrees: nothing to do.
            Some(latest) if s.finished() && client_terminal(&latest.client_status) => {
                Recovery::Ignore(s.alloc.id)
            }
            None if s.finished() => Recovery::Ignore(s.alloc.id),
            // To stop, or finished while the server still thinks it runs (its final status
            // is reported again).
            _ => Recovery::Stop(Box::new(s)),
        })
        .collect()
}

/// What the HTTP endpoint may know about a live allocation.
#[derive(Debug, Clone)]
pub struct LiveAlloc {
    pub tasks: Vec<String>,
    /// Turns true when every task has ended for good.
    pub done: watch::Receiver<bool>,
    /// Per task: restart and signal requests.
    pub controls: BTreeMap<String, TaskControl>,
}

/// Allocations this agent runs, shared with the HTTP endpoint.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<BTreeMap<String, LiveAlloc>>>,
}

impl Registry {
    pub fn get(&self, alloc_id: &str) -> Option<LiveAlloc> {
        self.lock().get(alloc_id).cloned()
    }

    fn insert(&self, alloc_id: String, live: LiveAlloc) {
        self.lock().insert(alloc_id, live);
    }

    fn remove(&self, alloc_id: &str) {
        self.lock().remove(alloc_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LiveAlloc>> {
        // Plain inserts and removes: the map is consistent even after a panic elsewhere.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Owns the alloc runners.
#[derive(Debug)]
pub struct Manager {
    ctx: Arc<RunnerContext>,
    runners: HashMap<String, AllocHandle>,
    forgotten: HashSet<String>,
    reported: HashSet<String>,
    registry: Registry,
    /// Allocations saved by an earlier agent, taken up with the first set.
    restored: Option<Vec<SavedAlloc>>,
}

impl Manager {
    /// A manager that takes up `restored` (from [`crate::state::load_all`]) when the first
    /// set arrives.
    pub fn new(ctx: Arc<RunnerContext>, registry: Registry, restored: Vec<SavedAlloc>) -> Self {
        Self {
            ctx,
            runners: HashMap::new(),
            forgotten: HashSet::new(),
            reported: HashSet::new(),
            registry,
            restored: Some(restored),
        }
    }

    fn spawn(&mut self, alloc: pb::Allocation, restored: Option<SavedAlloc>) -> &AllocHandle {
        let id = alloc.id.clone();
        let tasks = alloc.tasks.iter().map(|t| t.name.clone()).collect();
        let handle = AllocHandle::spawn(self.ctx.clone(), alloc, restored);
        self.registry.insert(
            id.clone(),
            LiveAlloc {
                tasks,
                done: handle.done_receiver(),
                controls: handle.controls().clone(),
            },
        );
        self.forgotten.remove(&id);
        match self.runners.entry(id) {
            // Never happens (an allocation starts once); replacing stops the old runner.
            std::collections::hash_map::Entry::Occupied(mut e) => {
                e.insert(handle);
                e.into_mut()
            }
            std::collections::hash_map::Entry::Vacant(e) => e.insert(handle),
        }
    }

    /// Takes up the saved allocations, then has every driver reap what nobody owns.
    fn recover(&mut self, saved: Vec<SavedAlloc>, set: &pb::AllocationSet) {
        for step in recovery_plan(saved, &set.allocations) {
            match step {
                Recovery::Resume(latest, saved) => {
                    tracing::info!(alloc_id = %latest.id, "re-attaching to a saved allocation");
                    self.spawn(*latest, Some(*saved));
                }
                Recovery::Stop(saved) => {
                    tracing::info!(alloc_id = %saved.alloc.id, "saved allocation is no longer wanted, stopping its tasks");
                    let alloc = saved.alloc.clone();
                    self.spawn(alloc, Some(*saved)).stop();
                }
                Recovery::Ignore(id) => {
                    self.forgotten.insert(id);
                }
            }
        }
        // Owned: what the server wants here, and what is still being stopped.
        let mut owned: BTreeSet<String> = set
            .allocations
            .iter()
            .filter(|a| a.desired_status == ALLOC_DESIRED_RUN && !client_terminal(&a.client_status))
            .map(|a| a.id.clone())
            .collect();
        owned.extend(
            self.runners
                .iter()
                .filter(|(_, h)| !h.is_done())
                .map(|(id, _)| id.clone()),
        );
        let drivers = self.ctx.drivers.clone();
        tokio::spawn(async move {
            for driver in drivers.iter() {
                match driver.reap_unowned(&owned).await {
                    Ok(reaped) if reaped.is_empty() => {}
                    Ok(reaped) => {
                        tracing::info!(driver = driver.name(), reaped = ?reaped, "removed tasks no allocation owns");
                    }
                    // A driver this node cannot use has nothing to reap.
                    Err(err @ flotilla_drivers::DriverError::Unavailable { .. }) => {
                        tracing::debug!(driver = driver.name(), error = %err, "not reaping: driver unavailable");
                    }
                    Err(err) => {
                        tracing::warn!(driver = driver.name(), error = %err, "reaping unowned tasks failed");
                    }
                }
            }
        });
    }

    fn known(&self) -> HashMap<String, Phase> {
        let mut known: HashMap<String, Phase> = self
            .forgotten
            .iter()
            .map(|id| (id.clone(), Phase::Forgotten))
            .collect();
        for (id, h) in &self.runners {
            let phase = if h.is_done() {
                Phase::Done
            } else {
                Phase::Running
            };
            known.insert(id.clone(), phase);
        }
        known
    }

    /// Applies the server's latest full set.
    pub fn reconcile(&mut self, set: &pb::AllocationSet) {
        if let Some(saved) = self.restored.take() {
            self.recover(saved, set);
        }
        for action in plan(&set.allocations, &self.known(), &self.reported) {
            match action {
                Action::Start(alloc) => {
                    self.spawn(*alloc, None);
                }
                Action::Stop(id) => {
                    if let Some(h) = self.runners.get(&id) {
                        h.stop();
                    }
                }
                Action::Forget(id) => {
                    self.runners.remove(&id);
                    self.registry.remove(&id);
                    self.forgotten.insert(id);
                }
                Action::ReportStopped(id) => {
                    tracing::info!(alloc_id = %id, "allocation to stop is not running here, reporting it complete");
                    self.ctx.reporter.update(pb::AllocationStatus {
                        alloc_id: id.clone(),
                        client_status: ALLOC_CLIENT_COMPLETE.into(),
                        client_description: "Allocation is not running on this node".into(),
                        ..Default::default()
                    });
                    self.reported.insert(id);
                }
            }
        }
    }

    /// Stops every allocation at once (no shutdown delays: the agent is going away) and waits
    /// until all tasks have ended.
    pub async fn stop_all(&mut self) {
        for h in self.runners.values() {
            h.stop_now();
        }
        for h in self.runners.values() {
            h.wait().await;
        }
    }

    /// Lets go of every allocation, leaving its tasks running (their state is saved), and
    /// waits until every runner has returned.
    pub async fn detach_all(&mut self) {
        for h in self.runners.values() {
            h.detach();
        }
        for h in self.runners.values() {
            h.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(id: &str, desired: &str, client: &str) -> pb::Allocation {
        pb::Allocation {
            id: id.into(),
            desired_status: desired.into(),
            client_status: client.into(),
            ..Default::default()
        }
    }

    fn ids(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Start(a) => format!("start {}", a.id),
                Action::Stop(id) => format!("stop {id}"),
                Action::Forget(id) => format!("forget {id}"),
                Action::ReportStopped(id) => format!("report {id}"),
            })
            .collect()
    }

    #[test]
    fn starts_new_allocations_once() {
        let set = vec![alloc("a", "run", "pending"), alloc("b", "run", "running")];
        let none = HashMap::new();
        assert_eq!(
            ids(&plan(&set, &none, &HashSet::new())),
            ["start a", "start b"]
        );
        let known: HashMap<_, _> = [
            ("a".to_string(), Phase::Running),
            ("b".to_string(), Phase::Forgotten),
        ]
        .into();
        assert!(plan(&set, &known, &HashSet::new()).is_empty());
        // Done but still in the set (a finished task of a job that stays "run"): leave it.
        let known: HashMap<_, _> = [
            ("a".to_string(), Phase::Done),
            ("b".to_string(), Phase::Done),
        ]
        .into();
        assert!(plan(&set, &known, &HashSet::new()).is_empty());
    }

    #[test]
    fn does_not_start_what_already_finished() {
        let set = vec![alloc("a", "run", "complete"), alloc("b", "run", "failed")];
        assert!(plan(&set, &HashMap::new(), &HashSet::new()).is_empty());
    }

    #[test]
    fn stops_on_request_and_when_gone() {
        let set = vec![
            alloc("a", "stop", "running"),
            alloc("b", "evict", "running"),
        ];
        let known: HashMap<_, _> = [
            ("a".to_string(), Phase::Running),
            ("b".to_string(), Phase::Running),
            ("c".to_string(), Phase::Running),
            ("d".to_string(), Phase::Done),
            ("e".to_string(), Phase::Forgotten),
        ]
        .into();
        assert_eq!(
            ids(&plan(&set, &known, &HashSet::new())),
            ["stop a", "stop b", "stop c", "forget d"]
        );
    }

    fn saved(id: &str, running: bool) -> SavedAlloc {
        use crate::state::SavedTask;
        SavedAlloc {
            alloc: pb::Allocation {
                id: id.into(),
                tasks: vec![pb::Task {
                    name: "t".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            tasks: BTreeMap::from([(
                "t".to_string(),
                SavedTask {
                    state: pb::TaskState {
                        state: if running { "running" } else { "dead" }.into(),
                        ..Default::default()
                    },
                    handle: running.then(|| flotilla_drivers::RecoverState {
                        driver: "raw_exec".into(),
                        id: "pid:1".into(),
                        pid: Some(1),
                        started_at_unix_nanos: 0,
                        extra: BTreeMap::new(),
                    }),
                },
            )]),
        }
    }

    #[test]
    fn recovery_resumes_wanted_and_stops_the_rest() {
        let set = vec![
            alloc("wanted", "run", "running"),
            alloc("to-stop", "stop", "running"),
            alloc("done-agreed", "run", "complete"),
            alloc("done-unreported", "run", "running"),
        ];
        let plan = recovery_plan(
            vec![
                saved("wanted", true),
                saved("to-stop", true),
                saved("gone", true),
                saved("gone-finished", false),
                saved("done-agreed", false),
                saved("done-unreported", false),
            ],
            &set,
        );
        let got: Vec<String> = plan
            .iter()
            .map(|r| match r {
                Recovery::Resume(a, _) => format!("resume {}", a.id),
                Recovery::Stop(s) => format!("stop {}", s.alloc.id),
                Recovery::Ignore(id) => format!("ignore {id}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                "resume wanted",
                "stop to-stop",
                "stop gone",
                "ignore gone-finished",
                "ignore done-agreed",
                // Its final status may not have reached the server: report it again.
                "resume done-unreported",
            ]
        );
        // The server's version of a wanted allocation is the one resumed.
        if let Recovery::Resume(a, _) = &plan[0] {
            assert_eq!(a.desired_status, "run");
        }
    }

    #[test]
    fn reports_unknown_stopped_allocations_once() {
        let set = vec![
            alloc("x", "stop", "running"),
            alloc("y", "stop", "complete"),
        ];
        assert_eq!(
            ids(&plan(&set, &HashMap::new(), &HashSet::new())),
            ["report x"]
        );
        let reported: HashSet<_> = ["x".to_string()].into();
        assert!(plan(&set, &HashMap::new(), &reported).is_empty());
    }
}
