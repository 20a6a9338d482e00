//! `flotilla proxy`: the node proxy alone, with static config from a bootstrap file (as Envoy's
//! static bootstrap) — no control plane, no discovery stream, no mesh certificates.
//!
//! The bootstrap is JSON: lists of the same `Resource`s the server streams, one list per type:
//!
//! ```json
//! {
//!   "clusters": [{"name": "web", "kind": {"cluster": {"endpoints": [
//!       {"address": "127.0.0.1:9000", "local": true, "healthy": true}]}}}],
//!   "routes": [{"name": "root", "kind": {"route": {"path_prefix": "/", "cluster": "web"}}}],
//!   "listeners": [],
//!   "authorization": [{"name": "intentions",
//!       "kind": {"authorization": {"default_action": "allow"}}}]
//! }
//! ```
//!
//! Each list is validated and applied exactly as a discovery response of its type would be
//! ([`ConfigHandle::apply_response`], version `"bootstrap"`), then an empty trust bundle, so the
//! proxy reports ready. A missing list is an empty one. Errors name the file and either the JSON
//! line, column and path, or the resource and field the proxy rejected.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use flotilla_proto::discovery::v1::{
    AUTHORIZATION_TYPE, CLUSTER_TYPE, DiscoveryResponse, LISTENER_TYPE, ROUTE_TYPE, Resource,
    TRUST_BUNDLE_TYPE, resource::Kind,
};
use flotilla_proxy::workers::Affinity;
use flotilla_proxy::{ApplyError, BoundProxy, ConfigHandle, NodeIdentity, ProxyConfig};
use tracing::{info, warn};

/// The version every bootstrap resource type is applied with (`/config_dump` shows it).
pub const BOOTSTRAP_VERSION: &str = "bootstrap";

/// How long `flotilla proxy` waits for the proxy's own drain after a signal before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

const BOOTSTRAP_HELP: &str = "\
The bootstrap file is JSON with four lists of discovery resources (the serde form of
flotilla.discovery.v1.Resource; a missing list is empty, unknown fields are errors):

  {
    \"clusters\": [{\"name\": \"web\", \"kind\": {\"cluster\": {\"endpoints\": [
        {\"address\": \"127.0.0.1:9000\", \"local\": true, \"healthy\": true}]}}}],
    \"routes\": [{\"name\": \"root\",
        \"kind\": {\"route\": {\"host\": \"\", \"path_prefix\": \"/\", \"cluster\": \"web\"}}}],
    \"listeners\": [],
    \"authorization\": [{\"name\": \"intentions\",
        \"kind\": {\"authorization\": {\"default_action\": \"allow\"}}}]
  }

Endpoints are reached directly only with \"local\": true (remote ones need mesh certificates,
which a proxy without a control plane does not have) and receive traffic only when
\"healthy\": true. Without an authorization resource the ingress denies every request (fail
closed). SIGINT or SIGTERM stops accepting, lets requests in flight finish (5 s), then exits.";

/// Flags of `flotilla proxy`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = BOOTSTRAP_HELP)]
pub struct ProxyArgs {
    /// JSON file with the proxy's clusters, routes, listeners and authorization (see --help).
    #[arg(long, value_name = "FILE")]
    pub bootstrap: PathBuf,
    /// Address of the ingress listener (HTTP/1.1 and h2c).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub ingress: SocketAddr,
    /// Address of the inbound listener (mTLS tunnels from other nodes' proxies).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15008")]
    pub inbound: SocketAddr,
    /// Address of the admin listener (/ready, /config_dump, /stats).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:19000")]
    pub admin: SocketAddr,
    /// Forwarding threads, each with its own runtime and upstream pool (default: the number
    /// of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
    /// Pinning of the forwarding threads: `auto` pins worker i to the i-th CPU the process may
    /// run on when there is exactly one worker per such CPU; `none` leaves placement to the
    /// kernel.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = WorkerAffinity::Auto)]
    pub worker_affinity: WorkerAffinity,
}

/// Values of `flotilla proxy --worker-affinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerAffinity {
    /// One CPU per worker when there is one worker per allowed CPU.
    Auto,
    /// Never pin.
    None,
}

impl From<WorkerAffinity> for Affinity {
    fn from(mode: WorkerAffinity) -> Self {
        match mode {
            WorkerAffinity::Auto => Affinity::Auto,
            WorkerAffinity::None => Affinity::None,
        }
    }
}

