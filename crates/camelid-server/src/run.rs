//! Submitting prompts to an engine and gathering what comes back, whole or as a stream.

use crate::error::ApiError;
use crate::state::{AppState, ModelEntry, Permit};
use axum::http::StatusCode;
use camelid_engine::{Event, Request, SubmitError, Usage};
use camelid_model::decode::sampling::TokenLogprob;
use camelid_model::decode::{FinishReason, GenerationParams, StopReason};
use futures::stream::{SelectAll, StreamExt};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedReceiver;

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
    _permit: Permit,
}

/// Hands every choice to the engine, all or none (a full waiting queue is 503), holding
/// `permit` (the request's concurrency slot) until the submission is dropped.
pub fn submit(
    state: &Arc<AppState>,
    permit: Permit,
    model: &ModelEntry,
    specs: Vec<ChoiceSpec>,
) -> Result<Submission, ApiError> {
    let requests = specs
        .into_iter()
        .map(|s| {
            let req = Request {
                prompt: s.prompt,
                params: s.params,
                prompt_logprobs: s.prompt_logprobs,
                cache_salt: s.cache_salt,
                embed: None,
                lora: None,
            };
            (s.index, req)
        })
        .collect();
    submit_requests(state, permit, model, requests)
}

/// [`submit`] for engine requests made by the caller, each with its index in the response.
pub fn submit_requests(
    state: &Arc<AppState>,
    permit: Permit,
    model: &ModelEntry,
    requests: Vec<(usize, Request)>,
) -> Result<Submission, ApiError> {
    let (indices, requests): (Vec<usize>, Vec<Request>) = requests.into_iter().unzip();
    let receivers = model
        .engine
        .submit_all(requests)
        .map_err(|e| submit_error(model, e))?;
    Ok(submission(state, permit, indices, receivers))
}

/// [`submit_requests`] for a later part of a request whose first part already ran: it waits
/// up to `patience` for room in a full engine queue instead of answering 503, and is taken
/// during shutdown too (`EngineHandle::submit_all_continuing`), so an answer under way is not
/// cut.
pub async fn submit_continuing(
    state: &Arc<AppState>,
    permit: Permit,
    model: &ModelEntry,
    requests: Vec<(usize, Request)>,
    patience: std::time::Duration,
) -> Result<Submission, ApiError> {
    let (indices, requests): (Vec<usize>, Vec<Request>) = requests.into_iter().unzip();
    let started = Instant::now();
    loop {
        // Copied for an attempt only when the queue has room (a copy is the wave's prompts).
        if model.engine.has_room(requests.len()) {
            match model.engine.submit_all_continuing(requests.clone()) {
                Ok(receivers) => return Ok(submission(state, permit, indices, receivers)),
                Err(SubmitError::QueueFull) => {}
                Err(e) => return Err(submit_error(model, e)),
            }
        }
        if started.elapsed() >= patience {
            return Err(submit_error(model, SubmitError::QueueFull));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn submit_error(model: &ModelEntry, e: SubmitError) -> ApiError {
    match e {
        SubmitError::QueueFull => ApiError::overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            "The engine queue is full; retry later.",
        ),
        SubmitError::Stopped => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!("The engine serving `{}` has stopped.", model.name),
        ),
        SubmitError::ShuttingDown => shutting_down(),
        SubmitError::Invalid(m) => ApiError::bad_request(m),
    }
}

fn submission(
    state: &Arc<AppState>,
    permit: Permit,
    indices: Vec<usize>,
    receivers: Vec<UnboundedReceiver<Event>>,
) -> Submission {
    let choices = indices.len();
    let mut streams = SelectAll::new();
    for (idx, rx) in indices.into_iter().zip(receivers) {
        streams.push(until_last_event(rx).map(move |e| (idx, e)).boxed());
    }
    Submission {
        streams,
        choices,
        started: Instant::now(),
        state: state.clone(),
        _permit: permit,
    }
}

/// Runs `f` on tokio's blocking pool (rendering and tokenizing a body of megabytes must not
/// stall the async workers that carry every stream), holding the request's `permit` until
/// it is done.
pub async fn blocking<T: Send + 'static>(
    permit: &Permit,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = permit.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .map_err(|e| ApiError::internal(format!("preparing the prompt failed: {e}")))?
}

/// What a request refused at shutdown gets: 503, to be retried (elsewhere).
pub fn shutting_down() -> ApiError {
    ApiError::overloaded(
        StatusCode::SERVICE_UNAVAILABLE,
        "The server is shutting down; retry the request.",
    )
}

/// What a request whose own grammar could not go on gets: 400, as the bad request it is
/// (a matcher limit reached by a recursive schema or a huge choice list, say).
pub fn grammar_failed(reason: &str) -> ApiError {
    ApiError::bad_request(format!(
        "The output constraint could not be followed: {reason}"
    ))
}

