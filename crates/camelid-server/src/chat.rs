//! `POST /v1/chat/completions`.

use crate::error::ApiError;
use crate::format::{chat_logprobs, finish_str, new_id, now_secs, sum_usage, usage_json};
use crate::openai::{parse_with_sampling, ChatRequest, Content};
use crate::run::{collect, submit, ChoiceSpec};
use crate::sse::{stream, ChunkFormat};
use crate::state::AppState;
use crate::validate::{generation_params, max_tokens, MAX_TOP_LOGPROBS};
use axum::response::{IntoResponse, Response};
use camelid_engine::Usage;
use camelid_model::decode::sampling::TokenLogprob;
use camelid_model::decode::FinishReason;
use camelid_model::text::tokenizer::Tokenizer;
use camelid_model::Message;
use serde_json::{json, Value};
use std::sync::Arc;

/// OpenAI messages → template messages. Content parts must be text.
pub fn to_messages(msgs: &[crate::openai::ChatMessage]) -> Result<Vec<Message>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid_param(
                        &format!("messages[{i}].role"),
                        format!("Unknown role {other:?}; expected system, user or assistant"),
                    ))
                }
            };
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(s)) => s.clone(),
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => s += t,
                            _ => {
                                return Err(ApiError::invalid_param(
                                    &format!("messages[{i}].content[{j}]"),
                                    format!(
                                        "Content part type {:?} is not supported; only text",
                                        p.kind
                                    ),
                                ))
                            }
                        }
                    }
                    s
                }
            };
            Ok(Message::new(role, &content))
        })
        .collect()
}

pub async fn chat_completions(state: Arc<AppState>, body: &[u8]) -> Result<Response, ApiError> {
    let (req, sampling): (ChatRequest, _) = parse_with_sampling(body)?;
    let model = state.model(Some(&req.model))?;
    let msgs = to_messages(&req.messages)?;
    let text = model
        .template
        .render(&msgs, true)
        .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
    let tok = model.engine.tokenizer();
    let prompt = tok
        .encode(&text, true)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(t) = req.top_logprobs {
        if t > MAX_TOP_LOGPROBS {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                format!("`top_logprobs` must be at most {MAX_TOP_LOGPROBS}, got {t}"),
            ));
        }
        if !req.logprobs {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "`top_logprobs` requires `logprobs` to be true",
            ));
        }
    }
    let f = &sampling;
    let mut params = generation_params(
        f,
        model.engine.vocab_size(),
        &model.stop_token_ids,
        &model.stop_strings,
    )?;
    params.max_tokens = max_tokens(
        req.max_completion_tokens.or(f.max_tokens),
        None,
        prompt.len(),
        model.max_model_len,
        "messages",
        false,
    )?;
    if req.logprobs {
        params.logprobs = Some(req.top_logprobs.unwrap_or(0) as usize);
    }
    let n = f.n.unwrap_or(1) as usize;
    let specs = (0..n)
        .map(|i| {
            let mut p = params.clone();
            p.sampling.seed = p.sampling.seed.map(|s| s.wrapping_add(i as u64));
            ChoiceSpec {
                index: i,
                prompt: prompt.clone(),
                params: p,
                prompt_logprobs: None,
            }
        })
        .collect();
    let sub = submit(&state, &model, specs)?;
    let id = new_id("chatcmpl");
    let created = now_secs();
    if f.stream {
        let include_usage = f.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let fmt = ChatChunks {
            id,
            created,
            model: req.model.clone(),
            tok: model.engine.shared_tokenizer(),
            logprobs: req.logprobs,
        };
        return Ok(stream(sub, 0, Box::new(fmt), include_usage, prompt.len(), n).into_response());
    }
    let results = collect(sub, 0).await?;
    let choices: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "index": r.index,
                "message": {"role": "assistant", "content": r.text},
                "logprobs": if req.logprobs { chat_logprobs(tok, &r.logprobs) } else { Value::Null },
                "finish_reason": finish_str(r.finish),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": req.model,
        "choices": choices,
        "usage": usage_json(&sum_usage(&results, prompt.len(), n)),
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
