//! Mesh mTLS at the proxy level, over real sockets and real TLS: the inbound listener's
//! refusals seen from raw TLS clients, upstream listeners (local splice, remote mTLS with
//! resumption), the client side's check of the peer's identity, intention pushes, and a CA root
//! rotation under load. The fake control plane signs with a real `flotilla-ca` test CA.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

const PING: &[u8] = b"ping through the mesh";

fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until the upstream listener at `addr` accepts and a round trip through it succeeds.
async fn wait_roundtrip(addr: SocketAddr) {
    eventually(&format!("a round trip through {addr}"), || async {
        roundtrip(addr, PING).await.ok()
    })
    .await
}

/// Waits until the upstream listener at `addr` accepts, and expects the proxy to close the
/// connection without an echo. Returns the error seen.
async fn wait_refused(addr: SocketAddr) -> String {
    eventually(&format!("the listener at {addr} to accept"), || async {
        match roundtrip(addr, PING).await {
            Ok(()) => panic!("a connection through {addr} succeeded; expected a refusal"),
            Err(e) if e.starts_with("connect ") => None,
            Err(e) => Some(e),
        }
    })
    .await
}

// ---------------------------------------------------------------- inbound refusals

/// One node running `db` and `cache` instances. Intentions: default deny, allow web → db.
struct Inbound {
    fake: FakeDiscovery,
    proxy: TestProxy,
    db: TcpEcho,
    cache: TcpEcho,
    /// An instance of `db` on another node.
    remote_db: SocketAddr,
}

async fn inbound() -> Inbound {
    let (fake, proxy) = proxy_with_server("n1").await;
    let (db, cache) = (tcp_echo().await, tcp_echo().await);
    let remote_db: SocketAddr = "10.1.2.3:5432".parse().unwrap();
    fake.configure_mesh(
        "1",
        Mesh {
            clusters: vec![
                cluster(
                    "db",
                    vec![
                        local(db.addr, true),
                        remote(remote_db, "10.1.2.3:15008".parse().unwrap()),
                    ],
                ),
                cluster("cache", vec![local(cache.addr, true)]),
            ],
            authorization: Some(intentions("deny", &[("web", "db", "allow")])),
            ..Mesh::default()
        },
    )
    .await;
    proxy.wait_for_certs(&["db", "cache"]).await;
    Inbound {
        fake,
        proxy,
        db,
        cache,
        remote_db,
    }
}

impl Inbound {
    /// Asserts `t` failed in (or right after) the handshake, the proxy counted it, and no
    /// byte reached a workload.
    async fn assert_refused_at_handshake(&self, t: Tunnel, failures_so_far: u64) {
        assert!(
            matches!(t, Tunnel::Handshake(_) | Tunnel::Broken(_)),
            "expected a refused handshake, got {t:?}"
        );
        self.proxy
            .wait_stat("inbound_handshakes_failed", failures_so_far)
            .await;
        assert_eq!(self.proxy.stat("inbound_tunnels").await, 0);
        assert_eq!(self.db.accepted(), 0, "a refused peer reached db");
    }
}

#[tokio::test]
async fn inbound_refuses_a_client_without_a_certificate() {
    let f = inbound().await;
    let t = raw_tunnel(
        raw_client_any_version(None),
        f.proxy.inbound,
        &sni("db"),
        f.db.addr,
    )
    .await;
    f.assert_refused_at_handshake(t, 1).await;
}

#[tokio::test]
async fn inbound_refuses_certificates_of_another_ca() {
    let f = inbound().await;
    // Another trust domain altogether.
    let foreign = TestCa::with_trust_domain("other5678.flotilla").issue("web");
    let t = raw_tunnel(
        raw_client_any_version(Some(&foreign)),
        f.proxy.inbound,
        &sni("db"),
        f.db.addr,
    )
    .await;
    f.assert_refused_at_handshake(t, 1).await;
    // The right trust domain in the SAN, but signed by a root this mesh does not trust.
    let impostor = TestCa::new().issue("web");
    let t = raw_tunnel(
        raw_client_any_version(Some(&impostor)),
        f.proxy.inbound,
        &sni("db"),
        f.db.addr,
    )
    .await;
    f.assert_refused_at_handshake(t, 2).await;
}

