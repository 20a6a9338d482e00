//! Mesh TLS: workload identities (SPIFFE), the trust bundle, peer verification, and the rustls
//! configs of the inbound listener and of outbound connections.
//!
//! - [`spiffe`]: identities and the server names (SNI) that carry them.
//! - [`certs`]: this node's certificates, one per local service, swapped atomically.
//! - [`issuer`]: gets them signed (key made here, CSR sent to the server) and renews them at
//!   about half-life or when the CA's active root changes.
//! - [`verify`]: peer checks against the current trust bundle from the config snapshot.
//!
//! TLS 1.3 only, ring provider. The configs are built once and read certificates and roots
//! dynamically, so rotation never rebuilds them and session tickets (resumption) survive it.

pub mod certs;
pub mod issuer;
pub mod spiffe;
pub mod verify;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector, client};

use crate::snapshot::ConfigHandle;
use crate::stats::{Stats, inc};
pub use certs::{Certs, LocalCert};
pub use spiffe::{SpiffeId, service_key};

/// ALPN protocol of proxy-to-proxy connections.
pub const ALPN: &[u8] = b"flotilla-mesh/1";

/// The trust bundle as verification uses it.
#[derive(Debug, Clone)]
pub struct Trust {
    pub trust_domain: String,
    pub anchors: Vec<TrustAnchor<'static>>,
    /// The root that signs new leaves; a change makes the issuer renew every certificate.
    pub active_root_id: String,
    /// Number of roots (for `/config_dump`; the PEMs are public but long).
    pub roots: usize,
}

impl Trust {
    /// Parses PEM roots into trust anchors. The error names the root and what is wrong.
    pub fn from_pem(
        trust_domain: &str,
        roots_pem: &[String],
        active_root_id: &str,
    ) -> Result<Trust, String> {
        use rustls::pki_types::pem::PemObject;
        let mut anchors = Vec::with_capacity(roots_pem.len());
        for (i, pem) in roots_pem.iter().enumerate() {
            let der = CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| format!("roots_pem[{i}]: not a PEM certificate: {e}"))?;
            let anchor = webpki::anchor_from_trusted_cert(&der)
                .map_err(|e| format!("roots_pem[{i}]: unusable as a trust anchor: {e}"))?;
            anchors.push(anchor.to_owned());
        }
        Ok(Trust {
            trust_domain: trust_domain.to_ascii_lowercase(),
            anchors,
            active_root_id: active_root_id.to_string(),
            roots: roots_pem.len(),
        })
    }
}

/// The proxy's mesh TLS state. Cheap to share (`Arc`).
pub struct MeshTls {
    config: ConfigHandle,
    certs: Arc<Certs>,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Generation>,
    stats: Arc<Stats>,
}

/// TLS configs valid for one set of local certificates and one trust bundle. A new generation
/// (new ticket keys, empty client session caches) starts whenever either changes, so a session
/// is only ever resumed under the certificates and roots it was authenticated with: after a
/// rotation every peer does one full handshake with the new certificates.
struct Generation {
    key: (u64, Option<String>),
    server: Arc<ServerConfig>,
    clients: ArcSwap<HashMap<String, Arc<ClientConfig>>>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("certs", &self.certs.all().len())
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl MeshTls {
    /// TLS state verifying peers against `config`'s trust bundle, with no certificates yet.
    pub fn new(config: ConfigHandle, stats: Arc<Stats>) -> Result<Arc<MeshTls>, rustls::Error> {
        let provider = provider();
        let certs = Arc::new(Certs::default());
        let first = Self::build(&config, &certs, &provider, (0, None))?;
        Ok(Arc::new(MeshTls {
            config,
            certs,
            provider,
            current: ArcSwap::from_pointee(first),
            stats,
        }))
    }

    fn build(
        config: &ConfigHandle,
        certs: &Arc<Certs>,
        provider: &Arc<CryptoProvider>,
        key: (u64, Option<String>),
    ) -> Result<Generation, rustls::Error> {
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(verify::MeshClientVerifier {
                config: config.clone(),
                algs: provider.signature_verification_algorithms,
            }))
            .with_cert_resolver(Arc::new(certs::BySni(certs.clone())));
        server.alpn_protocols = vec![ALPN.to_vec()];
        // Stateless tickets: any number of peers can resume without server-side memory.
        server.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Generation {
            key,
            server: Arc::new(server),
            clients: ArcSwap::default(),
        })
    }

    /// The configs for the current certificates and trust bundle (a cheap check; a rebuild
    /// only right after a rotation).
    fn generation(&self) -> Result<Arc<Generation>, rustls::Error> {
        let key = (
            self.certs.version(),
            self.config.load().versions().trust.clone(),
        );
        let current = self.current.load_full();
        if current.key == key {
            return Ok(current);
        }
        let next = Arc::new(Self::build(&self.config, &self.certs, &self.provider, key)?);
        self.current.store(next.clone());
        Ok(next)
    }

    /// This node's certificates.
    pub fn certs(&self) -> &Arc<Certs> {
        &self.certs
    }

    /// Accepts one inbound mTLS connection with the current configs.
    pub fn acceptor(&self) -> Result<TlsAcceptor, rustls::Error> {
        Ok(TlsAcceptor::from(self.generation()?.server.clone()))
    }

    /// The client config presenting local service `source_key`'s certificate. Built once per
    /// source and generation, so its session cache lets later connections resume.
    fn client_config(&self, source_key: &str) -> Result<Arc<ClientConfig>, rustls::Error> {
        let generation = self.generation()?;
        if let Some(c) = generation.clients.load().get(source_key) {
            return Ok(c.clone());
        }
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::MeshServerVerifier {
                config: self.config.clone(),
                algs: self.provider.signature_verification_algorithms,
            }))
            .with_client_cert_resolver(Arc::new(certs::AsService {
                certs: self.certs.clone(),
                key: source_key.to_string(),
            }));
        config.alpn_protocols = vec![ALPN.to_vec()];
        let config = Arc::new(config);
        generation.clients.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.entry(source_key.to_string())
                .or_insert_with(|| config.clone());
            m
        });
        Ok(generation
            .clients
            .load()
            .get(source_key)
            .cloned()
            .unwrap_or(config))
    }

    /// Opens mTLS over `io` as local service `source_key`, to the peer that must prove it is
    /// `peer`.
    pub async fn connect<IO>(
        &self,
        source_key: &str,
        peer: &SpiffeId,
        io: IO,
    ) -> io::Result<client::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        if self.certs.get(source_key).is_none() {
            inc(&self.stats.tls_failed);
            return Err(io::Error::other(format!(
                "no certificate for local service {source_key} yet"
            )));
        }
        let config = self.client_config(source_key).map_err(io::Error::other)?;
        let name = ServerName::try_from(peer.server_name()).map_err(io::Error::other)?;
        match TlsConnector::from(config).connect(name, io).await {
            Ok(stream) => {
                let resumed =
                    stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                inc(if resumed {
                    &self.stats.tls_resumed
                } else {
                    &self.stats.tls_full
                });
                Ok(stream)
            }
            Err(e) => {
                inc(&self.stats.tls_failed);
                Err(e)
            }
        }
    }
}
