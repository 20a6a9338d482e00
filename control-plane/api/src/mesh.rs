//! The mesh's HTTP API in Consul's shapes: CA roots and rotation (`/v1/connect/ca/…`) and
//! intentions (`/v1/connect/intentions…`).

use axum::Json;
use axum::extract::{Query, State};
use axum::response::Response;
use bytes::Bytes;
use flotilla_store::Op;
use flotilla_types::{CaRoot, Intention, IntentionAction, WILDCARD, authorize};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ApiState;
use crate::error::{ApiError, decode};
use crate::reads::{BlockingQuery, block, with_index};

fn now_secs() -> i64 {
    crate::jobs::now_nanos() / flotilla_types::NANOS_PER_SEC
}

fn roots_json(ca: &flotilla_types::CaState) -> Value {
    json!({
        "ActiveRootID": ca.active_root().map(|r| r.id.clone()).unwrap_or_default(),
        "TrustDomain": ca.trust_domain,
        "LeafCertTTL": ca.leaf_cert_ttl,
        "Roots": ca.roots.iter().map(CaRoot::public).collect::<Vec<_>>(),
    })
}

/// `GET /v1/connect/ca/roots`: the trust bundle (never the private keys).
pub async fn ca_roots(
    State(api): State<ApiState>,
    Query(b): Query<BlockingQuery>,
) -> Result<Response, ApiError> {
    let state = block(&api, &b).await;
    let ca = state
        .ca
        .as_ref()
        .ok_or_else(|| ApiError::not_found("the CA is not initialised yet"))?;
    Ok(with_index(state.index, Json(roots_json(ca))))
}

/// Body of `POST /v1/connect/ca/rotate`: empty (generate a new root) or an operator's root.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RotateRequest {
    pub root_cert: Option<String>,
    pub private_key: Option<String>,
}

/// `POST /v1/connect/ca/rotate`: a new active root, cross-signed by the current one; the old
/// root stays trusted until every leaf it signed has expired.
pub async fn ca_rotate(State(api): State<ApiState>, body: Bytes) -> Result<Response, ApiError> {
    let req: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        decode(&body)?
    };
    let state = api.store.snapshot();
    let ca = state
        .ca
        .as_ref()
        .ok_or_else(|| ApiError::not_found("the CA is not initialised yet"))?;
    let now = now_secs();
    let root = match (req.root_cert, req.private_key) {
        (Some(cert), Some(key)) => flotilla_ca::load_root(&cert, &key, now),
        (None, None) => {
            flotilla_ca::generate_root(&ca.trust_domain, now, flotilla_ca::ROOT_VALIDITY)
        }
        (Some(_), None) => return Err(ApiError::bad_request("RootCert given without PrivateKey")),
        (None, Some(_)) => return Err(ApiError::bad_request("PrivateKey given without RootCert")),
    }
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let next =
        flotilla_ca::rotate(ca, root, now).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let body = roots_json(&next);
    let index = api.store.apply(vec![Op::PutCa(next)])?;
    tracing::info!(active = %body["ActiveRootID"], "CA root rotated");
    Ok(with_index(index, Json(body)))
}

/// `?source=…&destination=…`
#[derive(Debug, Deserialize)]
pub struct PairQuery {
    pub source: Option<String>,
    pub destination: Option<String>,
}

impl PairQuery {
    fn pair(&self) -> Result<(String, String), ApiError> {
        let source = check_name("source", self.source.as_deref())?;
        let destination = check_name("destination", self.destination.as_deref())?;
        Ok((source, destination))
    }
}

/// A service name or `*`: lower-case letters, digits and dashes (what jobspecs allow).
fn check_name(field: &str, value: Option<&str>) -> Result<String, ApiError> {
    let value = value.unwrap_or_default().trim();
    if value.is_empty() {
        return Err(ApiError::bad_request(format!(
            "query parameter {field:?} is required (a service name or \"*\")"
        )));
    }
    let valid = value == WILDCARD
        || value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !valid {
        return Err(ApiError::bad_request(format!(
            "{field} {value:?} is not a service name (letters, digits, '-', '_', '.') or \"*\""
        )));
    }
    Ok(value.to_string())
}

/// Body of `PUT /v1/connect/intentions/exact`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct IntentionBody {
    pub action: String,
    #[serde(default)]
    pub description: String,
    /// Accepted for Consul compatibility; must match the query when given.
    #[serde(default)]
    pub source_name: Option<String>,
    #[serde(default)]
    pub destination_name: Option<String>,
}

