//! End-to-end tests with real keys and signatures. Chains are verified with rustls-webpki
//! exactly as the data plane does: `EndEntityCert::verify_for_usage` with the ring algorithms,
//! for both client and server authentication.

use std::time::Duration;

use rcgen::{CertificateParams, DnType, KeyPair, SanType, SignatureAlgorithm};
use rustls::pki_types::{CertificateDer, UnixTime};
use webpki::{ALL_VERIFICATION_ALGS, EndEntityCert, KeyUsage, anchor_from_trusted_cert};
use x509_parser::extensions::ParsedExtension;

use crate::encoding::{pem_encode, pem_one, read_tlv, sha256_hex};
use crate::x509::{cert_der, parse_cert, subject_key_id};
use crate::*;

/// 2025-06-15T15:06:40Z.
const NOW: i64 = 1_750_000_000;
const TD: &str = "td.flotilla";
const WEB: &str = "spiffe://td.flotilla/ns/default/dc/dc1/svc/web";
const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 86_400);
const DAY: Duration = Duration::from_secs(86_400);

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// A CSR (PEM) for `sans` with a fresh key of `alg`, and the key.
fn csr_with(alg: &'static SignatureAlgorithm, sans: Vec<SanType>, cn: &str) -> (String, KeyPair) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (csr, key)
}

fn csr(sans: Vec<SanType>) -> String {
    csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, sans, "workload").0
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from(cert_der(pem, "test certificate").unwrap())
}

/// Verifies `leaf_pem` (+ `intermediates`) against trust anchors `anchors` at `at`, for `usage`.
fn verify_for(
    leaf_pem: &str,
    intermediates: &[String],
    anchors: &[&str],
    at: i64,
    usage: KeyUsage,
) -> Result<(), webpki::Error> {
    let leaf_der = der(leaf_pem);
    let leaf = EndEntityCert::try_from(&leaf_der)?;
    let anchor_ders: Vec<CertificateDer<'static>> = anchors.iter().map(|p| der(p)).collect();
    let anchors = anchor_ders
        .iter()
        .map(anchor_from_trusted_cert)
        .collect::<Result<Vec<_>, _>>()?;
    let intermediates: Vec<CertificateDer<'static>> =
        intermediates.iter().map(|p| der(p)).collect();
    let time = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(at).unwrap()));
    leaf.verify_for_usage(
        ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        time,
        usage,
        None,
        None,
    )
    .map(|_| ())
}

/// Verifies for client auth and for server auth; the first error wins.
fn verify(leaf: &SignedLeaf, anchors: &[&CaRoot], at: i64) -> Result<(), webpki::Error> {
    let anchors: Vec<&str> = anchors.iter().map(|r| r.root_cert.as_str()).collect();
    verify_for(
        &leaf.cert_pem,
        &leaf.intermediates_pem,
        &anchors,
        at,
        KeyUsage::client_auth(),
    )?;
    verify_for(
        &leaf.cert_pem,
        &leaf.intermediates_pem,
        &anchors,
        at,
        KeyUsage::server_auth(),
    )
}

fn sign_web(root: &CaRoot, ttl: Duration, now: i64) -> SignedLeaf {
    sign_leaf(root, &csr(vec![uri(WEB)]), WEB, ttl, now).unwrap()
}

fn has(err: &CaError, needle: &str) -> bool {
    err.to_string().contains(needle)
}

