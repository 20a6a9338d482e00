//! Consul config entries (`service-defaults`, `service-router`, `service-splitter`,
//! `service-resolver`) read from HCL or JSON, and their validation.
//!
//! Reading goes through one schema-checked walk for both syntaxes: the file becomes a tree of
//! values with spans (HCL blocks and `Key = { … }` attributes alike), every key is matched
//! against the kind's schema (PascalCase or snake_case, as Consul accepts), values are
//! type-checked, and the result is Consul's canonical JSON, deserialized into a typed
//! [`ConfigEntry`]. Problems name `file:line:column` (HCL) or the JSON path (`Routes[0].Match`),
//! the field and the value given. [`validate_config_entry`] checks one entry's semantics; the
//! HTTP API runs it on every write.

use std::collections::HashMap;
use std::ops::Range;

use flotilla_types::{
    CONFIG_ENTRY_KINDS, ConfigEntry, HASH_POLICY_FIELDS, LB_POLICIES, PROTOCOLS,
    ServiceRouteDestination, ServiceRouteHttpMatch, SubsetFilter, parse_go_duration,
};
use hcl_edit::Span;
use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::{Body, Structure};
use serde_json::{Map, Value};

use crate::ParseError;
use crate::diag::{Diagnostic, LineIndex, Severity};
use crate::expr::{Env, EvalError, describe, eval};

/// Reads a config entry from HCL, or from JSON when the text starts with `{`, and validates it.
/// Every problem found is returned; `filename` is only used in messages.
pub fn parse_config_entry(text: &str, filename: &str) -> Result<ConfigEntry, ParseError> {
    let mut r = Reader {
        file: filename.to_string(),
        lines: LineIndex::new(text),
        errors: Vec::new(),
        spans: HashMap::new(),
    };
    let tree = if text.trim_start().starts_with('{') {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => from_json(v),
            Err(e) => {
                return Err(ParseError {
                    diagnostics: vec![Diagnostic {
                        severity: Severity::Error,
                        file: filename.to_string(),
                        line: Some(e.line()),
                        column: Some(e.column()),
                        path: String::new(),
                        field: String::new(),
                        message: format!("invalid JSON: {e}"),
                    }],
                });
            }
        }
    } else {
        let rewritten = nested_blocks_as_objects(text);
        let body = hcl_edit::parser::parse_body(&rewritten)
            .map_err(|e| crate::syntax_error(filename, &e))?;
        r.read_body(&body, &rewritten)
    };
    let value = r.entry(&tree);
    if !r.errors.is_empty() {
        return Err(ParseError {
            diagnostics: sorted(r.errors),
        });
    }
    let entry: ConfigEntry = match value.map(serde_json::from_value) {
        Some(Ok(entry)) => entry,
        Some(Err(e)) => {
            return Err(ParseError {
                diagnostics: vec![r.diag("", "", None, format!("invalid config entry: {e}"))],
            });
        }
        None => {
            return Err(ParseError {
                diagnostics: vec![],
            });
        }
    };
    let problems: Vec<Diagnostic> = validate_config_entry(&entry)
        .into_iter()
        .map(|mut d| {
            d.file = r.file.clone();
            let full = join(&d.path, &d.field);
            if let Some(span) = r.locate(&full) {
                let (line, column) = r.lines.position(span.start);
                d.line = Some(line);
                d.column = Some(column);
            }
            d
        })
        .collect();
    if problems.iter().any(Diagnostic::is_error) {
        return Err(ParseError {
            diagnostics: sorted(problems),
        });
    }
    Ok(entry)
}

/// Consul reads config entries with HCL1, which allows blocks inside objects
/// (`Routes = [{ Match { HTTP { … } } }]`); HCL2 does not. Inside an object or a list, every
/// `Name {` outside strings and comments becomes `Name={` (the space before the brace is
/// replaced, so lines and columns stay put), which HCL2 reads as a key holding an object. Blocks
/// in a body stay blocks: repeated ones are valid there.
fn nested_blocks_as_objects(src: &str) -> String {
    #[derive(Clone, Copy, PartialEq)]
    enum Ctx {
        Body,
        Object,
        List,
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Prev {
        Ident(usize),
        Str,
        Other,
    }
    let bytes = src.as_bytes();
    let mut out = String::with_capacity(src.len() + 8);
    let mut stack: Vec<Ctx> = Vec::new();
    let mut prev = Prev::Other;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let ctx = stack.last().copied().unwrap_or(Ctx::Body);
        match c {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i = (i + 1).min(bytes.len());
                out.push_str(&src[start..i]);
                prev = Prev::Str;
                continue;
            }
            b'#' | b'/' if c == b'#' || matches!(bytes.get(i + 1), Some(b'/' | b'*')) => {
                let end = if bytes.get(i + 1) == Some(&b'*') {
                    src[i + 2..]
                        .find("*/")
                        .map_or(bytes.len(), |n| i + 2 + n + 2)
                } else {
                    src[i..].find('\n').map_or(bytes.len(), |n| i + n)
                };
                out.push_str(&src[i..end]);
                i = end;
                continue;
            }
            b'{' => {
                match (ctx, prev) {
                    (Ctx::Body, Prev::Str) => stack.push(Ctx::Body),
                    // A multi-line block in a body stays a block (repeating is valid there); a
                    // one-line one may hold only one attribute in HCL2, so it becomes an object.
                    (Ctx::Body, Prev::Ident(_)) if !one_line(&src[i + 1..]) => {
                        stack.push(Ctx::Body)
                    }
                    (_, Prev::Ident(end)) => {
                        let gap = &src[end..i];
                        if gap.is_empty() {
                            out.push('=');
                        } else if gap.chars().all(|ch| ch == ' ' || ch == '\t') {
                            out.pop();
                            out.push('=');
                        }
                        stack.push(Ctx::Object);
                    }
                    _ => stack.push(Ctx::Object),
                }
                out.push('{');
                prev = Prev::Other;
            }
            b'[' => {
                stack.push(Ctx::List);
                out.push('[');
                prev = Prev::Other;
            }
            b'}' | b']' => {
                stack.pop();
                out.push(c as char);
                prev = Prev::Other;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'-')
                {
                    i += 1;
                }
                out.push_str(&src[start..i]);
                prev = Prev::Ident(i);
                continue;
            }
            b' ' | b'\t' => out.push(c as char),
            _ => {
                prev = Prev::Other;
                let ch = src[i..].chars().next().unwrap_or(' ');
                out.push(ch);
                i += ch.len_utf8();
                continue;
            }
        }
        i += 1;
    }
    out
}

