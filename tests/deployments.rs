//! Deployments through the real binary with load running through the ingress the whole time
//! (about 300 requests/s, every response checked): a rolling update, a failed version that
//! reverts itself, a canary promoted by the operator, blue/green with automatic promotion and
//! `job revert` — each with zero failed requests.
//!
//! The example app answers `hello from allocation … version vN`; old instances leave every
//! proxy's endpoints when they are stopped and get their kill signal only after the group's
//! `shutdown_delay`; new ones join once their check passes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use flotilla_test_support::{Cluster, Output, eventually, get_json};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
const COUNT: u32 = 4;

/// The job at version label `label`, with extra `update` settings and app flags.
fn spec(label: &str, update: &str, app_flags: &str) -> String {
    format!(
        r#"job "web" {{
  update {{
    max_parallel      = 1
    min_healthy_time  = "1s"
    healthy_deadline  = "8s"
    progress_deadline = "40s"
    auto_revert       = true
    {update}
  }}
  group "g" {{
    count          = {COUNT}
    shutdown_delay = "2s"
    spread {{
      attribute = "${{node.unique.name}}"
    }}
    network {{
      port "http" {{}}
    }}
    service {{
      name        = "web"
      port        = "http"
      tags        = ["urlprefix-/"]
      canary_tags = ["urlprefix-/", "canary"]
      check {{
        type     = "http"
        path     = "/health"
        interval = "500ms"
        timeout  = "1s"
      }}
    }}
    task "app" {{
      driver = "raw_exec"
      config {{
        command = "{BIN}"
        args    = ["demo-app", "--listen", "${{NOMAD_ADDR_http}}", "--node", "${{node.unique.name}}",
                   "--app-version", "{label}"{app_flags}]
      }}
      resources {{
        cpu    = 50
        memory = 32
      }}
    }}
  }}
}}
"#
    )
}

/// One answer seen by the load: when, and the version that answered (or what went wrong).
#[derive(Debug, Clone)]
struct Sample {
    at: SystemTime,
    outcome: Result<String, String>,
}

