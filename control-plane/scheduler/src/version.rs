//! Version comparisons for the `version` and `semver` constraint operators.
//!
//! `version` follows HashiCorp's go-version, leniently: `v` prefixes, any number of dotted
//! numeric segments (`5.15.0`, `1.2`), pre-release and build suffixes (`5.15.0-91-generic`), and
//! the operators `=`, `!=`, `>`, `>=`, `<`, `<=`, `~>` joined by commas. Unlike go-version, a
//! version with a pre-release suffix is compared by its numeric core when the constraint has no
//! pre-release, so kernel versions such as `5.15.0-91-generic` satisfy `>= 5.4`.
//!
//! `semver` is strict Semantic Versioning 2.0 (parsed with the `semver` crate): every version must
//! be `MAJOR.MINOR.PATCH[-pre][+build]`, pre-releases order per the spec, build metadata is
//! ignored, and the operators are `=`, `!=`, `>`, `>=`, `<`, `<=`.

use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Pessimistic,
}

/// Split `>= 1.2` into the operator and the rest. A missing operator means `=`.
fn split_op(s: &str, allow_pessimistic: bool) -> Option<(Op, &str)> {
    let s = s.trim();
    let ops: [(&str, Op); 7] = [
        ("~>", Op::Pessimistic),
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("!=", Op::Ne),
        (">", Op::Gt),
        ("<", Op::Lt),
        ("=", Op::Eq),
    ];
    for (text, op) in ops {
        if let Some(rest) = s.strip_prefix(text) {
            if op == Op::Pessimistic && !allow_pessimistic {
                return None;
            }
            return Some((op, rest.trim()));
        }
    }
    Some((Op::Eq, s))
}

/// A go-version style version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lenient {
    /// Numeric segments, at least three (missing ones are zero).
    segments: Vec<u64>,
    /// How many segments the text gave (for `~>`).
    specified: usize,
    pre: String,
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '~' || c == '.'
}

fn parse_lenient(s: &str) -> Option<Lenient> {
    let s = s.trim();
    let s = s.strip_prefix('v').unwrap_or(s);
    let (main, build) = match s.split_once('+') {
        Some((m, b)) => (m, Some(b)),
        None => (s, None),
    };
    if let Some(b) = build
        && (b.is_empty() || !b.chars().all(is_ident_char))
    {
        return None;
    }
    let bytes = main.as_bytes();
    let mut segments = Vec::with_capacity(3);
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        segments.push(main[start..i].parse::<u64>().ok()?);
        // Another segment only if a digit follows the dot.
        if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
            i += 1;
            continue;
        }
        break;
    }
    let rest = &main[i..];
    let pre = if rest.is_empty() {
        String::new()
    } else {
        let p = rest.strip_prefix('-').unwrap_or(rest);
        let first = p.chars().next()?;
        if rest.starts_with('-') {
            if !first.is_ascii_alphanumeric() && first != '-' && first != '~' {
                return None;
            }
        } else if !(first.is_ascii_alphabetic() || first == '-' || first == '~') {
            return None;
        }
        if !p.chars().all(is_ident_char) {
            return None;
        }
        p.to_string()
    };
    let specified = segments.len();
    while segments.len() < 3 {
        segments.push(0);
    }
    Some(Lenient {
        segments,
        specified,
        pre,
    })
}

fn compare_segments(a: &[u64], b: &[u64]) -> Ordering {
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        match x.cmp(&y) {
            Ordering::Equal => continue,
            o => return o,
        }
    }
    Ordering::Equal
}

fn compare_pre_part(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let an = a.parse::<u64>().ok();
    let bn = b.parse::<u64>().ok();
    if a.is_empty() {
        return if bn.is_some() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    if b.is_empty() {
        return if an.is_some() {
            Ordering::Greater
        } else {
            Ordering::Less
        };
    }
    match (an, bn) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

fn compare_pre(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        _ => {}
    }
    let pa: Vec<&str> = a.split('.').collect();
    let pb: Vec<&str> = b.split('.').collect();
    for i in 0..pa.len().max(pb.len()) {
        let x = pa.get(i).copied().unwrap_or("");
        let y = pb.get(i).copied().unwrap_or("");
        match compare_pre_part(x, y) {
            Ordering::Equal => continue,
            o => return o,
        }
    }
    Ordering::Equal
}

impl Lenient {
    fn compare(&self, other: &Lenient) -> Ordering {
        match compare_segments(&self.segments, &other.segments) {
            Ordering::Equal => compare_pre(&self.pre, &other.pre),
            o => o,
        }
    }

    /// The version without its pre-release suffix.
    fn core(&self) -> Lenient {
        Lenient {
            pre: String::new(),
            ..self.clone()
        }
    }
}

/// Parsed `version` constraints, e.g. `>= 1.2, < 2.0`.
#[derive(Debug, Clone)]
pub(crate) struct VersionConstraints(Vec<(Op, Lenient)>);

impl VersionConstraints {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let (op, v) = split_op(part, true)?;
            out.push((op, parse_lenient(v)?));
        }
        Some(Self(out))
    }

    /// Whether `version` satisfies every constraint. Unparseable versions never do.
    pub(crate) fn matches(&self, version: &str) -> bool {
        let Some(v) = parse_lenient(version) else {
            return false;
        };
        self.0.iter().all(|(op, c)| {
            // Lenient: compare the numeric core unless the constraint names a pre-release.
            let v = if c.pre.is_empty() && !v.pre.is_empty() {
                v.core()
            } else {
                v.clone()
            };
            if !c.pre.is_empty() && !v.pre.is_empty() && c.segments != v.segments {
                // go-version: a pre-release constraint only matches pre-releases of its core.
                return matches!(op, Op::Ne);
            }
            let ord = v.compare(c);
            match op {
                Op::Eq => ord == Ordering::Equal,
                Op::Ne => ord != Ordering::Equal,
                Op::Gt => ord == Ordering::Greater,
                Op::Ge => ord != Ordering::Less,
                Op::Lt => ord == Ordering::Less,
                Op::Le => ord != Ordering::Greater,
                Op::Pessimistic => pessimistic(&v, c),
            }
        })
    }
}

