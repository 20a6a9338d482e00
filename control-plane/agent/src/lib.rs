//! The node agent: joins the cluster, runs the allocations the server assigns to this node,
//! checks their services and reports what happens to them.
//!
//! Start it with [`bind`] (validates the [`AgentConfig`], loads or creates the node id in the
//! data dir, binds the HTTP listener) and then [`BoundAgent::run`] until a shutdown future
//! resolves. Inside, independent loops share the work:
//!
//! - [`client`]: registration with capped backoff, heartbeats at a third of the TTL,
//!   re-registration when the server forgets the node;
//! - [`watch`]: the `WatchAllocations` stream, reconnected on errors;
//! - [`allocs`]: reconciles each full allocation set with the alloc runners (pure
//!   [`allocs::plan`]), and after a restart takes up the allocations saved in the data dir
//!   ([`allocs::recovery_plan`]) and has the drivers reap what nobody owns;
//! - [`runner`]: one alloc runner per allocation: tasks in [`lifecycle`] order (prestart,
//!   main, poststart, poststop; sidecars), the service [`checks`] (http, tcp, grpc) with
//!   `check_restart`, the allocation's status, and its persisted [`state`]; a stopped
//!   allocation's tasks get their kill signal only after their `shutdown_delay` (the larger of
//!   the group's and the task's), while the proxies drop them from their endpoints;
//! - [`task`]: one task runner per task: directories and environment from [`env`](mod@env),
//!   [`artifacts`] (local sources), [`template`]s, the dispatch payload, host volume mounts,
//!   drivers from `flotilla-drivers` (start, or re-attach with `Driver::recover`), the
//!   [`restart`] policy, restart and signal commands;
//! - [`report`]: coalesced `UpdateAllocations` with retries;
//! - [`http`]: task logs for `alloc logs` across rotated files ([`logs`]), and in-place task
//!   restarts and signals (all proxied by the server).
//!
//! Tasks outlive the agent, as in Nomad: on shutdown the runners let go of them (their state
//! is in `<data_dir>/allocs/<id>/state.json`) and the next agent on the same data dir
//! re-attaches. With [`AgentConfig::stop_tasks_on_shutdown`] every task is instead stopped
//! gracefully (kill signal, kill timeout, SIGKILL to its process group; no shutdown delay).
//! Either way final statuses are reported within a bounded time, and `run` returns.

#![forbid(unsafe_code)]

pub mod allocs;
pub mod artifacts;
pub mod checks;
pub mod client;
pub mod config;
pub mod env;
pub mod http;
pub mod lifecycle;
pub mod logs;
pub mod node;
pub mod report;
pub mod restart;
pub mod runner;
pub mod state;
pub mod task;
pub mod template;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use config::AgentConfig;
use flotilla_drivers::Drivers;
use flotilla_proto::agent::v1 as pb;

/// How long shutdown waits to report final statuses.
const FINAL_REPORT_WITHIN: Duration = Duration::from_secs(5);
/// How long shutdown waits for the HTTP endpoint to close its connections.
const HTTP_DRAIN_WITHIN: Duration = Duration::from_secs(2);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A configuration value is wrong.
    #[error("config {field}: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    /// The data directory (or a file in it) is unusable.
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `<data_dir>/node-id` holds something that is not a node id.
    #[error("{path}: {message}")]
    NodeId { path: PathBuf, message: String },
    /// The HTTP listener could not be bound (for example, the port is in use).
    #[error("binding the agent HTTP listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client for checks could not be built.
    #[error("building the HTTP client for checks: {0}")]
    CheckClient(String),
    /// The HTTP endpoint failed while serving.
    #[error("agent HTTP endpoint: {0}")]
    Http(#[source] std::io::Error),
}

/// An agent whose HTTP listener is bound, ready to [`run`](BoundAgent::run).
pub struct BoundAgent {
    cfg: AgentConfig,
    listener: tokio::net::TcpListener,
    http_addr: SocketAddr,
    node_id: String,
    node_secret: String,
    drivers: Drivers,
    http_client: reqwest::Client,
}

impl std::fmt::Debug for BoundAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundAgent")
            .field("node_id", &self.node_id)
            .field("http_addr", &self.http_addr)
            .field("server", &self.cfg.server)
            .finish_non_exhaustive()
    }
}

/// Validates `cfg`, prepares the data dir and node id, and binds the HTTP listener (so the
/// caller learns the port before anything runs).
pub async fn bind(cfg: AgentConfig) -> Result<BoundAgent, AgentError> {
    cfg.validate()?;
    cfg.check_host_volumes()?;
    for dir in [cfg.data_dir.clone(), cfg.data_dir.join("allocs")] {
        std::fs::create_dir_all(&dir)
            .map_err(|source| AgentError::DataDir { path: dir, source })?;
    }
    let node_id = node::load_or_create_node_id(&cfg.data_dir)?;
    let node_secret = node::load_or_create_node_secret(&cfg.data_dir)?;
    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|source| AgentError::Bind {
            addr: cfg.http_addr,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| AgentError::Bind {
        addr: cfg.http_addr,
        source,
    })?;
    // Containers are labelled with the node so that agents sharing a Docker daemon only ever
    // reap their own.
    let drivers = Drivers::builtin().with(Arc::new(
        flotilla_drivers::docker::DockerDriver::from_env().with_node_scope(node_id.clone()),
    ));
    let http_client = checks::http_client().map_err(|e| AgentError::CheckClient(e.to_string()))?;
    Ok(BoundAgent {
        cfg,
        listener,
        http_addr,
        node_id,
        node_secret,
        drivers,
        http_client,
    })
}

