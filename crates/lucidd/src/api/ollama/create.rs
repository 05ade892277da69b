//! `/api/create` and `/api/copy`. A model made from uploaded files, and a copy of a model in
//! this node's store, are manifests in the store (names pointing at content, as a pull writes
//! them), served once the worker has seen them. A model made `from` another one, and a copy of
//! such a model or of one this node does not store, are settings on top of their base
//! (`registry`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

use super::models::progress;
use super::requests::{CopyRequest, CreateRequest};
use super::validate;
use crate::api::answer::now_rfc3339;
use crate::api::body::JsonBody;
use crate::api::error::ApiError;
use crate::names::ModelName;
use crate::registry::DerivedModel;
use crate::state::AppState;
use crate::store::create::{CreateError, Recipe};

/// How long a worker may take to serve a model its store just gained or lost.
const SEEN_WITHIN: Duration = Duration::from_secs(30);

/// What a change to the store should lead to, as the workers see it.
pub enum Seen<'a> {
    /// The name is served from a model file (any).
    Served,
    /// The name is served from the model file of this SHA-256 (hex).
    ServedAs(&'a str),
    /// The name is no longer served from a model file.
    Gone,
}

/// Has the workers look at their stores, then waits until `name` is as `want` says. False if
/// that did not happen in time.
pub async fn rescan_until(state: &AppState, name: &ModelName, want: Seen<'_>) -> bool {
    state.registry.workers().rescan_now().await;
    let deadline = tokio::time::Instant::now() + SEEN_WITHIN;
    loop {
        let served = state.registry.resolve(name).filter(|m| m.derived.is_none());
        let done = match (&want, served) {
            (Seen::Served, found) => found.is_some(),
            (Seen::ServedAs(digest), found) => found.is_some_and(|m| m.base.digest == *digest),
            (Seen::Gone, found) => found.is_none(),
        };
        if done {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `license` as text: a string, or lines given as a list.
fn license_text(license: Option<Value>) -> Result<Option<String>, ApiError> {
    match license {
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Array(items)) => {
            Ok(Some(items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n")))
        }
        Some(Value::Null) | None => Ok(None),
        Some(_) => Err(ApiError::bad_request("license must be a string or a list of strings")),
    }
}

/// `POST /api/create`: a model from uploaded files (`files`), or on top of an existing one
/// (`from`), with a system prompt, template, parameters, messages or license.
pub async fn create(
    State(state): State<Arc<AppState>>,
    JsonBody(mut req): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    let name = validate::model_name(
        req.model.as_deref().filter(|m| !m.is_empty()).or(req.name.as_deref()).unwrap_or_default(),
    )?;
    let stream = req.stream.unwrap_or(true);
    if req.quantize.is_some() {
        return Err(ApiError::bad_request(
            "quantizing is not supported here: quantize with llama.cpp's llama-quantize and create from the result",
        ));
    }
    if req.adapters.as_ref().is_some_and(|a| !a.is_empty()) {
        return Err(ApiError::bad_request(
            "adapters are not supported here: merge the LoRA into the GGUF with llama.cpp's llama-export-lora and create from the result",
        ));
    }
    if let Some(files) = req.files.take_if(|f| !f.is_empty()) {
        if req.from.as_deref().is_some_and(|f| !f.is_empty()) {
            return Err(ApiError::bad_request("give either 'from' or 'files', not both"));
        }
        return from_files(&state, name, files, req, stream).await;
    }
    let Some(from) = req.from.as_deref().filter(|f| !f.is_empty()) else {
        return Err(ApiError::bad_request("neither 'from' or 'files' was specified"));
    };
    let base = validate::resolve(&state, from)?;
    let mut model = base.to_derived();
    model.parameters.extend(validate::options(&base, req.parameters.as_ref())?);
    model.system = req.system.or(model.system);
    model.template = req.template.or(model.template);
    model.messages = req.messages.unwrap_or(model.messages);
    model.license = license_text(req.license)?.or(model.license);
    model.modified_at = now_rfc3339();
    state.registry.put(name, model)?;
    let lines = vec![
        json!({"status": "reading model metadata"}),
        json!({"status": format!("using existing layer sha256:{}", base.base.digest)}),
        json!({"status": "writing manifest"}),
        json!({"status": "success"}),
    ];
    Ok(progress(lines, stream))
}

/// A model made of blobs uploaded with `POST /api/blobs`, written into the store.
async fn from_files(
    state: &AppState,
    name: ModelName,
    files: Map<String, Value>,
    req: CreateRequest,
    stream: bool,
) -> Result<Response, ApiError> {
    let mut recipe = Recipe {
        system: req.system,
        template: req.template,
        parameters: validate::checked_options(req.parameters.as_ref())?,
        license: license_text(req.license)?,
        messages: req.messages.unwrap_or_default(),
        files: Vec::new(),
    };
    for (file, digest) in files {
        if file.starts_with('/') || file.split('/').any(|part| part == "..") {
            return Err(ApiError::bad_request("file path must be relative"));
        }
        let Some(hex) = digest.as_str().and_then(|d| super::blobs::parse_digest(d).ok()) else {
            return Err(ApiError::bad_request(format!(
                "invalid digest for {file}: expected \"sha256:<64 hex digits>\""
            )));
        };
        recipe.files.push((file, hex));
    }
    let Some(puller) = &state.puller else {
        return Err(ApiError::bad_request(
            "creating a model from files needs a worker that loads model files; this node serves only built-in models (start lucidd with --worker llama-cpp)",
        ));
    };
    let manifest = puller.create(&name, recipe, &state.blobs).await.map_err(|e| match e {
        e @ (CreateError::Store(_) | CreateError::Blob(_)) => ApiError::internal(e.to_string()),
        other => ApiError::bad_request(other.to_string()),
    })?;
    // A made model of the same name gives way to the stored one.
    let _ = state.registry.delete(&name);
    let digest = manifest.layers[0].sha256_hex().unwrap_or_default();
    if !rescan_until(state, &name, Seen::ServedAs(digest)).await {
        let _ = puller.remove(&name);
        return Err(ApiError::bad_request(format!(
            "{name} was made, but the worker could not load its model file: see the daemon's log for why"
        )));
    }
    tracing::info!(%name, digest, "made a model from uploaded files");
    let mut lines = vec![json!({"status": "parsing GGUF"})];
    lines.extend(
        manifest
            .layers
            .iter()
            .map(|l| json!({"status": format!("using existing layer {}", l.digest)})),
    );
    lines.push(json!({"status": "writing manifest"}));
    lines.push(json!({"status": "success"}));
    Ok(progress(lines, stream))
}

/// `POST /api/copy`.
pub async fn copy(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<CopyRequest>,
) -> Result<StatusCode, ApiError> {
    let destination = validate::model_name(&req.destination)?;
    let source = validate::model_name(&req.source)?;
    let found = state.registry.resolve(&source).ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("model \"{}\" not found", req.source),
    })?;
    if found.derived.is_none()
        && let Some(puller) = &state.puller
    {
        let copied = puller
            .copy(&source, &destination)
            .await
            .map_err(|e| ApiError::internal(format!("copying {source} to {destination}: {e}")))?;
        if copied {
            let _ = state.registry.delete(&destination);
            if !rescan_until(&state, &destination, Seen::ServedAs(&found.base.digest)).await {
                return Err(ApiError::internal(format!(
                    "{source} was copied to {destination}, but no worker serves the copy yet: see the daemon's log"
                )));
            }
            return Ok(StatusCode::OK);
        }
    }
    state
        .registry
        .put(destination, DerivedModel { modified_at: now_rfc3339(), ..found.to_derived() })?;
    Ok(StatusCode::OK)
}
