//! `flotilla intention …` and `flotilla ca …`: the mesh's operator verbs (Consul's
//! `consul intention` and `consul connect ca`).

use anyhow::Context;
use clap::Subcommand;
use flotilla_types::Intention;
use serde_json::{Value, json};

use crate::client::Client;
use crate::table;

/// `flotilla intention …`
#[derive(Debug, Subcommand)]
pub enum IntentionCmd {
    /// Allow or deny connections from SRC to DST (service names, or `*` for any).
    Create {
        /// Allow the connections (the default).
        #[arg(long, conflicts_with = "deny")]
        allow: bool,
        /// Deny the connections.
        #[arg(long)]
        deny: bool,
        /// Replace an existing intention for the same pair instead of failing.
        #[arg(long)]
        replace: bool,
        /// A note for people.
        #[arg(long, default_value = "")]
        description: String,
        src: String,
        dst: String,
    },
    /// Delete the intention from SRC to DST.
    Delete { src: String, dst: String },
    /// Show the intention from SRC to DST.
    Get {
        src: String,
        dst: String,
        #[arg(long)]
        json: bool,
    },
    /// List all intentions, highest precedence first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Would a connection from SRC to DST be allowed? Exit code 0 if allowed, 2 if denied.
    Check { src: String, dst: String },
}

fn pair(src: &str, dst: &str) -> Vec<(&'static str, String)> {
    vec![
        ("source", src.to_string()),
        ("destination", dst.to_string()),
    ]
}

const EXACT: &str = "/v1/connect/intentions/exact";

pub async fn run_intention(client: &Client, cmd: IntentionCmd) -> anyhow::Result<i32> {
    match cmd {
        IntentionCmd::Create {
            deny,
            replace,
            description,
            src,
            dst,
            allow: _,
        } => {
            if !replace {
                let list: Vec<Intention> = client.get_query("/v1/connect/intentions", &[]).await?;
                if list
                    .iter()
                    .any(|i| i.source_name == src && i.destination_name == dst)
                {
                    anyhow::bail!(
                        "an intention from {src:?} to {dst:?} already exists; use -replace to \
                         change it"
                    );
                }
            }
            let action = if deny { "deny" } else { "allow" };
            let _: bool = client
                .put(
                    EXACT,
                    &pair(&src, &dst),
                    &json!({ "Action": action, "Description": description }),
                )
                .await?;
            println!("Created: {src} => {dst} ({action})");
            Ok(0)
        }
        IntentionCmd::Delete { src, dst } => {
            let _: bool = client.delete(EXACT, &pair(&src, &dst)).await?;
            println!("Intention deleted: {src} => {dst}");
            Ok(0)
        }
        IntentionCmd::Get { src, dst, json } => {
            let ixn: Intention = client.get_query(EXACT, &pair(&src, &dst)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ixn)?);
            } else {
                print_intentions(&[ixn]);
            }
            Ok(0)
        }
        IntentionCmd::List { json } => {
            let list: Vec<Intention> = client.get_query("/v1/connect/intentions", &[]).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("No intentions found");
            } else {
                print_intentions(&list);
            }
            Ok(0)
        }
        IntentionCmd::Check { src, dst } => {
            let v: Value = client
                .get_query("/v1/connect/intentions/check", &pair(&src, &dst))
                .await?;
            let allowed = v["Allowed"].as_bool().context("answer without Allowed")?;
            let reason = v["Reason"].as_str().unwrap_or_default();
            println!("{} ({reason})", if allowed { "Allowed" } else { "Denied" });
            Ok(if allowed { 0 } else { 2 })
        }
    }
}

fn print_intentions(list: &[Intention]) {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                i.source_name.clone(),
                i.destination_name.clone(),
                i.action.as_str().to_string(),
                i.precedence.to_string(),
                i.description.clone(),
            ]
        })
        .collect();
    table::print(
        &[
            "Source",
            "Destination",
            "Action",
            "Precedence",
            "Description",
        ],
        &rows,
    );
}

/// `flotilla ca …`
#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Show the trust domain and the CA roots (active first).
    Roots {
        #[arg(long)]
        json: bool,
    },
    /// Rotate to a new root, cross-signed by the current one; both stay trusted until every
    /// leaf of the old root has expired. Without -cert/-key a new root is generated.
    Rotate {
        /// PEM file of an operator-supplied root certificate.
        #[arg(long, requires = "key")]
        cert: Option<std::path::PathBuf>,
        /// PEM file of its private key.
        #[arg(long, requires = "cert")]
        key: Option<std::path::PathBuf>,
    },
}

fn secs_to_rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| secs.to_string())
}

fn print_roots(v: &Value) {
    println!(
        "Trust domain  = {}",
        v["TrustDomain"].as_str().unwrap_or("")
    );
    let ttl = v["LeafCertTTL"].as_i64().unwrap_or(0) / 1_000_000_000;
    println!(
        "Leaf cert TTL = {}",
        humantime::format_duration(std::time::Duration::from_secs(ttl as u64))
    );
    let rows: Vec<Vec<String>> = v["Roots"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                r["ID"].as_str().unwrap_or("").chars().take(16).collect(),
                r["Active"].as_bool().unwrap_or(false).to_string(),
                secs_to_rfc3339(r["NotBefore"].as_i64().unwrap_or(0)),
                secs_to_rfc3339(r["NotAfter"].as_i64().unwrap_or(0)),
                if r["CrossSignedCert"].as_str().is_some_and(|c| !c.is_empty()) {
                    "yes"
                } else {
                    "no"
                }
                .into(),
            ]
        })
        .collect();
    println!();
    table::print(
        &["ID", "Active", "Not Before", "Not After", "Cross-signed"],
        &rows,
    );
}

pub async fn run_ca(client: &Client, cmd: CaCmd) -> anyhow::Result<i32> {
    match cmd {
        CaCmd::Roots { json } => {
            let v: Value = client.get_query("/v1/connect/ca/roots", &[]).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_roots(&v);
            }
            Ok(0)
        }
        CaCmd::Rotate { cert, key } => {
            let body = match (cert, key) {
                (Some(cert), Some(key)) => {
                    let read = |p: &std::path::Path| {
                        std::fs::read_to_string(p)
                            .with_context(|| format!("reading {}", p.display()))
                    };
                    json!({ "RootCert": read(&cert)?, "PrivateKey": read(&key)? })
                }
                _ => json!({}),
            };
            let v: Value = client.post("/v1/connect/ca/rotate", &body).await?;
            println!(
                "Rotated: new active root {}",
                v["ActiveRootID"].as_str().unwrap_or("")
            );
            print_roots(&v);
            Ok(0)
        }
    }
}
