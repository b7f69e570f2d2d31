//! `GET /health`: 200 `ok` once models are served, 503 `loading` before, and 503 naming
//! the models whose engine has stopped (it panicked) after.

use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub async fn health(State(s): State<Arc<AppState>>) -> Response {
    let Some(models) = s.models().filter(|m| !m.is_empty()) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response();
    };
    let stopped: Vec<&str> = models
        .iter()
        .filter(|m| !m.engine.is_running())
        .map(|m| m.name.as_str())
        .collect();
    if stopped.is_empty() {
        (StatusCode::OK, "ok").into_response()
    } else {
        let body = format!("engine stopped: {}", stopped.join(", "));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}