impl BoundAgent {
    /// Where the agent's HTTP endpoint listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The node's stable id (`<data_dir>/node-id`).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node's secret (`<data_dir>/node-secret`), presented with certificate requests.
    pub fn node_secret(&self) -> &str {
        &self.node_secret
    }

    /// Runs the agent until `shutdown` resolves, then lets go of every task (or, with
    /// `stop_tasks_on_shutdown`, stops every task gracefully), reports the final statuses (best
    /// effort, bounded) and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AgentError> {
        let BoundAgent {
            cfg,
            listener,
            http_addr,
            node_id,
            node_secret,
            drivers,
            http_client,
        } = self;
        let (node, node_ctx) =
            node::describe(&cfg, &node_id, &node_secret, http_addr.port(), &drivers).await;
        tracing::info!(
            node_id = %node_id,
            name = %cfg.name,
            http = %http_addr,
            server = %cfg.server,
            cpu_mhz = node.cpu_mhz,
            memory_mb = node.memory_mb,
            "agent starting"
        );
        let client = client::connect(&cfg.server)?;

        // Shutdown happens in two phases: first no new work (the watch closes) while tasks
        // stop with heartbeats and status reports still flowing; then everything else.
        let (intake_tx, intake_rx) = tokio::sync::watch::channel(false);
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let (registered_tx, registered_rx) = tokio::sync::watch::channel(false);
        let (sets_tx, mut sets_rx) =
            tokio::sync::watch::channel::<Option<Arc<pb::AllocationSet>>>(None);

        let registry = allocs::Registry::default();
        let reporter = report::Reporter::default();
        let ctx = Arc::new(runner::RunnerContext {
            data_dir: cfg.data_dir.clone(),
            node: node_ctx,
            drivers,
            reporter: reporter.clone(),
            http: http_client,
            host_volumes: cfg.host_volumes.clone(),
        });
        let saved = state::load_all(&cfg.data_dir);
        if !saved.is_empty() {
            tracing::info!(
                allocs = saved.len(),
                "found saved allocations, re-attaching once the server sends the allocation set"
            );
        }
        let mut manager = allocs::Manager::new(ctx, registry.clone(), saved);

        // HTTP endpoint.
        let app = http::router(cfg.data_dir.clone(), registry, shutdown_rx.clone());
        let mut http_shutdown = shutdown_rx.clone();
        let http_task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_shutdown.wait_for(|s| *s).await;
                })
                .await
        });

        let keepalive = tokio::spawn(client::keep_registered(
            client.clone(),
            node,
            registered_tx,
            shutdown_rx.clone(),
        ));
        let watcher = tokio::spawn(watch::watch_allocations(
            client.clone(),
            node_id.clone(),
            registered_rx,
            sets_tx,
            intake_rx,
        ));
        let reporter_task = tokio::spawn(reporter.clone().run(
            client.clone(),
            node_id.clone(),
            shutdown_rx.clone(),
        ));

        // The manager loop: apply each new set until shutdown.
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                changed = sets_rx.changed() => {
                    if changed.is_err() {
                        // The watcher ended on its own: nothing more will come, wait for shutdown.
                        (&mut shutdown).await;
                        break;
                    }
                    let latest = sets_rx.borrow_and_update().clone();
                    if let Some(set) = latest {
                        manager.reconcile(&set);
                    }
                }
            }
        }

        intake_tx.send_replace(true);
        let _ = watcher.await;
        if cfg.stop_tasks_on_shutdown {
            tracing::info!(node_id = %node_id, "agent shutting down: stopping tasks");
            manager.stop_all().await;
        } else {
            tracing::info!(node_id = %node_id, "agent shutting down: leaving tasks running");
            manager.detach_all().await;
        }
        shutdown_tx.send_replace(true);
        let _ = reporter_task.await;
        reporter.flush(&client, &node_id, FINAL_REPORT_WITHIN).await;
        let _ = keepalive.await;
        let served = match tokio::time::timeout(HTTP_DRAIN_WITHIN, http_task).await {
            Ok(Ok(result)) => result.map_err(AgentError::Http),
            Ok(Err(join)) => {
                tracing::error!(error = %join, "agent HTTP task failed");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("agent HTTP connections did not close in time");
                Ok(())
            }
        };
        tracing::info!(node_id = %node_id, "agent stopped");
        served
    }
}
