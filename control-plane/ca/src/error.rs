//! The one error type. Every message names the input that is wrong (which PEM, which field,
//! which value) and, where it helps, what was expected instead.

use crate::encoding::fmt_time;

/// What went wrong in the CA. `what` fields name the input, e.g. `root certificate`,
/// `root private key`, `certificate signing request`, `root 3f2a… certificate`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The text is not the PEM expected: no block, the wrong label, several blocks where one is
    /// needed, or undecodable base64.
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },

    /// The PEM decoded, but the DER inside is not a valid certificate, CSR or key structure.
    #[error("{what}: cannot parse: {reason}")]
    Parse { what: String, reason: String },

    /// A root (or the signer of a cross-signed certificate) is not a CA certificate.
    #[error("{what}: not a CA certificate ({reason})")]
    NotCa { what: String, reason: String },

    /// A CA certificate that cannot serve as a Flotilla root for another reason, e.g. its key
    /// usage forbids signing certificates or its subject name cannot be reproduced exactly.
    #[error("{what}: {reason}")]
    Unsuitable { what: String, reason: String },

    /// The private key PEM is unusable: wrong label, encrypted, or an unsupported algorithm.
    #[error("{what}: {reason}")]
    PrivateKey { what: String, reason: String },

    /// The private key is fine but belongs to another certificate.
    #[error(
        "{what}: key does not match certificate (the key's public key differs from the \
         certificate's subject public key)"
    )]
    KeyMismatch { what: String },

    /// The certificate's `notAfter` is before `now`.
    #[error("{what}: expired at {} (now is {})", fmt_time(*not_after), fmt_time(*now))]
    Expired {
        what: String,
        not_after: i64,
        now: i64,
    },

    /// The certificate's `notBefore` is after `now`.
    #[error("{what}: not yet valid: valid from {} (now is {})", fmt_time(*not_before), fmt_time(*now))]
    NotYetValid {
        what: String,
        not_before: i64,
        now: i64,
    },

    /// The root has no private key (e.g. a record that went through [`crate::CaRoot::public`]),
    /// so it cannot sign.
    #[error("root {root_id}: has no private key, so it cannot sign")]
    MissingPrivateKey { root_id: String },

    /// The CSR's self-signature does not verify with the public key it carries: it was altered
    /// after signing, or never signed by that key.
    #[error(
        "certificate signing request: signature does not verify with the request's own public \
         key ({reason})"
    )]
    CsrSignature { reason: String },

    /// The CSR asks for names other than the one SPIFFE ID the caller may have.
    #[error(
        "certificate signing request asks for {}; only URI:{allowed} may be requested \
         (exactly one URI SAN and no other names)",
        describe_requested(requested)
    )]
    CsrNames {
        /// What the CSR asked for, e.g. `["URI:spiffe://td/ns/default/dc/dc1/svc/db", "DNS:db"]`.
        requested: Vec<String>,
        /// The SPIFFE ID the caller is entitled to.
        allowed: String,
    },

    /// The CSR's public key algorithm cannot be used for a leaf.
    #[error(
        "certificate signing request: unsupported public key ({reason}); use ECDSA P-256 or \
         P-384, Ed25519 or RSA"
    )]
    CsrKey { reason: String },

    /// A SPIFFE ID that is malformed or outside the root's trust domain.
    #[error("SPIFFE ID {id:?}: {reason}")]
    SpiffeId { id: String, reason: String },

    /// A trust domain that SPIFFE does not allow (lowercase letters, digits, `.`, `-`, `_`).
    #[error("trust domain {value:?}: {reason}")]
    TrustDomain { value: String, reason: String },

    /// A lifetime or time that cannot be encoded or makes no sense (zero TTL, past year 9999,
    /// an empty validity window).
    #[error("{what}: {reason}")]
    Validity { what: String, reason: String },

    /// A certificate that should carry exactly one SPIFFE URI SAN carries none or several.
    #[error("{what}: has {} URI SAN(s) ({}); expected exactly one SPIFFE ID", found.len(), describe_found(found))]
    UriSans { what: String, found: Vec<String> },

    /// rcgen refused to build or sign a certificate.
    #[error("{context}: {source}")]
    Rcgen {
        context: String,
        #[source]
        source: rcgen::Error,
    },

    /// The system random number generator failed (serial numbers, keys).
    #[error("system random number generator failed while generating {what}")]
    Random { what: &'static str },
}

fn describe_requested(requested: &[String]) -> String {
    if requested.is_empty() {
        "no subject alternative names".to_string()
    } else {
        requested.join(", ")
    }
}

fn describe_found(found: &[String]) -> String {
    if found.is_empty() {
        "none".to_string()
    } else {
        found.join(", ")
    }
}
