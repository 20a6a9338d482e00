//! `docker`: runs a task as a container through the Docker Engine API ([`bollard`]).
//!
//! - **Images** must already be on the node unless `force_pull = true`: this driver never
//!   pulls on its own (nodes often have no registry), and a pull is bounded by a timeout.
//! - **Containers** are named `<task>-<alloc id>` and labelled `com.flotilla.managed=true`,
//!   `com.flotilla.alloc_id`, `com.flotilla.task` (and `com.flotilla.node` when the driver is
//!   [scoped](DockerDriver::with_node_scope)). The task's ports are published on their
//!   `host_ip:host_port` (TCP and UDP), `spec.mounts` are bind-mounted.
//! - **Output** is followed into the task's log files, rotated as configured (see
//!   [`crate::logs`]).
//! - **Exit**: once the container stops, its exit code (and whether it was OOM-killed) is
//!   read, the remaining output is drained, and the container is removed.
//! - **Recovery**: a container outlives the agent. [`Driver::recover`] finds it by id (or
//!   name), reattaches the exit watch and the output (resuming after what the log files
//!   already hold). Dropping a handle only detaches it: the container keeps running.
//! - **Reaping**: [`Driver::reap_unowned`] stops and removes managed containers of
//!   allocations the agent no longer has: those labelled with its node scope, or, for an
//!   unscoped driver, those with no node label. Several agents sharing one daemon must each
//!   use their own node scope, or they reap each other's containers.

mod config;
mod logs;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::ContainerState;
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    RemoveContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;
use nix::sys::signal::Signal;
use tokio::sync::{OnceCell, watch};

pub use self::config::{
    DockerConfig, LABEL_ALLOC_ID, LABEL_MANAGED, LABEL_NODE, LABEL_TASK, MountBlock, MountKind,
    VolumeBind, container_body, container_name,
};
use self::logs::LogTargets;
pub use self::logs::{parse_rfc3339_nanos, split_timestamp};
use crate::{
    Driver, DriverError, DriverFingerprint, ExitResult, RecoverState, TaskHandle, TaskSpec,
};

/// Where the daemon listens unless `DOCKER_HOST` says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The driver's name in jobs.
const NAME: &str = "docker";

/// How long the daemon may take to answer a ping (fingerprint, first connection).
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a request may wait for the daemon's response headers (bollard's timeout). Waits
/// and followed output get their headers at once, so it does not cut them off.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Default bound on `force_pull` pulls.
const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// How long to wait for a container to go away after SIGKILL.
const AFTER_KILL_WAIT: Duration = Duration::from_secs(30);

/// How long the followed output may keep draining once the container has stopped.
const LOG_DRAIN: Duration = Duration::from_secs(5);

/// Bound on the final pass over a stopped container's output.
const LOG_CATCH_UP: Duration = Duration::from_secs(30);

/// Grace period `reap_unowned` gives a container between SIGTERM and SIGKILL.
const REAP_STOP_SECS: i32 = 5;

/// `RecoverState::extra` key for the container name.
const EXTRA_NAME: &str = "container_name";

/// The `docker` driver.
pub struct DockerDriver {
    socket: PathBuf,
    node_scope: Option<String>,
    pull_timeout: Duration,
    request_timeout: Duration,
    /// Connected (and API version negotiated) on first use; a failed attempt is retried.
    client: OnceCell<bollard::Docker>,
}

impl std::fmt::Debug for DockerDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerDriver")
            .field("socket", &self.socket)
            .field("node_scope", &self.node_scope)
            .field("pull_timeout", &self.pull_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("connected", &self.client.initialized())
            .finish()
    }
}

