//! `POST /v1/chat/completions`: the HTTP handler — parses the body, then answers whole
//! (through `chat::complete`) or as server-sent chunks.

use super::{AppResult, RequestBody};
use crate::chat::{self, Submitted};
use crate::format::{
    chat_logprobs, chat_usage_json, finish_str, new_id, now_secs, stop_reason_json,
};
use crate::openai::{parse_with_sampling, ChatRequest, StreamOptions};
use crate::sse::{stream, ChunkFormat};
use crate::state::AppState;
use crate::tools::OutputReader;
use axum::extract::State;
use axum::response::IntoResponse;
use camelid_engine::Usage;
use camelid_model::decode::sampling::TokenLogprob;
use camelid_model::decode::{FinishReason, StopReason};
use camelid_model::text::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::sync::Arc;

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    RequestBody(body): RequestBody,
) -> AppResult {
    let permit = state.permit()?;
    let (mut req, sampling): (ChatRequest, _) = parse_with_sampling(&body)?;
    drop(body);
    state.fill_model_name(&mut req.model)?;
    // `{"type": "function", "function": {"name": …}}` (the strings are auto/required/none).
    let named = req.tool_choice.as_ref().is_some_and(Value::is_object);
    if sampling.stream {
        let Submitted {
            sub,
            model,
            prompt_tokens,
            n,
            tools,
            reasoning,
        } = chat::submit(&state, permit, &req, &sampling).await?;
        let include_usage = StreamOptions::usage(sampling.stream_options.as_ref());
        let fmt = ChatChunks {
            id: new_id("chatcmpl"),
            created: now_secs(),
            model: req.model,
            tok: model.engine.shared_tokenizer(),
            logprobs: req.logprobs,
            named_tool: named,
            readers: (0..n)
                .map(|_| OutputReader::new(reasoning, tools.as_ref().map(|t| t.stream())))
                .collect(),
        };
        return Ok(stream(sub, 0, Box::new(fmt), include_usage, prompt_tokens, n).into_response());
    }
    let r = chat::complete(state, permit, req, sampling).await?;
    let choices: Vec<Value> = r
        .choices
        .iter()
        .map(|c| {
            let mut message = json!({"role": "assistant", "content": c.content});
            if let Some(r) = c.reasoning.as_ref().filter(|r| !r.is_empty()) {
                // Under both names: llama.cpp's and DeepSeek's API (and older vLLM's)
                // `reasoning_content`, current vLLM's `reasoning`.
                message["reasoning_content"] = r.as_str().into();
                message["reasoning"] = r.as_str().into();
            }
            if !c.tool_calls.is_empty() {
                message["tool_calls"] = c.tool_calls.clone().into();
            }
            json!({
                "index": c.index,
                "message": message,
                "logprobs": c.logprobs,
                "finish_reason": finish_reason(c.finish, c.tool_calls.len(), false, named),
                "stop_reason": stop_reason_json(c.stop_reason.as_ref()),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "id": r.id,
        "object": "chat.completion",
        "created": r.created,
        "model": r.model,
        "choices": choices,
        "usage": chat_usage_json(&r.usage, r.reasoning_tokens),
        "system_fingerprint": null,
    }))
    .into_response())
}

/// `"tool_calls"` when a choice that stopped by itself made whole calls the model chose;
/// `"stop"` for the call a named `tool_choice` forced (OpenAI's and vLLM's), and for a call
/// cut off by a stop string (not a call to run); `"length"` for one cut by the limit.
fn finish_reason(reason: FinishReason, calls: usize, cut: bool, named: bool) -> &'static str {
    if calls > 0 && !cut && !named && reason == FinishReason::Stop {
        "tool_calls"
    } else {
        finish_str(reason)
    }
}

struct ChatChunks {
    id: String,
    created: u64,
    model: String,
    tok: Arc<Tokenizer>,
    logprobs: bool,
    /// A named `tool_choice` forced the call: it finishes as `stop`.
    named_tool: bool,
    /// Per choice, its output read for thinking and tool calls.
    readers: Vec<OutputReader>,
}

impl ChatChunks {
    fn reader(&mut self, index: usize) -> Option<&mut OutputReader> {
        self.readers.get_mut(index)
    }

    fn chunk(&self, choices: Value) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "system_fingerprint": null, "choices": choices})
    }

    /// The thinking's chunk, a content chunk (with the token's log-probabilities) and one
    /// chunk per call delta.
    fn pieces(
        &self,
        index: usize,
        thought: &str,
        text: &str,
        lp: Value,
        deltas: Vec<Value>,
    ) -> Vec<Value> {
        let mut out = vec![];
        // A token's log-probabilities go once: on its text's chunk, or its thinking's.
        if !thought.is_empty() {
            let lp = if text.is_empty() {
                lp.clone()
            } else {
                Value::Null
            };
            out.push(self.chunk(json!([{"index": index, "delta": {"reasoning_content": thought, "reasoning": thought}, "logprobs": lp, "finish_reason": null}])));
        }
        if !text.is_empty() || (!lp.is_null() && thought.is_empty()) {
            out.push(self.chunk(json!([{"index": index, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}])));
        }
        for d in deltas {
            out.push(self.chunk(json!([{"index": index, "delta": {"tool_calls": [d]}, "logprobs": null, "finish_reason": null}])));
        }
        out
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
    fn token(&mut self, index: usize, text: &str, logprob: Option<&TokenLogprob>) -> Vec<Value> {
        let lp = match (self.logprobs, logprob) {
            (true, Some(l)) => chat_logprobs(&self.tok, std::slice::from_ref(l)),
            _ => Value::Null,
        };
        let p = self.reader(index).map(|r| r.push(text)).unwrap_or_default();
        self.pieces(index, &p.thought, &p.text, lp, p.deltas)
    }
    fn finish(
        &mut self,
        index: usize,
        reason: FinishReason,
        stop_reason: Option<&StopReason>,
    ) -> Vec<Value> {
        let p = self.reader(index).map(|r| r.finish()).unwrap_or_default();
        let calls = self.reader(index).map_or(0, |r| r.calls());
        let cut = self.reader(index).is_some_and(|r| r.calls_cut());
        let mut out = self.pieces(index, &p.thought, &p.text, Value::Null, p.deltas);
        let finish = finish_reason(reason, calls, cut, self.named_tool);
        out.push(
            self.chunk(json!([{"index": index, "delta": {}, "logprobs": null,
            "finish_reason": finish, "stop_reason": stop_reason_json(stop_reason)}])),
        );
        out
    }
    fn usage(&self, usage: &Usage) -> Value {
        let mut c = self.chunk(json!([]));
        // Every choice's reader splits or none does.
        let thinking = self.readers.iter().map(OutputReader::thinking_tokens).sum();
        c["usage"] = chat_usage_json(usage, thinking);
        c
    }
}
