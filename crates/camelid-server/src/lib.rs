//! camelid-server: the OpenAI-compatible HTTP API. It validates requests, renders prompts,
//! hands them to the engine through `EngineHandle::submit`, and streams what comes back.
//! It never touches tensors.
//!
//! This file assembles the router from `routes::*` (one file per route group), adds the
//! middleware (API keys, request counting, body limit) and serves it through `listen` until
//! shutdown. Modules import one way, each only modules to its right: `routes` → `ollama` →
//! `embeddings` → `responses` → `battle` → `chat` → `tools` → `sse` → `validate` → `structured` → `openai` → `format` →
//! `run` → `state` → `limits` → `arena` (the store) → `metrics` → `hosts` → `error`; `listen`
//! (the accept loop) imports none of them.

pub mod arena;
mod battle;
mod chat;
mod embeddings;
pub mod error;
mod format;
pub mod hosts;
pub mod limits;
mod listen;
mod metrics;
mod ollama;
pub mod openai;
mod responses;
mod routes;
mod run;
mod sse;
pub mod state;
mod structured;
mod tools;
mod validate;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
pub use hosts::AllowedHosts;
pub use limits::RequestLimits;
pub use listen::ConnectionLimits;
use routes::{
    arena as arena_routes, chat as chat_routes, completions, embeddings as embedding_routes,
    health, lora as lora_routes, metrics as metrics_routes, models, ollama as ollama_routes, pages,
    responses as responses_routes, tokenize,
};
pub use state::{AppState, ModelEntry, ServerConfig};
use std::sync::Arc;
use std::time::Duration;

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
    // The scheme's name is case-insensitive (RFC 9110 §11.1): `bearer` is `Bearer`.
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, key)| key.trim());
    // Check every key (no early exit) so timing does not tell which key was close. No key
    // is empty (`camelid serve` refuses them); should one be, a missing key still never
    // matches it.
    let ok = !given.is_empty()
        && s.config.api_keys.iter().fold(false, |acc, k| {
            acc | keys_equal(given.as_bytes(), k.as_bytes())
        });
    if ok {
        next.run(req).await
    } else {
        let mut r = ApiError::unauthorized().into_response();
        r.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        r
    }
}

/// Counts responses by endpoint and status. The endpoint is the route's template, or
/// `unmatched` for the 404 fallback: a client cannot add series or put its text in them.
async fn count(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let r = next.run(req).await;
    s.metrics.request(&endpoint, r.status().as_u16());
    r
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "Unknown endpoint.",
    )
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("Method {method} is not allowed on this endpoint."),
    )
}