impl DockerDriver {
    /// A driver talking to the daemon on the Unix socket `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            node_scope: None,
            pull_timeout: DEFAULT_PULL_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            client: OnceCell::new(),
        }
    }

    /// The daemon at `DOCKER_HOST` when it is a `unix://` address, else [`DEFAULT_SOCKET`].
    pub fn from_env() -> Self {
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
            .unwrap_or_else(|| DEFAULT_SOCKET.to_string());
        Self::new(socket)
    }

    /// Labels containers with `com.flotilla.node=<node>` and limits
    /// [`reap_unowned`](Driver::reap_unowned) to them, for several agents sharing one daemon.
    /// (An unscoped driver reaps only containers without a node label.)
    pub fn with_node_scope(mut self, node: impl Into<String>) -> Self {
        self.node_scope = Some(node.into());
        self
    }

    /// Bounds `force_pull` pulls (120 s by default).
    pub fn with_pull_timeout(mut self, timeout: Duration) -> Self {
        self.pull_timeout = timeout;
        self
    }

    /// Bounds how long a request may wait for the daemon to start answering (60 s by
    /// default; it does not cut off a long wait or followed output, which answer at once).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The daemon's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn client(&self) -> Result<bollard::Docker, DriverError> {
        if !self.socket.exists() {
            return Err(DriverError::Unavailable {
                name: NAME.into(),
                reason: format!("the Docker socket {} does not exist", self.socket.display()),
            });
        }
        let Some(path) = self.socket.to_str() else {
            return Err(DriverError::Unavailable {
                name: NAME.into(),
                reason: format!("the socket path {} is not UTF-8", self.socket.display()),
            });
        };
        let action = || format!("connecting to the daemon at {path}");
        self.client
            .get_or_try_init(|| async {
                let docker = bollard::Docker::connect_with_unix(
                    path,
                    self.request_timeout.as_secs().max(1),
                    bollard::API_DEFAULT_VERSION,
                )
                .map_err(|e| docker_err(action(), e))?;
                // Speak the daemon's API version when it is older than bollard's.
                match tokio::time::timeout(PING_TIMEOUT, docker.negotiate_version()).await {
                    Ok(Ok(docker)) => Ok(docker),
                    Ok(Err(e)) => Err(docker_err(action(), e)),
                    Err(_) => Err(DriverError::Docker {
                        action: action(),
                        message: format!("no answer within {PING_TIMEOUT:?}"),
                    }),
                }
            })
            .await
            .cloned()
    }

    /// Makes sure `image` is on the node: pulls it when `force_pull`, else only checks.
    async fn ensure_image(
        &self,
        docker: &bollard::Docker,
        image: &str,
        force_pull: bool,
    ) -> Result<(), DriverError> {
        if force_pull {
            return self.pull(docker, image).await;
        }
        match docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Err(DriverError::ImageMissing {
                image: image.to_string(),
            }),
            Err(e) => Err(docker_err(format!("inspecting image {image:?}"), e)),
        }
    }

    async fn pull(&self, docker: &bollard::Docker, image: &str) -> Result<(), DriverError> {
        let (from_image, tag) = split_reference(image);
        let options = CreateImageOptions {
            from_image: Some(from_image),
            tag,
            ..Default::default()
        };
        let pulling = async {
            let mut progress = std::pin::pin!(docker.create_image(Some(options), None, None));
            while let Some(item) = progress.next().await {
                item.map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        };
        let fail = |message: String| DriverError::ImagePull {
            image: image.to_string(),
            message,
        };
        tracing::info!(image, timeout = ?self.pull_timeout, "pulling image");
        match tokio::time::timeout(self.pull_timeout, pulling).await {
            Err(_) => Err(fail(format!("gave up after {:?}", self.pull_timeout))),
            Ok(Err(message)) => Err(fail(message)),
            Ok(Ok(())) => match docker.inspect_image(image).await {
                Ok(_) => Ok(()),
                Err(e) => Err(fail(format!(
                    "the pull ended but the image is not there: {e}"
                ))),
            },
        }
    }

    /// Creates the container, replacing a stale one of ours that holds the name.
    async fn create(
        &self,
        docker: &bollard::Docker,
        name: &str,
        body: bollard::models::ContainerCreateBody,
    ) -> Result<String, DriverError> {
        let action = || format!("creating container {name}");
        for attempt in 0..2 {
            let options = CreateContainerOptions {
                name: Some(name.to_string()),
                ..Default::default()
            };
            match docker.create_container(Some(options), body.clone()).await {
                Ok(created) => {
                    for warning in created.warnings {
                        tracing::warn!(container = name, warning, "docker warned");
                    }
                    return Ok(created.id);
                }
                Err(e) if status(&e) == Some(409) && attempt == 0 => {
                    let old = docker
                        .inspect_container(name, None)
                        .await
                        .map_err(|e| docker_err(action(), e))?;
                    if !is_managed(old.config.as_ref().and_then(|c| c.labels.as_ref())) {
                        return Err(DriverError::Docker {
                            action: action(),
                            message:
                                "a container with this name exists and Flotilla did not create it"
                                    .into(),
                        });
                    }
                    tracing::info!(
                        container = name,
                        "removing a stale container of the same name"
                    );
                    remove_container(docker, name).await;
                }
                Err(e) if status(&e) == Some(404) => {
                    // The image went away since it was checked, or a network is missing.
                    let image = body.image.clone().unwrap_or_default();
                    self.ensure_image(docker, &image, false).await?;
                    return Err(docker_err(action(), e));
                }
                Err(e) => return Err(docker_err(action(), e)),
            }
        }
        Err(DriverError::Docker {
            action: action(),
            message: "the name is still taken after removing the old container".into(),
        })
    }
}

