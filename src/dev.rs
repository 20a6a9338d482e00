//! `flotilla dev`: a whole cluster in one process — server, one node (agent + proxy) — still
//! talking over their real protocols on loopback. Jobs named on the command line are submitted
//! through the HTTP API once the node is up, followed until healthy, and a summary says where
//! to send requests.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::agent::AgentArgs;
use crate::server::ServerArgs;

/// Flags of `flotilla dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Jobspecs to run once the cluster is up.
    pub jobs: Vec<PathBuf>,
    /// Keep state here instead of a temporary directory (removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address everything binds to.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    #[arg(long, default_value_t = 4646)]
    pub http_port: u16,
    #[arg(long, default_value_t = 4647)]
    pub rpc_port: u16,
    #[arg(long, default_value_t = 8080)]
    pub ingress_port: u16,
    #[arg(long, default_value_t = 15008)]
    pub inbound_port: u16,
    #[arg(long, default_value_t = 19000)]
    pub admin_port: u16,
    /// Mesh connections no intention matches: `allow` (the dev default, so examples work out of
    /// the box) or `deny` (the server's default).
    #[arg(long, default_value = "allow", value_parser = crate::server::parse_intention_action)]
    pub default_intention: flotilla_types::IntentionAction,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let shutdown = crate::signals::shutdown_on_signals();
    // A temporary directory lives as long as this function.
    let temp;
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("flotilla-dev-")
                .tempdir()
                .context("creating a temporary data directory")?;
            temp.path().to_path_buf()
        }
    };
    let server_args = ServerArgs {
        data_dir: data_dir.join("server"),
        http_addr: (args.address, args.http_port).into(),
        rpc_addr: (args.address, args.rpc_port).into(),
        heartbeat_ttl: Duration::from_secs(10),
        workers: 2,
        trust_domain: None,
        ca_leaf_ttl: flotilla_server::ca_service::CaConfig::default().leaf_ttl,
        ca_cert: None,
        ca_key: None,
        default_intention: args.default_intention,
    };
    let (server, server_task) = crate::server::start(&server_args, shutdown.clone()).await?;
    let agent_args = AgentArgs {
        server: format!("http://{}", server.rpc),
        data_dir: data_dir.join("agent"),
        name: Some("dev".to_string()),
        datacenter: "dc1".to_string(),
        node_class: String::new(),
        address: args.address,
        ingress_port: args.ingress_port,
        inbound_port: args.inbound_port,
        admin_port: args.admin_port,
        proxy_access_log: None,
        http_port: 0,
        cpu: None,
        memory: None,
        meta: Vec::new(),
        host_volumes: Vec::new(),
        // A dev cluster is ephemeral: its workloads go with it.
        stop_tasks_on_shutdown: true,
    };
    let (node, node_task) = crate::agent::start(&agent_args, shutdown.clone()).await?;
    eprintln!(
        "==> Flotilla dev cluster: API http://{}  gRPC {}  data {}",
        server.http,
        server.rpc,
        data_dir.display()
    );

    let api = format!("http://{}", server.http);
    let client = flotilla_cli::Client::new(&api)?;
    wait_for_node(&client, &node.node_id).await?;
    let mut summary = Vec::new();
    for file in &args.jobs {
        let code = flotilla_cli::run_job(
            &client,
            flotilla_cli::JobCmd::Run {
                file: file.clone(),
                vars: flotilla_cli::VarArgs::default(),
                detach: false,
                timeout: Duration::from_secs(120),
                json: false,
            },
        )
        .await?;
        if code != 0 {
            eprintln!(
                "==> job from {} did not become healthy (exit code {code}); the cluster keeps running",
                file.display()
            );
        }
        summary.extend(crate::dev::routes_summary(&client, file, &node).await);
    }
    println!("\n==> Flotilla dev cluster ready");
    println!("    API:      {api}   (export FLOTILLA_ADDR={api})");
    println!("    Ingress:  http://{}", node.ingress);
    for line in &summary {
        println!("    {line}");
    }
    println!("    Press Ctrl-C to stop (allocations are stopped, data removed unless --data-dir).");

    // Node first (it stops the workloads and reports), then the server.
    crate::signals::drain(node_task, shutdown.clone(), Duration::from_secs(60), "node").await?;
    crate::signals::drain(server_task, shutdown, Duration::from_secs(10), "server").await
}

/// "Try:" lines for the services of a jobspec, from their tags.
async fn routes_summary(
    client: &flotilla_cli::Client,
    file: &std::path::Path,
    node: &crate::agent::NodeAddrs,
) -> Vec<String> {
    let ingress = node.ingress;
    let Ok(src) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let Ok(parsed) = flotilla_jobspec::parse(&src, &file.display().to_string()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for group in &parsed.job.task_groups {
        for svc in group.all_services() {
            let healthy = client
                .get::<Vec<flotilla_types::ServiceRegistration>>(
                    &format!("/v1/service/{}", svc.name),
                    None,
                )
                .await
                .map(|(regs, _)| regs.iter().filter(|r| r.healthy()).count())
                .unwrap_or(0);
            if let Some(admin) = node.admin {
                wait_for_proxy(admin, &svc.name, healthy).await;
            }
            out.push(format!(
                "Service {:?}: {healthy} healthy instance(s)",
                svc.name
            ));
            for (host, path) in flotilla_xds::routes_from_tags(&svc.tags) {
                if host.is_empty() {
                    out.push(format!("  curl http://{ingress}{path}"));
                } else {
                    out.push(format!("  curl -H 'Host: {host}' http://{ingress}{path}"));
                }
            }
            out.push(format!(
                "  curl -H 'Host: {}.service.flotilla' http://{ingress}/",
                svc.name
            ));
        }
    }
    out
}

/// Wait until the dev node has registered and is ready, so the jobs submitted next are placed at
/// once rather than blocked.
async fn wait_for_node(client: &flotilla_cli::Client, node_id: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut index = None;
    loop {
        if let Ok((node, i)) = client
            .get::<flotilla_types::Node>(&format!("/v1/node/{node_id}"), index)
            .await
        {
            if node.status == flotilla_types::NODE_STATUS_READY {
                return Ok(());
            }
            index = Some(i);
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the dev node {node_id} did not register with the server within 30s");
        }
    }
}

/// Wait (bounded) until the node proxy's own configuration has `healthy` healthy instances of
/// `service`: the catalog says healthy a moment before the proxy has applied the push that
/// carries it, and the summary must only be printed once requests will really be balanced.
async fn wait_for_proxy(admin: std::net::SocketAddr, service: &str, healthy: usize) {
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let dump: Option<serde_json::Value> =
            match http.get(format!("http://{admin}/config_dump")).send().await {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
        let in_proxy = dump
            .as_ref()
            .and_then(|d| d["clusters"].as_array())
            .and_then(|cs| cs.iter().find(|c| c["name"] == service))
            .and_then(|c| c["endpoints"].as_array())
            .map(|eps| eps.iter().filter(|e| e["healthy"] == true).count())
            .unwrap_or(0);
        if in_proxy >= healthy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
