//! `GET /v1/models`: every served model, under its name and each alias; `GET
//! /v1/models/{model}`: one of them, slashes in its name and all (OpenAI's retrieve; 404
//! `model_not_found` otherwise).

use super::AppResult;
use crate::state::{AppState, ModelEntry};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use serde_json::{json, Value};
use std::sync::Arc;

/// The model object OpenAI's clients read, for `m` under `name` (its own or an alias); a
/// LoRA adapter's, as vLLM lists it, has its path as `root` and its base model as `parent`.
fn model_object(models: &[Arc<ModelEntry>], m: &ModelEntry, name: &str) -> Value {
    let (root, parent) = match m.engine.lora() {
        Some(a) => (
            a.path.display().to_string(),
            crate::state::base_of(models, m).map(|b| b.name.clone()),
        ),
        None => (m.name.clone(), None),
    };
    json!({"id": name, "object": "model", "created": m.created, "owned_by": "camelid",
           "root": root, "parent": parent, "max_model_len": m.max_model_len})
}

pub async fn list_models(State(s): State<Arc<AppState>>) -> AppResult {
    let models = s.models().ok_or_else(AppState::loading_error)?;
    let mut data = vec![];
    for m in &models {
        for name in std::iter::once(&m.name).chain(&m.aliases) {
            data.push(model_object(&models, m, name));
        }
    }
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

pub async fn retrieve_model(
    State(s): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> AppResult {
    // An id that is not UTF-8 names no model (axum's own rejection is plain text).
    let Ok(Path(id)) = id else {
        return Err(crate::error::ApiError::model_not_found("(not UTF-8)"));
    };
    // An empty id is no model here, even with one model served (where `model` may be left out
    // of a generation request).
    if id.is_empty() {
        return Err(crate::error::ApiError::model_not_found(&id));
    }
    let m = s.model(Some(&id))?;
    let models = s.models().unwrap_or_default();
    Ok(axum::Json(model_object(&models, &m, &id)).into_response())
}