#[test]
fn generated_root_has_the_documented_shape() {
    let root = generate_root(TD, NOW, TEN_YEARS).unwrap();
    assert_eq!(root.name, "Flotilla CA Root Cert");
    assert!(root.active);
    assert_eq!(root.rotated_out_at, 0);
    assert!(root.cross_signed_cert.is_empty());
    assert_eq!(root.not_before, NOW - 60);
    assert_eq!(root.not_after, NOW + TEN_YEARS.as_secs() as i64);
    assert!(root.private_key.starts_with("-----BEGIN PRIVATE KEY-----"));

    let der = cert_der(&root.root_cert, "root").unwrap();
    assert_eq!(root.id, sha256_hex(&der));
    assert_eq!(root.id.len(), 64);
    let cert = parse_cert(&der, "root").unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    let ski = subject_key_id(&cert).unwrap();
    assert_eq!(
        cn,
        format!("Flotilla CA {}", &crate::encoding::hex(&ski)[..8])
    );
    let o = cert
        .subject()
        .iter_organization()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(o, "Flotilla");
    assert_eq!(cert.subject().as_raw(), cert.issuer().as_raw());
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, None);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
    assert_eq!(
        spiffe_id_of(&root.root_cert).unwrap(),
        "spiffe://td.flotilla"
    );
    assert_eq!(cert.validity().not_before.timestamp(), root.not_before);
    assert_eq!(cert.validity().not_after.timestamp(), root.not_after);
    // The serial is 128 bits with the top bit set.
    assert_eq!(cert.serial.bits(), 128);

    // Two roots get different names, which chain building relies on.
    let other = generate_root(TD, NOW, TEN_YEARS).unwrap();
    let other_der = cert_der(&other.root_cert, "root").unwrap();
    let other_cert = parse_cert(&other_der, "root").unwrap();
    assert_ne!(cert.subject().as_raw(), other_cert.subject().as_raw());
}

#[test]
fn leaf_verifies_for_client_and_server_auth() {
    let root = generate_root(TD, NOW, TEN_YEARS).unwrap();
    let leaf = sign_web(&root, Duration::from_secs(72 * 3600), NOW);
    verify(&leaf, &[&root], NOW).unwrap();
    assert_eq!(spiffe_id_of(&leaf.cert_pem).unwrap(), WEB);
    assert_eq!(leaf.spiffe_id, WEB);
    assert!(leaf.intermediates_pem.is_empty());
    assert_eq!(leaf.not_before, NOW - 60);
    assert_eq!(leaf.not_after, NOW + 72 * 3600);

    let root_der = cert_der(&root.root_cert, "root").unwrap();
    let root_cert = parse_cert(&root_der, "root").unwrap();
    let leaf_der = cert_der(&leaf.cert_pem, "leaf").unwrap();
    let cert = parse_cert(&leaf_der, "leaf").unwrap();
    assert_eq!(cert.serial.to_str_radix(16), leaf.serial);
    assert_eq!(leaf.serial.len(), 32);
    assert_eq!(cert.validity().not_before.timestamp(), leaf.not_before);
    assert_eq!(cert.validity().not_after.timestamp(), leaf.not_after);
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(cn, "web");
    assert_eq!(cert.issuer().as_raw(), root_cert.subject().as_raw());
    assert!(!cert.is_ca());
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.any);
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(san.general_names.len(), 1);
    let aki = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.clone(),
            _ => None,
        })
        .unwrap();
    assert_eq!(aki.0, subject_key_id(&root_cert).unwrap().as_slice());

    // Two leaves get different serials.
    let again = sign_web(&root, DAY, NOW);
    assert_ne!(again.serial, leaf.serial);
}

#[test]
fn csr_keys_of_every_supported_curve_are_signed() {
    let root = generate_root(TD, NOW, TEN_YEARS).unwrap();
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let (csr, _) = csr_with(alg, vec![uri(WEB)], "web");
        let leaf = sign_leaf(&root, &csr, WEB, DAY, NOW).unwrap();
        verify(&leaf, &[&root], NOW).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
    }
}

