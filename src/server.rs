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
