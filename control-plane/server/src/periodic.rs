//! Launches the children of periodic jobs on their cron schedule.
//!
//! The last launch of each periodic job is read back from its children in the store
//! (`<id>/periodic-<unix seconds>`), so a restarted server neither repeats nor loses a launch.
//! Only launches after the job was submitted count; a missed launch while the server was down
//! is run once on start (not once per missed occurrence). `prohibit_overlap` skips a launch
//! while the previous child still has live allocations. Schedules are evaluated in UTC.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use flotilla_store::{Op, State, Store};
use flotilla_types::*;
use tokio::sync::watch;
use tracing::{info, warn};

pub async fn run(store: Arc<dyn Store>, mut shutdown: watch::Receiver<bool>) {
    let mut crons: HashMap<String, Option<Cron>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let state = store.snapshot();
        let ops = due_launches(&state, Utc::now(), &mut crons);
        if ops.is_empty() {
            continue;
        }
        if let Err(e) = store.apply(ops) {
            warn!(error = %e, "could not launch periodic jobs");
        }
    }
}

/// The newest launch time (unix seconds) among the children of `parent`.
fn last_launch(state: &State, parent: &Job) -> Option<i64> {
    let prefix = format!("{}/periodic-", parent.id);
    state
        .jobs
        .values()
        .filter(|j| j.namespace == parent.namespace && j.parent_id == parent.id)
        .filter_map(|j| j.id.strip_prefix(&prefix)?.parse::<i64>().ok())
        .max()
}

fn child_running(state: &State, parent: &Job) -> bool {
    state
        .jobs
        .values()
        .filter(|j| j.namespace == parent.namespace && j.parent_id == parent.id)
        .any(|j| {
            state
                .allocs_by_job(&j.namespace, &j.id)
                .any(|a| !a.terminal())
        })
}

/// Jobs and evaluations for every periodic launch due at `now`. Pure but for the cron cache.
pub fn due_launches(
    state: &State,
    now: DateTime<Utc>,
    crons: &mut HashMap<String, Option<Cron>>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    for job in state.jobs.values().filter(|j| j.is_periodic() && !j.stop) {
        let Some(spec) = job.periodic.as_ref().map(|p| p.spec.clone()) else {
            continue;
        };
        let cron = crons.entry(spec.clone()).or_insert_with(|| match Cron::from_str(&spec) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(job = %job.id, spec = %spec, error = %e, "periodic spec does not parse; job will not launch");
                None
            }
        });
        let Some(cron) = cron.as_ref() else {
            continue;
        };
        let submitted = job.submit_time / NANOS_PER_SEC;
        let from_secs = last_launch(state, job).unwrap_or(submitted).max(submitted);
        let Some(from) = Utc.timestamp_opt(from_secs, 0).single() else {
            continue;
        };
        let Ok(next) = cron.find_next_occurrence(&from, false) else {
            continue;
        };
        if next > now {
            continue;
        }
        let prohibit = job.periodic.as_ref().is_some_and(|p| p.prohibit_overlap);
        if prohibit && child_running(state, job) {
            continue;
        }
        // Launch for the most recent due occurrence only, not every missed one.
        let launch = cron
            .find_previous_occurrence(&now, true)
            .map(|t| t.timestamp())
            .unwrap_or(next.timestamp())
            .max(next.timestamp());
        let mut child = job.periodic_child(launch);
        if state.job(&child.namespace, &child.id).is_some() {
            continue;
        }
        let now_nanos = now.timestamp_nanos_opt().unwrap_or_default();
        child.submit_time = now_nanos;
        info!(job = %job.id, child = %child.id, "periodic launch");
        let eval = crate::new_eval(&child, TRIGGER_PERIODIC_JOB, now_nanos);
        ops.push(Op::PutJob(child));
        ops.push(Op::PutEval(eval));
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_store::{MemStore, Store};

    fn periodic_job(spec: &str, submitted: i64) -> Job {
        let mut j = Job {
            id: "report".into(),
            job_type: JOB_TYPE_BATCH.into(),
            periodic: Some(PeriodicConfig {
                enabled: true,
                spec: spec.into(),
                ..Default::default()
            }),
            submit_time: submitted * NANOS_PER_SEC,
            ..Default::default()
        };
        j.canonicalize();
        j
    }

    #[test]
    fn launches_once_per_due_occurrence() {
        let store = MemStore::new();
        // Submitted at 00:00:30; runs every minute.
        let t0 = 1_699_999_980 + 30; // half past a whole minute
        store
            .apply(vec![Op::PutJob(periodic_job("* * * * *", t0))])
            .unwrap();
        let mut crons = HashMap::new();
        let before = Utc.timestamp_opt(t0 + 10, 0).unwrap();
        assert!(due_launches(&store.snapshot(), before, &mut crons).is_empty());
        let after = Utc.timestamp_opt(t0 + 40, 0).unwrap();
        let ops = due_launches(&store.snapshot(), after, &mut crons);
        assert_eq!(ops.len(), 2, "one child and its evaluation");
        store.apply(ops).unwrap();
        // Same minute again: nothing new.
        assert!(due_launches(&store.snapshot(), after, &mut crons).is_empty());
        // Ten minutes later (server was down): one launch, not ten.
        let later = Utc.timestamp_opt(t0 + 640, 0).unwrap();
        let ops = due_launches(&store.snapshot(), later, &mut crons);
        assert_eq!(ops.len(), 2);
        let Op::PutJob(child) = &ops[0] else {
            panic!("expected a job")
        };
        assert_eq!(child.parent_id, "report");
        assert!(child.periodic.is_none());
    }

    #[test]
    fn bad_spec_never_launches() {
        let store = MemStore::new();
        store
            .apply(vec![Op::PutJob(periodic_job("not a cron", 0))])
            .unwrap();
        let mut crons = HashMap::new();
        assert!(due_launches(&store.snapshot(), Utc::now(), &mut crons).is_empty());
    }
}
