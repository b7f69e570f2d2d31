//! `POST /tokenize` (a prompt or a chat conversation → token ids) and `POST /detokenize`
//! (token ids → text), vLLM's extensions.

use super::{AppResult, RequestBody};
use crate::chat::{prompt_end, render_and_encode, render_budget, to_messages};
use crate::error::ApiError;
use crate::openai::{self, DetokenizeRequest, TokenizeRequest};
use crate::run::blocking;
use crate::state::AppState;
use crate::tools::tokenize_tools;
use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::json;
use std::sync::Arc;

pub async fn tokenize(State(s): State<Arc<AppState>>, RequestBody(body): RequestBody) -> AppResult {
    let permit = s.permit()?;
    let req = TokenizeRequest::parse(&body)?;
    drop(body);
    let (model, ids) = match req {
        TokenizeRequest::Chat(c) => {
            let end = prompt_end(c.add_generation_prompt, c.continue_final_message)?;
            s.config.limits.check_messages(c.messages.len())?;
            let m = s.model(c.model.as_deref())?;
            let budget = render_budget(&m, s.config.body_limit);
            let tools = tokenize_tools(
                c.tools.as_ref(),
                m.template_for(true),
                s.config.limits.max_tools,
                budget,
            )?;
            let msgs = to_messages(&c.messages)?;
            let kwargs = crate::chat::template_kwargs(
                c.chat_template_kwargs.as_ref(),
                c.reasoning_effort.as_deref(),
            )?;
            let ids = render_and_encode(&permit, &m, msgs, tools, end, kwargs, budget).await?;
            (m, ids)
        }
        TokenizeRequest::Text(t) => {
            let m = s.model(t.model.as_deref())?;
            let (prompt, add_special_tokens) = (t.prompt, t.add_special_tokens);
            let tok = m.engine.shared_tokenizer();
            let ids = blocking(&permit, move || {
                tok.encode(&prompt, add_special_tokens)
                    .map_err(|e| ApiError::bad_request(e.to_string()))
            })
            .await?;
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
    RequestBody(body): RequestBody,
) -> AppResult {
    let permit = s.permit()?;
    let req: DetokenizeRequest = openai::parse_body(&body)?;
    drop(body);
    let m = s.model(req.model.as_deref())?;
    // At most a context's worth of ids (vLLM checks the same): what they decode to is then
    // bounded by the model's context, not ~20× the body on a vocabulary of long tokens.
    if req.tokens.len() > m.max_model_len {
        return Err(ApiError::invalid_param(
            "tokens",
            format!(
                "{} token ids: more than the model's context ({})",
                req.tokens.len(),
                m.max_model_len
            ),
        ));
    }
    let vocab = m.engine.vocab_size();
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid_param(
            "tokens",
            format!("token id {bad} is outside the vocabulary ({vocab})"),
        ));
    }
    let tok = m.engine.shared_tokenizer();
    let text = blocking(&permit, move || {
        tok.decode(&req.tokens, false)
            .map_err(|e| ApiError::bad_request(e.to_string()))
    })
    .await?;
    Ok(axum::Json(json!({"prompt": text})).into_response())
}
