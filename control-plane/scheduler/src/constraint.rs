//! Constraints and affinities: target interpolation against a node, and the operators.
//!
//! Targets are parsed once per evaluation into [`Target`]s; regular expressions and version
//! constraints with a literal right-hand side are compiled once per evaluation, and ones whose
//! right-hand side is interpolated are compiled once per distinct value ([`Caches`]).

use std::collections::HashMap;

use flotilla_types::{Constraint, Node};
use regex::Regex;

use crate::version::{SemverConstraints, VersionConstraints};

/// One side of a constraint: a literal or a reference to something about the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Literal(String),
    NodeId,
    NodeName,
    Datacenter,
    Class,
    Region,
    Pool,
    Attr(String),
    Meta(String),
    /// `${…}` naming nothing we know: never set.
    Unknown,
}

impl Target {
    pub(crate) fn parse(s: &str) -> Self {
        let Some(inner) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) else {
            return Target::Literal(s.to_string());
        };
        match inner {
            "node.unique.id" => Target::NodeId,
            "node.unique.name" => Target::NodeName,
            "node.datacenter" => Target::Datacenter,
            "node.class" => Target::Class,
            "node.region" => Target::Region,
            "node.pool" => Target::Pool,
            _ => {
                if let Some(k) = inner.strip_prefix("attr.") {
                    Target::Attr(k.to_string())
                } else if let Some(k) = inner.strip_prefix("meta.") {
                    Target::Meta(k.to_string())
                } else {
                    Target::Unknown
                }
            }
        }
    }

    /// The value on `node`, or `None` when it is not set.
    pub(crate) fn resolve<'a>(&'a self, node: &'a Node) -> Option<&'a str> {
        match self {
            Target::Literal(s) => Some(s),
            Target::NodeId => Some(&node.id),
            Target::NodeName => Some(&node.name),
            Target::Datacenter => Some(&node.datacenter),
            Target::Class => Some(&node.node_class),
            // Nodes carry no region or pool yet: everything is in Nomad's defaults.
            Target::Region => Some("global"),
            Target::Pool => Some("default"),
            Target::Attr(k) => node.attributes.get(k).map(String::as_str),
            Target::Meta(k) => node.meta.get(k).map(String::as_str),
            Target::Unknown => None,
        }
    }

    /// Whether the value is unique to a node, so results cannot be shared between nodes of one
    /// computed class (Nomad's "escaped" constraints).
    pub(crate) fn is_unique(&self) -> bool {
        match self {
            Target::NodeId | Target::NodeName => true,
            Target::Attr(k) | Target::Meta(k) => k.starts_with("unique."),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operator {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Regexp,
    Version,
    Semver,
    SetContainsAll,
    SetContainsAny,
    IsSet,
    IsNotSet,
    DistinctHosts,
    DistinctProperty,
    Unknown,
}

impl Operator {
    pub(crate) fn parse(s: &str) -> Self {
        match s.trim() {
            "" | "=" | "==" | "is" => Operator::Eq,
            "!=" | "not" => Operator::Ne,
            "<" => Operator::Lt,
            "<=" => Operator::Le,
            ">" => Operator::Gt,
            ">=" => Operator::Ge,
            "regexp" => Operator::Regexp,
            "version" => Operator::Version,
            "semver" => Operator::Semver,
            "set_contains" | "set_contains_all" => Operator::SetContainsAll,
            "set_contains_any" => Operator::SetContainsAny,
            "is_set" => Operator::IsSet,
            "is_not_set" => Operator::IsNotSet,
            "distinct_hosts" => Operator::DistinctHosts,
            "distinct_property" => Operator::DistinctProperty,
            _ => Operator::Unknown,
        }
    }
}

/// A right-hand side compiled ahead of time (when it is a literal).
#[derive(Debug, Clone)]
enum Compiled {
    None,
    Regex(Option<Regex>),
    Version(Option<VersionConstraints>),
    Semver(Option<SemverConstraints>),
}

/// Regexes and version constraints compiled from interpolated right-hand sides, per evaluation.
#[derive(Debug, Default)]
pub(crate) struct Caches {
    regex: HashMap<String, Option<Regex>>,
    version: HashMap<String, Option<VersionConstraints>>,
    semver: HashMap<String, Option<SemverConstraints>>,
}

/// A constraint (or an affinity's condition) ready to check against nodes.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub l: Target,
    pub r: Target,
    pub op: Operator,
    /// How it reads in placement metrics: `${node.class} = large` (Nomad's `Constraint.String`).
    pub text: String,
    compiled: Compiled,
}

impl Check {
    pub(crate) fn new(l_target: &str, operand: &str, r_target: &str) -> Self {
        let l = Target::parse(l_target);
        let r = Target::parse(r_target);
        let op = Operator::parse(operand);
        let compiled = match (&r, op) {
            (Target::Literal(s), Operator::Regexp) => Compiled::Regex(Regex::new(s).ok()),
            (Target::Literal(s), Operator::Version) => {
                Compiled::Version(VersionConstraints::parse(s))
            }
            (Target::Literal(s), Operator::Semver) => Compiled::Semver(SemverConstraints::parse(s)),
            _ => Compiled::None,
        };
        let text = format!("{l_target} {operand} {r_target}")
            .trim()
            .to_string();
        Self {
            l,
            r,
            op,
            text,
            compiled,
        }
    }

    pub(crate) fn of(c: &Constraint) -> Self {
        Self::new(&c.l_target, &c.operand, &c.r_target)
    }

    /// Whether the result depends on values unique to each node.
    pub(crate) fn is_unique(&self) -> bool {
        self.l.is_unique() || self.r.is_unique()
    }

    /// Check the node. `distinct_*` operators are not checked here and always pass.
    pub(crate) fn matches(&self, node: &Node, caches: &mut Caches) -> bool {
        let l = self.l.resolve(node);
        let r = self.r.resolve(node);
        match self.op {
            Operator::DistinctHosts | Operator::DistinctProperty => true,
            Operator::Eq => l.is_some() && l == r,
            Operator::Ne => l != r,
            Operator::Lt | Operator::Le | Operator::Gt | Operator::Ge => match (l, r) {
                (Some(l), Some(r)) => check_order(self.op, l, r),
                _ => false,
            },
            Operator::IsSet => l.is_some(),
            Operator::IsNotSet => l.is_none(),
            Operator::SetContainsAll => match (l, r) {
                (Some(l), Some(r)) => r.split(',').all(|want| set_has(l, want.trim())),
                _ => false,
            },
            Operator::SetContainsAny => match (l, r) {
                (Some(l), Some(r)) => r.split(',').any(|want| set_has(l, want.trim())),
                _ => false,
            },
            Operator::Regexp => {
                let (Some(l), Some(r)) = (l, r) else {
                    return false;
                };
                match &self.compiled {
                    Compiled::Regex(re) => re.as_ref().is_some_and(|re| re.is_match(l)),
                    _ => caches
                        .regex
                        .entry(r.to_string())
                        .or_insert_with(|| Regex::new(r).ok())
                        .as_ref()
                        .is_some_and(|re| re.is_match(l)),
                }
            }
            Operator::Version => {
                let (Some(l), Some(r)) = (l, r) else {
                    return false;
                };
                match &self.compiled {
                    Compiled::Version(c) => c.as_ref().is_some_and(|c| c.matches(l)),
                    _ => caches
                        .version
                        .entry(r.to_string())
                        .or_insert_with(|| VersionConstraints::parse(r))
                        .as_ref()
                        .is_some_and(|c| c.matches(l)),
                }
            }
            Operator::Semver => {
                let (Some(l), Some(r)) = (l, r) else {
                    return false;
                };
                match &self.compiled {
                    Compiled::Semver(c) => c.as_ref().is_some_and(|c| c.matches(l)),
                    _ => caches
                        .semver
                        .entry(r.to_string())
                        .or_insert_with(|| SemverConstraints::parse(r))
                        .as_ref()
                        .is_some_and(|c| c.matches(l)),
                }
            }
            Operator::Unknown => false,
        }
    }
}

/// Whether the comma-separated set `set` holds `want` (elements trimmed).
fn set_has(set: &str, want: &str) -> bool {
    set.split(',').any(|have| have.trim() == want)
}

/// `<`, `<=`, `>`, `>=`: numeric when both sides parse as numbers, else lexical.
fn check_order(op: Operator, l: &str, r: &str) -> bool {
    use std::cmp::Ordering;
    let ord = match (l.trim().parse::<i64>(), r.trim().parse::<i64>()) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        _ => match (l.trim().parse::<f64>(), r.trim().parse::<f64>()) {
            (Ok(a), Ok(b)) => match a.partial_cmp(&b) {
                Some(o) => o,
                None => return false,
            },
            _ => l.cmp(r),
        },
    };
    match op {
        Operator::Lt => ord == Ordering::Less,
        Operator::Le => ord != Ordering::Greater,
        Operator::Gt => ord == Ordering::Greater,
        Operator::Ge => ord != Ordering::Less,
        _ => false,
    }
}