impl Default for DockerDriver {
    fn default() -> Self {
        Self::from_env()
    }
}

#[async_trait]
impl Driver for DockerDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn fingerprint(&self) -> DriverFingerprint {
        if !self.socket.exists() {
            return DriverFingerprint {
                detected: false,
                healthy: false,
                description: format!("Docker socket {} not found", self.socket.display()),
            };
        }
        let unhealthy = |description: String| DriverFingerprint {
            detected: true,
            healthy: false,
            description,
        };
        let docker = match self.client().await {
            Ok(d) => d,
            Err(e) => return unhealthy(e.to_string()),
        };
        match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return unhealthy(format!("Docker daemon ping failed: {e}")),
            Err(_) => {
                return unhealthy(format!(
                    "Docker daemon did not answer a ping within {PING_TIMEOUT:?}"
                ));
            }
        }
        let description = match tokio::time::timeout(PING_TIMEOUT, docker.version()).await {
            Ok(Ok(v)) => format!(
                "Healthy (Docker {}, API {})",
                v.version.as_deref().unwrap_or("unknown"),
                v.api_version.as_deref().unwrap_or("unknown")
            ),
            _ => "Healthy".to_string(),
        };
        DriverFingerprint {
            detected: true,
            healthy: true,
            description,
        }
    }

    async fn start(&self, spec: TaskSpec) -> Result<Box<dyn TaskHandle>, DriverError> {
        let cfg = DockerConfig::parse(&spec.config)?;
        let body = container_body(&cfg, &spec, self.node_scope.as_deref())?;
        let docker = self.client().await?;
        self.ensure_image(&docker, &cfg.image, cfg.force_pull)
            .await?;
        let targets = LogTargets::open(&spec, false)?;
        let name = container_name(&spec);
        let id = self.create(&docker, &name, body).await?;
        if let Err(e) = docker.start_container(&id, None).await {
            remove_container(&docker, &id).await;
            return Err(docker_err(format!("starting container {name}"), e));
        }
        tracing::debug!(task = %spec.name, container = %name, id = %id, image = %cfg.image, "container started");
        Ok(Box::new(ContainerHandle::attach(
            docker,
            id,
            name,
            targets,
            now_unix_nanos(),
        )))
    }

    async fn recover(
        &self,
        state: &RecoverState,
        spec: &TaskSpec,
    ) -> Result<Box<dyn TaskHandle>, DriverError> {
        let bad = |message: String| DriverError::InvalidRecoverState {
            id: state.id.clone(),
            message,
        };
        if state.driver != NAME {
            return Err(bad(format!(
                "it was started by driver {:?}, not {NAME:?}",
                state.driver
            )));
        }
        let gone = || DriverError::Gone {
            id: state.id.clone(),
        };
        let docker = self.client().await?;
        let by_name = state
            .extra
            .get(EXTRA_NAME)
            .cloned()
            .unwrap_or_else(|| container_name(spec));
        let action = || format!("inspecting container {}", state.id);
        let info = match docker.inspect_container(&state.id, None).await {
            Ok(info) => info,
            Err(e) if status(&e) == Some(404) => {
                match docker.inspect_container(&by_name, None).await {
                    Ok(info) => info,
                    Err(e) if status(&e) == Some(404) => return Err(gone()),
                    Err(e) => return Err(docker_err(action(), e)),
                }
            }
            Err(e) => return Err(docker_err(action(), e)),
        };
        let labels = info.config.as_ref().and_then(|c| c.labels.as_ref());
        if !is_managed(labels) {
            return Err(bad("the container was not created by Flotilla".into()));
        }
        let owner = labels.and_then(|l| l.get(LABEL_ALLOC_ID));
        if !spec.alloc_id.is_empty() && owner != Some(&spec.alloc_id) {
            return Err(bad(format!(
                "the container belongs to allocation {owner:?}, not {:?}",
                spec.alloc_id
            )));
        }
        let id = info.id.clone().unwrap_or_else(|| state.id.clone());
        let name = info
            .name
            .as_deref()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or(by_name);
        let running = info.state.as_ref().and_then(|s| s.running) == Some(true);
        let mut targets = LogTargets::open(spec, true)?;
        if !running {
            // Save what it printed while no agent was listening, then clean up.
            catch_up(&docker, &id, &name, &mut targets).await;
            remove_container(&docker, &id).await;
            tracing::info!(container = %name, "container exited while the agent was away");
            return Err(gone());
        }
        tracing::info!(container = %name, id = %id, "recovered container");
        Ok(Box::new(ContainerHandle::attach(
            docker,
            id,
            name,
            targets,
            state.started_at_unix_nanos,
        )))
    }

    async fn reap_unowned(
        &self,
        owned_alloc_ids: &BTreeSet<String>,
    ) -> Result<Vec<String>, DriverError> {
        let docker = self.client().await?;
        let mut label_filters = vec![format!("{LABEL_MANAGED}=true")];
        if let Some(node) = &self.node_scope {
            label_filters.push(format!("{LABEL_NODE}={node}"));
        }
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), label_filters)])),
            ..Default::default()
        };
        let containers = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| docker_err("listing managed containers".into(), e))?;
        let orphans: Vec<(String, String)> = containers
            .into_iter()
            .filter(|c| {
                let labels = c.labels.as_ref();
                // An unscoped driver leaves scoped (other nodes') containers alone.
                let foreign =
                    self.node_scope.is_none() && labels.is_some_and(|l| l.contains_key(LABEL_NODE));
                let owner = labels.and_then(|l| l.get(LABEL_ALLOC_ID));
                !foreign && !owner.is_some_and(|a| owned_alloc_ids.contains(a))
            })
            .filter_map(|c| {
                let id = c.id?;
                let name = c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_else(|| id.clone());
                Some((id, name))
            })
            .collect();
        let reaped = futures::future::join_all(orphans.into_iter().map(|(id, name)| {
            let docker = docker.clone();
            async move {
                let options = StopContainerOptions {
                    t: Some(REAP_STOP_SECS),
                    ..Default::default()
                };
                match docker.stop_container(&id, Some(options)).await {
                    Ok(()) => {}
                    Err(e) if matches!(status(&e), Some(304 | 404)) => {}
                    Err(e) => {
                        tracing::warn!(container = %name, error = %e, "stopping an unowned container failed, removing it anyway");
                    }
                }
                remove_container(&docker, &id).await;
                tracing::info!(container = %name, "removed a container no allocation owns");
                name
            }
        }))
        .await;
        Ok(reaped)
    }
}

