//! `flotilla proxy --bootstrap`: the node proxy alone, with static config and no control plane.
//!
//! - A bootstrap with one cluster (a backend this test runs) and a route `/` → that cluster:
//!   the proxy becomes ready, a request through the ingress gets the backend's answer, and
//!   SIGTERM stops it by itself.
//! - Broken bootstraps exit non-zero, naming the file and the field.
//! - With one worker per allowed CPU, each forwarding thread is pinned to a CPU of its own;
//!   `--worker-affinity none` pins nothing.

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_test_support::{Net, Proc, eventually, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
const BACKEND_BODY: &str = "hello from the static backend";

/// A tiny HTTP/1.1 keep-alive server answering every request with [`BACKEND_BODY`].
async fn backend(ip: std::net::IpAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{BACKEND_BODY}",
                            BACKEND_BODY.len()
                        );
                        if tcp.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

fn bootstrap(backend: SocketAddr) -> String {
    serde_json::json!({
        "clusters": [{"name": "web", "kind": {"cluster": {"endpoints": [
            {"address": backend.to_string(), "local": true, "healthy": true}
        ]}}}],
        "routes": [{"name": "root", "kind": {"route": {"path_prefix": "/", "cluster": "web"}}}],
        "authorization": [{"name": "intentions",
            "kind": {"authorization": {"default_action": "allow"}}}],
    })
    .to_string()
}

/// The CPUs `pid`'s thread `tid` may run on, from `/proc` (`Cpus_allowed_list`, e.g. `0-1`).
fn cpus_allowed(pid: u32, tid: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
        .unwrap()
}

/// The CPUs of a `Cpus_allowed_list` (`0-1`, `0,2-3`), ascending.
fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(first.parse::<usize>().unwrap()..=last.parse::<usize>().unwrap());
    }
    cpus
}

/// `(thread name, allowed CPUs)` of `pid`'s forwarding threads, sorted by name.
fn worker_affinities(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = task.unwrap().file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"));
        let Ok(comm) = comm else { continue };
        if comm.starts_with("flotilla-fwd-") {
            out.push((comm.trim().to_owned(), cpus_allowed(pid, &tid)));
        }
    }
    out.sort();
    out
}

fn proxy_args(file: &std::path::Path, net: Net, workers: usize) -> Vec<String> {
    vec![
        "proxy".into(),
        "--bootstrap".into(),
        file.display().to_string(),
        "--ingress".into(),
        net.addr(1, 8080).to_string(),
        "--inbound".into(),
        net.addr(1, 15008).to_string(),
        "--admin".into(),
        net.addr(1, 19000).to_string(),
        "--workers".into(),
        workers.to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_bootstrap_proxies_to_its_cluster_and_stops_on_sigterm() {
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let backend = backend(net.ip(2)).await;
    let file = dir.path().join("bootstrap.json");
    std::fs::write(&file, bootstrap(backend)).unwrap();

    let mut proxy = Proc::spawn(
        std::path::Path::new(BIN),
        "proxy",
        &proxy_args(&file, net, 2),
        dir.path(),
    );
    let ready = format!("http://{}/ready", net.addr(1, 19000));
    eventually("the proxy is ready", Duration::from_secs(20), || {
        let ready = ready.clone();
        async move { get(&ready).await.filter(|(status, _)| *status == 200) }
    })
    .await;

    let url = format!("http://{}/anything", net.addr(1, 8080));
    let (status, body) = get(&url).await.expect("the ingress answers");
    assert_eq!(
        (status, body.as_str()),
        (200, BACKEND_BODY),
        "{}",
        proxy.output()
    );

    let dump =
        flotilla_test_support::get_json(&format!("http://{}/config_dump", net.addr(1, 19000)))
            .await
            .expect("config dump");
    assert_eq!(dump["versions"]["clusters"], "bootstrap");

    assert!(
        proxy.stop(Duration::from_secs(10)),
        "SIGTERM must stop the proxy by itself:\n{}",
        proxy.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_pinned_one_per_cpu_unless_turned_off() {
    let own_list = cpus_allowed(std::process::id(), &std::process::id().to_string());
    let own = parse_cpu_list(&own_list);
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bootstrap.json");
    std::fs::write(&file, bootstrap(backend(net.ip(2)).await)).unwrap();
    for (mode, want) in [
        (
            "auto",
            own.iter()
                .enumerate()
                .map(|(i, cpu)| (format!("flotilla-fwd-{i}"), cpu.to_string()))
                .collect::<Vec<_>>(),
        ),
        (
            "none",
            (0..own.len())
                .map(|i| (format!("flotilla-fwd-{i}"), own_list.clone()))
                .collect(),
        ),
    ] {
        let mut args = proxy_args(&file, net, own.len());
        args.extend(["--worker-affinity".into(), mode.into()]);
        let mut proxy = Proc::spawn(std::path::Path::new(BIN), "proxy", &args, dir.path());
        let ready = format!("http://{}/ready", net.addr(1, 19000));
        eventually("the proxy is ready", Duration::from_secs(20), || {
            let ready = ready.clone();
            async move { get(&ready).await.filter(|(status, _)| *status == 200) }
        })
        .await;
        let pid = proxy.pid();
        let what = format!("with --worker-affinity {mode}, workers allowed on {want:?}");
        eventually(&what, Duration::from_secs(10), || {
            let want = want.clone();
            async move { Some(()).filter(|()| worker_affinities(pid) == want) }
        })
        .await;
        assert!(proxy.stop(Duration::from_secs(10)), "{}", proxy.output());
    }
}

#[test]
fn broken_bootstraps_exit_non_zero_naming_file_and_field() {
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let good = bootstrap("127.0.0.1:9".parse().unwrap());
    let cases = [
        (
            "kind.json",
            good.replace("\"cluster\":{", "\"clustr\":{"),
            vec![
                "kind.json:1:",
                "clusters[0].kind",
                "unknown variant `clustr`",
            ],
        ),
        (
            "address.json",
            good.replace("127.0.0.1:9", "127.0.0.1"),
            vec![
                "address.json",
                "clusters",
                "endpoints[0].address",
                "\"127.0.0.1\"",
            ],
        ),
        (
            "field.json",
            good.replace("\"healthy\"", "\"healty\""),
            vec!["field.json:1:", "clusters[0]", "unknown field `healty`"],
        ),
    ];
    for (name, text, needles) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let args = proxy_args(&file, net, 2);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out =
            flotilla_test_support::run(std::path::Path::new(BIN), &args, Duration::from_secs(20));
        assert_ne!(out.code, 0, "{name} must fail: {out:?}");
        for needle in needles {
            assert!(
                out.stderr.contains(needle),
                "{name}: stderr lacks {needle:?}:\n{}",
                out.stderr
            );
        }
    }

    let missing = dir.path().join("missing.json");
    let out = flotilla_test_support::run(
        std::path::Path::new(BIN),
        &["proxy", "--bootstrap", &missing.display().to_string()],
        Duration::from_secs(20),
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("missing.json"), "{}", out.stderr);
}
