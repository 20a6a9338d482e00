//! The agent against a fake `AgentService` whose allocation pushes the test drives.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_agent::{AgentConfig, bind};
use flotilla_proto::agent::v1 as pb;
use flotilla_proto::agent::v1::agent_service_server::{AgentService, AgentServiceServer};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

// ---------------------------------------------------------------------------------------------
// The fake server

#[derive(Default)]
struct Recorded {
    registrations: Vec<pb::Node>,
    heartbeats: usize,
    updates: Vec<pb::AllocationStatus>,
    /// Answer the next heartbeat with `known = false`.
    forget_next_heartbeat: bool,
}

#[derive(Clone)]
struct Fake {
    recorded: Arc<Mutex<Recorded>>,
    sets: watch::Receiver<pb::AllocationSet>,
    ttl_ms: u64,
}

type SetStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::AllocationSet, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Fake {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let node = req
            .into_inner()
            .node
            .ok_or_else(|| Status::invalid_argument("node missing"))?;
        self.recorded.lock().unwrap().registrations.push(node);
        Ok(Response::new(pb::RegisterResponse {
            heartbeat_ttl_ms: self.ttl_ms,
            index: 1,
        }))
    }

    async fn heartbeat(
        &self,
        _req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let mut r = self.recorded.lock().unwrap();
        r.heartbeats += 1;
        let known = !std::mem::take(&mut r.forget_next_heartbeat);
        Ok(Response::new(pb::HeartbeatResponse {
            heartbeat_ttl_ms: self.ttl_ms,
            known,
        }))
    }

    type WatchAllocationsStream = SetStream;

    async fn watch_allocations(
        &self,
        _req: Request<pb::WatchAllocationsRequest>,
    ) -> Result<Response<SetStream>, Status> {
        let stream = tokio_stream::wrappers::WatchStream::new(self.sets.clone()).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn update_allocations(
        &self,
        req: Request<pb::UpdateAllocationsRequest>,
    ) -> Result<Response<pb::UpdateAllocationsResponse>, Status> {
        self.recorded
            .lock()
            .unwrap()
            .updates
            .extend(req.into_inner().allocations);
        Ok(Response::new(pb::UpdateAllocationsResponse { index: 1 }))
    }
}

struct Harness {
    recorded: Arc<Mutex<Recorded>>,
    sets: watch::Sender<pb::AllocationSet>,
    server_addr: SocketAddr,
    agent_http: SocketAddr,
    node_id: String,
    data_dir: tempfile::TempDir,
    stop_agent: Option<tokio::sync::oneshot::Sender<()>>,
    agent: tokio::task::JoinHandle<Result<(), flotilla_agent::AgentError>>,
}

/// How a test agent differs from the default one.
struct Opts {
    stop_tasks_on_shutdown: bool,
    host_volumes: BTreeMap<String, std::path::PathBuf>,
    /// Reuse this data dir (a restarted agent).
    data_dir: Option<tempfile::TempDir>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            // Tests stop what they start, unless they test re-attaching.
            stop_tasks_on_shutdown: true,
            host_volumes: BTreeMap::new(),
            data_dir: None,
        }
    }
}

async fn start(ttl_ms: u64) -> Harness {
    start_with(ttl_ms, Opts::default()).await
}

async fn start_with(ttl_ms: u64, opts: Opts) -> Harness {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let (recorded, sets) = serve_fake(listener, ttl_ms);
    start_agent_with(server_addr, recorded, sets, opts).await
}

