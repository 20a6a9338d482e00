//! End-to-end tests of the node proxy over real sockets: a fake control plane drives the
//! config and signs certificates, echo backends answer, requests go through the ingress
//! listener (and, to remote endpoints, through the peer's mTLS inbound listener).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_proto::discovery::v1::resource::Kind;
use flotilla_proto::discovery::v1::{ALL_TYPES, CLUSTER_TYPE, ROUTE_TYPE};
use flotilla_proxy::upstream::{TunnelError, open_tunnel};
use flotilla_proxy::{BoundProxy, NodeIdentity, ProxyConfig};
use http::StatusCode;
use support::*;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn routes_by_service_host_and_longest_prefix() {
    let (fake, proxy) = proxy_with_server("n1").await;
    let (api, v2, root, hello) = (
        echo_backend("api").await,
        echo_backend("v2").await,
        echo_backend("root").await,
        echo_backend("hello").await,
    );
    fake.configure(
        "1",
        vec![
            cluster("api", vec![local(api.addr, true)]),
            cluster("v2", vec![local(v2.addr, true)]),
            cluster("root", vec![local(root.addr, true)]),
            cluster("hello", vec![local(hello.addr, true)]),
        ],
        vec![
            route("", "/", "root"),
            route("", "/api", "api"),
            route("", "/api/v2", "v2"),
            route("shop.example", "/api", "hello"),
        ],
    )
    .await;
    let at = proxy.ingress;
    assert_eq!(
        get(at, "hello.service.flotilla", "/api/v2").await.body,
        "hello"
    );
    assert_eq!(
        get(at, "HELLO.Service.Flotilla:8080", "/").await.body,
        "hello"
    );
    assert_eq!(get(at, "x.example", "/api/v2/users").await.body, "v2");
    assert_eq!(get(at, "x.example", "/api/v1").await.body, "api");
    assert_eq!(get(at, "x.example", "/other").await.body, "root");
    assert_eq!(get(at, "shop.example:80", "/api/x").await.body, "hello");
    let r = get(at, "x.example", "/api/x?q=1").await;
    assert_eq!(r.header("x-echo-path"), "/api/x?q=1");
}

#[tokio::test]
async fn h2c_prior_knowledge_is_routed() {
    let (fake, proxy) = proxy_with_server("n1").await;
    let hello = echo_backend("hello").await;
    fake.configure(
        "1",
        vec![cluster("hello", vec![local(hello.addr, true)])],
        vec![],
    )
    .await;
    let uri = format!("http://hello.service.flotilla:{}/h2", proxy.ingress.port());
    let r = get_h2(proxy.ingress, &uri).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "hello");
    assert_eq!(r.header("x-echo-path"), "/h2");
    assert!(
        r.header("x-echo-host")
            .starts_with("hello.service.flotilla")
    );
}

#[tokio::test]
async fn round_robin_across_three_backends() {
    let (fake, proxy) = proxy_with_server("n1").await;
    let b = [
        echo_backend("b1").await,
        echo_backend("b2").await,
        echo_backend("b3").await,
    ];
    fake.configure(
        "1",
        vec![cluster(
            "hello",
            b.iter().map(|b| local(b.addr, true)).collect(),
        )],
        vec![],
    )
    .await;
    let mut order = Vec::new();
    for _ in 0..6 {
        order.push(get(proxy.ingress, "hello.service.flotilla", "/").await.body);
    }
    assert_eq!(order[..3], order[3..], "not a stable rotation: {order:?}");
    let mut first: Vec<&String> = order[..3].iter().collect();
    first.sort();
    assert_eq!(first, ["b1", "b2", "b3"]);
}

#[tokio::test]
async fn unhealthy_endpoints_are_skipped() {
    let (fake, proxy) = proxy_with_server("n1").await;
    let (b1, b2, b3) = (
        echo_backend("b1").await,
        echo_backend("b2").await,
        echo_backend("b3").await,
    );
    fake.configure(
        "1",
        vec![cluster(
            "hello",
            vec![
                local(b1.addr, true),
                local(b2.addr, false),
                local(b3.addr, true),
            ],
        )],
        vec![],
    )
    .await;
    let seen = tally(proxy.ingress, "hello.service.flotilla", "/", 6).await;
    assert_eq!(seen.get("b1"), Some(&3), "{seen:?}");
    assert_eq!(seen.get("b3"), Some(&3), "{seen:?}");
    assert_eq!(seen.get("b2"), None, "{seen:?}");
}

