//! The README's first command: `flotilla dev examples/hello.hcl` brings the example up and
//! ingress balances over its three instances.

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_test_support::{Net, Proc, eventually, get, run};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_the_example_through_the_mesh() {
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let example = format!("{}/examples/hello.hcl", env!("CARGO_MANIFEST_DIR"));
    let args: Vec<String> = vec![
        "dev".into(),
        example,
        "--address".into(),
        net.ip(1).to_string(),
    ];
    let mut dev = Proc::spawn(std::path::Path::new(BIN), "dev", &args, dir.path());
    eventually("dev cluster ready", Duration::from_secs(60), || {
        let out = dev.output();
        async move { out.contains("Flotilla dev cluster ready").then_some(()) }
    })
    .await;
    let out = dev.output();
    assert!(
        out.contains("curl http://"),
        "summary should say where to send requests:\n{out}"
    );

    let url = format!("http://{}/", net.addr(1, 8080));
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let (status, body) = get(&url).await.expect("ingress answers");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("hello from allocation"), "{body}");
        seen.insert(body);
    }
    assert_eq!(
        seen.len(),
        3,
        "30 requests should reach all 3 instances: {seen:?}"
    );

    // Ctrl-C drains: the process exits and the workloads are gone.
    assert!(
        dev.stop(Duration::from_secs(30)),
        "dev should exit on SIGTERM:\n{}",
        dev.output()
    );
    let ip = net.ip(1).to_string();
    eventually("no demo-app process left", Duration::from_secs(10), || {
        let ip = ip.clone();
        async move {
            flotilla_test_support::pids_matching(&["demo-app", &ip])
                .is_empty()
                .then_some(())
        }
    })
    .await;
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["server", "--help"],
        vec!["agent", "--help"],
        vec!["dev", "--help"],
        vec!["job", "run", "--help"],
        vec!["job", "status", "-help"],
        vec!["alloc", "logs", "--help"],
        vec!["node", "status", "--help"],
        vec!["service", "list", "--help"],
    ] {
        let out = run(std::path::Path::new(BIN), &args, Duration::from_secs(10));
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        assert!(out.stdout.contains("Usage"), "{args:?}: {}", out.stdout);
    }
    let out = run(
        std::path::Path::new(BIN),
        &["job", "run", "--bogus"],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--bogus"), "{}", out.stderr);
}