/// Serves a fake `AgentService` on `listener`.
fn serve_fake(
    listener: tokio::net::TcpListener,
    ttl_ms: u64,
) -> (Arc<Mutex<Recorded>>, watch::Sender<pb::AllocationSet>) {
    let (sets_tx, sets_rx) = watch::channel(pb::AllocationSet::default());
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let fake = Fake {
        recorded: recorded.clone(),
        sets: sets_rx,
        ttl_ms,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (recorded, sets_tx)
}

async fn start_agent(
    server_addr: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
    sets_tx: watch::Sender<pb::AllocationSet>,
) -> Harness {
    start_agent_with(server_addr, recorded, sets_tx, Opts::default()).await
}

async fn start_agent_with(
    server_addr: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
    sets_tx: watch::Sender<pb::AllocationSet>,
    opts: Opts,
) -> Harness {
    let data_dir = opts
        .data_dir
        .unwrap_or_else(|| tempfile::tempdir().unwrap());
    let cfg = AgentConfig {
        name: "test-node".into(),
        datacenter: "dc1".into(),
        node_class: "test".into(),
        address: "127.0.0.1".into(),
        server: format!("http://{server_addr}"),
        data_dir: data_dir.path().to_path_buf(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        proxy_addr: "127.0.0.1:15008".into(),
        cpu_mhz: Some(4000),
        memory_mb: None,
        meta: BTreeMap::from([("rack".to_string(), "r1".to_string())]),
        host_volumes: opts.host_volumes,
        stop_tasks_on_shutdown: opts.stop_tasks_on_shutdown,
    };
    let bound = bind(cfg).await.unwrap();
    let agent_http = bound.http_addr();
    let node_id = bound.node_id().to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(bound.run(async move {
        let _ = stop_rx.await;
    }));
    Harness {
        recorded,
        sets: sets_tx,
        server_addr,
        agent_http,
        node_id,
        data_dir,
        stop_agent: Some(stop_tx),
        agent,
    }
}

impl Harness {
    fn push(&self, index: u64, allocs: Vec<pb::Allocation>) {
        self.sets.send_replace(pb::AllocationSet {
            index,
            allocations: allocs,
        });
    }

    /// The newest status the agent reported for `alloc_id`.
    fn latest(&self, alloc_id: &str) -> Option<pb::AllocationStatus> {
        let r = self.recorded.lock().unwrap();
        r.updates
            .iter()
            .rev()
            .find(|u| u.alloc_id == alloc_id)
            .cloned()
    }

    async fn wait_status(
        &self,
        what: &str,
        alloc_id: &str,
        cond: impl Fn(&pb::AllocationStatus) -> bool,
    ) -> pb::AllocationStatus {
        let mut last = None;
        let found = eventually(what, Duration::from_secs(20), || {
            last = self.latest(alloc_id);
            last.as_ref().is_some_and(&cond)
        })
        .await;
        if !found {
            panic!("timed out waiting for {what}; last status: {last:#?}");
        }
        last.unwrap()
    }

    async fn shutdown(self) {
        self.stop().await;
    }

    /// Stops the agent and hands back what a new agent needs to take over: the fake server's
    /// record and set sender, its address, and the data dir.
    async fn stop(
        mut self,
    ) -> (
        Arc<Mutex<Recorded>>,
        watch::Sender<pb::AllocationSet>,
        SocketAddr,
        tempfile::TempDir,
    ) {
        if let Some(stop) = self.stop_agent.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(20), &mut self.agent)
            .await
            .expect("the agent stops within 20s")
            .unwrap();
        result.unwrap();
        (self.recorded, self.sets, self.server_addr, self.data_dir)
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.data_dir.path().join(rel)
    }

    /// Waits until the file at `rel` (under the data dir) satisfies `cond`; its text.
    async fn wait_file(&self, what: &str, rel: &str, cond: impl Fn(&str) -> bool) -> String {
        let path = self.path(rel);
        let mut text = String::new();
        let found = eventually(what, Duration::from_secs(20), || {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            cond(&text)
        })
        .await;
        assert!(
            found,
            "timed out waiting for {what}; {}: {text:?}",
            path.display()
        );
        text
    }
}

async fn eventually(_what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A process that exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// `key=<number>` from a log line.
fn field(log: &str, key: &str) -> Option<u32> {
    log.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

fn alloc(
    id: &str,
    script: &str,
    ports: Vec<pb::Port>,
    services: Vec<pb::Service>,
) -> pb::Allocation {
    let config = serde_json::json!({
        "command": "sh",
        "args": ["-c", script, "sh", "${NOMAD_PORT_http}"],
    });
    pb::Allocation {
        id: id.into(),
        name: "web.web[0]".into(),
        namespace: "default".into(),
        job_id: "web".into(),
        task_group: "web".into(),
        desired_status: "run".into(),
        tasks: vec![pb::Task {
            name: "server".into(),
            driver: "raw_exec".into(),
            config_json: config.to_string(),
            cpu_mhz: 100,
            memory_mb: 64,
            restart: Some(pb::RestartPolicy {
                attempts: 1,
                interval_ms: 60_000,
                delay_ms: 100,
                mode: "fail".into(),
            }),
            kill_timeout_ms: 2_000,
            kill_signal: "SIGTERM".into(),
            ..Default::default()
        }],
        ports,
        services,
        datacenter: "dc1".into(),
        region: "global".into(),
        client_status: "pending".into(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_checks_reports_and_stops_an_allocation() {
    // The "workload port": a listener the tcp check connects to.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = target.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            if target.accept().await.is_err() {
                return;
            }
        }
    });

    let h = start(3_000).await;
    eventually("registration", Duration::from_secs(20), || {
        !h.recorded.lock().unwrap().registrations.is_empty()
    })
    .await;
    let node = h.recorded.lock().unwrap().registrations[0].clone();
    assert_eq!(node.id, h.node_id);
    assert_eq!(node.name, "test-node");
    assert_eq!(node.http_addr, format!("127.0.0.1:{}", h.agent_http.port()));
    assert_eq!(node.proxy_addr, "127.0.0.1:15008");
    assert_eq!(node.cpu_mhz, 4000);
    assert!(node.memory_mb > 0 && node.cpu_cores > 0);
    assert_eq!(
        node.attributes.get("kernel.name").map(String::as_str),
        Some(std::env::consts::OS)
    );
    assert!(node.attributes.contains_key("unique.hostname"));
    assert!(
        node.drivers
            .iter()
            .any(|d| d.name == "raw_exec" && d.detected && d.healthy)
    );

    let id = "11111111-2222-3333-4444-555555555555";
    let script = "echo \"port=$1 pid=$$ dc=$NOMAD_DC\"; sleep 1000 & echo \"child=$!\"; wait";
    let services = vec![pb::Service {
        name: "web".into(),
        port_label: "http".into(),
        task: "server".into(),
        checks: vec![pb::Check {
            name: "alive".into(),
            r#type: "tcp".into(),
            interval_ms: 200,
            timeout_ms: 1_000,
            ..Default::default()
        }],
        ..Default::default()
    }];
    let ports = vec![pb::Port {
        label: "http".into(),
        value: u32::from(port),
        to: 0,
        host_ip: String::new(),
    }];
    let a = alloc(id, script, ports, services);
    h.push(2, vec![a.clone()]);

    let running = h
        .wait_status("running and healthy", id, |s| {
            s.client_status == "running" && s.services.first().is_some_and(|svc| svc.healthy)
        })
        .await;
    let task = &running.task_states["server"];
    assert_eq!(task.state, "running");
    assert!(!task.started_at.is_empty());
    let kinds: Vec<_> = task.events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(kinds, ["Received", "Task Setup", "Started"]);

    // Interpolation reached the args; the log is where Nomad puts it.
    let log_path = h
        .data_dir
        .path()
        .join(format!("allocs/{id}/alloc/logs/server.stdout.0"));
    let mut log = String::new();
    assert!(
        eventually("the task's output", Duration::from_secs(10), || {
            log = std::fs::read_to_string(&log_path).unwrap_or_default();
            log.contains("child=")
        })
        .await,
        "log: {log:?}"
    );
    assert_eq!(field(&log, "port"), Some(u32::from(port)), "{log}");
    assert!(log.contains("dc=dc1"), "{log}");
    let pid = field(&log, "pid").unwrap();
    let child = field(&log, "child").unwrap();
    assert!(alive(pid) && alive(child));
    assert!(
        h.data_dir
            .path()
            .join(format!("allocs/{id}/server/local"))
            .is_dir()
    );
    assert!(
        h.data_dir
            .path()
            .join(format!("allocs/{id}/server/secrets"))
            .is_dir()
    );

    // The logs endpoint serves the same bytes, and names what it does not know.
    let http = reqwest::Client::new();
    let base = format!("http://{}/v1/client/fs/logs", h.agent_http);
    let body = http
        .get(format!("{base}/{id}?task=server&type=stdout&plain=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    assert_eq!(body.text().await.unwrap(), log);
    let tail = http
        .get(format!(
            "{base}/{id}?task=server&origin=end&offset=6&plain=true"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(tail, log[log.len() - 6..]);
    let missing = http
        .get(format!("{base}/nope?task=server"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("nope"));
    let missing = http
        .get(format!("{base}/{id}?task=other"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("other"));

    // A follower sees the stream end when the allocation stops.
    let follow = tokio::spawn({
        let url = format!("{base}/{id}?task=server&follow=true&plain=true");
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    });

    // Stop it.
    let mut stopped = a.clone();
    stopped.desired_status = "stop".into();
    h.push(3, vec![stopped]);
    let done = h
        .wait_status("complete", id, |s| s.client_status == "complete")
        .await;
    let task = &done.task_states["server"];
    assert_eq!(task.state, "dead");
    assert!(!task.failed);
    let kinds: Vec<_> = task.events.iter().map(|e| e.r#type.as_str()).collect();
    assert!(kinds.ends_with(&["Killing", "Killed"]), "{kinds:?}");
    assert!(!done.services[0].healthy);
    assert!(!alive(pid), "the task's shell is gone");
    assert!(
        eventually(
            "the background child to die",
            Duration::from_secs(5),
            || !alive(child)
        )
        .await,
        "the task's background child is gone"
    );
    let followed = tokio::time::timeout(Duration::from_secs(10), follow)
        .await
        .expect("the follow stream ends once the allocation is done")
        .unwrap();
    assert!(followed.starts_with("port="), "{followed}");

    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policy_gives_up_and_fails_the_allocation() {
    let h = start(3_000).await;
    let id = "22222222-2222-3333-4444-555555555555";
    let a = alloc(id, "echo run; exit 3", vec![], vec![]);
    h.push(2, vec![a]);
    let failed = h
        .wait_status("failed", id, |s| s.client_status == "failed")
        .await;
    let task = &failed.task_states["server"];
    assert_eq!(task.state, "dead");
    assert!(task.failed);
    assert_eq!(task.restarts, 1);
    let terminated: Vec<_> = task
        .events
        .iter()
        .filter(|e| e.r#type == "Terminated")
        .collect();
    assert_eq!(terminated.len(), 2);
    assert!(terminated.iter().all(|e| e.exit_code == 3));
    let last = task.events.last().unwrap();
    assert_eq!(last.r#type, "Not Restarting");
    assert!(
        last.message.contains("Exceeded allowed attempts 1"),
        "{}",
        last.message
    );
    // Unknown interpolation stays literal: no port label was allocated here.
    let log = std::fs::read_to_string(
        h.data_dir
            .path()
            .join(format!("allocs/{id}/alloc/logs/server.stdout.0")),
    )
    .unwrap();
    assert_eq!(log, "run\nrun\n");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_command_is_a_driver_failure() {
    let h = start(3_000).await;
    let id = "33333333-2222-3333-4444-555555555555";
    let mut a = alloc(id, "", vec![], vec![]);
    a.tasks[0].config_json = serde_json::json!({"command": "no-such-flotilla-cmd"}).to_string();
    a.tasks[0].restart = Some(pb::RestartPolicy {
        attempts: 0,
        interval_ms: 60_000,
        delay_ms: 100,
        mode: "fail".into(),
    });
    h.push(2, vec![a]);
    let failed = h
        .wait_status("failed", id, |s| s.client_status == "failed")
        .await;
    let task = &failed.task_states["server"];
    let failure = task
        .events
        .iter()
        .find(|e| e.r#type == "Driver Failure")
        .expect("a Driver Failure event");
    assert!(
        failure.message.contains("no-such-flotilla-cmd"),
        "{}",
        failure.message
    );
    assert!(failure.message.contains("PATH="), "{}", failure.message);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_tasks_and_reports_them() {
    let h = start(3_000).await;
    let id = "44444444-2222-3333-4444-555555555555";
    // The shell ignores SIGTERM, so shutdown must escalate to SIGKILL after kill_timeout.
    let mut a = alloc(
        id,
        "trap '' TERM; echo \"pid=$$\"; sleep 1000 & echo \"child=$!\"; wait",
        vec![],
        vec![],
    );
    a.tasks[0].kill_timeout_ms = 300;
    h.push(2, vec![a]);
    h.wait_status("running", id, |s| s.client_status == "running")
        .await;
    let log_path = h
        .data_dir
        .path()
        .join(format!("allocs/{id}/alloc/logs/server.stdout.0"));
    let mut log = String::new();
    eventually("pids in the log", Duration::from_secs(10), || {
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.contains("child=")
    })
    .await;
    let pid = field(&log, "pid").unwrap();
    let child = field(&log, "child").unwrap();

    let recorded = h.recorded.clone();
    h.shutdown().await;
    assert!(!alive(pid), "the task is gone after shutdown");
    assert!(
        eventually("the child to die", Duration::from_secs(5), || !alive(child)).await,
        "its child is gone after shutdown"
    );
    let r = recorded.lock().unwrap();
    let last = r.updates.iter().rev().find(|u| u.alloc_id == id).unwrap();
    assert_eq!(last.client_status, "complete", "{last:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_again_when_the_server_forgets_the_node() {
    let h = start(450).await;
    assert!(
        eventually("heartbeats", Duration::from_secs(20), || {
            h.recorded.lock().unwrap().heartbeats >= 2
        })
        .await
    );
    h.recorded.lock().unwrap().forget_next_heartbeat = true;
    assert!(
        eventually("a second registration", Duration::from_secs(20), || {
            h.recorded.lock().unwrap().registrations.len() >= 2
        })
        .await
    );
    // The allocation that vanishes from the set is stopped.
    let id = "55555555-2222-3333-4444-555555555555";
    h.push(2, vec![alloc(id, "sleep 1000", vec![], vec![])]);
    h.wait_status("running", id, |s| s.client_status == "running")
        .await;
    h.push(3, vec![]);
    h.wait_status("complete", id, |s| s.client_status == "complete")
        .await;
    h.shutdown().await;
}

#[tokio::test]
async fn bind_reports_a_port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = AgentConfig {
        data_dir: dir.path().to_path_buf(),
        http_addr: taken.local_addr().unwrap(),
        ..AgentConfig::default()
    };
    let err = bind(cfg).await.unwrap_err().to_string();
    assert!(
        err.contains(&taken.local_addr().unwrap().to_string()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_once_the_server_comes_up_and_shuts_down_without_it() {
    // A port with nothing behind it yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (recorded, sets) = (
        Arc::new(Mutex::new(Recorded::default())),
        watch::channel(pb::AllocationSet::default()).0,
    );
    let down = start_agent(addr, recorded, sets).await;
    // Let a few registration attempts fail (nothing observable to wait on: the failures only
    // show in the log), then bring the server up on that port.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (recorded, _sets) = serve_fake(listener, 3_000);
    assert!(
        eventually(
            "registration after the server came up",
            Duration::from_secs(30),
            || { !recorded.lock().unwrap().registrations.is_empty() }
        )
        .await
    );
    down.shutdown().await;

    // An agent whose server never answers still shuts down promptly.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = start_agent(
        nowhere,
        Arc::new(Mutex::new(Recorded::default())),
        watch::channel(pb::AllocationSet::default()).0,
    )
    .await;
    let started = Instant::now();
    h.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------------
// Re-attaching, lifecycle, task features, checks, commands, logs

/// Kills a process group when dropped, so a failing test leaves nothing behind.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", self.0)])
                .status();
        }
    }
}

fn count_events(ts: &pb::TaskState, kind: &str) -> usize {
    ts.events.iter().filter(|e| e.r#type == kind).count()
}

fn task(name: &str, script: &str) -> pb::Task {
    pb::Task {
        name: name.into(),
        driver: "raw_exec".into(),
        config_json: serde_json::json!({"command": "sh", "args": ["-c", script]}).to_string(),
        restart: Some(pb::RestartPolicy {
            attempts: 0,
            interval_ms: 60_000,
            delay_ms: 100,
            mode: "fail".into(),
        }),
        kill_timeout_ms: 1_000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_survive_an_agent_restart_and_are_re_attached() {
    let h = start_with(
        3_000,
        Opts {
            stop_tasks_on_shutdown: false,
            ..Opts::default()
        },
    )
    .await;
    let id = "66666666-2222-3333-4444-555555555555";
    let a = alloc(id, "echo \"pid=$$\"; exec sleep 1000", vec![], vec![]);
    h.push(2, vec![a.clone()]);
    h.wait_status("running", id, |s| s.client_status == "running")
        .await;
    let log_rel = format!("allocs/{id}/alloc/logs/server.stdout.0");
    let log = h
        .wait_file("the pid in the log", &log_rel, |t| t.contains("pid="))
        .await;
    let pid = field(&log, "pid").unwrap();
    let _guard = KillOnDrop(pid);
    assert!(h.path(&format!("allocs/{id}/state.json")).is_file());

    // The agent goes away; the task stays.
    let (recorded, sets, server_addr, data_dir) = h.stop().await;
    assert!(alive(pid), "the task outlives the agent");
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data_dir.path().join(format!("allocs/{id}/state.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(state["tasks"]["server"]["state"], "running", "{state:#}");
    assert_eq!(
        state["tasks"]["server"]["handle"]["pid"],
        serde_json::json!(pid),
        "{state:#}"
    );
    recorded.lock().unwrap().updates.clear();

    // A new agent on the same data dir finds it again without starting another process.
    let h = start_agent_with(
        server_addr,
        recorded,
        sets,
        Opts {
            data_dir: Some(data_dir),
            ..Opts::default()
        },
    )
    .await;
    let running = h
        .wait_status("running after the restart", id, |s| {
            s.client_status == "running"
        })
        .await;
    let ts = &running.task_states["server"];
    assert_eq!(ts.state, "running");
    assert_eq!(count_events(ts, "Started"), 1, "{ts:#?}");
    assert_eq!(ts.restarts, 0);
    assert!(alive(pid));
    let log = std::fs::read_to_string(h.path(&log_rel)).unwrap();
    assert_eq!(log.matches("pid=").count(), 1, "started once: {log:?}");

    // The server stops it: the re-attached process goes.
    let mut stopped = a.clone();
    stopped.desired_status = "stop".into();
    h.push(3, vec![stopped]);
    let done = h
        .wait_status("complete", id, |s| s.client_status == "complete")
        .await;
    let kinds: Vec<_> = done.task_states["server"]
        .events
        .iter()
        .map(|e| e.r#type.as_str())
        .collect();
    assert!(kinds.ends_with(&["Killing", "Killed"]), "{kinds:?}");
    assert!(
        eventually("the process to go", Duration::from_secs(10), || !alive(pid)).await,
        "the re-attached task was stopped"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_gone_while_the_agent_was_away_is_restarted_by_policy() {
    let h = start_with(
        3_000,
        Opts {
            stop_tasks_on_shutdown: false,
            ..Opts::default()
        },
    )
    .await;
    let id = "67676767-2222-3333-4444-555555555555";
    let a = alloc(id, "echo \"pid=$$\"; exec sleep 1000", vec![], vec![]);
    h.push(2, vec![a]);
    h.wait_status("running", id, |s| s.client_status == "running")
        .await;
    let log_rel = format!("allocs/{id}/alloc/logs/server.stdout.0");
    let log = h
        .wait_file("the pid in the log", &log_rel, |t| t.contains("pid="))
        .await;
    let first = field(&log, "pid").unwrap();
    let (recorded, sets, server_addr, data_dir) = h.stop().await;
    // The task dies while no agent watches.
    drop(KillOnDrop(first));
    assert!(eventually("the task to die", Duration::from_secs(10), || !alive(first)).await);

    recorded.lock().unwrap().updates.clear();
    let h = start_agent_with(
        server_addr,
        recorded,
        sets,
        Opts {
            data_dir: Some(data_dir),
            ..Opts::default()
        },
    )
    .await;
    let status = h
        .wait_status("restarted", id, |s| {
            s.task_states
                .get("server")
                .is_some_and(|t| t.state == "running" && t.restarts == 1)
        })
        .await;
    let ts = &status.task_states["server"];
    let gone = ts
        .events
        .iter()
        .find(|e| e.r#type == "Terminated")
        .unwrap_or_else(|| panic!("{ts:#?}"));
    assert!(
        gone.message.contains("no longer running"),
        "{}",
        gone.message
    );
    let log = h
        .wait_file("a second pid", &log_rel, |t| t.matches("pid=").count() == 2)
        .await;
    let second = log
        .lines()
        .filter_map(|l| field(l, "pid"))
        .next_back()
        .unwrap();
    let _guard = KillOnDrop(second);
    assert_ne!(first, second);
    h.shutdown().await;
    assert!(!alive(second), "stop_tasks_on_shutdown stops it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_stops_what_is_no_longer_wanted() {
    let h = start_with(
        3_000,
        Opts {
            stop_tasks_on_shutdown: false,
            ..Opts::default()
        },
    )
    .await;
    let id = "77777777-2222-3333-4444-555555555555";
    h.push(
        2,
        vec![alloc(
            id,
            "echo \"pid=$$\"; exec sleep 1000",
            vec![],
            vec![],
        )],
    );
    h.wait_status("running", id, |s| s.client_status == "running")
        .await;
    let log = h
        .wait_file(
            "the pid in the log",
            &format!("allocs/{id}/alloc/logs/server.stdout.0"),
            |t| t.contains("pid="),
        )
        .await;
    let pid = field(&log, "pid").unwrap();
    let _guard = KillOnDrop(pid);
    let (recorded, sets, server_addr, data_dir) = h.stop().await;
    assert!(alive(pid));

    // While the agent was away the allocation was removed from the node.
    sets.send_replace(pb::AllocationSet {
        index: 3,
        allocations: vec![],
    });
    recorded.lock().unwrap().updates.clear();
    let h = start_agent_with(
        server_addr,
        recorded,
        sets,
        Opts {
            data_dir: Some(data_dir),
            ..Opts::default()
        },
    )
    .await;
    assert!(
        eventually("the unwanted task to go", Duration::from_secs(20), || {
            !alive(pid)
        })
        .await,
        "the task of an allocation no longer wanted is stopped"
    );
    h.wait_status("complete", id, |s| s.client_status == "complete")
        .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_hooks_run_in_order() {
    let h = start(3_000).await;
    let id = "88888888-2222-3333-4444-555555555555";
    let log = "\"$NOMAD_ALLOC_DIR/order.log\"";
    let mut init = task(
        "init",
        &format!("sleep 0.3; echo init >> {log}; touch \"$NOMAD_ALLOC_DIR/init.done\""),
    );
    init.lifecycle_hook = "prestart".into();
    let mut proxy = task("proxy", &format!("echo sidecar >> {log}; exec sleep 1000"));
    proxy.lifecycle_hook = "prestart".into();
    proxy.lifecycle_sidecar = true;
    let main = task(
        "main",
        &format!(
            "[ -f \"$NOMAD_ALLOC_DIR/init.done\" ] && echo main-saw-init >> {log}; sleep 0.5; echo main-done >> {log}"
        ),
    );
    let mut after = task("after", &format!("echo after >> {log}"));
    after.lifecycle_hook = "poststart".into();
    let mut cleanup = task("cleanup", &format!("echo cleanup >> {log}"));
    cleanup.lifecycle_hook = "poststop".into();
    let mut a = alloc(id, "", vec![], vec![]);
    a.job_type = "batch".into();
    a.tasks = vec![init, proxy, main, after, cleanup];
    h.push(2, vec![a]);

    let done = h
        .wait_status("complete", id, |s| s.client_status == "complete")
        .await;
    for (name, ts) in &done.task_states {
        assert_eq!(ts.state, "dead", "{name}: {ts:#?}");
        assert!(!ts.failed, "{name}: {ts:#?}");
    }
    let order = std::fs::read_to_string(h.path(&format!("allocs/{id}/alloc/order.log"))).unwrap();
    let lines: Vec<&str> = order.lines().collect();
    let pos = |l: &str| {
        lines
            .iter()
            .position(|x| *x == l)
            .unwrap_or_else(|| panic!("{l} missing from {lines:?}"))
    };
    assert!(pos("init") < pos("main-saw-init"), "{lines:?}");
    assert!(pos("sidecar") < pos("main-saw-init"), "{lines:?}");
    // Poststart waits for the main task to start (whose first line may still race it).
    assert!(pos("init") < pos("after"), "{lines:?}");
    assert!(pos("sidecar") < pos("after"), "{lines:?}");
    assert!(pos("main-done") < pos("cleanup"), "{lines:?}");
    assert_eq!(
        lines.last(),
        Some(&"cleanup"),
        "poststop runs last: {lines:?}"
    );
    // The sidecar was stopped once the main task was done, not failed.
    let proxy = &done.task_states["proxy"];
    assert_eq!(count_events(proxy, "Killed"), 1, "{proxy:#?}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prestart_task_fails_the_allocation() {
    let h = start(3_000).await;
    let id = "99999999-2222-3333-4444-555555555555";
    let mut init = task("init", "echo nope; exit 7");
    init.lifecycle_hook = "prestart".into();
    let mut a = alloc(id, "", vec![], vec![]);
    a.tasks = vec![init, task("main", "sleep 1000")];
    h.push(2, vec![a]);
    let failed = h
        .wait_status("failed", id, |s| {
            s.client_status == "failed" && s.task_states.values().all(|t| t.state == "dead")
        })
        .await;
    let main = &failed.task_states["main"];
    assert!(main.started_at.is_empty(), "main never started: {main:#?}");
    assert_eq!(count_events(main, "Sibling Task Failed"), 1, "{main:#?}");
    assert!(failed.task_states["init"].failed);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_templates_and_payload_prepare_the_task() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("tool.txt"), "artifact-content\n").unwrap();
    let volume = tempfile::tempdir().unwrap();
    let h = start_with(
        3_000,
        Opts {
            host_volumes: BTreeMap::from([("shared".to_string(), volume.path().to_path_buf())]),
            ..Opts::default()
        },
    )
    .await;
    assert!(
        eventually("registration", Duration::from_secs(20), || {
            !h.recorded.lock().unwrap().registrations.is_empty()
        })
        .await
    );
    let node = h.recorded.lock().unwrap().registrations[0].clone();
    assert_eq!(
        node.host_volumes.get("shared").map(String::as_str),
        Some(volume.path().to_str().unwrap()),
        "host volumes are reported at registration"
    );

    let id = "aaaaaaaa-2222-3333-4444-555555555555";
    let mut t = task(
        "server",
        "cat local/tool.txt; cat local/conf.txt; echo \"greeting=$GREETING\"; cat local/in/payload.json; echo; echo \"dir=$(cat config/dir.txt)\"",
    );
    t.artifacts = vec![pb::Artifact {
        source: format!("file://{}", src.path().join("tool.txt").display()),
        ..Default::default()
    }];
    t.templates = vec![
        pb::Template {
            embedded_tmpl: "alloc={{ env \"NOMAD_ALLOC_ID\" }}\n".into(),
            dest_path: "local/conf.txt".into(),
            perms: "0640".into(),
            ..Default::default()
        },
        pb::Template {
            embedded_tmpl: "# from a template\nGREETING=hello-{{ env \"NOMAD_TASK_NAME\" }}\n"
                .into(),
            dest_path: "secrets/app.env".into(),
            envvars: true,
            ..Default::default()
        },
        pb::Template {
            embedded_tmpl: "{{ env \"NOMAD_TASK_DIR\" }}".into(),
            dest_path: "config/dir.txt".into(),
            ..Default::default()
        },
    ];
    t.dispatch_payload_file = "in/payload.json".into();
    t.volume_mounts = vec![pb::VolumeMount {
        volume: "data".into(),
        destination: "/data".into(),
        read_only: false,
    }];
    let mut a = alloc(id, "", vec![], vec![]);
    a.job_type = "batch".into();
    a.tasks = vec![t.clone()];
    a.payload = br#"{"job":"dispatched"}"#.to_vec();
    a.volumes = [(
        "data".to_string(),
        pb::VolumeRequest {
            name: "data".into(),
            r#type: "host".into(),
            source: "shared".into(),
            read_only: false,
        },
    )]
    .into();

    // The same task with a source that does not exist, with an unsupported template action,
    // and with a volume the node lacks.
    let missing_id = "bbbbbbbb-2222-3333-4444-555555555555";
    let mut missing = alloc(missing_id, "", vec![], vec![]);
    let mut mt = task("server", "true");
    mt.artifacts = vec![pb::Artifact {
        source: "/no/such/flotilla/source.tgz".into(),
        ..Default::default()
    }];
    missing.tasks = vec![mt];
    let bad_tmpl_id = "cccccccc-2222-3333-4444-555555555555";
    let mut bad_tmpl = alloc(bad_tmpl_id, "", vec![], vec![]);
    let mut bt = task("server", "true");
    bt.templates = vec![pb::Template {
        embedded_tmpl: "ok\n{{ key \"service/x\" }}\n".into(),
        dest_path: "local/bad.conf".into(),
        ..Default::default()
    }];
    bad_tmpl.tasks = vec![bt];
    let no_volume_id = "dddddddd-2222-3333-4444-555555555555";
    let mut no_volume = a.clone();
    no_volume.id = no_volume_id.into();
    no_volume.volumes.get_mut("data").unwrap().source = "elsewhere".into();

    h.push(2, vec![a, missing, bad_tmpl, no_volume]);

    let done = h
        .wait_status("complete", id, |s| s.client_status == "complete")
        .await;
    assert!(!done.task_states["server"].failed);
    let log = std::fs::read_to_string(h.path(&format!("allocs/{id}/alloc/logs/server.stdout.0")))
        .unwrap();
    let task_dir = h.path(&format!("allocs/{id}/server"));
    assert_eq!(
        log,
        format!(
            "artifact-content\nalloc={id}\ngreeting=hello-server\n{{\"job\":\"dispatched\"}}\ndir={}\n",
            task_dir.join("local").display()
        )
    );
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(task_dir.join("local/conf.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode, 0o640);

    let failed = h
        .wait_status("failed artifact", missing_id, |s| {
            s.client_status == "failed"
        })
        .await;
    let ts = &failed.task_states["server"];
    let e = ts
        .events
        .iter()
        .find(|e| e.r#type == "Failed Artifact Download")
        .unwrap_or_else(|| panic!("{ts:#?}"));
    assert!(
        e.message.contains("/no/such/flotilla/source.tgz"),
        "{}",
        e.message
    );
    assert!(ts.started_at.is_empty());

    let failed = h
        .wait_status("failed template", bad_tmpl_id, |s| {
            s.client_status == "failed"
        })
        .await;
    let ts = &failed.task_states["server"];
    let e = ts
        .events
        .iter()
        .find(|e| e.r#type == "Task hook failed")
        .unwrap_or_else(|| panic!("{ts:#?}"));
    assert!(
        e.message.starts_with("Template failed")
            && e.message.contains("local/bad.conf")
            && e.message.contains("line 2"),
        "{}",
        e.message
    );

    let failed = h
        .wait_status("failed volume", no_volume_id, |s| {
            s.client_status == "failed"
        })
        .await;
    let ts = &failed.task_states["server"];
    let e = ts
        .events
        .iter()
        .find(|e| e.r#type == "Setup Failure")
        .unwrap_or_else(|| panic!("{ts:#?}"));
    assert!(
        e.message.contains("elsewhere") && e.message.contains("shared"),
        "{}",
        e.message
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_checks_follow_the_health_service() {
    use tonic_health::ServingStatus;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.Cart", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let h = start(3_000).await;
    let id = "eeeeeeee-2222-3333-4444-555555555555";
    let services = vec![pb::Service {
        name: "cart".into(),
        port_label: "grpc".into(),
        task: "server".into(),
        checks: vec![pb::Check {
            name: "health".into(),
            r#type: "grpc".into(),
            grpc_service: "shop.Cart".into(),
            interval_ms: 100,
            timeout_ms: 1_000,
            ..Default::default()
        }],
        ..Default::default()
    }];
    let ports = vec![pb::Port {
        label: "grpc".into(),
        value: u32::from(port),
        to: 0,
        host_ip: String::new(),
    }];
    h.push(2, vec![alloc(id, "exec sleep 1000", ports, services)]);
    let healthy = h
        .wait_status("healthy", id, |s| {
            s.services.first().is_some_and(|x| x.healthy)
        })
        .await;
    assert!(
        healthy.services[0].output.contains("SERVING"),
        "{healthy:#?}"
    );

    reporter
        .set_service_status("shop.Cart", ServingStatus::NotServing)
        .await;
    let unhealthy = h
        .wait_status("unhealthy", id, |s| {
            s.services.first().is_some_and(|x| !x.healthy)
        })
        .await;
    assert!(
        unhealthy.services[0].output.contains("NOT_SERVING"),
        "{unhealthy:#?}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_restart_restarts_the_task_after_the_limit() {
    // A port nothing listens on (held until the test ends): the tcp check always fails.
    let held = flotilla_test_support::dead_addr();
    let closed = held.addr.port();
    let h = start(3_000).await;
    let id = "ffffffff-2222-3333-4444-555555555555";
    let services = vec![pb::Service {
        name: "web".into(),
        port_label: closed.to_string(),
        task: "server".into(),
        checks: vec![pb::Check {
            name: "alive".into(),
            r#type: "tcp".into(),
            interval_ms: 100,
            timeout_ms: 500,
            check_restart_limit: 3,
            check_restart_grace_ms: 200,
            ..Default::default()
        }],
        ..Default::default()
    }];
    let mut a = alloc(id, "exec sleep 1000", vec![], services);
    a.tasks[0].restart = Some(pb::RestartPolicy {
        attempts: 5,
        interval_ms: 60_000,
        delay_ms: 100,
        mode: "fail".into(),
    });
    h.push(2, vec![a]);
    let restarted = h
        .wait_status("a check restart", id, |s| {
            s.task_states
                .get("server")
                .is_some_and(|t| t.restarts >= 1 && t.state == "running")
        })
        .await;
    let ts = &restarted.task_states["server"];
    let signaled = ts
        .events
        .iter()
        .find(|e| e.r#type == "Restart Signaled")
        .unwrap_or_else(|| panic!("{ts:#?}"));
    assert!(
        signaled.message.contains("healthcheck") && signaled.message.contains("alive"),
        "{}",
        signaled.message
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_signal_endpoints() {
    let h = start(3_000).await;
    let id = "12121212-2222-3333-4444-555555555555";
    let script = "trap 'echo got-usr1' USR1; echo \"pid=$$\"; while true; do sleep 0.1; done";
    h.push(2, vec![alloc(id, script, vec![], vec![])]);
    h.wait_status("running", id, |s| s.client_status == "running")
        .await;
    let log_rel = format!("allocs/{id}/alloc/logs/server.stdout.0");
    let log = h
        .wait_file("the first pid", &log_rel, |t| t.contains("pid="))
        .await;
    let first = field(&log, "pid").unwrap();

    let http = reqwest::Client::new();
    let base = format!("http://{}/v1/client/allocation", h.agent_http);
    let resp = http
        .post(format!("{base}/{id}/signal"))
        .body(r#"{"Task": "server", "Signal": "SIGUSR1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    h.wait_file("the signal to arrive", &log_rel, |t| t.contains("got-usr1"))
        .await;

    let resp = http
        .post(format!("{base}/{id}/restart"))
        .body(r#"{"TaskName": "server"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let log = h
        .wait_file("a second pid", &log_rel, |t| t.matches("pid=").count() == 2)
        .await;
    let second = log
        .lines()
        .filter_map(|l| field(l, "pid"))
        .next_back()
        .unwrap();
    assert_ne!(first, second);
    assert!(
        eventually(
            "the first process to go",
            Duration::from_secs(5),
            || !alive(first)
        )
        .await
    );
    let status = h
        .wait_status("running again", id, |s| {
            s.task_states
                .get("server")
                .is_some_and(|t| t.state == "running" && t.restarts == 1)
        })
        .await;
    let ts = &status.task_states["server"];
    assert_eq!(count_events(ts, "Restart Signaled"), 1, "{ts:#?}");
    assert!(ts.events.iter().any(|e| e.r#type == "Signaling"), "{ts:#?}");

    // No body: every running task.
    let resp = http
        .put(format!("{base}/{id}/restart"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    h.wait_status("restarted twice", id, |s| {
        s.task_states
            .get("server")
            .is_some_and(|t| t.state == "running" && t.restarts == 2)
    })
    .await;

    // Unknown allocations and tasks are named.
    let resp = http
        .post(format!("{base}/nope/restart"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.unwrap().contains("nope"));
    let resp = http
        .post(format!("{base}/{id}/restart"))
        .body(r#"{"TaskName": "other"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.unwrap().contains("other"));
    let resp = http
        .post(format!("{base}/{id}/signal"))
        .body(r#"{"Signal": "SIGNOPE"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_read_across_rotated_files() {
    let h = start(3_000).await;
    let id = "34343434-2222-3333-4444-555555555555";
    let dir = h.path(&format!("allocs/{id}/alloc/logs"));
    std::fs::create_dir_all(&dir).unwrap();
    // Files 0..=2 were rotated away; 10 comes after 9.
    for (i, text) in [(3, "three\n"), (9, "nine\n"), (10, "ten\n")] {
        std::fs::write(dir.join(format!("web.stdout.{i}")), text).unwrap();
    }
    let http = reqwest::Client::new();
    let base = format!("http://{}/v1/client/fs/logs/{id}", h.agent_http);
    let get = |q: &str| {
        let http = http.clone();
        let url = format!("{base}?{q}");
        async move {
            let resp = http.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    assert_eq!(
        get("task=web&type=stdout&plain=true").await,
        (200, "three\nnine\nten\n".to_string())
    );
    assert_eq!(
        get("task=web&origin=end&offset=6").await,
        (200, "e\nten\n".to_string())
    );
    assert_eq!(
        get("task=web&origin=start&offset=8").await,
        (200, "ne\nten\n".to_string())
    );
    let (status, body) = get("task=db").await;
    assert_eq!(status, 404);
    assert!(body.contains("db"), "{body}");
    h.shutdown().await;
}

/// Nanoseconds since the Unix epoch, as `date +%s%N` prints them.
fn unix_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

/// An allocation whose task writes `ready` to `$NOMAD_ALLOC_DIR/ready` once it traps
/// SIGTERM, and the time it got SIGTERM (`date +%s%N`) to `$NOMAD_ALLOC_DIR/term`.
fn term_recorder(id: &str, group_delay_ms: u64, task_delay_ms: u64) -> pb::Allocation {
    let script = "trap 'date +%s%N > \"$NOMAD_ALLOC_DIR/term.tmp\"; \
                  mv \"$NOMAD_ALLOC_DIR/term.tmp\" \"$NOMAD_ALLOC_DIR/term\"; exit 0' TERM; \
                  echo ready > \"$NOMAD_ALLOC_DIR/ready\"; sleep 1000 & wait";
    let mut a = alloc(id, script, vec![], vec![]);
    a.shutdown_delay_ms = group_delay_ms;
    a.tasks[0].shutdown_delay_ms = task_delay_ms;
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_allocation_waits_its_shutdown_delay_before_the_kill_signal() {
    let h = start(3_000).await;
    // The group's delay, the task's, and none: the larger of group and task applies.
    let group = "a1111111-2222-3333-4444-555555555555";
    let task = "a2222222-2222-3333-4444-555555555555";
    let none = "a3333333-2222-3333-4444-555555555555";
    let allocs = vec![
        term_recorder(group, 1_000, 200),
        term_recorder(task, 300, 1_000),
        term_recorder(none, 0, 0),
    ];
    h.push(2, allocs.clone());
    for id in [group, task, none] {
        h.wait_status("running", id, |s| s.client_status == "running")
            .await;
        h.wait_file(
            "the SIGTERM trap",
            &format!("allocs/{id}/alloc/ready"),
            |t| t.contains("ready"),
        )
        .await;
    }

    // The server stops all three at once (their services already left the catalog).
    let stopped: Vec<_> = allocs
        .into_iter()
        .map(|mut a| {
            a.desired_status = "stop".into();
            a
        })
        .collect();
    let stop_sent = unix_nanos();
    h.push(3, stopped);
    let mut after = BTreeMap::new();
    for id in [group, task, none] {
        let text = h
            .wait_file(
                "the SIGTERM time",
                &format!("allocs/{id}/alloc/term"),
                |t| t.trim().parse::<i128>().is_ok(),
            )
            .await;
        let term: i128 = text.trim().parse().unwrap();
        after.insert(id, Duration::from_nanos((term - stop_sent).max(0) as u64));
    }
    let second = Duration::from_secs(1);
    assert!(
        after[group] >= second,
        "the group's 1s delay: SIGTERM {:?} after the stop",
        after[group]
    );
    assert!(
        after[task] >= second,
        "the task's 1s delay: SIGTERM {:?} after the stop",
        after[task]
    );
    assert!(
        after[none] < Duration::from_millis(900),
        "no delay: SIGTERM at once, got it {:?} after the stop",
        after[none]
    );

    let done = h
        .wait_status("complete", group, |s| s.client_status == "complete")
        .await;
    let kinds: Vec<_> = done.task_states["server"]
        .events
        .iter()
        .map(|e| e.r#type.as_str())
        .collect();
    assert!(
        kinds.ends_with(&["Waiting for shutdown delay", "Killing", "Killed"]),
        "{kinds:?}"
    );
    let done = h
        .wait_status("complete", none, |s| s.client_status == "complete")
        .await;
    assert_eq!(
        count_events(&done.task_states["server"], "Waiting for shutdown delay"),
        0
    );

    // The agent's own shutdown (stop_tasks_on_shutdown) does not wait, even mid-delay.
    let long = "a4444444-2222-3333-4444-555555555555";
    h.push(4, vec![term_recorder(long, 60_000, 0)]);
    h.wait_status("running", long, |s| s.client_status == "running")
        .await;
    h.wait_file(
        "the SIGTERM trap",
        &format!("allocs/{long}/alloc/ready"),
        |t| t.contains("ready"),
    )
    .await;
    let term_path = h.path(&format!("allocs/{long}/alloc/term"));
    let mut stopped = term_recorder(long, 60_000, 0);
    stopped.desired_status = "stop".into();
    h.push(5, vec![stopped]);
    h.wait_status("waiting for the shutdown delay", long, |s| {
        count_events(&s.task_states["server"], "Waiting for shutdown delay") == 1
    })
    .await;
    assert!(!term_path.exists(), "no SIGTERM during the delay");
    let shutdown_at = Instant::now();
    // Keep the data dir (the term file) past the agent.
    let (_, _, _, _data_dir) = h.stop().await;
    assert!(
        shutdown_at.elapsed() < Duration::from_secs(10),
        "the agent's shutdown cut the 60s delay short"
    );
    let term = std::fs::read_to_string(&term_path).unwrap_or_default();
    assert!(
        term.trim().parse::<i128>().is_ok(),
        "SIGTERM sent: {term:?}"
    );
}
