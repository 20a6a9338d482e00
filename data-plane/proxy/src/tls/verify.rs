//! Peer certificate checks for mesh mTLS.
//!
//! Both sides check the chain against the **current** trust bundle (read from the config
//! snapshot on every handshake, so a root rotation applies to the next connection without
//! rebuilding any TLS config), the validity period, and the key usage (server or client auth).
//! On top of that:
//! - the inbound side ([`MeshClientVerifier`]) requires exactly one SPIFFE URI SAN in this trust
//!   domain; who that is allowed to reach is decided by intentions after the handshake;
//! - the outbound side ([`MeshServerVerifier`]) requires the peer's SPIFFE ID to be exactly the
//!   one encoded in the server name it asked for, so a node cannot answer for a service it was
//!   not meant to be.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use super::spiffe::{SpiffeId, spiffe_id_of};
use crate::snapshot::ConfigHandle;

fn chain_error(e: webpki::Error) -> Error {
    use rustls::CertificateError as C;
    Error::InvalidCertificate(match e {
        webpki::Error::CertExpired { .. } => C::Expired,
        webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
        other => C::Other(rustls::OtherError(Arc::new(other))),
    })
}

fn general(msg: String) -> Error {
    Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(PeerError(msg)),
    )))
}

#[derive(Debug)]
struct PeerError(String);

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PeerError {}

/// Checks `end_entity` + `intermediates` against the snapshot's trust bundle for `usage` and
/// returns the peer's SPIFFE ID.
fn verify_chain(
    config: &ConfigHandle,
    algs: &WebPkiSupportedAlgorithms,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<SpiffeId, Error> {
    let snapshot = config.load();
    let Some(trust) = snapshot.trust() else {
        return Err(general("no trust bundle received yet".to_string()));
    };
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(chain_error)?;
    cert.verify_for_usage(
        algs.all,
        &trust.anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(chain_error)?;
    let id = spiffe_id_of(end_entity).map_err(general)?;
    if id.trust_domain != trust.trust_domain {
        return Err(general(format!(
            "peer identity {id} is not in trust domain {}",
            trust.trust_domain
        )));
    }
    Ok(id)
}

/// The inbound listener's client-certificate check (mandatory client auth).
#[derive(Debug)]
pub struct MeshClientVerifier {
    pub(crate) config: ConfigHandle,
    pub(crate) algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        verify_chain(
            &self.config,
            &self.algs,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The outbound side's server-certificate check: chain, then SPIFFE ID == the one asked for.
#[derive(Debug)]
pub struct MeshServerVerifier {
    pub(crate) config: ConfigHandle,
    pub(crate) algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let got = verify_chain(
            &self.config,
            &self.algs,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        let ServerName::DnsName(name) = server_name else {
            return Err(general("mesh peers are named by DNS server names".into()));
        };
        let want = SpiffeId::from_server_name(name.as_ref()).map_err(|e| general(e.to_string()))?;
        if got != want {
            return Err(general(format!(
                "peer presented identity {got}, expected {want}"
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