#[tokio::test]
async fn inbound_refuses_certificates_of_the_right_ca_without_one_mesh_identity() {
    let f = inbound().await;
    // Each signed by the mesh's own root, which `flotilla-ca` would never do.
    let cases: [&[&str]; 3] = [
        // Another trust domain.
        &["spiffe://other5678.flotilla/ns/default/dc/dc1/svc/web"],
        // Two identities.
        &[&spiffe("web"), &spiffe("db")],
        // Not a SPIFFE ID.
        &["https://web.example"],
    ];
    // Control: the same construction with one proper ID is accepted.
    let web = f.fake.ca.issue_raw(&[&spiffe("web")]);
    match raw_tunnel(
        raw_client_any_version(Some(&web)),
        f.proxy.inbound,
        &sni("db"),
        f.db.addr,
    )
    .await
    {
        Tunnel::Open(mut io, _) => within("an echo", echo_exchange(&mut io, PING))
            .await
            .unwrap(),
        other => panic!("the control certificate was refused: {other:?}"),
    }
    for (n, uris) in cases.iter().enumerate() {
        let id = f.fake.ca.issue_raw(uris);
        let t = raw_tunnel(
            raw_client_any_version(Some(&id)),
            f.proxy.inbound,
            &sni("db"),
            f.db.addr,
        )
        .await;
        assert!(
            matches!(t, Tunnel::Handshake(_) | Tunnel::Broken(_)),
            "{uris:?}: expected a refused handshake, got {t:?}"
        );
        f.proxy
            .wait_stat("inbound_handshakes_failed", n as u64 + 1)
            .await;
    }
    assert_eq!(f.proxy.stat("inbound_tunnels").await, 1);
    assert_eq!(f.db.accepted(), 1, "only the control reached db");
}

#[tokio::test]
async fn inbound_refuses_an_expired_certificate() {
    let f = inbound().await;
    // Signed by the mesh's own root ten minutes ago, valid for one minute.
    let expired = f
        .fake
        .ca
        .issue_at("web", now_secs() - 600, Duration::from_secs(60));
    let t = raw_tunnel(
        raw_client_any_version(Some(&expired)),
        f.proxy.inbound,
        &sni("db"),
        f.db.addr,
    )
    .await;
    f.assert_refused_at_handshake(t, 1).await;
}

