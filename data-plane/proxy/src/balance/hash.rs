//! The request hash that feeds ring hash and Maglev, from the cluster's hash policies.
//!
//! Values are hashed with XXH3-64, a specified algorithm: the same request hashes the same in
//! every snapshot, process and release, so affinity survives config swaps and restarts.

use std::net::{IpAddr, SocketAddr};

use http::header::COOKIE;
use http::{HeaderMap, HeaderName, Uri};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::config::{HashPolicy, HashSource};

/// Hashes bytes; stable across processes and releases.
pub(super) fn stable_hash(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// Hashes an endpoint address with a seed (Maglev's offset and skip use two seeds). The address
/// is canonical (an IPv4-mapped IPv6 address hashes as the IPv4 one) and its bytes, not its text,
/// are hashed.
pub(super) fn hash_addr(addr: SocketAddr, seed: u64) -> u64 {
    let mut bytes = [0u8; 18];
    let len = match addr.ip().to_canonical() {
        IpAddr::V4(ip) => {
            bytes[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            bytes[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    bytes[len..len + 2].copy_from_slice(&addr.port().to_be_bytes());
    xxh3_64_with_seed(&bytes[..len + 2], seed)
}

/// Envoy's combination of policy hashes: rotate the running hash left by one, xor the new one.
fn combine(acc: Option<u64>, hash: u64) -> u64 {
    match acc {
        None => hash,
        Some(acc) => acc.rotate_left(1) ^ hash,
    }
}

/// The hash of one request under `policies`, evaluated in order: the values found are hashed and
/// combined, and evaluation stops after a `terminal` policy that found a value. `None` when no
/// policy found a value (the balancer then picks at random).
///
/// A header with several values hashes all of them in order; a cookie comes from the `Cookie`
/// headers (the first one of that name; surrounding double quotes are stripped); a query
/// parameter from the URI's query (the first of that name, compared and hashed as sent, not
/// percent-decoded; `?key` alone counts as an empty value). The source IP hashes its canonical
/// bytes.
pub fn request_hash(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    uri: &Uri,
    peer: IpAddr,
) -> Option<u64> {
    let mut acc = None;
    for policy in policies {
        let hash = match &policy.source {
            HashSource::Header(name) => header_hash(headers, name),
            HashSource::Cookie(name) => cookie(headers, name).map(stable_hash),
            HashSource::QueryParameter(name) => query_parameter(uri, name).map(stable_hash),
            HashSource::SourceIp => Some(match peer.to_canonical() {
                IpAddr::V4(ip) => stable_hash(&ip.octets()),
                IpAddr::V6(ip) => stable_hash(&ip.octets()),
            }),
        };
        if let Some(hash) = hash {
            acc = Some(combine(acc, hash));
            if policy.terminal {
                break;
            }
        }
    }
    acc
}

fn header_hash(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    headers.get_all(name).iter().fold(None, |acc, value| {
        Some(combine(acc, stable_hash(value.as_bytes())))
    })
}

/// The value of cookie `name` in the request's `Cookie` headers (`a=1; b=2`).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let (key, value) = split_once(pair, b'=')?;
            (key.trim_ascii() == name.as_bytes()).then(|| unquote(value.trim_ascii()))
        })
}

fn split_once(bytes: &[u8], separator: u8) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == separator)?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

fn unquote(value: &[u8]) -> &[u8] {
    match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    }
}

