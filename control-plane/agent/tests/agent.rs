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
    agent_http: SocketAddr,
    node_id: String,
    data_dir: tempfile::TempDir,
    stop_agent: Option<tokio::sync::oneshot::Sender<()>>,
    agent: tokio::task::JoinHandle<Result<(), flotilla_agent::AgentError>>,
}

async fn start(ttl_ms: u64) -> Harness {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let (recorded, sets) = serve_fake(listener, ttl_ms);
    start_agent(server_addr, recorded, sets).await
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
    let data_dir = tempfile::tempdir().unwrap();
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

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop_agent.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(20), &mut self.agent)
            .await
            .expect("the agent stops within 20s")
            .unwrap();
        result.unwrap();
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
