//! The Flotilla node proxy: the data plane that carries service traffic on every node.
//!
//! # Main types
//! - [`BoundProxy`]: the listeners, bound by [`BoundProxy::bind`] from a [`ProxyConfig`], then
//!   served by [`BoundProxy::run`] until a shutdown future resolves.
//! - [`ConfigHandle`] / [`Snapshot`]: the current configuration, an immutable snapshot behind an
//!   `ArcSwap`. The request path only loads it; the discovery client (or a test, through
//!   [`BoundProxy::config`]) swaps in new ones.
//! - [`ProxyError`] (start-up, names the listener and address) and [`RequestError`] (one
//!   request: where it failed, whether a retry is safe, which status it answers).
//! - [`metrics::Metrics`] (Prometheus `/metrics`; per-cluster and per-route handles made on
//!   first use by a snapshot's entries) and [`access_log::AccessLog`] (optional JSON lines, never blocking).
//!
//! # Data flow
//! ```text
//!  control plane ──gRPC Stream──▶ xds::DiscoveryClient ──validate (config)──▶ ArcSwap<Snapshot>
//!                 ◀── ACK / NACK ─┘                                                  │ load()
//!                ◀── CSR ── tls::issuer (key stays here) ──▶ tls::Certs ─────────────┤
//!  client ──HTTP──▶ ingress ──router──▶ l7: route table, split, limits, retries ─────┤
//!                   (on a worker:        ├─ balance: policy picks, ejected skipped ──┤
//!                    h1::server inline,  └─ upstream (the worker's pool):            │
//!                    hyper for the rest)    h1::client for kept bodies, else hyper   │
//!  app ──TCP──▶ 127.0.0.1:<upstream port> (outbound) ──balance───────────────────────┘
//!                      │
//!                      ├─ local instance: intention check, TCP to the workload (splice for L4)
//!                      └─ remote instance: mTLS (as the source service) to the peer's inbound
//!                           ──CONNECT addr──▶ peer inbound: client cert → SPIFFE ID,
//!                                             intention check, local-instance check ──▶ workload
//!  admin (own thread, current-thread runtime): /ready, /config_dump, /stats, /metrics
//! ```
//!
//! # Threads and listeners
//! | listener | default | runs on |
//! |---|---|---|
//! | ingress (HTTP/1.1, h2c) | `0.0.0.0:8080` | accept loop: the caller's runtime; connections: the forwarding workers ([`workers`]) |
//! | inbound (mTLS CONNECT tunnels between nodes) | `0.0.0.0:15008` | the caller's runtime |
//! | upstream listeners (one per Connect upstream) | `127.0.0.1:<local_bind_port>` | the caller's runtime |
//! | admin | `127.0.0.1:19000` | its own thread and current-thread runtime |
//!
//! The forwarding workers are threads of their own (one per CPU by default,
//! [`BoundProxy::with_workers`]), each running a current-thread runtime. The accept loop hands
//! each connection to the worker with the fewest open ones; the connection, its requests and
//! their upstream connections (each worker has its own [`upstream::Upstream`] pool) then stay on
//! that thread. The worker serves HTTP/1.1 inline ([`h1::server`]) and hands the connection to
//! hyper for anything else (h2c, HTTP/1.0, `Upgrade`, `Expect`, `Transfer-Encoding`, bodies over
//! 64 KiB, `CONNECT`). A request reaches [`l7`] with an [`l7::DownstreamBody`]: the bytes the
//! inline server read, or hyper's body, which l7 keeps too when its length is known and at most
//! 64 KiB. A kept request to an HTTP/1.1 cluster goes out on the inline client ([`h1::client`]);
//! the rest (streamed bodies, upgrades, HTTP/2) on hyper's.
//!
//! Shutdown ([`drain`]): stop accepting, let in-flight requests and tunnels (on the workers too)
//! finish for up to the grace period ([`BoundProxy::with_drain_grace`], 5 s by default), then drop
//! what is left and end the worker threads.

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod config;
pub mod drain;
pub mod error;
pub mod h1;
pub mod headers;
pub mod inbound;
pub mod ingress;
pub mod l7;
pub mod metrics;
pub mod outbound;
pub mod router;
pub mod snapshot;
pub mod stats;
pub mod tls;
pub mod upstream;
pub mod workers;
pub mod xds;

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

/// A hash map for lookups on the request path: foldhash (seeded per process) instead of
/// SipHash. Its keys come from config (cluster, service and endpoint names and addresses).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use crate::error::{Listener, Origin, ProxyError, RequestError};
pub use crate::snapshot::{ApplyError, ConfigHandle, Snapshot, Versions};

use crate::access_log::AccessLog;
use crate::admin::{AdminServer, AdminState};
use crate::drain::Drain;
use crate::inbound::Inbound;
use crate::ingress::Ingress;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::stats::Stats;
use crate::tls::MeshTls;
pub use crate::tls::issuer::NodeIdentity;
use crate::upstream::{Upstream, UpstreamConfig};
use crate::workers::Workers;
use crate::xds::DiscoveryClient;

