//! The L7 path's policies, in process with real sockets: a fake control plane pushes clusters
//! with policy and service route tables; requests go through the proxy's ingress.

mod support;

use flotilla_proto::discovery::v1 as pb;
use flotilla_proto::discovery::v1::resource::Kind;
use http::StatusCode;
use support::*;

fn with_policy(mut r: pb::Resource, f: impl FnOnce(&mut pb::Cluster)) -> pb::Resource {
    if let Some(Kind::Cluster(c)) = &mut r.kind {
        c.protocol = "http".into();
        f(c);
    }
    r
}

fn table(service: &str, routes: Vec<pb::HttpRoute>) -> pb::Resource {
    pb::Resource {
        name: format!("service:{service}"),
        kind: Some(Kind::ServiceRoutes(pb::ServiceRoutes {
            service: service.into(),
            namespace: "default".into(),
            routes,
        })),
    }
}

fn to(cluster: &str) -> Vec<pb::WeightedCluster> {
    vec![pb::WeightedCluster {
        cluster: cluster.into(),
        weight: 10_000,
    }]
}

#[tokio::test]
async fn rate_limit_answers_429_once_the_burst_is_spent() {
    init_tracing();
    let fake = FakeDiscovery::start().await;
    let proxy = TestProxy::start("n1", fake.url()).await;
    let b = echo_backend("b").await;
    let c = with_policy(cluster("svc", vec![local(b.addr, true)]), |c| {
        c.rate_limit = Some(pb::RateLimit {
            requests_per_second: 1,
            requests_max_burst: 2,
        });
    });
    fake.configure("1", vec![c], vec![]).await;
    eventually("config applied", || async {
        proxy.config.load().is_ready().then_some(())
    })
    .await;
    let statuses: Vec<StatusCode> = futures_statuses(&proxy, 3).await;
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

async fn futures_statuses(proxy: &TestProxy, n: usize) -> Vec<StatusCode> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(proxy.ingress, "svc.service.flotilla", "/").await.status);
    }
    out
}

#[tokio::test]
async fn request_timeout_answers_504_and_concurrency_limit_503() {
    init_tracing();
    let fake = FakeDiscovery::start().await;
    let proxy = TestProxy::start("n1", fake.url()).await;
    let mut slow = slow_backend().await;
    let c = with_policy(cluster("svc", vec![local(slow.addr, true)]), |c| {
        c.circuit_breakers = Some(pb::CircuitBreakers {
            max_concurrent_requests: 1,
            ..Default::default()
        });
    });
    let routes = table(
        "svc",
        vec![
            pb::HttpRoute {
                r#match: Some(pb::HttpMatch {
                    path_prefix: "/quick".into(),
                    ..Default::default()
                }),
                clusters: to("svc"),
                request_timeout_ms: 200,
                ..Default::default()
            },
            pb::HttpRoute {
                clusters: to("svc"),
                ..Default::default()
            },
        ],
    );
    fake.configure("1", vec![c], vec![routes]).await;
    eventually("config applied", || async {
        proxy.config.load().is_ready().then_some(())
    })
    .await;
    let r = get(proxy.ingress, "svc.service.flotilla", "/quick").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.body);
    assert!(r.body.contains("no response within"), "{}", r.body);
    within(
        "the timed-out request reached the backend",
        slow.started.recv(),
    )
    .await;
    // One request in flight holds the only slot: the next one fails fast.
    let ingress = proxy.ingress;
    let held = tokio::spawn(async move { get(ingress, "svc.service.flotilla", "/held").await });
    within("the held request reached the backend", slow.started.recv()).await;
    let r = get(proxy.ingress, "svc.service.flotilla", "/other").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.body.contains("max_concurrent_requests"), "{}", r.body);
    slow.release.send_replace(true);
    assert_eq!(held.await.unwrap().body, "slow-done");
}

#[tokio::test]
async fn routes_rewrite_prefixes_set_headers_and_fail_over() {
    init_tracing();
    let fake = FakeDiscovery::start().await;
    let proxy = TestProxy::start("n1", fake.url()).await;
    let api = echo_backend("api").await;
    let backup = echo_backend("backup").await;
    let web = with_policy(cluster("web", vec![]), |c| {
        c.failover = vec!["backup".into()];
    });
    let routes = table(
        "web",
        vec![
            pb::HttpRoute {
                r#match: Some(pb::HttpMatch {
                    path_prefix: "/api/".into(),
                    ..Default::default()
                }),
                clusters: to("api"),
                prefix_rewrite: "/v2/".into(),
                request_headers_set: [("x-custom".to_string(), "set".to_string())].into(),
                ..Default::default()
            },
            pb::HttpRoute {
                clusters: to("web"),
                ..Default::default()
            },
        ],
    );
    fake.configure(
        "1",
        vec![
            web,
            with_policy(cluster("api", vec![local(api.addr, true)]), |_| {}),
            with_policy(cluster("backup", vec![local(backup.addr, true)]), |_| {}),
        ],
        vec![routes],
    )
    .await;
    eventually("config applied", || async {
        proxy.config.load().is_ready().then_some(())
    })
    .await;
    let r = get(proxy.ingress, "web.service.flotilla", "/api/users?id=1").await;
    assert_eq!(r.body, "api");
    assert_eq!(r.header("x-echo-path"), "/v2/users?id=1");
    assert_eq!(r.header("x-echo-custom"), "set");
    // web has no endpoint: its failover cluster answers.
    let r = get(proxy.ingress, "web.service.flotilla", "/page").await;
    assert_eq!(r.body, "backup");
}
