//! The HCL functions a jobspec may call when it is parsed, with the meaning HCL (and Nomad)
//! gives them: `file`, `format`, `join`, `lower`, `upper`, `concat` and `merge`.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::expr::{describe, interpolate};

/// Every supported function, for messages.
pub(crate) const FUNCTIONS: &[&str] = &[
    "concat", "file", "format", "join", "lower", "merge", "upper",
];

/// The largest `format` width or precision: enough for any jobspec, small enough that a typo
/// cannot ask for gigabytes.
const MAX_WIDTH: usize = 1024;

/// Calls function `name`. `base_dir` is where `file()` reads from; `None` disables it.
pub(crate) fn call(name: &str, args: &[Value], base_dir: Option<&Path>) -> Result<Value, String> {
    match name {
        "file" => file(args, base_dir),
        "format" => format(args),
        "join" => join(args),
        "lower" => Ok(Value::String(one_string(args)?.to_lowercase())),
        "upper" => Ok(Value::String(one_string(args)?.to_uppercase())),
        "concat" => concat(args),
        "merge" => merge(args),
        other => Err(format!(
            "unknown function {other:?} (supported: {})",
            FUNCTIONS.join(", ")
        )),
    }
}

fn one_string(args: &[Value]) -> Result<&str, String> {
    match args {
        [Value::String(s)] => Ok(s),
        [other] => Err(format!("expected a string, got {}", describe(other))),
        _ => Err(format!("takes 1 argument, got {}", args.len())),
    }
}

/// `file(path)`: the contents of a file, relative to the jobspec's directory.
fn file(args: &[Value], base_dir: Option<&Path>) -> Result<Value, String> {
    let path = one_string(args)?;
    let Some(base) = base_dir else {
        return Err(format!(
            "cannot read {path:?}: file() is only available when the jobspec is read from a \
             file (no base directory was given)"
        ));
    };
    let full = base.join(path);
    std::fs::read_to_string(&full)
        .map(Value::String)
        .map_err(|err| format!("cannot read {:?}: {err}", full.display().to_string()))
}

/// `join(separator, list, …)`.
fn join(args: &[Value]) -> Result<Value, String> {
    let Some((sep, lists)) = args.split_first() else {
        return Err("takes a separator and at least one list, got no arguments".to_string());
    };
    let Value::String(sep) = sep else {
        return Err(format!(
            "the separator must be a string, got {}",
            describe(sep)
        ));
    };
    if lists.is_empty() {
        return Err("takes a separator and at least one list".to_string());
    }
    let mut parts = Vec::new();
    for list in lists {
        let Value::Array(items) = list else {
            return Err(format!("expected a list, got {}", describe(list)));
        };
        for item in items {
            parts.push(interpolate(item)?);
        }
    }
    Ok(Value::String(parts.join(sep)))
}

/// `concat(list, …)`: one list with the elements of all.
fn concat(args: &[Value]) -> Result<Value, String> {
    if args.is_empty() {
        return Err("takes at least one list".to_string());
    }
    let mut out = Vec::new();
    for list in args {
        let Value::Array(items) = list else {
            return Err(format!("expected lists, got {}", describe(list)));
        };
        out.extend(items.iter().cloned());
    }
    Ok(Value::Array(out))
}

