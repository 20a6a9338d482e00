//! Shared X.509 helpers: parsing certificates and keys, the checks roots must pass, SPIFFE ID
//! syntax, and the post-issuance self-check.

use std::net::{Ipv4Addr, Ipv6Addr};

use rcgen::{DistinguishedName, DnType, DnValue, Issuer, KeyPair};
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::x509::X509Name;

use crate::encoding::{PemBlock, pem_one, pkcs8_from_traditional};
use crate::{CaError, CaRoot};

/// The PEM labels a certificate may come under.
pub(crate) const CERT_LABELS: &[&str] = &["CERTIFICATE", "X509 CERTIFICATE", "TRUSTED CERTIFICATE"];

/// Decodes the one certificate in `pem` to DER.
pub(crate) fn cert_der(pem: &str, what: &str) -> Result<Vec<u8>, CaError> {
    Ok(pem_one(pem, what, CERT_LABELS)?.der)
}

/// Parses a DER certificate; trailing bytes are an error.
pub(crate) fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, CaError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CaError::Parse {
        what: what.to_string(),
        reason: format!("not a valid X.509 certificate: {e}"),
    })?;
    if !rest.is_empty() {
        return Err(CaError::Parse {
            what: what.to_string(),
            reason: format!("{} trailing bytes after the certificate", rest.len()),
        });
    }
    Ok(cert)
}

/// `(notBefore, notAfter)` in seconds since the epoch.
pub(crate) fn validity(cert: &X509Certificate<'_>) -> (i64, i64) {
    let v = cert.validity();
    (v.not_before.timestamp(), v.not_after.timestamp())
}

/// Errors unless `now` is within the certificate's validity period.
pub(crate) fn check_valid_at(
    cert: &X509Certificate<'_>,
    now: i64,
    what: &str,
) -> Result<(), CaError> {
    let (not_before, not_after) = validity(cert);
    if now > not_after {
        return Err(CaError::Expired {
            what: what.to_string(),
            not_after,
            now,
        });
    }
    if now < not_before {
        return Err(CaError::NotYetValid {
            what: what.to_string(),
            not_before,
            now,
        });
    }
    Ok(())
}

/// Errors unless the certificate is a CA (basicConstraints CA:TRUE) whose key usage, if
/// present, allows signing certificates.
pub(crate) fn require_ca(cert: &X509Certificate<'_>, what: &str) -> Result<(), CaError> {
    let not_ca = |reason: &str| CaError::NotCa {
        what: what.to_string(),
        reason: reason.to_string(),
    };
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(Some(_)) => return Err(not_ca("basicConstraints has CA:FALSE")),
        Ok(None) => return Err(not_ca("it has no basicConstraints extension")),
        Err(e) => return Err(not_ca(&format!("basicConstraints is malformed: {e}"))),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => Err(CaError::Unsuitable {
            what: what.to_string(),
            reason: format!(
                "key usage ({}) does not include keyCertSign, so it may not sign certificates",
                ku.value
            ),
        }),
        Ok(_) => Ok(()),
        Err(e) => Err(CaError::Parse {
            what: what.to_string(),
            reason: format!("keyUsage is malformed: {e}"),
        }),
    }
}

/// The subjectKeyIdentifier, if the certificate has one.
pub(crate) fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(kid) => Some(kid.0.to_vec()),
            _ => None,
        })
}

/// Every subjectAltName entry, described as `URI:…`, `DNS:…`, `IP:…`, `email:…`.
pub(crate) fn san_entries(cert: &X509Certificate<'_>, what: &str) -> Result<Vec<String>, CaError> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => Ok(san.value.general_names.iter().map(describe_name).collect()),
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(CaError::Parse {
            what: what.to_string(),
            reason: format!("subjectAltName is malformed: {e}"),
        }),
    }
}

/// The URI subjectAltNames of a certificate.
pub(crate) fn uri_sans(cert: &X509Certificate<'_>, what: &str) -> Result<Vec<String>, CaError> {
    Ok(san_entries(cert, what)?
        .into_iter()
        .filter_map(|e| e.strip_prefix("URI:").map(str::to_string))
        .collect())
}

/// A subjectAltName entry as OpenSSL prints it (`URI:…`, `DNS:…`, `IP:…`, `email:…`).
pub(crate) fn describe_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(s) => format!("URI:{s}"),
        GeneralName::DNSName(s) => format!("DNS:{s}"),
        GeneralName::RFC822Name(s) => format!("email:{s}"),
        GeneralName::IPAddress(b) => match b.len() {
            4 => {
                let mut octets = [0u8; 4];
                octets.copy_from_slice(b);
                format!("IP:{}", Ipv4Addr::from(octets))
            }
            16 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(b);
                format!("IP:{}", Ipv6Addr::from(octets))
            }
            _ => format!("{name}"),
        },
        GeneralName::DirectoryName(dn) => format!("DirName:{dn}"),
        other => format!("{other}"),
    }
}

