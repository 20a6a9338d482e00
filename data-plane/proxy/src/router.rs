//! Ingress routing: from a request's host and path to a cluster name.
//!
//! `<svc>.service.flotilla` goes straight to cluster `<svc>`; anything else is matched against
//! the snapshot's routes (host equal or route host empty, longest path prefix wins).

use crate::snapshot::Snapshot;

/// Hosts ending in this suffix name a service directly.
pub const SERVICE_DOMAIN_SUFFIX: &str = ".service.flotilla";

/// Lower-cases `raw`, strips a `:port` and a trailing dot. IPv6 literals keep their brackets.
/// Borrows when nothing needs lower-casing (the common case on the request path).
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let raw = raw.trim();
    let host = if raw.starts_with('[') {
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => raw,
        }
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// The cluster a request for `host` (already normalized) and `path` goes to, if any route
/// matches. The cluster itself may not exist.
pub fn resolve<'a>(snapshot: &'a Snapshot, host: &'a str, path: &str) -> Option<&'a str> {
    if let Some(service) = host.strip_suffix(SERVICE_DOMAIN_SUFFIX)
        && !service.is_empty()
    {
        return Some(service);
    }
    snapshot
        .routes()
        .iter()
        .find(|r| (r.host.is_empty() || r.host == host) && path.starts_with(&r.path_prefix))
        .map(|r| r.cluster.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Route;
    use crate::snapshot::ConfigHandle;

    #[test]
    fn normalizes_hosts() {
        assert_eq!(
            normalize_host("Hello.Service.Flotilla:8080"),
            "hello.service.flotilla"
        );
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("10.0.0.1"), "10.0.0.1");
    }

    fn route(host: &str, prefix: &str, cluster: &str) -> Route {
        Route {
            host: host.into(),
            path_prefix: prefix.into(),
            cluster: cluster.into(),
        }
    }

    #[test]
    fn service_host_then_longest_prefix() {
        let h = ConfigHandle::new();
        h.apply_routes(
            "1",
            vec![
                route("", "/", "root"),
                route("", "/api", "api"),
                route("", "/api/v2", "v2"),
                route("shop.example", "/", "shop"),
            ],
        );
        let s = h.load();
        assert_eq!(resolve(&s, "hello.service.flotilla", "/api"), Some("hello"));
        assert_eq!(resolve(&s, "x", "/api/v2/users"), Some("v2"));
        assert_eq!(resolve(&s, "x", "/api/v1"), Some("api"));
        assert_eq!(resolve(&s, "x", "/other"), Some("root"));
        assert_eq!(resolve(&s, "shop.example", "/other"), Some("shop"));
        assert_eq!(resolve(&s, "shop.example", "/api"), Some("api"));
        assert_eq!(resolve(&s, ".service.flotilla", "/x"), Some("root"));
        h.apply_routes("2", vec![route("only.example", "/x", "x")]);
        assert_eq!(resolve(&h.load(), "other", "/x"), None);
    }
}