/// `merge(map, …)`: one map; later keys win; `null` arguments are skipped.
fn merge(args: &[Value]) -> Result<Value, String> {
    let mut out = serde_json::Map::new();
    for map in args {
        match map {
            Value::Object(entries) => {
                out.extend(entries.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            Value::Null => {}
            other => return Err(format!("expected maps, got {}", describe(other))),
        }
    }
    Ok(Value::Object(out))
}

/// `format(spec, values…)`, with Go's verbs as HCL has them: `%v %s %q %d %f %t %x %X %o %b`
/// and `%%`, with the flags `-+0 `, a width and a precision.
fn format(args: &[Value]) -> Result<Value, String> {
    let Some((spec, values)) = args.split_first() else {
        return Err("takes a format string and values, got no arguments".to_string());
    };
    let Value::String(spec) = spec else {
        return Err(format!(
            "the format must be a string, got {}",
            describe(spec)
        ));
    };
    let mut out = String::new();
    let mut values = values.iter();
    let mut used = 0usize;
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            out.push('%');
            continue;
        }
        let mut verb = Verb::default();
        while let Some(&flag) = chars.peek() {
            match flag {
                '-' => verb.left = true,
                '+' => verb.plus = true,
                '0' => verb.zero = true,
                ' ' => verb.space = true,
                _ => break,
            }
            chars.next();
        }
        verb.width = digits(&mut chars);
        if chars.peek() == Some(&'.') {
            chars.next();
            verb.precision = Some(digits(&mut chars).unwrap_or(0));
        }
        if verb
            .width
            .max(verb.precision)
            .is_some_and(|n| n > MAX_WIDTH)
        {
            return Err(format!(
                "format {spec:?}: widths and precisions above {MAX_WIDTH} are not supported"
            ));
        }
        let Some(kind) = chars.next() else {
            return Err(format!("format {spec:?} ends with an incomplete verb"));
        };
        let Some(value) = values.next() else {
            return Err(format!(
                "format {spec:?} needs more than the {used} value(s) given"
            ));
        };
        used += 1;
        let text = verb.render(kind, value)?;
        out.push_str(&verb.pad(text, kind));
    }
    if values.next().is_some() {
        return Err(format!(
            "format {spec:?} has {used} verb(s) but more values were given"
        ));
    }
    Ok(Value::String(out))
}

fn digits(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<usize> {
    let mut n: Option<usize> = None;
    while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
        chars.next();
        n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(d as usize));
    }
    n
}

#[derive(Default)]
struct Verb {
    left: bool,
    plus: bool,
    zero: bool,
    space: bool,
    width: Option<usize>,
    precision: Option<usize>,
}

impl Verb {
    fn render(&self, kind: char, value: &Value) -> Result<String, String> {
        let wrong = |expected: &str| {
            Err(format!(
                "%{kind} expects {expected}, got {}",
                describe(value)
            ))
        };
        match kind {
            'v' => Ok(match value {
                Value::String(s) => s.clone(),
                Value::Null => "null".to_string(),
                other => other.to_string(),
            }),
            's' => {
                let text = interpolate(value).or_else(|_| wrong("a string"))?;
                Ok(match self.precision {
                    Some(p) => text.chars().take(p).collect(),
                    None => text,
                })
            }
            'q' => match value {
                Value::String(s) => Ok(Value::String(s.clone()).to_string()),
                _ => wrong("a string"),
            },
            't' => match value {
                Value::Bool(b) => Ok(b.to_string()),
                _ => wrong("a bool"),
            },
            'd' | 'x' | 'X' | 'o' | 'b' => {
                let Some(n) = whole_number(value) else {
                    return wrong("a whole number");
                };
                let magnitude = n.unsigned_abs();
                let digits = match kind {
                    'x' => format!("{magnitude:x}"),
                    'X' => format!("{magnitude:X}"),
                    'o' => format!("{magnitude:o}"),
                    'b' => format!("{magnitude:b}"),
                    _ => magnitude.to_string(),
                };
                Ok(self.signed(n < 0, digits))
            }
            'f' | 'F' => {
                let Some(f) = float(value) else {
                    return wrong("a number");
                };
                let digits = format!("{:.*}", self.precision.unwrap_or(6), f.abs());
                Ok(self.signed(f.is_sign_negative() && f != 0.0, digits))
            }
            other => Err(format!(
                "unsupported verb %{other} (supported: %v %s %q %d %f %t %x %X %o %b %%)"
            )),
        }
    }

    fn signed(&self, negative: bool, digits: String) -> String {
        let mut out = String::new();
        if negative {
            out.push('-');
        } else if self.plus {
            out.push('+');
        } else if self.space {
            out.push(' ');
        }
        let _ = write!(out, "{digits}");
        out
    }

