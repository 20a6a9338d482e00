//! HCL2 input variables and locals.
//!
//! `variable "name" { type default description }` blocks declare the inputs of a jobspec. Their
//! values come from, lowest precedence first: the `default`, each `-var-file` (HCL `name = value`
//! files, later files win), then each `-var name=value` option (later wins). A variable left
//! without a value, and a value given for an undeclared variable, are errors. Then
//! `locals { … }` blocks are computed in order; a local may refer to variables and to locals
//! defined before it.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use hcl_edit::Span;
use hcl_edit::expr::Expression;
use hcl_edit::structure::{Block, Body, Structure};
use serde_json::Value;

use crate::ParseOptions;
use crate::diag::{Diagnostic, Locator, Scope, Severity};
use crate::expr::{Env, EvalError, Globals, describe, eval};

/// The environment the job is evaluated in, and what went wrong building it.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub env: Env,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

/// The type constraint of a variable (`type = …`).
#[derive(Debug, Clone, PartialEq)]
enum Type {
    Any,
    String,
    Number,
    Bool,
    List(Box<Type>),
    Map(Box<Type>),
    Object,
    Tuple,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Any => f.write_str("any"),
            Type::String => f.write_str("string"),
            Type::Number => f.write_str("number"),
            Type::Bool => f.write_str("bool"),
            Type::List(t) => write!(f, "list({t})"),
            Type::Map(t) => write!(f, "map({t})"),
            Type::Object => f.write_str("object"),
            Type::Tuple => f.write_str("tuple"),
        }
    }
}

const VARIABLE_ATTRS: &[&str] = &["type", "default", "description"];

/// One declared variable.
struct Declared {
    name: String,
    ty: Type,
    default: Option<Value>,
    span: Option<Range<usize>>,
    /// Its declaration has an error already reported; do not also report it as missing.
    broken: bool,
}

pub(crate) fn resolve(body: &Body, src: &str, file: &str, opts: &ParseOptions) -> Resolved {
    let loc = Locator::new(file, src);
    let mut r = Resolver {
        loc: &loc,
        src,
        errors: Vec::new(),
        warnings: Vec::new(),
        base: Globals {
            base_dir: opts.base_dir.clone(),
            ..Globals::default()
        },
    };
    let declared = r.declarations(body);
    let env = r.values(&declared, opts);
    let env = r.locals(body, env);
    Resolved {
        env,
        errors: r.errors,
        warnings: r.warnings,
    }
}

struct Resolver<'a> {
    loc: &'a Locator<'a>,
    src: &'a str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    /// Globals without variables or locals: what defaults and var-files are evaluated in.
    base: Globals,
}

