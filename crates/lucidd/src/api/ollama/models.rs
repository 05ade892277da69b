//! Model management: `/`, `/api/version`, `/api/tags`, `/api/ps`, `/api/show`,
//! `/api/delete`, `/api/push` (`create` has `/api/create` and `/api/copy`; `pull`, `/api/pull`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

use super::requests::{NamedRequest, ShowRequest};
use super::validate;
use crate::api::answer::rfc3339;
use crate::api::body::JsonBody;
use crate::api::error::ApiError;
use crate::registry::{RegistryError, ResolvedModel};
use crate::state::AppState;

/// The Ollama version we answer with: new enough that clients enable the features emulated.
pub const OLLAMA_COMPAT_VERSION: &str = "0.12.0";

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::NotFound(_) => {
                Self { status: StatusCode::NOT_FOUND, message: err.to_string() }
            }
            RegistryError::Builtin(_) => Self::bad_request(err.to_string()),
            RegistryError::Io(_) => Self::internal(err.to_string()),
        }
    }
}

/// `GET /`: the liveness probe.
pub async fn root() -> &'static str {
    "Ollama is running"
}

/// `GET /api/version`.
pub async fn version() -> Json<Value> {
    Json(json!({ "version": OLLAMA_COMPAT_VERSION }))
}

fn details(model: &ResolvedModel) -> Value {
    let base = &model.base;
    json!({
        "parent_model": model.derived.as_ref().map(|d| d.base.clone()).unwrap_or_default(),
        "format": base.format,
        "family": base.family,
        "families": [base.family],
        "parameter_size": base.parameter_size,
        "quantization_level": base.quantization_level,
    })
}

fn digest(model: &ResolvedModel) -> String {
    match &model.derived {
        // A derived model is its own manifest over the base; name it by a hash of both.
        Some(d) => {
            use sha2::{Digest, Sha256};
            let config = serde_json::to_vec(d).unwrap_or_default();
            hex::encode(
                Sha256::new()
                    .chain_update(model.base.digest.as_bytes())
                    .chain_update(config)
                    .finalize(),
            )
        }
        None => model.base.digest.clone(),
    }
}

/// `GET /api/tags`.
pub async fn tags(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut models: Vec<Value> = state
        .registry
        .list()
        .iter()
        .map(|m| {
            json!({
                "name": m.name.to_string(),
                "model": m.name.to_string(),
                "modified_at": rfc3339(m.modified_at()),
                "size": m.base.size,
                "digest": digest(m),
                "details": details(m),
                "capabilities": m.base.capabilities,
            })
        })
        .collect();
    // Models seen on the network and not served here, marked as remote with the peers that
    // serve them (none when local-only: they could not be used).
    for (model, peers) in state.remote_models() {
        models.push(json!({
            "name": model.name.to_string(),
            "model": model.name.to_string(),
            "modified_at": rfc3339(model.modified_at()),
            "size": model.base.size,
            "digest": digest(&model),
            "details": details(&model),
            "capabilities": model.base.capabilities,
            "remote": true,
            "peers": peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }));
    }
    Json(json!({ "models": models }))
}

/// `GET /api/phase/policy`: the operator policy in force, whether each donation gate is open
/// now and why, and the last refused edit (a Phase extension).
pub async fn policy(State(state): State<Arc<AppState>>) -> Json<Value> {
    let policy = state.policy.current();
    let running = state.network.as_ref().map_or(0, |n| n.status().jobs_active);
    let minute = crate::policy::gates::local_minute_of_day();
    let gates = crate::policy::gates::evaluate(&policy, &state.sensors, minute, running as u32);
    Json(json!({
        "path": state.policy.path().display().to_string(),
        "policy": policy.to_toml(),
        "last_error": state.policy.last_error(),
        "gates": gates.iter().map(|g| json!({"name": g.kind.as_str(), "open": g.open, "reason": g.reason})).collect::<Vec<_>>(),
    }))
}

