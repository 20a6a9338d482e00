use std::sync::Arc;

use flotilla_types::{
    Allocation, CaState, ConfigEntry, Deployment, Evaluation, Intention, Job, MeshConfig, Node,
    ServiceRegistration,
};
use imbl::{OrdMap, OrdSet};

/// Jobs are keyed by namespace and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobKey {
    pub namespace: String,
    pub id: String,
}

impl JobKey {
    pub fn new(namespace: &str, id: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            id: id.to_string(),
        }
    }

    pub fn of(job: &Job) -> Self {
        Self::new(&job.namespace, &job.id)
    }

    /// The key's form in the durable store.
    pub fn storage_key(&self) -> String {
        format!("{}/{}", self.namespace, self.id)
    }
}

/// One change in a transaction. Index fields (`create_index`, `modify_index`) of the records are
/// set by the store. A job put with `job_modify_index == 0` is a new specification: the store
/// stamps it with the transaction's index too.
#[derive(Debug, Clone)]
pub enum Op {
    PutJob(Job),
    DeleteJob(JobKey),
    PutNode(Node),
    PutAlloc(Allocation),
    PutEval(Evaluation),
    DeleteEval(String),
    PutService(ServiceRegistration),
    DeleteService(String),
    /// Replaces the certificate authority's state (roots, trust domain, leaf TTL).
    PutCa(CaState),
    /// Creates or replaces the intention for its source/destination pair.
    PutIntention(Intention),
    /// Deletes the intention with this [`Intention::key`].
    DeleteIntention(String),
    PutMeshConfig(MeshConfig),
    /// Creates or replaces a deployment.
    PutDeployment(Deployment),
    /// Creates or replaces the config entry at its [`ConfigEntry::key`] (indexes stamped).
    PutConfigEntry(ConfigEntry),
    /// Deletes the config entry with this [`ConfigEntry::key`].
    DeleteConfigEntry(String),
}

/// Versions of a job kept for `job history` and `job revert` (Nomad's `JobTrackedVersions`).
pub const JOB_TRACKED_VERSIONS: usize = 6;

/// The whole control-plane state at one index. Immutable; clone it freely.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub index: u64,
    pub jobs: OrdMap<JobKey, Arc<Job>>,
    pub nodes: OrdMap<String, Arc<Node>>,
    pub allocs: OrdMap<String, Arc<Allocation>>,
    pub evals: OrdMap<String, Arc<Evaluation>>,
    pub services: OrdMap<String, Arc<ServiceRegistration>>,
    /// The mesh CA; `None` until the server bootstraps it.
    pub ca: Option<Arc<CaState>>,
    /// Intentions by [`Intention::key`] (source, destination).
    pub intentions: OrdMap<String, Arc<Intention>>,
    pub mesh: MeshConfig,
    /// Deployments by id.
    pub deployments: OrdMap<String, Arc<Deployment>>,
    /// The last [`JOB_TRACKED_VERSIONS`] versions of each job, by version.
    pub job_versions: OrdMap<JobKey, OrdMap<u64, Arc<Job>>>,
    /// Consul config entries by [`ConfigEntry::key`] (`kind/namespace/name`).
    pub config_entries: OrdMap<String, Arc<ConfigEntry>>,
    allocs_by_node: OrdMap<String, OrdSet<String>>,
    allocs_by_job: OrdMap<JobKey, OrdSet<String>>,
    /// Deployment ids of each job, by (create index, id): oldest first.
    deployments_by_job: OrdMap<JobKey, OrdSet<(u64, String)>>,
    services_by_alloc: OrdMap<String, OrdSet<String>>,
    pending_evals: OrdSet<(u64, String)>,
}

impl State {
    pub fn job(&self, namespace: &str, id: &str) -> Option<&Arc<Job>> {
        self.jobs.get(&JobKey::new(namespace, id))
    }