    fn pad(&self, text: String, kind: char) -> String {
        let Some(width) = self.width else {
            return text;
        };
        let len = text.chars().count();
        if len >= width {
            return text;
        }
        let fill = width - len;
        if self.left {
            return text + &" ".repeat(fill);
        }
        let numeric = matches!(kind, 'd' | 'x' | 'X' | 'o' | 'b' | 'f' | 'F');
        if self.zero && numeric {
            let (sign, rest) = match text.chars().next() {
                Some(c @ ('-' | '+' | ' ')) => (c.to_string(), text[c.len_utf8()..].to_string()),
                _ => (String::new(), text),
            };
            return sign + &"0".repeat(fill) + &rest;
        }
        " ".repeat(fill) + &text
    }
}

fn whole_number(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn float(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(name: &str, args: Value) -> Result<Value, String> {
        let Value::Array(args) = args else {
            panic!("args must be a list")
        };
        call(name, &args, None)
    }

    #[test]
    fn format_verbs() {
        let ok = |args: Value| f("format", args).unwrap();
        assert_eq!(ok(json!(["%s-%d", "web", 3])), json!("web-3"));
        assert_eq!(ok(json!(["%v/%v/%v", "a", 1.5, true])), json!("a/1.5/true"));
        assert_eq!(ok(json!(["%q", "a\"b"])), json!("\"a\\\"b\""));
        assert_eq!(
            ok(json!(["%05d|%-4s|%4s", 42, "ab", "cd"])),
            json!("00042|ab  |  cd")
        );
        assert_eq!(
            ok(json!(["%.2f %x %X %o %b", 1.23456, 255, 255, 8, 5])),
            json!("1.23 ff FF 10 101")
        );
        assert_eq!(
            ok(json!(["%+d %d %t 100%%", 5, -5, false])),
            json!("+5 -5 false 100%")
        );
        assert_eq!(
            ok(json!(["%d", "7"])),
            json!("7"),
            "numeric strings convert"
        );
        assert!(
            f("format", json!(["%s %s", "a"]))
                .unwrap_err()
                .contains("needs more")
        );
        assert!(
            f("format", json!(["%s", "a", "b"]))
                .unwrap_err()
                .contains("more values")
        );
        assert!(
            f("format", json!(["%d", "x"]))
                .unwrap_err()
                .contains("whole number")
        );
        assert!(
            f("format", json!(["%z", 1]))
                .unwrap_err()
                .contains("unsupported verb")
        );
        assert!(
            f("format", json!(["%", 1]))
                .unwrap_err()
                .contains("incomplete")
        );
        assert!(
            f("format", json!(["%.99999999999f", 1]))
                .unwrap_err()
                .contains("above 1024")
        );
        assert!(f("format", json!(["%99999999999d", 1])).is_err());
    }

    #[test]
    fn string_and_collection_functions() {
        assert_eq!(f("lower", json!(["AbC"])).unwrap(), json!("abc"));
        assert_eq!(f("upper", json!(["AbC"])).unwrap(), json!("ABC"));
        assert!(
            f("upper", json!([1]))
                .unwrap_err()
                .contains("expected a string")
        );
        assert!(
            f("lower", json!([]))
                .unwrap_err()
                .contains("takes 1 argument")
        );
        assert_eq!(
            f("join", json!([",", ["a", "b"], ["c", 1]])).unwrap(),
            json!("a,b,c,1")
        );
        assert!(f("join", json!([","])).is_err());
        assert_eq!(
            f("concat", json!([["a"], [], ["b", 2]])).unwrap(),
            json!(["a", "b", 2])
        );
        assert!(f("concat", json!([["a"], "b"])).is_err());
        assert_eq!(
            f("merge", json!([{"a": 1, "b": 1}, null, {"b": 2}])).unwrap(),
            json!({"a": 1, "b": 2})
        );
        assert!(f("merge", json!([{"a": 1}, ["x"]])).is_err());
    }

    #[test]
    fn file_is_relative_to_base_dir() {
        let dir = std::env::temp_dir().join(format!("jobspec-funcs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x.txt"), "hello\n").unwrap();
        assert_eq!(
            call("file", &[json!("x.txt")], Some(&dir)).unwrap(),
            json!("hello\n")
        );
        assert!(
            call("file", &[json!("missing.txt")], Some(&dir))
                .unwrap_err()
                .contains("cannot read")
        );
        assert!(
            call("file", &[json!("x.txt")], None)
                .unwrap_err()
                .contains("no base directory")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