#[test]
fn openssl_csr_is_signed() {
    // openssl req -new -key leafkey.pem -subj /CN=web
    //   -addext subjectAltName=URI:spiffe://td.flotilla/ns/default/dc/dc1/svc/web
    //   -addext keyUsage=digitalSignature -addext extendedKeyUsage=clientAuth
    const OPENSSL_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIIBNjCB3gIBADAOMQwwCgYDVQQDDAN3ZWIwWTATBgcqhkjOPQIBBggqhkjOPQMB
BwNCAATA9QKz9WOhpknyD6gsNVOQqp56d/466NZXEWISuhjfFHJj7GBVZFwcnLK1
j4fmuRJyRvYdahGP0LJr+odDpJSYoG4wbAYJKoZIhvcNAQkOMV8wXTA5BgNVHREE
MjAwhi5zcGlmZmU6Ly90ZC5mbG90aWxsYS9ucy9kZWZhdWx0L2RjL2RjMS9zdmMv
d2ViMAsGA1UdDwQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDAjAKBggqhkjOPQQD
AgNHADBEAiA7OSyKWJWkCUpTPCN0AXL/B+bPYEKvaTQCqNlw17IeRAIgNsyrPOGr
bt3Tig6n5VMT9UfSmEMIJNqJoWjz4ciUOKU=
-----END CERTIFICATE REQUEST-----
";
    let root = generate_root(TD, NOW, TEN_YEARS).unwrap();
    let leaf = sign_leaf(&root, OPENSSL_CSR, WEB, DAY, NOW).unwrap();
    // The CSR asked for clientAuth only; the CA decides, and gives both.
    verify(&leaf, &[&root], NOW).unwrap();
}

#[test]
fn csr_for_another_identity_or_extra_names_is_refused() {
    let root = generate_root(TD, NOW, TEN_YEARS).unwrap();
    let db = "spiffe://td.flotilla/ns/default/dc/dc1/svc/db";

    let err = sign_leaf(&root, &csr(vec![uri(db)]), WEB, DAY, NOW).unwrap_err();
    assert!(matches!(err, CaError::CsrNames { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "certificate signing request asks for URI:{db}; only URI:{WEB} may be requested \
             (exactly one URI SAN and no other names)"
        )
    );

    let extra = csr(vec![
        uri(WEB),
        SanType::DnsName("web.internal".try_into().unwrap()),
    ]);
    let err = sign_leaf(&root, &extra, WEB, DAY, NOW).unwrap_err();
    assert!(
        has(
            &err,
            &format!("asks for URI:{WEB}, DNS:web.internal; only URI:{WEB}")
        ),
        "{err}"
    );

    let two = csr(vec![uri(WEB), uri(db)]);
    let err = sign_leaf(&root, &two, WEB, DAY, NOW).unwrap_err();
    assert!(has(&err, &format!("URI:{WEB}, URI:{db}")), "{err}");

    let ip = csr(vec![uri(WEB), SanType::IpAddress([10, 0, 0, 1].into())]);
    let err = sign_leaf(&root, &ip, WEB, DAY, NOW).unwrap_err();
    assert!(has(&err, "IP:10.0.0.1"), "{err}");

    let none = csr(Vec::new());
    let err = sign_leaf(&root, &none, WEB, DAY, NOW).unwrap_err();
    assert!(has(&err, "asks for no subject alternative names"), "{err}");
}

#[test]
fn garbage_csr_is_refused_with_a_clear_message() {
    let root = generate_root(TD, NOW, TEN_YEARS).unwrap();

    let err = sign_leaf(&root, "not a csr", WEB, DAY, NOW).unwrap_err();
    assert_eq!(
        err.to_string(),
        "certificate signing request: no PEM block found; expected -----BEGIN CERTIFICATE \
         REQUEST-----"
    );

    let junk = pem_encode("CERTIFICATE REQUEST", b"definitely not DER");
    let err = sign_leaf(&root, &junk, WEB, DAY, NOW).unwrap_err();
    assert!(matches!(err, CaError::Parse { .. }), "{err:?}");
    assert!(
        has(
            &err,
            "certificate signing request: cannot parse: not a valid PKCS#10 request"
        ),
        "{err}"
    );

    // A certificate where a CSR belongs.
    let err = sign_leaf(&root, &root.root_cert, WEB, DAY, NOW).unwrap_err();
    assert_eq!(
        err.to_string(),
        "certificate signing request: expected a CERTIFICATE REQUEST PEM block, found CERTIFICATE"
    );
}

#[test]
fn tampered_csr_is_refused() {
    let root = generate_root(TD, NOW, TEN_YEARS).unwrap();
    let (pem, _) = csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, vec![uri(WEB)], "tamper-me");
    let mut der = pem_one(&pem, "csr", &["CERTIFICATE REQUEST"]).unwrap().der;
    // Still well-formed DER, but the signed subject now reads "tamper-ME".
    let at = der.windows(9).position(|w| w == b"tamper-me").unwrap();
    der[at + 7..at + 9].copy_from_slice(b"ME");
    let tampered = pem_encode("CERTIFICATE REQUEST", &der);
    let err = sign_leaf(&root, &tampered, WEB, DAY, NOW).unwrap_err();
    assert!(matches!(err, CaError::CsrSignature { .. }), "{err:?}");
    assert!(has(&err, "signature does not verify"), "{err}");

    // Flipping a bit of the signature itself is caught too.
    let mut der = pem_one(&pem, "csr", &["CERTIFICATE REQUEST"]).unwrap().der;
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = pem_encode("CERTIFICATE REQUEST", &der);
    let err = sign_leaf(&root, &tampered, WEB, DAY, NOW).unwrap_err();
    assert!(matches!(err, CaError::CsrSignature { .. }), "{err:?}");
}