#[tokio::test]
async fn inbound_denies_a_valid_identity_without_an_intention() {
    let f = inbound().await;
    let intruder = f.fake.ca.issue("intruder");
    let t = raw_tunnel(
        raw_client_any_version(Some(&intruder)),
        f.proxy.inbound,
        &sni("db"),
        f.db.addr,
    )
    .await;
    match t {
        Tunnel::Refused(status, message) => {
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(message.contains("intruder => db"), "{message}");
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    assert_eq!(f.proxy.stat("inbound_denied").await, 1);
    assert_eq!(f.proxy.stat("inbound_tunnels").await, 0);
    assert_eq!(f.proxy.stat("inbound_handshakes_failed").await, 0);
    assert_eq!(f.db.accepted(), 0, "the denied caller reached db");
}

#[tokio::test]
async fn inbound_tunnels_an_allowed_identity_over_tls13() {
    let f = inbound().await;
    let web = f.fake.ca.issue("web");
    // TLS 1.2 is offered too: the listener must pick 1.3.
    match raw_tunnel(
        raw_client_any_version(Some(&web)),
        f.proxy.inbound,
        &sni("db"),
        f.db.addr,
    )
    .await
    {
        Tunnel::Open(mut io, version) => {
            assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
            within("an echo through the tunnel", echo_exchange(&mut io, PING))
                .await
                .unwrap();
        }
        other => panic!("expected a tunnel, got {other:?}"),
    }
    assert_eq!(f.proxy.stat("inbound_tunnels").await, 1);
    assert_eq!(f.db.accepted(), 1);
}

#[tokio::test]
async fn inbound_refuses_tls12() {
    let f = inbound().await;
    let web = f.fake.ca.issue("web");
    let t = raw_tunnel(
        raw_client(Some(&web), &[&rustls::version::TLS12]),
        f.proxy.inbound,
        &sni("db"),
        f.db.addr,
    )
    .await;
    assert!(matches!(t, Tunnel::Handshake(_)), "{t:?}");
    f.assert_refused_at_handshake(t, 1).await;
}

#[tokio::test]
async fn inbound_refuses_a_server_name_it_holds_no_certificate_for() {
    let f = inbound().await;
    let web = f.fake.ca.issue("web");
    for (n, name) in [sni("ghost"), "localhost".to_string()].iter().enumerate() {
        let t = raw_tunnel(
            raw_client_any_version(Some(&web)),
            f.proxy.inbound,
            name,
            f.db.addr,
        )
        .await;
        assert!(matches!(t, Tunnel::Handshake(_)), "{name}: {t:?}");
        f.assert_refused_at_handshake(t, n as u64 + 1).await;
    }
}

#[tokio::test]
async fn inbound_refuses_targets_that_are_not_local_instances_of_the_server_name() {
    let f = inbound().await;
    let web = f.fake.ca.issue("web");
    let client = raw_client_any_version(Some(&web));
    for target in [
        // A local instance, but of another service than the one named.
        f.cache.addr,
        // An instance of `db`, but on another node.
        f.remote_db,
        // Anything else.
        "127.0.0.1:22".parse().unwrap(),
    ] {
        match raw_tunnel(client.clone(), f.proxy.inbound, &sni("db"), target).await {
            Tunnel::Refused(status, message) => {
                // Misdirected (421), so a caller with an older endpoint list retries elsewhere.
                assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{target}");
                assert!(message.contains(&target.to_string()), "{message}");
                assert!(message.contains("db"), "{message}");
            }
            other => panic!("CONNECT {target}: expected a 421, got {other:?}"),
        }
    }
    assert_eq!(f.cache.accepted(), 0, "a tunnel named for db reached cache");
    assert_eq!(f.proxy.stat("inbound_tunnels").await, 0);
    // A local instance of the named service is allowed on the same terms.
    match raw_tunnel(client, f.proxy.inbound, &sni("db"), f.db.addr).await {
        Tunnel::Open(mut io, _) => within("an echo", echo_exchange(&mut io, PING))
            .await
            .unwrap(),
        other => panic!("expected a tunnel, got {other:?}"),
    }
}

// ---------------------------------------------------------------- upstream listeners

#[tokio::test]
async fn upstream_listener_to_a_local_destination_splices() {
    let (fake, proxy) = proxy_with_server("n1").await;
    let db = tcp_echo().await;
    let port = free_port().await;
    fake.configure_mesh(
        "1",
        Mesh {
            clusters: vec![cluster("db", vec![local(db.addr, true)])],
            listeners: vec![listener("web", "db", port)],
            authorization: Some(intentions("deny", &[("web", "db", "allow")])),
            ..Mesh::default()
        },
    )
    .await;
    wait_roundtrip(lo(port)).await;
    roundtrip(lo(port), PING).await.unwrap();
    proxy.wait_stat("forwarded_splice", 2).await;
    assert_eq!(proxy.stat("outbound_connections").await, 2);
    assert_eq!(db.accepted(), 2);
    // Both legs are on this node: no TLS.
    assert_eq!(proxy.stat("tls_handshakes_full").await, 0);
    let dump = proxy.config_dump().await;
    assert_eq!(dump["listeners"][0]["bind"], lo(port).to_string());
    assert_eq!(dump["listeners"][0]["source_service"], "web");
}

/// Two nodes: `web` runs on A (upstream listener to `db`), `db` on B. Intentions on both:
/// default deny, allow web → db.
struct TwoNodes {
    ca: TestCa,
    fake_a: FakeDiscovery,
    fake_b: FakeDiscovery,
    a: TestProxy,
    b: TestProxy,
    db: TcpEcho,
}

async fn two_nodes() -> TwoNodes {
    init_tracing();
    let ca = TestCa::new();
    let (fake_a, fake_b) = (
        FakeDiscovery::start_with_ca(ca.clone()).await,
        FakeDiscovery::start_with_ca(ca.clone()).await,
    );
    let a = TestProxy::start("a", fake_a.url()).await;
    let b = TestProxy::start("b", fake_b.url()).await;
    let db = tcp_echo().await;
    TwoNodes {
        ca,
        fake_a,
        fake_b,
        a,
        b,
        db,
    }
}

#[tokio::test]
async fn upstream_listener_to_a_remote_destination_uses_mtls_and_resumes() {
    let n = two_nodes().await;
    let port = free_port().await;
    let authz = || Some(intentions("deny", &[("web", "db", "allow")]));
    n.fake_b
        .configure_mesh(
            "1",
            Mesh {
                clusters: vec![cluster("db", vec![local(n.db.addr, true)])],
                authorization: authz(),
                ..Mesh::default()
            },
        )
        .await;
    n.fake_a
        .configure_mesh(
            "1",
            Mesh {
                clusters: vec![cluster("db", vec![remote(n.db.addr, n.b.inbound)])],
                listeners: vec![listener("web", "db", port)],
                authorization: authz(),
                ..Mesh::default()
            },
        )
        .await;
    // Every certificate each node wants: installing one starts a new TLS generation, and
    // sessions do not resume across generations.
    n.a.wait_for_certs(&["web", "ingress-gateway"]).await;
    n.b.wait_for_certs(&["db", "ingress-gateway"]).await;

    wait_roundtrip(lo(port)).await;
    assert_eq!(n.a.stat("tls_handshakes_full").await, 1);
    assert_eq!(n.a.stat("tls_handshakes_resumed").await, 0);
    n.b.wait_stat("inbound_tunnels", 1).await;

    // The second and third connections resume the first one's session.
    roundtrip(lo(port), PING).await.unwrap();
    roundtrip(lo(port), PING).await.unwrap();
    assert_eq!(n.a.stat("tls_handshakes_full").await, 1);
    assert_eq!(n.a.stat("tls_handshakes_resumed").await, 2);
    assert_eq!(n.a.stat("tls_handshakes_failed").await, 0);
    n.b.wait_stat("inbound_tunnels", 3).await;
    assert_eq!(n.b.stat("inbound_handshakes_failed").await, 0);
    assert_eq!(n.db.accepted(), 3);
    // The TLS leg is a buffered copy on both sides.
    n.a.wait_stat("forwarded_copy", 3).await;
    assert_eq!(n.a.stat("forwarded_splice").await, 0);
}

#[tokio::test]
async fn upstream_listener_replaced_on_the_same_port_rebinds_at_once() {
    // E.g. a new allocation on this node takes over the previous one's `local_bind_port`: the
    // old listener is removed and the new one bound on the same address in one update.
    let (fake, proxy) = proxy_with_server("n1").await;
    let (db, cache) = (tcp_echo().await, tcp_echo().await);
    let port = free_port().await;
    let clusters = || {
        vec![
            cluster("db", vec![local(db.addr, true)]),
            cluster("cache", vec![local(cache.addr, true)]),
        ]
    };
    fake.configure_mesh(
        "1",
        Mesh {
            clusters: clusters(),
            listeners: vec![listener("web", "db", port)],
            ..Mesh::default()
        },
    )
    .await;
    wait_roundtrip(lo(port)).await;
    for (version, destination) in [(2, "cache"), (3, "db"), (4, "cache")] {
        let echo = if destination == "db" { &db } else { &cache };
        let before = echo.accepted();
        let start = Instant::now();
        fake.push_ok(
            flotilla_proto::discovery::v1::LISTENER_TYPE,
            &version.to_string(),
            vec![listener("web", destination, port)],
        )
        .await;
        eventually(&format!("connections to reach {destination}"), || async {
            (roundtrip(lo(port), PING).await.is_ok() && echo.accepted() > before).then_some(())
        })
        .await;
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "the listener for {destination} took {took:?} to take over port {port}"
        );
    }
    assert_eq!(
        proxy.config_dump().await["listeners"][0]["destination"],
        "cache"
    );
}

// ---------------------------------------------------------------- server identity

#[tokio::test]
async fn client_refuses_a_peer_proxy_without_the_destinations_certificate() {
    // B only runs `other`, so it holds no certificate for `db`; A was told (wrongly) that the
    // instance behind B is `db`.
    let n = two_nodes().await;
    let port = free_port().await;
    n.fake_b
        .configure(
            "1",
            vec![cluster("other", vec![local(n.db.addr, true)])],
            vec![],
        )
        .await;
    n.fake_a
        .configure_mesh(
            "1",
            Mesh {
                clusters: vec![cluster("db", vec![remote(n.db.addr, n.b.inbound)])],
                listeners: vec![listener("web", "db", port)],
                ..Mesh::default()
            },
        )
        .await;
    n.a.wait_for_certs(&["web"]).await;
    n.b.wait_for_certs(&["other"]).await;
    let error = wait_refused(lo(port)).await;
    assert!(error.starts_with("read"), "{error}");
    n.a.wait_stat("tls_handshakes_failed", 1).await;
    n.b.wait_stat("inbound_handshakes_failed", 1).await;
    assert_eq!(n.a.stat("outbound_failed").await, 1);
    assert_eq!(n.b.stat("inbound_tunnels").await, 0);
    assert_eq!(n.db.accepted(), 0);
}

#[tokio::test]
async fn client_refuses_a_peer_presenting_another_services_certificate() {
    let (fake, proxy) = proxy_with_server("a").await;
    // Peers presenting a valid mesh certificate whatever the server name: `other`'s (while
    // A expects `db` there), and `api`'s (A expects `api`: the control case).
    let wrong = fake_peer(fake.ca.issue("other")).await;
    let right = fake_peer(fake.ca.issue("api")).await;
    // The expected identity, but from a CA this mesh does not trust.
    let untrusted = fake_peer(TestCa::new().issue("cache")).await;
    let cache_port = free_port().await;
    let (db_port, api_port) = (free_port().await, free_port().await);
    let behind: SocketAddr = "127.0.0.1:9".parse().unwrap();
    fake.configure_mesh(
        "1",
        Mesh {
            clusters: vec![
                cluster("db", vec![remote(behind, wrong.addr)]),
                cluster("api", vec![remote(behind, right.addr)]),
                cluster("cache", vec![remote(behind, untrusted.addr)]),
            ],
            routes: vec![route("", "/", "db")],
            listeners: vec![
                listener("web", "db", db_port),
                listener("web", "api", api_port),
                listener("web", "cache", cache_port),
            ],
            ..Mesh::default()
        },
    )
    .await;
    proxy.wait_for_certs(&["web", "ingress-gateway"]).await;

    // The control: same proxy, same source, a peer with the expected identity.
    wait_roundtrip(lo(api_port)).await;
    assert_eq!(right.connects.load(Ordering::SeqCst), 1);
    assert_eq!(proxy.stat("tls_handshakes_failed").await, 0);

    // Upstream listener: the handshake fails on A's side, nothing is sent to the peer.
    wait_refused(lo(db_port)).await;
    proxy.wait_stat("tls_handshakes_failed", 1).await;
    assert_eq!(proxy.stat("outbound_failed").await, 1);

    // Ingress (as `ingress-gateway`): 502 naming both identities.
    let r = get(proxy.ingress, "example.com", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert!(r.body.contains(&spiffe("db")), "{}", r.body);
    assert!(r.body.contains(&spiffe("other")), "{}", r.body);
    proxy.wait_stat("tls_handshakes_failed", 2).await;

    // A peer whose certificate does not chain to the bundle is refused too.
    wait_refused(lo(cache_port)).await;
    proxy.wait_stat("tls_handshakes_failed", 3).await;
    assert_eq!(proxy.stat("outbound_failed").await, 2);

    for peer in [&wrong, &untrusted] {
        assert_eq!(peer.handshakes.load(Ordering::SeqCst), 0);
        assert_eq!(peer.connects.load(Ordering::SeqCst), 0);
    }
}

// ---------------------------------------------------------------- intentions

#[tokio::test]
async fn intention_changes_apply_to_new_connections_within_2s() {
    let n = two_nodes().await;
    let cache = tcp_echo().await;
    let (db_port, cache_port) = (free_port().await, free_port().await);
    let allow = || intentions("deny", &[("web", "db", "allow"), ("web", "cache", "allow")]);
    let deny = || intentions("allow", &[("web", "db", "deny"), ("web", "cache", "deny")]);
    n.fake_b
        .configure_mesh(
            "1",
            Mesh {
                clusters: vec![cluster("db", vec![local(n.db.addr, true)])],
                authorization: Some(allow()),
                ..Mesh::default()
            },
        )
        .await;
    // A: `db` is remote (B checks the intention), `cache` is local (A checks it).
    n.fake_a
        .configure_mesh(
            "1",
            Mesh {
                clusters: vec![
                    cluster("db", vec![remote(n.db.addr, n.b.inbound)]),
                    cluster("cache", vec![local(cache.addr, true)]),
                ],
                listeners: vec![
                    listener("web", "db", db_port),
                    listener("web", "cache", cache_port),
                ],
                authorization: Some(allow()),
                ..Mesh::default()
            },
        )
        .await;
    n.a.wait_for_certs(&["web", "ingress-gateway"]).await;
    n.b.wait_for_certs(&["db", "ingress-gateway"]).await;
    wait_roundtrip(lo(db_port)).await;
    wait_roundtrip(lo(cache_port)).await;
    let (db_before, cache_before) = (n.db.accepted(), cache.accepted());

    // Deny: pushed to both nodes, as the server does.
    let start = Instant::now();
    n.fake_b.push_authorization("2", deny()).await;
    n.fake_a.push_authorization("2", deny()).await;
    for port in [db_port, cache_port] {
        eventually("a new connection to be refused", || async {
            roundtrip(lo(port), PING).await.err()
        })
        .await;
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "denial took {took:?}");
    n.b.wait_stat("inbound_denied", 1).await;
    n.a.wait_stat("outbound_denied", 2).await;
    assert_eq!(n.db.accepted(), db_before, "a denied connection reached db");
    assert_eq!(
        cache.accepted(),
        cache_before,
        "a denied connection reached cache"
    );

    // Allow again.
    let start = Instant::now();
    n.fake_b.push_authorization("3", allow()).await;
    n.fake_a.push_authorization("3", allow()).await;
    for port in [db_port, cache_port] {
        eventually("a new connection to succeed", || async {
            roundtrip(lo(port), PING).await.ok()
        })
        .await;
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "re-allowing took {took:?}");
}

// ---------------------------------------------------------------- rotation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotation_reissues_certificates_without_dropping_connections() {
    let n = two_nodes().await;
    // `web` carries the steady load; s1..s4 are each first used at one stage of the rotation,
    // so that stage certainly sees a full handshake (checked) with its certificates and
    // bundles, whatever the proxies do about resumption.
    let sources = ["web", "s1", "s2", "s3", "s4"];
    let mut ports = Vec::new();
    for _ in sources {
        ports.push(free_port().await);
    }
    let port_of = |s: &str| lo(ports[sources.iter().position(|x| *x == s).unwrap()]);
    n.fake_b
        .configure(
            "1",
            vec![cluster("db", vec![local(n.db.addr, true)])],
            vec![],
        )
        .await;
    n.fake_a
        .configure_mesh(
            "1",
            Mesh {
                clusters: vec![cluster("db", vec![remote(n.db.addr, n.b.inbound)])],
                listeners: sources
                    .iter()
                    .map(|s| listener(s, "db", port_of(s).port()))
                    .collect(),
                ..Mesh::default()
            },
        )
        .await;
    let old = n.ca.active_root_id();
    n.a.wait_for_certs(&sources).await;
    n.a.wait_for_certs(&["ingress-gateway"]).await;
    n.b.wait_for_certs(&["db", "ingress-gateway"]).await;
    wait_roundtrip(port_of("web")).await;

    // The load: connections through `web`'s listener, one after the other, until stopped.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let done = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let (done, web) = (done.clone(), port_of("web"));
        async move {
            let mut failures = Vec::new();
            while !*stop_rx.borrow() {
                if let Err(e) = roundtrip(web, PING).await {
                    failures.push(e);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }
    });
    let progress = |what: &'static str| {
        let done = done.clone();
        async move {
            let from = done.load(Ordering::SeqCst);
            eventually(what, || async {
                (done.load(Ordering::SeqCst) >= from + 5).then_some(())
            })
            .await
        }
    };
    progress("connections before the rotation").await;

    // A full handshake through `source`'s listener; checks it was one.
    let fresh = |source: &'static str| {
        let (a, addr) = (&n.a, port_of(source));
        async move {
            let before = a.stat("tls_handshakes_full").await;
            roundtrip(addr, PING)
                .await
                .unwrap_or_else(|e| panic!("{source}: {e}"));
            assert!(a.stat("tls_handshakes_full").await > before, "{source}");
        }
    };

    // Rotation 1, A first: A's new leaves reach B, which trusts only the old root, through the
    // cross-signed intermediate.
    let r1 = n.ca.rotate();
    n.fake_a.push_trust("2").await;
    let certs = n.a.wait_for_root(&r1).await;
    assert_eq!(certs.len(), sources.len() + 1, "{certs:?}");
    assert_eq!(n.b.config_dump().await["trust"]["roots"], 1);
    fresh("s1").await;
    progress("connections with A rotated").await;
    n.fake_b.push_trust("2").await;
    n.b.wait_for_root(&r1).await;
    fresh("s2").await;
    progress("connections with both rotated once").await;

    // Rotation 2, B first: B's new leaf reaches A, which does not trust the newest root yet.
    let r2 = n.ca.rotate();
    n.fake_b.push_trust("3").await;
    n.b.wait_for_root(&r2).await;
    assert_eq!(n.a.config_dump().await["trust"]["roots"], 2);
    fresh("s3").await;
    progress("connections with B rotated twice").await;
    n.fake_a.push_trust("3").await;
    n.a.wait_for_root(&r2).await;
    fresh("s4").await;
    progress("connections after the rotations").await;

    stop_tx.send_replace(true);
    let failures = within("the load to stop", load).await.unwrap();
    let total = done.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {total} connections failed during the rotation: {failures:?}",
        failures.len()
    );
    assert!(total >= 30, "only {total} connections");

    let dump = n.a.config_dump().await;
    assert_eq!(dump["trust"]["active_root_id"], r2.as_str());
    assert_eq!(dump["trust"]["roots"], 3);
    assert_eq!(n.ca.root_ids(), [r2.clone(), r1.clone(), old.clone()]);
    // Every certificate was signed three times: by the old root, then r1, then r2.
    for node in ["a", "b"] {
        let signed: Vec<Signed> =
            n.ca.signed()
                .into_iter()
                .filter(|s| s.node_id == node)
                .collect();
        for root in [&old, &r1, &r2] {
            assert!(
                signed.iter().any(|s| &s.root_id == root),
                "{node}: nothing signed by {root}"
            );
        }
    }
    assert_eq!(n.a.stat("tls_handshakes_failed").await, 0);
    assert_eq!(n.b.stat("inbound_handshakes_failed").await, 0);
}

