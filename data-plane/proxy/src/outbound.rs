//! Upstream listeners (Nomad Connect's `upstreams`): the app connects to
//! `127.0.0.1:<local_bind_port>` and the proxy carries the connection, as the app's service, to a
//! healthy instance of the destination.
//!
//! - The set of listeners follows the config snapshot: new ones are bound, removed ones stop
//!   accepting (connections already open keep going), others are not touched.
//! - A local destination instance is reached directly; the intention is checked here and the
//!   bytes move with splice(2) (zero-copy, both legs plaintext on this node).
//! - A remote instance is reached through its node's inbound listener over mTLS, presenting
//!   the source service's certificate and checking the peer presents the destination's
//!   identity; the peer checks the intention.
//! - Instances are picked by the cluster's load-balancing policy (skipping ejected ones); a failed connect moves on to the next (up to three), a
//!   denial does not.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::{Target, UpstreamListener};
use crate::drain::Drain;
use crate::snapshot::ConfigHandle;
use crate::stats::{Stats, inc};
use crate::tls::{MeshTls, service_key};
use crate::upstream::mesh_tunnel;

/// Instances tried per connection before giving up.
const MAX_ATTEMPTS: usize = 3;

/// Shared state of all upstream listeners.
#[derive(Debug)]
pub struct Outbound {
    config: ConfigHandle,
    tls: Arc<MeshTls>,
    stats: Arc<Stats>,
    connect_timeout: Duration,
    mode: flotilla_forward::Mode,
}

impl Outbound {
    /// `mode` picks splice (default) or buffered copy for local legs.
    pub fn new(
        config: ConfigHandle,
        tls: Arc<MeshTls>,
        stats: Arc<Stats>,
        connect_timeout: Duration,
        mode: flotilla_forward::Mode,
    ) -> Arc<Self> {
        Arc::new(Outbound {
            config,
            tls,
            stats,
            connect_timeout,
            mode,
        })
    }
}

struct Running {
    spec: UpstreamListener,
    task: JoinHandle<()>,
}

/// Keeps the bound listeners equal to the snapshot's until the drain starts.
pub async fn run(outbound: Arc<Outbound>, drain: Drain) {
    let mut changes = outbound.config.subscribe();
    let mut running: HashMap<String, Running> = HashMap::new();
    // Listeners that could not bind, retried every few seconds.
    let mut retry = tokio::time::interval(Duration::from_secs(2));
    loop {
        reconcile(&outbound, &drain, &mut running).await;
        tokio::select! {
            () = drain.signaled() => break,
            changed = changes.changed() => if changed.is_err() { break },
            _ = retry.tick() => {}
        }
    }
    for (_, r) in running.drain() {
        r.task.abort();
    }
}