/// A container this driver started or recovered.
pub struct ContainerHandle {
    id: String,
    name: String,
    docker: bollard::Docker,
    started_at_unix_nanos: i64,
    exit: watch::Receiver<Option<ExitResult>>,
    /// Follows the output and the exit; aborted when the handle is dropped (detaching).
    supervisor: tokio::task::AbortHandle,
}

impl std::fmt::Debug for ContainerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerHandle")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("exit", &*self.exit.borrow())
            .finish()
    }
}

impl ContainerHandle {
    fn attach(
        docker: bollard::Docker,
        id: String,
        name: String,
        targets: LogTargets,
        started_at_unix_nanos: i64,
    ) -> Self {
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(supervise(
            docker.clone(),
            id.clone(),
            name.clone(),
            targets,
            tx,
        ));
        Self {
            id,
            name,
            docker,
            started_at_unix_nanos,
            exit: rx,
            supervisor: task.abort_handle(),
        }
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, signal: Signal) -> Result<(), DriverError> {
        send_signal(&self.docker, &self.id, signal).await
    }
}

async fn send_signal(
    docker: &bollard::Docker,
    id: &str,
    signal: Signal,
) -> Result<(), DriverError> {
    let options = KillContainerOptions {
        signal: signal.as_str().to_string(),
    };
    match docker.kill_container(id, Some(options)).await {
        // 409: not running any more; 404: already removed. Both mean it has ended.
        Ok(()) => Ok(()),
        Err(e) if matches!(status(&e), Some(404 | 409)) => Ok(()),
        Err(e) => Err(docker_err(format!("sending {signal} to container {id}"), e)),
    }
}

