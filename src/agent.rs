//! `flotilla agent`: a node — the node agent and the node proxy it hosts.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use tokio::sync::watch;
use tracing::info;

/// Flags of `flotilla agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// gRPC address of a server.
    #[arg(long, default_value = "http://127.0.0.1:4647")]
    pub server: String,
    /// Directory for allocation files and logs, and the node's identity (created if missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Node name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "dc1")]
    pub datacenter: String,
    /// Node class, for constraints.
    #[arg(long, default_value = "")]
    pub node_class: String,
    /// The node's IP: workloads bind to it and the proxy listens on it.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// Port of the ingress listener (HTTP) on the node's address.
    #[arg(long, default_value_t = 8080)]
    pub ingress_port: u16,
    /// Port of the inbound listener other nodes' proxies connect to.
    #[arg(long, default_value_t = 15008)]
    pub inbound_port: u16,
    /// Port of the proxy's admin listener (/ready, /config_dump) on the node's address.
    #[arg(long, default_value_t = 19000)]
    pub admin_port: u16,
    /// Write the proxy's access log (JSON lines, Envoy's fields) to this file, or `-` for
    /// standard output. Default: no access log.
    #[arg(long, value_name = "PATH")]
    pub proxy_access_log: Option<std::path::PathBuf>,
    /// Port of the agent's HTTP endpoint (logs); 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    pub http_port: u16,
    /// CPU to offer, in MHz (default: detected).
    #[arg(long)]
    pub cpu: Option<u64>,
    /// Memory to offer, in MB (default: detected).
    #[arg(long)]
    pub memory: Option<u64>,
    /// Node metadata, KEY=VALUE; repeatable.
    #[arg(long = "meta", value_parser = parse_kv)]
    pub meta: Vec<(String, String)>,
    /// A host volume this node offers to jobs, NAME=ABSOLUTE_PATH; repeatable.
    #[arg(long = "host-volume", value_parser = parse_kv)]
    pub host_volumes: Vec<(String, String)>,
    /// Stop every task when the agent stops. By default tasks keep running and the agent
    /// re-attaches to them when it starts again (as Nomad does).
    #[arg(long)]
    pub stop_tasks_on_shutdown: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

/// Where a started node listens.
#[derive(Debug, Clone)]
pub struct NodeAddrs {
    pub node_id: String,
    pub ingress: SocketAddr,
    pub inbound: SocketAddr,
    pub http: SocketAddr,
    /// The proxy's admin listener (`/ready`, `/config_dump`).
    pub admin: Option<SocketAddr>,
}

/// Bind the proxy and the agent, then run both in the background until `shutdown`.
pub async fn start(
    args: &AgentArgs,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(NodeAddrs, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let proxy = flotilla_proxy::BoundProxy::bind(flotilla_proxy::ProxyConfig {
        ingress_addr: SocketAddr::new(args.address, args.ingress_port),
        inbound_addr: SocketAddr::new(args.address, args.inbound_port),
        admin_addr: Some(SocketAddr::new(args.address, args.admin_port)),
    })
    .await
    .context("starting the node proxy")?;
    let proxy = match &args.proxy_access_log {
        None => proxy,
        Some(path) => {
            let target = if path.as_os_str() == "-" {
                flotilla_proxy::access_log::AccessLogTarget::Stdout
            } else {
                flotilla_proxy::access_log::AccessLogTarget::File(path.clone())
            };
            let log = flotilla_proxy::access_log::AccessLog::open(target)
                .with_context(|| format!("--proxy-access-log {}", path.display()))?;
            proxy.with_access_log(log)
        }
    };
    let inbound = proxy.inbound_addr();
    let ingress = proxy.ingress_addr();
    let admin = proxy.admin_addr();
    let agent = flotilla_agent::bind(flotilla_agent::AgentConfig {
        name: args.name.clone().unwrap_or_else(host_name),
        datacenter: args.datacenter.clone(),
        node_class: args.node_class.clone(),
        address: args.address.to_string(),
        server: args.server.clone(),
        data_dir: args.data_dir.clone(),
        http_addr: SocketAddr::new(args.address, args.http_port),
        proxy_addr: inbound.to_string(),
        cpu_mhz: args.cpu,
        memory_mb: args.memory,
        meta: args.meta.iter().cloned().collect::<BTreeMap<_, _>>(),
        host_volumes: args
            .host_volumes
            .iter()
            .map(|(k, v)| (k.clone(), std::path::PathBuf::from(v)))
            .collect(),
        stop_tasks_on_shutdown: args.stop_tasks_on_shutdown,
    })
    .await
    .context("starting the node agent")?;
    let addrs = NodeAddrs {
        node_id: agent.node_id().to_string(),
        ingress,
        inbound,
        http: agent.http_addr(),
        admin,
    };
    info!(node = %addrs.node_id, ingress = %addrs.ingress, inbound = %addrs.inbound, "node started");
    let server = args.server.clone();
    let node = flotilla_proxy::NodeIdentity {
        node_id: addrs.node_id.clone(),
        node_secret: agent.node_secret().to_string(),
        datacenter: args.datacenter.clone(),
    };
    let handle = tokio::spawn(async move {
        let proxy_task = proxy.run(node, Some(server), crate::signals::wait(shutdown.clone()));
        let agent_task = agent.run(crate::signals::wait(shutdown));
        let (p, a) = tokio::join!(proxy_task, agent_task);
        p.context("node proxy")?;
        a.context("node agent")?;
        Ok(())
    });
    Ok((addrs, handle))
}

/// Run `flotilla agent` until a signal.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let shutdown = crate::signals::shutdown_on_signals();
    let (_, handle) = start(&args, shutdown.clone()).await?;
    // Tasks get their kill timeouts; allow for them before giving up.
    crate::signals::drain(
        handle,
        shutdown,
        std::time::Duration::from_secs(60),
        "agent",
    )
    .await
}
