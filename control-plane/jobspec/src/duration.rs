//! Go's `time.ParseDuration`, which is what Nomad jobspecs use for every duration.

const UNITS: &str = "ns, us, ms, s, m, h";

/// Parse a Go/Nomad duration string (`"10s"`, `"1m30s"`, `"500ms"`, `"1.5h"`, `"0"`) into
/// nanoseconds.
///
/// Accepts what Go's `time.ParseDuration` accepts: an optional sign, then one or more decimal
/// numbers (with an optional fraction), each followed by a unit (`ns`, `us`/`µs`, `ms`, `s`,
/// `m`, `h`). The error message names the value and says what was expected.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let invalid = |why: String| format!("invalid duration {s:?}: {why}");
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid(
            "expected a number followed by a unit, like \"10s\" or \"1m30s\"".to_string(),
        ));
    }
    let limit = if negative {
        u128::from(i64::MAX.unsigned_abs()) + 1
    } else {
        u128::from(i64::MAX.unsigned_abs())
    };
    let too_large = || invalid("out of range (at most about 292 years)".to_string());
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after) = rest.split_at(int_len);
        let (frac_digits, after) = match after.strip_prefix('.') {
            Some(after) => after.split_at(after.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", after),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(invalid(format!(
                "expected a number at {rest:?} (like \"10s\" or \"1m30s\")"
            )));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            "" => {
                return Err(invalid(format!(
                    "missing unit after {:?} (expected one of: {UNITS})",
                    &rest[..rest.len() - after.len()]
                )));
            }
            other => {
                return Err(invalid(format!(
                    "unknown unit {other:?} (expected one of: {UNITS})"
                )));
            }
        };
        let whole = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse::<u128>().map_err(|_| too_large())?
        };
        let mut part = whole.checked_mul(scale).ok_or_else(too_large)?;
        // Fractions beyond nanosecond precision are truncated, as Go does; 20 digits are more
        // than any unit needs and keep the arithmetic below within u128.
        let frac_digits = frac_digits.get(..20).unwrap_or(frac_digits);
        if !frac_digits.is_empty() {
            let frac = frac_digits.parse::<u128>().map_err(|_| too_large())?;
            let denominator = 10u128.pow(u32::try_from(frac_digits.len()).unwrap_or(20));
            part += frac.saturating_mul(scale) / denominator;
        }
        total = total.checked_add(part).ok_or_else(too_large)?;
        if total > limit {
            return Err(too_large());
        }
        rest = after;
    }
    let magnitude = i128::try_from(total).map_err(|_| too_large())?;
    let signed = if negative { -magnitude } else { magnitude };
    i64::try_from(signed).map_err(|_| too_large())
}

/// Formats nanoseconds the way Go prints a `time.Duration` (`1m30s`, `500ms`), for messages.
pub(crate) use flotilla_types::format_go_nanos as format_duration;

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("10s"), Ok(10 * S));
        assert_eq!(parse_duration("1m30s"), Ok(90 * S));
        assert_eq!(parse_duration("500ms"), Ok(S / 2));
        assert_eq!(parse_duration("2h"), Ok(7200 * S));
        assert_eq!(parse_duration("1.5h"), Ok(5400 * S));
        assert_eq!(parse_duration(".5s"), Ok(S / 2));
        assert_eq!(parse_duration("1h2m3s4ms5us6ns"), Ok(3723 * S + 4_005_006));
        assert_eq!(parse_duration("10µs"), Ok(10_000));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("-1s"), Ok(-S));
        assert_eq!(parse_duration("+3m"), Ok(180 * S));
        assert_eq!(parse_duration("2562047h47m16.854775807s"), Ok(i64::MAX));
        assert_eq!(parse_duration("-2562047h47m16.854775808s"), Ok(i64::MIN));
    }

    #[test]
    fn errors_name_the_value() {
        let e = parse_duration("10x").unwrap_err();
        assert_eq!(
            e,
            r#"invalid duration "10x": unknown unit "x" (expected one of: ns, us, ms, s, m, h)"#
        );
        let e = parse_duration("10").unwrap_err();
        assert!(e.contains(r#""10""#) && e.contains("missing unit"), "{e}");
        assert!(parse_duration("").unwrap_err().contains(r#""""#));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("1 s").is_err());
        assert!(parse_duration("-").is_err());
        assert!(parse_duration("2562047h47m16.854775808s").is_err());
        assert!(parse_duration("99999999999999999999999999999999999999999h").is_err());
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(90 * S), "1m30s");
        assert_eq!(format_duration(S / 2), "500ms");
        assert_eq!(format_duration(1500), "1.5us");
        assert_eq!(format_duration(3600 * S), "1h0m0s");
        assert_eq!(format_duration(-2 * S), "-2s");
    }
}