fn sorted(intentions: impl Iterator<Item = Intention>) -> Vec<Intention> {
    let mut all: Vec<Intention> = intentions.collect();
    all.sort_by(|a, b| {
        b.precedence
            .cmp(&a.precedence)
            .then_with(|| a.source_name.cmp(&b.source_name))
            .then_with(|| a.destination_name.cmp(&b.destination_name))
    });
    all
}

/// `GET /v1/connect/intentions`: all intentions, highest precedence first.
pub async fn intentions(State(api): State<ApiState>, Query(b): Query<BlockingQuery>) -> Response {
    let state = block(&api, &b).await;
    let all = sorted(state.intentions.values().map(|i| (**i).clone()));
    with_index(state.index, Json(all))
}

/// `GET /v1/connect/intentions/exact?source=&destination=`.
pub async fn intention_get(
    State(api): State<ApiState>,
    Query(q): Query<PairQuery>,
) -> Result<Response, ApiError> {
    let (source, destination) = q.pair()?;
    let state = api.store.snapshot();
    let ixn = state
        .intentions
        .get(&Intention::key(&source, &destination))
        .ok_or_else(|| {
            ApiError::not_found(format!("no intention from {source:?} to {destination:?}"))
        })?;
    Ok(with_index(state.index, Json(&**ixn)))
}

/// `PUT /v1/connect/intentions/exact?source=&destination=`: create or replace.
pub async fn intention_put(
    State(api): State<ApiState>,
    Query(q): Query<PairQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (source, destination) = q.pair()?;
    let req: IntentionBody = decode(&body)?;
    let action = IntentionAction::parse(&req.action).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Action: {:?} is not valid (expected \"allow\" or \"deny\")",
            req.action
        ))
    })?;
    for (field, given, query) in [
        ("SourceName", &req.source_name, &source),
        ("DestinationName", &req.destination_name, &destination),
    ] {
        if let Some(given) = given
            && given != query
        {
            return Err(ApiError::bad_request(format!(
                "{field}: {given:?} does not match the query parameter {query:?}"
            )));
        }
    }
    let state = api.store.snapshot();
    let key = Intention::key(&source, &destination);
    let id = state
        .intentions
        .get(&key)
        .map(|i| i.id.clone())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let ixn = Intention {
        id,
        precedence: Intention::precedence(&source, &destination),
        source_ns: flotilla_types::DEFAULT_NAMESPACE.to_string(),
        destination_ns: flotilla_types::DEFAULT_NAMESPACE.to_string(),
        source_name: source,
        destination_name: destination,
        action,
        description: req.description,
        ..Default::default()
    };
    let index = api.store.apply(vec![Op::PutIntention(ixn)])?;
    Ok(with_index(index, Json(true)))
}

/// `DELETE /v1/connect/intentions/exact?source=&destination=`.
pub async fn intention_delete(
    State(api): State<ApiState>,
    Query(q): Query<PairQuery>,
) -> Result<Response, ApiError> {
    let (source, destination) = q.pair()?;
    let key = Intention::key(&source, &destination);
    if !api.store.snapshot().intentions.contains_key(&key) {
        return Err(ApiError::not_found(format!(
            "no intention from {source:?} to {destination:?}"
        )));
    }
    let index = api.store.apply(vec![Op::DeleteIntention(key)])?;
    Ok(with_index(index, Json(true)))
}

/// Answer of `GET /v1/connect/intentions/check`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckResponse {
    pub allowed: bool,
    /// Which intention decided, or that the default applied.
    pub reason: String,
}

/// `GET /v1/connect/intentions/check?source=&destination=`: would a connection be allowed?
pub async fn intention_check(
    State(api): State<ApiState>,
    Query(q): Query<PairQuery>,
) -> Result<Response, ApiError> {
    let (source, destination) = q.pair()?;
    let state = api.store.snapshot();
    let default = state.mesh.default_intention;
    let (action, matched) = authorize(
        state.intentions.values().map(|i| &**i),
        &source,
        &destination,
        default,
    );
    let reason = match matched {
        Some(i) => format!(
            "intention {} => {} ({})",
            i.source_name,
            i.destination_name,
            i.action.as_str()
        ),
        None => format!(
            "no intention matches; default policy is {}",
            default.as_str()
        ),
    };
    Ok(with_index(
        state.index,
        Json(CheckResponse {
            allowed: action == IntentionAction::Allow,
            reason,
        }),
    ))
}