impl Resolver<'_> {
    fn error(&mut self, scope: &Scope, field: &str, span: Option<Range<usize>>, message: String) {
        self.errors
            .push(self.loc.diag(scope, Severity::Error, field, span, message));
    }

    /// Every `variable` block, in order, with its type and default.
    fn declarations(&mut self, body: &Body) -> Vec<Declared> {
        let mut declared: Vec<Declared> = Vec::new();
        for block in top_blocks(body, "variable") {
            let name = match block.labels.as_slice() {
                [label] => label.as_str().to_string(),
                labels => {
                    self.error(
                        &Scope::top("variable"),
                        "variable",
                        block.span(),
                        format!(
                            "variable block takes one label (the variable name), like \
                             `variable \"region\" {{ … }}`; got {}",
                            labels.len()
                        ),
                    );
                    continue;
                }
            };
            let scope = Scope::top(format!("variable {name:?}"));
            if let Some(first) = declared.iter().find(|d| d.name == name) {
                let line = first
                    .span
                    .as_ref()
                    .map_or(0, |s| self.loc.position(s.start).0);
                self.error(
                    &scope,
                    "variable",
                    block.span(),
                    format!("duplicate variable {name:?} (first declared on line {line})"),
                );
                continue;
            }
            let mut d = Declared {
                name,
                ty: Type::Any,
                default: None,
                span: block.span(),
                broken: false,
            };
            self.variable_body(&scope, block, &mut d);
            declared.push(d);
        }
        declared
    }

    fn variable_body(&mut self, scope: &Scope, block: &Block, d: &mut Declared) {
        let mut default = None;
        for structure in block.body.iter() {
            match structure {
                Structure::Attribute(attr) => {
                    let key = attr.key.as_str();
                    match key {
                        "type" => match parse_type(&attr.value) {
                            Ok(ty) => d.ty = ty,
                            Err(message) => {
                                d.broken = true;
                                self.error(scope, key, attr.value.span(), message);
                            }
                        },
                        "default" => default = Some(attr),
                        "description" => {
                            let env = Env::new(self.base.clone());
                            match eval(&attr.value, self.src, &env) {
                                Ok(Value::String(_)) => {}
                                Ok(other) => self.error(
                                    scope,
                                    key,
                                    attr.span(),
                                    format!("expected a string, got {}", describe(&other)),
                                ),
                                Err(err) => self.eval_error(scope, key, err),
                            }
                        }
                        _ => self.error(
                            scope,
                            key,
                            attr.span(),
                            format!(
                                "unknown attribute {key:?} (allowed: {})",
                                VARIABLE_ATTRS.join(", ")
                            ),
                        ),
                    }
                }
                Structure::Block(inner) if inner.ident.as_str() == "validation" => {
                    self.warnings.push(
                        self.loc.diag(
                            scope,
                            Severity::Warning,
                            "validation",
                            inner.span(),
                            "validation is not supported yet; ignored (the value is not checked)"
                                .to_string(),
                        ),
                    );
                }
                Structure::Block(inner) => self.error(
                    scope,
                    inner.ident.as_str(),
                    inner.span(),
                    format!(
                        "unknown block {:?} (allowed: {}, validation)",
                        inner.ident.as_str(),
                        VARIABLE_ATTRS.join(", ")
                    ),
                ),
            }
        }
        // The default is read after the type, wherever the two are written.
        if let Some(attr) = default {
            let env = Env::new(self.base.clone());
            match eval(&attr.value, self.src, &env) {
                Ok(value) => match conform(value, &d.ty) {
                    Ok(value) => d.default = Some(value),
                    Err(message) => {
                        d.broken = true;
                        self.error(
                            scope,
                            "default",
                            attr.span(),
                            format!("default does not match type {}: {message}", d.ty),
                        );
                    }
                },
                Err(err) => {
                    d.broken = true;
                    self.eval_error(scope, "default", err);
                }
            }
        }
    }

    fn eval_error(&mut self, scope: &Scope, field: &str, err: EvalError) {
        if let EvalError::At { span, message } = err {
            self.error(scope, field, span, message);
        }
    }

    /// Defaults, then var-files, then `-var` options; the variables' final values.
    fn values(&mut self, declared: &[Declared], opts: &ParseOptions) -> Env {
        let mut values: BTreeMap<String, Value> = declared
            .iter()
            .filter_map(|d| d.default.clone().map(|v| (d.name.clone(), v)))
            .collect();
        let names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
        let declared_list = if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        };

        for path in &opts.var_files {
            self.var_file(path, declared, &declared_list, &mut values);
        }

        for (name, raw) in &opts.vars {
            let Some(d) = declared.iter().find(|d| &d.name == name) else {
                self.errors.push(cli_error(format!(
                    "{name}={raw}: undeclared variable {name:?}: {} declares no such variable \
                     (declared: {declared_list}); add a `variable \"{name}\" {{ … }}` block",
                    self.loc.file()
                )));
                continue;
            };
            match parse_cli_value(raw, &d.ty) {
                Ok(value) => {
                    values.insert(name.clone(), value);
                }
                Err(message) => self.errors.push(cli_error(format!(
                    "{name}={raw}: invalid value for variable {name:?} of type {}: {message}",
                    d.ty
                ))),
            }
        }

        let mut globals = self.base.clone();
        for d in declared {
            globals.declared_vars.insert(d.name.clone());
            match values.remove(&d.name) {
                Some(value) => {
                    globals.vars.insert(d.name.clone(), value);
                }
                None if d.broken => {}
                None => {
                    let scope = Scope::top(format!("variable {:?}", d.name));
                    self.error(
                        &scope,
                        "variable",
                        d.span.clone(),
                        format!(
                            "variable {:?} has no default and no value was given (set it with \
                             -var {}=… or in a -var-file)",
                            d.name, d.name
                        ),
                    );
                }
            }
        }
        Env::new(globals)
    }

    /// One `-var-file`: `name = value` attributes, located in that file when wrong.
    fn var_file(
        &mut self,
        path: &std::path::Path,
        declared: &[Declared],
        declared_list: &str,
        values: &mut BTreeMap<String, Value>,
    ) {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) => {
                self.errors.push(Diagnostic {
                    file: shown,
                    ..cli_error(format!("cannot read var-file: {err}"))
                });
                return;
            }
        };
        let loc = Locator::new(&shown, &text);
        let scope = Scope::top("var-file");
        let body = match hcl_edit::parser::parse_body(&text) {
            Ok(body) => body,
            Err(err) => {
                let location = err.location();
                self.errors.push(Diagnostic {
                    line: Some(location.line()),
                    column: Some(location.column()),
                    ..loc.diag(
                        &Scope::default(),
                        Severity::Error,
                        "",
                        None,
                        format!("syntax error: {}", err.message()),
                    )
                });
                return;
            }
        };
        let env = Env::new(Globals::default());
        for structure in body.iter() {
            let attr = match structure {
                Structure::Attribute(attr) => attr,
                Structure::Block(block) => {
                    self.errors.push(loc.diag(
                        &scope,
                        Severity::Error,
                        block.ident.as_str(),
                        block.span(),
                        "a var-file holds only `name = value` attributes, not blocks".to_string(),
                    ));
                    continue;
                }
            };
            let name = attr.key.as_str();
            let Some(d) = declared.iter().find(|d| d.name == name) else {
                self.errors.push(loc.diag(
                    &scope,
                    Severity::Error,
                    name,
                    attr.span(),
                    format!(
                        "undeclared variable {name:?}: {} declares no such variable (declared: \
                         {declared_list})",
                        self.loc.file()
                    ),
                ));
                continue;
            };
            let value = match eval(&attr.value, &text, &env) {
                Ok(value) => value,
                Err(EvalError::At { span, message }) => {
                    self.errors
                        .push(loc.diag(&scope, Severity::Error, name, span, message));
                    continue;
                }
                Err(EvalError::Reported) => continue,
            };
            match conform(value, &d.ty) {
                Ok(value) => {
                    values.insert(name.to_string(), value);
                }
                Err(message) => self.errors.push(loc.diag(
                    &scope,
                    Severity::Error,
                    name,
                    attr.span(),
                    format!("value does not match type {}: {message}", d.ty),
                )),
            }
        }
    }

    /// `locals { … }` blocks, in order.
    fn locals(&mut self, body: &Body, mut env: Env) -> Env {
        let scope = Scope::top("locals");
        let mut seen: BTreeMap<String, Option<Range<usize>>> = BTreeMap::new();
        let mut attrs = Vec::new();
        for block in top_blocks(body, "locals") {
            if let Some(label) = block.labels.first() {
                self.error(
                    &scope,
                    "locals",
                    block.span(),
                    format!("locals block takes no labels, got {:?}", label.as_str()),
                );
            }
            for structure in block.body.iter() {
                match structure {
                    Structure::Attribute(attr) => {
                        let name = attr.key.as_str();
                        if let Some(first) = seen.get(name) {
                            let line = first.as_ref().map_or(0, |s| self.loc.position(s.start).0);
                            self.error(
                                &scope,
                                name,
                                attr.span(),
                                format!("duplicate local {name:?} (first defined on line {line})"),
                            );
                            continue;
                        }
                        seen.insert(name.to_string(), attr.span());
                        attrs.push(attr);
                    }
                    Structure::Block(inner) => self.error(
                        &scope,
                        inner.ident.as_str(),
                        inner.span(),
                        "locals hold only `name = value` attributes, not blocks".to_string(),
                    ),
                }
            }
        }
        env.globals_mut().declared_locals = seen.into_keys().collect();
        for attr in attrs {
            let name = attr.key.as_str().to_string();
            match eval(&attr.value, self.src, &env) {
                Ok(value) => {
                    env.globals_mut().locals.insert(name, value);
                }
                Err(err) => {
                    self.eval_error(&scope, &name, err);
                    env.globals_mut().failed_locals.insert(name);
                }
            }
        }
        env
    }
}