/// A bootstrap file that could not be used. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The file could not be read.
    #[error("cannot read bootstrap file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file is not valid JSON, or does not have the bootstrap's shape.
    #[error("{path}:{line}:{column}: {field}: {problem}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        /// The JSON path, e.g. `clusters[0].kind.cluster.endpoints[0].weight`.
        field: String,
        problem: String,
    },
    /// The proxy rejected the resources of one list.
    #[error("{path}: {list}: {error}")]
    Invalid {
        path: PathBuf,
        /// `clusters`, `routes`, `listeners` or `authorization`.
        list: &'static str,
        error: ApplyError,
    },
}

/// The parsed bootstrap file.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bootstrap {
    pub clusters: Vec<Resource>,
    pub routes: Vec<Resource>,
    pub listeners: Vec<Resource>,
    pub authorization: Vec<Resource>,
}

impl Bootstrap {
    /// Reads and parses `path` (JSON shape only; [`Bootstrap::apply`] validates the resources).
    pub fn load(path: &Path) -> Result<Bootstrap, BootstrapError> {
        let text = std::fs::read_to_string(path).map_err(|error| BootstrapError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(path, &text)
    }

    /// Parses bootstrap JSON; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Bootstrap, BootstrapError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = match e.path().to_string() {
                p if p == "." => "(top level)".to_string(),
                p => p,
            };
            let inner = e.into_inner();
            let (line, column) = (inner.line(), inner.column());
            // serde_json appends the location; it is already in front.
            let problem = inner.to_string();
            let problem = problem
                .strip_suffix(&format!(" at line {line} column {column}"))
                .unwrap_or(&problem)
                .to_string();
            BootstrapError::Parse {
                path: path.to_owned(),
                line,
                column,
                field,
                problem,
            }
        })
    }

    /// Validates and applies every list, then an empty trust bundle, so `config` is ready.
    /// The resources move into the discovery responses (no copy). On error some lists may
    /// already be applied; use a scratch handle to validate first.
    pub fn apply(self, path: &Path, config: &ConfigHandle) -> Result<(), BootstrapError> {
        let lists = [
            ("clusters", CLUSTER_TYPE, self.clusters),
            ("routes", ROUTE_TYPE, self.routes),
            ("listeners", LISTENER_TYPE, self.listeners),
            ("authorization", AUTHORIZATION_TYPE, self.authorization),
            ("trust bundle", TRUST_BUNDLE_TYPE, Vec::new()),
        ];
        for (list, type_url, resources) in lists {
            let response = DiscoveryResponse {
                type_url: type_url.to_owned(),
                version_info: BOOTSTRAP_VERSION.to_owned(),
                resources,
                ..Default::default()
            };
            config
                .apply_response(&response)
                .map_err(|error| BootstrapError::Invalid {
                    path: path.to_owned(),
                    list,
                    error,
                })?;
        }
        Ok(())
    }

    /// Valid but probably unintended: what a person would want to hear about at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.authorization.is_empty() {
            out.push(
                "no authorization resource: the ingress denies every request (fail closed); \
                 add {\"name\": \"intentions\", \"kind\": {\"authorization\": \
                 {\"default_action\": \"allow\"}}} to \"authorization\""
                    .to_string(),
            );
        }
        for (i, r) in self.clusters.iter().enumerate() {
            if let Some(Kind::Cluster(c)) = &r.kind
                && !c.endpoints.iter().any(|e| e.healthy)
            {
                let name = if c.name.is_empty() { &r.name } else { &c.name };
                out.push(format!(
                    "clusters[{i}] ({name:?}) has no endpoint with \"healthy\": true: \
                     its requests get 503"
                ));
            }
        }
        out
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "static".to_string())
}

