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
            for t in [JOBS, NODES, ALLOCS, EVALS, SERVICES, INTENTIONS, MESH] {
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
        each(&txn, JOBS, "jobs", |j| state.load(Op::PutJob(j)))?;
        each(&txn, NODES, "nodes", |n| state.load(Op::PutNode(n)))?;
        each(&txn, ALLOCS, "allocs", |a| state.load(Op::PutAlloc(a)))?;
        each(&txn, EVALS, "evals", |e| state.load(Op::PutEval(e)))?;
        each(&txn, SERVICES, "services", |s| {
            state.load(Op::PutService(s))
        })?;
        each(&txn, INTENTIONS, "intentions", |i| {
            state.load(Op::PutIntention(i))
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
        let mut next = (*self.state.load_full()).clone();
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
            for op in &stored {
                match op {
                    Op::PutJob(j) => {
                        let key = JobKey::of(j).storage_key();
                        jobs.insert(key.as_str(), encode(j)?.as_slice())
                            .map_err(backend)?;
                    }
                    Op::DeleteJob(k) => {
                        jobs.remove(k.storage_key().as_str()).map_err(backend)?;
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

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.index_tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::*;

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
    fn corrupt_file_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.redb"), b"not a database").unwrap();
        let err = RedbStore::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("state.redb"), "{err}");
    }
}