/// `GET /api/phase/network`: this node on the peer-to-peer network (a Phase extension).
pub async fn network(State(state): State<Arc<AppState>>) -> Json<Value> {
    let Some(network) = &state.network else {
        return Json(json!({ "enabled": false, "peer_id": state.peer_id.to_string() }));
    };
    let status = network.status();
    let peers: Vec<Value> = status
        .peers
        .iter()
        .map(|p| {
            let standing = state.reputation.standing(&p.peer);
            json!({
                "peer_id": p.peer.to_string(),
                "reputation": {
                    "score": (standing.score() * 1000.0).round() / 1000.0,
                    "usable": standing.score() >= state.reputation.floor(),
                    "good": (standing.good * 100.0).round() / 100.0,
                    "bad": (standing.bad * 100.0).round() / 100.0,
                    "z": standing.z().map(|z| (z * 100.0).round() / 100.0),
                },
                "connected": p.connected,
                "connection": p.connected.then_some(if p.relayed { "relayed" } else { "direct" }),
                "rtt_ms": p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                "addrs": p.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "agent": p.agent,
                "models": p.catalog.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({
        "enabled": true,
        "peer_id": status.peer_id.to_string(),
        "local_only": state.relaying().is_none(),
        "listen_addrs": status.listen_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "external_addrs": status.external_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "peers": peers,
        "bootstrap_errors": status.bootstrap_errors,
        "jobs_served": status.jobs_served,
        "jobs_refused": status.jobs_refused,
        "jobs_requested": status.jobs_requested,
        "jobs_active": status.jobs_active,
    }))
}

/// `GET /api/ps`.
pub async fn ps(State(state): State<Arc<AppState>>) -> Json<Value> {
    let models: Vec<Value> = state
        .registry
        .loaded()
        .iter()
        .map(|(m, expires_at)| {
            json!({
                "name": m.name.to_string(),
                "model": m.name.to_string(),
                "size": m.base.size,
                "digest": digest(m),
                "details": details(m),
                "expires_at": rfc3339(*expires_at),
                "size_vram": 0,
                "context_length": m.base.context_length,
            })
        })
        .collect();
    Json(json!({ "models": models }))
}

/// Quotes a parameter value the way `ollama show` prints it.
fn parameter_value(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![Value::String(s.clone()).to_string()],
        Value::Array(items) => items.iter().flat_map(parameter_value).collect(),
        other => vec![other.to_string()],
    }
}

/// `POST /api/show`.
pub async fn show(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<ShowRequest>,
) -> Result<Json<Value>, ApiError> {
    let name =
        req.model.as_deref().filter(|m| !m.is_empty()).or(req.name.as_deref()).unwrap_or_default();
    let model = state.resolve_for_job(name).await?;
    let derived = model.derived.clone();
    let template = derived
        .as_ref()
        .and_then(|d| d.template.clone())
        .unwrap_or_else(|| model.base.template.clone());
    // What applies when a request sets nothing: a made model's settings over its file's.
    let system = model.default_system().unwrap_or_default();
    let mut parameters = String::new();
    let mut modelfile = format!(
        "# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM {}\n\nFROM {}\nTEMPLATE {:?}\n",
        model.name, model.base.name, template
    );
    if !system.is_empty() {
        modelfile.push_str(&format!("SYSTEM {system:?}\n"));
    }
    for (key, value) in model.default_parameters() {
        for v in parameter_value(&value) {
            parameters.push_str(&format!("{key:<30} {v}\n"));
            modelfile.push_str(&format!("PARAMETER {key} {v}\n"));
        }
    }
    let mut shown = json!({
        "modelfile": modelfile,
        "parameters": parameters.trim_end(),
        "template": template,
        "system": system,
        "license": derived.as_ref().and_then(|d| d.license.clone()).unwrap_or_default(),
        "details": details(&model),
        "messages": derived.as_ref().map(|d| d.messages.clone()).unwrap_or_default(),
        "model_info": model.base.model_info,
        "capabilities": model.base.capabilities,
        "modified_at": rfc3339(model.modified_at()),
    });
    // Not in Ollama's answer: what a person should know first (e.g. no chat template).
    if !model.base.notes.is_empty() {
        shown["notes"] = json!(model.base.notes);
    }
    Ok(Json(shown))
}

/// `DELETE /api/delete`.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<NamedRequest>,
) -> Result<StatusCode, ApiError> {
    let asked = req.model_name();
    let name = validate::model_name(asked)?;
    // A pulled model: its manifest goes, then the blobs nothing else uses; it is withdrawn
    // once the worker has seen it go.
    let pulled = match &state.puller {
        Some(puller) => puller.remove(&name).map_err(|e| {
            ApiError::internal(format!("removing {name} from {}: {e}", puller.root().display()))
        })?,
        None => false,
    };
    if pulled {
        super::create::rescan_until(&state, &name, super::create::Seen::Gone).await;
        return Ok(StatusCode::OK);
    }
    match state.registry.delete(&name) {
        Err(RegistryError::NotFound(_)) => Err(ApiError::model_not_found(asked)),
        other => other.map(|()| StatusCode::OK).map_err(ApiError::from),
    }
}

/// Answers a progress sequence: NDJSON lines, or only the last one when not streaming.
pub(super) fn progress(lines: Vec<Value>, stream: bool) -> Response {
    if stream {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        ([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
    } else {
        let last = lines.into_iter().last().unwrap_or_else(|| json!({"status": "success"}));
        let status = if last.get("error").is_some() {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        (status, Json(last)).into_response()
    }
}

/// `POST /api/push`: there is no registry to push to.
pub async fn push(JsonBody(req): JsonBody<NamedRequest>) -> Result<Response, ApiError> {
    validate::model_name(req.model_name())?;
    Err(ApiError::bad_request(
        "push is not available: Phase nodes share models with peers, not with a registry",
    ))
}
