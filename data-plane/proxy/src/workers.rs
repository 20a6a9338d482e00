//! Forwarding workers: one thread per core, each running its own current-thread tokio runtime,
//! as pingora's and HAProxy's threads do.
//!
//! An accept loop (on the caller's runtime) hands every accepted connection to the worker with
//! the fewest open connections. From then on the connection, its requests and the upstream
//! connections they use (each worker has its own pool) live on that one thread: no task wakes
//! another thread, and no pool lock is contended. The cost is one hand-off per connection.
//!
//! Connection tasks are spawned through the [`Drain`], so shutdown waits for them (and forces
//! them) exactly as for tasks on the main runtime; [`Workers::stop`] then ends the threads.
//!
//! With [`Affinity::Auto`] (the default) and one worker for each CPU the process may run on,
//! worker `i` is pinned to the `i`-th of those CPUs (as HAProxy's `cpu-map` and nginx's
//! `worker_cpu_affinity auto` do): the two workers never queue behind each other on one CPU,
//! and each keeps its caches. Measured on a 2-CPU machine under 64 keep-alive connections, with
//! the client and the upstream on the same CPUs, pinned workers had the lower p99 in 10 of 10
//! rounds run in alternating order. With fewer or more workers than CPUs nothing is pinned,
//! since then pinning could crowd workers onto CPUs the kernel would have spread them from.

use std::future::Future;
use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::drain::Drain;

/// Whether forwarding workers are pinned to CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Affinity {
    /// Pin worker `i` to the `i`-th allowed CPU when there is exactly one worker per allowed
    /// CPU; otherwise leave placement to the kernel.
    #[default]
    Auto,
    /// Never pin: the kernel places the threads.
    None,
}

/// The forwarding threads.
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// Connections spawned on this worker and not yet finished.
    open: Arc<AtomicUsize>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The default worker count: one per CPU the process may use.
pub fn default_count() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

impl Workers {
    /// Starts `count` threads named `<name>-<i>`, pinned to CPUs as `affinity` says.
    pub fn start(name: &str, count: NonZeroUsize, affinity: Affinity) -> io::Result<Workers> {
        let cpus = match affinity {
            Affinity::Auto => pinning(count),
            Affinity::None => None,
        };
        let mut workers = Vec::with_capacity(count.get());
        for i in 0..count.get() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let cpu = cpus.as_ref().map(|cpus| cpus[i]);
            let thread_name = format!("{name}-{i}");
            let thread = std::thread::Builder::new()
                .name(thread_name.clone())
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_current_thread(&thread_name, cpu);
                    }
                    // Tasks spawned through the handle run while this blocks; dropping the
                    // runtime afterwards drops whatever is left (the drain has forced it).
                    let _ = runtime.block_on(stopped);
                })?;
            workers.push(Worker {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
                stop: Mutex::new(Some(stop)),
                thread: Mutex::new(Some(thread)),
            });
        }
        Ok(Workers { workers })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The worker with the fewest open connections (the lowest index on a tie).
    pub fn least_loaded(&self) -> usize {
        self.workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.open.load(Ordering::Relaxed))
            .map_or(0, |(i, _)| i)
    }

    /// Runs `connection` on worker `index` as a drain-tracked task, counted as open until it
    /// finishes. The future first runs on the worker, so sockets it registers (e.g.
    /// `TcpStream::from_std`) belong to that worker's reactor.
    pub fn spawn<F>(&self, index: usize, drain: &Drain, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let worker = &self.workers[index % self.workers.len()];
        let open = OpenGuard::new(worker.open.clone());
        drain.spawn_on(&worker.handle, async move {
            let _open = open;
            connection.await;
        });
    }

    /// Ends the threads. Call after the drain finished, so no connection is cut short.
    pub async fn stop(&self) {
        let mut threads = Vec::new();
        for worker in &self.workers {
            if let Some(stop) = worker.stop.lock().ok().and_then(|mut s| s.take()) {
                let _ = stop.send(());
            }
            threads.extend(worker.thread.lock().ok().and_then(|mut t| t.take()));
        }
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// The CPUs to pin `count` workers to, one each: the CPUs this process may run on, when there
/// are exactly `count` of them.
fn pinning(count: NonZeroUsize) -> Option<Vec<usize>> {
    let cpus = allowed_cpus()
        .inspect_err(|error| warn!(%error, "cannot read the CPU affinity; workers not pinned"))
        .ok()?;
    if cpus.len() != count.get() {
        debug!(
            workers = count.get(),
            cpus = cpus.len(),
            "workers not pinned: not one worker per allowed CPU"
        );
        return None;
    }
    Some(cpus)
}

/// The CPUs the calling thread may run on, in ascending order.
fn allowed_cpus() -> nix::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0))?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

/// Pins the calling thread to `cpu`; a failure (the CPU went offline, a cgroup forbids it)
/// leaves the thread unpinned and says so.
fn pin_current_thread(thread: &str, cpu: usize) {
    let mut set = CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
    match pinned {
        Ok(()) => debug!(thread, cpu, "worker pinned"),
        Err(error) => warn!(thread, cpu, %error, "cannot pin the worker; it stays unpinned"),
    }
}

/// Decrements a worker's open count when the connection task ends (or is dropped).
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPUs each worker thread may run on, asked on the thread itself.
    async fn worker_cpus(workers: &Workers) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        for worker in &workers.workers {
            let cpus = worker
                .handle
                .spawn(async { allowed_cpus().expect("affinity") });
            out.push(cpus.await.expect("worker task"));
        }
        out
    }

    fn count(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).expect("non-zero")
    }

    #[tokio::test]
    async fn auto_pins_one_worker_to_each_allowed_cpu() {
        let cpus = allowed_cpus().expect("affinity");
        let workers = Workers::start("pin-test", count(cpus.len()), Affinity::Auto).unwrap();
        let expected: Vec<Vec<usize>> = cpus.iter().map(|&cpu| vec![cpu]).collect();
        assert_eq!(worker_cpus(&workers).await, expected);
        workers.stop().await;
    }

    #[tokio::test]
    async fn no_pinning_when_workers_and_cpus_differ_or_when_turned_off() {
        let cpus = allowed_cpus().expect("affinity");
        let more = Workers::start("pin-test", count(cpus.len() + 1), Affinity::Auto).unwrap();
        assert_eq!(worker_cpus(&more).await, vec![cpus.clone(); cpus.len() + 1]);
        more.stop().await;
        let off = Workers::start("pin-test", count(cpus.len()), Affinity::None).unwrap();
        assert_eq!(worker_cpus(&off).await, vec![cpus.clone(); cpus.len()]);
        off.stop().await;
    }
}
