//! Scheduler throughput benchmark.
//!
//! [`run`] builds a [`MemStore`] holding a simulated cluster ([`cluster`]): `nodes` nodes of
//! mixed classes, datacenters, attributes and meta, then registers service, batch, system and
//! sysbatch jobs until their instances add up to `allocs`. Evaluations are planned by `workers`
//! threads in parallel with the real [`flotilla_scheduler::schedule`] against the latest
//! snapshot; one applier thread checks each plan with [`Plan::conflicts_with`] and commits it as
//! `PutAlloc` (and `PutEval`) ops through the store's `apply`, as the server does, sending stale
//! plans back to be planned again. The applier keeps a [`UsageIndex`] in step with the store and
//! publishes it with each snapshot.
//!
//! The [`Report`] gives placements and evaluations per second, evaluation latency (from the
//! first planning attempt to the commit), peak RSS, failed placements, and ratios against two
//! published reference figures: Nomad's C1M challenge (~3,750 placements/s with 5 servers) and
//! the Kubernetes scheduler's throughput SLO (400 pods/s).

pub mod cluster;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use flotilla_scheduler::{Algorithm, Env, Plan, UsageIndex, schedule};
use flotilla_store::{MemStore, Op, State, Store};
use flotilla_types::*;

use crate::cluster::{Kind, Rng};

/// Nomad's "C1M" challenge: 1,000,000 containers placed in about 4.5 minutes by 5 servers.
pub const NOMAD_C1M_PLACEMENTS_PER_SEC: f64 = 3_750.0;
/// The Kubernetes scheduler's throughput SLO.
pub const KUBERNETES_PODS_PER_SEC: f64 = 400.0;
/// Plans sent back this many times give up (counted as failed evaluations).
const MAX_ATTEMPTS: u32 = 10;

/// One benchmark run.
#[derive(Debug, Clone)]
pub struct Config {
    pub nodes: usize,
    pub allocs: usize,
    pub workers: usize,
    pub seed: u64,
    pub algorithm: Algorithm,
    /// Give the scheduler a [`UsageIndex`] (as a server should); without it, usage is read from
    /// each touched node's allocations.
    pub usage_index: bool,
    /// Advance the index by diffing states ([`UsageIndex::advance`], what a server with other
    /// writers needs) instead of from the applier's own writes
    /// ([`UsageIndex::advance_with`]).
    pub diff_index: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub nodes: usize,
    pub target_allocs: usize,
    pub workers: usize,
    pub jobs: BTreeMap<String, usize>,
    pub setup: Duration,
    pub index_build: Duration,
    pub elapsed: Duration,
    pub placements: u64,
    pub evaluations: u64,
    pub failed_evaluations: u64,
    pub failed_placements: u64,
    pub stale_plans: u64,
    pub partial_plans: u64,
    /// Why groups could not be placed (the first failure's description) → groups.
    pub failure_reasons: BTreeMap<String, u64>,
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    pub latency_max: Duration,
    /// Time the applier spent checking plans, writing them, and advancing the usage index.
    pub applier_check: Duration,
    pub applier_write: Duration,
    pub applier_index: Duration,
    /// Time workers spent planning, and waiting for their plans to be committed.
    pub planning: Duration,
    pub waiting: Duration,
    pub peak_rss_kib: Option<u64>,
    pub live_allocs: usize,
}

