use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::{JobKey, Op, State, Store, StoreError};

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const ALLOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("allocs");
const EVALS: TableDefinition<&str, &[u8]> = TableDefinition::new("evals");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const INTENTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("intentions");
const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");
/// Config entries, keyed by `ConfigEntry::key` (`kind/namespace/name`).
const CONFIG_ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("config_entries");
/// Kept job versions, keyed `<job storage key>@<version, 20 digits>`.
const JOB_VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("job_versions");

fn version_key(job: &JobKey, version: u64) -> String {
    format!("{}@{version:020}", job.storage_key())
}
/// Singletons: the CA state and the mesh config.
const MESH: TableDefinition<&str, &[u8]> = TableDefinition::new("mesh");
const MESH_CA: &str = "ca";
const MESH_CONFIG: &str = "config";
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_INDEX: &str = "index";

/// The default store: an embedded redb database in the data directory, with the whole state
/// mirrored in memory for reads. Each `apply` is one redb write transaction committed with
/// immediate durability (fsync) before the in-memory state moves on.
pub struct RedbStore {
    db: Database,
    state: ArcSwap<State>,
    write: Mutex<()>,
    index_tx: watch::Sender<u64>,
}

fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(backend)
}

impl RedbStore {
    /// Open (or create) `state.redb` in `dir`, loading everything into memory.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("state.redb");
        let open_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.display().to_string(),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(Box::new(e)))?;
        let db = Database::create(&path).map_err(|e| open_err(Box::new(e)))?;
        // Make sure every table exists, so reads below never fail on a fresh file.
        {
            let txn = db.begin_write().map_err(backend)?;
            for t in [
                JOBS,
                NODES,
                ALLOCS,
                EVALS,
                SERVICES,
                INTENTIONS,
                MESH,
                DEPLOYMENTS,
                JOB_VERSIONS,
                CONFIG_ENTRIES,
            ] {
                txn.open_table(t).map_err(backend)?;
            }
            txn.open_table(META).map_err(backend)?;
            txn.commit().map_err(backend)?;
        }
        let state = Self::load(&db)?;
        let (index_tx, _) = watch::channel(state.index);
        Ok(Self {
            db,
            state: ArcSwap::from_pointee(state),
            write: Mutex::new(()),
            index_tx,
        })
    }

    fn load(db: &Database) -> Result<State, StoreError> {
        let txn = db.begin_read().map_err(backend)?;
        let mut state = State::default();
        fn each<T: DeserializeOwned>(
            txn: &redb::ReadTransaction,
            def: TableDefinition<&str, &[u8]>,
            name: &'static str,
            mut f: impl FnMut(T),
        ) -> Result<(), StoreError> {
            let table = txn.open_table(def).map_err(backend)?;
            for row in table.iter().map_err(backend)? {
                let (k, v) = row.map_err(backend)?;
                let value = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    table: name,
                    key: k.value().to_string(),
                    source: e,
                })?;
                f(value);
            }
            Ok(())
        }
        each(&txn, JOB_VERSIONS, "job_versions", |j| {
            state.load_job_version(j)
        })?;
        each(&txn, JOBS, "jobs", |j| state.load(Op::PutJob(j)))?;
        each(&txn, DEPLOYMENTS, "deployments", |d| {
            state.load(Op::PutDeployment(d))
        })?;
        each(&txn, NODES, "nodes", |n| state.load(Op::PutNode(n)))?;
        each(&txn, ALLOCS, "allocs", |a| state.load(Op::PutAlloc(a)))?;
        each(&txn, EVALS, "evals", |e| state.load(Op::PutEval(e)))?;
        each(&txn, SERVICES, "services", |s| {
            state.load(Op::PutService(s))
        })?;
        each(&txn, INTENTIONS, "intentions", |i| {
            state.load(Op::PutIntention(i))
        })?;
        each(&txn, CONFIG_ENTRIES, "config_entries", |e| {
            state.load(Op::PutConfigEntry(e))
        })?;
        let mesh = txn.open_table(MESH).map_err(backend)?;
        for key in [MESH_CA, MESH_CONFIG] {
            let Some(bytes) = mesh.get(key).map_err(backend)? else {
                continue;
            };
            let corrupt = |source| StoreError::Corrupt {
                table: "mesh",
                key: key.to_string(),
                source,
            };
            let op = if key == MESH_CA {
                Op::PutCa(serde_json::from_slice(bytes.value()).map_err(corrupt)?)
            } else {
                Op::PutMeshConfig(serde_json::from_slice(bytes.value()).map_err(corrupt)?)
            };
            state.load(op);
        }
        let meta = txn.open_table(META).map_err(backend)?;
        state.index = meta
            .get(META_INDEX)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        Ok(state)
    }
}