    pub fn node(&self, id: &str) -> Option<&Arc<Node>> {
        self.nodes.get(id)
    }

    pub fn alloc(&self, id: &str) -> Option<&Arc<Allocation>> {
        self.allocs.get(id)
    }

    pub fn eval(&self, id: &str) -> Option<&Arc<Evaluation>> {
        self.evals.get(id)
    }

    /// A job's kept versions, newest first.
    pub fn job_versions<'a>(
        &'a self,
        namespace: &str,
        id: &str,
    ) -> impl Iterator<Item = &'a Arc<Job>> {
        self.job_versions
            .get(&JobKey::new(namespace, id))
            .into_iter()
            .flat_map(|m| m.values().rev())
    }

    /// One kept version of a job.
    pub fn job_version(&self, namespace: &str, id: &str, version: u64) -> Option<&Arc<Job>> {
        self.job_versions
            .get(&JobKey::new(namespace, id))?
            .get(&version)
    }

    /// The config entry of this kind for this service.
    pub fn config_entry(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<&Arc<ConfigEntry>> {
        self.config_entries
            .get(&ConfigEntry::key_of(kind, namespace, name))
    }

    /// Every config entry of one kind, by namespace and name.
    pub fn config_entries_of_kind<'a>(
        &'a self,
        kind: &'a str,
    ) -> impl Iterator<Item = &'a Arc<ConfigEntry>> {
        let prefix = format!("{kind}/");
        self.config_entries
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
    }

    pub fn deployment(&self, id: &str) -> Option<&Arc<Deployment>> {
        self.deployments.get(id)
    }

    /// A job's deployments, newest first.
    pub fn deployments_by_job(&self, namespace: &str, job_id: &str) -> Vec<&Arc<Deployment>> {
        self.job_deployments(namespace, job_id).collect()
    }

    /// The job's newest deployment.
    pub fn latest_deployment(&self, namespace: &str, job_id: &str) -> Option<&Arc<Deployment>> {
        self.job_deployments(namespace, job_id).next()
    }

    fn job_deployments<'a>(
        &'a self,
        namespace: &str,
        job_id: &str,
    ) -> impl Iterator<Item = &'a Arc<Deployment>> {
        self.deployments_by_job
            .get(&JobKey::new(namespace, job_id))
            .into_iter()
            .flat_map(|ids| ids.iter().rev())
            .filter_map(|(_, id)| self.deployments.get(id))
    }

    /// Allocations placed on a node, terminal ones included.
    pub fn allocs_by_node<'a>(
        &'a self,
        node_id: &str,
    ) -> impl Iterator<Item = &'a Arc<Allocation>> {
        self.allocs_by_node
            .get(node_id)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.allocs.get(id))
    }

    /// Allocations of a job, terminal ones included.
    pub fn allocs_by_job<'a>(
        &'a self,
        namespace: &str,
        job_id: &str,
    ) -> impl Iterator<Item = &'a Arc<Allocation>> {
        self.allocs_by_job
            .get(&JobKey::new(namespace, job_id))
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.allocs.get(id))
    }

    /// Evaluations waiting for a scheduler, oldest first.
    pub fn pending_evals(&self) -> impl Iterator<Item = &Arc<Evaluation>> {
        self.pending_evals
            .iter()
            .filter_map(|(_, id)| self.evals.get(id))
    }

    /// A job's status as Nomad reports it: `running` while any allocation is live, `dead` once
    /// it is stopped (or a batch job finished) with nothing live, `pending` otherwise.
    pub fn job_status(&self, job: &Job) -> &'static str {
        let mut any = false;
        let mut live = false;
        for a in self.allocs_by_job(&job.namespace, &job.id) {
            any = true;
            if !a.terminal() {
                live = true;
                break;
            }
        }
        if live {
            flotilla_types::JOB_STATUS_RUNNING
        } else if job.stop || (any && job.job_type != flotilla_types::JOB_TYPE_SERVICE) {
            flotilla_types::JOB_STATUS_DEAD
        } else {
            flotilla_types::JOB_STATUS_PENDING
        }
    }

    /// Jobs to evaluate again when node `node_id` changes (joins, comes back, goes down, drains,
    /// changes eligibility): those with live allocations on it, and every running system or
    /// sysbatch job (they belong on every eligible node).
    pub fn jobs_affected_by_node(&self, node_id: &str) -> Vec<Arc<Job>> {
        let mut keys = std::collections::BTreeSet::new();
        for a in self.allocs_by_node(node_id).filter(|a| !a.terminal()) {
            keys.insert(JobKey::new(&a.namespace, &a.job_id));
        }
        for (key, job) in &self.jobs {
            let system = job.job_type == flotilla_types::JOB_TYPE_SYSTEM
                || job.job_type == flotilla_types::JOB_TYPE_SYSBATCH;
            if system && !job.stop {
                keys.insert(key.clone());
            }
        }
        keys.iter()
            .filter_map(|k| self.jobs.get(k).cloned())
            .collect()
    }

    /// An evaluation (with `node_id` set) for every job [affected](Self::jobs_affected_by_node)
    /// by a change of node `node_id`.
    pub fn node_change_evals(
        &self,
        node_id: &str,
        trigger: &str,
        now: i64,
        mut new_id: impl FnMut() -> String,
    ) -> Vec<flotilla_types::Evaluation> {
        self.jobs_affected_by_node(node_id)
            .iter()
            .map(|job| {
                let mut e = flotilla_types::Evaluation::for_job(job, trigger, new_id(), now);
                e.node_id = node_id.to_string();
                e
            })
            .collect()
    }

    /// Writes turning every blocked evaluation back into a pending one: capacity may have
    /// appeared (a node joined, came back or became eligible).
    pub fn unblock_ops(&self, now: i64) -> Vec<Op> {
        self.evals
            .values()
            .filter(|e| e.status == flotilla_types::EVAL_STATUS_BLOCKED)
            .map(|e| {
                let mut e = (**e).clone();
                e.status = flotilla_types::EVAL_STATUS_PENDING.to_string();
                e.triggered_by = flotilla_types::TRIGGER_QUEUED_ALLOCS.to_string();
                e.modify_time = now;
                Op::PutEval(e)
            })
            .collect()
    }

    /// Catalog registrations of one allocation's services.
    pub fn services_by_alloc<'a>(
        &'a self,
        alloc_id: &str,
    ) -> impl Iterator<Item = &'a Arc<ServiceRegistration>> {
        self.services_by_alloc
            .get(alloc_id)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.services.get(id))
    }

    /// Service registrations with this service name.
    pub fn services_named<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Arc<ServiceRegistration>> {
        self.services
            .values()
            .filter(move |s| s.service_name == name)
    }

    /// Apply `ops` at `index`, returning the records as stored (with their indexes set), in the
    /// order given. Pure: the durable backends call this after persisting.
    pub(crate) fn apply(&mut self, ops: Vec<Op>, index: u64) -> Vec<Op> {
        self.index = index;
        ops.into_iter()
            .map(|op| self.apply_one(op, Some(index)))
            .collect()
    }

    /// Load a kept job version read back from a durable store (the job itself is loaded with
    /// [`State::load`]).
    pub(crate) fn load_job_version(&mut self, job: Job) {
        self.track_version(Arc::new(job));
    }

    /// Keep `job` among its job's versions, dropping the oldest beyond the limit.
    fn track_version(&mut self, job: Arc<Job>) {
        let versions = self.job_versions.entry(JobKey::of(&job)).or_default();
        versions.insert(job.version, job);
        while versions.len() > JOB_TRACKED_VERSIONS {
            let oldest = versions.keys().next().copied();
            if let Some(v) = oldest {
                versions.remove(&v);
            }
        }
    }

    /// Load one record read back from a durable store, keeping its indexes as stored.
    pub(crate) fn load(&mut self, op: Op) {
        self.apply_one(op, None);
    }

    /// Apply one op. With `Some(index)` the record's create/modify indexes are set for a new
    /// write; with `None` (loading) they are kept.
    fn apply_one(&mut self, op: Op, index: Option<u64>) -> Op {
        fn stamp(create: &mut u64, modify: &mut u64, old_create: Option<u64>, index: Option<u64>) {
            if let Some(index) = index {
                *create = old_create.unwrap_or(index);
                *modify = index;
            }
        }
        match op {
            Op::PutJob(mut job) => {
                let key = JobKey::of(&job);
                let old = self.jobs.get(&key).map(|j| j.create_index);
                stamp(&mut job.create_index, &mut job.modify_index, old, index);
                if let Some(index) = index
                    && job.job_modify_index == 0
                {
                    job.job_modify_index = index;
                }
                let job_arc = Arc::new(job.clone());
                self.track_version(job_arc.clone());
                self.jobs.insert(key, job_arc);
                Op::PutJob(job)
            }
            Op::DeleteJob(key) => {
                self.jobs.remove(&key);
                self.job_versions.remove(&key);
                Op::DeleteJob(key)
            }
            Op::PutNode(mut node) => {
                let old = self.nodes.get(&node.id).map(|n| n.create_index);
                stamp(&mut node.create_index, &mut node.modify_index, old, index);
                self.nodes.insert(node.id.clone(), Arc::new(node.clone()));
                Op::PutNode(node)
            }
            Op::PutAlloc(mut alloc) => {
                let old = self.allocs.get(&alloc.id).cloned();
                let old_create = old.as_ref().map(|a| a.create_index);
                stamp(
                    &mut alloc.create_index,
                    &mut alloc.modify_index,
                    old_create,
                    index,
                );
                if let Some(old) = &old
                    && old.node_id != alloc.node_id
                    && let Some(set) = self.allocs_by_node.get_mut(&old.node_id)
                {
                    set.remove(&old.id);
                }
                self.allocs_by_node
                    .entry(alloc.node_id.clone())
                    .or_default()
                    .insert(alloc.id.clone());
                self.allocs_by_job
                    .entry(JobKey::new(&alloc.namespace, &alloc.job_id))
                    .or_default()
                    .insert(alloc.id.clone());
                self.allocs
                    .insert(alloc.id.clone(), Arc::new(alloc.clone()));
                Op::PutAlloc(alloc)
            }
            Op::PutEval(mut eval) => {
                let old = self.evals.get(&eval.id).cloned();
                stamp(
                    &mut eval.create_index,
                    &mut eval.modify_index,
                    old.as_ref().map(|e| e.create_index),
                    index,
                );
                if let Some(old) = old {
                    self.pending_evals
                        .remove(&(old.create_index, old.id.clone()));
                }
                if eval.status == flotilla_types::EVAL_STATUS_PENDING {
                    self.pending_evals
                        .insert((eval.create_index, eval.id.clone()));
                }
                self.evals.insert(eval.id.clone(), Arc::new(eval.clone()));
                Op::PutEval(eval)
            }
            Op::DeleteEval(id) => {
                if let Some(old) = self.evals.remove(&id) {
                    self.pending_evals
                        .remove(&(old.create_index, old.id.clone()));
                }
                Op::DeleteEval(id)
            }
            Op::PutService(mut svc) => {
                let old = self.services.get(&svc.id).map(|s| s.create_index);
                stamp(&mut svc.create_index, &mut svc.modify_index, old, index);
                self.services_by_alloc
                    .entry(svc.alloc_id.clone())
                    .or_default()
                    .insert(svc.id.clone());
                self.services.insert(svc.id.clone(), Arc::new(svc.clone()));
                Op::PutService(svc)
            }
            Op::DeleteService(id) => {
                if let Some(old) = self.services.remove(&id) {
                    let now_empty =
                        self.services_by_alloc
                            .get_mut(&old.alloc_id)
                            .is_some_and(|set| {
                                set.remove(&id);
                                set.is_empty()
                            });
                    if now_empty {
                        self.services_by_alloc.remove(&old.alloc_id);
                    }
                }
                Op::DeleteService(id)
            }
            Op::PutCa(ca) => {
                self.ca = Some(Arc::new(ca.clone()));
                Op::PutCa(ca)
            }
            Op::PutIntention(mut ixn) => {
                let key = Intention::key(&ixn.source_name, &ixn.destination_name);
                let old = self.intentions.get(&key).map(|i| i.create_index);
                stamp(&mut ixn.create_index, &mut ixn.modify_index, old, index);
                self.intentions.insert(key, Arc::new(ixn.clone()));
                Op::PutIntention(ixn)
            }
            Op::DeleteIntention(key) => {
                self.intentions.remove(&key);
                Op::DeleteIntention(key)
            }
            Op::PutMeshConfig(mesh) => {
                self.mesh = mesh;
                Op::PutMeshConfig(mesh)
            }
            Op::PutDeployment(mut d) => {
                let old = self.deployments.get(&d.id).map(|d| d.create_index);
                stamp(&mut d.create_index, &mut d.modify_index, old, index);
                let ids = self
                    .deployments_by_job
                    .entry(JobKey::new(&d.namespace, &d.job_id))
                    .or_default();
                if let Some(old) = old {
                    ids.remove(&(old, d.id.clone()));
                }
                ids.insert((d.create_index, d.id.clone()));
                self.deployments.insert(d.id.clone(), Arc::new(d.clone()));
                Op::PutDeployment(d)
            }
            Op::PutConfigEntry(mut entry) => {
                let key = entry.key();
                let old = self.config_entries.get(&key).map(|e| e.create_index());
                let (mut create, mut modify) = (entry.create_index(), entry.modify_index());
                stamp(&mut create, &mut modify, old, index);
                entry.set_indexes(create, modify);
                self.config_entries.insert(key, Arc::new(entry.clone()));
                Op::PutConfigEntry(entry)
            }
            Op::DeleteConfigEntry(key) => {
                self.config_entries.remove(&key);
                Op::DeleteConfigEntry(key)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::*;

    #[test]
    fn indexes_and_secondary_maps() {
        let mut s = State::default();
        let a = Allocation {
            id: "a1".into(),
            node_id: "n1".into(),
            namespace: "default".into(),
            job_id: "j".into(),
            ..Default::default()
        };
        s.apply(vec![Op::PutAlloc(a.clone())], 5);
        assert_eq!(s.allocs["a1"].create_index, 5);
        s.apply(
            vec![Op::PutAlloc(Allocation {
                node_id: "n2".into(),
                ..a
            })],
            6,
        );
        assert_eq!(s.allocs["a1"].create_index, 5);
        assert_eq!(s.allocs["a1"].modify_index, 6);
        assert_eq!(s.allocs_by_node("n1").count(), 0);
        assert_eq!(s.allocs_by_node("n2").count(), 1);
        assert_eq!(s.allocs_by_job("default", "j").count(), 1);
    }

    #[test]
    fn pending_evals_track_status() {
        let mut s = State::default();
        let e = Evaluation {
            id: "e1".into(),
            status: EVAL_STATUS_PENDING.into(),
            ..Default::default()
        };
        s.apply(vec![Op::PutEval(e.clone())], 1);
        assert_eq!(s.pending_evals().count(), 1);
        s.apply(
            vec![Op::PutEval(Evaluation {
                status: EVAL_STATUS_COMPLETE.into(),
                ..e
            })],
            2,
        );
        assert_eq!(s.pending_evals().count(), 0);
    }
}
