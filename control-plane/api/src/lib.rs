//! Nomad-compatible v1 HTTP API.
//!
//! Paths and JSON shapes follow Nomad's, so existing Nomad clients and scripts work unchanged:
//! jobs (`/v1/jobs`, `/v1/job/:id`, parse and validate, versions and revert, plan with a
//! field-level diff), deployments (`/v1/deployment…`: promote, pause, fail), allocations,
//! nodes, evaluations, services and `/v1/status/leader`; the mesh's CA roots, rotation and
//! intentions in Consul's shapes (`/v1/connect/…`), and Consul's L7 config entries
//! (`/v1/config…`, with `?cas=`). Reads answer from a store snapshot and support Nomad's
//! blocking queries (`?index=N&wait=5m`, with the `X-Nomad-Index` header); writes are one store
//! transaction each (a job and its evaluation together). Errors are plain text with a 4xx status
//! and name the field or value at fault.
//!
//! Node-local reads (`/v1/client/fs/logs/…`) are forwarded to the agent of the allocation's node.

mod allocs;
mod config;
mod deployments;
mod diff;
mod error;
mod jobs;
mod mesh;
mod nodes;
mod plan;
mod reads;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use flotilla_store::Store;

pub use error::ApiError;

/// What the API needs from its host.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    /// The server's gRPC address, reported as the leader.
    pub rpc_addr: SocketAddr,
    /// Forwards node-local reads to agents.
    pub http: reqwest::Client,
}

/// The router with every v1 endpoint.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/v1/jobs",
            get(jobs::list).post(jobs::register).put(jobs::register),
        )
        .route("/v1/jobs/parse", post(jobs::parse))
        .route("/v1/validate/job", post(jobs::validate).put(jobs::validate))
        .route(
            "/v1/job/{id}",
            get(jobs::get)
                .post(jobs::register_at)
                .put(jobs::register_at)
                .delete(jobs::deregister),
        )
        .route("/v1/job/{id}/plan", post(plan::plan).put(plan::plan))
        .route(
            "/v1/job/{id}/dispatch",
            post(plan::dispatch).put(plan::dispatch),
        )
        .route(
            "/v1/job/{id}/periodic/force",
            post(plan::periodic_force).put(plan::periodic_force),
        )
        .route("/v1/job/{id}/versions", get(jobs::versions))
        .route("/v1/job/{id}/revert", post(jobs::revert).put(jobs::revert))
        .route("/v1/job/{id}/deployments", get(deployments::by_job))
        .route("/v1/job/{id}/deployment", get(deployments::latest))
        .route("/v1/deployments", get(deployments::list))
        .route("/v1/deployment/{id}", get(deployments::get))
        .route(
            "/v1/deployment/allocations/{id}",
            get(deployments::allocations),
        )
        .route(
            "/v1/deployment/promote/{id}",
            post(deployments::promote).put(deployments::promote),
        )
        .route(
            "/v1/deployment/pause/{id}",
            post(deployments::pause).put(deployments::pause),
        )
        .route(
            "/v1/deployment/fail/{id}",
            post(deployments::fail).put(deployments::fail),
        )
        .route("/v1/job/{id}/allocations", get(reads::job_allocations))
        .route("/v1/job/{id}/evaluations", get(reads::job_evaluations))
        .route("/v1/allocations", get(reads::allocations))
        .route("/v1/allocation/{id}", get(reads::allocation))
        .route(
            "/v1/allocation/{id}/stop",
            post(allocs::stop).put(allocs::stop),
        )
        .route(
            "/v1/client/allocation/{id}/restart",
            post(allocs::restart).put(allocs::restart),
        )
        .route("/v1/nodes", get(reads::nodes))
        .route("/v1/node/{id}", get(reads::node))
        .route("/v1/node/{id}/allocations", get(reads::node_allocations))
        .route("/v1/node/{id}/drain", post(nodes::drain).put(nodes::drain))
        .route(
            "/v1/node/{id}/eligibility",
            post(nodes::eligibility).put(nodes::eligibility),
        )
        .route("/v1/evaluations", get(reads::evaluations))
        .route("/v1/evaluation/{id}", get(reads::evaluation))
        .route(
            "/v1/evaluation/{id}/allocations",
            get(reads::evaluation_allocations),
        )
        .route("/v1/services", get(reads::services))
        .route("/v1/service/{name}", get(reads::service))
        .route("/v1/status/leader", get(reads::leader))
        .route("/v1/client/fs/logs/{alloc}", get(reads::logs))
        .route("/v1/connect/ca/roots", get(mesh::ca_roots))
        .route(
            "/v1/connect/ca/rotate",
            post(mesh::ca_rotate).put(mesh::ca_rotate),
        )
        .route("/v1/connect/intentions", get(mesh::intentions))
        .route(
            "/v1/connect/intentions/exact",
            get(mesh::intention_get)
                .put(mesh::intention_put)
                .post(mesh::intention_put)
                .delete(mesh::intention_delete),
        )
        .route("/v1/connect/intentions/check", get(mesh::intention_check))
        .route("/v1/config", axum::routing::put(config::put))
        .route("/v1/config/{kind}", get(config::list))
        .route(
            "/v1/config/{kind}/{name}",
            get(config::get).delete(config::delete),
        )
        .fallback(error::not_found)
        .with_state(state)
}
