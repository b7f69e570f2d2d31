//! `POST /tokenize` (a prompt or a chat conversation → token ids) and `POST /detokenize`
//! (token ids → text), vLLM's extensions.

use super::{body_bytes, AppResult};
use crate::chat::{prompt_ids, to_messages};
use crate::error::ApiError;
use crate::openai::{self, DetokenizeRequest, TokenizeRequest};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::json;
use std::sync::Arc;

pub async fn tokenize(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> AppResult {
    let body = body_bytes(body)?;
    let req: TokenizeRequest = openai::parse_body(&body)?;
    let (model, ids) = match req {
        TokenizeRequest::Chat {
            model,
            messages,
            add_generation_prompt,
        } => {
            let m = s.model(model.as_deref())?;
            let ids = prompt_ids(&m, &to_messages(&messages)?, add_generation_prompt)?;
            (m, ids)
        }
        TokenizeRequest::Text {
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

pub async fn detokenize(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> AppResult {
    let body = body_bytes(body)?;
    let req: DetokenizeRequest = openai::parse_body(&body)?;
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
