//! `exec`: meant to run a command isolated from the host (chroot, cgroups, namespaces).
//!
//! **Not isolated yet.** Today it uses exactly the `raw_exec` mechanism (own process group,
//! task directory as working directory, only the agent-given environment) and is offered only
//! on Linux, where isolation will be added. Jobs written for Nomad's `exec` run unchanged, but
//! the task sees the host filesystem and runs as the agent's user (or the task's `user`, when the
//! agent runs as root).

use std::collections::BTreeSet;

use async_trait::async_trait;

use crate::{Driver, DriverError, DriverFingerprint, RecoverState, TaskHandle, TaskSpec, process};

/// The `exec` driver (no isolation yet; see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Exec;

#[async_trait]
impl Driver for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }

    async fn fingerprint(&self) -> DriverFingerprint {
        if cfg!(target_os = "linux") {
            DriverFingerprint {
                detected: true,
                healthy: true,
                description: "Healthy (no filesystem isolation yet)".into(),
            }
        } else {
            DriverFingerprint {
                detected: false,
                healthy: false,
                description: "exec is only available on Linux".into(),
            }
        }
    }

    async fn start(&self, spec: TaskSpec) -> Result<Box<dyn TaskHandle>, DriverError> {
        if !cfg!(target_os = "linux") {
            return Err(DriverError::Unavailable {
                name: "exec".into(),
                reason: "exec is only available on Linux".into(),
            });
        }
        Ok(Box::new(process::spawn(self.name(), &spec).await?))
    }

    async fn recover(
        &self,
        state: &RecoverState,
        _spec: &TaskSpec,
    ) -> Result<Box<dyn TaskHandle>, DriverError> {
        Ok(Box::new(process::recover(self.name(), state)?))
    }

    /// Nothing to do, as for `raw_exec`: the agent tracks its tasks through their
    /// [`RecoverState`]s.
    async fn reap_unowned(
        &self,
        _owned_alloc_ids: &BTreeSet<String>,
    ) -> Result<Vec<String>, DriverError> {
        Ok(Vec::new())
    }
}
