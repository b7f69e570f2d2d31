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
        // One series per engine: a LoRA adapter's entry shares its base's engine (and its
        // grammar compiler), whose series count the adapter's requests too.
        models
            .iter()
            .filter(|m| m.engine.lora().is_none())
            .map(|m| (m.name.as_str(), m.engine.metrics.as_ref()))
            .collect()
    };
    let mut text = s.metrics.render(&engines);
    if !withheld {
        grammar_series(&mut text, &models);
    }
    if withheld {
        text.push_str(
            "# Per-model series withheld: the arena is open and /metrics needs no API key \
             (set --api-key without --metrics-public, or --arena-private, to see them).\n",
        );
    }
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

/// Structured output's per-token mask work, per model (computed on the matchers' threads,
/// overlapping forward passes): masks computed and the seconds they took.
fn grammar_series(out: &mut String, models: &[Arc<crate::state::ModelEntry>]) {
    use std::fmt::Write;
    for (name, help, value) in [
        (
            "camelid_grammar_masks_total",
            "Token masks computed for constrained sequences.",
            (|s: &camelid_model::constraint::MaskStats| s.masks() as f64)
                as fn(&camelid_model::constraint::MaskStats) -> f64,
        ),
        (
            "camelid_grammar_mask_seconds_total",
            "Seconds spent computing token masks.",
            |s| s.seconds(),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for m in models.iter().filter(|m| m.engine.lora().is_none()) {
            let label = crate::metrics::escape_label(&m.name);
            let v = value(m.grammar().mask_stats());
            let _ = writeln!(out, "{name}{{model=\"{label}\"}} {v}");
        }
    }
}
