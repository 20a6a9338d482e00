//! Graceful shutdown: a drain signal, a grace period, then force.
//!
//! Every connection task is spawned through [`Drain::spawn`], so it is tracked and can be
//! cancelled. On [`Drain::shutdown`], accept loops stop, HTTP connections finish their in-flight
//! requests and close, and whatever is still running when the grace period ends is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use hyper_util::server::graceful::GracefulConnection;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

/// Resolves once a token is cancelled. The token's own future takes two locks on every poll;
/// this one, polled again by the task whose waker it already registered, reads one atomic flag
/// (set before the token is cancelled) and returns.
struct Cancelled {
    flag: Arc<AtomicBool>,
    wait: Pin<Box<WaitForCancellationFutureOwned>>,
    registered: Option<Waker>,
}

impl Cancelled {
    fn new(token: &CancellationToken, flag: &Arc<AtomicBool>) -> Cancelled {
        Cancelled {
            flag: flag.clone(),
            wait: Box::pin(token.clone().cancelled_owned()),
            registered: None,
        }
    }
}

impl Future for Cancelled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.flag.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            // The token will wake this same task when it is cancelled.
            return Poll::Pending;
        }
        match self.wait.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                self.registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Shared drain state. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    draining: CancellationToken,
    /// Mirrors `draining` for [`Drain::is_draining`] and [`Drain::signaled`], which the
    /// request path asks once per request: an atomic load instead of the token's lock.
    draining_flag: Arc<AtomicBool>,
    force: CancellationToken,
    force_flag: Arc<AtomicBool>,
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
        let force = Cancelled::new(&self.force, &self.force_flag);
        async move {
            tokio::select! {
                biased;
                () = task => {}
                () = force => {}
            }
        }
    }

    /// Resolves once shutdown has started. Cheap to poll again: a connection loop keeps one
    /// per connection and polls it once per request.
    pub fn signaled(&self) -> impl Future<Output = ()> + Send + Unpin + 'static {
        Cancelled::new(&self.draining, &self.draining_flag)
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
            self.force_flag.store(true, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signaled_wakes_a_waiter_that_polled_it_repeatedly() {
        let drain = Drain::new();
        let mut signaled = drain.signaled();
        // Polled several times by the same task while nothing happens.
        for _ in 0..3 {
            let polled = futures::poll!(&mut signaled);
            assert!(polled.is_pending());
        }
        assert!(!drain.is_draining());
        let waiter = tokio::spawn(signaled);
        tokio::task::yield_now().await;
        drain.signal();
        assert!(drain.is_draining());
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter was woken")
            .unwrap();
        // A future made after the signal is ready at once.
        assert!(futures::poll!(drain.signaled()).is_ready());
    }

    #[tokio::test]
    async fn force_ends_tasks_still_running_after_the_grace_period() {
        let drain = Drain::new();
        let (finished_tx, finished_rx) = tokio::sync::oneshot::channel::<()>();
        drain.spawn(async move {
            std::future::pending::<()>().await;
            let _ = finished_tx.send(());
        });
        let graceful = drain.shutdown(Duration::from_millis(50)).await;
        assert!(!graceful, "the pending task outlived the grace period");
        // The task was dropped, not finished.
        assert!(finished_rx.await.is_err());
    }
}
