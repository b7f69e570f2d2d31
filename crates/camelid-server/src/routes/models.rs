//! `GET /v1/models`: every served model, under its name and each alias.

use super::AppResult;
use crate::state::AppState;
use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::json;
use std::sync::Arc;

pub async fn list_models(State(s): State<Arc<AppState>>) -> AppResult {
    let models = s.models().ok_or_else(AppState::loading_error)?;
    let mut data = vec![];
    for m in &models {
        for name in std::iter::once(&m.name).chain(&m.aliases) {
            data.push(
                json!({"id": name, "object": "model", "created": m.created, "owned_by": "camelid",
                             "root": m.name, "max_model_len": m.max_model_len}),
            );
        }
    }
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}
