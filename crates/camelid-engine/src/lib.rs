//! camelid-engine: owns a loaded model and runs it for many requests at once.
//!
//! `EngineHandle::submit(request)` returns a stream (channel) of [`Event`]s. One engine
//! thread per model runs *continuous batching*: every step is one forward over all running
//! sequences at their own positions (prefill chunks and decodes mixed); new requests join at
//! the next step and finished or cancelled ones leave at once.

pub mod blocks;
mod calibrate;
mod config;
mod handle;
mod metrics;
pub mod paged;
mod scheduler;
pub mod score;
mod seq;
pub mod speculate;
pub mod step_cost;

pub use camelid_model::{Pooling, SharedLora};
pub use config::{EngineConfig, EngineOverrides, DEFAULT_KV_POSITIONS};
pub use handle::EngineHandle;
pub use metrics::{EngineMetrics, StepHistogram, STEP_BUCKETS};
pub use speculate::NgramSpec;

use camelid_model::decode::sampling::TokenLogprob;
use camelid_model::decode::{FinishReason, GenerationParams, StopReason};

/// What a client asks the engine for.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
    /// Log-probabilities of the prompt tokens (each given the tokens before it), with this
    /// many alternatives.
    pub prompt_logprobs: Option<usize>,
    /// Prefix-cache partition (vLLM's `cache_salt`): cached blocks are shared only among
    /// requests with the same salt (or none).
    pub cache_salt: Option<String>,
    /// An embedding of the prompt instead of a generation (`params.max_tokens` 0, no prompt
    /// log-probs): its final hidden states pooled, sent as [`Event::Embedding`], then
    /// `Finished`.
    pub embed: Option<Pooling>,
    /// The LoRA adapter to run under (`None`: the base model). An [`EngineHandle::with_lora`]
    /// handle sets it on what it submits.
    pub lora: Option<SharedLora>,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose keys/values were reused from the prefix cache.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// Log-probabilities of prompt tokens 1.. (token 0 has no context).
    PromptLogprobs(Vec<TokenLogprob>),
    /// The pooled hidden state of an embedding request (not normalized); `Finished` follows.
    Embedding(Vec<f32>),
    /// One generated token and the text it makes visible (may be empty).
    Token {
        token: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The request is done; no event follows. `stop_reason`: the client's stop token or
    /// string that ended it (vLLM's field), if one did.
    Finished {
        reason: FinishReason,
        usage: Usage,
        stop_reason: Option<StopReason>,
    },
    /// The request failed; no event follows.
    Error(String),
    /// The request's own grammar could not go on (`camelid_model::Error::Grammar`): the
    /// client's fault, answered 400 like a bad request; no event follows.
    GrammarFailed(String),
    /// The request will not run (on): the engine is shutting down. It was never started
    /// (`EngineHandle::stop_admitting`), or the shutdown's grace period ended it
    /// (`EngineHandle::end_all`). No event follows.
    Refused(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the engine queue is full")]
    QueueFull,
    #[error("the engine has stopped")]
    Stopped,
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Invalid(String),
}