/// A request's events up to its last (`Finished`, `Error`, `GrammarFailed` or `Refused`). A channel that
/// closes before that one (the engine thread died) ends in an `Error`, so no caller can
/// mistake a dead engine for a finished answer.
fn until_last_event(
    rx: UnboundedReceiver<Event>,
) -> impl futures::Stream<Item = Event> + Send + 'static {
    futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(e) => {
                let last = matches!(
                    e,
                    Event::Finished { .. }
                        | Event::Error(_)
                        | Event::GrammarFailed(_)
                        | Event::Refused(_)
                );
                Some((e, (!last).then_some(rx)))
            }
            None => Some((
                Event::Error("the engine stopped before finishing this request".into()),
                None,
            )),
        }
    })
}

/// What a one-choice handler (Ollama's routes, the Responses API) does with an engine event.
pub enum Step {
    Token {
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Finished {
        reason: FinishReason,
        usage: Usage,
    },
}

/// The next event of a one-choice submission that its handler acts on (prompt log-probs
/// skipped), with the token and latency metrics recorded; a failure is the `ApiError` its
/// client gets. `None` once the request is done.
pub async fn next_step(
    sub: &mut Submission,
    timing: &mut Timing,
) -> Option<Result<Step, ApiError>> {
    loop {
        let Some((_, ev)) = sub.streams.next().await else {
            sub.state
                .metrics
                .request_latency(sub.started.elapsed().as_secs_f64());
            return None;
        };
        return Some(match ev {
            Event::PromptLogprobs(_) | Event::Embedding(_) => continue,
            Event::Token { text, logprob, .. } => {
                timing.token(&sub.state, sub.started, 0);
                Ok(Step::Token { text, logprob })
            }
            Event::Finished { reason, usage, .. } => Ok(Step::Finished { reason, usage }),
            Event::Error(e) => Err(ApiError::internal(e)),
            Event::GrammarFailed(e) => Err(grammar_failed(&e)),
            Event::Refused(_) => Err(shutting_down()),
        });
    }
}

/// Per-choice latency bookkeeping for the metrics.
pub struct Timing {
    last: Vec<Option<Instant>>,
    /// Whether any choice has had a token (time to first token is the request's).
    any: bool,
}

impl Timing {
    pub fn new(n: usize) -> Self {
        Self {
            last: vec![None; n],
            any: false,
        }
    }
    pub fn token(&mut self, state: &AppState, started: Instant, slot: usize) {
        let now = Instant::now();
        let first_of_request = !std::mem::replace(&mut self.any, true);
        match self.last.get(slot).copied().flatten() {
            // Once a request (vLLM's unit): its other choices' first tokens are neither.
            None if first_of_request => state
                .metrics
                .time_to_first_token((now - started).as_secs_f64()),
            None => {}
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
    /// Bytes of `text` each token made visible, in order (a token may make none).
    pub token_text_lens: Vec<usize>,
    pub logprobs: Vec<TokenLogprob>,
    pub prompt_logprobs: Option<Vec<TokenLogprob>>,
    /// The pooled hidden state of an embedding request.
    pub embedding: Option<Vec<f32>>,
    pub finish: FinishReason,
    /// The client's stop token or string that ended the choice (vLLM's `stop_reason`).
    pub stop_reason: Option<StopReason>,
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
            token_text_lens: vec![],
            logprobs: vec![],
            prompt_logprobs: None,
            embedding: None,
            finish: FinishReason::Stop,
            stop_reason: None,
            usage: Usage::default(),
        })
        .collect();
    let mut timing = Timing::new(sub.choices);
    while let Some((idx, ev)) = sub.streams.next().await {
        let slot = idx - first_index;
        let p = &mut partial[slot];
        match ev {
            Event::PromptLogprobs(lp) => p.prompt_logprobs = Some(lp),
            Event::Embedding(v) => p.embedding = Some(v),
            Event::Token {
                token,
                text,
                logprob,
            } => {
                timing.token(&sub.state, sub.started, slot);
                p.tokens.push(token);
                p.token_text_lens.push(text.len());
                p.text += &text;
                p.logprobs.extend(logprob);
            }
            Event::Finished {
                reason,
                usage,
                stop_reason,
            } => {
                p.finish = reason;
                p.stop_reason = stop_reason;
                p.usage = usage;
                results[slot] = Some(p.clone());
            }
            Event::Error(e) => return Err(ApiError::internal(e)),
            Event::GrammarFailed(e) => return Err(grammar_failed(&e)),
            Event::Refused(_) => return Err(shutting_down()),
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
