//! Header rewriting for proxied HTTP: hop-by-hop stripping and `x-forwarded-*`.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `x-forwarded-for`
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-host`
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `x-forwarded-proto`
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1). A `static`: a
/// `const` array would be built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` is one of [`HOP_BY_HOP`]: one string match instead of nine comparisons.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers, including any named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Usually there are none: one pass over the names instead of a lookup per hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Appends the client's address to `x-forwarded-for` and sets `x-forwarded-host` (the host the
/// client asked for) and `x-forwarded-proto` (the scheme it used to reach this proxy).
pub fn set_forwarded(headers: &mut HeaderMap, peer: SocketAddr, host: Option<&str>, proto: &str) {
    let mut xff = Vec::with_capacity(48);
    for previous in headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        xff.extend_from_slice(previous.as_bytes());
        xff.extend_from_slice(b", ");
    }
    push_ip(&mut xff, peer.ip());
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)) {
        Ok(v) => {
            headers.insert(X_FORWARDED_FOR, v);
        }
        Err(_) => {
            headers.remove(&X_FORWARDED_FOR);
        }
    }
    // Usually `host` is the request's own Host header: share its bytes instead of copying.
    let forwarded_host = host.and_then(|h| {
        headers
            .get(header::HOST)
            .filter(|v| v.as_bytes() == h.as_bytes())
            .cloned()
            .or_else(|| HeaderValue::from_str(h).ok())
    });
    match forwarded_host {
        Some(h) => headers.insert(X_FORWARDED_HOST, h),
        None => headers.remove(X_FORWARDED_HOST),
    };
    let proto = match proto {
        "http" => HeaderValue::from_static("http"),
        "https" => HeaderValue::from_static("https"),
        other => match HeaderValue::from_str(other) {
            Ok(v) => v,
            Err(_) => return,
        },
    };
    headers.insert(X_FORWARDED_PROTO, proto);
}

/// Appends `ip` as text: IPv4 digit by digit (the common case, without `core::fmt`), IPv6
/// through its `Display`.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn ip_addresses_as_text() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.99.100.9",
            "::1",
            "fe80::1:2",
        ] {
            let mut out = Vec::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(String::from_utf8(out).unwrap(), ip);
        }
    }

    #[test]
    fn hop_by_hop_names_match_the_list() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in ["host", "content-length", "x-upgrade", "tee", "connections"] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        set_forwarded(
            &mut h,
            "10.0.0.9:5555".parse().unwrap(),
            Some("a.example:8080"),
            "http",
        );
        assert_eq!(h[&X_FORWARDED_FOR], "1.2.3.4, 10.0.0.9");
        assert_eq!(h[&X_FORWARDED_HOST], "a.example:8080");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
    }
}