async fn reconcile(
    outbound: &Arc<Outbound>,
    drain: &Drain,
    running: &mut HashMap<String, Running>,
) {
    let snapshot = outbound.config.load();
    let wanted: HashMap<&str, &UpstreamListener> = snapshot
        .listeners()
        .iter()
        .map(|l| (l.name.as_str(), l))
        .collect();
    let stale: Vec<String> = running
        .iter()
        .filter(|(name, r)| !wanted.get(name.as_str()).is_some_and(|w| **w == r.spec))
        .map(|(name, _)| name.clone())
        .collect();
    for name in stale {
        if let Some(r) = running.remove(&name) {
            info!(listener = %name, bind = %r.spec.bind, "upstream listener removed");
            r.task.abort();
            // Wait for the task to be dropped, closing its socket, so a listener replacing it
            // on the same address binds now rather than at the next retry.
            let _ = r.task.await;
        }
    }
    for (name, spec) in wanted {
        if running.contains_key(name) {
            continue;
        }
        match TcpListener::bind(spec.bind).await {
            Ok(listener) => {
                info!(
                    listener = %name,
                    bind = %spec.bind,
                    source = %spec.source_service,
                    destination = %spec.destination,
                    "upstream listener open"
                );
                let task = tokio::spawn(accept_loop(
                    listener,
                    spec.clone(),
                    outbound.clone(),
                    drain.clone(),
                ));
                running.insert(
                    name.to_string(),
                    Running {
                        spec: spec.clone(),
                        task,
                    },
                );
            }
            Err(error) => {
                warn!(listener = %name, bind = %spec.bind, %error, "cannot open upstream listener; retrying");
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    spec: UpstreamListener,
    outbound: Arc<Outbound>,
    drain: Drain,
) {
    let spec = Arc::new(spec);
    while let Some((tcp, peer)) = drain.accept(&listener, &spec.name).await {
        inc(&outbound.stats.outbound_connections);
        drain.spawn(handle(tcp, peer, spec.clone(), outbound.clone()));
    }
}

enum Attempt {
    /// Connected; the connection was forwarded to the end.
    Done,
    /// Refused by an intention: stop.
    Denied(String),
    /// Could not connect: try the next instance.
    Failed(String),
}

async fn handle(
    app: TcpStream,
    peer: SocketAddr,
    spec: Arc<UpstreamListener>,
    outbound: Arc<Outbound>,
) {
    let snapshot = outbound.config.load();
    let Some(cluster) = snapshot.cluster(&spec.destination) else {
        inc(&outbound.stats.outbound_failed);
        warn!(listener = %spec.name, destination = %spec.destination, "unknown destination service; closing");
        return;
    };
    // Only the few instances to try outlive the snapshot, which is not held for the
    // connection's lifetime.
    let healthy = cluster.healthy();
    let targets: Vec<Target> = cluster
        .balancer()
        .pick(
            None,
            cluster.states(),
            MAX_ATTEMPTS,
            std::time::Instant::now(),
        )
        .iter()
        .map(|&i| healthy[i].target())
        .collect();
    let decision = snapshot.authorize(&spec.source_service, &spec.destination);
    // Local instances are authorized here; remote ones by their node's inbound listener.
    let local_denial = decision.denied().then(|| decision.reason());
    drop(snapshot);
    let mut app = Some(app);
    let mut last = String::from("no healthy instance");
    for target in targets {
        let attempt = match (&target.via, &local_denial) {
            (None, Some(why)) => Attempt::Denied(why.clone()),
            (None, None) => local(&outbound, &mut app, target.addr).await,
            (Some(via), _) => remote(&outbound, &spec, &mut app, via, target.addr).await,
        };
        match attempt {
            Attempt::Done => return,
            Attempt::Denied(why) => {
                inc(&outbound.stats.outbound_denied);
                warn!(%peer, source = %spec.source_service, destination = %spec.destination, %why, "upstream connection refused");
                return;
            }
            Attempt::Failed(error) => {
                debug!(%peer, endpoint = %target.addr, %error, "upstream instance unreachable; trying the next");
                last = error;
            }
        }
    }
    inc(&outbound.stats.outbound_failed);
    warn!(%peer, listener = %spec.name, destination = %spec.destination, error = %last, "no reachable instance; closing");
}

async fn local(outbound: &Outbound, app: &mut Option<TcpStream>, addr: SocketAddr) -> Attempt {
    let upstream =
        match tokio::time::timeout(outbound.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Attempt::Failed(format!("connect {addr}: {e}")),
            Err(_) => return Attempt::Failed(format!("connect {addr}: timed out")),
        };
    let _ = upstream.set_nodelay(true);
    let Some(app) = app.take() else {
        return Attempt::Done;
    };
    match flotilla_forward::forward_tcp(app, upstream, outbound.mode).await {
        Ok(f) => {
            inc(match f.method {
                flotilla_forward::Method::Splice => &outbound.stats.forwarded_splice,
                flotilla_forward::Method::Copy => &outbound.stats.forwarded_copy,
            });
            debug!(%addr, sent = f.a_to_b, received = f.b_to_a, method = ?f.method, "upstream connection closed");
        }
        Err(error) => debug!(%addr, %error, "upstream connection ended with error"),
    }
    Attempt::Done
}

async fn remote(
    outbound: &Outbound,
    spec: &UpstreamListener,
    app: &mut Option<TcpStream>,
    via: &crate::config::Via,
    addr: SocketAddr,
) -> Attempt {
    let source = service_key(&spec.namespace, &spec.source_service);
    let tunnel = tokio::time::timeout(
        outbound.connect_timeout,
        mesh_tunnel(&outbound.tls, &source, via, addr),
    )
    .await;
    let mut tunnel = match tunnel {
        Ok(Ok(t)) => hyper_util::rt::TokioIo::new(t),
        Ok(Err(e)) => {
            return match e.denial() {
                Some(why) => Attempt::Denied(why.to_string()),
                None => Attempt::Failed(e.to_string()),
            };
        }
        Err(_) => return Attempt::Failed(format!("connect via {}: timed out", via.proxy)),
    };
    let Some(mut app) = app.take() else {
        return Attempt::Done;
    };
    inc(&outbound.stats.forwarded_copy);
    match flotilla_forward::forward_streams(&mut app, &mut tunnel).await {
        Ok((sent, received)) => {
            debug!(%addr, proxy = %via.proxy, sent, received, "mesh connection closed")
        }
        Err(error) => debug!(%addr, proxy = %via.proxy, %error, "mesh connection ended with error"),
    }
    Attempt::Done
}
