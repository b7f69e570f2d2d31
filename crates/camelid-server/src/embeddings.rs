//! Embeddings: inputs checked and tokenized, one engine request each (the engine pools the
//! final hidden states, see `camelid_engine::Pooling`), the vectors normalized and encoded.
//! Shared by OpenAI's `/v1/embeddings` and Ollama's `/api/embed` and `/api/embeddings`.

use crate::error::ApiError;
use crate::openai::Prompt;
use crate::run::{blocking, collect, submit_requests};
use crate::state::{AppState, ModelEntry, Permit};
use camelid_engine::{Pooling, Request};
use camelid_model::decode::GenerationParams;
use camelid_model::SamplingParams;
use serde::Deserialize;
use std::sync::Arc;

/// `POST /v1/embeddings`: OpenAI's fields and vLLM's `normalize`.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    /// A string, strings, token ids or lists of token ids.
    pub input: Prompt,
    /// `float` (the default) or `base64` (little-endian f32s: what the openai SDK asks for).
    pub encoding_format: Option<String>,
    /// Only the model's own width: the served models are not trained to be cut
    /// (Matryoshka), so a shorter vector would not mean what the client expects.
    pub dimensions: Option<u64>,
    #[allow(dead_code)]
    pub user: Option<String>,
    /// vLLM's: `false` returns the pooled vector as the model makes it (default `true`:
    /// unit length, as OpenAI's).
    pub normalize: Option<bool>,
}

/// How an input longer than the context is treated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Overlong {
    /// Refused, naming the input (OpenAI's and vLLM's way).
    Refuse,
    /// Cut to the context length, keeping its start (Ollama's `truncate`, its default).
    Truncate,
}

/// What the server computed: one vector per input, in input order, and the tokens read.
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
}

/// The pooling `model` is served with: the server's `--pooling`, else what its files name,
/// else the last token's.
pub fn pooling(state: &AppState, model: &ModelEntry) -> Pooling {
    state
        .config
        .pooling
        .or(model.details.pooling)
        .unwrap_or(Pooling::Last)
}

/// Tokenizes `input` (text as the model's tokenizer prepares an embedding input: its BOS and
/// appended token), checks every input, and runs them all. `param` names the input field in
/// errors (`input`, Ollama's legacy `prompt`).
pub async fn embed(
    state: &Arc<AppState>,
    permit: Permit,
    model: &ModelEntry,
    input: Prompt,
    param: &'static str,
    overlong: Overlong,
    normalize: bool,
) -> Result<Embedded, ApiError> {
    let count = match &input {
        Prompt::Text(_) | Prompt::Tokens(_) => 1,
        Prompt::Texts(v) => v.len(),
        Prompt::TokenLists(l) => l.len(),
    };
    if count == 0 {
        return Err(ApiError::invalid_param(
            param,
            format!("`{param}` must not be empty"),
        ));
    }
    let limit = state.config.limits.max_embedding_inputs;
    if count > limit {
        return Err(ApiError::invalid_param(
            param,
            format!("`{param}`: {count} inputs; at most {limit} are allowed per request"),
        ));
    }
    let tok = model.engine.shared_tokenizer();
    let encode = move |texts: Vec<String>| -> Result<Vec<Vec<u32>>, ApiError> {
        texts
            .iter()
            .map(|s| {
                tok.encode_for_embedding(s)
                    .map_err(|e| ApiError::bad_request(e.to_string()))
            })
            .collect()
    };
    let mut inputs = match input {
        Prompt::Text(s) => blocking(&permit, move || encode(vec![s])).await?,
        Prompt::Texts(v) => blocking(&permit, move || encode(v)).await?,
        Prompt::Tokens(t) => vec![t],
        Prompt::TokenLists(l) => l,
    };
    let vocab = model.engine.vocab_size();
    let context = model.max_model_len;
    for (i, ids) in inputs.iter_mut().enumerate() {
        let name = if count == 1 {
            param.to_string()
        } else {
            format!("{param}[{i}]")
        };
        if ids.is_empty() {
            return Err(ApiError::invalid_param(
                param,
                format!("`{name}` must not be empty"),
            ));
        }
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::invalid_param(
                param,
                format!("`{name}`: token id {bad} is outside the vocabulary ({vocab})"),
            ));
        }
        if ids.len() > context {
            match overlong {
                Overlong::Truncate => ids.truncate(context),
                Overlong::Refuse => {
                    return Err(ApiError::invalid_param(
                        param,
                        format!(
                            "`{name}` is {} tokens; this model's context is {context} tokens",
                            ids.len()
                        ),
                    ))
                }
            }
        }
    }
    let prompt_tokens = inputs.iter().map(Vec::len).sum();
    let pooling = pooling(state, model);
    // In waves of at most a request's sequence cap: the engine's waiting queue is bounded
    // for every client, and OpenAI's clients batch up to 2048 inputs.
    let wave = state.config.limits.max_sequences.max(1);
    let mut vectors = Vec::with_capacity(inputs.len());
    let mut inputs = inputs.into_iter().peekable();
    while inputs.peek().is_some() {
        let requests = inputs
            .by_ref()
            .take(wave)
            .enumerate()
            .map(|(i, prompt)| {
                let req = Request {
                    prompt,
                    params: GenerationParams::new(0, SamplingParams::greedy()),
                    prompt_logprobs: None,
                    cache_salt: None,
                    embed: Some(pooling),
                };
                (i, req)
            })
            .collect();
        let sub = submit_requests(state, permit.clone(), model, requests)?;
        for r in collect(sub, 0).await? {
            let mut v = r
                .embedding
                .ok_or_else(|| ApiError::internal("the engine sent no embedding"))?;
            if normalize {
                unit_length(&mut v);
            }
            vectors.push(v);
        }
    }
    Ok(Embedded {
        vectors,
        prompt_tokens,
    })
}

/// Scales `v` to unit Euclidean length (a zero vector stays zero).
fn unit_length(v: &mut [f32]) {
    let norm = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
    }
}

/// OpenAI's `base64` encoding of a vector: its f32s, little-endian.
pub fn base64_f32(v: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_length_and_base64() {
        let mut v = vec![3.0, 4.0];
        unit_length(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut z = vec![0.0, 0.0];
        unit_length(&mut z);
        assert_eq!(z, [0.0, 0.0]);
        // 1.0f32 is 00 00 80 3f.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
    }
}