/// Whether a block's body starts on the line of its `{`.
fn one_line(after_brace: &str) -> bool {
    let line = after_brace.split('\n').next().unwrap_or("");
    let line = line.split('#').next().unwrap_or("");
    let line = line.split("//").next().unwrap_or("");
    !line.trim().is_empty()
}

fn sorted(mut d: Vec<Diagnostic>) -> Vec<Diagnostic> {
    d.sort_by_key(|d| (d.line, d.column));
    d
}

fn join(path: &str, field: &str) -> String {
    match (path.is_empty(), field.is_empty()) {
        (true, _) => field.to_string(),
        (false, true) => path.to_string(),
        (false, false) => format!("{path}.{field}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The value tree both syntaxes are read into.

#[derive(Debug, Clone)]
enum Node {
    Obj(Vec<Field>, Option<Range<usize>>),
    List(Vec<Node>, Option<Range<usize>>),
    Val(Value, Option<Range<usize>>),
}

#[derive(Debug, Clone)]
struct Field {
    key: String,
    span: Option<Range<usize>>,
    value: Node,
}

impl Node {
    fn span(&self) -> Option<Range<usize>> {
        match self {
            Node::Obj(_, s) | Node::List(_, s) | Node::Val(_, s) => s.clone(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Node::Obj(..) => "an object".to_string(),
            Node::List(..) => "a list".to_string(),
            Node::Val(v, _) => describe(v),
        }
    }
}

fn from_json(v: Value) -> Node {
    match v {
        Value::Object(map) => Node::Obj(
            map.into_iter()
                .map(|(key, v)| Field {
                    key,
                    span: None,
                    value: from_json(v),
                })
                .collect(),
            None,
        ),
        Value::Array(items) => Node::List(items.into_iter().map(from_json).collect(), None),
        other => Node::Val(other, None),
    }
}

// ---------------------------------------------------------------------------------------------
// The schema of each kind.

#[derive(Debug)]
enum Ty {
    Str,
    /// A string from a fixed set (checked by validation, so the message can name the entry).
    Int,
    Float,
    Bool,
    Dur,
    StrList,
    IntList,
    StrMap,
    Obj(&'static [(&'static str, Ty)]),
    List(&'static [(&'static str, Ty)]),
    Map(&'static [(&'static str, Ty)]),
}

const COMMON: &[(&str, Ty)] = &[
    ("Kind", Ty::Str),
    ("Name", Ty::Str),
    ("Namespace", Ty::Str),
    ("Meta", Ty::StrMap),
    // Accepted (and dropped) so `config read` output can be written back.
    ("CreateIndex", Ty::Int),
    ("ModifyIndex", Ty::Int),
];

const LIMITS: &[(&str, Ty)] = &[
    ("MaxConnections", Ty::Int),
    ("MaxPendingRequests", Ty::Int),
    ("MaxConcurrentRequests", Ty::Int),
];
const PASSIVE: &[(&str, Ty)] = &[
    ("Interval", Ty::Dur),
    ("MaxFailures", Ty::Int),
    ("EnforcingConsecutive5xx", Ty::Int),
    ("MaxEjectionPercent", Ty::Int),
    ("BaseEjectionTime", Ty::Dur),
];
const UPSTREAM_DEFAULTS: &[(&str, Ty)] = &[
    ("ConnectTimeoutMs", Ty::Int),
    ("Limits", Ty::Obj(LIMITS)),
    ("PassiveHealthCheck", Ty::Obj(PASSIVE)),
];
const RL_ROUTE: &[(&str, Ty)] = &[
    ("PathExact", Ty::Str),
    ("PathPrefix", Ty::Str),
    ("PathRegex", Ty::Str),
    ("RequestsPerSecond", Ty::Int),
    ("RequestsMaxBurst", Ty::Int),
];
const INSTANCE_LEVEL: &[(&str, Ty)] = &[
    ("RequestsPerSecond", Ty::Int),
    ("RequestsMaxBurst", Ty::Int),
    ("Routes", Ty::List(RL_ROUTE)),
];
const DEFAULTS: &[(&str, Ty)] = &[
    ("Protocol", Ty::Str),
    ("LocalConnectTimeoutMs", Ty::Int),
    ("LocalRequestTimeoutMs", Ty::Int),
    ("MaxInboundConnections", Ty::Int),
    (
        "UpstreamConfig",
        Ty::Obj(&[("Defaults", Ty::Obj(UPSTREAM_DEFAULTS))]),
    ),
    (
        "RateLimits",
        Ty::Obj(&[("InstanceLevel", Ty::Obj(INSTANCE_LEVEL))]),
    ),
];

