//! Well-formedness of constraints, affinities and spreads (Nomad's `Constraint.Validate`,
//! `Affinity.Validate`, `Spread.Validate`).

use std::collections::HashSet;

use flotilla_types::{Affinity, Constraint, Spread};

use super::Report;
use crate::diag::{Scope, Seg, named};

const CONSTRAINT_OPERATORS: &[&str] = &[
    "=",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "regexp",
    "version",
    "semver",
    "set_contains",
    "set_contains_any",
    "is_set",
    "is_not_set",
    "distinct_hosts",
    "distinct_property",
];

const AFFINITY_OPERATORS: &[&str] = &[
    "=",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "regexp",
    "version",
    "semver",
    "set_contains",
    "set_contains_any",
];

impl Report {
    pub(super) fn constraints(&mut self, parent: &Scope, constraints: &[Constraint]) {
        for (i, c) in constraints.iter().enumerate() {
            let scope = parent.child(Seg::Constraint(i), named("constraint", "", i));
            self.constraint(&scope, c);
        }
    }

    fn constraint(&mut self, scope: &Scope, c: &Constraint) {
        let op = c.operand.as_str();
        match op {
            "distinct_hosts" => return,
            "distinct_property" => {
                if c.l_target.is_empty() {
                    self.error(
                        scope,
                        "attribute",
                        "distinct_property needs the attribute whose values must differ, like \
                         distinct_property = \"${meta.rack}\""
                            .to_string(),
                    );
                }
                if !c.r_target.is_empty() && !c.r_target.parse::<u64>().is_ok_and(|n| n > 0) {
                    self.error(
                        scope,
                        "value",
                        format!(
                            "distinct_property's value is how many allocations may share a \
                             value: expected a whole number of at least 1, got {:?}",
                            c.r_target
                        ),
                    );
                }
                return;
            }
            "is_set" | "is_not_set" => {
                if !c.r_target.is_empty() {
                    self.error(
                        scope,
                        "value",
                        format!("operator {op:?} takes no value, got {:?}", c.r_target),
                    );
                }
            }
            "" => {
                self.error(
                    scope,
                    "operator",
                    format!(
                        "constraint has no operator (expected one of: {})",
                        CONSTRAINT_OPERATORS.join(", ")
                    ),
                );
                return;
            }
            _ if !CONSTRAINT_OPERATORS.contains(&op) => {
                self.error(
                    scope,
                    "operator",
                    format!(
                        "unknown constraint operator {op:?} (expected one of: {})",
                        CONSTRAINT_OPERATORS.join(", ")
                    ),
                );
                return;
            }
            _ => self.target(scope, op, &c.r_target),
        }
        if c.l_target.is_empty() {
            self.error(
                scope,
                "attribute",
                "constraint needs an attribute, like attribute = \"${attr.kernel.name}\""
                    .to_string(),
            );
        }
    }

    /// The right-hand side of a comparison: present, and well-formed for `regexp`, `version`
    /// and `semver`.
    fn target(&mut self, scope: &Scope, op: &str, value: &str) {
        if value.is_empty() {
            self.error(scope, "value", format!("operator {op:?} needs a value"));
            return;
        }
        let problem = match op {
            "regexp" => regex::Regex::new(value)
                .err()
                .map(|err| format!("invalid regexp {value:?}: {err}")),
            "version" => version_constraint(value, false)
                .err()
                .map(|why| format!("invalid version constraint {value:?}: {why}")),
            "semver" => version_constraint(value, true)
                .err()
                .map(|why| format!("invalid semver constraint {value:?}: {why}")),
            _ => None,
        };
        if let Some(message) = problem {
            self.error(scope, "value", message);
        }
    }

    pub(super) fn affinities(&mut self, parent: &Scope, affinities: &[Affinity]) {
        for (i, a) in affinities.iter().enumerate() {
            let scope = parent.child(Seg::Affinity(i), named("affinity", "", i));
            let op = a.operand.as_str();
            if AFFINITY_OPERATORS.contains(&op) {
                self.target(&scope, op, &a.r_target);
            } else {
                self.error(
                    &scope,
                    "operator",
                    format!(
                        "unknown affinity operator {op:?} (expected one of: {})",
                        AFFINITY_OPERATORS.join(", ")
                    ),
                );
            }
            if a.l_target.is_empty() {
                self.error(
                    &scope,
                    "attribute",
                    "affinity needs an attribute, like attribute = \"${node.datacenter}\""
                        .to_string(),
                );
            }
            if a.weight == 0 {
                self.error(
                    &scope,
                    "weight",
                    "affinity weight must not be zero (expected -100 to 100)".to_string(),
                );
            } else if !(-100..=100).contains(&a.weight) {
                self.error(
                    &scope,
                    "weight",
                    format!(
                        "affinity weight {} is out of range (expected -100 to 100)",
                        a.weight
                    ),
                );
            }
        }
    }