#[test]
fn webpki_enforces_the_leaf_lifetime() {
    let root = generate_root(TD, NOW, TEN_YEARS).unwrap();
    let leaf = sign_web(&root, Duration::from_secs(3600), NOW);
    assert_eq!(leaf.not_after, NOW + 3600);
    verify(&leaf, &[&root], leaf.not_after - 1).unwrap();
    verify(&leaf, &[&root], leaf.not_after).unwrap();
    let err = verify(&leaf, &[&root], leaf.not_after + 1).unwrap_err();
    assert!(matches!(err, webpki::Error::CertExpired { .. }), "{err:?}");
    // Backdated by a tenth of the TTL, capped at 60s, for clock skew.
    verify(&leaf, &[&root], NOW - 60).unwrap();
    let err = verify(&leaf, &[&root], NOW - 61).unwrap_err();
    assert!(
        matches!(err, webpki::Error::CertNotValidYet { .. }),
        "{err:?}"
    );
}

#[test]
fn leaf_lifetime_edges() {
    let root = generate_root(TD, NOW, Duration::from_secs(3600)).unwrap();
    // Clamped to the root's notAfter rather than refused.
    let leaf = sign_web(&root, Duration::from_secs(72 * 3600), NOW);
    assert_eq!(leaf.not_after, root.not_after);
    verify(&leaf, &[&root], root.not_after).unwrap();

    // Backdating: a tenth of the TTL, at least one second.
    assert_eq!(
        sign_web(&root, Duration::from_secs(30), NOW).not_before,
        NOW - 3
    );
    assert_eq!(
        sign_web(&root, Duration::from_secs(5), NOW).not_before,
        NOW - 1
    );
    // Sub-second parts of the TTL are dropped.
    assert_eq!(
        sign_web(&root, Duration::from_millis(1500), NOW).not_after,
        NOW + 1
    );

    let err = sign_leaf(
        &root,
        &csr(vec![uri(WEB)]),
        WEB,
        Duration::from_millis(999),
        NOW,
    )
    .unwrap_err();
    assert!(
        has(&err, "leaf TTL: 999ms is shorter than the 1 second minimum"),
        "{err}"
    );

    // A root past its notAfter no longer signs.
    let err = sign_leaf(&root, &csr(vec![uri(WEB)]), WEB, DAY, root.not_after + 1).unwrap_err();
    assert!(matches!(err, CaError::Expired { .. }), "{err:?}");
    assert!(has(&err, "expired at"), "{err}");
}

