//! Leaves: signing a workload's CSR for its SPIFFE ID, and reading the ID back.

use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType, SerialNumber,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME;
use x509_parser::prelude::FromDer as _;

use crate::encoding::{asn1_time, hex, pem_one, random_serial};
use crate::root::lifetime_end;
use crate::x509::{
    Signer, cert_der, check_issued, describe_name, parse_cert, parse_spiffe_id, root_label,
    root_trust_domain, uri_sans, validity,
};
use crate::{CaError, CaRoot};

/// A signed workload certificate and what a proxy needs to present it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedLeaf {
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// Intermediates to send after the leaf, PEM each: the signing root's cross-signed
    /// certificate while a rotation is in progress, otherwise none.
    pub intermediates_pem: Vec<String>,
    /// The serial number, lowercase hex without separators (32 digits).
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    /// The SPIFFE ID in the certificate's one URI SAN.
    pub spiffe_id: String,
}

/// Signs a workload's CSR (PEM `CERTIFICATE REQUEST`) for `spiffe_id` with `root`.
///
/// The caller decides which SPIFFE ID the workload is entitled to; this checks that the CSR
/// asks for exactly that and nothing more. Refused when: the CSR does not parse or its
/// self-signature does not verify; it requests anything but exactly one URI SAN equal to
/// `spiffe_id` (the error lists what it asked for and what is allowed); `spiffe_id` is not a
/// valid SPIFFE ID, or belongs to a trust domain other than the one the root declares in its
/// own `spiffe://` URI SAN (roots without one accept any); the root has no private key, its key
/// does not match it, or it is not valid at `now`; `ttl` is under a second.
///
/// Everything else in the CSR (its subject, requested key usages or basic constraints, other
/// extensions) is ignored: the CA decides the leaf's contents, which are:
/// the CSR's public key; subject `CN=<service>` (the last path segment of `spiffe_id`); the one
/// URI SAN `spiffe_id`; basicConstraints CA:FALSE; key usage digitalSignature +
/// keyEncipherment; extended key usage serverAuth + clientAuth; a random 128-bit serial;
/// authorityKeyIdentifier = the root's subjectKeyIdentifier; `notBefore` = `now` minus a tenth
/// of the TTL (at least 1s, at most 60s) for clock skew; `notAfter` = `now + ttl`, **clamped to
/// the root's `notAfter`** (a leaf never outlives its root, and a root nearing expiry still
/// issues, shorter, leaves rather than failing; the returned `not_after` is the clamped value).
pub fn sign_leaf(
    root: &CaRoot,
    csr_pem: &str,
    spiffe_id: &str,
    ttl: Duration,
    now: i64,
) -> Result<SignedLeaf, CaError> {
    let (trust_domain, segments) = parse_spiffe_id(spiffe_id)?;
    let service = segments.last().copied().ok_or_else(|| CaError::SpiffeId {
        id: spiffe_id.to_string(),
        reason: "has no path".into(),
    })?;
    let requested_end = lifetime_end(now, ttl, "leaf TTL")?;
    let backdate = i64::try_from((ttl.as_secs() / 10).clamp(1, 60)).unwrap_or(60);

    let csr_key = parse_csr(csr_pem, spiffe_id)?;

    let label = root_label(root);
    let signer = Signer::load(root, now, &label)?;
    let root_cert = signer.cert()?;
    if let Some(root_td) = root_trust_domain(&root_cert, &signer.what)?
        && root_td != trust_domain
    {
        return Err(CaError::SpiffeId {
            id: spiffe_id.to_string(),
            reason: format!(
                "trust domain {trust_domain:?} is not the signing root's trust domain {root_td:?}"
            ),
        });
    }

    let intermediates_pem = if root.cross_signed_cert.trim().is_empty() {
        Vec::new()
    } else {
        let what = format!("{label} cross_signed_cert");
        let der = cert_der(&root.cross_signed_cert, &what)?;
        let cross = parse_cert(&der, &what)?;
        if cross.subject().as_raw() != root_cert.subject().as_raw()
            || cross.public_key().raw != root_cert.public_key().raw
        {
            return Err(CaError::Unsuitable {
                what,
                reason: "does not carry this root's subject name and public key, so leaves \
                         would not chain through it"
                    .into(),
            });
        }
        vec![root.cross_signed_cert.clone()]
    };

    let not_before = now.saturating_sub(backdate);
    let not_after = requested_end.min(validity(&root_cert).1);
    let serial = random_serial()?;

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, service);
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().map_err(|e| {
        CaError::Rcgen {
            context: format!("leaf URI SAN {spiffe_id:?}"),
            source: e,
        }
    })?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = asn1_time(not_before, "leaf notBefore")?.to_datetime();
    params.not_after = asn1_time(not_after, "leaf notAfter")?.to_datetime();

    let cert = params
        .signed_by(&csr_key, &signer.issuer()?)
        .map_err(|e| CaError::Rcgen {
            context: format!("signing the leaf for {spiffe_id}"),
            source: e,
        })?;
    check_issued(cert.der(), &root_cert, &signer.what)?;

    Ok(SignedLeaf {
        cert_pem: cert.pem(),
        intermediates_pem,
        serial: hex(&serial),
        not_before,
        not_after,
        spiffe_id: spiffe_id.to_string(),
    })
}

