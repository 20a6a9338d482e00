//! Parsing of the process drivers' `config { … }` block.

use serde_json::Value;

use crate::DriverError;

/// `config { command = "…" args = [ … ] }` of `raw_exec` and `exec`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandConfig {
    /// The program: a path, or a bare name searched as described in the crate docs.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
}

impl CommandConfig {
    /// Reads the block; errors name the field (`config.args: expected a list of strings`).
    /// Fields other than `command` and `args` are ignored.
    pub fn parse(config: &Value) -> Result<Self, DriverError> {
        let obj = match config {
            Value::Object(obj) => obj,
            Value::Null => {
                return Err(invalid(
                    "config.command",
                    "required, but the task has no config block",
                ));
            }
            other => {
                return Err(invalid(
                    "config",
                    format!("expected an object, got {}", kind(other)),
                ));
            }
        };
        let command = match obj.get("command") {
            None | Some(Value::Null) => return Err(invalid("config.command", "required")),
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Err(invalid("config.command", "must not be empty"));
            }
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(invalid(
                    "config.command",
                    format!("expected a string, got {}", kind(other)),
                ));
            }
        };
        let args = match obj.get("args") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut args = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => args.push(s.clone()),
                        other => {
                            return Err(invalid(
                                "config.args",
                                format!(
                                    "expected a list of strings, element {i} is {}",
                                    kind(other)
                                ),
                            ));
                        }
                    }
                }
                args
            }
            Some(other) => {
                return Err(invalid(
                    "config.args",
                    format!("expected a list of strings, got {}", kind(other)),
                ));
            }
        };
        Ok(Self { command, args })
    }
}

pub(crate) fn invalid(field: &str, message: impl Into<String>) -> DriverError {
    DriverError::InvalidConfig {
        field: field.to_string(),
        message: message.into(),
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_command_and_args() {
        let c = CommandConfig::parse(&json!({"command": "sh", "args": ["-c", "exit 3"]})).unwrap();
        assert_eq!(c.command, "sh");
        assert_eq!(c.args, vec!["-c", "exit 3"]);
        let c = CommandConfig::parse(&json!({"command": "true", "extra": 1})).unwrap();
        assert!(c.args.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let e = CommandConfig::parse(&json!({"command": "sh", "args": "-c"})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config.args: expected a list of strings, got a string"
        );
        let e = CommandConfig::parse(&json!({"command": "sh", "args": ["-c", 5]})).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config.args: expected a list of strings"),
            "{e}"
        );
        let e = CommandConfig::parse(&json!({"args": []})).unwrap_err();
        assert_eq!(e.to_string(), "config.command: required");
        let e = CommandConfig::parse(&json!({"command": 7})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config.command: expected a string, got a number"
        );
        let e = CommandConfig::parse(&json!([1])).unwrap_err();
        assert_eq!(e.to_string(), "config: expected an object, got a list");
    }
}