const HEADER: &[(&str, Ty)] = &[
    ("Name", Ty::Str),
    ("Present", Ty::Bool),
    ("Exact", Ty::Str),
    ("Prefix", Ty::Str),
    ("Suffix", Ty::Str),
    ("Regex", Ty::Str),
    ("Invert", Ty::Bool),
];
const QUERY: &[(&str, Ty)] = &[
    ("Name", Ty::Str),
    ("Present", Ty::Bool),
    ("Exact", Ty::Str),
    ("Regex", Ty::Str),
];
const HTTP_MATCH: &[(&str, Ty)] = &[
    ("PathExact", Ty::Str),
    ("PathPrefix", Ty::Str),
    ("PathRegex", Ty::Str),
    ("Methods", Ty::StrList),
    ("Header", Ty::List(HEADER)),
    ("QueryParam", Ty::List(QUERY)),
];
const DESTINATION: &[(&str, Ty)] = &[
    ("Service", Ty::Str),
    ("ServiceSubset", Ty::Str),
    ("Namespace", Ty::Str),
    ("PrefixRewrite", Ty::Str),
    ("RequestTimeout", Ty::Dur),
    ("IdleTimeout", Ty::Dur),
    ("NumRetries", Ty::Int),
    ("RetryOnConnectFailure", Ty::Bool),
    ("RetryOnStatusCodes", Ty::IntList),
    ("RetryOn", Ty::StrList),
];
const ROUTE: &[(&str, Ty)] = &[
    ("Match", Ty::Obj(&[("HTTP", Ty::Obj(HTTP_MATCH))])),
    ("Destination", Ty::Obj(DESTINATION)),
];
const ROUTER: &[(&str, Ty)] = &[("Routes", Ty::List(ROUTE))];

const SPLIT: &[(&str, Ty)] = &[
    ("Weight", Ty::Float),
    ("Service", Ty::Str),
    ("ServiceSubset", Ty::Str),
    ("Namespace", Ty::Str),
];
const SPLITTER: &[(&str, Ty)] = &[("Splits", Ty::List(SPLIT))];

const TARGET: &[(&str, Ty)] = &[
    ("Service", Ty::Str),
    ("ServiceSubset", Ty::Str),
    ("Namespace", Ty::Str),
];
const HASH_POLICY: &[(&str, Ty)] = &[
    ("Field", Ty::Str),
    ("FieldValue", Ty::Str),
    (
        "CookieConfig",
        Ty::Obj(&[("Session", Ty::Bool), ("TTL", Ty::Dur), ("Path", Ty::Str)]),
    ),
    ("SourceIP", Ty::Bool),
    ("Terminal", Ty::Bool),
];
const LOAD_BALANCER: &[(&str, Ty)] = &[
    ("Policy", Ty::Str),
    ("LeastRequestConfig", Ty::Obj(&[("ChoiceCount", Ty::Int)])),
    (
        "RingHashConfig",
        Ty::Obj(&[("MinimumRingSize", Ty::Int), ("MaximumRingSize", Ty::Int)]),
    ),
    ("HashPolicies", Ty::List(HASH_POLICY)),
];
const RESOLVER: &[(&str, Ty)] = &[
    ("DefaultSubset", Ty::Str),
    (
        "Subsets",
        Ty::Map(&[("Filter", Ty::Str), ("OnlyPassing", Ty::Bool)]),
    ),
    (
        "Redirect",
        Ty::Obj(&[("Service", Ty::Str), ("ServiceSubset", Ty::Str)]),
    ),
    (
        "Failover",
        Ty::Map(&[
            ("Service", Ty::Str),
            ("ServiceSubset", Ty::Str),
            ("Targets", Ty::List(TARGET)),
        ]),
    ),
    ("ConnectTimeout", Ty::Dur),
    ("RequestTimeout", Ty::Dur),
    ("LoadBalancer", Ty::Obj(LOAD_BALANCER)),
];

fn kind_schema(kind: &str) -> Option<&'static [(&'static str, Ty)]> {
    Some(match kind {
        "service-defaults" => DEFAULTS,
        "service-router" => ROUTER,
        "service-splitter" => SPLITTER,
        "service-resolver" => RESOLVER,
        _ => return None,
    })
}

