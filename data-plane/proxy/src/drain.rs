//! Graceful shutdown: a drain signal, a grace period, then force.
//!
//! Every connection task is spawned through [`Drain::spawn`], so it is tracked and can be
//! cancelled. On [`Drain::shutdown`], accept loops stop, HTTP connections finish their in-flight
//! requests and close, and whatever is still running when the grace period ends is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use hyper_util::server::graceful::GracefulConnection;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared drain state. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    draining: CancellationToken,
    /// Mirrors `draining` for [`Drain::is_draining`], which the request path asks once per
    /// request: an atomic load instead of the token's lock.
    draining_flag: Arc<AtomicBool>,
    force: CancellationToken,
    tasks: TaskTracker,
}

impl Drain {
    /// A drain that has not been signalled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns a tracked task that is dropped if the grace period runs out.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(self.forcible(task));
    }

    /// [`Drain::spawn`] onto the runtime behind `handle` (a forwarding worker's).
    pub fn spawn_on<F>(&self, handle: &tokio::runtime::Handle, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn_on(self.forcible(task), handle);
    }

    /// `task`, ended early when the grace period runs out.
    fn forcible<F>(&self, task: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let force = self.force.clone();
        async move {
            tokio::select! {
                () = task => {}
                () = force.cancelled() => {}
            }
        }
    }

    /// Resolves once shutdown has started.
    pub async fn signaled(&self) {
        self.draining.cancelled().await;
    }

    /// Whether shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.draining_flag.load(Ordering::Acquire)
    }

    /// Starts draining (accept loops stop, connections close once idle).
    pub fn signal(&self) {
        self.draining_flag.store(true, Ordering::Release);
        self.draining.cancel();
    }

    /// Signals, waits up to `grace` for tracked tasks, then drops the rest. Returns `true` when
    /// everything finished within the grace period.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.signal();
        self.tasks.close();
        let graceful = tokio::time::timeout(grace, self.tasks.wait()).await.is_ok();
        if !graceful {
            self.force.cancel();
            self.tasks.wait().await;
        }
        graceful
    }

    /// The next connection on `listener` with `TCP_NODELAY` set, or `None` once the drain has
    /// started. Accept errors (typically out of file descriptors) are logged, naming
    /// `listener_name`, and backed off instead of spinning.
    pub async fn accept(
        &self,
        listener: &TcpListener,
        listener_name: &str,
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                () = self.signaled() => {
                    info!(listener = listener_name, addr = ?listener.local_addr().ok(), "stopped accepting");
                    return None;
                }
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    // Latency over throughput for proxied traffic; failure is harmless.
                    let _ = tcp.set_nodelay(true);
                    return Some((tcp, peer));
                }
                Err(error) => {
                    warn!(listener = listener_name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Drives a hyper connection; on drain, asks it to finish in-flight requests and close.
    pub async fn serve<C>(&self, conn: C) -> Result<(), C::Error>
    where
        C: GracefulConnection,
    {
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => return res,
            () = self.signaled() => {}
        }
        conn.as_mut().graceful_shutdown();
        conn.await
    }
}
