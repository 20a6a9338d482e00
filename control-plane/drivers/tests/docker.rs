//! The docker driver against the real Docker Engine, with no registry: every test builds its
//! own `FROM scratch` image around a static C program (`tests/support/tool.c`) and removes it,
//! and the containers made from it, when it ends.
//!
//! Skipped (with a printed reason) only when `/var/run/docker.sock` does not exist.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    BuildImageOptions, ListContainersOptions, RemoveContainerOptions, RemoveImageOptions,
};
use flotilla_drivers::docker::DockerDriver;
use flotilla_drivers::{
    Driver, DriverError, MountSpec, PortMapping, RecoverState, Signal, TaskHandle, TaskSpec,
};
use futures::StreamExt;
use serde_json::json;

const SOCKET: &str = "/var/run/docker.sock";

fn docker_present() -> bool {
    if Path::new(SOCKET).exists() {
        true
    } else {
        eprintln!("skipping: {SOCKET} does not exist (no Docker Engine on this machine)");
        false
    }
}

async fn client() -> bollard::Docker {
    bollard::Docker::connect_with_unix(SOCKET, 120, bollard::API_DEFAULT_VERSION)
        .unwrap()
        .negotiate_version()
        .await
        .unwrap()
}

/// Runs `f` on a runtime of its own (for `Drop`, and for work shared across tests).
fn on_own_runtime<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join()
    .unwrap()
}

/// The test program, compiled once per test binary (and reused across runs while its source
/// is unchanged: the file name carries the source's hash).
fn tool_binary() -> &'static Path {
    static TOOL: OnceLock<PathBuf> = OnceLock::new();
    TOOL.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/tool.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "flotilla-docker-tool-{:016x}",
            fnv(&std::fs::read(&src).unwrap())
        ));
        if out.exists() {
            return out;
        }
        let partial = out.with_extension(format!("partial-{}", std::process::id()));
        let status = std::process::Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&partial)
            .arg(&src)
            .status()
            .expect("gcc must be installed to build the test image");
        assert!(status.success(), "compiling {} failed", src.display());
        std::fs::rename(&partial, &out).unwrap();
        out
    })
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// A test's own image; dropping it removes the image and every container made from it.
struct TestImage {
    tag: String,
}

impl TestImage {
    fn build(test: &str) -> Self {
        let binary = std::fs::read(tool_binary()).unwrap();
        // A per-test label gives each test its own image id, so removing one never touches
        // another test's.
        let hash = fnv(&[binary.as_slice(), test.as_bytes()].concat());
        let tag = format!("flotilla-test/{test}:{hash:016x}");
        let dockerfile = format!(
            "FROM scratch\nLABEL com.flotilla.test={test}\nCOPY tool /tool\nENTRYPOINT [\"/tool\"]\n"
        );
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data, mode) in [
            ("Dockerfile", dockerfile.as_bytes(), 0o644),
            ("tool", binary.as_slice(), 0o755),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(mode);
            header.set_cksum();
            tar.append_data(&mut header, name, data).unwrap();
        }
        let context = tar.into_inner().unwrap();
        let t = tag.clone();
        on_own_runtime(move || {
            Box::pin(async move {
                let docker = client().await;
                let options = BuildImageOptions {
                    t: Some(t.clone()),
                    rm: true,
                    forcerm: true,
                    ..Default::default()
                };
                let mut build = std::pin::pin!(docker.build_image(
                    options,
                    None,
                    Some(bollard::body_full(bytes::Bytes::from(context)))
                ));
                while let Some(step) = build.next().await {
                    let step = step.unwrap_or_else(|e| panic!("building {t}: {e}"));
                    if let Some(err) = step.error_detail {
                        panic!("building {t}: {err:?}");
                    }
                }
            })
        });
        Self { tag }
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let tag = self.tag.clone();
        on_own_runtime(move || {
            Box::pin(async move {
                let docker = client().await;
                let options = ListContainersOptions {
                    all: true,
                    filters: Some(HashMap::from([("ancestor".to_string(), vec![tag.clone()])])),
                    ..Default::default()
                };
                for c in docker
                    .list_containers(Some(options))
                    .await
                    .unwrap_or_default()
                {
                    if let Some(id) = c.id {
                        let _ = docker
                            .remove_container(
                                &id,
                                Some(RemoveContainerOptions {
                                    force: true,
                                    v: true,
                                    ..Default::default()
                                }),
                            )
                            .await;
                    }
                }
                if let Err(e) = docker
                    .remove_image(
                        &tag,
                        Some(RemoveImageOptions {
                            force: true,
                            ..Default::default()
                        }),
                        None,
                    )
                    .await
                {
                    eprintln!("removing test image {tag}: {e}");
                }
            })
        });
    }
}

