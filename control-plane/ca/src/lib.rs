//! The mesh's certificate authority: the roots every proxy trusts and the short-lived SPIFFE
//! leaf certificates workloads present to each other (Consul Connect's built-in CA, in Rust).
//!
//! # Roles
//!
//! * **Root** ([`generate_root`], [`load_root`]): a self-signed CA certificate plus its private
//!   key, kept as a [`CaRoot`] record in the server's state. The certificate (never the key) is
//!   the trust bundle proxies verify peers against. Roots are ECDSA P-256 when Flotilla makes
//!   them; an operator may bring their own with [`load_root`].
//! * **Leaf** ([`sign_leaf`]): what a proxy asks for with a certificate signing request (CSR).
//!   The CSR carries the workload's public key and the one SPIFFE ID it wants
//!   (`spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>`); the server decides which ID the
//!   caller is entitled to and passes it here, and the CA signs only that ID, with the active
//!   root. Leaves are valid for both TLS client and server authentication, since every mesh hop
//!   is mutual TLS.
//! * **Cross-signed intermediate** ([`cross_sign`]): during root rotation, the new root's
//!   public key and subject signed by the old root. Leaves signed by the new root are sent with
//!   it as an intermediate ([`SignedLeaf::intermediates_pem`]), so a peer whose trust bundle
//!   still holds only the old root accepts them, while peers that already have the new root
//!   stop at it. The old root stays in the bundle until every leaf it signed has expired.
//!
//! All times are seconds since the Unix epoch, passed in by the caller (`now`), so behaviour
//! is reproducible and testable. Certificates and keys travel as PEM strings, the same shape
//! the [`CaRoot`] record stores.
//!
//! Every certificate this crate issues is checked before it is returned: its issuer name must
//! be byte-for-byte the signer's subject name and its signature must verify with the signer's
//! public key, which is exactly what a path-building verifier (rustls-webpki in the data plane)
//! relies on.

mod encoding;
mod error;
mod leaf;
mod root;
mod state;
#[cfg(test)]
mod tests;
mod x509;

pub use error::CaError;
pub use flotilla_types::CaRoot;
pub use leaf::{SignedLeaf, sign_leaf, spiffe_id_of};
pub use root::{ROOT_NAME, cross_sign, generate_root, load_root};
pub use state::{
    DEFAULT_LEAF_TTL, PRUNE_GRACE, ROOT_VALIDITY, bootstrap, leaf_ttl, prune, rotate, with_leaf_ttl,
};
