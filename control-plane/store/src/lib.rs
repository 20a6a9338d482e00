//! The control plane's state store.
//!
//! [`Store`] is the one interface every component uses: [`Store::snapshot`] gives an immutable,
//! cheap-to-clone view of the whole state ([`State`], built on persistent maps, so a snapshot
//! costs O(1) and never blocks writers), [`Store::apply`] commits a transaction of
//! [`Op`]s atomically under a new monotonic index, and [`Store::subscribe`] wakes watchers when the
//! index moves (blocking queries, the allocation watch, the discovery push and the evaluation
//! broker all hang off it).
//!
//! Two implementations: [`RedbStore`], the default, durable in a data directory (a transaction is
//! fsynced before `apply` returns, so an acknowledged write survives `kill -9`), and
//! [`MemStore`] for tests and benchmarks. Highly available setups will add an etcd-backed store
//! behind the same trait.

mod config_entries;
mod deployments;
mod mem;
mod redb_store;
mod state;

pub use config_entries::{config_entry_delete_conflicts, config_entry_write_conflicts};
pub use deployments::FailedDeployment;
pub use mem::MemStore;
pub use redb_store::RedbStore;
pub use state::{JOB_TRACKED_VERSIONS, JobKey, Op, State};

/// Errors from the store. Messages name the file or record involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("state store: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    #[error("state store: record {table}/{key} is corrupt: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A versioned, transactional store with watches.
pub trait Store: Send + Sync + 'static {
    /// The current state. Cheap: the maps are shared with the store, not copied.
    fn snapshot(&self) -> std::sync::Arc<State>;

    /// Apply `ops` atomically; returns the index they were committed at. When this returns
    /// `Ok`, the write is durable.
    fn apply(&self, ops: Vec<Op>) -> Result<u64, StoreError>;

    /// Read-modify-write: compute `ops` from the latest state and apply them with no other
    /// write in between. Returns the new index, or the current one when `f` returns no ops.
    fn apply_with(&self, f: &mut dyn FnMut(&State) -> Vec<Op>) -> Result<u64, StoreError>;

    /// Watch the latest committed index.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;

    /// The latest committed index.
    fn latest_index(&self) -> u64 {
        self.snapshot().index
    }
}

/// Wait until the store's index is greater than `after`, or `timeout` passes. Returns the index
/// seen last. This is the engine of blocking queries (`?index=N&wait=…`).
pub async fn wait_for_index(store: &dyn Store, after: u64, timeout: std::time::Duration) -> u64 {
    let mut rx = store.subscribe();
    let wait = rx.wait_for(|i| *i > after);
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(i)) => *i,
        _ => store.latest_index(),
    }
}
