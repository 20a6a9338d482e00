//! The node's own workload certificates, one per local service, swapped in atomically as the
//! [issuer](super::issuer) obtains and renews them. Handshakes read them lock-free.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::spiffe::SpiffeId;

/// One local service's current certificate.
#[derive(Debug)]
pub struct LocalCert {
    pub id: SpiffeId,
    pub key: Arc<CertifiedKey>,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The root that signed it.
    pub root_id: String,
    /// When the issuer renews it (about half-way through its life).
    pub renew_at: i64,
}

/// Current certificates by [`SpiffeId::service_key`].
#[derive(Debug, Default)]
pub struct Certs {
    map: ArcSwap<HashMap<String, Arc<LocalCert>>>,
    /// Bumped on every change, so TLS configs know when to start a new generation.
    version: AtomicU64,
}

impl Certs {
    /// The certificate for `key` (`<namespace>/<service>`).
    pub fn get(&self, key: &str) -> Option<Arc<LocalCert>> {
        self.map.load().get(key).cloned()
    }

    /// Changes whenever a certificate is installed or dropped.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The certificate a TLS server name ([`SpiffeId::server_name`]) asks for, matched by
    /// namespace and service. Server names are case-insensitive (rustls hands the server the
    /// SNI lower-cased) while service names and namespaces may contain capitals, so the match
    /// ignores ASCII case.
    pub fn for_server_name(&self, name: &str) -> Option<Arc<LocalCert>> {
        let wanted = SpiffeId::from_server_name(name).ok()?.service_key();
        let map = self.map.load();
        map.get(&wanted).cloned().or_else(|| {
            map.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(&wanted))
                .map(|(_, cert)| cert.clone())
        })
    }

    /// All current certificates.
    pub fn all(&self) -> Arc<HashMap<String, Arc<LocalCert>>> {
        self.map.load_full()
    }

    /// Installs (or replaces) a certificate.
    pub fn insert(&self, cert: LocalCert) {
        let cert = Arc::new(cert);
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(cert.id.service_key(), cert.clone());
            m
        });
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops certificates whose key `keep` rejects.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        if self.map.load().keys().all(|k| keep(k)) {
            return;
        }
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.retain(|k, _| keep(k));
            m
        });
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// Inbound: picks the certificate of the service the caller named in its SNI.
#[derive(Debug)]
pub(crate) struct BySni(pub Arc<Certs>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0
            .for_server_name(hello.server_name()?)
            .map(|c| c.key.clone())
    }
}

/// Outbound: always the certificate of one local service (the caller's identity).
#[derive(Debug)]
pub(crate) struct AsService {
    pub certs: Arc<Certs>,
    pub key: String,
}

impl rustls::client::ResolvesClientCert for AsService {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certs.get(&self.key).map(|c| c.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
