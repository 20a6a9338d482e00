//! Byte-level helpers: PEM in and out, the few DER structures built by hand, times, hex,
//! hashes and random serial numbers.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::SecureRandom as _;
use x509_parser::time::ASN1Time;

use crate::CaError;

/// 9999-12-31T23:59:59Z, the last instant X.509 can encode.
pub(crate) const MAX_X509_TIME: i64 = 253_402_300_799;

/// One decoded PEM block.
#[derive(Debug)]
pub(crate) struct PemBlock {
    pub label: String,
    pub der: Vec<u8>,
}

/// Every PEM block in `input`, in order. Text outside blocks is ignored (OpenSSL's "Bag
/// Attributes", comments). Errors describe the first malformed block.
fn pem_blocks(input: &str) -> Result<Vec<PemBlock>, String> {
    let mut blocks = Vec::new();
    let mut lines = input.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut closed = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            if line.starts_with("-----") {
                return Err(format!(
                    "{label} block ends with {line:?}, expected {end:?}"
                ));
            }
            if line.contains(':') {
                return Err(format!(
                    "{label} block has PEM headers ({line:?}); encrypted PEM is not supported"
                ));
            }
            body.push_str(line);
        }
        if !closed {
            return Err(format!("{label} block is not terminated by {end:?}"));
        }
        let der = BASE64
            .decode(body.as_bytes())
            .map_err(|e| format!("{label} block is not valid base64: {e}"))?;
        if der.is_empty() {
            return Err(format!("{label} block is empty"));
        }
        blocks.push(PemBlock {
            label: label.to_string(),
            der,
        });
    }
    Ok(blocks)
}

/// The one block of `input` whose label is one of `accepted` (the first is the canonical one,
/// used in messages). Blocks with other labels are ignored as long as exactly one accepted
/// block is present.
pub(crate) fn pem_one(input: &str, what: &str, accepted: &[&str]) -> Result<PemBlock, CaError> {
    let canonical = accepted.first().copied().unwrap_or("CERTIFICATE");
    let pem_err = |reason: String| CaError::Pem {
        what: what.to_string(),
        reason,
    };
    let blocks = pem_blocks(input).map_err(pem_err)?;
    if blocks.is_empty() {
        return Err(pem_err(format!(
            "no PEM block found; expected -----BEGIN {canonical}-----"
        )));
    }
    let found: Vec<String> = blocks.iter().map(|b| b.label.clone()).collect();
    let mut matching: Vec<PemBlock> = blocks
        .into_iter()
        .filter(|b| accepted.contains(&b.label.as_str()))
        .collect();
    match matching.len() {
        0 => Err(pem_err(format!(
            "expected a {canonical} PEM block, found {}",
            found.join(", ")
        ))),
        1 => Ok(matching.remove(0)),
        n => Err(pem_err(format!(
            "holds {n} {canonical} PEM blocks; expected exactly one"
        ))),
    }
}

/// PEM-encodes `der` under `label`, 64 base64 characters a line, newline-terminated.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// One DER TLV: its tag, its contents and the whole encoding. Only
/// single-byte tags, which is all the structures handled here use.
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    pub contents: &'a [u8],
    pub whole: &'a [u8],
}

/// Reads one DER TLV from the front of `input`.
pub(crate) fn read_tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, after_tag) = input.split_first()?;
    let (&first, after_len) = after_tag.split_first()?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || after_len.len() < n {
            return None;
        }
        let len = after_len[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    if input.len() < end {
        return None;
    }
    Some(Tlv {
        tag,
        contents: &input[header..end],
        whole: &input[..end],
    })
}

/// Encodes one DER TLV.
pub(crate) fn write_tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
    out
}

