//! Traffic policy through the real binary: a server and two agents as separate processes, config
//! entries written with `flotilla config write` and `PUT /v1/config`, requests through node-1's
//! ingress (its node proxy), every answer checked.
//!
//! - a service-splitter sends 90/10 between two resolver subsets (±3 % over 10,000 requests);
//! - a service-router sends `/api` and a header match to other services;
//! - ring hash keeps keys on their instance when one of ten instances goes;
//! - outlier detection ejects the one failing instance of three (error rate after < 0.5 %);
//! - a retry turns a single 503 into a 200;
//! - a gRPC streaming call and a WebSocket echo cross two proxies (node-1's ingress, node-2's
//!   inbound listener);
//! - 100 config changes under load: no failed request, no reset connection.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flotilla_test_support::{Cluster, eventually, get_json};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// One group of a job: (group name, count, service, tags, extra demo-app args, pinned node).
struct Group<'a> {
    name: &'a str,
    count: u32,
    service: &'a str,
    tags: &'a [&'a str],
    args: &'a [&'a str],
    node: Option<&'a str>,
}

fn job(name: &str, groups: &[Group<'_>]) -> String {
    let mut out = format!("job \"{name}\" {{\n");
    for g in groups {
        let tags = g
            .tags
            .iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let args = g
            .args
            .iter()
            .map(|a| format!(", {a:?}"))
            .collect::<String>();
        let constraint = g.node.map_or(String::new(), |n| {
            format!(
                "    constraint {{\n      attribute = \"${{node.unique.name}}\"\n      value = \"{n}\"\n    }}\n"
            )
        });
        out.push_str(&format!(
            r#"  group "{group}" {{
    count = {count}
{constraint}    network {{
      port "http" {{}}
    }}
    service {{
      name = "{service}"
      port = "http"
      tags = [{tags}]
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
        args    = ["demo-app", "--listen", "${{NOMAD_ADDR_http}}", "--node", "${{node.unique.name}}"{args}]
      }}
      resources {{
        cpu    = 20
        memory = 16
      }}
    }}
  }}
"#,
            group = g.name,
            count = g.count,
            service = g.service,
        ));
    }
    out.push_str("}\n");
    out
}

/// Writes a config entry through the API (JSON, Consul's shape).
async fn put_config(c: &Cluster, entry: serde_json::Value) {
    let client = reqwest::Client::new();
    let r = client
        .put(format!("{}/v1/config", c.api()))
        .json(&entry)
        .send()
        .await
        .expect("PUT /v1/config");
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    assert!(
        status.is_success(),
        "PUT /v1/config {entry}: {status} {body}"
    );
}

/// Writes a config entry file with the CLI.
fn config_write(c: &Cluster, name: &str, body: &str) {
    let path = c.jobspec(name, body);
    let out = tokio::task::block_in_place(|| c.cli(&["config", "write", &path]));
    assert_eq!(out.code, 0, "config write {name}: {out:?}");
}

fn run_job(c: &Cluster, file: &str, spec: &str) {
    let path = c.jobspec(file, spec);
    let out = tokio::task::block_in_place(|| c.cli(&["job", "run", "-detach", &path]));
    assert_eq!(out.code, 0, "job run {file}: {out:?}");
}

/// Node-1's proxy's view of `cluster`: the number of healthy endpoints.
async fn healthy_endpoints(c: &Cluster, cluster: &str) -> usize {
    let admin = format!("http://{}/config_dump", c.net.addr(2, 19000));
    get_json(&admin)
        .await
        .and_then(|d| {
            d["clusters"]
                .as_array()?
                .iter()
                .find(|x| x["name"] == cluster)
                .map(|x| {
                    x["endpoints"]
                        .as_array()
                        .map_or(0, |e| e.iter().filter(|e| e["healthy"] == true).count())
                })
        })
        .unwrap_or(0)
}

