//! The mesh's control-plane records: the certificate authority's roots and intentions
//! (Consul's shapes, so `consul connect ca` and `consul intention` users recognise them).

use serde::{Deserialize, Serialize};

/// One CA root certificate (Consul's `CARoot`). The private key never leaves the server: it is
/// skipped when the record is serialized for the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct CaRoot {
    /// Hex SHA-256 of the certificate's DER, which also names it.
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    /// The root certificate, PEM.
    pub root_cert: String,
    /// For a root made by rotation: its public key signed by the previous root, PEM. Leaves
    /// signed by this root carry it as an intermediate, so peers that still only trust the old
    /// root accept them during the overlap.
    pub cross_signed_cert: String,
    /// Private key, PKCS#8 PEM. Never sent to clients (see [`CaRoot::public`]).
    pub private_key: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// Leaves are signed by the one active root.
    pub active: bool,
    /// Seconds since the Unix epoch when this root stopped being active (0 while active). It is
    /// dropped from the trust bundle once every leaf it signed has expired.
    pub rotated_out_at: i64,
}

impl CaRoot {
    /// The record without its private key, as the API and the proxies see it.
    pub fn public(&self) -> CaRoot {
        CaRoot {
            private_key: String::new(),
            ..self.clone()
        }
    }
}

/// The CA's whole state: trust domain, leaf lifetime and roots (active first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct CaState {
    /// The SPIFFE trust domain, e.g. `5f3c1a9e.flotilla`.
    pub trust_domain: String,
    /// Leaf certificate lifetime, nanoseconds.
    #[serde(rename = "LeafCertTTL")]
    pub leaf_cert_ttl: i64,
    pub roots: Vec<CaRoot>,
}

impl CaState {
    /// The root that signs new leaves.
    pub fn active_root(&self) -> Option<&CaRoot> {
        self.roots.iter().find(|r| r.active)
    }
}

/// The SPIFFE ID of a service: `spiffe://<trust-domain>/ns/<namespace>/dc/<dc>/svc/<service>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, datacenter: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/dc/{datacenter}/svc/{service}")
}

/// The service name every node proxy's ingress listener uses as its own identity when it
/// carries ingress traffic to other nodes (Consul's default ingress gateway name).
pub const INGRESS_SERVICE: &str = "ingress-gateway";

/// Allow or deny (Consul's `IntentionAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IntentionAction {
    #[default]
    Allow,
    Deny,
}

impl IntentionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            IntentionAction::Allow => "allow",
            IntentionAction::Deny => "deny",
        }
    }

    /// Parses `allow` or `deny` (any case).
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "allow" => Some(IntentionAction::Allow),
            "deny" => Some(IntentionAction::Deny),
            _ => None,
        }
    }
}

/// Source → destination, allow or deny (Consul's `Intention`). `*` matches any service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Intention {
    #[serde(rename = "ID")]
    pub id: String,
    pub source_name: String,
    pub destination_name: String,
    pub source_ns: String,
    pub destination_ns: String,
    pub action: IntentionAction,
    pub description: String,
    /// Higher wins: exact source and destination beat wildcards (see [`Intention::precedence`]).
    pub precedence: u32,
    pub create_index: u64,
    pub modify_index: u64,
}

/// Matches any service name in an intention.
pub const WILDCARD: &str = "*";

impl Intention {
    /// Consul's precedence: exact→exact 9, `*`→exact 8, exact→`*` 6, `*`→`*` 5.
    pub fn precedence(source: &str, destination: &str) -> u32 {
        match (source == WILDCARD, destination == WILDCARD) {
            (false, false) => 9,
            (true, false) => 8,
            (false, true) => 6,
            (true, true) => 5,
        }
    }

    /// The key intentions are stored and replaced under: one per source/destination pair.
    pub fn key(source: &str, destination: &str) -> String {
        format!("{source}\u{1f}{destination}")
    }

    /// Whether this intention applies to traffic from `source` to `destination`.
    pub fn matches(&self, source: &str, destination: &str) -> bool {
        (self.source_name == WILDCARD || self.source_name == source)
            && (self.destination_name == WILDCARD || self.destination_name == destination)
    }
}

/// The mesh-wide default for traffic no intention matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct MeshConfig {
    /// What happens when no intention matches. Deny unless the operator chooses allow.
    pub default_intention: IntentionAction,
}

/// The decision for `source` → `destination`: the matching intention with the highest
/// precedence, else `default`. `intentions` in any order.
pub fn authorize<'a>(
    intentions: impl IntoIterator<Item = &'a Intention>,
    source: &str,
    destination: &str,
    default: IntentionAction,
) -> (IntentionAction, Option<&'a Intention>) {
    let best = intentions
        .into_iter()
        .filter(|i| i.matches(source, destination))
        .max_by_key(|i| i.precedence);
    match best {
        Some(i) => (i.action, Some(i)),
        None => (default, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ixn(src: &str, dst: &str, action: IntentionAction) -> Intention {
        Intention {
            source_name: src.into(),
            destination_name: dst.into(),
            action,
            precedence: Intention::precedence(src, dst),
            ..Default::default()
        }
    }

    #[test]
    fn exact_beats_wildcard_and_default_applies_otherwise() {
        use IntentionAction::*;
        let all = [
            ixn("*", "db", Deny),
            ixn("web", "db", Allow),
            ixn("*", "*", Allow),
        ];
        assert_eq!(authorize(&all, "web", "db", Deny).0, Allow);
        assert_eq!(authorize(&all, "api", "db", Allow).0, Deny);
        assert_eq!(authorize(&all, "api", "cache", Deny).0, Allow);
        assert_eq!(authorize(&all[..2], "api", "cache", Deny), (Deny, None));
    }

    #[test]
    fn public_root_drops_the_key() {
        let root = CaRoot {
            private_key: "secret".into(),
            root_cert: "cert".into(),
            ..Default::default()
        };
        let public = root.public();
        assert!(public.private_key.is_empty());
        assert_eq!(public.root_cert, "cert");
    }

    #[test]
    fn spiffe_id_shape() {
        assert_eq!(
            spiffe_id("td.flotilla", "default", "dc1", "db"),
            "spiffe://td.flotilla/ns/default/dc/dc1/svc/db"
        );
    }
}
