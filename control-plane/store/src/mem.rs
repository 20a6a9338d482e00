use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::{Op, State, Store, StoreError};

/// A store that lives in memory only: for tests and benchmarks.
pub struct MemStore {
    state: ArcSwap<State>,
    write: Mutex<()>,
    index_tx: watch::Sender<u64>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    pub fn new() -> Self {
        Self::from_state(State::default())
    }

    pub fn from_state(state: State) -> Self {
        let (index_tx, _) = watch::channel(state.index);
        Self {
            state: ArcSwap::from_pointee(state),
            write: Mutex::new(()),
            index_tx,
        }
    }
}

impl MemStore {
    /// Apply `ops` on top of the current state; the caller holds the write lock.
    fn commit(&self, ops: Vec<Op>) -> u64 {
        let mut next = (*self.state.load_full()).clone();
        let index = next.index + 1;
        next.apply(ops, index);
        self.state.store(Arc::new(next));
        self.index_tx.send_replace(index);
        index
    }
}

impl Store for MemStore {
    fn snapshot(&self) -> Arc<State> {
        self.state.load_full()
    }

    fn apply(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.commit(ops))
    }

    fn apply_with(&self, f: &mut dyn FnMut(&State) -> Vec<Op>) -> Result<u64, StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let ops = f(&self.state.load());
        if ops.is_empty() {
            return Ok(self.state.load().index);
        }
        Ok(self.commit(ops))
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.index_tx.subscribe()
    }
}
