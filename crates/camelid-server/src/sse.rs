//! Server-sent events for streaming responses. The stream owns the submission, so a client
//! that disconnects drops it and the engine cancels the generation at its next step.

use crate::error::ApiError;
use crate::format::CachedPrompt;
use crate::run::{grammar_failed, shutting_down, Submission, Timing};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use camelid_engine::{Event, Usage};
use camelid_model::decode::sampling::TokenLogprob;
use camelid_model::decode::FinishReason;
use futures::stream::{Stream, StreamExt};
use serde_json::Value;
use std::collections::VecDeque;
use std::convert::Infallible;

/// Turns engine events into endpoint-specific chunk JSON.
pub trait ChunkFormat: Send + 'static {
    /// Chunks sent before any token (the chat role delta).
    fn opening(&self, choices: &[usize]) -> Vec<Value>;
    /// The chunks a token's text makes (none while text is held back, several when held
    /// text resolves into tool calls).
    fn token(&mut self, index: usize, text: &str, logprob: Option<&TokenLogprob>) -> Vec<Value>;
    fn prompt_logprobs(&mut self, _index: usize, _lps: &[TokenLogprob]) -> Option<Value> {
        None
    }
    /// The chunks that end a choice: what was held back, then its finish reason.
    fn finish(&mut self, index: usize, reason: FinishReason) -> Vec<Value>;
    fn usage(&self, usage: &Usage) -> Value;
}

struct StreamState {
    sub: Submission,
    first_index: usize,
    format: Box<dyn ChunkFormat>,
    queue: VecDeque<SseEvent>,
    include_usage: bool,
    prompt_tokens: usize,
    completion_tokens: usize,
    cached: CachedPrompt,
    timing: Timing,
    done: bool,
}

impl StreamState {
    /// The error as the last event before `[DONE]`: the stream ends without a finish
    /// reason, and says why.
    fn end_with(&mut self, err: ApiError) {
        self.queue.push_back(data(&err.body()));
        self.queue.push_back(SseEvent::default().data("[DONE]"));
        self.done = true;
    }
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// A chunk as sent: with `include_usage`, every chunk but the last carries `"usage": null`
/// (OpenAI's reference; typed clients read the key from each chunk).
fn chunk_event(mut v: Value, include_usage: bool) -> SseEvent {
    if include_usage {
        if let Some(o) = v.as_object_mut() {
            o.entry("usage").or_insert(Value::Null);
        }
    }
    data(&v)
}

pub fn stream(
    sub: Submission,
    first_index: usize,
    format: Box<dyn ChunkFormat>,
    include_usage: bool,
    prompt_tokens: usize,
    choices_per_prompt: usize,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let choices: Vec<usize> = (first_index..first_index + sub.choices).collect();
    let queue = format
        .opening(&choices)
        .into_iter()
        .map(|c| chunk_event(c, include_usage))
        .collect();
    let n = sub.choices;
    let st = StreamState {
        sub,
        first_index,
        format,
        queue,
        include_usage,
        prompt_tokens,
        completion_tokens: 0,
        cached: CachedPrompt::new(choices_per_prompt),
        timing: Timing::new(n),
        done: false,
    };
    let s = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.queue.pop_front() {
                return Some((Ok(e), st));
            }
            if st.done {
                return None;
            }
            match st.sub.streams.next().await {
                None => {
                    if st.include_usage {
                        let u = Usage {
                            prompt_tokens: st.prompt_tokens,
                            completion_tokens: st.completion_tokens,
                            cached_tokens: st.cached.total(),
                        };
                        st.queue.push_back(data(&st.format.usage(&u)));
                    }
                    st.sub
                        .state
                        .metrics
                        .request_latency(st.sub.started.elapsed().as_secs_f64());
                    st.queue.push_back(SseEvent::default().data("[DONE]"));
                    st.done = true;
                }
                Some((idx, ev)) => match ev {
                    Event::Embedding(_) => {} // only embedding requests, never streamed
                    Event::PromptLogprobs(lps) => {
                        if let Some(c) = st.format.prompt_logprobs(idx, &lps) {
                            st.queue.push_back(chunk_event(c, st.include_usage));
                        }
                    }
                    Event::Token { text, logprob, .. } => {
                        st.timing
                            .token(&st.sub.state, st.sub.started, idx - st.first_index);
                        for c in st.format.token(idx, &text, logprob.as_ref()) {
                            st.queue.push_back(chunk_event(c, st.include_usage));
                        }
                    }
                    Event::Finished { reason, usage } => {
                        st.completion_tokens += usage.completion_tokens;
                        st.cached.record(idx, usage.cached_tokens);
                        for c in st.format.finish(idx, reason) {
                            st.queue.push_back(chunk_event(c, st.include_usage));
                        }
                    }
                    Event::Error(e) => st.end_with(ApiError::internal(e)),
                    Event::GrammarFailed(e) => st.end_with(grammar_failed(&e)),
                    Event::Refused(_) => st.end_with(shutting_down()),
                },
            }
        }
    });
    Sse::new(s.boxed()).keep_alive(KeepAlive::default())
}
