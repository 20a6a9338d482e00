//! The gRPC service node agents talk to.

use std::pin::Pin;
use std::sync::Arc;

use flotilla_proto::agent::v1 as pb;
use flotilla_store::{Op, State, Store};
use flotilla_types::*;
use futures::Stream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::convert::{alloc_to_proto, node_from_proto, task_state_from_proto};
use crate::heartbeat::Heartbeats;

pub struct AgentApi {
    store: Arc<dyn Store>,
    heartbeats: Arc<Heartbeats>,
}

impl AgentApi {
    pub fn new(store: Arc<dyn Store>, heartbeats: Arc<Heartbeats>) -> Self {
        Self { store, heartbeats }
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.heartbeats.ttl().as_millis()).unwrap_or(u64::MAX)
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// The catalog id of one service instance.
pub fn registration_id(alloc_id: &str, group: &str, service: &str, port_label: &str) -> String {
    format!("_flotilla-task-{alloc_id}-{group}-{service}-{port_label}")
}

/// Allocations an agent should know about: everything on its node it has not finished.
fn node_allocs(state: &State, node_id: &str) -> Vec<Arc<Allocation>> {
    state
        .allocs_by_node(node_id)
        .filter(|a| !a.client_terminal())
        .cloned()
        .collect()
}

type AllocStream = Pin<Box<dyn Stream<Item = Result<pb::AllocationSet, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentApi {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let node = request
            .into_inner()
            .node
            .ok_or_else(|| Status::invalid_argument("RegisterRequest.node is required"))?;
        if node.id.is_empty() || node.name.is_empty() {
            return Err(Status::invalid_argument(
                "RegisterRequest.node: id and name are required",
            ));
        }
        let state = self.store.snapshot();
        let existing = state.node(&node.id).cloned();
        if let Some(e) = &existing
            && !e.secret_id.is_empty()
            && e.secret_id != node.secret_id
        {
            warn!(node = %node.name, id = %node.id, "registration refused: secret ID mismatch");
            return Err(Status::permission_denied(format!(
                "node {} is registered with a different secret ID: another agent already uses \
                 this node ID, or this agent's data dir was replaced",
                node.id
            )));
        }
        let n = node_from_proto(node, existing.as_deref(), crate::now_nanos());
        info!(node = %n.name, id = %n.id, address = %n.address, "node registered");
        let id = n.id.clone();
        let changed = existing.as_deref().is_none_or(|e| {
            e.status != NODE_STATUS_READY
                || e.drivers != n.drivers
                || e.attributes != n.attributes
                || e.meta != n.meta
                || e.node_class != n.node_class
        });
        let now = crate::now_nanos();
        let mut ops = vec![Op::PutNode(n)];
        if changed {
            // System jobs belong on this node too; its own jobs may need a look.
            ops.extend(
                state
                    .node_change_evals(&id, TRIGGER_NODE_UPDATE, now, crate::new_id)
                    .into_iter()
                    .map(Op::PutEval),
            );
        }
        // New or returning capacity: blocked evaluations get another chance.
        ops.extend(state.unblock_ops(now));
        let index = self.store.apply(ops).map_err(internal)?;
        self.heartbeats.reset(&id);
        Ok(Response::new(pb::RegisterResponse {
            heartbeat_ttl_ms: self.ttl_ms(),
            index,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let node_id = request.into_inner().node_id;
        let state = self.store.snapshot();
        let Some(node) = state.node(&node_id) else {
            return Ok(Response::new(pb::HeartbeatResponse {
                heartbeat_ttl_ms: self.ttl_ms(),
                known: false,
            }));
        };
        if node.status == NODE_STATUS_DOWN {
            // Back after being marked down: it must register again to be trusted with work.
            return Ok(Response::new(pb::HeartbeatResponse {
                heartbeat_ttl_ms: self.ttl_ms(),
                known: false,
            }));
        }
        self.heartbeats.reset(&node_id);
        Ok(Response::new(pb::HeartbeatResponse {
            heartbeat_ttl_ms: self.ttl_ms(),
            known: true,
        }))
    }

    type WatchAllocationsStream = AllocStream;

    async fn watch_allocations(
        &self,
        request: Request<pb::WatchAllocationsRequest>,
    ) -> Result<Response<Self::WatchAllocationsStream>, Status> {
        let node_id = request.into_inner().node_id;
        if self.store.snapshot().node(&node_id).is_none() {
            return Err(Status::not_found(format!(
                "node {node_id} is not registered"
            )));
        }
        let store = self.store.clone();
        let stream = async_stream_allocs(store, node_id);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn update_allocations(
        &self,
        request: Request<pb::UpdateAllocationsRequest>,
    ) -> Result<Response<pb::UpdateAllocationsResponse>, Status> {
        let req = request.into_inner();
        let state = self.store.snapshot();
        let now = crate::now_nanos();
        let mut ops = Vec::new();
        let mut reevaluate = std::collections::BTreeSet::new();
        for update in req.allocations {
            let Some(alloc) = state.alloc(&update.alloc_id) else {
                continue;
            };
            if alloc.node_id != req.node_id {
                warn!(alloc = %alloc.id, node = %req.node_id, "update for an allocation of another node ignored");
                continue;
            }
            let mut a = (**alloc).clone();
            // A lost allocation stays lost whatever a late agent says.
            if a.client_status != ALLOC_CLIENT_LOST {
                a.client_status = update.client_status.clone();
            }
            a.client_description = update.client_description.clone();
            a.task_states = update
                .task_states
                .into_iter()
                .map(|(k, v)| (k, task_state_from_proto(v)))
                .collect();
            a.modify_time = now;
            let became_terminal = a.client_terminal() && !alloc.client_terminal();
            if became_terminal && !a.desired_terminal() {
                reevaluate.insert((a.namespace.clone(), a.job_id.clone()));
            }
            ops.extend(service_ops(&state, &a, &update.services));
            if a.client_status != alloc.client_status
                || a.task_states != alloc.task_states
                || a.client_description != alloc.client_description
            {
                ops.push(Op::PutAlloc(a));
            }
        }
        for (ns, job_id) in reevaluate {
            if let Some(job) = state.job(&ns, &job_id) {
                ops.push(Op::PutEval(crate::new_eval(
                    job,
                    TRIGGER_ALLOC_FAILURE,
                    now,
                )));
            }
        }
        if ops.is_empty() {
            return Ok(Response::new(pb::UpdateAllocationsResponse {
                index: state.index,
            }));
        }
        let index = self.store.apply(ops).map_err(internal)?;
        Ok(Response::new(pb::UpdateAllocationsResponse { index }))
    }
}

/// Catalog changes for one allocation: its instances registered with their health while it
/// should run and runs; removed otherwise.
fn service_ops(state: &State, a: &Allocation, health: &[pb::ServiceHealth]) -> Vec<Op> {
    let mut ops = Vec::new();
    let live = !a.terminal() && a.client_status == ALLOC_CLIENT_RUNNING;
    let existing: Vec<_> = state.services_by_alloc(&a.id).cloned().collect();
    if !live {
        ops.extend(existing.iter().map(|s| Op::DeleteService(s.id.clone())));
        return ops;
    }
    let Some(group) = a.group() else {
        return ops;
    };
    for svc in group.all_services() {
        let (address, port) = match a.port(&svc.port_label) {
            Some(p) => (p.host_ip.clone(), p.value),
            None => match svc.port_label.parse::<u16>() {
                Ok(n) => (
                    a.allocated_resources
                        .shared
                        .ports
                        .first()
                        .map(|p| p.host_ip.clone())
                        .unwrap_or_default(),
                    n,
                ),
                Err(_) => continue,
            },
        };
        let healthy = health
            .iter()
            .find(|h| h.service_name == svc.name && h.port_label == svc.port_label)
            .is_some_and(|h| h.healthy);
        let id = registration_id(&a.id, &a.task_group, &svc.name, &svc.port_label);
        let reg = ServiceRegistration {
            id: id.clone(),
            service_name: svc.name.clone(),
            namespace: a.namespace.clone(),
            node_id: a.node_id.clone(),
            datacenter: state
                .node(&a.node_id)
                .map(|n| n.datacenter.clone())
                .unwrap_or_default(),
            job_id: a.job_id.clone(),
            alloc_id: a.id.clone(),
            tags: crate::deployments::registration_tags(state, a, svc).to_vec(),
            address,
            port,
            status: if healthy {
                HEALTH_PASSING
            } else {
                HEALTH_CRITICAL
            }
            .to_string(),
            create_index: 0,
            modify_index: 0,
        };
        let unchanged = state.services.get(&id).is_some_and(|old| {
            old.status == reg.status
                && old.address == reg.address
                && old.port == reg.port
                && old.tags == reg.tags
        });
        if !unchanged {
            ops.push(Op::PutService(reg));
        }
    }
    ops
}

/// Send the node's allocation set now and again each time it changes.
fn async_stream_allocs(
    store: Arc<dyn Store>,
    node_id: String,
) -> impl Stream<Item = Result<pb::AllocationSet, Status>> + Send {
    struct Watch {
        store: Arc<dyn Store>,
        rx: tokio::sync::watch::Receiver<u64>,
        node_id: String,
        last: Option<Vec<(String, u64)>>,
    }
    let rx = store.subscribe();
    let start = Watch {
        store,
        rx,
        node_id,
        last: None,
    };
    futures::stream::unfold(start, |mut w| async move {
        loop {
            if w.last.is_some() && w.rx.changed().await.is_err() {
                return None;
            }
            w.rx.borrow_and_update();
            let state = w.store.snapshot();
            let allocs = node_allocs(&state, &w.node_id);
            let fingerprint: Vec<(String, u64)> = allocs
                .iter()
                .map(|a| (a.id.clone(), a.modify_index))
                .collect();
            if w.last.as_ref() == Some(&fingerprint) {
                continue;
            }
            w.last = Some(fingerprint);
            let node = state.node(&w.node_id).cloned();
            let set = pb::AllocationSet {
                index: state.index,
                allocations: allocs
                    .iter()
                    .map(|a| alloc_to_proto(a, node.as_deref()))
                    .collect(),
            };
            return Some((Ok(set), w));
        }
    })
}