    pub(super) fn spreads(&mut self, parent: &Scope, spreads: &[Spread]) {
        for (i, spread) in spreads.iter().enumerate() {
            let scope = parent.child(Seg::Spread(i), named("spread", "", i));
            if spread.attribute.is_empty() {
                self.error(
                    &scope,
                    "attribute",
                    "spread needs an attribute, like attribute = \"${node.datacenter}\""
                        .to_string(),
                );
            }
            if !(1..=100).contains(&spread.weight) {
                self.error(
                    &scope,
                    "weight",
                    format!(
                        "spread weight {} is out of range (expected 1 to 100)",
                        spread.weight
                    ),
                );
            }
            let mut seen = HashSet::new();
            let mut sum: u32 = 0;
            let mut too_large = false;
            for (ti, target) in spread.spread_target.iter().enumerate() {
                let ts = scope.child(Seg::SpreadTarget(ti), named("target", &target.value, ti));
                if target.value.is_empty() {
                    self.error(&ts, "value", "spread target needs a value".to_string());
                } else if !seen.insert(target.value.as_str()) {
                    self.error(
                        &ts,
                        "value",
                        format!("duplicate spread target {:?}", target.value),
                    );
                }
                if target.percent > 100 {
                    too_large = true;
                    self.error(
                        &ts,
                        "percent",
                        format!(
                            "percent {} is out of range (expected 0 to 100)",
                            target.percent
                        ),
                    );
                }
                sum += u32::from(target.percent);
            }
            // A target above 100% is reported on its own; do not also blame the sum.
            if sum > 100 && !too_large {
                self.error(
                    &scope,
                    "target",
                    format!("spread target percentages add up to {sum}%, more than 100%"),
                );
            }
        }
    }
}

/// Checks a go-version constraint like `">= 1.2, < 2.0"` (`~>` too); `semver` ones allow at most
/// three numeric parts and no `~>`.
fn version_constraint(text: &str, semver: bool) -> Result<(), String> {
    for part in text.split(',') {
        let part = part.trim();
        let (op, rest) = [">=", "<=", "!=", "~>", "=", ">", "<"]
            .iter()
            .find_map(|op| part.strip_prefix(op).map(|rest| (*op, rest)))
            .unwrap_or(("", part));
        if semver && op == "~>" {
            return Err("operator \"~>\" is not allowed in semver constraints".to_string());
        }
        let version = rest.trim();
        if version.is_empty() {
            return Err(format!("{part:?} has no version"));
        }
        check_version(version, semver).map_err(|why| format!("{version:?}: {why}"))?;
    }
    Ok(())
}

/// `1`, `1.2.3`, `v1.2.3-beta.1+build.5`, `1.2.3rc1`.
fn check_version(version: &str, semver: bool) -> Result<(), String> {
    let version = version.strip_prefix('v').unwrap_or(version);
    let (rest, metadata) = match version.split_once('+') {
        Some((rest, metadata)) => (rest, Some(metadata)),
        None => (version, None),
    };
    let core_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (core, prerelease) = rest.split_at(core_len);
    let parts: Vec<&str> = core.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("expected numbers separated by dots, like 1.2.3".to_string());
    }
    if semver && parts.len() > 3 {
        return Err("a semver version has at most three numbers".to_string());
    }
    let dashed = prerelease.starts_with('-');
    let prerelease = prerelease.strip_prefix('-').unwrap_or(prerelease);
    let identifiers = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|id| {
                !id.is_empty()
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '~')
            })
    };
    if (dashed || !prerelease.is_empty()) && !identifiers(prerelease) {
        return Err(format!("invalid pre-release {prerelease:?}"));
    }
    if let Some(metadata) = metadata
        && !identifiers(metadata)
    {
        return Err(format!("invalid build metadata {metadata:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_constraints() {
        for ok in [
            ">= 1.2, < 2.0",
            "1.2.3",
            "= v1.2.3-beta.1+build.5",
            "~> 1.2",
            "!= 1.0.0rc1",
            ">=1.2.3.4",
        ] {
            assert_eq!(version_constraint(ok, false), Ok(()), "{ok}");
        }
        for bad in [">= ", "1..2", ">= x", "1.2, ", "=> 1.2", "1.2-", "1.2+"] {
            assert!(version_constraint(bad, false).is_err(), "{bad}");
        }
        assert_eq!(version_constraint(">= 1.2.3, < 2", true), Ok(()));
        assert!(version_constraint("~> 1.2", true).is_err());
        assert!(version_constraint("1.2.3.4", true).is_err());
    }
}