/// Default time in-flight requests get to finish after shutdown starts.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Where the proxy listens. Port 0 picks a free port (see [`BoundProxy::ingress_addr`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Edge HTTP listener.
    pub ingress_addr: SocketAddr,
    /// Node-to-node tunnel listener.
    pub inbound_addr: SocketAddr,
    /// Admin listener; `None` disables it.
    pub admin_addr: Option<SocketAddr>,
}

impl Default for ProxyConfig {
    /// `0.0.0.0:8080`, `0.0.0.0:15008`, admin on `127.0.0.1:19000`.
    fn default() -> Self {
        ProxyConfig {
            ingress_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            inbound_addr: SocketAddr::from(([0, 0, 0, 0], 15008)),
            admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 19000))),
        }
    }
}

/// The proxy with its listeners bound but not yet serving.
#[derive(Debug)]
pub struct BoundProxy {
    ingress: TcpListener,
    ingress_addr: SocketAddr,
    inbound: TcpListener,
    inbound_addr: SocketAddr,
    admin: Option<(std::net::TcpListener, SocketAddr)>,
    config: ConfigHandle,
    drain_grace: Duration,
    upstream: UpstreamConfig,
    l4_mode: flotilla_forward::Mode,
    metrics: Arc<Metrics>,
    access_log: Option<Arc<AccessLog>>,
    workers: NonZeroUsize,
    affinity: workers::Affinity,
}

async fn bind_tokio(
    listener: Listener,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), ProxyError> {
    let err = |error| ProxyError::Bind {
        listener,
        addr,
        error,
    };
    let l = TcpListener::bind(addr).await.map_err(err)?;
    let local = l.local_addr().map_err(err)?;
    Ok((l, local))
}

impl BoundProxy {
    /// Binds all listeners. A port in use fails here, naming the listener and the address.
    pub async fn bind(cfg: ProxyConfig) -> Result<BoundProxy, ProxyError> {
        let (ingress, ingress_addr) = bind_tokio(Listener::Ingress, cfg.ingress_addr).await?;
        let (inbound, inbound_addr) = bind_tokio(Listener::Inbound, cfg.inbound_addr).await?;
        let admin = match cfg.admin_addr {
            None => None,
            Some(addr) => {
                let err = |error| ProxyError::Bind {
                    listener: Listener::Admin,
                    addr,
                    error,
                };
                let l = std::net::TcpListener::bind(addr).map_err(err)?;
                let local = l.local_addr().map_err(err)?;
                Some((l, local))
            }
        };
        let metrics = Metrics::new();
        Ok(BoundProxy {
            ingress,
            ingress_addr,
            inbound,
            inbound_addr,
            admin,
            config: ConfigHandle::with_metrics(metrics.clone()),
            drain_grace: DEFAULT_DRAIN_GRACE,
            upstream: UpstreamConfig::default(),
            l4_mode: flotilla_forward::Mode::Auto,
            metrics,
            access_log: None,
            workers: workers::default_count(),
            affinity: workers::Affinity::default(),
        })
    }

    /// The bound ingress address (the real port when 0 was asked for).
    pub fn ingress_addr(&self) -> SocketAddr {
        self.ingress_addr
    }

