//! camelid-server: the OpenAI-compatible HTTP API. It validates requests, renders prompts,
//! hands them to the engine through `EngineHandle::submit`, and streams what comes back.
//! It never touches tensors.

pub mod arena;
mod chat;
mod completions;
pub mod error;
mod format;
mod metrics;
pub mod openai;
mod run;
mod sse;
pub mod state;
mod validate;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use serde_json::json;
pub use state::{AppState, ModelEntry, ServerConfig};
use std::sync::Arc;

type AppResult = Result<Response, ApiError>;

/// The body as bytes; too large is 413, anything else unreadable is 400.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "The request body is too large.",
            )
        } else {
            ApiError::bad_request(format!("Cannot read the request body: {e}"))
        }
    })
}

async fn chat_route(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> AppResult {
    let body = body_bytes(body)?;
    chat::chat_completions(s, &body).await
}

async fn completions_route(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> AppResult {
    let body = body_bytes(body)?;
    completions::completions(s, &body).await
}

async fn arena_battle_route(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> AppResult {
    let body = body_bytes(body)?;
    arena::battle(s, &body).await
}

async fn arena_vote_route(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> AppResult {
    let body = body_bytes(body)?;
    arena::vote(&s, &id, &body)
}

async fn arena_leaderboard_route(State(s): State<Arc<AppState>>) -> Response {
    arena::leaderboard(s).await
}

async fn list_models(State(s): State<Arc<AppState>>) -> AppResult {
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

async fn health(State(s): State<Arc<AppState>>) -> Response {
    match s.models() {
        Some(m) if !m.is_empty() => (StatusCode::OK, "ok").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response(),
    }
}

async fn metrics_route(State(s): State<Arc<AppState>>) -> Response {
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

async fn tokenize(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> AppResult {
    let body = body_bytes(body)?;
    let req: openai::TokenizeRequest = openai::parse_body(&body)?;
    let (model, ids) = match req {
        openai::TokenizeRequest::Chat {
            model,
            messages,
            add_generation_prompt,
        } => {
            let m = s.model(model.as_deref())?;
            let msgs = chat::to_messages(&messages)?;
            let text = m
                .template
                .render(&msgs, add_generation_prompt)
                .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
            let ids = m
                .engine
                .tokenizer()
                .encode(&text, true)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            (m, ids)
        }
        openai::TokenizeRequest::Text {
            model,
            prompt,
            add_special_tokens,
        } => {
            let m = s.model(model.as_deref())?;
            let ids = m
                .engine
                .tokenizer()
                .encode(&prompt, add_special_tokens)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            (m, ids)
        }
    };
    Ok(
        axum::Json(
            json!({"count": ids.len(), "max_model_len": model.max_model_len, "tokens": ids}),
        )
        .into_response(),
    )
}

async fn detokenize(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> AppResult {
    let body = body_bytes(body)?;
    let req: openai::DetokenizeRequest = openai::parse_body(&body)?;
    let m = s.model(req.model.as_deref())?;
    let vocab = m.engine.vocab_size();
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid_param(
            "tokens",
            format!("token id {bad} is outside the vocabulary ({vocab})"),
        ));
    }
    let text = m
        .engine
        .tokenizer()
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(axum::Json(json!({"prompt": text})).into_response())
}

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
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_route))
        .route("/v1/completions", post(completions_route))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/arena/battles", post(arena_battle_route))
        .route("/arena/battles/{id}/vote", post(arena_vote_route))
        .route("/arena/leaderboard", get(arena_leaderboard_route))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics_route))
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

/// Serves until SIGTERM: stops accepting, lets in-flight responses finish for at most the
/// grace period, then returns.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    let grace = state.config.shutdown_grace_secs;
    let app = router(state);
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
