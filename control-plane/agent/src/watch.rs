//! The allocation watch: keeps a `WatchAllocations` stream open and publishes the latest full
//! set. Errors and server restarts only cause a reconnect; the set last seen stays in force
//! until a new one arrives, so running tasks are not touched.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::agent::v1 as pb;
use futures::StreamExt;
use tokio::sync::watch;

use crate::client::{Backoff, ServerClient, sleep_or_shutdown};

/// Streams allocation sets into `sets` until `shutdown`. Waits for the first registration.
pub async fn watch_allocations(
    client: ServerClient,
    node_id: String,
    mut registered: watch::Receiver<bool>,
    sets: watch::Sender<Option<Arc<pb::AllocationSet>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::select! {
        _ = registered.wait_for(|r| *r) => {}
        _ = shutdown.wait_for(|s| *s) => return,
    }
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let mut c = client.clone();
        let req = pb::WatchAllocationsRequest {
            node_id: node_id.clone(),
        };
        let opened = tokio::select! {
            r = tokio::time::timeout(crate::client::CALL_TIMEOUT, c.watch_allocations(req)) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match opened {
            Ok(Ok(resp)) => {
                let mut stream = resp.into_inner();
                tracing::debug!(node_id = %node_id, "allocation watch open");
                loop {
                    let item = tokio::select! {
                        item = stream.next() => item,
                        _ = shutdown.wait_for(|s| *s) => return,
                    };
                    match item {
                        Some(Ok(set)) => {
                            backoff.reset();
                            tracing::debug!(
                                index = set.index,
                                allocs = set.allocations.len(),
                                "allocation set received"
                            );
                            sets.send_replace(Some(Arc::new(set)));
                        }
                        Some(Err(status)) => {
                            tracing::warn!(code = ?status.code(), error = %status.message(), "allocation watch broke, reconnecting");
                            break;
                        }
                        None => {
                            tracing::info!("allocation watch ended by the server, reconnecting");
                            break;
                        }
                    }
                }
            }
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), error = %status.message(), "opening the allocation watch failed, retrying");
            }
            Err(_) => {
                tracing::warn!("opening the allocation watch timed out, retrying");
            }
        }
        if sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await {
            return;
        }
    }
}
