//! camelid-server: the OpenAI-compatible HTTP API. It validates requests, renders prompts,
//! hands them to the engine through `EngineHandle::submit`, and streams what comes back.
//! It never touches tensors.
//!
//! This file assembles the router from `routes::*` (one file per route group), adds the
//! middleware (API keys, request counting, body limit) and serves until shutdown. Modules
//! import one way, each only modules to its right: `routes` → `chat` → `sse` → `validate`
//! → `openai` → `format` → `run` → `state` → `arena` (the store) → `metrics` → `error`.

pub mod arena;
mod chat;
pub mod error;
mod format;
mod metrics;
pub mod openai;
mod routes;
mod run;
mod sse;
pub mod state;
mod validate;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use routes::{
    arena as arena_routes, chat as chat_routes, completions, health, metrics as metrics_routes,
    models, tokenize,
};
pub use state::{AppState, ModelEntry, ServerConfig};
use std::sync::Arc;

/// Constant-time comparison, so response timing does not reveal how much of a key matched.
fn keys_equal(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

async fn auth(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if s.config.api_keys.is_empty() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Check every key (no early exit) so timing does not tell which key was close.
    let ok = s.config.api_keys.iter().fold(false, |acc, k| {
        acc | keys_equal(given.as_bytes(), k.as_bytes())
    });
    if ok {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// Counts responses by endpoint and status.
async fn count(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let r = next.run(req).await;
    s.metrics.request(&path, r.status().as_u16());
    r
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "Unknown endpoint.",
    )
}

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(models::list_models))
        .route("/v1/chat/completions", post(chat_routes::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/arena/battles", post(arena_routes::battle))
        .route("/arena/battles/{id}/vote", post(arena_routes::vote))
        .route("/arena/leaderboard", get(arena_routes::leaderboard))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health::health))
        .route("/metrics", get(metrics_routes::metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .with_state(state)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Aborts a background task when the server it belongs to returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves until SIGTERM: stops accepting, lets in-flight responses finish for at most the
/// grace period, then returns.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    let grace = state.config.shutdown_grace_secs;
    // The arena's leaderboard refits and sweeps, for as long as this server runs.
    let upkeep = tokio::spawn({
        let state = state.clone();
        async move { state.arena.upkeep().await }
    });
    let _stop_upkeep = AbortOnDrop(upkeep);
    // The peer's address reaches handlers (the arena's per-address limits).
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!(
            "shutting down: no new connections; finishing in-flight requests (at most {grace}s)"
        );
        let _ = tx.send(());
    });
    tokio::select! {
        r = server => r,
        _ = async {
            let _ = rx.await;
            tokio::time::sleep(std::time::Duration::from_secs(grace)).await;
        } => {
            tracing::warn!("grace period over; exiting with requests still in flight");
            Ok(())
        }
    }
}