impl Drop for ContainerHandle {
    fn drop(&mut self) {
        // Detach: the container keeps running until someone recovers and stops it.
        self.supervisor.abort();
    }
}

#[async_trait]
impl TaskHandle for ContainerHandle {
    fn id(&self) -> &str {
        &self.id
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn recover_state(&self) -> RecoverState {
        RecoverState {
            driver: NAME.into(),
            id: self.id.clone(),
            pid: None,
            started_at_unix_nanos: self.started_at_unix_nanos,
            extra: BTreeMap::from([(EXTRA_NAME.to_string(), self.name.clone())]),
        }
    }

    async fn wait(&self) -> ExitResult {
        ExitResult::wait_on(&self.exit, "container").await
    }

    fn try_exit(&self) -> Option<ExitResult> {
        self.exit.borrow().clone()
    }

    /// Sends the signal in the background (the daemon is asked asynchronously); failures are
    /// logged. [`stop`](TaskHandle::stop) and [`kill`](TaskHandle::kill) wait for the answer.
    fn signal(&self, signal: Signal) -> Result<(), DriverError> {
        if self.exit.borrow().is_some() {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| DriverError::Docker {
            action: format!("sending {signal} to container {}", self.name),
            message: format!("no async runtime to send it from: {e}"),
        })?;
        let docker = self.docker.clone();
        let id = self.id.clone();
        runtime.spawn(async move {
            if let Err(err) = send_signal(&docker, &id, signal).await {
                tracing::warn!(container = %id, error = %err, "signal failed");
            }
        });
        Ok(())
    }

    async fn kill(&self) -> ExitResult {
        if let Some(done) = self.try_exit() {
            return done;
        }
        if let Err(err) = self.send(Signal::SIGKILL).await {
            tracing::warn!(container = %self.name, error = %err, "SIGKILL failed");
        }
        match tokio::time::timeout(AFTER_KILL_WAIT, self.wait()).await {
            Ok(done) => done,
            Err(_) => ExitResult {
                exit_code: -1,
                signal: 0,
                error: Some(format!(
                    "container {} did not stop within {AFTER_KILL_WAIT:?} of SIGKILL",
                    self.name
                )),
            },
        }
    }

    async fn stop(&self, signal: Signal, timeout: Duration) -> ExitResult {
        if let Some(done) = self.try_exit() {
            return done;
        }
        if let Err(err) = self.send(signal).await {
            tracing::warn!(container = %self.name, error = %err, "stop signal failed, killing");
            return self.kill().await;
        }
        match tokio::time::timeout(timeout, self.wait()).await {
            Ok(done) => done,
            Err(_) => {
                tracing::info!(container = %self.name, timeout = ?timeout, "container did not stop in time, sending SIGKILL");
                self.kill().await
            }
        }
    }
}

/// Follows the output until the container stops, then reports its exit and removes it.
async fn supervise(
    docker: bollard::Docker,
    id: String,
    name: String,
    mut targets: LogTargets,
    tx: watch::Sender<Option<ExitResult>>,
) {
    let result = {
        let mut pump = std::pin::pin!(logs::pump(&docker, &id, &mut targets, true));
        let mut exited = std::pin::pin!(wait_for_exit(&docker, &id));
        let mut pump_done = false;
        let result = loop {
            tokio::select! {
                result = &mut exited => break result,
                () = &mut pump, if !pump_done => pump_done = true,
            }
        };
        // The daemon ends the output stream once the container stops; let it drain.
        if !pump_done && tokio::time::timeout(LOG_DRAIN, &mut pump).await.is_err() {
            tracing::debug!(container = %name, "output still flowing {LOG_DRAIN:?} after the exit");
        }
        result
    };
    catch_up(&docker, &id, &name, &mut targets).await;
    remove_container(&docker, &id).await;
    tracing::debug!(container = %name, result = %result, "container exited");
    let _ = tx.send(Some(result));
}

/// Copies whatever output of a stopped container the files do not hold yet.
async fn catch_up(docker: &bollard::Docker, id: &str, name: &str, targets: &mut LogTargets) {
    if tokio::time::timeout(LOG_CATCH_UP, logs::pump(docker, id, targets, false))
        .await
        .is_err()
    {
        tracing::warn!(container = %name, "copying the container's remaining output took over {LOG_CATCH_UP:?}, giving up");
    }
}

/// Waits until the container is no longer running and reads how it ended. Survives daemon
/// hiccups by asking again.
async fn wait_for_exit(docker: &bollard::Docker, id: &str) -> ExitResult {
    let mut delay = Duration::from_millis(200);
    loop {
        let options = WaitContainerOptions {
            condition: "not-running".into(),
        };
        let waited = std::pin::pin!(docker.wait_container(id, Some(options)))
            .next()
            .await;
        // The container's state, not the wait answer, is the record: it knows about OOM kills.
        match docker.inspect_container(id, None).await {
            Ok(info) => {
                if let Some(state) = info.state
                    && state.running != Some(true)
                {
                    return exit_from_state(&state);
                }
            }
            Err(e) if status(&e) == Some(404) => {
                let exit_code = match waited {
                    Some(Ok(w)) => i32::try_from(w.status_code).unwrap_or(-1),
                    Some(Err(BollardError::DockerContainerWaitError { code, .. })) => {
                        i32::try_from(code).unwrap_or(-1)
                    }
                    _ => -1,
                };
                return ExitResult {
                    exit_code,
                    signal: 0,
                    error: Some(
                        "the container was removed by something other than Flotilla".into(),
                    ),
                };
            }
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "inspecting the container failed, asking again");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// How a stopped container ended, from its state.
pub fn exit_from_state(state: &ContainerState) -> ExitResult {
    let exit_code = state
        .exit_code
        .map(|c| i32::try_from(c).unwrap_or(-1))
        .unwrap_or(-1);
    let error = if state.oom_killed == Some(true) {
        Some(format!(
            "OOM killed: the container ran out of memory (exit code {exit_code})"
        ))
    } else {
        state
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .map(|e| format!("docker: {e}"))
    };
    ExitResult {
        exit_code,
        signal: 0,
        error,
    }
}

async fn remove_container(docker: &bollard::Docker, id: &str) {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => {}
        // Gone already, or its removal is already under way.
        Err(e) if matches!(status(&e), Some(404 | 409)) => {}
        Err(e) => tracing::warn!(container = %id, error = %e, "removing the container failed"),
    }
}

fn is_managed(labels: Option<&HashMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(LABEL_MANAGED))
        .is_some_and(|v| v == "true")
}

/// Splits `repo[:tag]` for a pull; a digest reference keeps everything in the repository part
/// and a bare name means `latest` (an empty tag would pull every tag).
fn split_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => (
            image[..name_start + i].to_string(),
            Some(image[name_start + i + 1..].to_string()),
        ),
        None => (image.to_string(), Some("latest".to_string())),
    }
}