/// Wraps a "traditional" private key (SEC1 `EC PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`) in a
/// PKCS#8 `PrivateKeyInfo`, taking the algorithm identifier (including the EC curve) from the
/// matching certificate's `SubjectPublicKeyInfo`. `None` if the SPKI is malformed.
pub(crate) fn pkcs8_from_traditional(key_der: &[u8], spki_der: &[u8]) -> Option<Vec<u8>> {
    const SEQUENCE: u8 = 0x30;
    const OCTET_STRING: u8 = 0x04;
    let spki = read_tlv(spki_der).filter(|t| t.tag == SEQUENCE)?;
    let algorithm = read_tlv(spki.contents).filter(|t| t.tag == SEQUENCE)?;
    let mut contents = vec![0x02, 0x01, 0x00]; // version 0
    contents.extend_from_slice(algorithm.whole);
    contents.extend_from_slice(&write_tlv(OCTET_STRING, key_der));
    Some(write_tlv(SEQUENCE, &contents))
}

/// `secs` as an X.509 time; `what` names the field for the error.
pub(crate) fn asn1_time(secs: i64, what: &str) -> Result<ASN1Time, CaError> {
    if secs > MAX_X509_TIME {
        return Err(CaError::Validity {
            what: what.to_string(),
            reason: format!("{secs} is after 9999-12-31T23:59:59Z, the last time X.509 can encode"),
        });
    }
    ASN1Time::from_timestamp(secs).map_err(|e| CaError::Validity {
        what: what.to_string(),
        reason: format!("{secs} is not a representable time: {e}"),
    })
}

/// `secs` as RFC 3339 UTC (`2025-01-31T12:00:00Z`), or `unix <secs>` if out of range.
pub(crate) fn fmt_time(secs: i64) -> String {
    match ASN1Time::from_timestamp(secs) {
        Ok(t) => {
            let dt = t.to_datetime();
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                dt.year(),
                u8::from(dt.month()),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second()
            )
        }
        Err(_) => format!("unix {secs}"),
    }
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex SHA-256 of `der`: a certificate's [`crate::CaRoot::id`].
pub(crate) fn sha256_hex(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// A random 128-bit serial number: 16 random bytes with the top bit set, so the number is
/// positive, nonzero and always exactly 128 bits (127 of them random; RFC 5280 and the CA/B
/// baseline ask for at least 64).
pub(crate) fn random_serial() -> Result<[u8; 16], CaError> {
    let mut serial = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| CaError::Random {
            what: "a serial number",
        })?;
    serial[0] |= 0x80;
    Ok(serial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_tlv_lengths() {
        for len in [1usize, 127, 128, 255, 256, 70_000] {
            let der = write_tlv(0x04, &vec![7u8; len]);
            let tlv = read_tlv(&der).unwrap();
            assert_eq!(tlv.contents.len(), len);
            assert_eq!(tlv.whole.len(), der.len());
            let pem = pem_encode("THING", &der);
            let block = pem_one(&pem, "thing", &["THING"]).unwrap();
            assert_eq!(block.der, der);
        }
    }

    #[test]
    fn pem_errors_name_the_problem() {
        let err = pem_one("hello", "root certificate", &["CERTIFICATE"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "root certificate: no PEM block found; expected -----BEGIN CERTIFICATE-----"
        );
        let key = pem_encode("PRIVATE KEY", &[1, 2, 3]);
        let err = pem_one(&key, "root certificate", &["CERTIFICATE"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "root certificate: expected a CERTIFICATE PEM block, found PRIVATE KEY"
        );
        let two = format!(
            "{}{}",
            pem_encode("CERTIFICATE", &[1]),
            pem_encode("CERTIFICATE", &[2])
        );
        let err = pem_one(&two, "root certificate", &["CERTIFICATE"]).unwrap_err();
        assert!(err.to_string().contains("holds 2 CERTIFICATE PEM blocks"));
        let bad = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = pem_one(bad, "root certificate", &["CERTIFICATE"]).unwrap_err();
        assert!(err.to_string().contains("not valid base64"), "{err}");
    }

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_time(1_735_689_600), "2025-01-01T00:00:00Z");
        assert!(asn1_time(MAX_X509_TIME + 1, "leaf notAfter").is_err());
    }
}