/// `~> 1.2` allows `>= 1.2, < 2.0`; `~> 1.2.3` allows `>= 1.2.3, < 1.3.0`.
fn pessimistic(v: &Lenient, c: &Lenient) -> bool {
    if !c.pre.is_empty() && v.pre.is_empty() {
        return false;
    }
    if v.compare(c) == Ordering::Less {
        return false;
    }
    let cs = c.specified.max(1);
    if cs > v.segments.len() {
        return false;
    }
    for i in 0..cs.saturating_sub(1) {
        if v.segments[i] != c.segments[i] {
            return false;
        }
    }
    c.segments[cs - 1] <= v.segments[cs - 1]
}

/// Parsed `semver` constraints, e.g. `>= 1.2.0, < 2.0.0-0`.
#[derive(Debug, Clone)]
pub(crate) struct SemverConstraints(Vec<(Op, semver::Version)>);

impl SemverConstraints {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let (op, v) = split_op(part, false)?;
            out.push((op, semver::Version::parse(v).ok()?));
        }
        Some(Self(out))
    }

    /// Whether `version` (strict semver) satisfies every constraint.
    pub(crate) fn matches(&self, version: &str) -> bool {
        let Ok(v) = semver::Version::parse(version.trim()) else {
            return false;
        };
        self.0.iter().all(|(op, c)| {
            let ord = v.cmp_precedence(c);
            match op {
                Op::Eq => ord == Ordering::Equal,
                Op::Ne => ord != Ordering::Equal,
                Op::Gt => ord == Ordering::Greater,
                Op::Ge => ord != Ordering::Less,
                Op::Lt => ord == Ordering::Less,
                Op::Le => ord != Ordering::Greater,
                Op::Pessimistic => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(c: &str, version: &str) -> bool {
        VersionConstraints::parse(c).is_some_and(|c| c.matches(version))
    }

    fn s(c: &str, version: &str) -> bool {
        SemverConstraints::parse(c).is_some_and(|c| c.matches(version))
    }

    #[test]
    fn lenient_versions() {
        assert!(v(">= 1.2, < 2.0", "1.2"));
        assert!(v(">= 1.2, < 2.0", "v1.9.9"));
        assert!(!v(">= 1.2, < 2.0", "2.0.0"));
        assert!(v(">= 5.4", "5.15.0-91-generic"));
        assert!(!v(">= 5.16", "5.15.0-91-generic"));
        assert!(v("= 1.2", "1.2.0"));
        assert!(v("1.2.0", "1.2"));
        assert!(v("!= 1.2", "1.3"));
        assert!(v("~> 1.2", "1.9"));
        assert!(!v("~> 1.2", "2.0"));
        assert!(v("~> 1.2.3", "1.2.9"));
        assert!(!v("~> 1.2.3", "1.3.0"));
        assert!(v("> 1.0.0-beta", "1.0.0-rc1"));
        assert!(!v(">= 1.0", "not a version"));
        assert!(VersionConstraints::parse(">= nope").is_none());
    }

    #[test]
    fn strict_semver() {
        assert!(s(">= 1.2.0, < 2.0.0", "1.3.0"));
        assert!(s(">= 1.2.0", "1.3.0-beta.1"));
        assert!(s("< 1.3.0", "1.3.0-beta.1"));
        assert!(s("= 1.0.0", "1.0.0+build.5"));
        assert!(s("!= 1.0.0", "1.0.1"));
        assert!(!s(">= 1.2.0", "1.2"), "strict: MAJOR.MINOR.PATCH required");
        assert!(SemverConstraints::parse(">= 1.2").is_none());
        assert!(SemverConstraints::parse("~> 1.2.0").is_none());
    }
}