fn status(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn docker_err(action: String, e: BollardError) -> DriverError {
    let message = match e {
        BollardError::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    };
    DriverError::Docker { action, message }
}

fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_for_pulls() {
        assert_eq!(
            split_reference("app"),
            ("app".into(), Some("latest".into()))
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/team/app:1.2"),
            ("127.0.0.1:5000/team/app".into(), Some("1.2".into()))
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/app"),
            ("127.0.0.1:5000/app".into(), Some("latest".into()))
        );
        assert_eq!(
            split_reference("app@sha256:abc"),
            ("app@sha256:abc".into(), None)
        );
    }

    #[test]
    fn exits_say_when_the_kernel_killed_for_memory() {
        let oom = ContainerState {
            exit_code: Some(137),
            oom_killed: Some(true),
            ..Default::default()
        };
        let exit = exit_from_state(&oom);
        assert_eq!(exit.exit_code, 137);
        assert!(
            exit.error.as_deref().unwrap().contains("OOM killed"),
            "{exit}"
        );
        let clean = ContainerState {
            exit_code: Some(0),
            oom_killed: Some(false),
            error: Some(String::new()),
            ..Default::default()
        };
        assert!(exit_from_state(&clean).successful());
    }

    #[tokio::test]
    async fn a_missing_socket_is_not_detected() {
        let d = DockerDriver::new("/nonexistent/docker.sock");
        let fp = d.fingerprint().await;
        assert!(!fp.detected && !fp.healthy, "{fp:?}");
        assert!(
            fp.description.contains("/nonexistent/docker.sock"),
            "{fp:?}"
        );
        let err = d
            .start(TaskSpec {
                config: serde_json::json!({"image": "x"}),
                ..Default::default()
            })
            .await
            .err()
            .unwrap();
        assert!(matches!(err, DriverError::Unavailable { .. }), "{err:?}");
    }
}