/// An allocation id no other test (or concurrent run) uses.
fn alloc_id(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{test}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn spec(dir: &Path, test: &str, image: &str, args: &[&str]) -> TaskSpec {
    let task_dir = dir.join("task");
    std::fs::create_dir_all(&task_dir).unwrap();
    TaskSpec {
        name: format!("{test}/task"),
        config: json!({"image": image, "args": args}),
        env: [("GREETING".to_string(), "hi".to_string())].into(),
        task_dir,
        stdout_path: dir.join("logs/task.stdout.0"),
        stderr_path: dir.join("logs/task.stderr.0"),
        alloc_id: alloc_id(test),
        task_name: "task".into(),
        ..Default::default()
    }
}

/// A driver scoped to this test run, so that an unscoped agent reaping on the same daemon
/// leaves these tests' containers alone (and the other way round).
fn driver() -> DockerDriver {
    DockerDriver::new(SOCKET).with_node_scope(format!("drivers-tests-{}", std::process::id()))
}

async fn container_exists(name_or_id: &str) -> bool {
    match client().await.inspect_container(name_or_id, None).await {
        Ok(_) => true,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => false,
        Err(e) => panic!("inspecting {name_or_id}: {e}"),
    }
}

async fn container_running(name_or_id: &str) -> bool {
    match client().await.inspect_container(name_or_id, None).await {
        Ok(info) => info.state.and_then(|s| s.running) == Some(true),
        Err(_) => false,
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> F,
) {
    let until = Instant::now() + deadline;
    while !cond().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(d: &DockerDriver, s: &TaskSpec) -> Box<dyn TaskHandle> {
    match d.start(s.clone()).await {
        Ok(h) => h,
        Err(e) => panic!("starting {}: {e}", s.name),
    }
}

#[tokio::test]
async fn fingerprint_reports_the_daemon() {
    if !docker_present() {
        return;
    }
    let fp = driver().fingerprint().await;
    assert!(fp.detected && fp.healthy, "{fp:?}");
    assert!(fp.description.starts_with("Healthy (Docker "), "{fp:?}");
}

#[tokio::test]
async fn output_and_exit_code_are_captured_and_the_container_removed() {
    if !docker_present() {
        return;
    }
    let image = TestImage::build("output");
    let dir = tempfile::tempdir().unwrap();
    let s = spec(
        dir.path(),
        "output",
        &image.tag,
        &[
            "out", "hello", "err", "oops", "env", "GREETING", "exit", "3",
        ],
    );
    let handle = start(&driver(), &s).await;
    assert_eq!(handle.pid(), None);
    let state = handle.recover_state();
    assert_eq!(state.driver, "docker");
    assert_eq!(state.id, handle.id());
    assert_eq!(
        state.extra["container_name"],
        format!("task-{}", s.alloc_id)
    );
    let exit = tokio::time::timeout(Duration::from_secs(30), handle.wait())
        .await
        .unwrap();
    assert_eq!(exit.exit_code, 3, "{exit:?}");
    assert_eq!(exit.error, None);
    assert_eq!(read(&s.stdout_path), "hello\nGREETING=hi\n");
    assert_eq!(read(&s.stderr_path), "oops\n");
    assert!(!container_exists(handle.id()).await);
    assert_eq!(handle.wait().await, exit);
    // Gone, and says so.
    let err = driver().recover(&state, &s).await.err().unwrap();
    assert!(matches!(err, DriverError::Gone { .. }), "{err:?}");
}

#[tokio::test]
async fn a_missing_image_is_explained() {
    if !docker_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), "missing", "flotilla-test/absent:nope", &[]);
    let err = driver().start(s).await.err().unwrap();
    assert!(matches!(err, DriverError::ImageMissing { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "image \"flotilla-test/absent:nope\" is not present on this node and cannot be pulled (no registry reachable): build or load it first"
    );
}

#[tokio::test]
async fn a_failed_forced_pull_is_reported_in_bounded_time() {
    if !docker_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A registry address on loopback where nothing listens: the pull fails at once.
    let mut s = spec(
        dir.path(),
        "pull",
        "127.0.0.1:9/flotilla-test/absent:1",
        &[],
    );
    s.config["force_pull"] = json!(true);
    let started = Instant::now();
    let d = driver().with_pull_timeout(Duration::from_secs(20));
    let err = d.start(s).await.err().unwrap();
    assert!(matches!(err, DriverError::ImagePull { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("pulling image \"127.0.0.1:9/flotilla-test/absent:1\": "),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn stop_signals_then_kills_and_removes() {
    if !docker_present() {
        return;
    }
    let image = TestImage::build("stop");
    let dir = tempfile::tempdir().unwrap();
    let d = driver();

    // Handles SIGTERM: a graceful stop.
    let s = spec(
        dir.path(),
        "stop",
        &image.tag,
        &["trap", "out", "up", "sleep", "1000"],
    );
    let handle = start(&d, &s).await;
    eventually(
        "the container to print",
        Duration::from_secs(20),
        || async { read(&s.stdout_path) == "up\n" },
    )
    .await;
    let started = Instant::now();
    let exit = handle.stop(Signal::SIGTERM, Duration::from_secs(20)).await;
    assert_eq!(exit.exit_code, 128 + Signal::SIGTERM as i32, "{exit:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!container_exists(handle.id()).await);

    // PID 1 without a handler ignores SIGTERM: stop escalates to SIGKILL.
    let s = spec(
        dir.path(),
        "stop",
        &image.tag,
        &["out", "up", "sleep", "1000"],
    );
    let handle = start(&d, &s).await;
    eventually("the container to run", Duration::from_secs(20), || {
        container_running(handle.id())
    })
    .await;
    let started = Instant::now();
    let exit = handle
        .stop(Signal::SIGTERM, Duration::from_millis(500))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(exit.exit_code, 137, "{exit:?}");
    assert!(!container_exists(handle.id()).await);
    // Stopping again is harmless.
    assert_eq!(handle.kill().await, exit);
}

#[tokio::test]
async fn published_ports_are_reachable() {
    if !docker_present() {
        return;
    }
    let image = TestImage::build("ports");
    let dir = tempfile::tempdir().unwrap();
    let host_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut s = spec(dir.path(), "ports", &image.tag, &["serve", "8080"]);
    s.config["ports"] = json!(["http"]);
    s.ports = vec![PortMapping {
        label: "http".into(),
        host_ip: "127.0.0.1".into(),
        host_port,
        to: 8080,
    }];
    let handle = start(&driver(), &s).await;
    eventually(
        "an answer on the published port",
        Duration::from_secs(20),
        || async move {
            use tokio::io::AsyncReadExt;
            let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", host_port)).await
            else {
                return false;
            };
            let mut got = String::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), conn.read_to_string(&mut got)).await;
            got == "ok\n"
        },
    )
    .await;
    let exit = handle.stop(Signal::SIGTERM, Duration::from_secs(1)).await;
    assert_eq!(exit.exit_code, 137, "{exit:?}");
}

#[tokio::test]
async fn recovery_reattaches_to_a_running_container() {
    if !docker_present() {
        return;
    }
    let image = TestImage::build("recover");
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let mut s = spec(
        dir.path(),
        "recover",
        &image.tag,
        &[
            "out",
            "before",
            "wait-file",
            "/shared/go",
            "out",
            "after",
            "err",
            "bye",
            "exit",
            "7",
        ],
    );
    s.mounts = vec![MountSpec {
        source: shared.clone(),
        target: "/shared".into(),
        read_only: false,
    }];
    let handle = start(&driver(), &s).await;
    eventually("the first line", Duration::from_secs(20), || async {
        read(&s.stdout_path) == "before\n"
    })
    .await;
    let state = handle.recover_state();
    // An agent restart: the handle goes away, the container stays.
    drop(handle);
    let state: RecoverState =
        serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    assert!(container_running(&state.id).await);

    // A new driver, as after a restart.
    let recovered = driver().recover(&state, &s).await.unwrap();
    assert_eq!(recovered.id(), state.id);
    assert!(recovered.try_exit().is_none());
    std::fs::write(shared.join("go"), "").unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(30), recovered.wait())
        .await
        .unwrap();
    assert_eq!(exit.exit_code, 7, "{exit:?}");
    // Nothing written twice, nothing lost.
    assert_eq!(read(&s.stdout_path), "before\nafter\n");
    assert_eq!(read(&s.stderr_path), "bye\n");
    assert!(!container_exists(&state.id).await);
}

#[tokio::test]
async fn a_container_that_exited_while_detached_is_gone_and_cleaned_up() {
    if !docker_present() {
        return;
    }
    let image = TestImage::build("detached");
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let mut s = spec(
        dir.path(),
        "detached",
        &image.tag,
        &["wait-file", "/shared/go", "out", "while-away", "exit", "0"],
    );
    s.mounts = vec![MountSpec {
        source: shared.clone(),
        target: "/shared".into(),
        read_only: false,
    }];
    let handle = start(&driver(), &s).await;
    let state = handle.recover_state();
    eventually("the container to run", Duration::from_secs(20), || {
        container_running(&state.id)
    })
    .await;
    drop(handle);
    std::fs::write(shared.join("go"), "").unwrap();
    eventually("the container to exit", Duration::from_secs(20), || async {
        !container_running(&state.id).await
    })
    .await;
    let err = driver().recover(&state, &s).await.err().unwrap();
    assert!(matches!(err, DriverError::Gone { .. }), "{err:?}");
    assert!(!container_exists(&state.id).await);
    // What it printed while nobody listened was still saved.
    assert_eq!(read(&s.stdout_path), "while-away\n");
}

#[tokio::test]
async fn reap_unowned_removes_orphans_only() {
    if !docker_present() {
        return;
    }
    let image = TestImage::build("reap");
    let dir = tempfile::tempdir().unwrap();
    // A scope of its own, so this test never reaps another test's containers.
    let scope = alloc_id("node");
    let d = driver().with_node_scope(scope.clone());
    let keep = spec(
        &dir.path().join("keep"),
        "reap",
        &image.tag,
        &["sleep", "1000"],
    );
    let orphan = spec(
        &dir.path().join("orphan"),
        "reap",
        &image.tag,
        &["sleep", "1000"],
    );
    let kept = start(&d, &keep).await;
    let lost = start(&d, &orphan).await;
    let orphan_id = lost.id().to_string();
    drop(lost);
    eventually("both containers to run", Duration::from_secs(20), || {
        let (a, b) = (kept.id().to_string(), orphan_id.clone());
        async move { container_running(&a).await && container_running(&b).await }
    })
    .await;

    let owned = BTreeSet::from([keep.alloc_id.clone()]);
    let reaped = d.reap_unowned(&owned).await.unwrap();
    assert_eq!(reaped, vec![format!("task-{}", orphan.alloc_id)]);
    assert!(!container_exists(&orphan_id).await);
    assert!(container_running(kept.id()).await);
    // Nothing more to reap.
    assert!(d.reap_unowned(&owned).await.unwrap().is_empty());
    kept.kill().await;
    assert!(!container_exists(kept.id()).await);
}

#[tokio::test]
async fn logs_rotate_by_size() {
    if !docker_present() {
        return;
    }
    let image = TestImage::build("rotate");
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), "rotate", &image.tag, &["spam", "30000"]);
    s.log_max_files = 2;
    s.log_max_file_size_mb = 1;
    let handle = start(&driver(), &s).await;
    let exit = tokio::time::timeout(Duration::from_secs(60), handle.wait())
        .await
        .unwrap();
    assert!(exit.successful(), "{exit:?}");
    // 3,000,000 bytes in 1 MiB files: .0, .1, .2; the oldest deleted.
    let logs = dir.path().join("logs");
    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("task.stdout."))
        .collect();
    names.sort();
    assert_eq!(names, vec!["task.stdout.1", "task.stdout.2"]);
    let full = std::fs::metadata(logs.join("task.stdout.1")).unwrap().len();
    assert!(full <= 1024 * 1024 && full > 1000 * 1000, "{full}");
}

#[tokio::test]
async fn quiet_containers_outlast_the_request_timeout() {
    if !docker_present() {
        return;
    }
    let image = TestImage::build("quiet");
    let dir = tempfile::tempdir().unwrap();
    // Waiting and following output last as long as the container: the request timeout must
    // not cut them off.
    let s = spec(
        dir.path(),
        "quiet",
        &image.tag,
        &["sleep", "3", "out", "late", "sleep", "5", "exit", "5"],
    );
    let d = driver().with_request_timeout(Duration::from_secs(1));
    let handle = start(&d, &s).await;
    // Followed live, not only caught up after the exit.
    eventually("the late line", Duration::from_secs(20), || async {
        read(&s.stdout_path) == "late\n"
    })
    .await;
    assert!(
        container_running(handle.id()).await,
        "the line only arrived once the container had exited"
    );
    let exit = tokio::time::timeout(Duration::from_secs(30), handle.wait())
        .await
        .unwrap();
    assert_eq!(exit.exit_code, 5, "{exit:?}");
    assert_eq!(read(&s.stdout_path), "late\n");
}

#[tokio::test]
async fn a_missing_network_is_not_a_missing_image() {
    if !docker_present() {
        return;
    }
    let image = TestImage::build("network");
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), "network", &image.tag, &["exit", "0"]);
    s.config["network_mode"] = json!("flotilla-test-no-such-network");
    let err = driver().start(s).await.err().unwrap();
    assert!(matches!(err, DriverError::Docker { .. }), "{err:?}");
    assert!(
        err.to_string().contains("flotilla-test-no-such-network"),
        "{err}"
    );
}
