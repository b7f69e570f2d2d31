//! `POST /v1/chat/completions`: the HTTP handler — parses the body, then answers whole
//! (through `chat::complete`) or as server-sent chunks.

use super::{AppResult, RequestBody};
use crate::chat::{self, Submitted};
use crate::format::{chat_logprobs, finish_str, new_id, now_secs, usage_json};
use crate::openai::{parse_with_sampling, ChatRequest};
use crate::sse::{stream, ChunkFormat};
use crate::state::AppState;
use axum::extract::State;
use axum::response::IntoResponse;
use camelid_engine::Usage;
use camelid_model::decode::sampling::TokenLogprob;
use camelid_model::decode::FinishReason;
use camelid_model::text::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::sync::Arc;

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    RequestBody(body): RequestBody,
) -> AppResult {
    let permit = state.permit()?;
    let (req, sampling): (ChatRequest, _) = parse_with_sampling(&body)?;
    drop(body);
    if sampling.stream {
        let Submitted {
            sub,
            model,
            prompt_tokens,
            n,
        } = chat::submit(&state, permit, &req, &sampling).await?;
        let include_usage = sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let fmt = ChatChunks {
            id: new_id("chatcmpl"),
            created: now_secs(),
            model: req.model,
            tok: model.engine.shared_tokenizer(),
            logprobs: req.logprobs,
        };
        return Ok(stream(sub, 0, Box::new(fmt), include_usage, prompt_tokens, n).into_response());
    }
    let r = chat::complete(state, permit, req, sampling).await?;
    let choices: Vec<Value> = r
        .choices
        .iter()
        .map(|c| {
            json!({
                "index": c.index,
                "message": {"role": "assistant", "content": c.content},
                "logprobs": c.logprobs,
                "finish_reason": finish_str(c.finish),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "id": r.id,
        "object": "chat.completion",
        "created": r.created,
        "model": r.model,
        "choices": choices,
        "usage": usage_json(&r.usage),
        "system_fingerprint": null,
    }))
    .into_response())
}

struct ChatChunks {
    id: String,
    created: u64,
    model: String,
    tok: Arc<Tokenizer>,
    logprobs: bool,
}

impl ChatChunks {
    fn chunk(&self, choices: Value) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "system_fingerprint": null, "choices": choices})
    }
}

impl ChunkFormat for ChatChunks {
    fn opening(&self, choices: &[usize]) -> Vec<Value> {
        choices
            .iter()
            .map(|&i| {
                self.chunk(json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]))
            })
            .collect()
    }
    fn token(&self, index: usize, text: &str, logprob: Option<&TokenLogprob>) -> Option<Value> {
        if text.is_empty() && !self.logprobs {
            return None;
        }
        let lp = match (self.logprobs, logprob) {
            (true, Some(l)) => chat_logprobs(&self.tok, std::slice::from_ref(l)),
            _ => Value::Null,
        };
        Some(self.chunk(json!([{"index": index, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}])))
    }
    fn finish(&self, index: usize, reason: FinishReason) -> Value {
        self.chunk(json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": finish_str(reason)}]))
    }
    fn usage(&self, usage: &Usage) -> Value {
        let mut c = self.chunk(json!([]));
        c["usage"] = usage_json(usage);
        c
    }
}
