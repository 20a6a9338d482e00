//! `flotilla server`: the control plane process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flotilla_server::{Core, ServerConfig};
use flotilla_store::{RedbStore, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

/// Flags of `flotilla server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Directory for the state store (created if missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:4646")]
    pub http_addr: SocketAddr,
    /// Address of the gRPC endpoint for agents and node proxies.
    #[arg(long, default_value = "127.0.0.1:4647")]
    pub rpc_addr: SocketAddr,
    /// A node that sends no heartbeat for this long is marked down.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat_ttl: Duration,
    /// Scheduler workers planning in parallel.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// SPIFFE trust domain of the mesh CA, fixed at first start (default: `<random>.flotilla`).
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// Lifetime of workload certificates; proxies renew them at about half of it.
    #[arg(long, default_value = "72h", value_parser = parse_leaf_ttl)]
    pub ca_leaf_ttl: Duration,
    /// PEM file of an operator-supplied CA root certificate, used on first start.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// PEM file of that root's private key.
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// What happens to a mesh connection no intention matches: `allow` or `deny`.
    #[arg(long, default_value = "deny", value_parser = parse_intention_action)]
    pub default_intention: flotilla_types::IntentionAction,
}

fn parse_leaf_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(10) {
        return Err(format!(
            "{s} is too short: a leaf certificate lives at least 10s"
        ));
    }
    Ok(d)
}

pub(crate) fn parse_intention_action(s: &str) -> Result<flotilla_types::IntentionAction, String> {
    flotilla_types::IntentionAction::parse(s)
        .ok_or_else(|| format!("{s:?} is not an intention action (expected allow or deny)"))
}

impl ServerArgs {
    /// The CA settings from the flags, reading the root files if given.
    fn ca_config(&self) -> anyhow::Result<flotilla_server::ca_service::CaConfig> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let root = match (&self.ca_cert, &self.ca_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        Ok(flotilla_server::ca_service::CaConfig {
            trust_domain: self.trust_domain.clone(),
            leaf_ttl: self.ca_leaf_ttl,
            root,
        })
    }
}

/// Addresses a started server listens on.
#[derive(Debug, Clone, Copy)]
pub struct ServerAddrs {
    pub http: SocketAddr,
    pub rpc: SocketAddr,
}

async fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what} listener {addr}"))
}

/// Open the store, bind both listeners, and serve in the background until `shutdown`.
/// Returns the bound addresses and a handle that finishes when everything has stopped.
pub async fn start(
    args: &ServerArgs,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(ServerAddrs, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let store: Arc<dyn Store> = Arc::new(
        RedbStore::open(&args.data_dir)
            .with_context(|| format!("opening the state in {}", args.data_dir.display()))?,
    );
    let http = bind("HTTP API", args.http_addr).await?;
    let rpc = bind("gRPC", args.rpc_addr).await?;
    let addrs = ServerAddrs {
        http: http.local_addr()?,
        rpc: rpc.local_addr()?,
    };
    let config = ServerConfig {
        heartbeat_ttl: args.heartbeat_ttl,
        workers: args.workers,
        ..Default::default()
    };
    let ca = flotilla_server::ca_service::bootstrap(&*store, &args.ca_config()?)
        .context("starting the mesh CA")?;
    let mesh = flotilla_types::MeshConfig {
        default_intention: args.default_intention,
    };
    if store.snapshot().mesh != mesh {
        store
            .apply(vec![flotilla_store::Op::PutMeshConfig(mesh)])
            .context("storing the mesh config")?;
    }
    info!(trust_domain = %ca.trust_domain, default_intention = args.default_intention.as_str(), "mesh CA ready");
    let core = Core::start(store.clone(), config, shutdown.clone());
    let api = flotilla_api::router(flotilla_api::ApiState {
        store: store.clone(),
        rpc_addr: addrs.rpc,
        http: reqwest::Client::new(),
    });
    info!(http = %addrs.http, rpc = %addrs.rpc, data_dir = %args.data_dir.display(), index = store.latest_index(), "server started");

    let grpc = tonic::transport::Server::builder()
        .add_service(core.agent_service())
        .add_service(flotilla_xds::DiscoveryServer::new(store.clone()))
        .add_service(flotilla_server::ca_service::CaApi::new(store.clone()).into_service())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(rpc),
            crate::signals::wait(shutdown.clone()),
        );
    let http_server = axum::serve(http, api).with_graceful_shutdown(crate::signals::wait(shutdown));
    let handle = tokio::spawn(async move {
        let (g, h) = tokio::join!(grpc, http_server);
        g.context("gRPC server")?;
        h.context("HTTP API server")?;
        Ok(())
    });
    Ok((addrs, handle))
}

/// Run `flotilla server` until a signal.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let shutdown = crate::signals::shutdown_on_signals();
    let (_, handle) = start(&args, shutdown.clone()).await?;
    crate::signals::drain(handle, shutdown, Duration::from_secs(10), "server").await
}
