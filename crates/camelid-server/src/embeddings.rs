//! Embeddings: inputs checked and tokenized, one engine request each (the engine pools the
//! final hidden states, see `camelid_engine::Pooling`) in waves, the vectors normalized and
//! streamed into the response as they come (a request's memory is one wave's, whatever its
//! size). Shared by OpenAI's `/v1/embeddings` and Ollama's `/api/embed` and `/api/embeddings`.

use crate::error::ApiError;
use crate::openai::Prompt;
use crate::run::{blocking, shutting_down, submit_continuing, submit_requests, Submission};
use crate::state::{AppState, ModelEntry, Permit};
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use camelid_engine::{Event, Pooling, Request};
use camelid_model::decode::GenerationParams;
use camelid_model::SamplingParams;
use futures::stream::{BoxStream, StreamExt};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `POST /v1/embeddings`: OpenAI's fields and vLLM's `normalize`.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    /// Left out or empty: the one model served (as vLLM takes it); answered with its name.
    #[serde(default)]
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
    /// Cut to the context length, keeping its start and the appended token (Ollama's
    /// `truncate`, its default).
    Truncate,
}

/// An embeddings request checked and tokenized, ready to run.
pub struct Prepared {
    inputs: Vec<Vec<u32>>,
    /// Tokens of every input.
    pub prompt_tokens: usize,
    pooling: Pooling,
}

/// The vectors of a request, in input order, as its waves finish.
pub type Vectors = BoxStream<'static, Result<Vec<f32>, ApiError>>;

/// The pooling `model` is served with: the server's `--pooling`, else what its files name,
/// else the last token's.
pub fn pooling(state: &AppState, model: &ModelEntry) -> Pooling {
    state
        .config
        .pooling
        .or(model.details.pooling)
        .unwrap_or(Pooling::Last)
}

/// A model whose files name what camelid does not compute gets no embeddings (they would
/// not be the model's: a skipped `Dense` projection gives another vector, of another width;
/// another pooling, other states): a 400 saying what, and for a pooling how to choose one.
fn refuse_gaps(state: &AppState, model: &ModelEntry) -> Result<(), ApiError> {
    let gaps = &model.details.embedding_gaps;
    if !gaps.modules.is_empty() {
        return Err(ApiError::invalid_param(
            "model",
            format!(
                "`{}` is a sentence-transformers model whose modules {} camelid does not \
                 compute: its embeddings would not be the model's",
                model.name,
                gaps.modules.join(", ")
            ),
        ));
    }
    match (&gaps.pooling, state.config.pooling) {
        (Some(p), None) => Err(ApiError::invalid_param(
            "model",
            format!(
                "`{}` pools by {p}, which camelid does not compute; serve it with `--pooling \
                 mean` or `--pooling last` to embed with one of those",
                model.name
            ),
        )),
        _ => Ok(()),
    }
}

/// Checks every input and tokenizes text as the model's tokenizer prepares an embedding
/// input (its BOS and appended token). `param` names the input field in errors (`input`,
/// Ollama's legacy `prompt`).
pub async fn prepare(
    state: &AppState,
    permit: &Permit,
    model: &ModelEntry,
    input: Prompt,
    param: &'static str,
    overlong: Overlong,
) -> Result<Prepared, ApiError> {
    refuse_gaps(state, model)?;
    let count = match &input {
        Prompt::Text(_) | Prompt::Tokens(_) => 1,
        Prompt::Texts(v) => v.len(),
        Prompt::TokenLists(l) => l.len(),
    };
    let name = |i: usize| {
        if count == 1 {
            param.to_string()
        } else {
            format!("{param}[{i}]")
        }
    };
    let empty =
        |i: usize| ApiError::invalid_param(param, format!("`{}` must not be empty", name(i)));
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
    // Empty text is refused before it is tokenized: the BOS alone would make it a vector.
    let texts = match &input {
        Prompt::Text(s) => std::slice::from_ref(s),
        Prompt::Texts(v) => v.as_slice(),
        _ => &[],
    };
    if let Some(i) = texts.iter().position(String::is_empty) {
        return Err(empty(i));
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
        Prompt::Text(s) => blocking(permit, move || encode(vec![s])).await?,
        Prompt::Texts(v) => blocking(permit, move || encode(v)).await?,
        Prompt::Tokens(t) => vec![t],
        Prompt::TokenLists(l) => l,
    };
    let vocab = model.engine.vocab_size();
    let context = model.max_model_len;
    let appended = model.engine.tokenizer().eos_appended;
    for (i, ids) in inputs.iter_mut().enumerate() {
        if ids.is_empty() {
            return Err(empty(i));
        }
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::invalid_param(
                param,
                format!(
                    "`{}`: token id {bad} is outside the vocabulary ({vocab})",
                    name(i)
                ),
            ));
        }
        if ids.len() > context {
            match overlong {
                Overlong::Truncate => {
                    // The appended token stays last: last-token pooling reads its state.
                    let end = appended.filter(|e| ids.last() == Some(e));
                    ids.truncate(context - usize::from(end.is_some()));
                    ids.extend(end);
                }
                Overlong::Refuse => {
                    return Err(ApiError::invalid_param(
                        param,
                        format!(
                            "`{}` is {} tokens; this model's context is {context} tokens",
                            name(i),
                            ids.len()
                        ),
                    ))
                }
            }
        }
    }
    Ok(Prepared {
        prompt_tokens: inputs.iter().map(Vec::len).sum(),
        inputs,
        pooling: pooling(state, model),
    })
}

