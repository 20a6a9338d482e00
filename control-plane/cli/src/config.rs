//! `flotilla config …`: Consul's L7 config entries (`consul config write|read|list|delete`).

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

use crate::client::{Client, seg};

/// `flotilla config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Create or replace a config entry from FILE (HCL, or JSON when it starts with `{`).
    ///
    /// The file is parsed and validated locally first, so mistakes are reported with
    /// file:line:column; the entry is then sent to the server, which also checks it against the
    /// other entries (a router needs an http/http2/grpc service-defaults, …).
    Write {
        /// Only write if the entry's ModifyIndex is still -modify-index (0: only if it does not
        /// exist yet).
        #[arg(long, requires = "modify_index")]
        cas: bool,
        /// The ModifyIndex -cas compares against.
        #[arg(long)]
        modify_index: Option<u64>,
        /// The entry file; `-` reads standard input.
        file: String,
    },
    /// Print one config entry as JSON.
    Read {
        /// service-defaults, service-router, service-splitter or service-resolver.
        #[arg(long)]
        kind: String,
        /// The service the entry configures.
        #[arg(long)]
        name: String,
    },
    /// List the names of the config entries of one kind.
    List {
        /// service-defaults, service-router, service-splitter or service-resolver.
        #[arg(long)]
        kind: String,
    },
    /// Delete a config entry (refused while another entry depends on it).
    Delete {
        /// service-defaults, service-router, service-splitter or service-resolver.
        #[arg(long)]
        kind: String,
        /// The service the entry configures.
        #[arg(long)]
        name: String,
        /// Only delete if the entry's ModifyIndex is still -modify-index.
        #[arg(long, requires = "modify_index")]
        cas: bool,
        /// The ModifyIndex -cas compares against.
        #[arg(long)]
        modify_index: Option<u64>,
    },
}

fn cas_query(cas: bool, modify_index: Option<u64>) -> Vec<(&'static str, String)> {
    match (cas, modify_index) {
        (true, Some(i)) => vec![("cas", i.to_string())],
        _ => Vec::new(),
    }
}

pub async fn run_config(client: &Client, cmd: ConfigCmd) -> anyhow::Result<i32> {
    match cmd {
        ConfigCmd::Write {
            cas,
            modify_index,
            file,
        } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let entry = match flotilla_jobspec::parse_config_entry(&text, &file) {
                Ok(entry) => entry,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(1);
                }
            };
            let written: bool = client
                .put("/v1/config", &cas_query(cas, modify_index), &entry)
                .await?;
            if written {
                println!("Config entry written: {}/{}", entry.kind(), entry.name());
                Ok(0)
            } else {
                eprintln!(
                    "Config entry not written: {}/{} was modified since index {}",
                    entry.kind(),
                    entry.name(),
                    modify_index.unwrap_or(0)
                );
                Ok(1)
            }
        }
        ConfigCmd::Read { kind, name } => {
            let path = format!("/v1/config/{}/{}", seg(&kind), seg(&name));
            let (entry, _): (Value, u64) = client.get(&path, None).await?;
            println!("{}", serde_json::to_string_pretty(&entry)?);
            Ok(0)
        }
        ConfigCmd::List { kind } => {
            let (entries, _): (Vec<Value>, u64) = client
                .get(&format!("/v1/config/{}", seg(&kind)), None)
                .await?;
            for e in entries {
                println!("{}", e["Name"].as_str().unwrap_or_default());
            }
            Ok(0)
        }
        ConfigCmd::Delete {
            kind,
            name,
            cas,
            modify_index,
        } => {
            let path = format!("/v1/config/{}/{}", seg(&kind), seg(&name));
            let deleted: bool = client.delete(&path, &cas_query(cas, modify_index)).await?;
            if deleted {
                println!("Config entry deleted: {kind}/{name}");
                Ok(0)
            } else {
                eprintln!(
                    "Config entry not deleted: {kind}/{name} was modified since index {}",
                    modify_index.unwrap_or(0)
                );
                Ok(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ConfigCmd,
    }

    #[test]
    fn flags_parse_consul_style() {
        let args = crate::normalize_args(
            ["x", "write", "-cas", "-modify-index", "7", "web.hcl"]
                .iter()
                .map(|s| s.to_string()),
        );
        let cli = Cli::parse_from(args);
        assert!(matches!(
            cli.cmd,
            ConfigCmd::Write { cas: true, modify_index: Some(7), ref file } if file == "web.hcl"
        ));
        assert!(Cli::try_parse_from(["x", "write", "--cas", "f"]).is_err());
    }

    #[tokio::test]
    async fn list_and_read_against_a_fake_api() {
        let base = crate::fake_api::serve(vec![
            (
                "/v1/config/service-router".to_string(),
                vec![serde_json::json!([{"Kind": "service-router", "Name": "web"}])],
            ),
            (
                "/v1/config/service-router/web".to_string(),
                vec![serde_json::json!({"Kind": "service-router", "Name": "web"})],
            ),
        ])
        .await;
        let client = Client::new(&base).unwrap();
        let list = ConfigCmd::List {
            kind: "service-router".into(),
        };
        assert_eq!(run_config(&client, list).await.unwrap(), 0);
        let read = ConfigCmd::Read {
            kind: "service-router".into(),
            name: "web".into(),
        };
        assert_eq!(run_config(&client, read).await.unwrap(), 0);
        let missing = ConfigCmd::Read {
            kind: "service-router".into(),
            name: "api".into(),
        };
        assert!(run_config(&client, missing).await.is_err());
    }

    #[tokio::test]
    async fn write_reports_local_errors_with_the_file() {
        let dir = std::env::temp_dir().join(format!("flotilla-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.hcl");
        std::fs::write(
            &file,
            "Kind = \"service-router\"\nName = \"web\"\nRoutes = [{ Bogus = 1 }]\n",
        )
        .unwrap();
        // Nothing listens here: a local error must stop before any request.
        let client = Client::new("http://127.0.0.1:9").unwrap();
        let cmd = ConfigCmd::Write {
            cas: false,
            modify_index: None,
            file: file.display().to_string(),
        };
        assert_eq!(run_config(&client, cmd).await.unwrap(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
