//! The certificate authority as the server runs it: bootstrap at start, the gRPC
//! `CertificateService` proxies send CSRs to, and the pruning of retired roots.
//!
//! A CSR is signed only for a service the asking node really runs: the node must be registered
//! and present the secret it registered with, and one of its live allocations must declare the
//! service (or the service is the node's ingress identity, [`INGRESS_SERVICE`]). The private key
//! stays on the node; only the CSR travels.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::ca::v1 as pb;
use flotilla_proto::ca::v1::certificate_service_server::{
    CertificateService, CertificateServiceServer,
};
use flotilla_store::{Op, Store};
use flotilla_types::{CaState, DEFAULT_NAMESPACE, INGRESS_SERVICE, NODE_STATUS_DOWN, spiffe_id};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// How the CA starts.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// SPIFFE trust domain; `None` generates `<8 hex>.flotilla` on first start.
    pub trust_domain: Option<String>,
    /// Lifetime of workload certificates.
    pub leaf_ttl: Duration,
    /// An operator-supplied root (certificate PEM, private key PEM) used on first start.
    pub root: Option<(String, String)>,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            trust_domain: None,
            leaf_ttl: flotilla_ca::DEFAULT_LEAF_TTL,
            root: None,
        }
    }
}

/// Why the CA could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaSetupError {
    #[error("CA root: {0}")]
    Root(#[from] flotilla_ca::CaError),
    #[error(
        "the CA already has trust domain {existing:?}; it cannot change to {wanted:?} (peers would \
         stop trusting each other)"
    )]
    TrustDomain { existing: String, wanted: String },
    #[error(
        "the supplied CA root ({id}) is not one of the CA's roots; to switch roots without \
         dropping traffic use `flotilla ca rotate -cert FILE -key FILE`"
    )]
    RootChanged { id: String },
    #[error("store: {0}")]
    Store(#[from] flotilla_store::StoreError),
}

fn now_secs() -> i64 {
    crate::now_nanos() / flotilla_types::NANOS_PER_SEC
}

/// Creates the CA on first start (a generated root, or the supplied one), or checks the stored
/// one against `cfg` and applies a changed leaf TTL.
pub fn bootstrap(store: &dyn Store, cfg: &CaConfig) -> Result<Arc<CaState>, CaSetupError> {
    let state = store.snapshot();
    let now = now_secs();
    if let Some(ca) = &state.ca {
        if let Some(wanted) = &cfg.trust_domain
            && wanted != &ca.trust_domain
        {
            return Err(CaSetupError::TrustDomain {
                existing: ca.trust_domain.clone(),
                wanted: wanted.clone(),
            });
        }
        if let Some((cert, key)) = &cfg.root {
            let supplied = flotilla_ca::load_root(cert, key, now)?;
            if !ca.roots.iter().any(|r| r.id == supplied.id) {
                return Err(CaSetupError::RootChanged { id: supplied.id });
            }
        }
        if flotilla_ca::leaf_ttl(ca) != cfg.leaf_ttl {
            store.apply(vec![Op::PutCa(flotilla_ca::with_leaf_ttl(
                ca,
                cfg.leaf_ttl,
            ))])?;
            info!(leaf_ttl = ?cfg.leaf_ttl, "CA leaf TTL changed");
        }
        return Ok(store.snapshot().ca.clone().unwrap_or_else(|| ca.clone()));
    }
    let trust_domain = cfg.trust_domain.clone().unwrap_or_else(|| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("{}.flotilla", &id[..8])
    });
    let root = match &cfg.root {
        Some((cert, key)) => flotilla_ca::load_root(cert, key, now)?,
        None => flotilla_ca::generate_root(&trust_domain, now, flotilla_ca::ROOT_VALIDITY)?,
    };
    let ca = flotilla_ca::bootstrap(&trust_domain, cfg.leaf_ttl, root);
    info!(trust_domain = %ca.trust_domain, root = %ca.roots[0].id, "CA initialised");
    store.apply(vec![Op::PutCa(ca.clone())])?;
    Ok(Arc::new(ca))
}

/// Drops retired roots once every leaf they signed has expired. Runs until `shutdown`.
pub async fn prune_roots(store: Arc<dyn Store>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let Some(ca) = store.snapshot().ca.clone() else {
            continue;
        };
        if let Some(next) = flotilla_ca::prune(&ca, now_secs()) {
            let dropped: Vec<_> = ca
                .roots
                .iter()
                .filter(|r| !next.roots.iter().any(|n| n.id == r.id))
                .map(|r| r.id.clone())
                .collect();
            match store.apply(vec![Op::PutCa(next)]) {
                Ok(_) => info!(?dropped, "retired CA roots removed from the trust bundle"),
                Err(error) => warn!(%error, "pruning retired CA roots failed"),
            }
        }
    }
}

/// The gRPC certificate service.
pub struct CaApi {
    store: Arc<dyn Store>,
}

impl CaApi {
    pub fn new(store: Arc<dyn Store>) -> Self {
        CaApi { store }
    }

    /// The tonic service to serve.
    pub fn into_service(self) -> CertificateServiceServer<Self> {
        CertificateServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl CertificateService for CaApi {
    async fn sign(
        &self,
        request: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let req = request.into_inner();
        let state = self.store.snapshot();
        let Some(ca) = state.ca.clone() else {
            return Err(Status::unavailable("the CA is not initialised yet"));
        };
        let node = state
            .node(&req.node_id)
            .ok_or_else(|| Status::not_found(format!("unknown node {:?}", req.node_id)))?;
        if node.secret_id.is_empty() || node.secret_id != req.node_secret {
            warn!(node = %req.node_id, service = %req.service, "CSR refused: wrong node secret");
            return Err(Status::permission_denied(format!(
                "node {}: the secret does not match the one it registered with",
                req.node_id
            )));
        }
        if node.status == NODE_STATUS_DOWN {
            return Err(Status::failed_precondition(format!(
                "node {} is down; it must register again",
                req.node_id
            )));
        }
        let namespace = if req.namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            req.namespace.as_str()
        };
        let runs_it = req.service == INGRESS_SERVICE
            || state
                .allocs_by_node(&req.node_id)
                .filter(|a| !a.terminal() && a.namespace == namespace)
                .filter_map(|a| {
                    let job = a.job.as_ref()?;
                    job.task_groups.iter().find(|g| g.name == a.task_group)
                })
                .any(|g| g.all_services().any(|s| s.name == req.service));
        if !runs_it {
            warn!(node = %req.node_id, service = %req.service, "CSR refused: node does not run the service");
            return Err(Status::permission_denied(format!(
                "node {} runs no live allocation of service {:?} in namespace {namespace:?}",
                req.node_id, req.service
            )));
        }
        let id = spiffe_id(&ca.trust_domain, namespace, &node.datacenter, &req.service);
        let root = ca
            .active_root()
            .ok_or_else(|| Status::internal("the CA has no active root"))?;
        let leaf = flotilla_ca::sign_leaf(
            root,
            &req.csr_pem,
            &id,
            flotilla_ca::leaf_ttl(&ca),
            now_secs(),
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        info!(node = %req.node_id, spiffe_id = %id, serial = %leaf.serial, not_after = leaf.not_after, "signed workload certificate");
        Ok(Response::new(pb::SignResponse {
            cert_pem: leaf.cert_pem,
            intermediates_pem: leaf.intermediates_pem,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            spiffe_id: leaf.spiffe_id,
            root_id: root.id.clone(),
        }))
    }
}
