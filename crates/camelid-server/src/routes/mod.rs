//! The HTTP handlers, one file per route group, and what they share: reading the body
//! (within the body size limit and the body read deadline). `lib.rs` assembles them into
//! the router.

pub mod arena;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod health;
pub mod lora;
pub mod metrics;
pub mod models;
pub mod ollama;
pub mod pages;
pub mod responses;
pub mod tokenize;

use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;

/// What a fallible handler returns.
pub type AppResult = Result<Response, ApiError>;

/// A request's whole body, read within `ServerConfig::body_timeout_secs` of the handler
/// being called (that is, of the end of the headers): a client that trickles its body gets
/// 408 and the connection is closed, instead of holding it open. The deadline covers the
/// whole body, not each chunk (tower-http's `TimeoutBody` restarts its timer per frame, so a
/// byte every few seconds would pass it). Too large is 413, anything else unreadable 400.
pub struct RequestBody(pub Bytes);

impl FromRequest<Arc<AppState>> for RequestBody {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Response> {
        let deadline = Duration::from_secs(state.config.body_timeout_secs.max(1));
        match tokio::time::timeout(deadline, Bytes::from_request(req, state)).await {
            Ok(Ok(body)) => Ok(Self(body)),
            Ok(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "The request body is too large.",
            )
            .into_response()),
            Ok(Err(e)) => Err(
                ApiError::bad_request(format!("Cannot read the request body: {e}")).into_response(),
            ),
            Err(_) => {
                let mut r = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request_error",
                    format!(
                        "The request body did not arrive within {}s.",
                        deadline.as_secs()
                    ),
                )
                .into_response();
                // The rest of the body is still on the wire: the connection cannot be reused.
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                Err(r)
            }
        }
    }
}