/// The value of query parameter `name` (`?a=1&b=2`).
fn query_parameter<'a>(uri: &'a Uri, name: &str) -> Option<&'a [u8]> {
    uri.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use http::HeaderValue;

    use super::*;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));

    fn policy(source: HashSource, terminal: bool) -> HashPolicy {
        HashPolicy { source, terminal }
    }

    fn header(name: &'static str) -> HashSource {
        HashSource::Header(HeaderName::from_static(name))
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn uri(s: &str) -> Uri {
        s.parse().expect("test URI")
    }

    #[test]
    fn no_policy_or_no_value_gives_none() {
        let h = headers(&[]);
        assert_eq!(request_hash(&[], &h, &uri("/"), PEER), None);
        let policies = [
            policy(header("x-user"), false),
            policy(HashSource::Cookie("session".into()), false),
            policy(HashSource::QueryParameter("user".into()), true),
        ];
        assert_eq!(request_hash(&policies, &h, &uri("/?other=1"), PEER), None);
    }

    #[test]
    fn header_values_hash_stably() {
        let p = [policy(header("x-user"), false)];
        let a = request_hash(&p, &headers(&[("x-user", "alice")]), &uri("/"), PEER);
        let a2 = request_hash(&p, &headers(&[("x-user", "alice")]), &uri("/x"), PEER);
        let b = request_hash(&p, &headers(&[("x-user", "bob")]), &uri("/"), PEER);
        assert_eq!(a, Some(stable_hash(b"alice")));
        assert_eq!(a, a2);
        assert_ne!(a, b);
        // Several values: all of them count.
        let both = request_hash(
            &p,
            &headers(&[("x-user", "alice"), ("x-user", "bob")]),
            &uri("/"),
            PEER,
        );
        assert!(both.is_some());
        assert_ne!(both, a);
    }

    #[test]
    fn cookie_is_parsed_from_cookie_headers() {
        let p = [policy(HashSource::Cookie("session".into()), false)];
        let h = headers(&[
            ("cookie", "a=1"),
            ("cookie", "theme=dark; session=abc ; b=2"),
        ]);
        assert_eq!(
            request_hash(&p, &h, &uri("/"), PEER),
            Some(stable_hash(b"abc"))
        );
        let quoted = headers(&[("cookie", "session=\"abc\"")]);
        assert_eq!(
            request_hash(&p, &quoted, &uri("/"), PEER),
            Some(stable_hash(b"abc"))
        );
        // A cookie whose name merely ends with the wanted one does not match.
        let other = headers(&[("cookie", "xsession=abc")]);
        assert_eq!(request_hash(&p, &other, &uri("/"), PEER), None);
    }

    #[test]
    fn query_parameter_is_read_from_the_uri() {
        let p = [policy(HashSource::QueryParameter("user".into()), false)];
        let h = headers(&[]);
        assert_eq!(
            request_hash(&p, &h, &uri("/a?x=1&user=42&user=43"), PEER),
            Some(stable_hash(b"42"))
        );
        assert_eq!(
            request_hash(&p, &h, &uri("http://svc/a?user"), PEER),
            Some(stable_hash(b""))
        );
        assert_eq!(request_hash(&p, &h, &uri("/a?username=1"), PEER), None);
        assert_eq!(request_hash(&p, &h, &uri("/a"), PEER), None);
    }

    #[test]
    fn source_ip_is_canonical() {
        let p = [policy(HashSource::SourceIp, false)];
        let h = headers(&[]);
        let v4 = request_hash(&p, &h, &uri("/"), PEER);
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("test IP");
        assert_eq!(v4, Some(stable_hash(&[10, 1, 2, 3])));
        assert_eq!(request_hash(&p, &h, &uri("/"), mapped), v4);
        let other: IpAddr = "10.1.2.4".parse().expect("test IP");
        assert_ne!(request_hash(&p, &h, &uri("/"), other), v4);
    }

    #[test]
    fn values_combine_until_a_terminal_policy_matches() {
        let h = headers(&[("x-user", "alice")]);
        let header_only = Some(stable_hash(b"alice"));
        let ip_only = Some(stable_hash(&[10, 1, 2, 3]));

        // Terminal header found: the source IP is not consulted.
        let terminal = [
            policy(header("x-user"), true),
            policy(HashSource::SourceIp, false),
        ];
        assert_eq!(request_hash(&terminal, &h, &uri("/"), PEER), header_only);
        // Terminal header missing: evaluation goes on to the source IP.
        assert_eq!(
            request_hash(&terminal, &headers(&[]), &uri("/"), PEER),
            ip_only
        );
        // Not terminal: both values are combined.
        let both = [
            policy(header("x-user"), false),
            policy(HashSource::SourceIp, false),
        ];
        let combined = request_hash(&both, &h, &uri("/"), PEER);
        assert_eq!(
            combined,
            Some(stable_hash(b"alice").rotate_left(1) ^ stable_hash(&[10, 1, 2, 3]))
        );
        assert_ne!(combined, header_only);
        assert_ne!(combined, ip_only);
    }
}
