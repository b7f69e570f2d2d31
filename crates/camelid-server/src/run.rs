//! Submitting prompts to an engine and gathering what comes back, whole or as a stream.

use crate::error::ApiError;
use crate::state::{AppState, ModelEntry};
use axum::http::StatusCode;
use camelid_engine::{Event, Request, SubmitError, Usage};
use camelid_model::decode::sampling::TokenLogprob;
use camelid_model::decode::{FinishReason, GenerationParams};
use futures::stream::{SelectAll, StreamExt};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// One choice to generate: its index in the response and its prompt.
pub struct ChoiceSpec {
    pub index: usize,
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
    pub prompt_logprobs: Option<usize>,
    pub cache_salt: Option<String>,
}

/// Requests handed to the engine; dropping this cancels them.
pub struct Submission {
    pub streams: SelectAll<futures::stream::BoxStream<'static, (usize, Event)>>,
    pub choices: usize,
    pub started: Instant,
    pub state: Arc<AppState>,
    _permit: OwnedSemaphorePermit,
}

pub fn submit(
    state: &Arc<AppState>,
    model: &ModelEntry,
    specs: Vec<ChoiceSpec>,
) -> Result<Submission, ApiError> {
    let permit = state.permit()?;
    let mut streams = SelectAll::new();
    let choices = specs.len();
    for s in specs {
        let rx = model
            .engine
            .submit(Request {
                prompt: s.prompt,
                params: s.params,
                prompt_logprobs: s.prompt_logprobs,
                cache_salt: s.cache_salt,
            })
            .map_err(|e| match e {
                SubmitError::QueueFull => ApiError::overloaded(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The engine queue is full; retry later.",
                ),
                SubmitError::Stopped => ApiError::internal("The engine has stopped."),
                SubmitError::Invalid(m) => ApiError::bad_request(m),
            })?;
        let idx = s.index;
        streams.push(
            UnboundedReceiverStream::new(rx)
                .map(move |e| (idx, e))
                .boxed(),
        );
    }
    Ok(Submission {
        streams,
        choices,
        started: Instant::now(),
        state: state.clone(),
        _permit: permit,
    })
}

/// Per-choice latency bookkeeping for the metrics.
pub struct Timing {
    last: Vec<Option<Instant>>,
}

impl Timing {
    pub fn new(n: usize) -> Self {
        Self {
            last: vec![None; n],
        }
    }
    pub fn token(&mut self, state: &AppState, started: Instant, slot: usize) {
        let now = Instant::now();
        match self.last.get(slot).copied().flatten() {
            None => state
                .metrics
                .time_to_first_token((now - started).as_secs_f64()),
            Some(prev) => state
                .metrics
                .inter_token_latency((now - prev).as_secs_f64()),
        }
        if let Some(l) = self.last.get_mut(slot) {
            *l = Some(now);
        }
    }
}

#[derive(Debug, Clone)]
pub struct ChoiceResult {
    pub index: usize,
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub prompt_logprobs: Option<Vec<TokenLogprob>>,
    pub finish: FinishReason,
    pub usage: Usage,
}

/// Waits for every choice to finish. Results are ordered by index.
pub async fn collect(
    mut sub: Submission,
    first_index: usize,
) -> Result<Vec<ChoiceResult>, ApiError> {
    let mut results: Vec<Option<ChoiceResult>> = vec![None; sub.choices];
    let mut partial: Vec<ChoiceResult> = (0..sub.choices)
        .map(|i| ChoiceResult {
            index: first_index + i,
            text: String::new(),
            tokens: vec![],
            logprobs: vec![],
            prompt_logprobs: None,
            finish: FinishReason::Stop,
            usage: Usage::default(),
        })
        .collect();
    let mut timing = Timing::new(sub.choices);
    while let Some((idx, ev)) = sub.streams.next().await {
        let slot = idx - first_index;
        let p = &mut partial[slot];
        match ev {
            Event::PromptLogprobs(lp) => p.prompt_logprobs = Some(lp),
            Event::Token {
                token,
                text,
                logprob,
            } => {
                timing.token(&sub.state, sub.started, slot);
                p.tokens.push(token);
                p.text += &text;
                p.logprobs.extend(logprob);
            }
            Event::Finished { reason, usage } => {
                p.finish = reason;
                p.usage = usage;
                results[slot] = Some(p.clone());
            }
            Event::Error(e) => return Err(ApiError::internal(e)),
        }
    }
    sub.state
        .metrics
        .request_latency(sub.started.elapsed().as_secs_f64());
    results
        .into_iter()
        .map(|r| r.ok_or_else(|| ApiError::internal("the engine dropped a request")))
        .collect()
}