#[tokio::test]
async fn service_names_with_capitals_work_across_nodes() {
    // Service names are DNS labels, which may contain capitals; TLS server names are
    // case-insensitive (rustls hands the server the SNI lower-cased).
    let n = two_nodes().await;
    let port = free_port().await;
    let authz = || Some(intentions("deny", &[("Web", "Db", "allow")]));
    n.fake_b
        .configure_mesh(
            "1",
            Mesh {
                clusters: vec![cluster("Db", vec![local(n.db.addr, true)])],
                authorization: authz(),
                ..Mesh::default()
            },
        )
        .await;
    n.fake_a
        .configure_mesh(
            "1",
            Mesh {
                clusters: vec![cluster("Db", vec![remote(n.db.addr, n.b.inbound)])],
                listeners: vec![listener("Web", "Db", port)],
                authorization: authz(),
                ..Mesh::default()
            },
        )
        .await;
    n.a.wait_for_certs(&["Web"]).await;
    n.b.wait_for_certs(&["Db"]).await;
    wait_roundtrip(lo(port)).await;
    assert_eq!(n.b.stat("inbound_tunnels").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_before_they_expire() {
    let n = two_nodes().await;
    // 4 s leaves (5 s with the backdating): renewed about every 2.5 s.
    n.ca.set_leaf_ttl(Duration::from_secs(4));
    let (web_port, late_port) = (free_port().await, free_port().await);
    n.fake_b
        .configure(
            "1",
            vec![cluster("db", vec![local(n.db.addr, true)])],
            vec![],
        )
        .await;
    n.fake_a
        .configure_mesh(
            "1",
            Mesh {
                clusters: vec![cluster("db", vec![remote(n.db.addr, n.b.inbound)])],
                listeners: vec![
                    listener("web", "db", web_port),
                    listener("late", "db", late_port),
                ],
                ..Mesh::default()
            },
        )
        .await;
    n.a.wait_for_certs(&["web", "late", "ingress-gateway"])
        .await;
    n.b.wait_for_certs(&["db", "ingress-gateway"]).await;
    wait_roundtrip(lo(web_port)).await;
    let first_expiry = n.ca.signed().iter().map(|s| s.not_after).max().unwrap();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(async move {
        let (mut ok, mut failures) = (0, Vec::new());
        while !*stop_rx.borrow() {
            match roundtrip(lo(web_port), PING).await {
                Ok(()) => ok += 1,
                Err(e) => failures.push(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, failures)
    });
    // Every certificate that was installed first has expired, and was renewed twice.
    let renewals = |node: &'static str, service: &'static str| {
        let ca = n.ca.clone();
        move || {
            ca.signed()
                .iter()
                .filter(|s| s.node_id == node && s.spiffe_id == spiffe(service))
                .count()
        }
    };
    let (db_signed, late_signed) = (renewals("b", "db"), renewals("a", "late"));
    within("the first certificates to expire", async {
        while now_secs() <= first_expiry || db_signed() < 3 || late_signed() < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // A full handshake now needs the renewed certificates on both sides.
    let before = n.a.stat("tls_handshakes_full").await;
    roundtrip(lo(late_port), PING).await.unwrap();
    assert!(n.a.stat("tls_handshakes_full").await > before);
    for proxy in [&n.a, &n.b] {
        let dump = proxy.config_dump().await;
        for cert in dump["certificates"].as_array().unwrap() {
            assert!(cert["not_after"].as_i64().unwrap() > first_expiry, "{cert}");
        }
    }

    stop_tx.send_replace(true);
    let (ok, failures) = within("the load to stop", load).await.unwrap();
    assert!(failures.is_empty(), "{failures:?} ({ok} succeeded)");
    assert!(ok >= 20, "only {ok} connections");
}
