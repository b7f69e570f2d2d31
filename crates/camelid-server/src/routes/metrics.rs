//! `GET /metrics`: the server's and the engines' metrics in Prometheus text format.

use crate::state::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let models = s.models().unwrap_or_default();
    let engines: Vec<(&str, &camelid_engine::EngineMetrics)> = models
        .iter()
        .map(|m| (m.name.as_str(), m.engine.metrics.as_ref()))
        .collect();
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(&engines),
    )
        .into_response()
}
