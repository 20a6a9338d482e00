//! Status reporting: alloc runners hand their latest status here; a background loop sends
//! `UpdateAllocations`, coalescing bursts and keeping only the newest status per allocation.
//! Failed sends are retried with backoff; a newer status replaces an unsent older one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flotilla_proto::agent::v1 as pb;
use tokio::sync::{Notify, watch};

use crate::client::{Backoff, CALL_TIMEOUT, ServerClient, sleep_or_shutdown};

/// How long to gather changes before sending.
const COALESCE: Duration = Duration::from_millis(50);

/// The queue of statuses waiting to be sent. Cheap to clone.
#[derive(Clone, Default)]
pub struct Reporter {
    pending: Arc<Mutex<BTreeMap<String, pb::AllocationStatus>>>,
    notify: Arc<Notify>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").finish_non_exhaustive()
    }
}

impl Reporter {
    /// Queues `status`, replacing any unsent status of the same allocation.
    pub fn update(&self, status: pb::AllocationStatus) {
        self.lock().insert(status.alloc_id.clone(), status);
        self.notify.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, pb::AllocationStatus>> {
        // The map stays consistent even if a holder panicked: every write is one insert.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self) -> Vec<pb::AllocationStatus> {
        std::mem::take(&mut *self.lock()).into_values().collect()
    }

    /// Puts back statuses whose send failed, unless a newer one arrived meanwhile.
    fn restore(&self, batch: Vec<pb::AllocationStatus>) {
        let mut pending = self.lock();
        for s in batch {
            pending.entry(s.alloc_id.clone()).or_insert(s);
        }
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    async fn send(
        &self,
        client: &ServerClient,
        node_id: &str,
        batch: Vec<pb::AllocationStatus>,
    ) -> bool {
        let count = batch.len();
        let req = pb::UpdateAllocationsRequest {
            node_id: node_id.to_string(),
            allocations: batch.clone(),
        };
        let mut c = client.clone();
        match tokio::time::timeout(CALL_TIMEOUT, c.update_allocations(req)).await {
            Ok(Ok(_)) => {
                tracing::debug!(count, "allocation statuses sent");
                true
            }
            Ok(Err(status)) => {
                tracing::warn!(count, code = ?status.code(), error = %status.message(), "sending allocation statuses failed, will retry");
                self.restore(batch);
                false
            }
            Err(_) => {
                tracing::warn!(count, "sending allocation statuses timed out, will retry");
                self.restore(batch);
                false
            }
        }
    }

    /// Sends queued statuses as they come, until `shutdown`.
    pub async fn run(
        self,
        client: ServerClient,
        node_id: String,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            if self.is_empty() {
                tokio::select! {
                    _ = self.notify.notified() => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
            if sleep_or_shutdown(COALESCE, &mut shutdown).await {
                return;
            }
            let batch = self.take();
            if batch.is_empty() {
                continue;
            }
            if self.send(&client, &node_id, batch).await {
                backoff.reset();
            } else if sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await {
                return;
            }
        }
    }

    /// Best-effort final send, retrying until everything is sent or `within` has passed.
    pub async fn flush(&self, client: &ServerClient, node_id: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let attempt = async {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
            loop {
                let batch = self.take();
                if batch.is_empty() || self.send(client, node_id, batch).await {
                    if self.is_empty() {
                        return;
                    }
                    continue;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        };
        if tokio::time::timeout_at(deadline, attempt).await.is_err() {
            tracing::warn!(
                unsent = self.lock().len(),
                "could not report final allocation statuses before the deadline"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, s: &str) -> pb::AllocationStatus {
        pb::AllocationStatus {
            alloc_id: id.into(),
            client_status: s.into(),
            ..Default::default()
        }
    }

    #[test]
    fn newest_status_wins_and_failed_sends_do_not_overwrite() {
        let r = Reporter::default();
        r.update(status("a", "pending"));
        r.update(status("a", "running"));
        r.update(status("b", "pending"));
        let batch = r.take();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].client_status, "running");
        // While the batch was in flight, `a` moved on; the failed batch must not undo that.
        r.update(status("a", "complete"));
        r.restore(batch);
        let again = r.take();
        assert_eq!(again.len(), 2);
        assert_eq!(again[0].client_status, "complete");
        assert_eq!(again[1].client_status, "pending");
    }
}
