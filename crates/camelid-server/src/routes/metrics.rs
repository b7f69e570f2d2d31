//! `GET /metrics`: the server's and the engines' metrics in Prometheus text format.

use crate::state::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let models = s.models().unwrap_or_default();
    // Per-model series move with battle traffic (blocks held, tokens generated, cache hits):
    // where an anonymous visitor can both start battles and read them, they would tell the
    // battle's sides apart. Then only the server-wide series are shown.
    let anonymous_reader = s.config.api_keys.is_empty() || s.config.metrics_public;
    let public_arena = models.len() >= 2 && !s.arena.config().private;
    let withheld = anonymous_reader && public_arena;
    let engines: Vec<(&str, &camelid_engine::EngineMetrics)> = if withheld {
        vec![]
    } else {
        models
            .iter()
            .map(|m| (m.name.as_str(), m.engine.metrics.as_ref()))
            .collect()
    };
    let mut text = s.metrics.render(&engines);
    if withheld {
        text.push_str(
            "# Per-model series withheld: the arena is open and /metrics needs no API key \
             (set --api-key without --metrics-public, or --arena-private, to see them).\n",
        );
    }
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}