/// Requests through the ingress from several keep-alive clients until stopped.
struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` loops, each sending a request every `pace`.
    fn start(url: String, clients: usize, pace: Duration) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop, rx) = tokio::sync::watch::channel(false);
        let tasks = (0..clients)
            .map(|_| {
                let (url, samples, rx) = (url.clone(), samples.clone(), rx.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(5))
                        .build()
                        .unwrap();
                    let mut tick = tokio::time::interval(pace);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !*rx.borrow() {
                        tick.tick().await;
                        let outcome = one(&client, &url).await;
                        samples.lock().unwrap().push(Sample {
                            at: SystemTime::now(),
                            outcome,
                        });
                    }
                })
            })
            .collect();
        Self {
            samples,
            stop,
            tasks,
        }
    }

    fn len(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// Samples from index `from` on.
    fn since(&self, from: usize) -> Vec<Sample> {
        self.samples.lock().unwrap()[from..].to_vec()
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
        Arc::try_unwrap(self.samples)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_else(|a| a.lock().unwrap().clone())
    }
}

/// One request; `Ok(version)` only for a 200 from the example app naming its version.
async fn one(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let r = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let status = r.status().as_u16();
    let body = r.text().await.map_err(|e| format!("body: {e:?}"))?;
    if status != 200 || !body.starts_with("hello from allocation") {
        return Err(format!("{status}: {body}"));
    }
    body.split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| format!("no version in {body:?}"))
}

/// What a phase of load saw: answers by version and the failures.
#[derive(Debug, Default)]
struct Tally {
    requests: usize,
    by_version: BTreeMap<String, usize>,
    failures: Vec<String>,
    seconds: f64,
}

fn tally(samples: &[Sample]) -> Tally {
    let mut t = Tally {
        requests: samples.len(),
        ..Default::default()
    };
    for s in samples {
        match &s.outcome {
            Ok(v) => *t.by_version.entry(v.clone()).or_default() += 1,
            Err(e) => t.failures.push(e.clone()),
        }
    }
    if let (Some(a), Some(b)) = (samples.first(), samples.last()) {
        t.seconds = b.at.duration_since(a.at).unwrap_or_default().as_secs_f64();
    }
    t
}

/// Run a CLI verb without stalling the load (it runs on the other worker threads).
fn cli(c: &Cluster, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| c.cli(args))
}

async fn latest_deployment(c: &Cluster) -> Option<serde_json::Value> {
    get_json(&format!("{}/v1/job/web/deployment", c.api()))
        .await
        .filter(|d| !d.is_null())
}

async fn job_version(c: &Cluster) -> u64 {
    get_json(&format!("{}/v1/job/web", c.api()))
        .await
        .and_then(|j| j["Version"].as_u64())
        .unwrap_or(u64::MAX)
}

/// Wait until the job's deployment for `version` has `status`; returns it.
async fn deployment_reaches(
    c: &Cluster,
    version: u64,
    status: &str,
    within: Duration,
) -> serde_json::Value {
    eventually(
        &format!("deployment of version {version} is {status}"),
        within,
        || async {
            get_json(&format!("{}/v1/job/web/deployments", c.api()))
                .await
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .into_iter()
                .find(|d| d["JobVersion"].as_u64() == Some(version) && d["Status"] == status)
        },
    )
    .await
}

/// Wait until the last `n` answers all come from `version`.
async fn only_version(load: &Load, version: &str, n: usize) {
    let start = load.len();
    eventually(
        &format!("the last {n} answers all come from {version}"),
        Duration::from_secs(30),
        || async {
            let recent = load.since(start);
            let tail = &recent[recent.len().saturating_sub(n)..];
            (tail.len() == n && tail.iter().all(|s| s.outcome.as_deref() == Ok(version)))
                .then_some(())
        },
    )
    .await;
}

/// The job's allocations, one line each: name, version, statuses, canary, health.
async fn dump(c: &Cluster) -> String {
    let mut lines = Vec::new();
    for a in c.allocs("web").await {
        lines.push(format!(
            "{} v{} {}/{} canary={} healthy={} dep={}",
            a["Name"].as_str().unwrap_or(""),
            a["JobVersion"],
            a["DesiredStatus"].as_str().unwrap_or(""),
            a["ClientStatus"].as_str().unwrap_or(""),
            a["DeploymentStatus"]["Canary"],
            a["DeploymentStatus"]["Healthy"],
            &a["DeploymentID"].as_str().unwrap_or("")
                [..8.min(a["DeploymentID"].as_str().unwrap_or("").len())],
        ));
    }
    lines.join("\n")
}

fn report(name: &str, t: &Tally, rollout: Duration) {
    eprintln!(
        "{name}: rollout {:.1} s; {} requests in {:.1} s ({:.0} req/s), by version {:?}, {} failed",
        rollout.as_secs_f64(),
        t.requests,
        t.seconds,
        t.requests as f64 / t.seconds.max(0.001),
        t.by_version,
        t.failures.len()
    );
    assert!(
        t.failures.is_empty(),
        "{name}: {} failed requests, first: {:?}",
        t.failures.len(),
        t.failures.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        t.requests as f64 / t.seconds.max(0.001) >= 200.0,
        "{name}: the load must run at 200 req/s or more"
    );
}

/// The `started_at` of the running task of a canary allocation of the deployment.
async fn canary_started(c: &Cluster, deployment: &str) -> SystemTime {
    let allocs = get_json(&format!(
        "{}/v1/deployment/allocations/{deployment}",
        c.api()
    ))
    .await
    .and_then(|v| v.as_array().cloned())
    .unwrap_or_default();
    let id = allocs
        .iter()
        .find(|a| a["DeploymentStatus"]["Canary"] == true)
        .and_then(|a| a["ID"].as_str())
        .expect("a canary allocation")
        .to_string();
    let alloc = get_json(&format!("{}/v1/allocation/{id}", c.api()))
        .await
        .expect("canary allocation");
    let started = alloc["TaskStates"]["app"]["StartedAt"]
        .as_str()
        .expect("canary task started")
        .to_string();
    humantime::parse_rfc3339_weak(&started).expect("an RFC 3339 time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn rollouts_under_load_fail_no_request() {
    let mut c = Cluster::new(std::path::Path::new(BIN));
    c.start_server();
    c.start_agent(1);
    c.start_agent(2);
    c.wait_nodes(2).await;

    // v1: the first version; its deployment completes and the version becomes stable.
    let v1 = c.jobspec("v1.hcl", &spec("v1", "", ""));
    let out = cli(&c, &["job", "run", &v1]);
    assert_eq!(out.code, 0, "job run v1: {out:?}");
    deployment_reaches(&c, 0, "successful", Duration::from_secs(60)).await;

    let load = Load::start(c.ingress(1), 4, Duration::from_millis(12));
    only_version(&load, "v1", 50).await;

    // Rolling update v1 → v2, one instance at a time.
    let mark = load.len();
    let began = Instant::now();
    let v2 = c.jobspec("v2.hcl", &spec("v2", "", ""));
    let out = cli(&c, &["job", "run", &v2]);
    let rollout = began.elapsed();
    assert_eq!(
        out.code, 0,
        "job run v2 follows the deployment to success: {out:?}"
    );
    assert!(out.stdout.contains("successful"), "{}", out.stdout);
    deployment_reaches(&c, 1, "successful", Duration::from_secs(5)).await;
    only_version(&load, "v2", 100).await;
    let t = tally(&load.since(mark));
    assert!(t.by_version.contains_key("v1") && t.by_version.contains_key("v2"));
    report("rolling v1 → v2 (max_parallel 1)", &t, rollout);

    // v3 never passes its check: the deployment fails and v2 comes back (auto_revert).
    let mark = load.len();
    let began = Instant::now();
    let v3 = c.jobspec("v3.hcl", &spec("v3", "", r#", "--unhealthy""#));
    let out = cli(&c, &["job", "run", &v3]);
    assert_ne!(
        out.code, 0,
        "job run v3 reports the failed deployment: {out:?}"
    );
    let failed = deployment_reaches(&c, 2, "failed", Duration::from_secs(5)).await;
    assert_eq!(
        failed["StatusDescription"],
        "Failed due to unhealthy allocations - rolling back to job version 1"
    );
    assert_eq!(job_version(&c).await, 3, "the revert is version 3");
    deployment_reaches(&c, 3, "successful", Duration::from_secs(60)).await;
    let rollout = began.elapsed();
    only_version(&load, "v2", 100).await;
    let t = tally(&load.since(mark));
    assert!(
        !t.by_version.contains_key("v3"),
        "an unhealthy instance got traffic: {t:?}"
    );
    report("v3 failing checks, auto-revert to v2", &t, rollout);

    // Canary: one v4 instance next to v2, healthy only 3 s after it starts; traffic reaches it
    // only then. The operator promotes it and the rollout completes.
    let mark = load.len();
    let began = Instant::now();
    let v4 = c.jobspec(
        "v4.hcl",
        &spec("v4", "canary = 1", r#", "--healthy-after", "3s""#),
    );
    let out = cli(&c, &["job", "run", &v4]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("requires manual promotion"),
        "{}",
        out.stdout
    );
    let d = latest_deployment(&c).await.unwrap();
    assert_eq!(d["JobVersion"], 4);
    let id = d["ID"].as_str().unwrap().to_string();
    let started = canary_started(&c, &id).await;
    let first_v4 = load
        .since(mark)
        .iter()
        .find(|s| s.outcome.as_deref() == Ok("v4"))
        .map(|s| s.at)
        .expect("the healthy canary gets traffic");
    let after = first_v4.duration_since(started).unwrap_or_default();
    assert!(
        after >= Duration::from_secs(3),
        "the canary got traffic {after:?} after it started, before its check passed"
    );
    let t = tally(&load.since(mark));
    assert_eq!(
        t.by_version.len(),
        2,
        "v2 and the v4 canary share traffic: {t:?}"
    );
    let out = cli(&c, &["deployment", "promote", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    deployment_reaches(&c, 4, "successful", Duration::from_secs(90)).await;
    let rollout = began.elapsed();
    only_version(&load, "v4", 100).await;
    report("canary v4, promoted", &tally(&load.since(mark)), rollout);

    // Blue/green: a full set of v5 canaries, promoted automatically once all are healthy.
    let mark = load.len();
    let began = Instant::now();
    let v5 = c.jobspec(
        "v5.hcl",
        &spec(
            "v5",
            &format!("canary = {COUNT}\n    auto_promote = true"),
            "",
        ),
    );
    let out = cli(&c, &["job", "run", &v5]);
    let rollout = began.elapsed();
    assert_eq!(out.code, 0, "{out:?}");
    eprintln!("after v5 run:\n{}\n{}", out.stdout, dump(&c).await);
    deployment_reaches(&c, 5, "successful", Duration::from_secs(5)).await;
    only_version(&load, "v5", 100).await;
    report(
        "blue/green v5 (canary = count, auto_promote)",
        &tally(&load.since(mark)),
        rollout,
    );

    // job revert to version 1 (v2's specification): rolled out like any new version.
    let out = cli(&c, &["job", "history", "web"]);
    assert_eq!(out.code, 0, "{out:?}");
    let mark = load.len();
    let began = Instant::now();
    let out = cli(&c, &["job", "revert", "web", "1"]);
    let rollout = began.elapsed();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(job_version(&c).await, 6);
    deployment_reaches(&c, 6, "successful", Duration::from_secs(5)).await;
    only_version(&load, "v2", 100).await;
    report("job revert web 1", &tally(&load.since(mark)), rollout);

    let all = load.finish().await;
    let t = tally(&all);
    eprintln!(
        "whole run: {} requests in {:.1} s, {} failed",
        t.requests,
        t.seconds,
        t.failures.len()
    );
    assert!(t.failures.is_empty());
}