    /// The bound inbound address.
    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound_addr
    }

    /// The bound admin address, if the admin listener is enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, addr)| *addr)
    }

    /// A handle to the proxy's config: read the snapshot, or apply config without a server.
    pub fn config(&self) -> ConfigHandle {
        self.config.clone()
    }

    /// The proxy's metrics, served on the admin port's `/metrics`: build per-cluster and
    /// per-route handles from it when snapshots are built.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Writes an access log line per ingress request to `log` (none by default).
    pub fn with_access_log(mut self, log: AccessLog) -> Self {
        self.metrics.watch_access_log(&log);
        self.access_log = Some(Arc::new(log));
        self
    }

    /// The access log, if one was set with [`BoundProxy::with_access_log`].
    pub fn access_log(&self) -> Option<Arc<AccessLog>> {
        self.access_log.clone()
    }

    /// How long in-flight requests may run after shutdown starts (default 5 s).
    pub fn with_drain_grace(mut self, grace: Duration) -> Self {
        self.drain_grace = grace;
        self
    }

    /// Upstream connect timeout and pool limits.
    pub fn with_upstream_config(mut self, upstream: UpstreamConfig) -> Self {
        self.upstream = upstream;
        self
    }

    /// Ingress forwarding threads (default: one per CPU), each with its own runtime and
    /// upstream pool ([`workers`]).
    pub fn with_workers(mut self, workers: NonZeroUsize) -> Self {
        self.workers = workers;
        self
    }

    /// Whether the forwarding threads are pinned to CPUs (default: [`workers::Affinity::Auto`],
    /// one CPU each when there is one worker per allowed CPU).
    pub fn with_worker_affinity(mut self, affinity: workers::Affinity) -> Self {
        self.affinity = affinity;
        self
    }

    /// Plaintext L4 legs: splice (default, [`flotilla_forward::Mode::Auto`]) or buffered copy.
    pub fn with_l4_mode(mut self, mode: flotilla_forward::Mode) -> Self {
        self.l4_mode = mode;
        self
    }

    /// Serves until `shutdown` resolves, then drains. `server` is the control plane's gRPC URL,
    /// e.g. `"http://127.0.0.1:4647"`; it is checked up front, then (re)connected forever.
    /// `node` identifies this node to the CA. With `server: None` no discovery client and no
    /// certificate issuer run: the config is whatever is applied through [`Self::config`]
    /// (`flotilla proxy --bootstrap`), and the node has no mesh certificates.
    pub async fn run(
        self,
        node: NodeIdentity,
        server: Option<String>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ProxyError> {
        let endpoint = server.as_deref().map(xds::endpoint).transpose()?;
        let node_id = node.node_id.clone();
        let stats = Arc::new(Stats::default());
        let tls = MeshTls::new(self.config.clone(), stats.clone()).map_err(ProxyError::Tls)?;
        match flotilla_forward::detect_ktls() {
            flotilla_forward::Ktls::Available => {
                info!("kernel TLS is available; encrypted legs still use userspace rustls")
            }
            flotilla_forward::Ktls::Unavailable(why) => {
                info!(reason = %why, "kernel TLS unavailable; encrypted legs use userspace rustls")
            }
        }
        let admin_addr = self.admin_addr();
        let admin = match self.admin {
            Some((listener, addr)) => Some(AdminServer::start(
                listener,
                addr,
                AdminState {
                    config: self.config.clone(),
                    stats: stats.clone(),
                    certs: tls.certs().clone(),
                    metrics: self.metrics.clone(),
                },
            )?),
            None => None,
        };
        info!(
            %node_id,
            server = server.as_deref().unwrap_or("none (static config)"),
            ingress = %self.ingress_addr,
            inbound = %self.inbound_addr,
            admin = ?admin_addr,
            "node proxy serving"
        );

        let drain = Drain::new();
        let workers = Arc::new(
            Workers::start("flotilla-fwd", self.workers, self.affinity)
                .map_err(ProxyError::Workers)?,
        );
        // One upstream pool per worker: a connection and its upstream requests stay on one thread.
        let upstreams: Vec<_> = (0..workers.len())
            .map(|_| Upstream::new(self.upstream.clone(), tls.clone()))
            .collect();
        let control_plane = endpoint.map(|endpoint| {
            let channel = endpoint.connect_lazy();
            let discovery =
                tokio::spawn(DiscoveryClient::new(node_id, endpoint, self.config.clone()).run());
            let issuer = tokio::spawn(tls::issuer::run(
                node,
                channel,
                self.config.clone(),
                tls.certs().clone(),
            ));
            [discovery, issuer]
        });
        let outbound = tokio::spawn(outbound::run(
            Outbound::new(
                self.config.clone(),
                tls.clone(),
                stats.clone(),
                self.upstream.connect_timeout,
                self.l4_mode,
            ),
            drain.clone(),
        ));
        let pruner = tokio::spawn({
            let upstreams = upstreams.clone();
            async move {
                let period = self
                    .upstream
                    .idle_purge_period
                    .max(Duration::from_millis(10));
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    upstreams.iter().for_each(|u| u.prune());
                }
            }
        });
        let ingresses = upstreams
            .iter()
            .map(|upstream| {
                Ingress::new(
                    self.config.clone(),
                    upstream.clone(),
                    self.access_log.clone(),
                )
            })
            .collect();
        let ingress = tokio::spawn(ingress::serve(
            self.ingress,
            ingresses,
            workers.clone(),
            drain.clone(),
        ));
        let inbound = tokio::spawn(inbound::serve(
            self.inbound,
            Inbound::new(
                self.config.clone(),
                tls.clone(),
                stats.clone(),
                self.upstream.connect_timeout,
            ),
            drain.clone(),
        ));

        shutdown.await;
        info!(
            grace_ms = self.drain_grace.as_millis() as u64,
            "shutting down: draining connections"
        );
        drain.signal();
        // Accept loops exit on the signal, closing the listeners.
        let _ = ingress.await;
        let _ = inbound.await;
        let _ = outbound.await;
        if drain.shutdown(self.drain_grace).await {
            info!("drained");
        } else {
            warn!(
                grace_ms = self.drain_grace.as_millis() as u64,
                "grace period over; dropped remaining connections"
            );
        }
        for task in control_plane.into_iter().flatten() {
            task.abort();
        }
        pruner.abort();
        workers.stop().await;
        if let Some(admin) = admin {
            admin.stop().await;
        }
        Ok(())
    }
}
