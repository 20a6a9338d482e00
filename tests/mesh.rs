//! The mesh through the real binary: a server and two agents as separate processes on their own
//! loopback addresses.
//!
//! - App "web" on node 1 calls its localhost upstream (`NOMAD_UPSTREAM_ADDR_db`) and reaches
//!   "db" on node 2; what crosses between the nodes is TLS 1.3 with SPIFFE identities.
//! - The inbound port refuses a client without a certificate, with one from another trust
//!   domain, with an expired one, and with another service's identity.
//! - A deny intention blocks new connections within 2 s; deleting it restores them.
//! - Leaf certificates of 60 s rotate three times, and the root rotates, under a steady stream
//!   of connections with no failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_test_support::{Cluster, eventually, get, get_json};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
const TRUST_DOMAIN: &str = "mesh.test";
const UPSTREAM_PORT: u16 = 25_432;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// db on node-2, web on node-1 with an upstream to db; web has an ingress route.
fn jobs(c: &Cluster, port: u16) -> (String, String) {
    let app = |name: &str, node: &str, service: &str, extra: &str| {
        format!(
            r#"job "{name}" {{
  group "g" {{
    constraint {{
      attribute = "${{node.unique.name}}"
      value     = "{node}"
    }}
    network {{
      port "http" {{}}
    }}
    service {{
      name = "{service}"
      port = "http"
      {extra}
      check {{
        type     = "http"
        path     = "/health"
        interval = "1s"
        timeout  = "1s"
      }}
    }}
    task "app" {{
      driver = "raw_exec"
      config {{
        command = "{bin}"
        args    = ["demo-app", "--listen", "${{NOMAD_ADDR_http}}", "--node", "${{node.unique.name}}"]
      }}
      resources {{
        cpu    = 50
        memory = 32
      }}
    }}
  }}
}}
"#,
            bin = BIN
        )
    };
    let db = c.jobspec("db.hcl", &app("db", "node-2", "db", ""));
    let web = c.jobspec(
        "web.hcl",
        &app(
            "web",
            "node-1",
            "web",
            &format!(
                r#"tags = ["urlprefix-/"]
      connect {{
        sidecar_service {{
          proxy {{
            upstreams {{
              destination_name = "db"
              local_bind_port  = {port}
            }}
          }}
        }}
      }}"#
            ),
        ),
    );
    (db, web)
}

fn run_job(c: &Cluster, file: &str) {
    let out = c.cli(&["job", "run", file]);
    assert_eq!(
        out.code,
        0,
        "job run {file}:\n{}\n{}\n{}",
        out.stdout,
        out.stderr,
        c.logs()
    );
}

/// GET web's `/upstream/db/` through node-1's ingress: web calls db through its localhost
/// upstream. `Ok(body)` on 200.
async fn call_db(c: &Cluster) -> Result<String, String> {
    match get(&format!("{}/upstream/db/x", c.ingress(1))).await {
        Some((200, body)) => Ok(body),
        Some((status, body)) => Err(format!("{status}: {body}")),
        None => Err("no answer".into()),
    }
}

struct TestCa {
    root: flotilla_ca::CaRoot,
    dir: tempfile::TempDir,
}

impl TestCa {
    fn new() -> Self {
        // Valid from three hours ago, so the test can make a leaf that has already expired.
        let root =
            flotilla_ca::generate_root(TRUST_DOMAIN, now() - 3 * 3600, Duration::from_secs(86400))
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("root.pem"), &root.root_cert).unwrap();
        std::fs::write(dir.path().join("root.key"), &root.private_key).unwrap();
        TestCa { root, dir }
    }

    fn flags(&self) -> Vec<String> {
        vec![
            "--trust-domain".into(),
            TRUST_DOMAIN.into(),
            "--ca-cert".into(),
            self.dir.path().join("root.pem").display().to_string(),
            "--ca-key".into(),
            self.dir.path().join("root.key").display().to_string(),
        ]
    }
}