async fn wait_endpoints(c: &Cluster, cluster: &str, n: usize) {
    eventually(
        &format!("node-1's proxy has {n} healthy endpoints of {cluster}"),
        Duration::from_secs(60),
        || async { (healthy_endpoints(c, cluster).await == n).then_some(()) },
    )
    .await;
}

/// One answer: status and body, or the transport error.
type Answer = Result<(u16, String), String>;

/// A keep-alive client to node-1's ingress.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

async fn request(
    client: &reqwest::Client,
    url: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut r = client.get(url).header("host", host);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| format!("body: {e:?}"))?;
    Ok((status, body))
}

/// `n` GETs of `url` (Host `host`) from `concurrency` keep-alive clients.
async fn many(url: &str, host: &str, n: usize, concurrency: usize) -> Vec<Answer> {
    let per = n.div_ceil(concurrency);
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (url, host) = (url.to_string(), host.to_string());
        let count = per.min(n.saturating_sub(i * per));
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                out.push(request(&c, &url, &host, &[]).await);
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// The version word of a demo-app answer (`hello from allocation … version V`).
fn version(body: &str) -> Option<&str> {
    body.split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
}

/// The allocation id of a demo-app answer.
fn alloc_of(body: &str) -> Option<&str> {
    body.split_whitespace()
        .skip_while(|w| *w != "allocation")
        .nth(1)
}

fn versions(answers: &[Answer]) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut by = BTreeMap::new();
    let mut failures = Vec::new();
    for a in answers {
        match a {
            Ok((200, body)) => match version(body) {
                Some(v) => *by.entry(v.to_string()).or_default() += 1,
                None => failures.push(format!("200 without a version: {body}")),
            },
            Ok((s, body)) => failures.push(format!("{s}: {body}")),
            Err(e) => failures.push(e.clone()),
        }
    }
    (by, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_policy_through_the_real_binary() {
    let mut c = Cluster::new(std::path::Path::new(BIN));
    c.start_server();
    c.start_agent(1);
    c.start_agent(2);
    c.wait_nodes(2).await;
    let ingress = c.ingress(1);

    // The services and their protocols.
    run_job(
        &c,
        "web.hcl",
        &job(
            "web",
            &[
                Group {
                    name: "v1",
                    count: 1,
                    service: "web",
                    tags: &["urlprefix-web.example/", "v1"],
                    args: &["--app-version", "v1"],
                    node: None,
                },
                Group {
                    name: "v2",
                    count: 1,
                    service: "web",
                    tags: &["urlprefix-web.example/", "v2"],
                    args: &["--app-version", "v2"],
                    node: None,
                },
            ],
        ),
    );
    run_job(
        &c,
        "api.hcl",
        &job(
            "api",
            &[Group {
                name: "g",
                count: 1,
                service: "api",
                tags: &[],
                args: &["--app-version", "api"],
                node: None,
            }],
        ),
    );
    run_job(
        &c,
        "canary.hcl",
        &job(
            "web-canary",
            &[Group {
                name: "g",
                count: 1,
                service: "web-canary",
                tags: &[],
                args: &["--app-version", "canary"],
                node: None,
            }],
        ),
    );
    for svc in ["web", "api", "web-canary"] {
        config_write(
            &c,
            &format!("{svc}-defaults.hcl"),
            &format!("Kind = \"service-defaults\"\nName = \"{svc}\"\nProtocol = \"http\"\n"),
        );
    }
    config_write(
        &c,
        "web-resolver.hcl",
        r#"Kind          = "service-resolver"
Name          = "web"
DefaultSubset = "v1"
Subsets = {
  v1 = { Filter = "Service.Tags contains \"v1\"" }
  v2 = { Filter = "Service.Tags contains \"v2\"" }
}
"#,
    );
    config_write(
        &c,
        "web-splitter.json",
        r#"{"Kind": "service-splitter", "Name": "web",
            "Splits": [{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]}"#,
    );
    wait_endpoints(&c, "v1.web", 1).await;
    wait_endpoints(&c, "v2.web", 1).await;
    // Node-1's proxy reaches node-2's instance once its ingress certificate is issued.
    serving(&ingress, "web.example").await;

    // 1. The 90/10 split over 10,000 requests.
    let began = Instant::now();
    let answers = many(&ingress, "web.example", 10_000, 8).await;
    let took = began.elapsed();
    let (by, failures) = versions(&answers);
    assert!(
        failures.is_empty(),
        "failed: {:?}",
        &failures[..failures.len().min(5)]
    );
    let v2 = by.get("v2").copied().unwrap_or(0) as f64 / answers.len() as f64;
    eprintln!(
        "split 90/10: {by:?} over {} requests in {:.1} s ({:.0} req/s): v2 share {:.2} %",
        answers.len(),
        took.as_secs_f64(),
        answers.len() as f64 / took.as_secs_f64(),
        v2 * 100.0
    );
    assert!(
        (0.07..=0.13).contains(&v2),
        "v2 share {v2} is not 10 % ± 3 %: {by:?}"
    );

    // 2. A router: `/api` and a header match go to other services; the rest still splits.
    config_write(
        &c,
        "web-router.hcl",
        r#"Kind = "service-router"
Name = "web"
Routes = [
  {
    Match { HTTP { Header = [{ Name = "x-canary", Exact = "true" }] } }
    Destination { Service = "web-canary" }
  },
  {
    Match { HTTP { PathPrefix = "/api" } }
    Destination { Service = "api" }
  },
]
"#,
    );
    let cl = client();
    let routed = eventually("the router applies", Duration::from_secs(20), || {
        let cl = cl.clone();
        let ingress = ingress.clone();
        async move {
            let api = request(&cl, &format!("{ingress}/api/users"), "web.example", &[]).await;
            let canary = request(
                &cl,
                &format!("{ingress}/"),
                "web.example",
                &[("x-canary", "true")],
            )
            .await;
            match (&api, &canary) {
                (Ok((200, a)), Ok((200, b)))
                    if version(a) == Some("api") && version(b) == Some("canary") =>
                {
                    Some((a.clone(), b.clone()))
                }
                _ => None,
            }
        }
    })
    .await;
    eprintln!(
        "router: /api → {:?}; x-canary: true → {:?}",
        routed.0.trim(),
        routed.1.trim()
    );
    for _ in 0..50 {
        let api = request(&cl, &format!("{ingress}/api/x"), "web.example", &[]).await;
        assert_eq!(
            api.as_ref()
                .map(|(s, b)| (*s, version(b).map(str::to_string))),
            Ok((200, Some("api".into())))
        );
        let canary = request(
            &cl,
            &format!("{ingress}/x"),
            "web.example",
            &[("x-canary", "true")],
        )
        .await;
        assert_eq!(
            canary
                .as_ref()
                .map(|(s, b)| (*s, version(b).map(str::to_string))),
            Ok((200, Some("canary".into())))
        );
        let other = request(
            &cl,
            &format!("{ingress}/x"),
            "web.example",
            &[("x-canary", "no")],
        )
        .await;
        let v = other
            .as_ref()
            .ok()
            .and_then(|(_, b)| version(b))
            .map(str::to_string);
        assert!(matches!(v.as_deref(), Some("v1" | "v2")), "{other:?}");
    }

    // 3. Retry: one instance that fails the first request for each key with 503.
    run_job(
        &c,
        "once.hcl",
        &job(
            "once",
            &[Group {
                name: "g",
                count: 1,
                service: "once",
                tags: &["urlprefix-once.example/"],
                args: &[],
                node: Some("node-2"),
            }],
        ),
    );
    config_write(
        &c,
        "once-defaults.hcl",
        "Kind = \"service-defaults\"\nName = \"once\"\nProtocol = \"http\"\n",
    );
    wait_endpoints(&c, "once", 1).await;
    // Without a retry policy the 503 reaches the client.
    let first = request(
        &cl,
        &format!("{ingress}/fail-once/plain"),
        "once.example",
        &[],
    )
    .await;
    assert_eq!(first.as_ref().map(|r| r.0), Ok(503), "{first:?}");
    config_write(
        &c,
        "once-router.hcl",
        r#"Kind = "service-router"
Name = "once"
Routes = [
  {
    Match { HTTP { PathPrefix = "/" } }
    Destination {
      NumRetries         = 1
      RetryOnStatusCodes = [503]
    }
  },
]
"#,
    );
    eventually("the retry policy applies", Duration::from_secs(20), || {
        let cl = cl.clone();
        let ingress = ingress.clone();
        async move {
            let key = format!("k{}", rand_key());
            let r = request(
                &cl,
                &format!("{ingress}/fail-once/{key}"),
                "once.example",
                &[],
            )
            .await;
            matches!(r, Ok((200, _))).then_some(())
        }
    })
    .await;
    for i in 0..20 {
        let r = request(
            &cl,
            &format!("{ingress}/fail-once/retry-{i}"),
            "once.example",
            &[],
        )
        .await;
        assert_eq!(
            r.as_ref().map(|r| r.0),
            Ok(200),
            "a single 503 must become a 200: {r:?}"
        );
    }
    eprintln!("retry: 20 of 20 first requests (each answered 503 once by the app) returned 200");

    // 4. Outlier detection: one instance of three answers 500 to everything but its check.
    run_job(
        &c,
        "pool.hcl",
        &job(
            "pool",
            &[
                Group {
                    name: "good",
                    count: 2,
                    service: "pool",
                    tags: &["urlprefix-pool.example/"],
                    args: &[],
                    node: None,
                },
                Group {
                    name: "bad",
                    count: 1,
                    service: "pool",
                    tags: &["urlprefix-pool.example/"],
                    args: &["--fail-status", "500"],
                    node: None,
                },
            ],
        ),
    );
    config_write(
        &c,
        "pool-defaults.hcl",
        r#"Kind     = "service-defaults"
Name     = "pool"
Protocol = "http"
UpstreamConfig {
  Defaults {
    PassiveHealthCheck {
      Interval         = "1s"
      MaxFailures      = 3
      BaseEjectionTime = "60s"
    }
  }
}
"#,
    );
    wait_endpoints(&c, "pool", 3).await;
    // Until the last 60 answers in a row are 200s.
    let (mut before, mut before_errors, mut run) = (0usize, 0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(30);
    while run < 60 {
        assert!(
            Instant::now() < deadline,
            "the failing instance was not ejected: {before_errors} errors in {before} requests"
        );
        let r = request(&cl, &format!("{ingress}/"), "pool.example", &[]).await;
        before += 1;
        if matches!(r, Ok((200, _))) {
            run += 1;
        } else {
            before_errors += 1;
            run = 0;
        }
    }
    let after = many(&ingress, "pool.example", 3_000, 4).await;
    let errors = after.iter().filter(|a| !matches!(a, Ok((200, _)))).count();
    let rate = errors as f64 / after.len() as f64;
    let metrics = reqwest::get(format!("http://{}/metrics", c.net.addr(2, 19000)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ejections: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("flotilla_proxy_ejections_total") && l.contains("\"pool\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!(
        "outlier detection: {before_errors} errors in {before} requests until ejection; after: {errors} errors in {} requests ({:.3} %); ejections counted: {ejections}",
        after.len(),
        rate * 100.0
    );
    assert!(rate < 0.005, "error rate after ejection {rate}");
    assert!(
        ejections >= 1.0,
        "flotilla_proxy_ejections_total for pool: {metrics}"
    );

    // 5. Ring hash: ten instances, keys by header; one instance goes.
    let hash_job = |count| {
        job(
            "hash",
            &[Group {
                name: "g",
                count,
                service: "hash",
                tags: &["urlprefix-hash.example/"],
                args: &[],
                node: None,
            }],
        )
    };
    run_job(&c, "hash.hcl", &hash_job(10));
    config_write(
        &c,
        "hash-defaults.hcl",
        "Kind = \"service-defaults\"\nName = \"hash\"\nProtocol = \"http\"\n",
    );
    config_write(
        &c,
        "hash-resolver.hcl",
        r#"Kind = "service-resolver"
Name = "hash"
LoadBalancer {
  Policy = "ring_hash"
  HashPolicies = [{ Field = "header", FieldValue = "x-user" }]
}
"#,
    );
    wait_endpoints(&c, "hash", 10).await;
    let keys: Vec<String> = (0..2_000).map(|i| format!("user-{i}")).collect();
    let owners = |keys: Vec<String>| {
        let ingress = ingress.clone();
        async move {
            let cl = client();
            let mut out = HashMap::new();
            for k in keys {
                let r = request(
                    &cl,
                    &format!("{ingress}/"),
                    "hash.example",
                    &[("x-user", &k)],
                )
                .await;
                let Ok((200, body)) = r else {
                    panic!("hash request for {k}: {r:?}");
                };
                out.insert(k, alloc_of(&body).unwrap_or("?").to_string());
            }
            out
        }
    };
    let first = eventually("ring hash applies", Duration::from_secs(20), || {
        let owners = &owners;
        // 47: not a multiple of the instance count, so round robin cannot pass this check.
        let keys = keys[..47].to_vec();
        async move {
            // Consistent: the same key lands on the same instance every time.
            let a = owners(keys.clone()).await;
            let b = owners(keys).await;
            (a == b).then_some(())
        }
    });
    first.await;
    let before = owners(keys.clone()).await;
    let instances: std::collections::BTreeSet<&String> = before.values().collect();
    assert_eq!(instances.len(), 10, "keys spread over the ten instances");
    run_job(&c, "hash.hcl", &hash_job(9));
    wait_endpoints(&c, "hash", 9).await;
    let after = owners(keys.clone()).await;
    let live: std::collections::BTreeSet<&String> = after.values().collect();
    let gone: Vec<&&String> = instances.difference(&live).collect();
    assert_eq!(gone.len(), 1, "one instance left: {gone:?}");
    let kept = keys.iter().filter(|k| before[*k] == after[*k]).count();
    let on_survivors = keys.iter().filter(|k| live.contains(&before[*k])).count();
    let kept_survivors = keys
        .iter()
        .filter(|k| live.contains(&before[*k]) && before[*k] == after[*k])
        .count();
    eprintln!(
        "ring hash: {kept} of {} keys kept their instance ({:.1} %); of the {on_survivors} keys whose instance stayed, {kept_survivors} kept it ({:.1} %)",
        keys.len(),
        100.0 * kept as f64 / keys.len() as f64,
        100.0 * kept_survivors as f64 / on_survivors as f64
    );
    assert!(kept as f64 >= 0.85 * keys.len() as f64);
    assert!(kept_survivors as f64 >= 0.9 * on_survivors as f64);

    // 6. 100 config changes while load runs: no failed request, no reset connection.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ingress) = (stop.clone(), ingress.clone());
        load.push(tokio::spawn(async move {
            let cl = client();
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                answers.push(request(&cl, &format!("{ingress}/x"), "web.example", &[]).await);
            }
            answers
        }));
    }
    let began = Instant::now();
    for i in 0..100u32 {
        let w = if i % 2 == 0 { 50 } else { 90 };
        put_config(
            &c,
            serde_json::json!({
                "Kind": "service-splitter",
                "Name": "web",
                "Splits": [
                    {"Weight": w, "ServiceSubset": "v1"},
                    {"Weight": 100 - w, "ServiceSubset": "v2"},
                ],
            }),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let changes_took = began.elapsed();
    // Let the last change reach the proxy under load too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for t in load {
        answers.extend(t.await.unwrap());
    }
    let (by, failures) = versions(&answers);
    eprintln!(
        "100 config changes in {:.1} s under load: {} requests, by version {by:?}, {} failed",
        changes_took.as_secs_f64(),
        answers.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failed during config changes: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(answers.len() >= 1_000, "the load ran: {}", answers.len());

    // 7. gRPC streaming and a WebSocket echo through two proxies (node-1 ingress → node-2).
    grpc_and_websocket(&c, &ingress).await;
}

/// Waits until 20 requests in a row to `host` answer 200.
async fn serving(ingress: &str, host: &str) {
    let cl = client();
    eventually(
        &format!("{host} answers through the ingress"),
        Duration::from_secs(30),
        || {
            let cl = cl.clone();
            async move {
                for _ in 0..20 {
                    match request(&cl, &format!("{ingress}/"), host, &[]).await {
                        Ok((200, _)) => {}
                        _ => return None,
                    }
                }
                Some(())
            }
        },
    )
    .await;
}

fn rand_key() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

async fn grpc_and_websocket(c: &Cluster, ingress: &str) {
    run_job(
        c,
        "echo.hcl",
        &job(
            "echo",
            &[Group {
                name: "g",
                count: 1,
                service: "echo",
                tags: &["urlprefix-/flotilla.demo.v1.Echo/", "urlprefix-ws.example/"],
                args: &[],
                node: Some("node-2"),
            }],
        ),
    );
    config_write(
        c,
        "echo-defaults.hcl",
        "Kind = \"service-defaults\"\nName = \"echo\"\nProtocol = \"grpc\"\n",
    );
    wait_endpoints(c, "echo", 1).await;
    let dump = get_json(&format!("http://{}/config_dump", c.net.addr(2, 19000)))
        .await
        .unwrap();
    let echo = dump["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "echo")
        .unwrap()
        .clone();
    assert_eq!(
        echo["endpoints"][0]["local"], false,
        "echo runs on node-2: {echo}"
    );

    use flotilla_proto::demo::v1::echo_client::EchoClient;
    use flotilla_proto::demo::v1::{CountRequest, SayRequest};
    let channel = eventually("gRPC through the ingress", Duration::from_secs(20), || {
        let url = ingress.to_string();
        async move {
            let mut client = EchoClient::connect(url).await.ok()?;
            client
                .say(SayRequest {
                    message: "ping".into(),
                    ..Default::default()
                })
                .await
                .ok()
                .map(|_| client)
        }
    })
    .await;
    let mut client = channel;
    let mut stream = client
        .count(CountRequest {
            n: 5,
            interval_ms: 20,
        })
        .await
        .expect("Count")
        .into_inner();
    let mut got = Vec::new();
    while let Some(reply) = stream.message().await.expect("stream message") {
        got.push(reply.number);
    }
    assert_eq!(
        got,
        vec![1, 2, 3, 4, 5],
        "server streaming through two proxies"
    );
    let outbound = tokio_stream::iter((0..3).map(|i| SayRequest {
        message: format!("m{i}"),
        ..Default::default()
    }));
    let mut chat = client.chat(outbound).await.expect("Chat").into_inner();
    let mut echoed = Vec::new();
    while let Some(reply) = chat.message().await.expect("chat message") {
        echoed.push(reply.message);
    }
    assert_eq!(echoed.len(), 3, "bidi echo: {echoed:?}");
    eprintln!(
        "gRPC through node-1's ingress to node-2: Count streamed {got:?}, Chat echoed {echoed:?}"
    );

    // WebSocket: Host ws.example, path /ws.
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let addr = ingress.trim_start_matches("http://").to_string();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("host", "ws.example".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("WebSocket handshake through the ingress");
    assert_eq!(resp.status().as_u16(), 101);
    let hello = ws.next().await.expect("hello frame").expect("hello frame");
    assert!(
        hello.to_text().unwrap_or("").starts_with("hello from"),
        "{hello:?}"
    );
    for i in 0..10 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let back = ws.next().await.expect("echo").expect("echo");
        assert_eq!(back.to_text().unwrap(), text);
    }
    ws.close(None).await.ok();
    eprintln!("WebSocket through node-1's ingress to node-2: hello + 10 echoes");
}
