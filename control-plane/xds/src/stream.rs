use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::discovery::v1::{
    ALL_TYPES, AUTHORIZATION_TYPE, CLUSTER_TYPE, DiscoveryRequest, DiscoveryResponse,
    LISTENER_TYPE, ROUTE_TYPE, Resource, TRUST_BUNDLE_TYPE,
    discovery_service_server::{DiscoveryService, DiscoveryServiceServer},
};
use flotilla_store::Store;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::compute::{Resources, resources_for_node};

/// How long to wait after a change for more changes before pushing.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// The gRPC discovery service.
pub struct DiscoveryServer {
    store: Arc<dyn Store>,
}

impl DiscoveryServer {
    pub fn new(store: Arc<dyn Store>) -> DiscoveryServiceServer<Self> {
        DiscoveryServiceServer::new(Self { store })
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DiscoveryService for DiscoveryServer {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(serve(self.store.clone(), inbound, tx));
        let out = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(out)))
    }
}

/// Per-type bookkeeping of one stream.
#[derive(Default)]
struct TypeState {
    subscribed: bool,
    /// What was last sent, so unchanged resources are not sent again.
    sent: Option<Vec<Resource>>,
    sent_version: String,
    acked_version: String,
}

async fn serve(
    store: Arc<dyn Store>,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut node_id = String::new();
    let mut types: HashMap<&'static str, TypeState> = HashMap::new();
    let mut nonce: u64 = 0;
    let mut index_rx = store.subscribe();
    let mut dirty = true;
    loop {
        tokio::select! {
            req = inbound.next() => {
                let req = match req {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => { debug!(node = %node_id, error = %e, "discovery stream ended"); return; }
                    None => return,
                };
                if node_id.is_empty() {
                    if req.node_id.is_empty() {
                        let _ = tx.send(Err(Status::invalid_argument("DiscoveryRequest.node_id is required"))).await;
                        return;
                    }
                    node_id = req.node_id.clone();
                    info!(node = %node_id, "proxy connected to discovery");
                }
                let Some(type_url) = ALL_TYPES.into_iter().find(|t| *t == req.type_url) else {
                    let _ = tx.send(Err(Status::invalid_argument(format!("unknown type_url {:?}", req.type_url)))).await;
                    return;
                };
                let st = types.entry(type_url).or_default();
                if !st.subscribed {
                    st.subscribed = true;
                    dirty = true;
                } else if let Some(err) = req.error_detail {
                    warn!(node = %node_id, type_url, version = %st.sent_version, error = %err.message, "proxy rejected config (NACK)");
                } else if !req.response_nonce.is_empty() {
                    st.acked_version = req.version_info.clone();
                    debug!(node = %node_id, type_url, version = %st.acked_version, "ACK");
                }
            }
            changed = index_rx.changed() => {
                if changed.is_err() { return; }
                // Coalesce a burst of writes into one push.
                tokio::time::sleep(DEBOUNCE).await;
                index_rx.borrow_and_update();
                dirty = true;
            }
        }
        if !dirty || node_id.is_empty() {
            continue;
        }
        dirty = false;
        let state = store.snapshot();
        let r: Resources = resources_for_node(&state, &node_id);
        // Make before break: when routes change and clusters go away, the proxy first gets the
        // new clusters plus the old ones, then the routes, then the clusters without the old
        // ones — so no route ever points at a cluster the proxy does not have.
        let interim = interim_clusters(&types, &r);
        let mut pushes = Vec::with_capacity(6);
        match interim {
            Some(both) => {
                pushes.push((CLUSTER_TYPE, both));
                pushes.push((ROUTE_TYPE, r.routes));
                pushes.push((CLUSTER_TYPE, r.clusters));
            }
            None => {
                pushes.push((CLUSTER_TYPE, r.clusters));
                pushes.push((ROUTE_TYPE, r.routes));
            }
        }
        pushes.push((LISTENER_TYPE, r.listeners));
        pushes.push((TRUST_BUNDLE_TYPE, r.trust_bundle));
        pushes.push((AUTHORIZATION_TYPE, r.authorization));
        for (type_url, resources) in pushes {
            let st = types.entry(type_url).or_default();
            if !st.subscribed || st.sent.as_ref() == Some(&resources) {
                continue;
            }
            nonce += 1;
            let version = state.index.to_string();
            st.sent = Some(resources.clone());
            st.sent_version = version.clone();
            let response = DiscoveryResponse {
                version_info: version,
                type_url: type_url.to_string(),
                nonce: nonce.to_string(),
                resources,
            };
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
        }
    }
}

/// The new clusters plus the ones about to be removed, when the routes change too; `None` when
/// no cluster goes away or the routes stay.
fn interim_clusters(
    types: &HashMap<&'static str, TypeState>,
    r: &Resources,
) -> Option<Vec<Resource>> {
    let old = types.get(CLUSTER_TYPE)?.sent.as_ref()?;
    let routes = types.get(ROUTE_TYPE)?;
    if !routes.subscribed || routes.sent.as_ref() == Some(&r.routes) {
        return None;
    }
    let names: std::collections::HashSet<&str> =
        r.clusters.iter().map(|c| c.name.as_str()).collect();
    let leaving: Vec<Resource> = old
        .iter()
        .filter(|c| !names.contains(c.name.as_str()))
        .cloned()
        .collect();
    if leaving.is_empty() {
        return None;
    }
    let mut both = r.clusters.clone();
    both.extend(leaving);
    Some(both)
}