#[test]
fn rotation_with_a_cross_signed_intermediate() {
    let old = generate_root(TD, NOW - 30 * 86_400, TEN_YEARS).unwrap();
    let mut new = generate_root(TD, NOW, TEN_YEARS).unwrap();
    let cross = cross_sign(&new, &old, NOW).unwrap();
    new.cross_signed_cert = cross.clone();

    // The cross-signed certificate: new's subject, key and SKI; old's name as issuer, old's SKI
    // as AKI; a CA; valid until the earlier root expiry.
    let cross_der = cert_der(&cross, "cross").unwrap();
    let cross_cert = parse_cert(&cross_der, "cross").unwrap();
    let old_der = cert_der(&old.root_cert, "old").unwrap();
    let old_cert = parse_cert(&old_der, "old").unwrap();
    let new_der = cert_der(&new.root_cert, "new").unwrap();
    let new_cert = parse_cert(&new_der, "new").unwrap();
    assert_eq!(cross_cert.subject().as_raw(), new_cert.subject().as_raw());
    assert_eq!(cross_cert.issuer().as_raw(), old_cert.subject().as_raw());
    assert_eq!(cross_cert.public_key().raw, new_cert.public_key().raw);
    assert_eq!(subject_key_id(&cross_cert), subject_key_id(&new_cert));
    let aki = cross_cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.clone(),
            _ => None,
        })
        .unwrap();
    assert_eq!(Some(aki.0.to_vec()), subject_key_id(&old_cert));
    assert!(cross_cert.basic_constraints().unwrap().unwrap().value.ca);
    assert_eq!(cross_cert.validity().not_before.timestamp(), NOW - 60);
    assert_eq!(
        cross_cert.validity().not_after.timestamp(),
        old.not_after.min(new.not_after)
    );
    cross_cert
        .verify_signature(Some(old_cert.public_key()))
        .unwrap();

    // A leaf from the new root carries the cross-signed certificate...
    let leaf = sign_web(&new, DAY, NOW);
    assert_eq!(leaf.intermediates_pem, vec![cross.clone()]);
    // ...and verifies whatever bundle the peer has.
    verify(&leaf, &[&old], NOW).unwrap();
    verify(&leaf, &[&new], NOW).unwrap();
    verify(&leaf, &[&old, &new], NOW).unwrap();
    verify(&leaf, &[&new, &old], NOW).unwrap();
    // Without the intermediate, an old-only peer cannot build the chain.
    let bare = SignedLeaf {
        intermediates_pem: Vec::new(),
        ..leaf.clone()
    };
    let err = verify(&bare, &[&old], NOW).unwrap_err();
    assert!(matches!(err, webpki::Error::UnknownIssuer), "{err:?}");

    // Leaves the old root signed before the switch still verify against the new bundle.
    let old_leaf = sign_web(&old, DAY, NOW);
    assert!(old_leaf.intermediates_pem.is_empty());
    verify(&old_leaf, &[&old, &new], NOW).unwrap();

    // Another trust domain's CA is not trusted, with or without our cross-signed cert around.
    let other = generate_root("other.flotilla", NOW, TEN_YEARS).unwrap();
    let other_id = "spiffe://other.flotilla/ns/default/dc/dc1/svc/web";
    let foreign = sign_leaf(&other, &csr(vec![uri(other_id)]), other_id, DAY, NOW).unwrap();
    verify(&foreign, &[&other], NOW).unwrap();
    let err = verify(&foreign, &[&old, &new], NOW).unwrap_err();
    assert!(matches!(err, webpki::Error::UnknownIssuer), "{err:?}");
    let with_cross = SignedLeaf {
        intermediates_pem: vec![cross],
        ..foreign
    };
    assert!(verify(&with_cross, &[&old, &new], NOW).is_err());
}