/// Run `flotilla proxy` until SIGINT or SIGTERM, then drain.
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let path = args.bootstrap.as_path();
    // Parsed on a thread of its own: glibc gives it its own malloc arena, so the parser's
    // garbage (about half the file's size again in small strings) is returned to the system
    // when the parsed file is dropped, instead of leaving holes in the heap the proxy keeps
    // for its life (measured: 2 MB of idle RSS with 1,000 services).
    let bootstrap = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("flotilla-bootstrap".into())
            .spawn_scoped(s, || Bootstrap::load(path))
            .map(|parsing| parsing.join())
    })
    .context("starting the bootstrap parser thread")?
    .map_err(|_| anyhow::anyhow!("parsing {} panicked", path.display()))??;
    for warning in bootstrap.warnings() {
        warn!(bootstrap = %path.display(), "{warning}");
    }
    let mut proxy = BoundProxy::bind(ProxyConfig {
        ingress_addr: args.ingress,
        inbound_addr: args.inbound,
        admin_addr: Some(args.admin),
    })
    .await
    .context("starting the proxy")?;
    if let Some(n) = args.workers.and_then(|n| NonZeroUsize::new(usize::from(n))) {
        proxy = proxy.with_workers(n);
    }
    proxy = proxy.with_worker_affinity(args.worker_affinity.into());
    let (clusters, routes, listeners) = (
        bootstrap.clusters.len(),
        bootstrap.routes.len(),
        bootstrap.listeners.len(),
    );
    // Applying validates: a bad file ends the command here, before anything is served. (A
    // trial apply before binding would leave its garbage in the heap for the proxy's life.)
    // The snapshot copies what it needs; the parsed file is dropped here.
    bootstrap.apply(path, &proxy.config())?;
    info!(
        bootstrap = %path.display(),
        clusters,
        routes,
        listeners,
        "static config applied"
    );
    let node = NodeIdentity {
        node_id: host_name(),
        node_secret: String::new(),
        datacenter: String::new(),
    };
    let shutdown = crate::signals::shutdown_on_signals();
    let handle = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            proxy
                .run(node, None, crate::signals::wait(shutdown))
                .await
                .context("node proxy")
        }
    });
    crate::signals::drain(handle, shutdown, SHUTDOWN_GRACE, "proxy").await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Bootstrap, BootstrapError> {
        Bootstrap::parse(Path::new("b.json"), text)
    }

    #[test]
    fn parses_and_applies_a_ready_config() {
        let b = parse(
            r#"{
              "clusters": [{"name": "web", "kind": {"cluster": {"endpoints": [
                  {"address": "127.0.0.1:9000", "local": true, "healthy": true}]}}}],
              "routes": [{"name": "r", "kind": {"route": {"path_prefix": "/", "cluster": "web"}}}],
              "authorization": [{"name": "intentions",
                  "kind": {"authorization": {"default_action": "allow"}}}]
            }"#,
        )
        .unwrap();
        assert!(b.warnings().is_empty(), "{:?}", b.warnings());
        let config = ConfigHandle::new();
        b.apply(Path::new("b.json"), &config).unwrap();
        let snap = config.load();
        assert!(snap.is_ready());
        assert_eq!(snap.versions().clusters.as_deref(), Some(BOOTSTRAP_VERSION));
        assert_eq!(snap.cluster("web").map(|c| c.healthy().len()), Some(1));
        assert_eq!(snap.routes().len(), 1);
    }

    #[test]
    fn json_errors_name_file_line_and_path() {
        let err = parse("{\n  \"clusters\": [{\"name\": \"a\", \"kind\": {\"clustr\": {}}}]\n}")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("b.json:2:"), "{err}");
        assert!(err.contains("clusters[0].kind"), "{err}");
        assert!(err.contains("clustr"), "{err}");
        assert!(!err.contains(" at line "), "{err}");

        let err =
            parse(r#"{"clusters": [{"kind": {"cluster": {"endpoints": [{"weight": "x"}]}}}]}"#)
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("clusters[0].kind.cluster.endpoints[0].weight"),
            "{err}"
        );

        let err = parse(r#"{"cluster": []}"#).unwrap_err().to_string();
        assert!(err.starts_with("b.json:1:"), "{err}");
        assert!(err.contains("unknown field `cluster`"), "{err}");
    }

    #[test]
    fn rejected_resources_name_file_list_and_field() {
        let b = parse(
            r#"{"clusters": [{"name": "web", "kind": {"cluster": {"endpoints": [
                {"address": "nope", "local": true, "healthy": true}]}}}]}"#,
        )
        .unwrap();
        let err = b
            .apply(Path::new("b.json"), &ConfigHandle::new())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("b.json: clusters: "), "{err}");
        assert!(err.contains("endpoints[0].address"), "{err}");
        assert!(err.contains("\"nope\""), "{err}");
    }

    #[test]
    fn warns_about_deny_all_and_unhealthy_clusters() {
        let b = parse(r#"{"clusters": [{"name": "web", "kind": {"cluster": {}}}]}"#).unwrap();
        let w = b.warnings().join("\n");
        assert!(w.contains("denies every request"), "{w}");
        assert!(w.contains("\"web\""), "{w}");
    }
}
