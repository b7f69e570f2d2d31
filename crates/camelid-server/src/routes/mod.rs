//! The HTTP handlers, one file per route group, and what they share: reading the body.
//! `lib.rs` assembles them into the router.

pub mod arena;
pub mod chat;
pub mod completions;
pub mod health;
pub mod metrics;
pub mod models;
pub mod pages;
pub mod tokenize;

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::Response;

/// What a fallible handler returns.
pub type AppResult = Result<Response, ApiError>;

/// The body as bytes; too large is 413, anything else unreadable is 400.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
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
