//! Roots: generating one, loading an operator's, and cross-signing for rotation.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber,
};

use crate::encoding::{asn1_time, hex, pem_encode, random_serial, sha256_hex};
use crate::x509::{
    Signer, cert_der, check_issued, check_valid_at, dn_from_name, load_key, parse_cert, require_ca,
    root_label, subject_key_id, uri_sans, validate_trust_domain, validity,
};
use crate::{CaError, CaRoot};

/// [`CaRoot::name`] of every root this crate makes or loads (Consul's wording).
pub const ROOT_NAME: &str = "Flotilla CA Root Cert";

/// How far `notBefore` of roots and cross-signed certificates is backdated, to tolerate clock
/// skew between the server and the proxies.
const BACKDATE_SECS: i64 = 60;

/// The key usages of a root and of a cross-signed root.
fn ca_key_usages() -> Vec<KeyUsagePurpose> {
    vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ]
}

fn rcgen_err(context: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CaError {
    let context = context.into();
    move |source| CaError::Rcgen { context, source }
}

/// A new self-signed root for `trust_domain`, valid from `now - 60s` to `now + validity`.
///
/// The certificate: ECDSA P-256 key, a random 128-bit serial, subject
/// `CN=Flotilla CA <short id>, O=Flotilla` (the short id is the first 8 hex digits of the key's
/// subjectKeyIdentifier, so successive roots have distinct names, which path building needs),
/// basicConstraints CA:TRUE with no path length limit (a cross-signed copy of a newer root may
/// sit between it and leaves), key usage keyCertSign + cRLSign + digitalSignature, and the URI
/// SAN `spiffe://<trust_domain>` naming the trust domain it vouches for, as Consul's roots do.
///
/// Returns a [`CaRoot`] with `id` = lowercase hex SHA-256 of the certificate's DER, `name` =
/// [`ROOT_NAME`], the private key as PKCS#8 PEM, `active = true`, `rotated_out_at = 0` and no
/// cross-signed certificate.
pub fn generate_root(trust_domain: &str, now: i64, validity: Duration) -> Result<CaRoot, CaError> {
    validate_trust_domain(trust_domain).map_err(|reason| CaError::TrustDomain {
        value: trust_domain.to_string(),
        reason,
    })?;
    let not_before = now.saturating_sub(BACKDATE_SECS);
    let not_after = lifetime_end(now, validity, "root validity")?;

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(rcgen_err("generating the root's ECDSA P-256 key"))?;
    let mut params = CertificateParams::default();
    let short_id: String = hex(&params.key_identifier(&key)).chars().take(8).collect();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Flotilla CA {short_id}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Flotilla");
    let uri = format!("spiffe://{trust_domain}");
    params.subject_alt_names = vec![SanType::URI(
        uri.clone()
            .try_into()
            .map_err(rcgen_err(format!("root URI SAN {uri:?}")))?,
    )];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = ca_key_usages();
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    params.not_before = asn1_time(not_before, "root notBefore")?.to_datetime();
    params.not_after = asn1_time(not_after, "root notAfter")?.to_datetime();

    let cert = params
        .self_signed(&key)
        .map_err(rcgen_err("self-signing the root certificate"))?;
    Ok(CaRoot {
        id: sha256_hex(cert.der()),
        name: ROOT_NAME.to_string(),
        root_cert: cert.pem(),
        cross_signed_cert: String::new(),
        private_key: key.serialize_pem(),
        not_before,
        not_after,
        active: true,
        rotated_out_at: 0,
    })
}

/// An operator-supplied root: a PEM certificate and its PEM private key (PKCS#8
/// `PRIVATE KEY`, SEC1 `EC PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`; ECDSA P-256/P-384,
/// Ed25519 or RSA; not encrypted).
///
/// Checks, in order: the certificate parses; it is a CA (basicConstraints CA:TRUE, and
/// keyCertSign if it has a key usage extension); the key parses and matches the certificate's
/// public key; `now` is within its validity period; and its subject name can be reproduced
/// exactly as the issuer name of what it signs (checked by signing a throwaway certificate),
/// without which no leaf would chain to it. The certificate need not be self-signed: an
/// intermediate of an offline corporate CA works too, and proxies use it as their trust anchor.
///
/// Returns the [`CaRoot`] (`active = true`) with the certificate re-encoded as a single clean
/// PEM block and the key as PKCS#8 PEM, whatever form it came in.
pub fn load_root(cert_pem: &str, key_pem: &str, now: i64) -> Result<CaRoot, CaError> {
    const WHAT: &str = "root certificate";
    let der = cert_der(cert_pem, WHAT)?;
    let cert = parse_cert(&der, WHAT)?;
    require_ca(&cert, WHAT)?;
    let key = load_key(key_pem, &cert, "root private key")?;
    check_valid_at(&cert, now, WHAT)?;

    // Sign a throwaway certificate to prove leaves will chain to this root.
    let issuer = rcgen::Issuer::from_ca_cert_der(&der.as_slice().into(), &key).map_err(|e| {
        CaError::Unsuitable {
            what: WHAT.to_string(),
            reason: format!(
                "cannot use its subject name ({}) as an issuer name: {e}",
                cert.subject()
            ),
        }
    })?;
    let probe = CertificateParams::default()
        .signed_by(&key, &issuer)
        .map_err(rcgen_err("signing a test certificate with the root"))?;
    check_issued(probe.der(), &cert, WHAT)?;

    let (not_before, not_after) = validity(&cert);
    Ok(CaRoot {
        id: sha256_hex(&der),
        name: ROOT_NAME.to_string(),
        root_cert: pem_encode("CERTIFICATE", &der),
        cross_signed_cert: String::new(),
        private_key: key.serialize_pem(),
        not_before,
        not_after,
        active: true,
        rotated_out_at: 0,
    })
}

/// Cross-signs `new` with `old` for root rotation, returning the PEM certificate to store as
/// `new.cross_signed_cert`.
///
/// The certificate has `new`'s subject name, public key, subjectKeyIdentifier and SPIFFE URI
/// SAN, is issued by `old` (issuer name = `old`'s subject, authorityKeyIdentifier = `old`'s
/// subjectKeyIdentifier, signed with `old`'s key), is a CA with `new`'s key usages, and is
/// valid from `now - 60s` to the earlier of the two roots' `notAfter`. A leaf signed by `new`
/// and sent with this certificate as its intermediate therefore verifies against a trust store
/// holding only `old`, as well as against one holding `new`.
///
/// Needs `old`'s private key (not `new`'s); both roots must be CAs valid at `now`.
pub fn cross_sign(new: &CaRoot, old: &CaRoot, now: i64) -> Result<String, CaError> {
    let signer = Signer::load(old, now, &format!("old {}", root_label(old)))?;
    let old_cert = signer.cert()?;

    let new_what = format!("new {} certificate", root_label(new));
    let new_der = cert_der(&new.root_cert, &new_what)?;
    let new_cert = parse_cert(&new_der, &new_what)?;
    require_ca(&new_cert, &new_what)?;
    check_valid_at(&new_cert, now, &new_what)?;

    let not_before = now.saturating_sub(BACKDATE_SECS);
    let not_after = validity(&new_cert).1.min(validity(&old_cert).1);

    let mut params = CertificateParams::default();
    params.distinguished_name = dn_from_name(new_cert.subject(), &new_what)?;
    params.subject_alt_names = uri_sans(&new_cert, &new_what)?
        .into_iter()
        .map(|uri| {
            uri.clone()
                .try_into()
                .map(SanType::URI)
                .map_err(rcgen_err(format!("{new_what}: URI SAN {uri:?}")))
        })
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = ca_key_usages();
    params.key_identifier_method = match subject_key_id(&new_cert) {
        Some(ski) => KeyIdMethod::PreSpecified(ski),
        None => KeyIdMethod::Sha256,
    };
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    params.not_before = asn1_time(not_before, "cross-signed notBefore")?.to_datetime();
    params.not_after = asn1_time(not_after, "cross-signed notAfter")?.to_datetime();

    let new_key =
        rcgen::SubjectPublicKeyInfo::from_der(new_cert.public_key().raw).map_err(|e| {
            CaError::Unsuitable {
                what: new_what.clone(),
                reason: format!("its public key cannot be re-encoded: {e}"),
            }
        })?;
    let cert = params
        .signed_by(&new_key, &signer.issuer()?)
        .map_err(rcgen_err("cross-signing the new root with the old one"))?;

    check_issued(cert.der(), &old_cert, &signer.what)?;
    let issued = parse_cert(cert.der(), "cross-signed certificate")?;
    if issued.subject().as_raw() != new_cert.subject().as_raw()
        || issued.public_key().raw != new_cert.public_key().raw
    {
        return Err(CaError::Unsuitable {
            what: new_what,
            reason: format!(
                "its subject name ({}) or public key cannot be reproduced byte for byte, so \
                 leaves it signs would not chain through the cross-signed certificate",
                new_cert.subject()
            ),
        });
    }
    Ok(cert.pem())
}

/// `now + lifetime` in whole seconds; errors for lifetimes under a second or past year 9999.
pub(crate) fn lifetime_end(now: i64, lifetime: Duration, what: &str) -> Result<i64, CaError> {
    let secs = lifetime.as_secs();
    if secs == 0 {
        return Err(CaError::Validity {
            what: what.to_string(),
            reason: format!("{lifetime:?} is shorter than the 1 second minimum"),
        });
    }
    i64::try_from(secs)
        .ok()
        .and_then(|s| now.checked_add(s))
        .ok_or_else(|| CaError::Validity {
            what: what.to_string(),
            reason: format!("{lifetime:?} from now overflows"),
        })
}
