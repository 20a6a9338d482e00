//! SPIFFE IDs of mesh services and the TLS server names (SNI) that carry them.
//!
//! A service's identity is `spiffe://<trust-domain>/ns/<namespace>/dc/<dc>/svc/<service>`. On
//! the wire, the caller names the identity it wants to reach as the SNI
//! `<service>.<namespace>.<dc>.svc.<trust-domain>`: the inbound side picks the certificate by
//! it, and the caller's verifier checks the peer's certificate carries exactly that ID.

use std::fmt;

/// A parsed mesh identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub datacenter: String,
    pub service: String,
}

/// Why a string is not a mesh SPIFFE ID or server name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a mesh {what}: {problem}")]
pub struct IdError {
    pub what: &'static str,
    pub value: String,
    pub problem: &'static str,
}

fn label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn domain_ok(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(label_ok)
}

impl SpiffeId {
    /// Parses `spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>`.
    pub fn parse(uri: &str) -> Result<SpiffeId, IdError> {
        let err = |problem| IdError {
            what: "SPIFFE ID",
            value: uri.to_string(),
            problem,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| err("must start with spiffe://"))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| err("missing the /ns/…/dc/…/svc/… path"))?;
        let parts: Vec<&str> = path.split('/').collect();
        let [ns_key, ns, dc_key, dc, svc_key, svc] = parts.as_slice() else {
            return Err(err("path must be /ns/<namespace>/dc/<dc>/svc/<service>"));
        };
        if (*ns_key, *dc_key, *svc_key) != ("ns", "dc", "svc") {
            return Err(err("path must be /ns/<namespace>/dc/<dc>/svc/<service>"));
        }
        let id = SpiffeId {
            trust_domain: td.to_ascii_lowercase(),
            namespace: ns.to_string(),
            datacenter: dc.to_string(),
            service: svc.to_string(),
        };
        if !domain_ok(&id.trust_domain) {
            return Err(err("the trust domain is not a DNS name"));
        }
        if ![&id.namespace, &id.datacenter, &id.service]
            .iter()
            .all(|s| label_ok(s))
        {
            return Err(err(
                "namespace, dc and service must be DNS labels (letters, digits, '-')",
            ));
        }
        Ok(id)
    }

    /// The TLS server name naming this identity.
    pub fn server_name(&self) -> String {
        format!(
            "{}.{}.{}.svc.{}",
            self.service, self.namespace, self.datacenter, self.trust_domain
        )
    }

    /// Parses a server name made by [`SpiffeId::server_name`].
    pub fn from_server_name(name: &str) -> Result<SpiffeId, IdError> {
        let err = |problem| IdError {
            what: "server name",
            value: name.to_string(),
            problem,
        };
        let mut it = name.splitn(5, '.');
        let (Some(svc), Some(ns), Some(dc), Some("svc"), Some(td)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return Err(err(
                "expected <service>.<namespace>.<dc>.svc.<trust-domain>",
            ));
        };
        SpiffeId::parse(&format!("spiffe://{td}/ns/{ns}/dc/{dc}/svc/{svc}"))
            .map_err(|_| err("expected <service>.<namespace>.<dc>.svc.<trust-domain>"))
    }

    /// The key local certificates are stored under: `<namespace>/<service>`.
    pub fn service_key(&self) -> String {
        service_key(&self.namespace, &self.service)
    }
}

/// `<namespace>/<service>`.
pub fn service_key(namespace: &str, service: &str) -> String {
    format!("{namespace}/{service}")
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/dc/{}/svc/{}",
            self.trust_domain, self.namespace, self.datacenter, self.service
        )
    }
}

/// The URI SANs of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("unparsable certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The one SPIFFE ID of a DER certificate: exactly one URI SAN, a valid mesh ID.
pub fn spiffe_id_of(der: &[u8]) -> Result<SpiffeId, String> {
    let uris = uri_sans(der)?;
    match uris.as_slice() {
        [one] => SpiffeId::parse(one).map_err(|e| e.to_string()),
        [] => Err("the certificate has no URI SAN (no SPIFFE ID)".to_string()),
        many => Err(format!(
            "the certificate has {} URI SANs ({}); exactly one SPIFFE ID is allowed",
            many.len(),
            many.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_server_name() {
        let id = SpiffeId::parse("spiffe://ab12cd34.flotilla/ns/default/dc/dc1/svc/db").unwrap();
        assert_eq!(id.service, "db");
        let sni = id.server_name();
        assert_eq!(sni, "db.default.dc1.svc.ab12cd34.flotilla");
        assert_eq!(SpiffeId::from_server_name(&sni).unwrap(), id);
        assert_eq!(
            id.to_string(),
            "spiffe://ab12cd34.flotilla/ns/default/dc/dc1/svc/db"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "http://x/ns/a/dc/b/svc/c",
            "spiffe://td",
            "spiffe://td/ns/a/dc/b",
            "spiffe://td/ns/a/dc/b/svc/c/extra",
            "spiffe://td/nx/a/dc/b/svc/c",
            "spiffe://t d/ns/a/dc/b/svc/c",
            "spiffe://td/ns/a/dc/b/svc/c_d",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
        assert!(SpiffeId::from_server_name("db.default.dc1.nope.td").is_err());
        assert!(SpiffeId::from_server_name("db").is_err());
    }
}
