//! The control plane's core loops.
//!
//! - [`broker`]: finds pending evaluations in the store and hands them to scheduler workers
//!   (several in parallel, one evaluation per job at a time).
//! - [`applier`]: commits a worker's plan only if it still holds against the latest state
//!   (optimistic concurrency); a stale plan sends the evaluation back to be planned again.
//! - [`heartbeat`]: tracks node TTLs; a node that misses its TTL is marked down and its jobs
//!   re-evaluated, so lost allocations are replaced.
//! - [`deployments`]: the deployment watcher: allocation health, progress deadlines,
//!   promotion, success (the version becomes stable), failure and auto-revert.
//! - [`drain`]: finishes node drains once their allocations have moved.
//! - [`periodic`]: launches periodic jobs' children on their cron schedule.
//! - [`agent_service`]: the gRPC `AgentService` agents talk to (registration, heartbeats,
//!   the allocation watch, client status and service health → catalog registrations).
//! - [`ca_service`]: the mesh CA: bootstrap, the gRPC `CertificateService` that signs
//!   workload CSRs for services a node really runs, and pruning of retired roots.
//!
//! Everything reads and writes through the [`Store`](flotilla_store::Store) trait; the HTTP API
//! and the discovery server are sibling crates that only share the store.

pub mod agent_service;
pub mod applier;
pub mod broker;
pub mod ca_service;
mod convert;
pub mod deployments;
pub mod drain;
pub mod heartbeat;
pub mod periodic;

use std::sync::Arc;
use std::time::Duration;

use flotilla_store::Store;

/// Settings of the control-plane core.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How long a node may go without a heartbeat before it is marked down.
    pub heartbeat_ttl: Duration,
    /// Extra time given to every known node when the server starts (a restarted server has not
    /// heard from anyone yet).
    pub failover_grace: Duration,
    /// Scheduler workers planning in parallel.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            heartbeat_ttl: Duration::from_secs(10),
            failover_grace: Duration::from_secs(10),
            workers: 2,
        }
    }
}

/// The running core: start it with [`Core::start`], then serve [`Core::agent_service`] over gRPC.
#[derive(Clone)]
pub struct Core {
    pub store: Arc<dyn Store>,
    pub config: ServerConfig,
    pub heartbeats: Arc<heartbeat::Heartbeats>,
}

impl Core {
    /// Start the broker and the heartbeat monitor. They stop when `shutdown` fires.
    pub fn start(
        store: Arc<dyn Store>,
        config: ServerConfig,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let heartbeats = Arc::new(heartbeat::Heartbeats::new(
            store.clone(),
            config.heartbeat_ttl,
            config.failover_grace,
        ));
        tokio::spawn(broker::run(store.clone(), config.workers, shutdown.clone()));
        tokio::spawn(drain::run(store.clone(), shutdown.clone()));
        tokio::spawn(deployments::run(store.clone(), shutdown.clone()));
        tokio::spawn(periodic::run(store.clone(), shutdown.clone()));
        tokio::spawn(ca_service::prune_roots(store.clone(), shutdown.clone()));
        tokio::spawn(heartbeats.clone().monitor(shutdown));
        Self {
            store,
            config,
            heartbeats,
        }
    }

    /// The tonic service agents connect to.
    pub fn agent_service(
        &self,
    ) -> flotilla_proto::agent::v1::agent_service_server::AgentServiceServer<agent_service::AgentApi>
    {
        flotilla_proto::agent::v1::agent_service_server::AgentServiceServer::new(
            agent_service::AgentApi::new(self.store.clone(), self.heartbeats.clone()),
        )
    }
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// A fresh random id (UUID v4), the form Nomad uses for allocations and evaluations.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A new pending evaluation for a job, with a fresh id.
pub fn new_eval(
    job: &flotilla_types::Job,
    triggered_by: &str,
    now: i64,
) -> flotilla_types::Evaluation {
    flotilla_types::Evaluation::for_job(job, triggered_by, new_id(), now)
}