/// Parses and verifies a CSR, checks it asks for exactly `allowed`, and returns its public key.
fn parse_csr(csr_pem: &str, allowed: &str) -> Result<rcgen::SubjectPublicKeyInfo, CaError> {
    const WHAT: &str = "certificate signing request";
    let block = pem_one(
        csr_pem,
        WHAT,
        &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"],
    )?;
    let (rest, csr) =
        X509CertificationRequest::from_der(&block.der).map_err(|e| CaError::Parse {
            what: WHAT.to_string(),
            reason: format!("not a valid PKCS#10 request: {e}"),
        })?;
    if !rest.is_empty() {
        return Err(CaError::Parse {
            what: WHAT.to_string(),
            reason: format!("{} trailing bytes after the request", rest.len()),
        });
    }
    csr.verify_signature().map_err(|e| CaError::CsrSignature {
        reason: e.to_string(),
    })?;

    let mut requested = Vec::new();
    for attr in csr.certification_request_info.attributes() {
        let ParsedCriAttribute::ExtensionRequest(request) = attr.parsed_attribute() else {
            continue;
        };
        for ext in &request.extensions {
            if ext.oid != OID_X509_EXT_SUBJECT_ALT_NAME {
                continue;
            }
            let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
                return Err(CaError::Parse {
                    what: WHAT.to_string(),
                    reason: "its requested subjectAltName extension is malformed".into(),
                });
            };
            requested.extend(san.general_names.iter().map(describe_name));
        }
    }
    if requested != [format!("URI:{allowed}")] {
        return Err(CaError::CsrNames {
            requested,
            allowed: allowed.to_string(),
        });
    }

    rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw).map_err(
        |e| CaError::CsrKey {
            reason: format!(
                "{}: {e}",
                csr.certification_request_info
                    .subject_pki
                    .algorithm
                    .algorithm
            ),
        },
    )
}

/// The one SPIFFE ID (`spiffe://…` URI SAN) of a PEM certificate. Errors if the certificate
/// has no URI SAN, several, or one that is not a `spiffe://` URI.
pub fn spiffe_id_of(cert_pem: &str) -> Result<String, CaError> {
    const WHAT: &str = "certificate";
    let der = cert_der(cert_pem, WHAT)?;
    let cert = parse_cert(&der, WHAT)?;
    let mut uris = uri_sans(&cert, WHAT)?;
    match uris.len() {
        1 if uris[0].starts_with("spiffe://") => Ok(uris.remove(0)),
        _ => Err(CaError::UriSans {
            what: WHAT.to_string(),
            found: uris,
        }),
    }
}
