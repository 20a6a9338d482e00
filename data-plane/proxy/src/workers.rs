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

use std::future::Future;
use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::drain::Drain;

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
    /// Starts `count` threads named `<name>-<i>`.
    pub fn start(name: &str, count: NonZeroUsize) -> io::Result<Workers> {
        let mut workers = Vec::with_capacity(count.get());
        for i in 0..count.get() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
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
