//! Hands pending evaluations to scheduler workers.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_store::{JobKey, Store};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, warn};

use crate::applier;

/// How many times an evaluation is re-planned after its plan went stale before it fails.
const MAX_PLAN_ATTEMPTS: u32 = 5;

/// Run until `shutdown`: whenever the store moves, start a worker for each pending evaluation
/// whose job has no evaluation in flight, at most `workers` at a time.
pub async fn run(store: Arc<dyn Store>, workers: usize, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(workers.max(1)));
    let inflight: Arc<Mutex<HashSet<JobKey>>> = Arc::default();
    let mut index_rx = store.subscribe();
    loop {
        let snapshot = store.snapshot();
        let now = crate::now_nanos();
        for eval in snapshot.pending_evals() {
            // Delayed evaluations (reschedules after a failure) wait for their time.
            if eval.wait_until > now {
                continue;
            }
            let key = JobKey::new(&eval.namespace, &eval.job_id);
            {
                let mut set = inflight.lock().unwrap_or_else(|e| e.into_inner());
                if !set.insert(key.clone()) {
                    continue;
                }
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let store = store.clone();
            let inflight = inflight.clone();
            let eval = eval.clone();
            tokio::spawn(async move {
                let id = eval.id.clone();
                let result = tokio::task::spawn_blocking(move || process(&*store, &eval)).await;
                if let Err(e) = result {
                    warn!(eval = %id, error = %e, "scheduler worker panicked");
                }
                inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
                drop(permit);
            });
        }
        tokio::select! {
            changed = index_rx.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
            // Evaluations skipped because their job was busy, or delayed, are looked at again
            // shortly.
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Plan one evaluation and commit it, re-planning against fresh state if the plan went stale.
fn process(store: &dyn Store, eval: &flotilla_types::Evaluation) {
    for attempt in 1..=MAX_PLAN_ATTEMPTS {
        let snapshot = store.snapshot();
        // The evaluation may have been handled by a worker that finished just before.
        match snapshot.eval(&eval.id) {
            Some(e) if e.status == flotilla_types::EVAL_STATUS_PENDING => {}
            _ => return,
        }
        let mut new_id = crate::new_id;
        let mut env = flotilla_scheduler::Env::new(crate::now_nanos(), &mut new_id, rand_seed());
        let plan = flotilla_scheduler::schedule(&snapshot, eval, &mut env);
        match applier::commit(store, eval, &plan) {
            Ok(()) => {
                debug!(eval = %eval.id, job = %eval.job_id, placed = plan.place.len(), stopped = plan.stop.len(), "evaluation complete");
                return;
            }
            Err(applier::CommitError::Stale(problems)) => {
                debug!(eval = %eval.id, attempt, ?problems, "plan went stale; planning again");
            }
            Err(applier::CommitError::Store(e)) => {
                warn!(eval = %eval.id, error = %e, "could not commit plan");
                return;
            }
        }
    }
    let _ = applier::fail(store, eval, "plan went stale too many times");
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
        .unwrap_or(1)
}
