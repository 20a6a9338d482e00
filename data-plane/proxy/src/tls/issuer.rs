//! Obtains and renews this node's workload certificates.
//!
//! For every service the node needs an identity for — services with an instance here (they
//! receive mesh traffic), the source services of upstream listeners, and the node's ingress
//! ([`INGRESS_SERVICE`]) — the issuer makes a P-256 key **here**, sends only a CSR to the
//! server's `CertificateService`, and installs the signed certificate. It renews each at about
//! half its life (with jitter, so a fleet does not renew in lockstep), at once when the CA's
//! active root changes (rotation), and retries failures with back-off. Certificates of
//! services that left the node are dropped.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::ca::v1::SignRequest;
use flotilla_proto::ca::v1::certificate_service_client::CertificateServiceClient;
use rand::Rng;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use super::certs::{Certs, LocalCert};
use super::spiffe::SpiffeId;
use crate::snapshot::{ConfigHandle, Snapshot};

/// The node's ingress identity's service name (Consul's default ingress gateway name).
pub const INGRESS_SERVICE: &str = "ingress-gateway";
/// How long one signing request may take before it is retried.
const SIGN_TIMEOUT: Duration = Duration::from_secs(10);

/// Namespace of the ingress identity.
pub const INGRESS_NAMESPACE: &str = "default";

/// Who this node is, for certificate requests.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub node_id: String,
    /// The secret the node registered with.
    pub node_secret: String,
    /// The node's datacenter (part of every SPIFFE ID it asks for).
    pub datacenter: String,
}

/// (namespace, service) pairs this node needs certificates for.
pub fn wanted(snapshot: &Snapshot) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for c in snapshot.clusters() {
        if c.cluster().endpoints.iter().any(|e| e.local) {
            out.insert((c.cluster().namespace.clone(), c.cluster().name.clone()));
        }
    }
    for l in snapshot.listeners() {
        out.insert((l.namespace.clone(), l.source_service.clone()));
    }
    out.insert((INGRESS_NAMESPACE.to_string(), INGRESS_SERVICE.to_string()));
    out
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Runs forever: keeps `certs` in line with what the snapshot needs.
pub async fn run(node: NodeIdentity, channel: Channel, config: ConfigHandle, certs: Arc<Certs>) {
    let mut client = CertificateServiceClient::new(channel);
    let mut changes = config.subscribe();
    // Per service key: earliest time to try again after a failure, and the current back-off.
    let mut retry: HashMap<String, (i64, u64)> = HashMap::new();
    loop {
        let snapshot = config.load();
        // The earliest time some certificate needs attention (renewal or a retry).
        let mut next_wake = i64::MAX;
        if let Some(trust) = snapshot.trust() {
            let want = wanted(&snapshot);
            let keys: BTreeSet<String> = want
                .iter()
                .map(|(ns, svc)| super::service_key(ns, svc))
                .collect();
            certs.retain(|k| keys.contains(k));
            retry.retain(|k, _| keys.contains(k));
            let now = now_secs();
            for (namespace, service) in &want {
                let id = SpiffeId {
                    trust_domain: trust.trust_domain.clone(),
                    namespace: namespace.clone(),
                    datacenter: node.datacenter.clone(),
                    service: service.clone(),
                };
                let key = id.service_key();
                let current = certs.get(&key);
                let wake_at = match (&current, retry.get(&key)) {
                    (Some(c), _) if c.renew_at > now && c.root_id == trust.active_root_id => {
                        c.renew_at
                    }
                    (_, Some(&(at, _))) if at > now => at,
                    _ => match issue(&mut client, &node, &id).await {
                        Ok(cert) => {
                            info!(
                                spiffe_id = %id,
                                not_after = cert.not_after,
                                renew_in_s = cert.renew_at - now,
                                renewal = current.is_some(),
                                "workload certificate installed"
                            );
                            retry.remove(&key);
                            let renew_at = cert.renew_at;
                            certs.insert(cert);
                            renew_at
                        }
                        Err(error) => {
                            let backoff = retry.get(&key).map_or(1, |(_, b)| (b * 2).min(30));
                            warn!(spiffe_id = %id, %error, retry_in_s = backoff, "certificate request failed");
                            let at = now + backoff as i64;
                            retry.insert(key, (at, backoff));
                            at
                        }
                    },
                };
                next_wake = next_wake.min(wake_at);
            }
        }
        let sleep = if next_wake == i64::MAX {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(u64::try_from(next_wake - now_secs()).unwrap_or(0).max(1))
        };
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Makes a key, sends the CSR, and builds the installed certificate.
async fn issue(
    client: &mut CertificateServiceClient<Channel>,
    node: &NodeIdentity,
    id: &SpiffeId,
) -> Result<LocalCert, String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("generating a key: {e}"))?;
    let mut params = rcgen::CertificateParams::default();
    let uri = rcgen::string::Ia5String::try_from(id.to_string())
        .map_err(|e| format!("SPIFFE ID as a URI SAN: {e}"))?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| format!("building the CSR: {e}"))?;
    let request = client.sign(SignRequest {
        node_id: node.node_id.clone(),
        node_secret: node.node_secret.clone(),
        service: id.service.clone(),
        namespace: id.namespace.clone(),
        csr_pem: csr,
    });
    let resp = tokio::time::timeout(SIGN_TIMEOUT, request)
        .await
        .map_err(|_| format!("no answer from the server within {SIGN_TIMEOUT:?}"))?
        .map_err(|s| format!("server refused: {}", s.message()))?
        .into_inner();
    let mut chain = Vec::with_capacity(1 + resp.intermediates_pem.len());
    for (what, pem) in std::iter::once(("certificate", &resp.cert_pem))
        .chain(resp.intermediates_pem.iter().map(|p| ("intermediate", p)))
    {
        chain.push(
            CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| format!("signed {what} is not PEM: {e}"))?,
        );
    }
    let got = super::spiffe::spiffe_id_of(&chain[0])?;
    if &got != id {
        return Err(format!("server signed {got}, asked for {id}"));
    }
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| format!("loading the key: {e}"))?;
    let lifetime = (resp.not_after - resp.not_before).max(2);
    // Renew at 45–55 % of the lifetime.
    let fraction = rand::rng().random_range(0.45..0.55);
    let renew_at = resp.not_before + (lifetime as f64 * fraction) as i64;
    debug!(spiffe_id = %id, root = %resp.root_id, "certificate signed");
    Ok(LocalCert {
        id: id.clone(),
        key: Arc::new(rustls::sign::CertifiedKey::new(chain, signing_key)),
        not_before: resp.not_before,
        not_after: resp.not_after,
        root_id: resp.root_id,
        renew_at,
    })
}
