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
use futures::StreamExt;
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

/// How much of a too-large body, past the limit, is read and dropped before the 413 goes
/// out. Closing a connection with unread bytes makes the kernel reset it, and a client still
/// writing then sees a broken pipe instead of the 413 (hyper has no lingering close; nginx
/// drains the same way). A body declared or found larger is not drained: the connection
/// closes.
const DRAIN_LIMIT: usize = 64 << 20;

impl FromRequest<Arc<AppState>> for RequestBody {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Response> {
        // A compressed body would be read as garbled JSON: say what is wrong instead.
        if let Some(coding) = req
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|c| !c.is_empty() && c != "identity")
        {
            let coding: String = coding.chars().take(40).collect();
            let mut r = ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                format!(
                    "Content-Encoding `{coding}` is not supported: send the body uncompressed."
                ),
            )
            .into_response();
            // The body is left unread: the connection cannot be reused.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(r);
        }
        let deadline = Duration::from_secs(state.config.body_timeout_secs.max(1));
        let limit = state.config.body_limit;
        match tokio::time::timeout(deadline, read_limited(req, limit)).await {
            Ok(Ok(body)) => Ok(Self(body)),
            Ok(Err(BodyError::TooLarge { drained })) => {
                let mut r = ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    "The request body is too large.",
                )
                .into_response();
                if !drained {
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Err(r)
            }
            Ok(Err(BodyError::Unreadable(e))) => Err(ApiError::bad_request(format!(
                "Cannot read the request body: {e}"
            ))
            .into_response()),
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

enum BodyError {
    /// Over the limit; `drained` when the whole body was read (the connection stays usable).
    TooLarge {
        drained: bool,
    },
    Unreadable(axum::Error),
}

/// The body, at most `limit` bytes; past that the rest is read and dropped up to
/// [`DRAIN_LIMIT`] more, so that the client gets to read the 413.
async fn read_limited(req: Request, limit: usize) -> Result<Bytes, BodyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // A body up to `DRAIN_LIMIT` past the limit is read to its end.
    let cap = limit.saturating_add(DRAIN_LIMIT);
    if declared.is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge { drained: false });
    }
    let mut stream = req.into_body().into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Unreadable)?;
        seen = seen.saturating_add(chunk.len());
        if seen > cap {
            return Err(BodyError::TooLarge { drained: false });
        }
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        } else if !buf.is_empty() {
            buf = bytes::BytesMut::new(); // refused: what was kept goes now
        }
    }
    if seen > limit {
        return Err(BodyError::TooLarge { drained: true });
    }
    Ok(buf.freeze())
}
