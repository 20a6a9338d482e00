//! `raw_exec`: runs a command as a plain child process of the agent, without isolation.

use std::collections::BTreeSet;

use async_trait::async_trait;

use crate::{Driver, DriverError, DriverFingerprint, RecoverState, TaskHandle, TaskSpec, process};

/// The `raw_exec` driver. See the crate docs for how commands are found and stopped.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawExec;

#[async_trait]
impl Driver for RawExec {
    fn name(&self) -> &'static str {
        "raw_exec"
    }

    async fn fingerprint(&self) -> DriverFingerprint {
        DriverFingerprint {
            detected: cfg!(unix),
            healthy: cfg!(unix),
            description: "Healthy".into(),
        }
    }

    async fn start(&self, spec: TaskSpec) -> Result<Box<dyn TaskHandle>, DriverError> {
        Ok(Box::new(process::spawn(self.name(), &spec).await?))
    }

    async fn recover(
        &self,
        state: &RecoverState,
        _spec: &TaskSpec,
    ) -> Result<Box<dyn TaskHandle>, DriverError> {
        Ok(Box::new(process::recover(self.name(), state)?))
    }

    /// Nothing to do: processes carry no owner mark to find them by, so the agent tracks its
    /// tasks through their [`RecoverState`]s.
    async fn reap_unowned(
        &self,
        _owned_alloc_ids: &BTreeSet<String>,
    ) -> Result<Vec<String>, DriverError> {
        Ok(Vec::new())
    }
}