fn top_blocks<'b>(body: &'b Body, ident: &'b str) -> impl Iterator<Item = &'b Block> + 'b {
    body.iter()
        .filter_map(Structure::as_block)
        .filter(move |b| b.ident.as_str() == ident)
}

/// An error about a command-line option: no file or line.
fn cli_error(message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: String::new(),
        line: None,
        column: None,
        path: String::new(),
        field: "-var".to_string(),
        message,
    }
}

/// A `-var` value: the text itself for strings (and untyped variables), else an HCL value.
fn parse_cli_value(raw: &str, ty: &Type) -> Result<Value, String> {
    if matches!(ty, Type::String | Type::Any) {
        return Ok(Value::String(raw.to_string()));
    }
    let expr = hcl_edit::parser::parse_expr(raw).map_err(|err| err.message().to_string())?;
    let value = match eval(&expr, raw, &Env::new(Globals::default())) {
        Ok(value) => value,
        Err(EvalError::At { message, .. }) => return Err(message),
        Err(EvalError::Reported) => return Err("invalid value".to_string()),
    };
    conform(value, ty)
}

fn parse_type(expr: &Expression) -> Result<Type, String> {
    let simple = |name: &str| match name {
        "string" => Some(Type::String),
        "number" => Some(Type::Number),
        "bool" => Some(Type::Bool),
        "any" => Some(Type::Any),
        "list" | "set" => Some(Type::List(Box::new(Type::Any))),
        "map" => Some(Type::Map(Box::new(Type::Any))),
        _ => None,
    };
    let expected = "expected a type: string, number, bool, any, list(…), set(…), map(…), \
                    object({…}) or tuple([…])";
    match expr {
        Expression::Variable(v) => {
            simple(v.as_str()).ok_or_else(|| format!("unknown type {:?} ({expected})", v.as_str()))
        }
        Expression::String(s) => {
            simple(s.value()).ok_or_else(|| format!("unknown type {:?} ({expected})", s.value()))
        }
        Expression::FuncCall(call) => {
            let name = call.name.name.as_str();
            let arg = match call.args.iter().collect::<Vec<_>>().as_slice() {
                [arg] => *arg,
                _ => return Err(format!("{name}(…) takes one argument ({expected})")),
            };
            match name {
                "list" | "set" => Ok(Type::List(Box::new(parse_type(arg)?))),
                "map" => Ok(Type::Map(Box::new(parse_type(arg)?))),
                "object" => Ok(Type::Object),
                "tuple" => Ok(Type::Tuple),
                other => Err(format!("unknown type constructor {other:?} ({expected})")),
            }
        }
        _ => Err(expected.to_string()),
    }
}