impl Report {
    pub fn placements_per_sec(&self) -> f64 {
        self.placements as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn evaluations_per_sec(&self) -> f64 {
        self.evaluations as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The report as people read it.
    pub fn render(&self) -> String {
        let pps = self.placements_per_sec();
        let jobs: Vec<String> = self.jobs.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let mut out = String::new();
        out += &format!(
            "== {} nodes, {} allocations ({}), {} worker(s) ==\n",
            self.nodes,
            self.target_allocs,
            jobs.join(", "),
            self.workers
        );
        out += &format!(
            "setup {:.2?} (index build {:.2?}); scheduling {:.2?}\n",
            self.setup, self.index_build, self.elapsed
        );
        out += &format!(
            "placements      {:>10}   {:>10.0}/s\n",
            self.placements, pps
        );
        out += &format!(
            "evaluations     {:>10}   {:>10.0}/s\n",
            self.evaluations,
            self.evaluations_per_sec()
        );
        out += &format!(
            "eval latency    p50 {:.2?}  p99 {:.2?}  max {:.2?}\n",
            self.latency_p50, self.latency_p99, self.latency_max
        );
        out += &format!(
            "failed          {} placement(s), {} evaluation(s)\n",
            self.failed_placements, self.failed_evaluations
        );
        let mut reasons: Vec<(&String, &u64)> = self.failure_reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        for (r, n) in reasons.into_iter().take(3) {
            out += &format!("  {n} group(s): {r}\n");
        }
        out += &format!(
            "re-planned      {} plan(s) committed in part, {} stale\n",
            self.partial_plans, self.stale_plans
        );
        out += &format!(
            "applier         check {:.2?}, write {:.2?}, index {:.2?}\n",
            self.applier_check, self.applier_write, self.applier_index
        );
        out += &format!(
            "workers         planning {:.2?}, waiting for commits {:.2?}\n",
            self.planning, self.waiting
        );
        out += &format!("live allocs     {}\n", self.live_allocs);
        match self.peak_rss_kib {
            Some(kib) => out += &format!("peak RSS        {:.1} MiB\n", kib as f64 / 1024.0),
            None => out += "peak RSS        unknown (no /proc/self/status)\n",
        }
        out += &format!(
            "vs Nomad C1M ({:.0} placements/s, 5 servers): {:.2}x\n",
            NOMAD_C1M_PLACEMENTS_PER_SEC,
            pps / NOMAD_C1M_PLACEMENTS_PER_SEC
        );
        out += &format!(
            "vs Kubernetes scheduler SLO ({:.0} pods/s):  {:.2}x\n",
            KUBERNETES_PODS_PER_SEC,
            pps / KUBERNETES_PODS_PER_SEC
        );
        out
    }
}

/// Peak resident set size of this process (`VmHWM`), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The latest committed state and the usage index that matches it.
struct Published {
    state: Arc<State>,
    index: Option<UsageIndex>,
}

/// An evaluation waiting to be planned (again).
struct Pending {
    eval: usize,
    first_start: Instant,
    attempts: u32,
}

enum Verdict {
    /// Committed whole, with this many placements.
    Committed(u64),
    /// Committed in part (some nodes no longer had room): plan the evaluation again.
    Partial(u64),
    /// Nothing could be committed.
    Stale,
}

struct Request {
    plan: Plan,
    eval: Evaluation,
    reply: mpsc::SyncSender<Verdict>,
}

#[derive(Default)]
struct WorkerStats {
    latencies: Vec<Duration>,
    placements: u64,
    failed_placements: u64,
    failed_evaluations: u64,
    stale: u64,
    partial: u64,
    failure_reasons: BTreeMap<String, u64>,
    planning: Duration,
    waiting: Duration,
}

/// Run the benchmark once.
pub fn run(cfg: &Config) -> anyhow::Result<Report> {
    let setup_start = Instant::now();
    let store = MemStore::new();
    let mut rng = Rng::new(cfg.seed);
    let mut nodes = Vec::with_capacity(cfg.nodes);
    for i in 0..cfg.nodes {
        nodes.push(cluster::node(&mut rng, i));
    }
    for chunk in nodes.chunks(1000) {
        store
            .apply(chunk.iter().cloned().map(Op::PutNode).collect())
            .context("registering nodes")?;
    }

    // Jobs until their instances reach the target: a few system jobs, the rest service/batch.
    let mut jobs: Vec<(Job, Kind)> = Vec::new();
    let mut wanted = 0usize;
    let systems = if cfg.allocs >= 10 * cfg.nodes { 3 } else { 1 };
    for s in 0..systems {
        if wanted + cfg.nodes > cfg.allocs {
            break;
        }
        let (job, kind) = cluster::system_job(&mut rng, s, s == 2);
        wanted += cfg.nodes;
        jobs.push((job, kind));
    }
    let mut n = 0;
    while wanted < cfg.allocs {
        let left = (cfg.allocs - wanted) as u32;
        let (job, kind) = cluster::job(&mut rng, n, left, cfg.nodes);
        wanted += job
            .task_groups
            .iter()
            .map(|g| g.count as usize)
            .sum::<usize>();
        jobs.push((job, kind));
        n += 1;
    }
    let mut job_counts: BTreeMap<String, usize> = BTreeMap::new();
    for (_, kind) in &jobs {
        *job_counts
            .entry(format!("{kind:?}").to_lowercase())
            .or_default() += 1;
    }
    // System jobs (node agents, log shippers) first, as a cluster is set up; with bin-packing,
    // nodes are full by the end and a late system job would not fit everywhere.
    let (system, rest): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .partition(|(_, k)| matches!(k, Kind::System | Kind::Sysbatch));
    let jobs: Vec<Job> = system.into_iter().chain(rest).map(|(j, _)| j).collect();
    for chunk in jobs.chunks(500) {
        store
            .apply(chunk.iter().cloned().map(Op::PutJob).collect())
            .context("registering jobs")?;
    }
    let state = store.snapshot();
    let evals: Vec<Evaluation> = jobs
        .iter()
        .map(|j| {
            let job = state.job(&j.namespace, &j.id).map_or(j, |j| &**j);
            Evaluation::for_job(job, TRIGGER_JOB_REGISTER, rng.uuid(), 0)
        })
        .collect();
    let index_start = Instant::now();
    let index = cfg.usage_index.then(|| UsageIndex::new(&state));
    let index_build = index_start.elapsed();
    let setup = setup_start.elapsed();

    let published = ArcSwap::from_pointee(Published { state, index });
    let queue: Mutex<VecDeque<Pending>> = Mutex::new(VecDeque::new());
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let total = evals.len();
    let (tx, rx) = mpsc::sync_channel::<Request>(cfg.workers.max(1) * 2);

    let start = Instant::now();
    let mut applier_times = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut worker_stats: Vec<WorkerStats> = Vec::new();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let applier = scope.spawn(|| apply_plans(&store, &published, rx, cfg.diff_index));
        let mut handles = Vec::new();
        for w in 0..cfg.workers.max(1) {
            let tx = tx.clone();
            let (published, queue, next, finished, evals) =
                (&published, &queue, &next, &finished, &evals);
            let mut rng = Rng::new(cfg.seed ^ (w as u64 + 1).wrapping_mul(0xA24BAED4963EE407));
            let algorithm = cfg.algorithm;
            handles.push(scope.spawn(move || {
                let mut stats = WorkerStats::default();
                loop {
                    let popped = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    let mut task = match popped {
                        Some(t) => t,
                        None => {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i < total {
                                Pending {
                                    eval: i,
                                    first_start: Instant::now(),
                                    attempts: 0,
                                }
                            } else if finished.load(Ordering::Acquire) >= total {
                                break;
                            } else {
                                std::thread::sleep(Duration::from_micros(200));
                                continue;
                            }
                        }
                    };
                    let eval = &evals[task.eval];
                    let snap = published.load_full();
                    let mut new_id = || rng.uuid();
                    let mut env = Env::new(0, &mut new_id, task.eval as u64);
                    env.algorithm = algorithm;
                    env.usage = snap.index.as_ref();
                    let t = Instant::now();
                    let plan = schedule(&snap.state, eval, &mut env);
                    stats.planning += t.elapsed();
                    drop(snap);
                    let queued: u64 = plan.queued.values().map(|q| u64::from(*q)).sum();
                    let reasons: Vec<String> = plan
                        .failed_tg_allocs
                        .values()
                        .map(|m| m.describe())
                        .collect();
                    let (reply, verdict) = mpsc::sync_channel(1);
                    let sent = tx.send(Request {
                        plan,
                        eval: eval.clone(),
                        reply,
                    });
                    if sent.is_err() {
                        break;
                    }
                    let t = Instant::now();
                    let verdict = verdict.recv();
                    stats.waiting += t.elapsed();
                    match verdict {
                        Ok(Verdict::Committed(placed)) => {
                            stats.latencies.push(task.first_start.elapsed());
                            stats.placements += placed;
                            stats.failed_placements += queued;
                            for r in reasons {
                                *stats.failure_reasons.entry(r).or_default() += 1;
                            }
                            finished.fetch_add(1, Ordering::AcqRel);
                        }
                        Ok(Verdict::Partial(placed)) => {
                            stats.placements += placed;
                            stats.partial += 1;
                            task.attempts += 1;
                            queue
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push_back(task);
                        }
                        Ok(Verdict::Stale) => {
                            stats.stale += 1;
                            task.attempts += 1;
                            if task.attempts >= MAX_ATTEMPTS {
                                stats.failed_evaluations += 1;
                                finished.fetch_add(1, Ordering::AcqRel);
                            } else {
                                queue
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push_back(task);
                            }
                        }
                        Err(_) => break,
                    }
                }
                stats
            }));
        }
        drop(tx);
        for h in handles {
            worker_stats.push(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a scheduler worker panicked"))?,
            );
        }
        applier_times = applier
            .join()
            .map_err(|_| anyhow::anyhow!("the plan applier panicked"))??;
        Ok(())
    })?;
    let elapsed = start.elapsed();