/// Runs the inputs through the engine in waves of at most a request's sequence cap (the
/// engine's waiting queue is bounded for every client, and OpenAI's clients batch up to 2048
/// inputs); a later wave that finds the queue full waits for room, and runs during shutdown
/// (the answer is under way). Only one wave's vectors are held at a time. Dropping the
/// stream cancels what runs; `permit` is held until then.
pub fn run(
    state: Arc<AppState>,
    permit: Permit,
    model: Arc<ModelEntry>,
    prepared: Prepared,
    normalize: bool,
) -> Vectors {
    let wave = state.config.limits.max_sequences.max(1);
    let started = Instant::now();
    let pooling = prepared.pooling;
    let waves: Vec<Vec<Vec<u32>>> = {
        let mut it = prepared.inputs.into_iter().peekable();
        let mut out = vec![];
        while it.peek().is_some() {
            out.push(it.by_ref().take(wave).collect());
        }
        out
    };
    let n_waves = waves.len();
    futures::stream::iter(waves.into_iter().enumerate())
        .then(move |(w, inputs)| {
            let (state, permit, model) = (state.clone(), permit.clone(), model.clone());
            async move {
                let requests = inputs
                    .into_iter()
                    .enumerate()
                    .map(|(i, prompt)| {
                        let req = Request {
                            prompt,
                            params: GenerationParams::new(0, SamplingParams::greedy()),
                            prompt_logprobs: None,
                            cache_salt: None,
                            embed: Some(pooling),
                            lora: None,
                        };
                        (i, req)
                    })
                    .collect();
                let sub = if w == 0 {
                    submit_requests(&state, permit, &model, requests)?
                } else {
                    submit_continuing(&state, permit, &model, requests, PATIENCE).await?
                };
                let mut vectors = wave_vectors(sub).await?;
                if normalize {
                    vectors.iter_mut().for_each(|v| unit_length(v));
                }
                if w + 1 == n_waves {
                    state
                        .metrics
                        .request_latency(started.elapsed().as_secs_f64());
                }
                Ok::<_, ApiError>(vectors)
            }
        })
        .flat_map(|wave| match wave {
            Ok(vectors) => futures::stream::iter(vectors.into_iter().map(Ok)).left_stream(),
            Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
        })
        .boxed()
}

/// How long a later wave waits for room in the engine's queue.
const PATIENCE: Duration = Duration::from_secs(60);

/// One wave's vectors, in order.
async fn wave_vectors(mut sub: Submission) -> Result<Vec<Vec<f32>>, ApiError> {
    let mut out: Vec<Option<Vec<f32>>> = vec![None; sub.choices];
    while let Some((i, ev)) = sub.streams.next().await {
        match ev {
            Event::Embedding(v) => out[i] = Some(v),
            Event::Finished { .. } | Event::PromptLogprobs(_) | Event::Token { .. } => {}
            Event::Error(e) | Event::GrammarFailed(e) => return Err(ApiError::internal(e)),
            Event::Refused(_) => return Err(shutting_down()),
        }
    }
    out.into_iter()
        .map(|v| v.ok_or_else(|| ApiError::internal("the engine sent no embedding")))
        .collect()
}

/// A JSON response streamed as the vectors come: `head`, each vector as `item` writes it
/// (comma-separated), then `tail`. The first vector is awaited before the status is sent, so
/// a request that cannot start gets its error; a failure after that cuts the response.
pub async fn json_response(
    mut vectors: Vectors,
    head: String,
    item: impl Fn(usize, Vec<f32>) -> Vec<u8> + Send + 'static,
    tail: impl FnOnce() -> String + Send + 'static,
) -> Result<Response, ApiError> {
    let first = vectors.next().await.transpose()?;
    let first = futures::stream::iter(first.map(Ok));
    let mut index = 0;
    let items = first.chain(vectors).map(move |v| {
        let mut bytes = if index == 0 { vec![] } else { vec![b','] };
        bytes.extend(item(index, v?));
        index += 1;
        Ok::<_, ApiError>(Bytes::from(bytes))
    });
    let body = futures::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(items)
        .chain(futures::stream::once(
            async move { Ok(Bytes::from(tail())) },
        ))
        .map(|r: Result<Bytes, ApiError>| {
            r.map_err(|e| {
                tracing::warn!("an embeddings response was cut: {}", e.message);
                std::io::Error::other(e.message)
            })
        });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
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
