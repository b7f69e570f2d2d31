//! `GET /health`: 200 `ok` once models are served, 503 `loading` before.

use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub async fn health(State(s): State<Arc<AppState>>) -> Response {
    match s.models() {
        Some(m) if !m.is_empty() => (StatusCode::OK, "ok").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response(),
    }
}