/// `value` converted to `ty` as HCL converts (numbers and bools to strings, numeric strings to
/// numbers, "true"/"false" to bools), or why it cannot be. `null` fits every type.
fn conform(value: Value, ty: &Type) -> Result<Value, String> {
    let mismatch = |value: &Value| Err(format!("expected {ty}, got {}", describe(value)));
    match (ty, value) {
        (_, Value::Null) => Ok(Value::Null),
        (Type::Any, value) => Ok(value),
        (Type::String, Value::String(s)) => Ok(Value::String(s)),
        (Type::String, Value::Number(n)) => Ok(Value::String(n.to_string())),
        (Type::String, Value::Bool(b)) => Ok(Value::String(b.to_string())),
        (Type::Number, Value::Number(n)) => Ok(Value::Number(n)),
        (Type::Number, Value::String(s)) => {
            match serde_json::from_str::<serde_json::Number>(s.trim()) {
                Ok(n) => Ok(Value::Number(n)),
                Err(_) => mismatch(&Value::String(s)),
            }
        }
        (Type::Bool, Value::Bool(b)) => Ok(Value::Bool(b)),
        (Type::Bool, Value::String(s)) if s == "true" || s == "false" => {
            Ok(Value::Bool(s == "true"))
        }
        (Type::List(inner), Value::Array(items)) => items
            .into_iter()
            .map(|item| conform(item, inner))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        (Type::Map(inner), Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| conform(v, inner).map(|v| (k, v)))
            .collect::<Result<serde_json::Map<_, _>, _>>()
            .map(Value::Object),
        (Type::Object, Value::Object(map)) => Ok(Value::Object(map)),
        (Type::Tuple, Value::Array(items)) => Ok(Value::Array(items)),
        (_, other) => mismatch(&other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ty(src: &str) -> Result<Type, String> {
        let expr = hcl_edit::parser::parse_expr(src).unwrap();
        parse_type(&expr)
    }

    #[test]
    fn types() {
        assert_eq!(ty("string"), Ok(Type::String));
        assert_eq!(ty("number"), Ok(Type::Number));
        assert_eq!(ty("list(string)"), Ok(Type::List(Box::new(Type::String))));
        assert_eq!(ty("map(number)"), Ok(Type::Map(Box::new(Type::Number))));
        assert_eq!(ty("set(any)"), Ok(Type::List(Box::new(Type::Any))));
        assert_eq!(ty("object({ a = string })"), Ok(Type::Object));
        assert_eq!(ty(r#""string""#), Ok(Type::String));
        assert!(ty("strin").unwrap_err().contains(r#"unknown type "strin""#));
        assert!(ty("list(string, number)").is_err());
    }

    #[test]
    fn conversions() {
        let list = Type::List(Box::new(Type::Number));
        assert_eq!(conform(json!(3), &Type::String), Ok(json!("3")));
        assert_eq!(conform(json!("3"), &Type::Number), Ok(json!(3)));
        assert_eq!(conform(json!("1.5"), &Type::Number), Ok(json!(1.5)));
        assert_eq!(conform(json!("true"), &Type::Bool), Ok(json!(true)));
        assert_eq!(conform(json!(["1", 2]), &list), Ok(json!([1, 2])));
        assert_eq!(conform(Value::Null, &Type::Number), Ok(Value::Null));
        assert!(conform(json!("x"), &Type::Number).is_err());
        assert!(conform(json!("yes"), &Type::Bool).is_err());
        assert!(
            conform(json!({"a": 1}), &list)
                .unwrap_err()
                .contains("expected list(number)")
        );
    }

    #[test]
    fn cli_values() {
        assert_eq!(parse_cli_value("3", &Type::String), Ok(json!("3")));
        assert_eq!(parse_cli_value("3", &Type::Any), Ok(json!("3")));
        assert_eq!(parse_cli_value("3", &Type::Number), Ok(json!(3)));
        assert_eq!(parse_cli_value("false", &Type::Bool), Ok(json!(false)));
        assert_eq!(
            parse_cli_value(r#"["a", "b"]"#, &Type::List(Box::new(Type::String))),
            Ok(json!(["a", "b"]))
        );
        assert_eq!(
            parse_cli_value(r#"{ a = 1 }"#, &Type::Map(Box::new(Type::Number))),
            Ok(json!({"a": 1}))
        );
        assert!(parse_cli_value("three", &Type::Number).is_err());
    }
}
