//! `POST /api/embed` and the legacy `POST /api/embeddings`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use phase_protocol::{EmbeddingJob, JobSpec};
use serde_json::{Value, json};
use std::sync::Arc;

use super::requests::{EmbedRequest, EmbeddingsRequest};
use super::validate;
use crate::api::answer::{Stats, receipt_fields, with_receipt_headers};
use crate::api::body::JsonBody;
use crate::api::error::ApiError;
use crate::api::limits;
use crate::jobs::{Finish, Piece};
use crate::registry::ResolvedModel;
use crate::state::{AppState, RouteOptions};
use crate::workers::Capability;

/// The vectors of an embedding job and how it finished.
pub struct Embedded {
    /// One vector per input, in order.
    pub vectors: Vec<Vec<f32>>,
    /// The receipt and its verification.
    pub finish: Finish,
}

/// Runs an embedding job to the end.
pub async fn embed_texts(
    state: &AppState,
    model: &ResolvedModel,
    inputs: Vec<String>,
    truncate: bool,
    dimensions: Option<u32>,
    options: serde_json::Map<String, Value>,
    route: RouteOptions,
) -> Result<Embedded, ApiError> {
    if !model.base.can(Capability::Embedding) {
        return Err(ApiError::bad_request(format!(
            "\"{}\" does not support embeddings",
            model.name
        )));
    }
    if dimensions == Some(0) {
        return Err(ApiError::bad_request("dimensions must be a positive number"));
    }
    let spec = JobSpec::Embedding(EmbeddingJob {
        model: model.base.name.to_string(),
        inputs,
        truncate,
        dimensions,
        options: options.into_iter().collect(),
    });
    let mut run = state.start_job(model, spec, route).await?;
    let mut vectors = Vec::new();
    while let Some(piece) = run.next().await {
        match piece {
            Piece::Embedding(v) => vectors.push(v),
            Piece::Text { .. } | Piece::Thinking { .. } | Piece::ToolCalls(_) => {}
            Piece::Done(finish) => {
                if let Some(reason) = finish.failure() {
                    return Err(ApiError {
                        status: ApiError::answer_failure_status(&finish),
                        message: reason.into(),
                    });
                }
                return Ok(Embedded { vectors, finish: *finish });
            }
            Piece::Broken(reason) => return Err(ApiError::bad_gateway(reason)),
        }
    }
    Err(ApiError::internal("the embedding job ended without a receipt"))
}

/// `input` as a list of strings: a string, or an array of strings.
pub fn input_list(input: Option<&Value>) -> Result<Vec<String>, ApiError> {
    match input {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => {
            limits::at_most("inputs", items.len(), limits::MAX_EMBED_INPUTS)?;
            items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| ApiError::bad_request("invalid input type"))
                })
                .collect()
        }
        Some(_) => Err(ApiError::bad_request("invalid input type")),
    }
}

/// `POST /api/embed`.
pub async fn embed(
    State(state): State<Arc<AppState>>,
    route: RouteOptions,
    JsonBody(req): JsonBody<EmbedRequest>,
) -> Result<Response, ApiError> {
    let stats = Stats::start();
    let model = state.resolve_for_job(&req.model).await?;
    let keep_alive = validate::keep_alive(req.keep_alive.as_ref())?;
    let options = validate::options(&model, req.options.as_ref())?;
    let inputs = input_list(req.input.as_ref())?;
    state.registry.touch(&model.name, keep_alive);
    if inputs.is_empty() {
        return Ok(Json(json!({"model": req.model, "embeddings": [], "total_duration": 0, "load_duration": 0, "prompt_eval_count": 0})).into_response());
    }
    let embedded = embed_texts(
        &state,
        &model,
        inputs,
        req.truncate.unwrap_or(true),
        req.dimensions,
        options,
        route,
    )
    .await?;
    let metrics = stats.ollama_metrics(&embedded.finish);
    // Serialized straight from the vectors: a JSON value per float would cost ~40 bytes each.
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        model: &'a str,
        embeddings: &'a [Vec<f32>],
        total_duration: &'a Value,
        load_duration: &'a Value,
        prompt_eval_count: &'a Value,
        #[serde(flatten)]
        receipt: serde_json::Map<String, Value>,
    }
    let answer = Answer {
        model: &req.model,
        embeddings: &embedded.vectors,
        total_duration: &metrics["total_duration"],
        load_duration: &metrics["load_duration"],
        prompt_eval_count: &metrics["prompt_eval_count"],
        receipt: receipt_fields(&embedded.finish),
    };
    Ok(with_receipt_headers(Json(answer).into_response(), &embedded.finish))
}

/// `POST /api/embeddings`: one prompt, one vector.
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    route: RouteOptions,
    JsonBody(req): JsonBody<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    let model = state.resolve_for_job(&req.model).await?;
    let keep_alive = validate::keep_alive(req.keep_alive.as_ref())?;
    let options = validate::options(&model, req.options.as_ref())?;
    state.registry.touch(&model.name, keep_alive);
    let prompt = req.prompt.unwrap_or_default();
    if prompt.is_empty() {
        return Ok(Json(json!({"embedding": []})).into_response());
    }
    let embedded = embed_texts(&state, &model, vec![prompt], true, None, options, route).await?;
    let mut body = json!({"embedding": embedded.vectors.into_iter().next().unwrap_or_default()});
    if let Value::Object(map) = &mut body {
        map.extend(receipt_fields(&embedded.finish));
    }
    Ok(with_receipt_headers(Json(body).into_response(), &embedded.finish))
}