/// Go's `strconv.ParseBool`, which Nomad uses for `distinct_hosts = "false"`.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// FNV-1a over the parts of a node that class-level checks may read: datacenter, class,
/// non-unique attributes and meta, drivers and host volumes (Nomad's computed node class).
pub(crate) fn computed_class(node: &Node) -> u64 {
    let mut h = Fnv::new();
    h.str(&node.datacenter);
    h.str(&node.node_class);
    for (k, v) in &node.attributes {
        if !k.starts_with("unique.") {
            h.str(k);
            h.str(v);
        }
    }
    h.byte(1);
    for (k, v) in &node.meta {
        if !k.starts_with("unique.") {
            h.str(k);
            h.str(v);
        }
    }
    h.byte(2);
    for (name, d) in &node.drivers {
        h.str(name);
        h.byte(u8::from(d.detected && d.healthy));
    }
    h.byte(3);
    for (name, v) in &node.host_volumes {
        h.str(name);
        h.byte(u8::from(v.read_only));
    }
    // 0 means "not computed yet" in the per-evaluation tables.
    h.0.max(1)
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf29ce484222325)
    }

    fn byte(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }

    /// Length-prefixed, so ("ab","c") and ("a","bc") differ.
    fn str(&mut self, s: &str) {
        for b in (s.len() as u32).to_le_bytes() {
            self.byte(b);
        }
        for b in s.bytes() {
            self.byte(b);
        }
    }
}
