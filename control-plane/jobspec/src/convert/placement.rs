//! Placement rules: `constraint`, `affinity` and `spread` blocks (job, group, and for the first
//! two, task level). Their meaning is checked by validation; here they are read with Nomad's
//! spellings (`attribute` → `LTarget`, `value` → `RTarget`, `operator` → `Operand`) and
//! shorthands (`distinct_hosts = true`, `version = ">= 1.2"`, …).

use flotilla_types::{
    Affinity, CONSTRAINT_DISTINCT_HOSTS, CONSTRAINT_DISTINCT_PROPERTY, Constraint, Spread,
    SpreadTarget,
};

use super::job::numbered;
use super::{BlockRef, Converter, schema};
use crate::diag::{Scope, Seg, named};

/// Nomad's weight for an affinity or spread that does not set one.
const DEFAULT_WEIGHT: i8 = 50;

/// Constraint shorthands: `version = "…"` is `operator = "version"` with `value = "…"`.
const VALUE_SHORTHANDS: &[&str] = &["version", "semver", "regexp", "set_contains"];

impl Converter<'_> {
    pub(super) fn constraint(
        &mut self,
        parent: &Scope,
        index: usize,
        block: &BlockRef<'_>,
    ) -> Constraint {
        let scope = self.unlabeled(
            parent,
            Seg::Constraint(index),
            &numbered("constraint", index),
            block,
        );
        let f = self.fields(&scope, block, &schema::CONSTRAINT);
        let mut c = Constraint {
            operand: "=".to_string(),
            ..Default::default()
        };
        if let Some(a) = f.attr("attribute") {
            c.l_target = self.scalar(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("value") {
            c.r_target = self.scalar(&scope, a).unwrap_or_default();
        }
        // Which attribute chose the operator, to report a second one.
        let mut chosen: Option<&'static str> = None;
        if let Some(a) = f.attr("operator") {
            c.operand = self.string(&scope, a).unwrap_or_default();
            chosen = Some("operator");
        }
        for &name in VALUE_SHORTHANDS {
            let Some(a) = f.attr(name) else { continue };
            if let Err(message) = claim(&mut chosen, name) {
                self.conflict(&scope, name, a.span(), message);
                continue;
            }
            if f.attr("value").is_some() {
                self.error(
                    &scope,
                    name,
                    a.span(),
                    format!("{name} = … already gives the value; remove `value`"),
                );
            }
            c.operand = name.to_string();
            c.r_target = self.scalar(&scope, a).unwrap_or_default();
            // Validation speaks of the value and the operator; both are this attribute.
            self.record(&scope, "value", a.span());
            self.record(&scope, "operator", a.span());
        }
        if let Some(a) = f.attr("distinct_property") {
            if let Err(message) = claim(&mut chosen, "distinct_property") {
                self.conflict(&scope, "distinct_property", a.span(), message);
            } else {
                if f.attr("attribute").is_some() {
                    self.error(
                        &scope,
                        "distinct_property",
                        a.span(),
                        "distinct_property = … already names the attribute; remove `attribute`"
                            .to_string(),
                    );
                }
                c.operand = CONSTRAINT_DISTINCT_PROPERTY.to_string();
                c.l_target = self.scalar(&scope, a).unwrap_or_default();
                self.record(&scope, "attribute", a.span());
                self.record(&scope, "operator", a.span());
            }
        }
        if let Some(a) = f.attr("distinct_hosts")
            && self.boolean(&scope, a) == Some(true)
        {
            if let Err(message) = claim(&mut chosen, "distinct_hosts") {
                self.conflict(&scope, "distinct_hosts", a.span(), message);
            } else {
                c.operand = CONSTRAINT_DISTINCT_HOSTS.to_string();
                self.record(&scope, "operator", a.span());
            }
        }
        c
    }

    /// Two attributes that both choose the operator: one error, and no validation noise
    /// about the half-built constraint.
    fn conflict(
        &mut self,
        scope: &Scope,
        field: &str,
        span: Option<std::ops::Range<usize>>,
        message: String,
    ) {
        self.error(scope, field, span, message);
        for key in ["attribute", "operator", "value"] {
            self.failed.insert(scope.key(key));
        }
    }

    pub(super) fn affinity(
        &mut self,
        parent: &Scope,
        index: usize,
        block: &BlockRef<'_>,
    ) -> Affinity {
        let scope = self.unlabeled(
            parent,
            Seg::Affinity(index),
            &numbered("affinity", index),
            block,
        );
        let f = self.fields(&scope, block, &schema::AFFINITY);
        let mut affinity = Affinity {
            operand: "=".to_string(),
            weight: DEFAULT_WEIGHT,
            ..Default::default()
        };
        if let Some(a) = f.attr("attribute") {
            affinity.l_target = self.scalar(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("value") {
            affinity.r_target = self.scalar(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("operator") {
            affinity.operand = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("weight") {
            match self.integer(&scope, a, -100, 100) {
                Some(n) => affinity.weight = i8::try_from(n).unwrap_or(DEFAULT_WEIGHT),
                None => {
                    self.failed.insert(scope.key("weight"));
                }
            }
        }
        affinity
    }

    pub(super) fn spread(&mut self, parent: &Scope, index: usize, block: &BlockRef<'_>) -> Spread {
        let scope = self.unlabeled(
            parent,
            Seg::Spread(index),
            &numbered("spread", index),
            block,
        );
        let f = self.fields(&scope, block, &schema::SPREAD);
        let mut spread = Spread {
            weight: DEFAULT_WEIGHT,
            ..Default::default()
        };
        if let Some(a) = f.attr("attribute") {
            spread.attribute = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("weight") {
            match self.integer(&scope, a, 0, 100) {
                Some(n) => spread.weight = i8::try_from(n).unwrap_or(DEFAULT_WEIGHT),
                None => {
                    self.failed.insert(scope.key("weight"));
                }
            }
        }
        for (i, b) in f.blocks("target").enumerate() {
            let value = Self::one_label(b, "the attribute value");
            let label = value.as_deref().unwrap_or_default();
            let ts = scope.child(Seg::SpreadTarget(i), named("target", label, i));
            self.record(&ts, "", b.span.clone());
            if let Err(message) = &value {
                self.error(&ts, "target", b.span.clone(), message.clone());
            }
            let tf = self.fields(&ts, b, &schema::SPREAD_TARGET);
            let mut target = SpreadTarget {
                value: label.to_string(),
                percent: 0,
            };
            if let Some(a) = tf.attr("percent") {
                target.percent = self
                    .unsigned(&ts, a, i64::from(u8::MAX))
                    .unwrap_or_default();
            }
            spread.spread_target.push(target);
        }
        spread
    }
}

/// Records that `name` chose the constraint's operator; an error if another one already did.
fn claim(chosen: &mut Option<&'static str>, name: &'static str) -> Result<(), String> {
    match *chosen {
        Some(first) => Err(format!(
            "{name} conflicts with {first}: set only one of operator, {}, distinct_hosts, \
             distinct_property",
            VALUE_SHORTHANDS.join(", ")
        )),
        None => {
            *chosen = Some(name);
            Ok(())
        }
    }
}