/// A client key and certificate for `spiffe_id`, signed by `root`, valid from `at` for `ttl`.
fn leaf(
    root: &flotilla_ca::CaRoot,
    spiffe_id: &str,
    at: i64,
    ttl: Duration,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(spiffe_id.to_string()).unwrap(),
    )];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let signed = flotilla_ca::sign_leaf(root, &csr, spiffe_id, ttl, at).unwrap();
    let cert = CertificateDer::from_pem_slice(signed.cert_pem.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    (vec![cert], key)
}

/// Accepts any server certificate: these probes test the inbound side's checks.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a probe of the inbound port got.
#[derive(Debug, PartialEq)]
enum Probe {
    /// The handshake (or the first read after it) failed: the server refused the client.
    Refused(String),
    /// The tunnel request was answered with this status line (and the TLS version used).
    Answered(String, Option<rustls::ProtocolVersion>),
}

/// Connects to `inbound` with optional client credentials, naming `sni`, and asks for a tunnel
/// to `target`.
async fn probe(
    inbound: std::net::SocketAddr,
    sni: &str,
    creds: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    target: std::net::SocketAddr,
) -> Probe {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let config = match creds {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut tls = match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(t) => t,
        Err(e) => return Probe::Refused(format!("handshake: {e}")),
    };
    let version = tls.get_ref().1.protocol_version();
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    if let Err(e) = tls.write_all(req.as_bytes()).await {
        return Probe::Refused(format!("write: {e}"));
    }
    let mut buf = vec![0u8; 512];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            Probe::Answered(text.lines().next().unwrap_or("").to_string(), version)
        }
        Ok(Ok(_)) => Probe::Refused("closed without an answer".into()),
        Ok(Err(e)) => Probe::Refused(format!("read: {e}")),
        Err(_) => Probe::Refused("no answer in 5s".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_cross_nodes_over_mtls_and_intentions_apply() {
    let ca = TestCa::new();
    let mut c = Cluster::new(std::path::Path::new(BIN));
    c.server_args = ca.flags();
    c.server_args
        .extend(["--default-intention".to_string(), "deny".to_string()]);
    c.start_server();
    c.start_agent(1);
    c.start_agent(2);
    c.wait_nodes(2).await;

    // Default deny: ingress and web need intentions.
    for (src, dst) in [("ingress-gateway", "web"), ("web", "db")] {
        let out = c.cli(&["intention", "create", "-allow", src, dst]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    }
    let out = c.cli(&["intention", "check", "web", "db"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    let out = c.cli(&["intention", "check", "intruder", "db"]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(out.stdout.contains("Denied"), "{}", out.stdout);
    // Bad input names the value and changes nothing.
    let out = c.cli(&["intention", "create", "-allow", "web!", "db"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("\"web!\""), "{}", out.stderr);
    let out = c.cli(&["intention", "create", "-allow", "web", "db"]);
    assert_ne!(out.code, 0, "duplicate without -replace");
    assert!(out.stderr.contains("-replace"), "{}", out.stderr);
    let resp = reqwest::Client::new()
        .put(format!(
            "{}/v1/connect/intentions/exact?source=a&destination=b",
            c.api()
        ))
        .body(r#"{"Action":"maybe"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("Action: \"maybe\""));
    let list = c.cli(&["intention", "list"]);
    assert_eq!(list.stdout.lines().count(), 3, "{}", list.stdout);
    let roots = c.cli(&["ca", "roots"]);
    assert_eq!(roots.code, 0, "{}", roots.stderr);
    assert!(roots.stdout.contains(TRUST_DOMAIN), "{}", roots.stdout);

    let (db, web) = jobs(&c, UPSTREAM_PORT);
    run_job(&c, &db);
    run_job(&c, &web);

    // web (node-1) → 127.0.0.1:25432 → node-1 proxy → mTLS → node-2 proxy → db (node-2).
    let body = eventually(
        "web reaches db through its upstream",
        Duration::from_secs(20),
        || {
            let c = &c;
            async move { call_db(c).await.ok() }
        },
    )
    .await;
    assert!(
        body.starts_with("via upstream db: hello from allocation") && body.contains("node-2"),
        "{body}"
    );

    // The inbound port of node-2: only mesh peers with an allowed identity get through.
    let db_addr: std::net::SocketAddr = {
        let regs = get_json(&format!("{}/v1/service/db", c.api()))
            .await
            .unwrap();
        let r = &regs[0];
        format!("{}:{}", r["Address"].as_str().unwrap(), r["Port"])
            .parse()
            .unwrap()
    };
    let inbound = c.net.addr(3, 15008);
    let sni = format!("db.default.dc1.svc.{TRUST_DOMAIN}");
    let id = |svc: &str| format!("spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/{svc}");
    let day = Duration::from_secs(86400);

    let none = probe(inbound, &sni, None, db_addr).await;
    assert!(
        matches!(none, Probe::Refused(_)),
        "no client cert: {none:?}"
    );

    let other_ca =
        flotilla_ca::generate_root("other.test", now(), Duration::from_secs(86400)).unwrap();
    let foreign = leaf(
        &other_ca,
        "spiffe://other.test/ns/default/dc/dc1/svc/web",
        now(),
        day,
    );
    let p = probe(inbound, &sni, Some(foreign), db_addr).await;
    assert!(matches!(p, Probe::Refused(_)), "other trust domain: {p:?}");

    let expired = leaf(&ca.root, &id("web"), now() - 7200, Duration::from_secs(600));
    let p = probe(inbound, &sni, Some(expired), db_addr).await;
    assert!(matches!(p, Probe::Refused(_)), "expired: {p:?}");

    let intruder = leaf(&ca.root, &id("intruder"), now(), day);
    let p = probe(inbound, &sni, Some(intruder), db_addr).await;
    assert!(
        matches!(&p, Probe::Answered(status, _) if status.contains("403")),
        "another service's identity: {p:?}"
    );

    // The same probe with web's identity is let through, over TLS 1.3.
    let web_cert = leaf(&ca.root, &id("web"), now(), day);
    let p = probe(inbound, &sni, Some(web_cert), db_addr).await;
    assert_eq!(
        p,
        Probe::Answered(
            "HTTP/1.1 200 OK".into(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        ),
        "web's identity"
    );

    // A deny intention blocks new connections within 2 s…
    let out = c.cli(&["intention", "create", "-deny", "-replace", "web", "db"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let start = Instant::now();
    eventually("deny takes effect", Duration::from_secs(5), || {
        let c = &c;
        async move { call_db(c).await.is_err().then_some(()) }
    })
    .await;
    let took = start.elapsed();
    eprintln!("deny intention took effect after {took:?}");
    assert!(took < Duration::from_secs(2), "deny took {took:?}");
    // …and stays in force.
    for _ in 0..5 {
        assert!(call_db(&c).await.is_err());
    }
    // Deleting it falls back to the default (deny); an allow restores the traffic.
    let out = c.cli(&["intention", "delete", "web", "db"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(call_db(&c).await.is_err(), "default policy is deny");
    let out = c.cli(&["intention", "create", "-allow", "web", "db"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    eventually("allow restores traffic", Duration::from_secs(5), || {
        let c = &c;
        async move { call_db(c).await.ok() }
    })
    .await;
}

/// Per-node proxy counters.
async fn stats(c: &Cluster, node: u8) -> serde_json::Value {
    get_json(&format!("http://{}/stats", c.net.addr(1 + node, 19000)))
        .await
        .unwrap_or_default()
}

/// Certificates a node's proxy holds: (SPIFFE ID, not_after, root id).
async fn certs(c: &Cluster, node: u8) -> Vec<(String, i64, String)> {
    let dump = get_json(&format!(
        "http://{}/config_dump",
        c.net.addr(1 + node, 19000)
    ))
    .await
    .unwrap_or_default();
    dump["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["spiffe_id"].as_str().unwrap_or("").to_string(),
                c["not_after"].as_i64().unwrap_or(0),
                c["root_id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_and_root_rotation_under_load_drop_nothing() {
    let mut c = Cluster::new(std::path::Path::new(BIN));
    c.server_args
        .extend(["--ca-leaf-ttl".to_string(), "60s".to_string()]);
    c.start_server();
    c.start_agent(1);
    c.start_agent(2);
    c.wait_nodes(2).await;
    let (db, web) = jobs(&c, UPSTREAM_PORT + 1);
    run_job(&c, &db);
    run_job(&c, &web);
    eventually("web reaches db", Duration::from_secs(20), || {
        let c = &c;
        async move { call_db(c).await.ok() }
    })
    .await;

    // A steady stream of new connections (each request opens fresh ones on every leg) in the
    // background, counting failures.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let url = format!("{}/upstream/db/x", c.ingress(1));
    let load = tokio::spawn({
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    }
                    other => {
                        eprintln!("request failed: {other:?}");
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    // Three leaf rotations on both nodes: every certificate's expiry moves three times.
    // The expiry of `svc`'s certificate among a node's certificates.
    let not_after = |certs: &[(String, i64, String)], svc: &str| {
        certs
            .iter()
            .find(|(id, _, _)| id.ends_with(&format!("/svc/{svc}")))
            .map(|(_, not_after, _)| *not_after)
    };
    let first_web = not_after(&certs(&c, 1).await, "web").expect("web cert on node-1");
    let first_db = not_after(&certs(&c, 2).await, "db").expect("db cert on node-2");
    let mut seen_web = vec![first_web];
    let mut seen_db = vec![first_db];
    let deadline = Instant::now() + Duration::from_secs(150);
    while (seen_web.len() < 4 || seen_db.len() < 4) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(w) = not_after(&certs(&c, 1).await, "web")
            && !seen_web.contains(&w)
        {
            seen_web.push(w);
        }
        if let Some(d) = not_after(&certs(&c, 2).await, "db")
            && !seen_db.contains(&d)
        {
            seen_db.push(d);
        }
    }
    eprintln!(
        "leaf rotations: web {:?}, db {:?}; requests ok {} failed {}",
        seen_web,
        seen_db,
        ok.load(std::sync::atomic::Ordering::Relaxed),
        failed.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        seen_web.len() >= 4 && seen_db.len() >= 4,
        "expected 3 rotations of each leaf: web {seen_web:?} db {seen_db:?}"
    );
    assert_eq!(failed.load(std::sync::atomic::Ordering::Relaxed), 0);

    // Root rotation under the same load.
    let out = c.cli(&["ca", "rotate"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let roots = get_json(&format!("{}/v1/connect/ca/roots", c.api()))
        .await
        .unwrap();
    let active = roots["ActiveRootID"].as_str().unwrap().to_string();
    assert_eq!(roots["Roots"].as_array().unwrap().len(), 2, "{roots:#}");
    eventually(
        "every certificate re-issued by the new root",
        Duration::from_secs(20),
        || {
            let (c, active) = (&c, active.clone());
            async move {
                let mut all = certs(c, 1).await;
                all.extend(certs(c, 2).await);
                (!all.is_empty() && all.iter().all(|(_, _, root)| *root == active)).then_some(())
            }
        },
    )
    .await;
    // Keep the load going a little longer on the new root.
    let before = ok.load(std::sync::atomic::Ordering::Relaxed);
    eventually("more requests after the rotation", Duration::from_secs(20), || {
        let ok = ok.clone();
        async move {
            (ok.load(std::sync::atomic::Ordering::Relaxed) > before + 100).then_some(())
        }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    let (ok, failed) = (
        ok.load(std::sync::atomic::Ordering::Relaxed),
        failed.load(std::sync::atomic::Ordering::Relaxed),
    );
    let s1 = stats(&c, 1).await;
    eprintln!("requests ok {ok}, failed {failed}; node-1 proxy stats {s1}");
    assert_eq!(failed, 0, "requests failed during rotation");
    // Sessions resume between rotations, and every rotation forces full handshakes with the
    // new certificates (initial + 3 leaf rotations on each side + the root rotation).
    assert!(
        s1["tls_handshakes_resumed"].as_u64().unwrap_or(0) > 0,
        "node proxies resume TLS sessions: {s1}"
    );
    assert!(
        s1["tls_handshakes_full"].as_u64().unwrap_or(0) >= 5,
        "rotations must be exercised with full handshakes: {s1}"
    );
}
