//! Shutdown on SIGINT or SIGTERM, as a watch channel every component can hold.

use tokio::sync::watch;

/// A receiver that turns `true` on the first SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::info!("shutdown requested; draining");
        let _ = tx.send(true);
    });
    rx
}

/// A future that resolves when `rx` turns true (or its sender is gone).
pub async fn wait(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Wait for `task` to finish; once `shutdown` has fired, give it at most `grace` before giving
/// up on it (a long blocking query or a stuck peer must not keep the process alive forever).
pub async fn drain(
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    shutdown: watch::Receiver<bool>,
    grace: std::time::Duration,
    what: &str,
) -> anyhow::Result<()> {
    let mut task = task;
    tokio::select! {
        r = &mut task => return r.map_err(|e| anyhow::anyhow!("{what} task: {e}"))?,
        _ = wait(shutdown) => {}
    }
    match tokio::time::timeout(grace, &mut task).await {
        Ok(r) => r.map_err(|e| anyhow::anyhow!("{what} task: {e}"))?,
        Err(_) => {
            tracing::warn!(grace = ?grace, "{what} did not drain in time; stopping anyway");
            task.abort();
            Ok(())
        }
    }
}
