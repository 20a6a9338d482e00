//! The Docker driver through the real binary, with an image built in the test (`FROM scratch`
//! plus a static binary; no registry): the job runs and serves through ingress, restarts after
//! a crash, survives an agent restart without a second container, and its container is removed
//! when the job stops.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_test_support::{Cluster, eventually, get_host, get_json};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Build `FROM scratch` + the static test server; returns the tag.
fn build_image(dir: &Path) -> String {
    let src = format!("{}/tests/fixtures/httpd.c", env!("CARGO_MANIFEST_DIR"));
    sh(Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(dir.join("httpd"))
        .arg(&src));
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY httpd /httpd\nENTRYPOINT [\"/httpd\"]\n",
    )
    .unwrap();
    let tag = format!("flotilla-e2e/httpd:{}", std::process::id());
    sh(Command::new("docker")
        .args(["build", "-q", "-t", &tag])
        .arg(dir));
    tag
}

/// Removes the test image however the test ends.
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// Ids of running containers of allocation `alloc`.
fn containers_of(alloc: &str) -> Vec<String> {
    sh(Command::new("docker").args([
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=com.flotilla.alloc_id={alloc}"),
    ]))
    .lines()
    .map(str::to_string)
    .collect()
}

fn all_containers_of(alloc: &str) -> Vec<String> {
    sh(Command::new("docker").args([
        "ps",
        "-aq",
        "--filter",
        &format!("label=com.flotilla.alloc_id={alloc}"),
    ]))
    .lines()
    .map(str::to_string)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_job_serves_restarts_reattaches_and_cleans_up() {
    if !Path::new("/var/run/docker.sock").exists() {
        eprintln!("skipped: no Docker daemon (/var/run/docker.sock missing)");
        return;
    }
    let mut c = Cluster::new(Path::new(BIN));
    c.keep_tasks_on_shutdown = true;
    let image = build_image(c.dir.path());
    let _image_guard = ImageGuard(image.clone());
    c.start_server();
    c.start_agent(1);
    c.wait_nodes(1).await;

    let job = c.jobspec(
        "web.hcl",
        &format!(
            r#"job "web" {{
  group "web" {{
    network {{
      port "http" {{
        to = 8080
      }}
    }}
    restart {{
      attempts = 3
      interval = "1m"
      delay    = "1s"
      mode     = "fail"
    }}
    service {{
      name = "web"
      port = "http"
      check {{
        type     = "tcp"
        interval = "1s"
        timeout  = "1s"
      }}
    }}
    task "httpd" {{
      driver = "docker"
      config {{
        image = "{image}"
        args  = ["8080"]
        ports = ["http"]
      }}
      resources {{
        cpu    = 100
        memory = 64
      }}
    }}
  }}
}}
"#
        ),
    );
    let out = c.cli(&["job", "run", &job]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let allocs = c.allocs("web").await;
    let alloc = allocs[0]["ID"].as_str().unwrap().to_string();
    let ingress = format!("{}/", c.ingress(1));

    let serves = || {
        let ingress = ingress.clone();
        async move {
            let (status, body) = get_host(&ingress, "web.service.flotilla").await?;
            (status == 200 && body.contains("hello from container")).then_some(body)
        }
    };
    eventually(
        "docker job serves through ingress",
        Duration::from_secs(20),
        serves,
    )
    .await;
    let first = containers_of(&alloc);
    assert_eq!(first.len(), 1, "one container: {first:?}");

    // Crash it: the restart policy starts it again and traffic comes back.
    let _ = get_host(&format!("{}/crash", c.ingress(1)), "web.service.flotilla").await;
    eventually(
        "task restarted after the crash",
        Duration::from_secs(30),
        || {
            let url = format!("{}/v1/allocation/{alloc}", c.api());
            async move {
                let a = get_json(&url).await?;
                (a["TaskStates"]["httpd"]["Restarts"].as_u64()? >= 1
                    && a["ClientStatus"] == "running")
                    .then_some(())
            }
        },
    )
    .await;
    eventually(
        "serves again after the restart",
        Duration::from_secs(20),
        serves,
    )
    .await;
    let after_crash = containers_of(&alloc);
    assert_eq!(
        after_crash.len(),
        1,
        "still one running container: {after_crash:?}"
    );

    // Restart the agent mid-run: it re-attaches; no second container is started.
    assert!(
        c.agent(1).stop(Duration::from_secs(20)),
        "agent exits on SIGTERM"
    );
    assert_eq!(
        containers_of(&alloc),
        after_crash,
        "the container outlives its agent"
    );
    c.start_agent(1);
    c.wait_nodes(1).await;
    eventually(
        "serves after the agent restart",
        Duration::from_secs(20),
        serves,
    )
    .await;
    let settle = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < settle {
        assert_eq!(
            containers_of(&alloc),
            after_crash,
            "re-attached, not restarted"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let a = get_json(&format!("{}/v1/allocation/{alloc}", c.api()))
        .await
        .unwrap();
    assert_eq!(a["ClientStatus"], "running", "{a:#}");

    // Stop: the container is removed.
    let out = c.cli(&["job", "stop", "web"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    eventually(
        "container removed after stop",
        Duration::from_secs(20),
        || {
            let alloc = alloc.clone();
            async move { all_containers_of(&alloc).is_empty().then_some(()) }
        },
    )
    .await;
}