    let mut latencies: Vec<Duration> = worker_stats
        .iter()
        .flat_map(|s| s.latencies.iter().copied())
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    let final_state = store.snapshot();
    Ok(Report {
        nodes: cfg.nodes,
        target_allocs: cfg.allocs,
        workers: cfg.workers.max(1),
        jobs: job_counts,
        setup,
        index_build,
        elapsed,
        placements: worker_stats.iter().map(|s| s.placements).sum(),
        evaluations: latencies.len() as u64,
        failed_evaluations: worker_stats.iter().map(|s| s.failed_evaluations).sum(),
        failed_placements: worker_stats.iter().map(|s| s.failed_placements).sum(),
        stale_plans: worker_stats.iter().map(|s| s.stale).sum(),
        partial_plans: worker_stats.iter().map(|s| s.partial).sum(),
        failure_reasons: {
            let mut all: BTreeMap<String, u64> = BTreeMap::new();
            for s in &worker_stats {
                for (r, n) in &s.failure_reasons {
                    *all.entry(r.clone()).or_default() += n;
                }
            }
            all
        },
        latency_p50: pct(0.50),
        latency_p99: pct(0.99),
        latency_max: latencies.last().copied().unwrap_or_default(),
        applier_check: applier_times.0,
        applier_write: applier_times.1,
        applier_index: applier_times.2,
        planning: worker_stats.iter().map(|s| s.planning).sum(),
        waiting: worker_stats.iter().map(|s| s.waiting).sum(),
        peak_rss_kib: peak_rss_kib(),
        live_allocs: final_state
            .allocs
            .values()
            .filter(|a| !a.terminal())
            .count(),
    })
}

