//! Scheduling across three (then four) agents as separate processes: constraints pin a job to
//! a node class, `distinct_hosts` spreads, a system job lands on every node including one that
//! joins later, a batch job completes once, and a node killed with SIGKILL is marked down within
//! the heartbeat TTL while its service instances come back on the other nodes and serve through
//! ingress.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use flotilla_test_support::{Cluster, eventually, get};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// Names of the nodes running live allocations of `job`.
async fn nodes_of(c: &Cluster, job: &str) -> Vec<String> {
    let names: BTreeMap<String, String> = c.node_names().await;
    c.allocs(job)
        .await
        .iter()
        .filter(|a| a["DesiredStatus"] == "run" && a["ClientStatus"] == "running")
        .map(|a| {
            names
                .get(a["NodeID"].as_str().unwrap_or(""))
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

fn sleep_job(name: &str, kind: &str, count: u32, extra: &str) -> String {
    format!(
        r#"job "{name}" {{
  type = "{kind}"
  group "g" {{
    count = {count}
    {extra}
    task "t" {{
      driver = "raw_exec"
      config {{
        command = "sleep"
        args    = ["3600"]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_rules_system_batch_and_node_loss() {
    let mut c = Cluster::new(std::path::Path::new(BIN));
    c.start_server();
    c.start_agent_with(1, &["--node-class", "large"]);
    c.start_agent_with(2, &["--node-class", "small"]);
    c.start_agent_with(3, &["--node-class", "small"]);
    c.wait_nodes(3).await;

    // A constraint pins a job to the one node of class "large".
    let pinned = c.jobspec(
        "pinned.hcl",
        &sleep_job(
            "pinned",
            "service",
            2,
            r#"constraint {
      attribute = "${node.class}"
      value     = "large"
    }"#,
        ),
    );
    let out = c.cli(&["job", "run", &pinned]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let nodes = nodes_of(&c, "pinned").await;
    assert_eq!(
        nodes,
        ["node-1", "node-1"],
        "pinned job must run only on node-1"
    );

    // distinct_hosts: three instances, three nodes.
    let spread = c.jobspec(
        "spread.hcl",
        &sleep_job(
            "spread",
            "service",
            3,
            r#"constraint {
      operator = "distinct_hosts"
      value    = "true"
    }"#,
        ),
    );
    let out = c.cli(&["job", "run", &spread]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let nodes: BTreeSet<String> = nodes_of(&c, "spread").await.into_iter().collect();
    assert_eq!(
        nodes.len(),
        3,
        "distinct_hosts must use three nodes: {nodes:?}"
    );

    // A fourth instance cannot be placed with distinct_hosts on three nodes: placement failure.
    let too_many = c.jobspec(
        "spread4.hcl",
        &sleep_job(
            "spread",
            "service",
            4,
            r#"constraint {
      operator = "distinct_hosts"
      value    = "true"
    }"#,
        ),
    );
    let out = c.cli(&["job", "run", "--timeout", "20s", &too_many]);
    assert_eq!(
        out.code, 2,
        "placement failure exit code:\n{}\n{}",
        out.stdout, out.stderr
    );
    assert!(out.stdout.contains("distinct_hosts"), "{}", out.stdout);

    // A system job: one allocation on every node, then on a node that joins later.
    let sys = c.jobspec("sys.hcl", &sleep_job("sys", "system", 1, ""));
    let out = c.cli(&["job", "run", &sys]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let nodes: BTreeSet<String> = nodes_of(&c, "sys").await.into_iter().collect();
    assert_eq!(nodes.len(), 3, "system job on every node: {nodes:?}");
    c.start_agent_with(4, &["--node-class", "small"]);
    c.wait_nodes(4).await;
    eventually(
        "system job on the fourth node",
        Duration::from_secs(30),
        || {
            let c = &c;
            async move {
                let nodes: BTreeSet<String> = nodes_of(c, "sys").await.into_iter().collect();
                (nodes.len() == 4 && nodes.contains("node-4")).then_some(())
            }
        },
    )
    .await;

    // (Its distinct_hosts instances would have nowhere to go during the drain below.)
    let out = c.cli(&["job", "stop", "spread"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    // Eligibility: an ineligible node gets no new placements; draining moves work off a node.
    let out = c.cli(&["node", "eligibility", "-disable", "node-2"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let spread_ineligible = c.jobspec("five.hcl", &sleep_job("five", "service", 6, ""));
    let out = c.cli(&["job", "run", &spread_ineligible]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let nodes = nodes_of(&c, "five").await;
    assert!(
        !nodes.iter().any(|n| n == "node-2"),
        "no new placement on an ineligible node: {nodes:?}"
    );
    let out = c.cli(&["node", "eligibility", "-enable", "node-2"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let before: usize = nodes_of(&c, "five")
        .await
        .iter()
        .filter(|n| *n == "node-3")
        .count();
    assert!(before > 0, "some instances of \"five\" run on node-3");
    let out = c.cli(&[
        "node",
        "drain",
        "-enable",
        "-yes",
        "-ignore-system",
        "node-3",
    ]);
    assert_eq!(out.code, 0, "drain:\n{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("drain complete"), "{}", out.stdout);
    eventually(
        "all six instances running off the drained node",
        Duration::from_secs(30),
        || {
            let c = &c;
            async move {
                let after = nodes_of(c, "five").await;
                (after.len() == 6 && !after.iter().any(|n| n == "node-3")).then_some(())
            }
        },
    )
    .await;
    let out = c.cli(&["node", "drain", "-disable", "node-3"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let out = c.cli(&["job", "stop", "five"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    // A batch job runs once to completion and is not restarted.
    let batch = c.jobspec(
        "batch.hcl",
        r#"job "once" {
  type = "batch"
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "sh"
        args    = ["-c", "echo ran; exit 0"]
      }
      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
"#,
    );
    let out = c.cli(&["job", "run", "--detach", &batch]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    eventually("batch allocation complete", Duration::from_secs(30), || {
        let c = &c;
        async move {
            let allocs = c.allocs("once").await;
            (allocs.len() == 1 && allocs[0]["ClientStatus"] == "complete").then_some(())
        }
    })
    .await;
    // Give the scheduler a chance to (wrongly) run it again, then check it did not.
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        assert_eq!(
            c.allocs("once").await.len(),
            1,
            "a completed batch job must not run again"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let status = flotilla_test_support::get_json(&format!("{}/v1/job/once", c.api()))
        .await
        .unwrap();
    assert_eq!(status["Status"], "dead", "{status:#}");

    // Parameterized jobs run per dispatch; periodic jobs can be forced.
    let param = c.jobspec(
        "param.hcl",
        r#"job "resize" {
  type = "batch"
  parameterized {
    meta_required = ["size"]
  }
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "sh"
        args    = ["-c", "echo size=${NOMAD_META_size}"]
      }
    }
  }
}
"#,
    );
    let out = c.cli(&["job", "run", "--detach", &param]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let out = c.cli(&["job", "dispatch", "resize"]);
    assert_ne!(out.code, 0, "missing required meta must be refused");
    assert!(out.stderr.contains("size"), "{}", out.stderr);
    let out = c.cli(&["job", "dispatch", "-meta", "size=10", "-detach", "resize"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let child = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Dispatched Job ID = "))
        .expect("dispatched job id")
        .trim()
        .to_string();
    eventually(
        "dispatched child completes",
        Duration::from_secs(30),
        || {
            let c = &c;
            let child = child.clone();
            async move {
                let allocs = c.allocs(&child).await;
                (allocs.len() == 1 && allocs[0]["ClientStatus"] == "complete").then_some(())
            }
        },
    )
    .await;
    let periodic = c.jobspec(
        "cron.hcl",
        r#"job "nightly" {
  type = "batch"
  periodic {
    crons            = ["0 3 * * *"]
    prohibit_overlap = true
  }
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "true"
      }
    }
  }
}
"#,
    );
    let out = c.cli(&["job", "run", "--detach", &periodic]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let out = c.cli(&["job", "periodic", "force", "-detach", "nightly"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    eventually(
        "forced periodic child completes",
        Duration::from_secs(30),
        || {
            let api = c.api();
            let c = &c;
            async move {
                let jobs = flotilla_test_support::get_json(&format!("{api}/v1/jobs")).await?;
                let child = jobs.as_array()?.iter().find(|j| {
                    j["ID"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("nightly/periodic-"))
                })?;
                let allocs = c.allocs(child["ID"].as_str()?).await;
                (allocs.len() == 1 && allocs[0]["ClientStatus"] == "complete").then_some(())
            }
        },
    )
    .await;

    // Node loss: run the web example, kill -9 the agent of one of its instances.
    let hello = format!("{}/examples/hello.hcl", env!("CARGO_MANIFEST_DIR"));
    let out = c.cli(&["job", "run", &hello]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let names = c.node_names().await;
    let victim_name = nodes_of(&c, "hello")
        .await
        .into_iter()
        .find(|n| n != "node-1")
        .expect("an instance off node-1");
    let victim_id = names
        .iter()
        .find(|(_, n)| **n == victim_name)
        .map(|(id, _)| id.clone())
        .unwrap();
    let victim: usize = victim_name.trim_start_matches("node-").parse().unwrap();
    let killed_at = Instant::now();
    c.agent(victim).kill9();
    eventually("node marked down", Duration::from_secs(30), || {
        let url = format!("{}/v1/node/{victim_id}", c.api());
        async move {
            let n = flotilla_test_support::get_json(&url).await?;
            (n["Status"] == "down").then_some(())
        }
    })
    .await;
    let down_after = killed_at.elapsed();
    eventually(
        "3 healthy instances on the other nodes",
        Duration::from_secs(30),
        || {
            let c = &c;
            let victim_id = victim_id.clone();
            async move {
                let regs =
                    flotilla_test_support::get_json(&format!("{}/v1/service/hello", c.api()))
                        .await?;
                let healthy: Vec<&serde_json::Value> = regs
                    .as_array()?
                    .iter()
                    .filter(|r| r["Status"] == "passing")
                    .collect();
                (healthy.len() == 3 && healthy.iter().all(|r| r["NodeID"] != victim_id.as_str()))
                    .then_some(())
            }
        },
    )
    .await;
    let recovered_after = killed_at.elapsed();
    let url = format!("{}/", c.ingress(1));
    eventually(
        "ingress serves all 3 new instances",
        Duration::from_secs(15),
        || {
            let url = url.clone();
            async move {
                let mut seen = BTreeSet::new();
                for _ in 0..30 {
                    let (status, body) = get(&url).await?;
                    if status != 200 {
                        return None;
                    }
                    seen.insert(body);
                }
                (seen.len() == 3).then_some(())
            }
        },
    )
    .await;
    let lost = c
        .allocs("hello")
        .await
        .iter()
        .filter(|a| a["ClientStatus"] == "lost")
        .count();
    assert!(lost >= 1, "the dead node's allocations are marked lost");
    eprintln!(
        "node loss: marked down after {:.1}s (TTL 5s), instances healthy elsewhere after {:.1}s",
        down_after.as_secs_f64(),
        recovered_after.as_secs_f64()
    );
}