/// A root's private key, parsed and checked against its certificate. Accepts PKCS#8
/// (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`); the latter two are
/// wrapped in PKCS#8 using the certificate's algorithm identifier.
pub(crate) fn load_key(
    key_pem: &str,
    cert: &X509Certificate<'_>,
    what: &str,
) -> Result<KeyPair, CaError> {
    let key_err = |reason: String| CaError::PrivateKey {
        what: what.to_string(),
        reason,
    };
    let PemBlock { label, der } = pem_one(
        key_pem,
        what,
        &[
            "PRIVATE KEY",
            "EC PRIVATE KEY",
            "RSA PRIVATE KEY",
            "ENCRYPTED PRIVATE KEY",
        ],
    )?;
    let pkcs8 = match label.as_str() {
        "PRIVATE KEY" => der,
        "ENCRYPTED PRIVATE KEY" => {
            return Err(key_err(
                "the key is encrypted; supply it decrypted (PKCS#8, SEC1 or PKCS#1 PEM)".into(),
            ));
        }
        _ => pkcs8_from_traditional(&der, cert.public_key().raw).ok_or_else(|| {
            key_err("cannot wrap the key: the certificate's public key info is malformed".into())
        })?,
    };
    let key = KeyPair::try_from(pkcs8.as_slice()).map_err(|e| {
        key_err(format!(
            "cannot load {label} (supported: ECDSA P-256/P-384, Ed25519, RSA): {e}"
        ))
    })?;
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return Err(CaError::KeyMismatch {
            what: what.to_string(),
        });
    }
    Ok(key)
}

/// A root ready to sign: its certificate and its private key, checked against each other.
pub(crate) struct Signer {
    /// DER of the root certificate.
    pub cert_der: Vec<u8>,
    pub key: KeyPair,
    /// Names the root in errors, e.g. `root 3f2a9c01d4e5b6a7 certificate`.
    pub what: String,
}

impl Signer {
    /// Loads `root` for signing at `now`: it must have a key matching its certificate, be a CA
    /// and be valid at `now`. `label` names it in errors (`root 3f2a…`, `old root 3f2a…`).
    pub(crate) fn load(root: &CaRoot, now: i64, label: &str) -> Result<Signer, CaError> {
        let what = format!("{label} certificate");
        if root.private_key.trim().is_empty() {
            return Err(CaError::MissingPrivateKey {
                root_id: short_id(root),
            });
        }
        let cert_der = cert_der(&root.root_cert, &what)?;
        let cert = parse_cert(&cert_der, &what)?;
        require_ca(&cert, &what)?;
        check_valid_at(&cert, now, &what)?;
        let key = load_key(&root.private_key, &cert, &format!("{label} private key"))?;
        Ok(Signer {
            cert_der,
            key,
            what,
        })
    }

    /// The parsed certificate.
    pub(crate) fn cert(&self) -> Result<X509Certificate<'_>, CaError> {
        parse_cert(&self.cert_der, &self.what)
    }

    /// An rcgen issuer for this root: its subject as the issuer name, its subjectKeyIdentifier
    /// as the authorityKeyIdentifier of what it signs.
    pub(crate) fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, CaError> {
        Issuer::from_ca_cert_der(&self.cert_der.as_slice().into(), &self.key).map_err(|e| {
            CaError::Unsuitable {
                what: self.what.clone(),
                reason: format!("cannot use its subject name as an issuer name: {e}"),
            }
        })
    }
}

/// The first 16 hex digits of a root's id, or `(no id)`.
pub(crate) fn short_id(root: &CaRoot) -> String {
    let id: String = root.id.chars().take(16).collect();
    if id.is_empty() {
        "(no id)".to_string()
    } else {
        id
    }
}

/// `root <short id>`, how errors name a root record.
pub(crate) fn root_label(root: &CaRoot) -> String {
    format!("root {}", short_id(root))
}

/// Checks a certificate this crate just issued, the way a path-building verifier will: its
/// issuer name must equal the signer's subject name byte for byte, and its signature must
/// verify with the signer's public key.
pub(crate) fn check_issued(
    issued_der: &[u8],
    issuer: &X509Certificate<'_>,
    issuer_what: &str,
) -> Result<(), CaError> {
    let issued = parse_cert(issued_der, "issued certificate")?;
    if issued.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(CaError::Unsuitable {
            what: issuer_what.to_string(),
            reason: format!(
                "its subject name ({}) cannot be reproduced byte for byte as an issuer name \
                 (multi-valued RDNs, repeated attributes or unusual string types), so \
                 certificates it signed would not chain to it",
                issuer.subject()
            ),
        });
    }
    issued
        .verify_signature(Some(issuer.public_key()))
        .map_err(|e| CaError::Unsuitable {
            what: issuer_what.to_string(),
            reason: format!("a certificate it signed does not verify with its public key: {e}"),
        })
}