impl Store for RedbStore {
    fn snapshot(&self) -> Arc<State> {
        self.state.load_full()
    }

    fn apply(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.commit(ops)
    }

    fn apply_with(&self, f: &mut dyn FnMut(&State) -> Vec<Op>) -> Result<u64, StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let ops = f(&self.state.load());
        if ops.is_empty() {
            return Ok(self.state.load().index);
        }
        self.commit(ops)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.index_tx.subscribe()
    }
}

impl RedbStore {
    /// Persist `ops` on top of the current state, then publish it; the caller holds the write
    /// lock.
    fn commit(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        let before = self.state.load_full();
        let mut next = (*before).clone();
        let index = next.index + 1;
        // Stamp indexes in memory first (on a copy), then persist exactly what was stamped.
        let stored = next.apply(ops, index);
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut jobs = txn.open_table(JOBS).map_err(backend)?;
            let mut nodes = txn.open_table(NODES).map_err(backend)?;
            let mut allocs = txn.open_table(ALLOCS).map_err(backend)?;
            let mut evals = txn.open_table(EVALS).map_err(backend)?;
            let mut services = txn.open_table(SERVICES).map_err(backend)?;
            let mut intentions = txn.open_table(INTENTIONS).map_err(backend)?;
            let mut mesh = txn.open_table(MESH).map_err(backend)?;
            let mut deployments = txn.open_table(DEPLOYMENTS).map_err(backend)?;
            let mut versions = txn.open_table(JOB_VERSIONS).map_err(backend)?;
            let mut config_entries = txn.open_table(CONFIG_ENTRIES).map_err(backend)?;
            // Versions that were kept before and are not any more (pruned or purged).
            let dropped_versions = |key: &JobKey| -> Vec<String> {
                let kept_now = next.job_versions.get(key);
                before
                    .job_versions
                    .get(key)
                    .into_iter()
                    .flat_map(|m| m.keys())
                    .filter(|v| kept_now.is_none_or(|m| !m.contains_key(*v)))
                    .map(|v| version_key(key, *v))
                    .collect()
            };
            for op in &stored {
                match op {
                    Op::PutJob(j) => {
                        let key = JobKey::of(j);
                        let bytes = encode(j)?;
                        jobs.insert(key.storage_key().as_str(), bytes.as_slice())
                            .map_err(backend)?;
                        versions
                            .insert(version_key(&key, j.version).as_str(), bytes.as_slice())
                            .map_err(backend)?;
                        for old in dropped_versions(&key) {
                            versions.remove(old.as_str()).map_err(backend)?;
                        }
                    }
                    Op::DeleteJob(k) => {
                        jobs.remove(k.storage_key().as_str()).map_err(backend)?;
                        for old in dropped_versions(k) {
                            versions.remove(old.as_str()).map_err(backend)?;
                        }
                    }
                    Op::PutNode(n) => {
                        nodes
                            .insert(n.id.as_str(), encode(n)?.as_slice())
                            .map_err(backend)?;
                    }
                    Op::PutAlloc(a) => {
                        allocs
                            .insert(a.id.as_str(), encode(a)?.as_slice())
                            .map_err(backend)?;
                    }
                    Op::PutEval(e) => {
                        evals
                            .insert(e.id.as_str(), encode(e)?.as_slice())
                            .map_err(backend)?;
                    }
                    Op::DeleteEval(id) => {
                        evals.remove(id.as_str()).map_err(backend)?;
                    }
                    Op::PutService(s) => {
                        services
                            .insert(s.id.as_str(), encode(s)?.as_slice())
                            .map_err(backend)?;
                    }
                    Op::DeleteService(id) => {
                        services.remove(id.as_str()).map_err(backend)?;
                    }
                    Op::PutCa(ca) => {
                        mesh.insert(MESH_CA, encode(ca)?.as_slice())
                            .map_err(backend)?;
                    }
                    Op::PutIntention(i) => {
                        let key =
                            flotilla_types::Intention::key(&i.source_name, &i.destination_name);
                        intentions
                            .insert(key.as_str(), encode(i)?.as_slice())
                            .map_err(backend)?;
                    }
                    Op::DeleteIntention(key) => {
                        intentions.remove(key.as_str()).map_err(backend)?;
                    }
                    Op::PutMeshConfig(cfg) => {
                        mesh.insert(MESH_CONFIG, encode(cfg)?.as_slice())
                            .map_err(backend)?;
                    }
                    Op::PutDeployment(d) => {
                        deployments
                            .insert(d.id.as_str(), encode(d)?.as_slice())
                            .map_err(backend)?;
                    }
                    Op::PutConfigEntry(e) => {
                        config_entries
                            .insert(e.key().as_str(), encode(e)?.as_slice())
                            .map_err(backend)?;
                    }
                    Op::DeleteConfigEntry(key) => {
                        config_entries.remove(key.as_str()).map_err(backend)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(META_INDEX, index).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        self.state.store(Arc::new(next));
        self.index_tx.send_replace(index);
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::*;

    #[test]
    fn job_versions_and_deployments_survive_reopen_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let job = |version: u64| {
            let mut j = Job {
                id: "web".into(),
                version,
                meta: [("v".to_string(), version.to_string())].into(),
                ..Default::default()
            };
            j.canonicalize();
            j
        };
        {
            let s = RedbStore::open(dir.path()).unwrap();
            for v in 0..9 {
                s.apply(vec![Op::PutJob(job(v))]).unwrap();
            }
            s.apply(vec![Op::PutDeployment(Deployment {
                id: "d1".into(),
                namespace: "default".into(),
                job_id: "web".into(),
                job_version: 8,
                status: DEPLOYMENT_STATUS_RUNNING.into(),
                ..Default::default()
            })])
            .unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        let snap = s.snapshot();
        let kept: Vec<u64> = snap
            .job_versions("default", "web")
            .map(|j| j.version)
            .collect();
        assert_eq!(kept, vec![8, 7, 6, 5, 4, 3]);
        assert_eq!(
            snap.job_version("default", "web", 5).unwrap().meta["v"],
            "5"
        );
        assert!(snap.job_version("default", "web", 2).is_none());
        let d = snap.deployment("d1").unwrap();
        assert_eq!(d.job_version, 8);
        assert!(d.create_index > 0);
        assert_eq!(snap.latest_deployment("default", "web").unwrap().id, "d1");
        // Purging the job forgets its versions, durably.
        s.apply(vec![Op::DeleteJob(JobKey::new("default", "web"))])
            .unwrap();
        drop(s);
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(s.snapshot().job_versions("default", "web").count(), 0);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RedbStore::open(dir.path()).unwrap();
            let mut job = Job {
                id: "hello".into(),
                ..Default::default()
            };
            job.canonicalize();
            let i1 = s.apply(vec![Op::PutJob(job.clone())]).unwrap();
            let i2 = s
                .apply(vec![Op::PutAlloc(Allocation {
                    id: "a".into(),
                    node_id: "n".into(),
                    namespace: "default".into(),
                    job_id: "hello".into(),
                    job: Some(Arc::new(job)),
                    ..Default::default()
                })])
                .unwrap();
            assert!(i2 > i1);
        }
        let s = RedbStore::open(dir.path()).unwrap();
        let snap = s.snapshot();
        assert_eq!(snap.index, 2);
        assert_eq!(snap.job("default", "hello").unwrap().create_index, 1);
        assert_eq!(snap.allocs_by_node("n").count(), 1);
        assert_eq!(snap.allocs_by_job("default", "hello").count(), 1);
    }

    #[test]
    fn mesh_records_survive_reopen() {
        use flotilla_types::{CaRoot, CaState, Intention, IntentionAction, MeshConfig};
        let dir = tempfile::tempdir().unwrap();
        let ixn = |src: &str, dst: &str| Intention {
            source_name: src.into(),
            destination_name: dst.into(),
            action: IntentionAction::Deny,
            ..Default::default()
        };
        {
            let s = RedbStore::open(dir.path()).unwrap();
            s.apply(vec![
                Op::PutCa(CaState {
                    trust_domain: "t.flotilla".into(),
                    leaf_cert_ttl: 60,
                    roots: vec![CaRoot {
                        id: "r1".into(),
                        private_key: "key".into(),
                        active: true,
                        ..Default::default()
                    }],
                }),
                Op::PutIntention(ixn("web", "db")),
                Op::PutIntention(ixn("*", "db")),
                Op::PutMeshConfig(MeshConfig {
                    default_intention: IntentionAction::Deny,
                }),
            ])
            .unwrap();
            s.apply(vec![Op::DeleteIntention(Intention::key("*", "db"))])
                .unwrap();
        }
        let snap = RedbStore::open(dir.path()).unwrap().snapshot();
        let ca = snap.ca.as_ref().unwrap();
        assert_eq!(ca.trust_domain, "t.flotilla");
        assert_eq!(ca.roots[0].private_key, "key");
        assert_eq!(snap.intentions.len(), 1);
        assert_eq!(
            snap.intentions[&Intention::key("web", "db")].action,
            IntentionAction::Deny
        );
        assert_eq!(snap.mesh.default_intention, IntentionAction::Deny);
    }

    #[test]
    fn config_entries_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let defaults = |protocol: &str| {
            ConfigEntry::ServiceDefaults(ServiceDefaults {
                name: "web".into(),
                protocol: protocol.into(),
                ..Default::default()
            })
        };
        let resolver = ConfigEntry::ServiceResolver(ServiceResolver {
            name: "web".into(),
            connect_timeout: Some(std::time::Duration::from_secs(5)),
            ..Default::default()
        });
        {
            let s = RedbStore::open(dir.path()).unwrap();
            s.apply(vec![Op::PutConfigEntry(defaults("tcp"))]).unwrap();
            s.apply(vec![
                Op::PutConfigEntry(defaults("http")),
                Op::PutConfigEntry(resolver.clone()),
            ])
            .unwrap();
            s.apply(vec![Op::DeleteConfigEntry(resolver.key())])
                .unwrap();
        }
        let snap = RedbStore::open(dir.path()).unwrap().snapshot();
        let d = snap
            .config_entry(KIND_SERVICE_DEFAULTS, "default", "web")
            .unwrap();
        assert_eq!((d.create_index(), d.modify_index()), (1, 2));
        let ConfigEntry::ServiceDefaults(sd) = &**d else {
            panic!("not defaults")
        };
        assert_eq!(sd.protocol, "http");
        assert!(
            snap.config_entry(KIND_SERVICE_RESOLVER, "default", "web")
                .is_none()
        );
        assert_eq!(
            snap.config_entries_of_kind(KIND_SERVICE_DEFAULTS).count(),
            1
        );
        assert_eq!(snap.config_entries_of_kind(KIND_SERVICE_ROUTER).count(), 0);
    }

    #[test]
    fn corrupt_file_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.redb"), b"not a database").unwrap();
        let err = RedbStore::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("state.redb"), "{err}");
    }
}
