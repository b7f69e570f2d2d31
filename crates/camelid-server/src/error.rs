//! OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
    /// More the client is owed, beside `error` (`{"vote": …}` for a battle voted already).
    pub extra: Option<Box<(&'static str, serde_json::Value)>>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
            extra: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::bad_request(message)
        }
    }
    pub fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{}` does not exist.", excerpt(model, 100)),
            )
        }
    }
    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "Incorrect or missing API key.",
            )
        }
    }
    pub fn overloaded(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(status, "server_overloaded", message)
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }
    pub fn body(&self) -> serde_json::Value {
        let message = excerpt(&self.message, MAX_MESSAGE_CHARS);
        let mut body = json!({"error": {"message": message, "type": self.kind, "param": self.param, "code": self.code}});
        if let Some(extra) = &self.extra {
            let (key, value) = extra.as_ref();
            body[*key] = value.clone();
        }
        body
    }
}

/// Characters of an error's message sent back: messages repeat what the client sent (a
/// model's name, a value serde could not read), and a 4 MiB body could come back as a
/// 4 MiB error.
const MAX_MESSAGE_CHARS: usize = 2000;

/// The first `max` characters of `s`, with `…` where more were left out.
pub fn excerpt(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]).into(),
        None => s.into(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        r
    }
}