/// The subject of `name` as an rcgen distinguished name, keeping attribute order and string
/// types so it encodes to the same bytes. Multi-valued RDNs are refused; anything else that
/// would not round-trip is caught by [`check_issued`].
pub(crate) fn dn_from_name(name: &X509Name<'_>, what: &str) -> Result<DistinguishedName, CaError> {
    let err = |reason: String| CaError::Unsuitable {
        what: what.to_string(),
        reason: format!("cannot copy its subject name ({name}): {reason}"),
    };
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(err("multi-valued or empty RDNs are not supported".into()));
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| err(format!("attribute type {} is too large", attr.attr_type())))?
            .collect();
        let data = attr.attr_value().data;
        let text = || {
            std::str::from_utf8(data)
                .map_err(|_| err(format!("attribute {} is not valid text", attr.attr_type())))
        };
        let bad = |e: rcgen::Error| err(format!("attribute {}: {e}", attr.attr_type()));
        let value = match attr.attr_value().header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?.to_string()),
            Tag::PrintableString => DnValue::PrintableString(text()?.try_into().map_err(bad)?),
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(bad)?),
            Tag::T61String => DnValue::TeletexString(text()?.try_into().map_err(bad)?),
            Tag::BmpString => DnValue::BmpString(
                rcgen::string::BmpString::from_utf16be(data.to_vec()).map_err(bad)?,
            ),
            Tag::UniversalString => DnValue::UniversalString(
                rcgen::string::UniversalString::from_utf32be(data.to_vec()).map_err(bad)?,
            ),
            other => {
                return Err(err(format!(
                    "attribute {} has unsupported string type {other}",
                    attr.attr_type()
                )));
            }
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

/// Checks a SPIFFE trust domain: 1–255 of lowercase letters, digits, `.`, `-`, `_`.
pub(crate) fn validate_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("is empty".into());
    }
    if td.len() > 255 {
        return Err(format!(
            "is {} characters long; at most 255 are allowed",
            td.len()
        ));
    }
    if let Some(c) = td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(format!(
            "contains {c:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
        ));
    }
    Ok(())
}

/// Splits a workload SPIFFE ID into trust domain and path segments, checking the syntax of
/// the SPIFFE standard (scheme `spiffe`, no port, user info, query or fragment, non-empty
/// path segments of letters, digits, `.`, `-`, `_`, none of them `.` or `..`).
pub(crate) fn parse_spiffe_id(id: &str) -> Result<(&str, Vec<&str>), CaError> {
    let err = |reason: String| CaError::SpiffeId {
        id: id.to_string(),
        reason,
    };
    if id.len() > 2048 {
        return Err(err(format!(
            "is {} bytes long; at most 2048 are allowed",
            id.len()
        )));
    }
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| err("must start with \"spiffe://\"".into()))?;
    let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
    validate_trust_domain(td).map_err(|r| err(format!("trust domain {r}")))?;
    if path.is_empty() {
        return Err(err(
            "has no path; a workload ID looks like spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>"
                .into(),
        ));
    }
    let segments: Vec<&str> = path.split('/').collect();
    for segment in &segments {
        if segment.is_empty() {
            return Err(err("has an empty path segment".into()));
        }
        if *segment == "." || *segment == ".." {
            return Err(err(format!("has a {segment:?} path segment")));
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(err(format!(
                "path contains {c:?}; only letters, digits, '.', '-' and '_' are allowed"
            )));
        }
    }
    Ok((td, segments))
}

/// The trust domain a root declares with a `spiffe://<trust-domain>` URI SAN, if it has one.
pub(crate) fn root_trust_domain(
    cert: &X509Certificate<'_>,
    what: &str,
) -> Result<Option<String>, CaError> {
    Ok(uri_sans(cert, what)?.into_iter().find_map(|uri| {
        uri.strip_prefix("spiffe://")
            .map(|rest| rest.split('/').next().unwrap_or_default().to_string())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_id_syntax() {
        let (td, segs) = parse_spiffe_id("spiffe://td.flotilla/ns/default/dc/dc1/svc/web").unwrap();
        assert_eq!(td, "td.flotilla");
        assert_eq!(segs.last(), Some(&"web"));
        for (bad, needle) in [
            ("http://td/ns/x", "must start with"),
            ("spiffe://TD/ns/x", "trust domain contains 'T'"),
            ("spiffe://td", "has no path"),
            ("spiffe://td/ns//svc", "empty path segment"),
            ("spiffe://td/ns/../svc", "\"..\" path segment"),
            ("spiffe://td/ns/x?y", "path contains '?'"),
            ("spiffe://td:8080/ns/x", "trust domain contains ':'"),
        ] {
            let err = parse_spiffe_id(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
