//! The allocation manager: reconciles each full set from the server with the alloc runners.
//!
//! The decision is a pure function ([`plan`]) of the set and what runs here; the manager
//! applies it. An allocation is started at most once per agent run, whatever the server sends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use flotilla_proto::agent::v1 as pb;
use flotilla_types::{
    ALLOC_CLIENT_COMPLETE, ALLOC_CLIENT_FAILED, ALLOC_CLIENT_LOST, ALLOC_DESIRED_EVICT,
    ALLOC_DESIRED_RUN, ALLOC_DESIRED_STOP,
};
use tokio::sync::watch;

use crate::runner::{AllocHandle, RunnerContext};

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

/// What the HTTP endpoint may know about a live allocation.
#[derive(Debug, Clone)]
pub struct LiveAlloc {
    pub tasks: Vec<String>,
    /// Turns true when every task has ended for good.
    pub done: watch::Receiver<bool>,
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
}

impl Manager {
    pub fn new(ctx: Arc<RunnerContext>, registry: Registry) -> Self {
        Self {
            ctx,
            runners: HashMap::new(),
            forgotten: HashSet::new(),
            reported: HashSet::new(),
            registry,
        }
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
        for action in plan(&set.allocations, &self.known(), &self.reported) {
            match action {
                Action::Start(alloc) => {
                    let id = alloc.id.clone();
                    let tasks = alloc.tasks.iter().map(|t| t.name.clone()).collect();
                    let handle = AllocHandle::spawn(self.ctx.clone(), *alloc);
                    self.registry.insert(
                        id.clone(),
                        LiveAlloc {
                            tasks,
                            done: handle.done_receiver(),
                        },
                    );
                    self.runners.insert(id, handle);
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

    /// Stops every allocation and waits until all tasks have ended.
    pub async fn stop_all(&mut self) {
        for h in self.runners.values() {
            h.stop();
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
