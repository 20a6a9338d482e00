//! HCL expressions to JSON values.
//!
//! Jobspecs hold literal values only: strings, numbers, bools, lists and objects. String
//! templates are *not* evaluated: `${NOMAD_PORT_http}`, `${node.unique.name}` and friends are
//! runtime interpolations the node expands, so they are kept exactly as written in the source.

use std::ops::Range;

use hcl_edit::Span;
use hcl_edit::expr::{Expression, ObjectKey, UnaryOperator};
use hcl_edit::template::{Element, Template};
use serde_json::Value;

/// An expression that is not a literal value (a variable, function call, operator, …).
#[derive(Debug)]
pub(crate) struct Unsupported {
    pub span: Option<Range<usize>>,
    pub message: String,
}

/// Converts a literal HCL expression to JSON, keeping template interpolations as written.
pub(crate) fn to_json(expr: &Expression, src: &str) -> Result<Value, Unsupported> {
    match expr {
        Expression::Null(_) => Ok(Value::Null),
        Expression::Bool(b) => Ok(Value::Bool(*b.value())),
        Expression::Number(n) => number(n.value()).ok_or_else(|| Unsupported {
            span: expr.span(),
            message: format!("number {} cannot be represented", n.value()),
        }),
        Expression::String(s) => Ok(Value::String(s.value().clone())),
        Expression::StringTemplate(t) => Ok(Value::String(template_text(t, src))),
        Expression::HeredocTemplate(h) => Ok(Value::String(template_text(&h.template, src))),
        Expression::Array(items) => items
            .iter()
            .map(|item| to_json(item, src))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Expression::Object(object) => {
            let mut map = serde_json::Map::new();
            for (key, value) in object.iter() {
                let name = object_key(key, src)?;
                map.insert(name, to_json(value.expr(), src)?);
            }
            Ok(Value::Object(map))
        }
        Expression::Parenthesis(p) => to_json(p.inner(), src),
        Expression::UnaryOp(op) => match (op.operator.value(), to_json(&op.expr, src)?) {
            (UnaryOperator::Neg, Value::Number(n)) => negate(&n).ok_or_else(|| Unsupported {
                span: expr.span(),
                message: format!("number -{n} cannot be represented"),
            }),
            (UnaryOperator::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
            _ => Err(not_literal(expr, src)),
        },
        Expression::Variable(_)
        | Expression::Traversal(_)
        | Expression::FuncCall(_)
        | Expression::Conditional(_)
        | Expression::BinaryOp(_)
        | Expression::ForExpr(_) => Err(not_literal(expr, src)),
    }
}

fn not_literal(expr: &Expression, src: &str) -> Unsupported {
    let text = source_text(expr.span(), src).map_or_else(|| expr.to_string(), str::to_string);
    Unsupported {
        span: expr.span(),
        message: format!(
            "unsupported expression `{}`: only literal values are supported \
             (strings, numbers, bools, lists, objects); write runtime interpolations \
             inside a string, like \"${{NOMAD_PORT_http}}\"",
            text.trim()
        ),
    }
}

fn object_key(key: &ObjectKey, src: &str) -> Result<String, Unsupported> {
    match key {
        ObjectKey::Ident(ident) => Ok(ident.as_str().to_string()),
        ObjectKey::Expression(expr) => match to_json(expr, src)? {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(Unsupported {
                span: expr.span(),
                message: "object keys must be names or strings".to_string(),
            }),
        },
    }
}

/// The text of a string template as the author wrote it: literal parts unescaped, and
/// interpolations (`${…}`) and directives (`%{…}`) verbatim.
fn template_text(template: &Template, src: &str) -> String {
    let mut out = String::new();
    for element in template.iter() {
        match element {
            Element::Literal(lit) => out.push_str(lit.value()),
            Element::Interpolation(_) | Element::Directive(_) => {
                match source_text(element.span(), src) {
                    Some(raw) => out.push_str(raw),
                    // Unreachable for parsed input (every element has a span); re-encode.
                    None => out.push_str(&Template::from(vec![element.clone()]).to_string()),
                }
            }
        }
    }
    out
}

fn source_text(span: Option<Range<usize>>, src: &str) -> Option<&str> {
    span.and_then(|span| src.get(span))
}

fn number(n: &hcl_edit::Number) -> Option<Value> {
    if let Some(u) = n.as_u64().filter(|_| n.is_u64()) {
        return Some(Value::from(u));
    }
    if let Some(i) = n.as_i64().filter(|_| n.is_i64()) {
        return Some(Value::from(i));
    }
    n.as_f64()
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
}

fn negate(n: &serde_json::Number) -> Option<Value> {
    if let Some(i) = n.as_i64() {
        return i.checked_neg().map(Value::from);
    }
    if let Some(u) = n.as_u64() {
        return 0i64.checked_sub_unsigned(u).map(Value::from);
    }
    n.as_f64()
        .and_then(|f| serde_json::Number::from_f64(-f))
        .map(Value::Number)
}

/// A value described for an error message: `string "abc"`, `number 3`, `list ["a", 1]`.
pub(crate) fn describe(value: &Value) -> String {
    let kind = match value {
        Value::Null => return "null".to_string(),
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    };
    let mut text = value.to_string();
    if text.chars().count() > 60 {
        text = text.chars().take(57).collect::<String>() + "...";
    }
    format!("{kind} {text}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(src: &str) -> Result<Value, Unsupported> {
        let body = hcl_edit::parser::parse_body(src).unwrap();
        let attr = body.get_attribute("v").unwrap();
        to_json(&attr.value, src)
    }

    #[test]
    fn literals() {
        assert_eq!(eval("v = null").unwrap(), Value::Null);
        assert_eq!(eval("v = true").unwrap(), json!(true));
        assert_eq!(eval("v = 3").unwrap(), json!(3));
        assert_eq!(eval("v = -3").unwrap(), json!(-3));
        assert_eq!(eval("v = -(3)").unwrap(), json!(-3));
        assert_eq!(eval("v = 1.5").unwrap(), json!(1.5));
        assert_eq!(eval("v = !false").unwrap(), json!(true));
        assert_eq!(eval(r#"v = "a\"b\n""#).unwrap(), json!("a\"b\n"));
        assert_eq!(
            eval(r#"v = ["a", 1, { k = "x", "q r" = [] }]"#).unwrap(),
            json!(["a", 1, {"k": "x", "q r": []}])
        );
    }

    #[test]
    fn interpolations_are_kept_literally() {
        assert_eq!(
            eval(r#"v = "${NOMAD_ADDR_http}""#).unwrap(),
            json!("${NOMAD_ADDR_http}")
        );
        assert_eq!(
            eval(r#"v = "http://${attr.unique.network.ip-address}:${NOMAD_PORT_http}/x""#).unwrap(),
            json!("http://${attr.unique.network.ip-address}:${NOMAD_PORT_http}/x")
        );
        assert_eq!(
            eval(r#"v = "\"${meta.x}\" %{ if true }y%{ endif }""#).unwrap(),
            json!("\"${meta.x}\" %{ if true }y%{ endif }")
        );
        assert_eq!(eval(r#"v = "$${x}""#).unwrap(), json!("${x}"));
        assert_eq!(
            eval("v = <<-EOT\n    a ${node.unique.name}\n      b\n    EOT\n").unwrap(),
            json!("a ${node.unique.name}\n  b\n")
        );
    }

    #[test]
    fn expressions_are_rejected() {
        for src in [
            "v = var.x",
            "v = x",
            "v = upper(\"a\")",
            "v = 1 + 2",
            "v = true ? 1 : 2",
            "v = [for x in y: x]",
        ] {
            let err = eval(src).unwrap_err();
            assert!(
                err.message.contains("unsupported expression"),
                "{src}: {err:?}"
            );
            assert!(err.span.is_some());
        }
    }

    #[test]
    fn describes_values() {
        assert_eq!(describe(&json!("x")), r#"string "x""#);
        assert_eq!(describe(&json!(3)), "number 3");
        assert_eq!(describe(&json!(["a"])), r#"list ["a"]"#);
        assert_eq!(describe(&Value::Null), "null");
        assert!(describe(&json!("x".repeat(100))).ends_with("..."));
    }
}
