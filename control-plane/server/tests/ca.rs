//! The CA as the server runs it: bootstrap, and which certificate requests it signs.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::agent::v1 as agent_pb;
use flotilla_proto::agent::v1::agent_service_server::AgentService;
use flotilla_proto::ca::v1::SignRequest;
use flotilla_proto::ca::v1::certificate_service_server::CertificateService;
use flotilla_server::agent_service::AgentApi;
use flotilla_server::ca_service::{CaApi, CaConfig, CaSetupError, bootstrap};
use flotilla_server::heartbeat::Heartbeats;
use flotilla_store::{MemStore, Op, Store};
use flotilla_types::{Allocation, Job, Node, Service, TaskGroup};

fn store() -> Arc<dyn Store> {
    Arc::new(MemStore::new())
}

fn csr_for(id: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(id.to_string()).unwrap(),
    )];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// A node "n1" (secret "s3cret") running one live allocation of a job whose group declares
/// service "db".
fn seed(store: &dyn Store) {
    let job = Job {
        id: "db".into(),
        namespace: "default".into(),
        task_groups: vec![TaskGroup {
            name: "g".into(),
            services: vec![Service {
                name: "db".into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    store
        .apply(vec![
            Op::PutNode(Node {
                id: "n1".into(),
                secret_id: "s3cret".into(),
                name: "node-1".into(),
                datacenter: "dc1".into(),
                status: "ready".into(),
                ..Default::default()
            }),
            Op::PutAlloc(Allocation {
                id: "a1".into(),
                node_id: "n1".into(),
                namespace: "default".into(),
                job_id: "db".into(),
                task_group: "g".into(),
                job: Some(Arc::new(job)),
                desired_status: "run".into(),
                client_status: "running".into(),
                ..Default::default()
            }),
        ])
        .unwrap();
}

fn request(node: &str, secret: &str, service: &str, id: &str) -> SignRequest {
    SignRequest {
        node_id: node.into(),
        node_secret: secret.into(),
        service: service.into(),
        namespace: "default".into(),
        csr_pem: csr_for(id),
    }
}

#[tokio::test]
async fn signs_only_for_services_the_node_runs() {
    let store = store();
    let cfg = CaConfig {
        trust_domain: Some("t.flotilla".into()),
        ..Default::default()
    };
    let ca = bootstrap(&*store, &cfg).unwrap();
    assert_eq!(ca.trust_domain, "t.flotilla");
    seed(&*store);
    let api = CaApi::new(store.clone());
    let db = "spiffe://t.flotilla/ns/default/dc/dc1/svc/db";

    let ok = api
        .sign(tonic::Request::new(request("n1", "s3cret", "db", db)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.spiffe_id, db);
    assert_eq!(flotilla_ca::spiffe_id_of(&ok.cert_pem).unwrap(), db);
    assert_eq!(ok.root_id, ca.roots[0].id);
    // Default TTL: 72 h.
    assert!(ok.not_after - ok.not_before >= 72 * 3600);

    let ingress = "spiffe://t.flotilla/ns/default/dc/dc1/svc/ingress-gateway";
    api.sign(tonic::Request::new(request(
        "n1",
        "s3cret",
        "ingress-gateway",
        ingress,
    )))
    .await
    .expect("every node may certify its ingress");

    for (req, why) in [
        (request("n1", "wrong", "db", db), "secret"),
        (request("nope", "s3cret", "db", db), "unknown node"),
        (
            request(
                "n1",
                "s3cret",
                "cache",
                "spiffe://t.flotilla/ns/default/dc/dc1/svc/cache",
            ),
            "runs no live allocation",
        ),
        (
            request(
                "n1",
                "s3cret",
                "db",
                "spiffe://t.flotilla/ns/default/dc/dc1/svc/cache",
            ),
            "only URI",
        ),
    ] {
        let err = api.sign(tonic::Request::new(req)).await.unwrap_err();
        let msg = err.message().to_string();
        let expect = match why {
            "secret" => "secret does not match",
            "unknown node" => "unknown node",
            other => other,
        };
        assert!(msg.contains(expect), "{why}: {msg}");
    }

    // Once the allocation is stopped, the node no longer gets certificates for db.
    let mut a = (**store.snapshot().alloc("a1").unwrap()).clone();
    a.desired_status = "stop".into();
    store.apply(vec![Op::PutAlloc(a)]).unwrap();
    let err = api
        .sign(tonic::Request::new(request("n1", "s3cret", "db", db)))
        .await
        .unwrap_err();
    assert!(err.message().contains("runs no live allocation"), "{err}");
}

#[tokio::test]
async fn bootstrap_keeps_the_trust_domain_and_applies_a_new_ttl() {
    let store = store();
    let first = bootstrap(&*store, &CaConfig::default()).unwrap();
    assert!(
        first.trust_domain.ends_with(".flotilla"),
        "{}",
        first.trust_domain
    );
    let again = bootstrap(
        &*store,
        &CaConfig {
            leaf_ttl: Duration::from_secs(60),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(again.roots, first.roots, "the same root after a restart");
    assert_eq!(again.leaf_cert_ttl, 60_000_000_000);
    let err = bootstrap(
        &*store,
        &CaConfig {
            trust_domain: Some("other.flotilla".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, CaSetupError::TrustDomain { .. }), "{err}");
}

#[tokio::test]
async fn registration_with_another_secret_is_refused() {
    let store = store();
    let heartbeats = Arc::new(Heartbeats::new(
        store.clone(),
        Duration::from_secs(10),
        Duration::from_secs(10),
    ));
    let api = AgentApi::new(store.clone(), heartbeats);
    let node = |secret: &str| agent_pb::RegisterRequest {
        node: Some(agent_pb::Node {
            id: "n1".into(),
            name: "node-1".into(),
            secret_id: secret.into(),
            ..Default::default()
        }),
    };
    api.register(tonic::Request::new(node("first")))
        .await
        .unwrap();
    api.register(tonic::Request::new(node("first")))
        .await
        .expect("the same agent registers again");
    let err = api
        .register(tonic::Request::new(node("second")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("different secret"), "{err}");
    assert_eq!(store.snapshot().node("n1").unwrap().secret_id, "first");
}
