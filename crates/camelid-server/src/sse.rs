//! Server-sent events for streaming responses. The stream owns the submission, so a client
//! that disconnects drops it and the engine cancels the generation at its next step.

use crate::error::ApiError;
use crate::format::CachedPrompt;
use crate::openai::StreamUsage;
use crate::run::{grammar_failed, shutting_down, Submission, Timing};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use camelid_engine::{Event, Usage};
use camelid_model::decode::sampling::TokenLogprob;
use camelid_model::decode::{FinishReason, StopReason};
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
    /// The chunks that end a choice: what was held back, then its finish reason (and vLLM's
    /// `stop_reason`).
    fn finish(
        &mut self,
        index: usize,
        reason: FinishReason,
        stop_reason: Option<&StopReason>,
    ) -> Vec<Value>;
    fn usage(&self, usage: &Usage) -> Value;
}

struct StreamState {
    sub: Submission,
    first_index: usize,
    format: Box<dyn ChunkFormat>,
    queue: VecDeque<SseEvent>,
    usage: StreamUsage,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// Per choice not yet finished, its tokens so far (for the usage so far).
    generating: Vec<usize>,
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

    /// Queues a chunk as sent: with `include_usage`, every chunk but the last carries
    /// `"usage": null` (OpenAI's reference; typed clients read the key from each chunk), or
    /// the usage so far with `continuous_usage_stats` (vLLM's).
    fn push_chunk(&mut self, mut v: Value) {
        let so_far = match self.usage {
            StreamUsage::None => None,
            StreamUsage::AtTheEnd => Some(Value::Null),
            StreamUsage::EveryChunk => Some(
                self.usage_json(self.completion_tokens + self.generating.iter().sum::<usize>()),
            ),
        };
        if let (Some(u), Some(o)) = (so_far, v.as_object_mut()) {
            o.entry("usage").or_insert(u);
        }
        self.queue.push_back(data(&v));
    }

    fn usage_json(&self, completion_tokens: usize) -> Value {
        let u = Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            cached_tokens: self.cached.total(),
        };
        self.format.usage(&u)["usage"].clone()
    }
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

pub fn stream(
    sub: Submission,
    first_index: usize,
    format: Box<dyn ChunkFormat>,
    usage: StreamUsage,
    prompt_tokens: usize,
    choices_per_prompt: usize,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let choices: Vec<usize> = (first_index..first_index + sub.choices).collect();
    let opening = format.opening(&choices);
    let n = sub.choices;
    let mut st = StreamState {
        sub,
        first_index,
        format,
        queue: VecDeque::new(),
        usage,
        prompt_tokens,
        completion_tokens: 0,
        generating: vec![0; n],
        cached: CachedPrompt::new(choices_per_prompt),
        timing: Timing::new(n),
        done: false,
    };
    for c in opening {
        st.push_chunk(c);
    }
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
                    if st.usage != StreamUsage::None {
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
                            st.push_chunk(c);
                        }
                    }
                    Event::Token { text, logprob, .. } => {
                        st.timing
                            .token(&st.sub.state, st.sub.started, idx - st.first_index);
                        if let Some(g) = st.generating.get_mut(idx - st.first_index) {
                            *g += 1;
                        }
                        for c in st.format.token(idx, &text, logprob.as_ref()) {
                            st.push_chunk(c);
                        }
                    }
                    Event::Finished {
                        reason,
                        usage,
                        stop_reason,
                    } => {
                        st.completion_tokens += usage.completion_tokens;
                        if let Some(g) = st.generating.get_mut(idx - st.first_index) {
                            *g = 0;
                        }
                        st.cached.record(idx, usage.cached_tokens);
                        for c in st.format.finish(idx, reason, stop_reason.as_ref()) {
                            st.push_chunk(c);
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