/// Every route but `/health`, the pages, the arena's (unless private) and `/metrics` with
/// `metrics_public` needs an API key when keys are set, unknown paths too: without one, a client learns nothing, not even
/// which routes exist.
pub fn router(state: Arc<AppState>) -> Router {
    let mut keyed = Router::new()
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{*model}", get(models::retrieve_model))
        .route("/v1/chat/completions", post(chat_routes::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/responses", post(responses_routes::responses))
        .route("/v1/embeddings", post(embedding_routes::embeddings))
        // llama.cpp's server answers these without `/v1` too: an OpenAI client whose base
        // URL names only the host reaches them.
        .route("/models", get(models::list_models))
        .route("/chat/completions", post(chat_routes::chat_completions))
        .route("/completions", post(completions::completions))
        .route("/embeddings", post(embedding_routes::embeddings))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        // vLLM's adapters at run time (404 unless --allow-runtime-lora).
        .route("/v1/load_lora_adapter", post(lora_routes::load))
        .route("/v1/unload_lora_adapter", post(lora_routes::unload))
        // Ollama's native API, for its clients (Open WebUI, its Python and JS libraries).
        .route("/api/chat", post(ollama_routes::chat))
        .route("/api/generate", post(ollama_routes::generate))
        .route("/api/tags", get(ollama_routes::tags))
        .route("/api/ps", get(ollama_routes::ps))
        .route("/api/show", post(ollama_routes::show))
        .route("/api/embed", post(ollama_routes::embed))
        .route("/api/embeddings", post(ollama_routes::embeddings_legacy))
        .route("/api/version", get(ollama_routes::version));
    for path in [
        "/api/pull",
        "/api/push",
        "/api/create",
        "/api/copy",
        "/api/delete",
        "/api/blobs/{digest}",
    ] {
        keyed = keyed.route(path, axum::routing::any(ollama_routes::not_served));
    }
    keyed = keyed.fallback(not_found);
    let mut open = Router::new()
        .merge(pages::router())
        .route("/health", get(health::health));
    // The arena's visitor routes: open to visitors (held by the rate limits) unless
    // `--arena-private`. They reach the models only through the arena's rules.
    let arena = Router::new()
        .route("/arena/battles", post(arena_routes::battle))
        .route("/arena/battles/{id}/vote", post(arena_routes::vote))
        .route(
            "/arena/battles/{id}/regenerate",
            post(arena_routes::regenerate),
        )
        .route("/arena/leaderboard", get(arena_routes::leaderboard))
        .route("/arena/config", get(arena_routes::config));
    if state.arena.config().private {
        keyed = keyed.merge(arena);
    } else {
        open = open.merge(arena);
    }
    if state.config.metrics_public {
        open = open.route("/metrics", get(metrics_routes::metrics));
    } else {
        keyed = keyed.route("/metrics", get(metrics_routes::metrics));
    }
    let keyed = keyed
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    let mut app = Router::new()
        .merge(open.method_not_allowed_fallback(method_not_allowed))
        .merge(keyed)
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .layer(middleware::from_fn(json_from_browsers))
        .layer(middleware::from_fn(ollama_error_shape));
    if let Some(cors) = cors(&state.config.allowed_origins) {
        // A preflight is answered before the key check (browsers send none).
        app = app.layer(cors);
    }
    // Outermost: a rebound name gets nothing, not even a preflight's answer.
    app.layer(middleware::from_fn_with_state(
        state.config.allowed_hosts.clone(),
        hosts::check_host,
    ))
    .with_state(state)
}

/// A browser's request (it carries `Origin`) that writes must send JSON, else 415. A page of
/// any other site may make its visitors' browsers send a POST of `text/plain`, a form or no
/// type without asking first (no CORS preflight), and every handler reads its body as JSON
/// whatever the type: without this, such a page could generate on a keyless server, vote in
/// the arena from each visitor's address or load adapters (cross-site request forgery, as
/// FastAPI's check on JSON bodies prevents). A JSON request from another site is preflighted,
/// which only `--allowed-origins` answers. Clients that are not browsers send no `Origin`
/// and keep any type (`curl -d` sends a form's).
async fn json_from_browsers(req: Request, next: Next) -> Response {
    use axum::http::{header, Method};
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if writes && req.headers().contains_key(header::ORIGIN) {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .is_some_and(|m| m == "application/json" || m.ends_with("+json"));
        if !json {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                "A request from a web page must send its body as JSON \
                 (`Content-Type: application/json`).",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Ollama's clients read `{"error": "…"}`: the errors of `/api/*` made before its handlers
/// run (API key, body limits, unknown paths and methods) are rewritten to that shape.
async fn ollama_error_shape(req: Request, next: Next) -> Response {
    let ollama = req.uri().path().starts_with("/api/");
    let r = next.run(req).await;
    if !ollama || r.status().is_success() {
        return r;
    }
    let (mut parts, body) = r.into_parts();
    // Error bodies are small JSON (their messages are cut short); a larger one is not
    // read, and the client gets the status's reason as its error.
    let bytes = match axum::body::to_bytes(body, 64 << 10).await {
        Ok(b) => b,
        Err(_) => {
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            let reason = parts.status.canonical_reason().unwrap_or("error");
            let body = serde_json::json!({ "error": reason }).to_string();
            return Response::from_parts(parts, axum::body::Body::from(body));
        }
    };
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from));
    match message {
        Some(m) => {
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            let body = serde_json::json!({ "error": m }).to_string();
            Response::from_parts(parts, axum::body::Body::from(body))
        }
        None => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

/// Browser pages of `origins` may call the API (CORS): their preflights are answered and
/// the responses carry `Access-Control-Allow-Origin`. Without origins there is no CORS
/// layer: a page of another site cannot read an answer, so a public arena's visitors'
/// browsers cannot be made to play it from elsewhere (each one a fresh address to the
/// per-address limits). No credentials: the key travels in `Authorization`.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderValue, Method};
    use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            // Whatever headers the preflight asks for: OpenAI's JS SDK sends its
            // `x-stainless-*` headers on every request, and a fixed list refused them all.
            .allow_headers(AllowHeaders::mirror_request())
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// SIGTERM and Ctrl-C (SIGINT), listened for from creation on: a signal sent between two
/// `recv`s is not lost.
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Must run inside a tokio runtime.
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on the next SIGTERM or Ctrl-C.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! { _ = next(&mut self.term) => {}, _ = next(&mut self.int) => {} }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}

/// Aborts a background task when the server it belongs to returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves until SIGTERM or Ctrl-C (see [`serve_until`]); on the signal, requests not yet
/// started are answered 503.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    let s = state.clone();
    let mut signals = Signals::new();
    let shutdown = async move {
        signals.recv().await;
        s.stop_admitting();
        tracing::info!("shutting down: no new connections, waiting requests refused");
        // A second signal exits at once (as uvicorn's second Ctrl-C does): the operator
        // will not wait out the grace period.
        tokio::spawn(async move {
            signals.recv().await;
            tracing::warn!("a second signal: exiting now, requests in flight cut");
            std::process::exit(130);
        });
    };
    serve_until(listener, state, shutdown).await
}

/// Serves until `shutdown` resolves: stops accepting, lets in-flight responses finish for
/// at most the grace period, then ends what still runs with an error to its client
/// ([`AppState::end_all`]) and returns. Connections are capped and must send their
/// headers in time and read what they are sent (`ServerConfig::max_connections`,
/// `header_timeout_secs`, `write_timeout_secs`); bodies must
/// arrive in time too (`body_timeout_secs`, enforced where handlers read them:
/// `routes::RequestBody`).
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let c = &state.config;
    let limits = ConnectionLimits {
        max_connections: c.max_connections,
        max_connections_per_address: c.max_connections_per_address,
        header_timeout: Duration::from_secs(c.header_timeout_secs.max(1)),
        write_timeout: Duration::from_secs(c.write_timeout_secs.max(1)),
        shutdown_grace: Duration::from_secs(c.shutdown_grace_secs),
    };
    // The arena's leaderboard refits and sweeps, for as long as this server runs.
    let upkeep = tokio::spawn({
        let state = state.clone();
        async move { state.arena.upkeep().await }
    });
    let _stop_upkeep = AbortOnDrop(upkeep);
    let app = router(state.clone());
    listen::serve_connections(listener, app, limits, shutdown, move || state.end_all()).await
}