/// Consul accepts `PathPrefix`, `path_prefix` and `pathprefix` alike.
fn normalize(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn find<'s>(schema: &'s [(&'static str, Ty)], key: &str) -> Option<&'s (&'static str, Ty)> {
    let n = normalize(key);
    schema.iter().find(|(name, _)| normalize(name) == n)
}

fn allowed(schema: &[(&str, Ty)]) -> String {
    schema
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// The walk.

struct Reader<'a> {
    file: String,
    lines: LineIndex<'a>,
    errors: Vec<Diagnostic>,
    /// Span of each value by its canonical JSON path (`Routes[0].Match.HTTP.PathPrefix`).
    spans: HashMap<String, Range<usize>>,
}

impl Reader<'_> {
    fn diag(
        &self,
        path: &str,
        field: &str,
        span: Option<Range<usize>>,
        message: String,
    ) -> Diagnostic {
        let (line, column) = match span {
            Some(s) => {
                let (l, c) = self.lines.position(s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        Diagnostic {
            severity: Severity::Error,
            file: self.file.clone(),
            line,
            column,
            path: path.to_string(),
            field: field.to_string(),
            message,
        }
    }

    fn error(&mut self, path: &str, field: &str, span: Option<Range<usize>>, message: String) {
        let d = self.diag(path, field, span, message);
        self.errors.push(d);
    }

    /// The span recorded for `path`, else for its closest ancestor.
    fn locate(&self, path: &str) -> Option<Range<usize>> {
        let mut p = path.to_string();
        loop {
            if let Some(s) = self.spans.get(&p) {
                return Some(s.clone());
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }

    fn read_body(&mut self, body: &Body, src: &str) -> Node {
        let mut fields = Vec::new();
        for structure in body.iter() {
            match structure {
                Structure::Attribute(attr) => fields.push(Field {
                    key: attr.key.as_str().to_string(),
                    span: attr.span(),
                    value: self.read_expr(&attr.value, src),
                }),
                Structure::Block(block) => {
                    let mut value = self.read_body(&block.body, src);
                    // `Subsets "v1" { … }`: labels are keys of nested objects.
                    for label in block.labels.iter().rev() {
                        value = Node::Obj(
                            vec![Field {
                                key: label.as_str().to_string(),
                                span: label.span(),
                                value,
                            }],
                            block.span(),
                        );
                    }
                    fields.push(Field {
                        key: block.ident.as_str().to_string(),
                        span: block.span(),
                        value,
                    });
                }
            }
        }
        Node::Obj(fields, body.span())
    }

    fn read_expr(&mut self, expr: &Expression, src: &str) -> Node {
        match expr {
            Expression::Object(object) => Node::Obj(
                object
                    .iter()
                    .map(|(key, value)| {
                        let name = match key {
                            ObjectKey::Ident(i) => i.as_str().to_string(),
                            ObjectKey::Expression(e) => match eval(e, src, &Env::default()) {
                                Ok(Value::String(s)) => s,
                                Ok(other) => describe(&other),
                                Err(_) => String::new(),
                            },
                        };
                        Field {
                            key: name,
                            span: key.span(),
                            value: self.read_expr(value.expr(), src),
                        }
                    })
                    .collect(),
                expr.span(),
            ),
            Expression::Array(items) => Node::List(
                items.iter().map(|i| self.read_expr(i, src)).collect(),
                expr.span(),
            ),
            Expression::Parenthesis(p) => self.read_expr(p.inner(), src),
            other => match eval(other, src, &Env::default()) {
                Ok(v) => Node::Val(v, other.span()),
                Err(EvalError::At { span, message }) => {
                    self.error("", "", span.or_else(|| other.span()), message);
                    Node::Val(Value::Null, other.span())
                }
                Err(EvalError::Reported) => Node::Val(Value::Null, other.span()),
            },
        }
    }

    /// The top level: `Kind` picks the schema.
    fn entry(&mut self, tree: &Node) -> Option<Value> {
        let Node::Obj(fields, span) = tree else {
            self.error(
                "",
                "",
                tree.span(),
                format!("expected an object, found {}", tree.describe()),
            );
            return None;
        };
        let kind_field = fields.iter().find(|f| normalize(&f.key) == "kind");
        let kinds = CONFIG_ENTRY_KINDS.join(", ");
        let schema = match kind_field.map(|f| &f.value) {
            None => {
                self.error(
                    "",
                    "Kind",
                    span.clone().map(|s| s.start..s.start),
                    format!("missing Kind (expected one of: {kinds})"),
                );
                return None;
            }
            Some(Node::Val(Value::String(k), vspan)) => match kind_schema(k) {
                Some(s) => s,
                None => {
                    self.error(
                        "",
                        "Kind",
                        vspan.clone(),
                        format!("unknown config entry kind {k:?} (expected one of: {kinds})"),
                    );
                    return None;
                }
            },
            Some(other) => {
                self.error(
                    "",
                    "Kind",
                    other.span(),
                    format!(
                        "Kind must be a string, found {} (expected one of: {kinds})",
                        other.describe()
                    ),
                );
                return None;
            }
        };
        let mut out = self.object(fields, COMMON, schema, "")?;
        if let Value::Object(map) = &mut out {
            // Indexes are the store's; what a file says is ignored.
            map.remove("CreateIndex");
            map.remove("ModifyIndex");
        }
        Some(out)
    }

    fn object(
        &mut self,
        fields: &[Field],
        common: &[(&'static str, Ty)],
        schema: &'static [(&'static str, Ty)],
        path: &str,
    ) -> Option<Value> {
        let mut map = Map::new();
        let mut ok = true;
        // Group repeated keys (repeated blocks) under the canonical name, in order.
        let mut groups: Vec<(&'static str, &Ty, Vec<&Field>)> = Vec::new();
        for f in fields {
            let found = find(common, &f.key).or_else(|| find(schema, &f.key));
            let Some((name, ty)) = found else {
                let mut names: Vec<&str> = common
                    .iter()
                    .filter(|(n, _)| !n.ends_with("Index"))
                    .map(|(n, _)| *n)
                    .collect();
                names.extend(schema.iter().map(|(n, _)| *n));
                self.error(
                    path,
                    &f.key,
                    f.span.clone(),
                    format!(
                        "unknown field {:?} (expected one of: {})",
                        f.key,
                        names.join(", ")
                    ),
                );
                ok = false;
                continue;
            };
            match groups.iter_mut().find(|(n, _, _)| n == name) {
                Some(g) => g.2.push(f),
                None => groups.push((name, ty, vec![f])),
            }
        }
        for (name, ty, fs) in groups {
            let here = join(path, name);
            if let Some(span) = fs[0].span.clone() {
                self.spans.insert(here.clone(), span);
            }
            let value = match ty {
                Ty::List(inner) => {
                    let mut items = Vec::new();
                    for f in &fs {
                        match &f.value {
                            Node::List(elems, _) => items.extend(elems.iter()),
                            obj => items.push(obj),
                        }
                    }
                    let mut out = Vec::new();
                    for (i, item) in items.into_iter().enumerate() {
                        let p = format!("{here}[{i}]");
                        if let Some(span) = item.span() {
                            self.spans.entry(p.clone()).or_insert(span);
                        }
                        match item {
                            Node::Obj(fields, _) => out.push(self.object(fields, &[], inner, &p)),
                            other => {
                                self.error(
                                    &p,
                                    "",
                                    other.span(),
                                    format!(
                                        "{name}: expected an object with fields {}, found {}",
                                        allowed(inner),
                                        other.describe()
                                    ),
                                );
                                out.push(None);
                            }
                        }
                    }
                    out.into_iter()
                        .collect::<Option<Vec<_>>>()
                        .map(Value::Array)
                }
                Ty::Map(inner) => {
                    let mut out = Map::new();
                    let mut good = true;
                    for f in &fs {
                        let Node::Obj(entries, _) = &f.value else {
                            self.type_error(path, name, &f.value, "an object of named entries");
                            good = false;
                            continue;
                        };
                        for e in entries {
                            let p = format!("{here}.{}", e.key);
                            if let Some(span) = e.span.clone() {
                                self.spans.insert(p.clone(), span);
                            }
                            match &e.value {
                                Node::Obj(fields, _) => match self.object(fields, &[], inner, &p) {
                                    Some(v) => {
                                        out.insert(e.key.clone(), v);
                                    }
                                    None => good = false,
                                },
                                other => {
                                    self.type_error(&here, &e.key, other, "an object");
                                    good = false;
                                }
                            }
                        }
                    }
                    good.then_some(Value::Object(out))
                }
                _ if fs.len() > 1 => {
                    self.error(
                        path,
                        name,
                        fs[1].span.clone(),
                        format!("{name} is set more than once"),
                    );
                    None
                }
                Ty::Obj(inner) => match &fs[0].value {
                    Node::Obj(fields, _) => self.object(fields, &[], inner, &here),
                    other => {
                        self.type_error(path, name, other, "an object");
                        None
                    }
                },
                scalar => self.scalar(path, name, &fs[0].value, scalar),
            };
            match value {
                Some(v) => {
                    map.insert(name.to_string(), v);
                }
                None => ok = false,
            }
        }
        ok.then_some(Value::Object(map))
    }

    fn type_error(&mut self, path: &str, field: &str, node: &Node, expected: &str) {
        self.error(
            path,
            field,
            node.span(),
            format!("expected {expected}, found {}", node.describe()),
        );
    }

    fn scalar(&mut self, path: &str, name: &str, node: &Node, ty: &Ty) -> Option<Value> {
        let expected = match ty {
            Ty::Str => "a string",
            Ty::Int => "a non-negative whole number",
            Ty::Float => "a number",
            Ty::Bool => "true or false",
            Ty::Dur => "a duration such as \"15s\" or \"500ms\"",
            Ty::StrList => "a list of strings",
            Ty::IntList => "a list of whole numbers",
            Ty::StrMap => "a map of strings",
            _ => "a value",
        };
        let value = match node {
            Node::Val(v, _) => v.clone(),
            Node::List(items, _) if matches!(ty, Ty::StrList | Ty::IntList) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Node::Val(v, _) => out.push(v.clone()),
                        other => {
                            self.type_error(path, name, other, expected);
                            return None;
                        }
                    }
                }
                Value::Array(out)
            }
            Node::Obj(fields, _) if matches!(ty, Ty::StrMap) => {
                let mut out = Map::new();
                for f in fields {
                    match &f.value {
                        Node::Val(Value::String(s), _) => {
                            out.insert(f.key.clone(), Value::String(s.clone()));
                        }
                        other => {
                            self.type_error(&join(path, name), &f.key, other, "a string");
                            return None;
                        }
                    }
                }
                return Some(Value::Object(out));
            }
            other => {
                self.type_error(path, name, other, expected);
                return None;
            }
        };
        let good = match (ty, &value) {
            (Ty::Str, Value::String(_)) | (Ty::Bool, Value::Bool(_)) => true,
            (Ty::Int, Value::Number(n)) => n.as_u64().is_some_and(|n| n <= u32::MAX as u64),
            (Ty::Float, Value::Number(_)) => true,
            (Ty::Dur, Value::String(s)) => match parse_go_duration(s) {
                Ok(_) => true,
                Err(e) => {
                    self.error(path, name, node.span(), e);
                    return None;
                }
            },
            (Ty::StrList, Value::Array(a)) => a.iter().all(Value::is_string),
            (Ty::IntList, Value::Array(a)) => a.iter().all(|v| v.as_u64().is_some()),
            _ => false,
        };
        if !good {
            self.error(
                path,
                name,
                node.span(),
                format!("expected {expected}, found {}", describe(&value)),
            );
            return None;
        }
        Some(value)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

struct Check {
    out: Vec<Diagnostic>,
}

impl Check {
    fn err(&mut self, path: &str, field: &str, message: String) {
        self.out.push(Diagnostic {
            severity: Severity::Error,
            file: String::new(),
            line: None,
            column: None,
            path: path.to_string(),
            field: field.to_string(),
            message,
        });
    }

    fn regex(&mut self, path: &str, field: &str, value: &str) {
        if let Err(e) = regex::Regex::new(value) {
            let first = e.to_string();
            let summary = first.lines().last().unwrap_or("").trim().to_string();
            self.err(path, field, format!("invalid regex {value:?}: {summary}"));
        }
    }

    fn paths(&mut self, path: &str, exact: &str, prefix: &str, regex: &str) {
        let set: Vec<&str> = [
            ("PathExact", exact),
            ("PathPrefix", prefix),
            ("PathRegex", regex),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, _)| *n)
        .collect();
        if set.len() > 1 {
            self.err(
                path,
                set[1],
                format!(
                    "only one of PathExact, PathPrefix and PathRegex may be set, found {}",
                    set.join(" and ")
                ),
            );
        }
        if !exact.is_empty() && !exact.starts_with('/') {
            self.err(
                path,
                "PathExact",
                format!("{exact:?} does not start with \"/\""),
            );
        }
        if !prefix.is_empty() && !prefix.starts_with('/') {
            self.err(
                path,
                "PathPrefix",
                format!("{prefix:?} does not start with \"/\""),
            );
        }
        if !regex.is_empty() {
            self.regex(path, "PathRegex", regex);
        }
    }
}

const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// The semantic problems of one entry on its own (cross-entry checks, such as a router's
/// protocol, need the other entries: see the store's `config_entry_conflicts`). Each
/// diagnostic's `path` is the JSON path of the object (`Routes[0].Match.HTTP`) and `field` the
/// offending field.
pub fn validate_config_entry(entry: &ConfigEntry) -> Vec<Diagnostic> {
    let mut c = Check { out: Vec::new() };
    if entry.name().is_empty() {
        c.err(
            "",
            "Name",
            format!(
                "missing Name (the service this {} configures)",
                entry.kind()
            ),
        );
    }
    match entry {
        ConfigEntry::ServiceDefaults(d) => {
            if !PROTOCOLS.contains(&d.protocol.as_str()) {
                c.err(
                    "",
                    "Protocol",
                    format!(
                        "invalid protocol {:?} (expected one of: {})",
                        d.protocol,
                        PROTOCOLS.join(", ")
                    ),
                );
            }
            let routes = d
                .rate_limits
                .as_ref()
                .and_then(|r| r.instance_level.as_ref())
                .map(|l| l.routes.as_slice())
                .unwrap_or_default();
            for (i, r) in routes.iter().enumerate() {
                let p = format!("RateLimits.InstanceLevel.Routes[{i}]");
                if r.path_exact.is_empty() && r.path_prefix.is_empty() && r.path_regex.is_empty() {
                    c.err(
                        &p,
                        "",
                        "one of PathExact, PathPrefix or PathRegex is required".into(),
                    );
                }
                c.paths(&p, &r.path_exact, &r.path_prefix, &r.path_regex);
            }
        }
        ConfigEntry::ServiceRouter(r) => {
            for (i, route) in r.routes.iter().enumerate() {
                let p = format!("Routes[{i}]");
                if let Some(http) = route.r#match.as_ref().and_then(|m| m.http.as_ref()) {
                    http_match(&mut c, &format!("{p}.Match.HTTP"), http);
                }
                if let Some(dest) = &route.destination {
                    destination(&mut c, &format!("{p}.Destination"), dest);
                }
            }
        }
        ConfigEntry::ServiceSplitter(s) => {
            if s.splits.is_empty() {
                c.err("", "Splits", "at least one split is required".into());
            }
            let mut total: i64 = 0;
            let mut seen = Vec::new();
            for (i, split) in s.splits.iter().enumerate() {
                let p = format!("Splits[{i}]");
                if split.weight < 0.0 || split.weight > 100.0 {
                    c.err(
                        &p,
                        "Weight",
                        format!(
                            "weight {} is out of range (expected 0 to 100)",
                            split.weight
                        ),
                    );
                }
                total += (split.weight as f64 * 100.0).round() as i64;
                let target = (split.service.as_str(), split.service_subset.as_str());
                if seen.contains(&target) {
                    c.err(
                        &p,
                        "",
                        format!(
                            "split to service {:?} subset {:?} is listed twice",
                            if target.0.is_empty() {
                                s.name.as_str()
                            } else {
                                target.0
                            },
                            target.1
                        ),
                    );
                }
                seen.push(target);
            }
            if !s.splits.is_empty() && total != 10_000 {
                c.err(
                    "",
                    "Splits",
                    format!(
                        "the split weights sum to {:.2}, they must sum to 100",
                        total as f64 / 100.0
                    ),
                );
            }
        }
        ConfigEntry::ServiceResolver(r) => {
            for (name, subset) in &r.subsets {
                let p = format!("Subsets.{name}");
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
                {
                    c.err(
                        &p,
                        "",
                        format!("invalid subset name {name:?} (lowercase letters, digits and dashes only)"),
                    );
                }
                if !subset.filter.is_empty()
                    && let Err(e) = SubsetFilter::parse(&subset.filter)
                {
                    c.err(
                        &p,
                        "Filter",
                        format!("invalid filter {:?}: {e}", subset.filter),
                    );
                }
            }
            if !r.default_subset.is_empty() && !r.subsets.contains_key(&r.default_subset) {
                c.err(
                    "",
                    "DefaultSubset",
                    format!(
                        "DefaultSubset {:?} is not one of the Subsets",
                        r.default_subset
                    ),
                );
            }
            if let Some(red) = &r.redirect {
                if !r.subsets.is_empty() || !r.failover.is_empty() || !r.default_subset.is_empty() {
                    c.err(
                        "",
                        "Redirect",
                        "Redirect cannot be combined with Subsets, DefaultSubset or Failover"
                            .into(),
                    );
                }
                if red.service.is_empty() && red.service_subset.is_empty() {
                    c.err(
                        "Redirect",
                        "",
                        "Redirect needs Service or ServiceSubset".into(),
                    );
                }
            }
            for (key, f) in &r.failover {
                let p = format!("Failover.{key}");
                if key != "*" && !r.subsets.contains_key(key) {
                    c.err(&p, "", format!("failover for unknown subset {key:?} (expected \"*\" or one of the Subsets)"));
                }
                if f.service.is_empty() && f.service_subset.is_empty() && f.targets.is_empty() {
                    c.err(
                        &p,
                        "",
                        "failover needs Service, ServiceSubset or Targets".into(),
                    );
                }
                if !f.targets.is_empty() && (!f.service.is_empty() || !f.service_subset.is_empty())
                {
                    c.err(
                        &p,
                        "Targets",
                        "Targets cannot be combined with Service or ServiceSubset".into(),
                    );
                }
            }
            if let Some(lb) = &r.load_balancer {
                let p = "LoadBalancer";
                let policy = if lb.policy.is_empty() {
                    "round_robin"
                } else {
                    lb.policy.as_str()
                };
                if !LB_POLICIES.contains(&policy) {
                    c.err(
                        p,
                        "Policy",
                        format!(
                            "unknown load balancer policy {:?} (expected one of: {})",
                            lb.policy,
                            LB_POLICIES.join(", ")
                        ),
                    );
                }
                let hashing = policy == "ring_hash" || policy == "maglev";
                if !lb.hash_policies.is_empty() && !hashing {
                    c.err(
                        p,
                        "HashPolicies",
                        format!("hash policies need Policy ring_hash or maglev, not {policy:?}"),
                    );
                }
                if lb.ring_hash_config.is_some() && policy != "ring_hash" {
                    c.err(
                        p,
                        "RingHashConfig",
                        format!("RingHashConfig needs Policy ring_hash, not {policy:?}"),
                    );
                }
                if let Some(rh) = &lb.ring_hash_config
                    && rh.maximum_ring_size != 0
                    && rh.minimum_ring_size > rh.maximum_ring_size
                {
                    c.err(
                        &format!("{p}.RingHashConfig"),
                        "MinimumRingSize",
                        format!(
                            "MinimumRingSize {} is larger than MaximumRingSize {}",
                            rh.minimum_ring_size, rh.maximum_ring_size
                        ),
                    );
                }
                if lb.least_request_config.is_some() && policy != "least_request" {
                    c.err(
                        p,
                        "LeastRequestConfig",
                        format!("LeastRequestConfig needs Policy least_request, not {policy:?}"),
                    );
                }
                for (i, h) in lb.hash_policies.iter().enumerate() {
                    let hp = format!("{p}.HashPolicies[{i}]");
                    if h.source_ip {
                        if !h.field.is_empty() {
                            c.err(
                                &hp,
                                "SourceIP",
                                format!("SourceIP cannot be combined with Field {:?}", h.field),
                            );
                        }
                    } else if !HASH_POLICY_FIELDS.contains(&h.field.as_str()) {
                        c.err(&hp, "Field", format!("invalid hash policy field {:?} (expected one of: {}, or SourceIP = true)", h.field, HASH_POLICY_FIELDS.join(", ")));
                    } else if h.field_value.is_empty() {
                        c.err(
                            &hp,
                            "FieldValue",
                            format!("FieldValue is required with Field {:?}", h.field),
                        );
                    }
                    if h.cookie_config.is_some() && h.field != "cookie" {
                        c.err(
                            &hp,
                            "CookieConfig",
                            format!("CookieConfig needs Field \"cookie\", not {:?}", h.field),
                        );
                    }
                    if let Some(cc) = &h.cookie_config
                        && cc.session
                        && cc.ttl.is_some_and(|t| !t.is_zero())
                    {
                        c.err(
                            &format!("{hp}.CookieConfig"),
                            "TTL",
                            "a session cookie cannot have a TTL".into(),
                        );
                    }
                }
            }
        }
    }
    c.out
}

fn http_match(c: &mut Check, p: &str, http: &ServiceRouteHttpMatch) {
    c.paths(p, &http.path_exact, &http.path_prefix, &http.path_regex);
    for m in &http.methods {
        if !HTTP_METHODS.contains(&m.as_str()) {
            c.err(
                p,
                "Methods",
                format!(
                    "invalid HTTP method {m:?} (expected one of: {})",
                    HTTP_METHODS.join(", ")
                ),
            );
        }
    }
    for (i, h) in http.header.iter().enumerate() {
        let hp = format!("{p}.Header[{i}]");
        if h.name.is_empty() {
            c.err(&hp, "Name", "header match needs a Name".into());
        }
        let ops: Vec<&str> = [
            ("Present", h.present),
            ("Exact", !h.exact.is_empty()),
            ("Prefix", !h.prefix.is_empty()),
            ("Suffix", !h.suffix.is_empty()),
            ("Regex", !h.regex.is_empty()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| *n)
        .collect();
        if ops.len() > 1 {
            c.err(&hp, ops[1], format!("header {:?} sets more than one of Present, Exact, Prefix, Suffix and Regex: {}", h.name, ops.join(", ")));
        }
        if !h.regex.is_empty() {
            c.regex(&hp, "Regex", &h.regex);
        }
    }
    for (i, q) in http.query_param.iter().enumerate() {
        let qp = format!("{p}.QueryParam[{i}]");
        if q.name.is_empty() {
            c.err(&qp, "Name", "query parameter match needs a Name".into());
        }
        let ops = [q.present, !q.exact.is_empty(), !q.regex.is_empty()];
        if ops.iter().filter(|x| **x).count() > 1 {
            c.err(
                &qp,
                "",
                format!(
                    "query parameter {:?} sets more than one of Present, Exact and Regex",
                    q.name
                ),
            );
        }
        if !q.regex.is_empty() {
            c.regex(&qp, "Regex", &q.regex);
        }
    }
}

fn destination(c: &mut Check, p: &str, d: &ServiceRouteDestination) {
    for code in &d.retry_on_status_codes {
        if !(100..=599).contains(code) {
            c.err(
                p,
                "RetryOnStatusCodes",
                format!("status code {code} is out of range (expected 100 to 599)"),
            );
        }
    }
    for r in &d.retry_on {
        if !RETRY_ON.contains(&r.as_str()) {
            c.err(
                p,
                "RetryOn",
                format!(
                    "unknown retry condition {r:?} (expected one of: {})",
                    RETRY_ON.join(", ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse_config_entry(text, "e.hcl") {
            Ok(e) => panic!("parsed: {e:?}"),
            Err(e) => e.diagnostics.iter().map(ToString::to_string).collect(),
        }
    }

    fn one_error(text: &str, needle: &str) -> String {
        let errs = errors(text);
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "no error containing {needle:?} in {errs:#?}"
        );
        errs.join("\n")
    }

    #[test]
    fn router_in_hcl_attribute_and_block_forms() {
        let attr = r#"
Kind = "service-router"
Name = "web"
Routes = [
  {
    Match { HTTP { PathPrefix = "/api" } }
    Destination { Service = "api" }
  },
  {
    match = { http = { header = [{ name = "x-canary", exact = "true" }] } }
    destination = { service = "web", service_subset = "v2", request_timeout = "15s" }
  },
]
"#;
        let blocks = r#"
kind = "service-router"
name = "web"
routes {
  match { http { path_prefix = "/api" } }
  destination { service = "api" }
}
routes {
  match {
    http {
      header {
        name  = "x-canary"
        exact = "true"
      }
    }
  }
  destination {
    service         = "web"
    service_subset  = "v2"
    request_timeout = "15s"
  }
}
"#;
        let a = parse_config_entry(attr, "a.hcl").unwrap();
        let b = parse_config_entry(blocks, "b.hcl").unwrap();
        assert_eq!(a, b);
        let ConfigEntry::ServiceRouter(r) = a else {
            panic!("not a router")
        };
        assert_eq!(r.routes.len(), 2);
        let d = r.routes[1].destination.as_ref().unwrap();
        assert_eq!(d.request_timeout, Some(std::time::Duration::from_secs(15)));
        assert_eq!(
            r.routes[1]
                .r#match
                .as_ref()
                .unwrap()
                .http
                .as_ref()
                .unwrap()
                .header[0]
                .name,
            "x-canary"
        );
    }

    #[test]
    fn json_and_resolver_with_labelled_subsets() {
        let json = r#"{"Kind":"service-resolver","Name":"web","DefaultSubset":"v1",
            "Subsets":{"v1":{"Filter":"Service.Tags contains \"v1\""},"v2":{"Filter":"\"v2\" in Service.Tags"}},
            "ConnectTimeout":"5s",
            "LoadBalancer":{"Policy":"ring_hash","HashPolicies":[{"Field":"header","FieldValue":"x-user"}]}}"#;
        let hcl = r#"
Kind = "service-resolver"
Name = "web"
DefaultSubset = "v1"
Subsets "v1" { Filter = "Service.Tags contains \"v1\"" }
Subsets "v2" { Filter = "\"v2\" in Service.Tags" }
ConnectTimeout = "5s"
LoadBalancer {
  Policy = "ring_hash"
  HashPolicies = [{ Field = "header", FieldValue = "x-user" }]
}
"#;
        assert_eq!(
            parse_config_entry(json, "r.json").unwrap(),
            parse_config_entry(hcl, "r.hcl").unwrap()
        );
    }

    #[test]
    fn unknown_kind_field_and_missing_name() {
        one_error(
            "Kind = \"service-x\"\nName = \"a\"",
            "e.hcl:1:8: error: Kind: unknown config entry kind \"service-x\"",
        );
        one_error("Name = \"a\"", "missing Kind");
        one_error(
            "Kind = \"service-router\"\nName = \"a\"\nRoutes = [{ Destination { Servic = \"x\" } }]",
            "e.hcl:3:27: error: Routes[0].Destination: Servic: unknown field \"Servic\"",
        );
        one_error(
            "Kind = \"service-splitter\"\nSplits = [{ Weight = 100 }]",
            "Name: missing Name",
        );
        let e = errors(r#"{"Kind":"service-defaults","Name":"a","Protocl":"http"}"#);
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("Protocl: unknown field"), "{e:?}");
    }

    #[test]
    fn protocol_and_types() {
        one_error(
            "Kind = \"service-defaults\"\nName = \"a\"\nProtocol = \"udp\"",
            "e.hcl:3:1: error: Protocol: invalid protocol \"udp\" (expected one of: tcp, http, http2, grpc)",
        );
        one_error(
            "Kind = \"service-defaults\"\nName = \"a\"\nMaxInboundConnections = -1",
            "e.hcl:3:25: error: MaxInboundConnections: expected a non-negative whole number, found number -1",
        );
    }

    #[test]
    fn splitter_weights() {
        one_error(
            r#"{"Kind":"service-splitter","Name":"a","Splits":[{"Weight":90},{"Weight":9.98,"ServiceSubset":"v2"}]}"#,
            "the split weights sum to 99.98, they must sum to 100",
        );
        one_error(
            r#"{"Kind":"service-splitter","Name":"a","Splits":[{"Weight":110},{"Weight":-10,"ServiceSubset":"v2"}]}"#,
            "Splits[1]: Weight: weight -10 is out of range",
        );
        // Within 0.01 is fine.
        parse_config_entry(
            r#"{"Kind":"service-splitter","Name":"a","Splits":[{"Weight":33.33},{"Weight":33.33,"ServiceSubset":"b"},{"Weight":33.34,"ServiceSubset":"c"}]}"#,
            "s.json",
        )
        .unwrap();
    }

    #[test]
    fn regex_duration_and_filter() {
        one_error(
            "Kind = \"service-router\"\nName = \"a\"\nRoutes = [{ Match { HTTP { PathRegex = \"(\" } } }]",
            "e.hcl:3:28: error: Routes[0].Match.HTTP: PathRegex: invalid regex \"(\"",
        );
        one_error(
            "Kind = \"service-resolver\"\nName = \"a\"\nConnectTimeout = \"5 sec\"",
            "e.hcl:3:18: error: ConnectTimeout: unknown unit \" sec\"",
        );
        one_error(
            "Kind = \"service-resolver\"\nName = \"a\"\nSubsets = { v1 = { Filter = \"Service.Tags has 1\" } }",
            "Subsets.v1: Filter: invalid filter",
        );
    }

    #[test]
    fn load_balancer_rules() {
        one_error(
            r#"{"Kind":"service-resolver","Name":"a","LoadBalancer":{"Policy":"fastest"}}"#,
            "LoadBalancer: Policy: unknown load balancer policy \"fastest\"",
        );
        one_error(
            r#"{"Kind":"service-resolver","Name":"a","LoadBalancer":{"Policy":"random","HashPolicies":[{"Field":"header","FieldValue":"x"}]}}"#,
            "hash policies need Policy ring_hash or maglev, not \"random\"",
        );
    }

    #[test]
    fn path_header_and_status_codes() {
        one_error(
            r#"{"Kind":"service-router","Name":"a","Routes":[{"Match":{"HTTP":{"PathExact":"/a","PathPrefix":"/b"}}}]}"#,
            "Routes[0].Match.HTTP: PathPrefix: only one of PathExact, PathPrefix and PathRegex may be set, found PathExact and PathPrefix",
        );
        one_error(
            r#"{"Kind":"service-router","Name":"a","Routes":[{"Match":{"HTTP":{"Header":[{"Name":"x","Exact":"1","Prefix":"2"}]}}}]}"#,
            "Routes[0].Match.HTTP.Header[0]: Prefix: header \"x\" sets more than one",
        );
        one_error(
            r#"{"Kind":"service-router","Name":"a","Routes":[{"Destination":{"RetryOnStatusCodes":[503,99,600]}}]}"#,
            "status code 99 is out of range (expected 100 to 599)",
        );
        let e = one_error(
            r#"{"Kind":"service-router","Name":"a","Routes":[{"Destination":{"RetryOnStatusCodes":[503,99,600]}}]}"#,
            "status code 600",
        );
        assert_eq!(e.lines().count(), 2);
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn examples_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/config");
        for name in [
            "web-router.hcl",
            "web-splitter.json",
            "web-resolver.hcl",
            "web-defaults.hcl",
        ] {
            let text = std::fs::read_to_string(format!("{dir}/{name}")).unwrap();
            if let Err(e) = super::parse_config_entry(&text, name) {
                panic!("{name}: {e}");
            }
        }
    }
}
