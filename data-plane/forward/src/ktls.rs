//! Kernel TLS detection.

use std::path::Path;

/// The file that lists the TCP upper-layer protocols the kernel offers.
pub const TCP_AVAILABLE_ULP: &str = "/proc/sys/net/ipv4/tcp_available_ulp";

/// Whether the kernel can do TLS record processing (kTLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ktls {
    /// The `tls` upper-layer protocol is available.
    Available,
    /// Not available; the reason says why, for the log.
    Unavailable(String),
}

/// Detects kTLS from [`TCP_AVAILABLE_ULP`]: `tls` listed means [`Ktls::Available`].
pub fn detect_ktls() -> Ktls {
    detect_ktls_at(Path::new(TCP_AVAILABLE_ULP))
}

/// [`detect_ktls`] reading the list of upper-layer protocols from `path`.
pub fn detect_ktls_at(path: &Path) -> Ktls {
    match std::fs::read_to_string(path) {
        Ok(list) => {
            if list.split_whitespace().any(|ulp| ulp == "tls") {
                Ktls::Available
            } else {
                Ktls::Unavailable(format!(
                    "kernel TLS ULP not loaded: {} lists {:?}",
                    path.display(),
                    list.trim()
                ))
            }
        }
        Err(e) => Ktls::Unavailable(format!(
            "kernel TLS ULP unknown: cannot read {}: {e}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(content: Option<&str>, check: impl FnOnce(Ktls)) {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("flotilla-forward-ktls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tcp_available_ulp");
        if let Some(content) = content {
            std::fs::write(&path, content).unwrap();
        }
        check(detect_ktls_at(&path));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_listed_is_available() {
        with_file(Some("espintcp mptcp tls\n"), |k| {
            assert_eq!(k, Ktls::Available)
        });
        with_file(Some("tls\n"), |k| assert_eq!(k, Ktls::Available));
    }

    #[test]
    fn tls_missing_is_unavailable_with_reason() {
        with_file(Some("mptcp\n"), |k| match k {
            Ktls::Unavailable(reason) => {
                assert!(reason.contains("kernel TLS ULP not loaded"), "{reason}");
                assert!(reason.contains("lists \"mptcp\""), "{reason}");
            }
            Ktls::Available => panic!("mptcp only must not be Available"),
        });
        // A name that merely contains "tls" is not the tls ULP.
        with_file(Some("notls mptcp\n"), |k| {
            assert!(matches!(k, Ktls::Unavailable(_)))
        });
    }

    #[test]
    fn missing_file_is_unavailable_with_its_own_reason() {
        with_file(None, |k| match k {
            Ktls::Unavailable(reason) => assert!(reason.contains("cannot read"), "{reason}"),
            Ktls::Available => panic!("a missing file must not be Available"),
        });
    }
}
