//! Cross-entry checks of Consul config entries, as Consul makes them on write: routers and
//! splitters need an L7 protocol (from the service's service-defaults, `tcp` when there is none)
//! and the subsets they send to must exist in the destination's service-resolver. Changing or
//! deleting the service-defaults or service-resolver a router or splitter depends on is refused
//! the same way, naming the dependent entry. Pure functions of the [`State`]; the HTTP API runs
//! them inside `Store::apply_with`, so check and write are atomic.

use flotilla_types::{
    ConfigEntry, KIND_SERVICE_DEFAULTS, KIND_SERVICE_RESOLVER, KIND_SERVICE_ROUTER,
    KIND_SERVICE_SPLITTER, L7_PROTOCOLS,
};
use imbl::OrdMap;
use std::sync::Arc;

use crate::State;

type Entries = OrdMap<String, Arc<ConfigEntry>>;

/// Problems writing `entry` would cause, one message each (empty when it is fine).
pub fn config_entry_write_conflicts(state: &State, entry: &ConfigEntry) -> Vec<String> {
    let mut next = state.config_entries.clone();
    next.insert(entry.key(), Arc::new(entry.clone()));
    conflicts(&next, entry, "writing")
}

/// Problems deleting the entry at `key` would cause.
pub fn config_entry_delete_conflicts(state: &State, key: &str) -> Vec<String> {
    let Some(old) = state.config_entries.get(key).cloned() else {
        return Vec::new();
    };
    let mut next = state.config_entries.clone();
    next.remove(key);
    conflicts(&next, &old, "deleting")
}

fn conflicts(next: &Entries, changed: &ConfigEntry, verb: &str) -> Vec<String> {
    let mut out = Vec::new();
    match changed.kind() {
        KIND_SERVICE_ROUTER | KIND_SERVICE_SPLITTER => {
            if next.contains_key(&changed.key()) {
                out.extend(problems(next, changed));
            }
        }
        _ => {
            // Every router or splitter that involves the changed service.
            for dependent in next.values() {
                let involved = match dependent.kind() {
                    KIND_SERVICE_ROUTER | KIND_SERVICE_SPLITTER => {
                        destinations(dependent)
                            .iter()
                            .any(|(svc, _)| *svc == changed.name())
                            || dependent.name() == changed.name()
                    }
                    _ => false,
                };
                if !involved || dependent.namespace() != changed.namespace() {
                    continue;
                }
                for p in problems(next, dependent) {
                    out.push(format!(
                        "{verb} {} {:?} would invalidate {} {:?}: {p}",
                        changed.kind(),
                        changed.name(),
                        dependent.kind(),
                        dependent.name()
                    ));
                }
            }
        }
    }
    out
}

/// The (service, subset) pairs a router or splitter sends traffic to.
fn destinations(entry: &ConfigEntry) -> Vec<(&str, &str)> {
    let own = entry.name();
    match entry {
        ConfigEntry::ServiceRouter(r) => r
            .routes
            .iter()
            .filter_map(|route| route.destination.as_ref())
            .map(|d| {
                let svc = if d.service.is_empty() {
                    own
                } else {
                    d.service.as_str()
                };
                (svc, d.service_subset.as_str())
            })
            .collect(),
        ConfigEntry::ServiceSplitter(s) => s
            .splits
            .iter()
            .map(|sp| {
                let svc = if sp.service.is_empty() {
                    own
                } else {
                    sp.service.as_str()
                };
                (svc, sp.service_subset.as_str())
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn protocol(next: &Entries, ns: &str, service: &str) -> String {
    match next
        .get(&ConfigEntry::key_of(KIND_SERVICE_DEFAULTS, ns, service))
        .map(|e| &**e)
    {
        Some(ConfigEntry::ServiceDefaults(d)) if !d.protocol.is_empty() => d.protocol.clone(),
        _ => "tcp".to_string(),
    }
}

/// What is wrong with router or splitter `entry` among `next`.
fn problems(next: &Entries, entry: &ConfigEntry) -> Vec<String> {
    let ns = entry.namespace();
    let mut out = Vec::new();
    let mut services = vec![entry.name()];
    for (svc, _) in destinations(entry) {
        if !services.contains(&svc) {
            services.push(svc);
        }
    }
    for svc in services {
        let p = protocol(next, ns, svc);
        if !L7_PROTOCOLS.contains(&p.as_str()) {
            out.push(format!(
                "{} {:?} needs service {svc:?} to use protocol http, http2 or grpc, but its \
                 protocol is {p:?} (set Protocol in its service-defaults)",
                entry.kind(),
                entry.name()
            ));
        }
    }
    for (svc, subset) in destinations(entry) {
        if subset.is_empty() {
            continue;
        }
        let resolver = next
            .get(&ConfigEntry::key_of(KIND_SERVICE_RESOLVER, ns, svc))
            .map(|e| &**e);
        let known = matches!(resolver, Some(ConfigEntry::ServiceResolver(r)) if r.subsets.contains_key(subset));
        if !known {
            out.push(format!(
                "{} {:?} sends traffic to subset {subset:?} of service {svc:?}, which its \
                 service-resolver does not define",
                entry.kind(),
                entry.name()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Op;
    use flotilla_types::*;

    fn put(state: &mut State, entry: ConfigEntry) {
        let index = state.index + 1;
        state.apply(vec![Op::PutConfigEntry(entry)], index);
    }

    fn defaults(protocol: &str) -> ConfigEntry {
        ConfigEntry::ServiceDefaults(ServiceDefaults {
            name: "web".into(),
            protocol: protocol.into(),
            ..Default::default()
        })
    }

    fn splitter() -> ConfigEntry {
        ConfigEntry::ServiceSplitter(ServiceSplitter {
            name: "web".into(),
            splits: vec![
                ServiceSplit {
                    weight: 90.0,
                    service_subset: "v1".into(),
                    ..Default::default()
                },
                ServiceSplit {
                    weight: 10.0,
                    service_subset: "v2".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
    }

    fn resolver(subsets: &[&str]) -> ConfigEntry {
        ConfigEntry::ServiceResolver(ServiceResolver {
            name: "web".into(),
            subsets: subsets
                .iter()
                .map(|s| (s.to_string(), ServiceResolverSubset::default()))
                .collect(),
            ..Default::default()
        })
    }

    #[test]
    fn splitter_needs_l7_protocol_and_subsets() {
        let mut s = State::default();
        let p = config_entry_write_conflicts(&s, &splitter());
        assert!(p[0].contains("its protocol is \"tcp\""), "{p:?}");
        put(&mut s, defaults("http"));
        let p = config_entry_write_conflicts(&s, &splitter());
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("subset \"v1\" of service \"web\""), "{p:?}");
        put(&mut s, resolver(&["v1", "v2"]));
        assert!(config_entry_write_conflicts(&s, &splitter()).is_empty());
        put(&mut s, splitter());

        // The dependents are protected.
        let p = config_entry_write_conflicts(&s, &defaults("tcp"));
        assert!(
            p[0].starts_with(
                "writing service-defaults \"web\" would invalidate service-splitter \"web\""
            ),
            "{p:?}"
        );
        let p = config_entry_write_conflicts(&s, &resolver(&["v1"]));
        assert!(p[0].contains("subset \"v2\""), "{p:?}");
        let p = config_entry_delete_conflicts(&s, &resolver(&[]).key());
        assert!(p[0].starts_with("deleting service-resolver"), "{p:?}");
        assert!(config_entry_delete_conflicts(&s, &splitter().key()).is_empty());
    }
}