/// The plan applier: keep the part of each plan that still holds against the latest state,
/// commit it, advance the index, publish. Returns the time spent checking, writing and
/// indexing.
fn apply_plans(
    store: &MemStore,
    published: &ArcSwap<Published>,
    rx: mpsc::Receiver<Request>,
    diff_index: bool,
) -> anyhow::Result<(Duration, Duration, Duration)> {
    let (mut check, mut write, mut indexing) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for req in rx {
        let current = published.load_full();
        let t = Instant::now();
        let mut plan = req.plan;
        let problems = plan.retain_valid(&current.state, current.index.as_ref());
        check += t.elapsed();
        if !problems.is_empty() && plan.place.is_empty() {
            let _ = req.reply.send(Verdict::Stale);
            continue;
        }
        let t = Instant::now();
        let placed = plan.place.len() as u64;
        let Plan {
            place,
            stop,
            updates,
            failed_tg_allocs,
            ..
        } = plan;
        let written: Vec<String> = stop
            .iter()
            .chain(&updates)
            .chain(&place)
            .map(|a| a.id.clone())
            .collect();
        let mut ops: Vec<Op> = Vec::with_capacity(written.len() + 1);
        ops.extend(stop.into_iter().map(Op::PutAlloc));
        ops.extend(updates.into_iter().map(Op::PutAlloc));
        ops.extend(place.into_iter().map(Op::PutAlloc));
        if problems.is_empty() {
            let mut done = req.eval;
            done.status = EVAL_STATUS_COMPLETE.to_string();
            done.failed_tg_allocs = failed_tg_allocs;
            ops.push(Op::PutEval(done));
        }
        store.apply(ops).context("committing a plan")?;
        let state = store.snapshot();
        write += t.elapsed();
        let t = Instant::now();
        let index = current.index.clone().map(|mut ix| {
            if diff_index {
                ix.advance(&state);
            } else {
                ix.advance_with(&state, written.iter().map(String::as_str));
            }
            ix
        });
        indexing += t.elapsed();
        let previous = published.swap(Arc::new(Published { state, index }));
        let verdict = if problems.is_empty() {
            Verdict::Committed(placed)
        } else {
            Verdict::Partial(placed)
        };
        let _ = req.reply.send(verdict);
        // Free the superseded state's copied tree nodes after the worker has its answer.
        drop((previous, current, written));
    }
    Ok((check, write, indexing))
}