#[tokio::test]
async fn no_healthy_endpoint_is_503_naming_the_service() {
    let (fake, proxy) = proxy_with_server("n1").await;
    let b = echo_backend("b").await;
    fake.configure(
        "1",
        vec![cluster("hello", vec![local(b.addr, false)])],
        vec![route("", "/ghost", "ghost")],
    )
    .await;
    let r = get(proxy.ingress, "hello.service.flotilla", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body, "no healthy instance of service \"hello\"\n");
    // A route to a cluster that does not exist answers the same way.
    let r = get(proxy.ingress, "x", "/ghost").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body, "no healthy instance of service \"ghost\"\n");
}

#[tokio::test]
async fn no_route_is_404() {
    let (fake, proxy) = proxy_with_server("n1").await;
    fake.configure("1", vec![], vec![route("only.example", "/a", "x")])
        .await;
    let r = get(proxy.ingress, "x:8080", "/y").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body, "no route for host \"x\" and path \"/y\"\n");
}

#[tokio::test]
async fn forwarded_and_hop_by_hop_headers() {
    let (fake, proxy) = proxy_with_server("n1").await;
    let b = echo_backend("b").await;
    fake.configure(
        "1",
        vec![cluster("hello", vec![local(b.addr, true)])],
        vec![],
    )
    .await;
    let r = get_with(
        proxy.ingress,
        "hello.service.flotilla:8080",
        "/",
        &[
            ("connection", "x-custom"),
            ("x-custom", "secret"),
            ("x-forwarded-for", "1.2.3.4"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-echo-custom"), "", "x-custom was forwarded");
    assert_eq!(r.header("x-echo-xff"), "1.2.3.4, 127.0.0.1");
    assert_eq!(r.header("x-echo-xfh"), "hello.service.flotilla:8080");
    assert_eq!(r.header("x-echo-xfp"), "http");
    assert_eq!(r.header("x-echo-host"), "hello.service.flotilla:8080");
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let (fake, proxy) = proxy_with_server("n1").await;
    let b = echo_backend("b").await;
    fake.configure(
        "1",
        vec![cluster("hello", vec![local(b.addr, true)])],
        vec![],
    )
    .await;
    let seen = tally(proxy.ingress, "hello.service.flotilla", "/", 10).await;
    assert_eq!(seen.get("b"), Some(&10));
    let conns = b.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(conns < 10, "every request opened a connection ({conns})");
}

#[tokio::test]
async fn connect_failure_tries_next_endpoint_then_502() {
    let (fake, proxy) = proxy_with_server("n1").await;
    let live = echo_backend("live").await;
    let held = flotilla_test_support::dead_addr();
    let dead = held.addr;
    fake.configure(
        "1",
        vec![
            cluster("hello", vec![local(dead, true), local(live.addr, true)]),
            cluster("down", vec![local(dead, true)]),
        ],
        vec![],
    )
    .await;
    let seen = tally(proxy.ingress, "hello.service.flotilla", "/", 4).await;
    assert_eq!(seen.get("live"), Some(&4), "{seen:?}");
    let r = get(proxy.ingress, "down.service.flotilla", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.body.contains("\"down\""), "{}", r.body);
    assert!(r.body.contains(&dead.to_string()), "{}", r.body);
}

#[tokio::test]
async fn invalid_resource_is_nacked_and_old_config_keeps_serving() {
    let (fake, proxy) = proxy_with_server("n1").await;
    let b = echo_backend("old").await;
    fake.configure(
        "1",
        vec![cluster("hello", vec![local(b.addr, true)])],
        vec![],
    )
    .await;
    let mut bad = local(b.addr, true);
    bad.address = "not-an-address".into();
    fake.push(CLUSTER_TYPE, "2", "c-2", vec![cluster("hello", vec![bad])])
        .await;
    let nack = fake.reply_to("c-2").await;
    let detail = nack.error_detail.expect("expected a NACK");
    assert_eq!(
        nack.version_info, "1",
        "NACK must carry the last applied version"
    );
    assert_eq!(nack.type_url, CLUSTER_TYPE);
    assert!(detail.message.contains("\"hello\""), "{}", detail.message);
    assert!(
        detail.message.contains("endpoints[0].address"),
        "{}",
        detail.message
    );
    assert!(
        detail.message.contains("not-an-address"),
        "{}",
        detail.message
    );

    let bad_route = route("", "no-slash", "hello");
    fake.push(ROUTE_TYPE, "2", "r-2", vec![bad_route]).await;
    let nack = fake.reply_to("r-2").await;
    assert!(nack.error_detail.unwrap().message.contains("path_prefix"));

    let r = get(proxy.ingress, "hello.service.flotilla", "/").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "old"));
    assert_eq!(
        proxy.config.load().versions().clusters.as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn new_config_is_swapped_in() {
    let (fake, proxy) = proxy_with_server("n1").await;
    let (a, b) = (echo_backend("a").await, echo_backend("b").await);
    fake.configure(
        "1",
        vec![cluster("hello", vec![local(a.addr, true)])],
        vec![],
    )
    .await;
    assert_eq!(
        get(proxy.ingress, "hello.service.flotilla", "/").await.body,
        "a"
    );
    fake.push(
        CLUSTER_TYPE,
        "2",
        "c-2",
        vec![cluster("hello", vec![local(b.addr, true)])],
    )
    .await;
    assert_eq!(fake.reply_to("c-2").await.error_detail, None);
    assert_eq!(
        get(proxy.ingress, "hello.service.flotilla", "/").await.body,
        "b"
    );
}

#[tokio::test]
async fn reconnects_after_stream_error_and_keeps_serving() {
    let (fake, proxy) = proxy_with_server("n1").await;
    let b = echo_backend("b").await;
    fake.configure(
        "7",
        vec![cluster("hello", vec![local(b.addr, true)])],
        vec![],
    )
    .await;
    fake.fail_stream().await;
    // The proxy comes back with one request per type, carrying what it has applied.
    let mut types = Vec::new();
    for _ in ALL_TYPES {
        let r = fake.next_request().await;
        assert_eq!(r.response_nonce, "");
        assert_eq!(r.version_info, "7");
        assert_eq!(r.node_id, "n1");
        types.push(r.type_url);
    }
    types.sort();
    let mut want = ALL_TYPES.to_vec();
    want.sort();
    assert_eq!(types, want);
    assert_eq!(fake.streams_opened(), 2);
    let r = get(proxy.ingress, "hello.service.flotilla", "/").await;
    assert_eq!(r.body, "b");
    fake.configure(
        "8",
        vec![cluster("hello", vec![local(b.addr, true)])],
        vec![],
    )
    .await;
}

#[tokio::test]
async fn remote_endpoint_goes_through_peer_inbound() {
    init_tracing();
    let backend = echo_backend("on-b").await;
    let ca = TestCa::new();
    let (fake_a, fake_b) = (
        FakeDiscovery::start_with_ca(ca.clone()).await,
        FakeDiscovery::start_with_ca(ca).await,
    );
    let a = TestProxy::start("a", fake_a.url()).await;
    let b = TestProxy::start("b", fake_b.url()).await;
    fake_b
        .configure(
            "1",
            vec![cluster("hello", vec![local(backend.addr, true)])],
            vec![],
        )
        .await;
    fake_a
        .configure(
            "1",
            vec![cluster("hello", vec![remote(backend.addr, b.inbound)])],
            vec![route("", "/", "hello")],
        )
        .await;
    // A carries ingress traffic as its ingress identity; B answers as `hello`.
    a.wait_for_certs(&["ingress-gateway"]).await;
    b.wait_for_certs(&["hello", "ingress-gateway"]).await;
    for _ in 0..3 {
        let r = get(a.ingress, "example.com", "/via-b").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "on-b"));
        assert_eq!(r.header("x-echo-path"), "/via-b");
    }
    // Over mTLS: a tunnel per forwarding worker at most (each has its own pool; the second
    // may resume the first's TLS session), then pooled connections are reused.
    let workers = flotilla_proxy::workers::default_count().get() as u64;
    let handshakes = a.stat("tls_handshakes_full").await;
    let tunnels = b.stat("inbound_tunnels").await;
    assert!(
        handshakes >= 1 && handshakes <= tunnels && tunnels <= workers,
        "{handshakes} full handshakes, {tunnels} tunnels, {workers} workers"
    );
    assert_eq!(a.stat("tls_handshakes_failed").await, 0);
}

#[tokio::test]
async fn ingress_to_remote_endpoint_is_denied_by_the_peers_intentions() {
    init_tracing();
    let backend = echo_backend("on-b").await;
    let ca = TestCa::new();
    let (fake_a, fake_b) = (
        FakeDiscovery::start_with_ca(ca.clone()).await,
        FakeDiscovery::start_with_ca(ca).await,
    );
    let a = TestProxy::start("a", fake_a.url()).await;
    let b = TestProxy::start("b", fake_b.url()).await;
    // B (the destination's node) denies the ingress identity; A allows it.
    fake_b
        .configure_mesh(
            "1",
            Mesh {
                clusters: vec![cluster("hello", vec![local(backend.addr, true)])],
                authorization: Some(intentions("allow", &[("ingress-gateway", "hello", "deny")])),
                ..Mesh::default()
            },
        )
        .await;
    fake_a
        .configure(
            "1",
            vec![cluster("hello", vec![remote(backend.addr, b.inbound)])],
            vec![route("", "/", "hello")],
        )
        .await;
    a.wait_for_certs(&["ingress-gateway"]).await;
    b.wait_for_certs(&["hello"]).await;
    let r = get(a.ingress, "example.com", "/").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.body.contains("ingress-gateway => hello"), "{}", r.body);
    assert_eq!(b.stat("inbound_denied").await, 1);
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn remote_endpoint_without_identity_is_not_reached() {
    // Without an identity to check, the peer proxy cannot be authenticated: never connect.
    let (fake, proxy) = proxy_with_server("a").await;
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let behind: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut resource = cluster("hello", vec![remote(behind, peer.local_addr().unwrap())]);
    if let Some(Kind::Cluster(c)) = &mut resource.kind {
        c.endpoints[0].identity.clear();
    }
    fake.configure("1", vec![resource], vec![route("", "/", "hello")])
        .await;
    proxy.wait_for_certs(&["ingress-gateway"]).await;
    let r = get(proxy.ingress, "example.com", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert!(r.body.contains("has no identity to verify"), "{}", r.body);
    let dump = proxy.config_dump().await;
    assert_eq!(
        dump["clusters"][0]["endpoints"][0]["identity"],
        serde_json::Value::Null
    );
    // Nothing even opened a TCP connection to the peer.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), peer.accept())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn inbound_refuses_plaintext() {
    let (fake, proxy) = proxy_with_server("n1").await;
    let backend = echo_backend("b").await;
    fake.configure(
        "1",
        vec![cluster("hello", vec![local(backend.addr, true)])],
        vec![],
    )
    .await;
    proxy.wait_for_certs(&["hello"]).await;
    // A plaintext CONNECT (what the inbound listener used to take) is not TLS: refused.
    let tcp = TcpStream::connect(proxy.inbound).await.unwrap();
    match within("a CONNECT answer", open_tunnel(tcp, backend.addr)).await {
        Err(TunnelError::Http(_)) => {}
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a plaintext tunnel was allowed"),
    }
    proxy.wait_stat("inbound_handshakes_failed", 1).await;
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn bind_in_use_names_listener_and_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let free = SocketAddr::from(([127, 0, 0, 1], 0));
    let err = BoundProxy::bind(ProxyConfig {
        ingress_addr: addr,
        inbound_addr: free,
        admin_addr: None,
    })
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("ingress listener {addr}: address already in use")
    );
    let err = BoundProxy::bind(ProxyConfig {
        ingress_addr: free,
        inbound_addr: addr,
        admin_addr: None,
    })
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("inbound listener {addr}: address already in use")
    );
    let err = BoundProxy::bind(ProxyConfig {
        ingress_addr: free,
        inbound_addr: free,
        admin_addr: Some(addr),
    })
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("admin listener {addr}: address already in use")
    );
}

