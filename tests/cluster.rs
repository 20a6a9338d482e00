//! A server and two agents as separate processes on their own loopback addresses: the example
//! job spreads over both nodes, ingress on either node reaches instances on both, the server
//! survives `kill -9` without losing the job, and `job stop` empties the mesh (503 with a clear
//! body) and leaves no workload process behind.

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_test_support::{Cluster, eventually, get, get_json, pids_matching};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

fn example() -> String {
    format!("{}/examples/hello.hcl", env!("CARGO_MANIFEST_DIR"))
}

/// Send `n` requests to `url`; the set of answers (allocation and node), or `None` if any
/// request did not get a 200.
async fn sample(url: &str, n: usize) -> Option<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let (status, body) = get(url).await?;
        if status != 200 {
            eprintln!("GET {url}: {status} {body}");
            return None;
        }
        seen.insert(body.trim().to_string());
    }
    Some(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_through_the_mesh_and_survive_a_server_crash() {
    let mut c = Cluster::new(std::path::Path::new(BIN));
    c.start_server();
    c.start_agent(1);
    c.start_agent(2);
    c.wait_nodes(2).await;

    // Submit through the CLI; it follows the job until healthy.
    let out = c.cli(&["job", "run", &example()]);
    assert_eq!(
        out.code,
        0,
        "job run failed:\n{}\n{}\n{}",
        out.stdout,
        out.stderr,
        c.logs()
    );
    assert!(
        out.stdout.contains("all allocations running and healthy"),
        "{}",
        out.stdout
    );

    // Instances spread over both nodes.
    let allocs = get_json(&format!("{}/v1/job/hello/allocations", c.api()))
        .await
        .unwrap();
    let nodes: BTreeSet<String> = allocs
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["ClientStatus"] == "running")
        .map(|a| a["NodeID"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        nodes.len(),
        2,
        "instances should run on both nodes: {allocs:#}"
    );

    // Ingress on either node reaches all three instances, wherever they run.
    for node in 1..=2 {
        let url = format!("{}/", c.ingress(node));
        let seen = eventually("all 3 instances reachable", Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let s = sample(&url, 30).await?;
                (s.len() == 3).then_some(s)
            }
        })
        .await;
        let node_names: BTreeSet<&str> = seen
            .iter()
            .filter_map(|l| l.split(" on node ").nth(1))
            .filter_map(|r| r.split_whitespace().next())
            .collect();
        assert_eq!(
            node_names.len(),
            2,
            "ingress on node {node} should reach both nodes: {seen:?}"
        );
    }
    // By service host name too.
    let (status, body) =
        flotilla_test_support::get_host(&format!("{}/", c.ingress(1)), "hello.service.flotilla")
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");

    // kill -9 the server and start it again on the same data dir.
    c.server.as_mut().unwrap().kill9();
    // Proxies keep serving from their last config while the server is away.
    let served = sample(&format!("{}/", c.ingress(1)), 5).await;
    assert!(
        served.is_some_and(|s| !s.is_empty()),
        "ingress must keep serving without the server"
    );
    c.start_server();
    let jobs = eventually("job list after restart", Duration::from_secs(20), || {
        let url = format!("{}/v1/jobs", c.api());
        async move { get_json(&url).await }
    })
    .await;
    assert_eq!(jobs[0]["ID"], "hello", "{jobs:#}");
    c.wait_nodes(2).await;
    // The restarted server pushes config again: traffic keeps flowing, all instances healthy.
    eventually(
        "3 healthy instances after restart",
        Duration::from_secs(30),
        || {
            let url = format!("{}/v1/service/hello", c.api());
            async move {
                let v = get_json(&url).await?;
                let healthy = v
                    .as_array()?
                    .iter()
                    .filter(|r| r["Status"] == "passing")
                    .count();
                (healthy == 3).then_some(())
            }
        },
    )
    .await;
    eventually(
        "all 3 instances through node 2 after restart",
        Duration::from_secs(10),
        || {
            let url = format!("{}/", c.ingress(2));
            async move { sample(&url, 30).await.filter(|s| s.len() == 3) }
        },
    )
    .await;

    // Stop: within 5 s ingress answers 503 naming the service, and no workload is left.
    let out = c.cli(&["job", "stop", "hello"]);
    assert_eq!(
        out.code, 0,
        "job stop failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    let started = std::time::Instant::now();
    eventually("503 after stop", Duration::from_secs(5), || {
        let url = format!("{}/", c.ingress(1));
        async move {
            let (status, body) = get(&url).await?;
            (status == 503 && body.contains("no healthy instance of service \"hello\""))
                .then_some(())
        }
    })
    .await;
    eprintln!("503 after stop in {:?}", started.elapsed());
    let ip1 = c.net.ip(2).to_string();
    let ip2 = c.net.ip(3).to_string();
    eventually("no demo-app process left", Duration::from_secs(10), || {
        let (ip1, ip2) = (ip1.clone(), ip2.clone());
        async move {
            let left =
                pids_matching(&["demo-app", &ip1]).len() + pids_matching(&["demo-app", &ip2]).len();
            (left == 0).then_some(())
        }
    })
    .await;
}