#[test]
fn cross_signing_and_signing_need_private_keys_and_matching_intermediates() {
    let old = generate_root(TD, NOW, TEN_YEARS).unwrap();
    let new = generate_root(TD, NOW, TEN_YEARS).unwrap();
    // Only the old root's key is needed.
    let cross = cross_sign(&new.public(), &old, NOW).unwrap();
    assert!(cross.starts_with("-----BEGIN CERTIFICATE-----"));

    let err = cross_sign(&new, &old.public(), NOW).unwrap_err();
    assert!(matches!(err, CaError::MissingPrivateKey { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "root {}: has no private key, so it cannot sign",
            &old.id[..16]
        )
    );
    let err = sign_leaf(&new.public(), &csr(vec![uri(WEB)]), WEB, DAY, NOW).unwrap_err();
    assert!(matches!(err, CaError::MissingPrivateKey { .. }), "{err:?}");

    // A cross-signed certificate made for a different root is caught, not shipped.
    let mut wrong = new.clone();
    wrong.cross_signed_cert = cross_sign(&old, &new, NOW).unwrap();
    let err = sign_leaf(&wrong, &csr(vec![uri(WEB)]), WEB, DAY, NOW).unwrap_err();
    assert!(
        has(
            &err,
            "cross_signed_cert: does not carry this root's subject"
        ),
        "{err}"
    );

    // An expired old root cannot cross-sign.
    let err = cross_sign(&new, &old, old.not_after + 1).unwrap_err();
    assert!(has(&err, "old root"), "{err}");
    assert!(matches!(err, CaError::Expired { .. }), "{err:?}");
}

#[test]
fn signing_is_limited_to_the_roots_trust_domain() {
    let root = generate_root(TD, NOW, TEN_YEARS).unwrap();
    let foreign = "spiffe://other.flotilla/ns/default/dc/dc1/svc/web";
    let err = sign_leaf(&root, &csr(vec![uri(foreign)]), foreign, DAY, NOW).unwrap_err();
    assert!(matches!(err, CaError::SpiffeId { .. }), "{err:?}");
    assert!(
        has(
            &err,
            "trust domain \"other.flotilla\" is not the signing root's trust domain \"td.flotilla\""
        ),
        "{err}"
    );

    let err = sign_leaf(
        &root,
        &csr(vec![uri(WEB)]),
        "spiffe://td.flotilla",
        DAY,
        NOW,
    )
    .unwrap_err();
    assert!(has(&err, "has no path"), "{err}");
}

#[test]
fn generate_root_validates_its_inputs() {
    let err = generate_root("Bad Domain", NOW, TEN_YEARS).unwrap_err();
    assert!(matches!(err, CaError::TrustDomain { .. }), "{err:?}");
    assert!(
        has(&err, "trust domain \"Bad Domain\": contains 'B'"),
        "{err}"
    );
    let err = generate_root("", NOW, TEN_YEARS).unwrap_err();
    assert!(has(&err, "is empty"), "{err}");
    let err = generate_root(TD, NOW, Duration::ZERO).unwrap_err();
    assert!(
        has(
            &err,
            "root validity: 0ns is shorter than the 1 second minimum"
        ),
        "{err}"
    );
    let err = generate_root(TD, NOW, Duration::from_secs(10_000 * 365 * 86_400)).unwrap_err();
    assert!(has(&err, "root notAfter"), "{err}");
}

#[test]
fn load_root_round_trips_a_generated_root() {
    let root = generate_root(TD, NOW, TEN_YEARS).unwrap();
    let loaded = load_root(&root.root_cert, &root.private_key, NOW).unwrap();
    assert_eq!(loaded.id, root.id);
    assert_eq!(loaded.root_cert, root.root_cert);
    assert_eq!(loaded.name, root.name);
    assert_eq!(
        (loaded.not_before, loaded.not_after),
        (root.not_before, root.not_after)
    );
    assert!(loaded.active);
    assert_eq!(loaded.rotated_out_at, 0);
    assert!(loaded.cross_signed_cert.is_empty());

    // The loaded record signs leaves the original root's bundle accepts.
    let leaf = sign_web(&loaded, DAY, NOW);
    verify(&leaf, &[&root], NOW).unwrap();
}

#[test]
fn load_root_accepts_a_sec1_key() {
    let root = generate_root(TD, NOW, TEN_YEARS).unwrap();
    // Unwrap the PKCS#8 envelope: PrivateKeyInfo { version, algorithm, OCTET STRING { SEC1 } }.
    let pkcs8 = pem_one(&root.private_key, "key", &["PRIVATE KEY"])
        .unwrap()
        .der;
    let info = read_tlv(&pkcs8).unwrap();
    let version = read_tlv(info.contents).unwrap();
    let algorithm = read_tlv(&info.contents[version.whole.len()..]).unwrap();
    let offset = version.whole.len() + algorithm.whole.len();
    let sec1 = read_tlv(&info.contents[offset..]).unwrap().contents;
    let sec1_pem = pem_encode("EC PRIVATE KEY", sec1);

    let loaded = load_root(&root.root_cert, &sec1_pem, NOW).unwrap();
    assert!(
        loaded
            .private_key
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    let leaf = sign_web(&loaded, DAY, NOW);
    verify(&leaf, &[&root], NOW).unwrap();
}

/// An operator's root made with OpenSSL 3: SEC1 key, PrintableString country, UTF8String
/// names, no URI SAN, key usage without digitalSignature.
///
/// openssl ecparam -name prime256v1 -genkey -noout -out key.pem
/// openssl req -x509 -new -key key.pem -days 36500
///   -subj "/C=US/O=Example Corp/OU=Platform/CN=Example Mesh Root"
///   -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
const OPENSSL_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIKyNKH2VvG3xdpwTvsH+okymQZ61zbDBFe7NCH8PbHTioAoGCCqGSM49
AwEHoUQDQgAE2JYC69Gowc42rWXRm26Xojn/SuoSiIDs/p8vXlBv99/gxcxW7l8B
fFsLX06mipL/jjoHIqTSu/+tf4tx0mPoNg==
-----END EC PRIVATE KEY-----
";
const OPENSSL_ROOT: &str = "-----BEGIN CERTIFICATE-----
MIICDjCCAbOgAwIBAgIUaPC2whldKHY4AerdJbNh0+fBLGQwCgYIKoZIzj0EAwIw
UzELMAkGA1UEBhMCVVMxFTATBgNVBAoMDEV4YW1wbGUgQ29ycDERMA8GA1UECwwI
UGxhdGZvcm0xGjAYBgNVBAMMEUV4YW1wbGUgTWVzaCBSb290MCAXDTI2MTEyMTA3
NTIzNFoYDzIxMjYxMDI4MDc1MjM0WjBTMQswCQYDVQQGEwJVUzEVMBMGA1UECgwM
RXhhbXBsZSBDb3JwMREwDwYDVQQLDAhQbGF0Zm9ybTEaMBgGA1UEAwwRRXhhbXBs
ZSBNZXNoIFJvb3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATYlgLr0ajBzjat
ZdGbbpeiOf9K6hKIgOz+ny9eUG/33+DFzFbuXwF8WwtfTqaKkv+OOgcipNK7/61/
i3HSY+g2o2MwYTAdBgNVHQ4EFgQUB2CXLKtLBev0B5CabiLgkb6nEBEwHwYDVR0j
BBgwFoAUB2CXLKtLBev0B5CabiLgkb6nEBEwDwYDVR0TAQH/BAUwAwEB/zAOBgNV
HQ8BAf8EBAMCAQYwCgYIKoZIzj0EAwIDSQAwRgIhANmDEX5aElRN4UlqCwXYF93u
UQqtw9DZJkQYfUkEL6KhAiEAxTzKKW/Ulm7nm5WsPpewMup95UE3sHYhEcYFBoFs
eHU=
-----END CERTIFICATE-----
";

#[test]
fn openssl_root_with_sec1_key_signs_and_rotates() {
    // Valid from 2026-11-21T07:52:34Z for 100 years.
    let now = 1_795_247_554 + 86_400;
    let operator = load_root(OPENSSL_ROOT, OPENSSL_KEY, now).unwrap();
    let leaf = sign_web(&operator, DAY, now);
    verify(&leaf, &[&operator], now).unwrap();

    // Rotating away from it and onto it: the copied subject names must be byte-exact.
    let mut generated = generate_root(TD, now, TEN_YEARS).unwrap();
    generated.cross_signed_cert = cross_sign(&generated, &operator, now).unwrap();
    let leaf = sign_web(&generated, DAY, now);
    verify(&leaf, &[&operator], now).unwrap();

    let mut operator_next = operator.clone();
    operator_next.cross_signed_cert = cross_sign(&operator, &generated, now).unwrap();
    let leaf = sign_web(&operator_next, DAY, now);
    verify(&leaf, &[&generated], now).unwrap();
}

#[test]
fn load_root_rejects_what_cannot_be_a_root() {
    let root = generate_root(TD, NOW, TEN_YEARS).unwrap();

    // A leaf certificate with its own key.
    let (csr_pem, leaf_key) = csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, vec![uri(WEB)], "web");
    let leaf = sign_leaf(&root, &csr_pem, WEB, DAY, NOW).unwrap();
    let err = load_root(&leaf.cert_pem, &leaf_key.serialize_pem(), NOW).unwrap_err();
    assert!(matches!(err, CaError::NotCa { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "root certificate: not a CA certificate (basicConstraints has CA:FALSE)"
    );

    // Another root's key.
    let other = generate_root(TD, NOW, TEN_YEARS).unwrap();
    let err = load_root(&root.root_cert, &other.private_key, NOW).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err:?}");
    assert!(
        has(&err, "root private key: key does not match certificate"),
        "{err}"
    );

    // Expired, and not yet valid.
    let err = load_root(&root.root_cert, &root.private_key, root.not_after + 1).unwrap_err();
    assert!(matches!(err, CaError::Expired { .. }), "{err:?}");
    let expected = format!(
        "root certificate: expired at {} (now is {})",
        crate::encoding::fmt_time(root.not_after),
        crate::encoding::fmt_time(root.not_after + 1)
    );
    assert_eq!(err.to_string(), expected);
    assert!(
        expected.contains("expired at 2035-06-13T15:06:40Z"),
        "{expected}"
    );
    let err = load_root(&root.root_cert, &root.private_key, root.not_before - 1).unwrap_err();
    assert!(matches!(err, CaError::NotYetValid { .. }), "{err:?}");
    assert!(
        has(&err, "root certificate: not yet valid: valid from"),
        "{err}"
    );

    // Inputs swapped, garbage, an encrypted key.
    let err = load_root(&root.private_key, &root.root_cert, NOW).unwrap_err();
    assert!(
        has(
            &err,
            "root certificate: expected a CERTIFICATE PEM block, found PRIVATE KEY"
        ),
        "{err}"
    );
    let err = load_root(&root.root_cert, "", NOW).unwrap_err();
    assert!(
        has(
            &err,
            "root private key: no PEM block found; expected -----BEGIN PRIVATE KEY-----"
        ),
        "{err}"
    );
    let encrypted = pem_encode("ENCRYPTED PRIVATE KEY", &[0x30, 0x00]);
    let err = load_root(&root.root_cert, &encrypted, NOW).unwrap_err();
    assert!(has(&err, "the key is encrypted"), "{err}");
}

#[test]
fn spiffe_id_of_wants_exactly_one_spiffe_uri() {
    let root = generate_root(TD, NOW, TEN_YEARS).unwrap();
    let leaf = sign_web(&root, DAY, NOW);
    assert_eq!(spiffe_id_of(&leaf.cert_pem).unwrap(), WEB);

    let key = KeyPair::generate().unwrap();
    let dns_only = CertificateParams::new(vec!["web.internal".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem();
    let err = spiffe_id_of(&dns_only).unwrap_err();
    assert!(matches!(err, CaError::UriSans { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "certificate: has 0 URI SAN(s) (none); expected exactly one SPIFFE ID"
    );

    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        uri(WEB),
        uri("spiffe://td.flotilla/ns/default/dc/dc1/svc/db"),
    ];
    let two = params.self_signed(&key).unwrap().pem();
    let err = spiffe_id_of(&two).unwrap_err();
    assert!(has(&err, "has 2 URI SAN(s)"), "{err}");
    assert!(has(&err, "svc/web, spiffe://"), "{err}");

    params.subject_alt_names = vec![uri("https://example.com/")];
    let https = params.self_signed(&key).unwrap().pem();
    let err = spiffe_id_of(&https).unwrap_err();
    assert!(has(&err, "https://example.com/"), "{err}");
}