#[tokio::test]
async fn invalid_server_url_fails_run() {
    let free = SocketAddr::from(([127, 0, 0, 1], 0));
    let bound = BoundProxy::bind(ProxyConfig {
        ingress_addr: free,
        inbound_addr: free,
        admin_addr: None,
    })
    .await
    .unwrap();
    let err = bound
        .run(
            NodeIdentity {
                node_id: "n".into(),
                node_secret: "s".into(),
                datacenter: "dc1".into(),
            },
            Some("127.0.0.1:4647".into()),
            async {},
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:4647"), "{err}");
}

#[tokio::test]
async fn admin_ready_and_config_dump() {
    let (fake, proxy) = proxy_with_server("n1").await;
    let admin = proxy.admin.unwrap();
    let r = get(admin, "localhost", "/ready").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.body,
        "not ready: waiting for Cluster, Route, Listener, TrustBundle, Authorization\n"
    );
    let b = echo_backend("b").await;
    fake.configure(
        "3",
        vec![cluster("hello", vec![local(b.addr, true)])],
        vec![route("api.example", "/v1", "hello")],
    )
    .await;
    let r = get(admin, "localhost", "/ready").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(admin, "localhost", "/config_dump").await;
    assert_eq!(r.status, StatusCode::OK);
    let dump: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(dump["versions"]["clusters"], "3");
    assert_eq!(dump["versions"]["routes"], "3");
    assert_eq!(dump["clusters"][0]["name"], "hello");
    assert_eq!(
        dump["clusters"][0]["endpoints"][0]["address"],
        b.addr.to_string()
    );
    assert_eq!(
        dump["clusters"][0]["endpoints"][0]["identity"],
        spiffe("hello")
    );
    assert_eq!(dump["routes"][0]["path_prefix"], "/v1");
    assert_eq!(dump["versions"]["listeners"], "3");
    assert_eq!(dump["versions"]["trust"], "3");
    assert_eq!(dump["versions"]["authorization"], "3");
    assert_eq!(dump["trust"]["trust_domain"], TRUST_DOMAIN);
    assert_eq!(dump["trust"]["active_root_id"], fake.ca.active_root_id());
    assert_eq!(dump["authorization"]["default_action"], "allow");
    // Certificates appear once issued (for `hello`, local here, and the ingress identity),
    // without their keys.
    proxy.wait_for_certs(&["hello", "ingress-gateway"]).await;
    let r = get(admin, "localhost", "/config_dump").await;
    assert!(!r.body.contains("PRIVATE KEY"), "{}", r.body);
    let dump: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(dump["certificates"].as_array().unwrap().len(), 2);
    for cert in dump["certificates"].as_array().unwrap() {
        assert_eq!(cert["private_key"], "[redacted]");
        assert_eq!(cert["root_id"], fake.ca.active_root_id());
        assert!(
            cert["not_after"].as_i64() > cert["renew_at"].as_i64(),
            "{cert}"
        );
    }
}

