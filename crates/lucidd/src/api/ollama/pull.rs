//! `POST /api/pull`: a model that is here already (a worker's, a peer's, a made one) reports
//! itself complete, offline; any other name is pulled from its registry into this node's
//! store ([`crate::store::pull`]), with Ollama's progress lines. The pull runs while the
//! request does: a client that goes away cancels it, and what was downloaded stays for the
//! next pull to resume. `success` comes only once a worker serves the model.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::mpsc;

use super::models::progress;
use super::publish::RESOLVE_DEADLINE;
use super::requests::NamedRequest;
use super::validate;
use crate::api::body::JsonBody;
use crate::api::error::ApiError;
use crate::names::ModelName;
use crate::state::AppState;
use crate::store::peers::PeerPull;
use crate::store::publish::resolve;
use crate::store::pull::{Progress, PullError, Puller};

/// One line of the answer: progress, or the error that ended the pull.
type Line = Result<Progress, (StatusCode, String)>;

/// `POST /api/pull` (see the module docs).
pub async fn pull(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<NamedRequest>,
) -> Result<Response, ApiError> {
    let asked = req.model_name().to_string();
    let name = validate::model_name(&asked)?;
    let stream = req.stream.unwrap_or(true);
    if let Some(model) = state.registry.resolve(&name) {
        let digest = model.base.digest.clone();
        let lines = vec![
            json!({"status": "pulling manifest"}),
            json!({"status": format!("pulling {}", digest.get(..12).unwrap_or(&digest)), "digest": format!("sha256:{digest}"), "total": model.base.size, "completed": model.base.size}),
            json!({"status": "verifying sha256 digest"}),
            json!({"status": "writing manifest"}),
            json!({"status": "success"}),
        ];
        return Ok(progress(lines, stream));
    }
    if state.puller.is_none() {
        let lines = vec![
            json!({"status": "pulling manifest"}),
            json!({"error": format!("pull model manifest: model \"{asked}\" is not served here or by a peer, and this node has no model store to pull it into (start lucidd with --worker llama-cpp)")}),
        ];
        return Ok(progress(lines, stream));
    }
    let (tx, mut rx) = mpsc::channel::<Line>(256);
    let cancel = state.shutdown.child_token();
    let guard = cancel.clone().drop_guard();
    let insecure = req.insecure.unwrap_or(false);
    tokio::spawn(async move {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = run(&state, &name, insecure, &tx) => {}
        }
    });
    if stream {
        let lines = futures::stream::poll_fn(move |cx| {
            // The guard lives as long as the response body: a client that hangs up cancels.
            let _ = &guard;
            rx.poll_recv(cx).map(|line| line.map(|l| Ok::<_, std::convert::Infallible>(render(&l))))
        });
        let headers = [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")];
        return Ok((headers, Body::from_stream(lines)).into_response());
    }
    let _guard = guard;
    let mut last = None;
    while let Some(line) = rx.recv().await {
        last = Some(line);
    }
    Ok(match last {
        Some(Ok(done)) => Json(done).into_response(),
        Some(Err((status, message))) => (status, Json(json!({"error": message}))).into_response(),
        None => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "the pull stopped"})))
            .into_response(),
    })
}

/// The pull, then the wait until a worker serves the model.
async fn run(state: &AppState, name: &ModelName, insecure: bool, tx: &mpsc::Sender<Line>) {
    let Some(puller) = &state.puller else { return };
    let (progress_tx, mut progress_rx) = mpsc::channel::<Progress>(64);
    let forward = async {
        while let Some(p) = progress_rx.recv().await {
            let _ = tx.send(Ok(p)).await;
        }
    };
    let pulled = async {
        let result = pull_from_anywhere(state, puller, name, insecure, &progress_tx).await;
        drop(progress_tx);
        result
    };
    let (result, ()) = tokio::join!(pulled, forward);
    if let Err(e) = result {
        tracing::warn!(%name, error = %e, "pull failed");
        let status = match e {
            PullError::UnknownModel { .. } | PullError::Nowhere { .. } => StatusCode::NOT_FOUND,
            PullError::BadManifest { .. } => StatusCode::BAD_GATEWAY,
            PullError::NoSpace { .. } => StatusCode::INSUFFICIENT_STORAGE,
            PullError::NoProvider { .. } => StatusCode::SERVICE_UNAVAILABLE,
            PullError::Disk { ref source, .. }
                if source.kind() == std::io::ErrorKind::StorageFull =>
            {
                StatusCode::INSUFFICIENT_STORAGE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let _ = tx.send(Err((status, e.to_string()))).await;
        return;
    }
    if !super::create::rescan_until(state, name, super::create::Seen::Served).await {
        let message = format!(
            "{name} was pulled into {}, but no worker serves it: see the daemon's log for why",
            puller.root().display()
        );
        let _ = tx.send(Err((StatusCode::INTERNAL_SERVER_ERROR, message))).await;
        return;
    }
    tracing::info!(%name, "pulled");
    let _ = tx.send(Ok(Progress::status("success"))).await;
}

/// From peers, when a publisher this node trusts has a record for the name; else (or when no
/// peer can give it) from the name's registry.
async fn pull_from_anywhere(
    state: &AppState,
    puller: &Puller,
    name: &ModelName,
    insecure: bool,
    progress: &mpsc::Sender<Progress>,
) -> Result<(), PullError> {
    let Some(network) = &state.network else { return puller.pull(name, insecure, progress).await };
    let _ = progress.send(Progress::status("pulling manifest")).await;
    let shown = name.to_string();
    let trusted = state.trusted_publishers();
    let Some(record) = resolve(network, &shown, &trusted, RESOLVE_DEADLINE).await else {
        // Say both places were asked: a record by an untrusted publisher is why, often.
        return puller.pull(name, insecure, progress).await.map_err(|e| match e {
            PullError::UnknownModel { name, registry } => PullError::Nowhere { name, registry },
            other => other,
        });
    };
    tracing::info!(%name, cid = %record.file.cid, publisher = %record.publisher, "pulling from peers by a trusted name record");
    let peers = PeerPull { network, reputation: &state.reputation, lists: &state.piece_lists };
    match puller.pull_from_peers(name, &record, peers, progress).await {
        Ok(_) => Ok(()),
        Err(from_peers @ PullError::NoProvider { .. }) => {
            tracing::info!(%name, error = %from_peers, "no peer gave it; trying the registry");
            // The peers' failure says more than a registry that does not know the name.
            puller.pull(name, insecure, progress).await.map_err(|e| match e {
                PullError::UnknownModel { .. } | PullError::Registry(_) => from_peers,
                other => other,
            })
        }
        Err(e) => Err(e),
    }
}

fn render(line: &Line) -> String {
    let value: Value = match line {
        Ok(p) => serde_json::to_value(p).unwrap_or_default(),
        Err((_, message)) => json!({"error": message}),
    };
    format!("{value}\n")
}