#[tokio::test]
async fn config_can_be_applied_without_a_server() {
    init_tracing();
    // Nothing listens at this URL: the discovery client keeps retrying in the background.
    let dead = flotilla_test_support::dead_addr();
    let server = format!("http://{}", dead.addr);
    let proxy = TestProxy::start("n1", server).await;
    let b = echo_backend("direct").await;
    let clusters = vec![flotilla_proxy::config::Cluster::new(
        "hello",
        vec![flotilla_proxy::config::Endpoint {
            address: b.addr,
            node_id: "n1".into(),
            local: true,
            proxy_addr: None,
            healthy: true,
            alloc_id: String::new(),
            identity: None,
            weight: 1,
        }],
    )];
    proxy.config.apply_clusters("t1", clusters);
    // Nothing applied yet denies (fail closed); allow the ingress.
    let r = get(proxy.ingress, "hello.service.flotilla", "/").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    proxy.config.apply_authorization(
        "t1",
        flotilla_proxy::config::Authorization::new(
            flotilla_proxy::config::Action::Allow,
            Vec::new(),
        ),
    );
    let r = get(proxy.ingress, "hello.service.flotilla", "/").await;
    assert_eq!(r.body, "direct");
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_request() {
    let (fake, mut proxy) = proxy_with_server("n1").await;
    let mut slow = slow_cluster(&fake).await;
    let ingress = proxy.ingress;
    let in_flight = tokio::spawn(async move { get(ingress, "slow.service.flotilla", "/").await });
    within("the backend to get the request", slow.started.recv()).await;

    let run = proxy.shutdown();
    // New connections are refused once the listener is closed...
    eventually("the ingress listener to close", || async {
        TcpStream::connect(ingress).await.is_err().then_some(())
    })
    .await;
    assert!(
        !run.is_finished(),
        "run returned while a request was in flight"
    );
    // ...while the request in flight still completes.
    slow.release.send_replace(true);
    let r = within("the in-flight reply", in_flight).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "slow-done"));
    within("run to return", run).await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_forces_after_grace_period() {
    init_tracing();
    let fake = FakeDiscovery::start().await;
    let mut proxy = TestProxy::start_with("n1", fake.url(), Duration::from_millis(200)).await;
    let mut slow = slow_cluster(&fake).await;
    let ingress = proxy.ingress;
    let in_flight = tokio::spawn(async move {
        let req = http::Request::get("/")
            .header("host", "slow.service.flotilla")
            .body(http_body_util::Empty::new())
            .unwrap();
        send(ingress, req).await
    });
    within("the backend to get the request", slow.started.recv()).await;
    let run = proxy.shutdown();
    within("run to return after the grace period", run)
        .await
        .unwrap()
        .unwrap();
    // The request never finished: its connection was dropped.
    assert!(
        within("the client to see the close", in_flight)
            .await
            .unwrap()
            .is_err()
    );
}
