//! `POST /v1/completions`: raw prompts (text or token ids), `echo`, and prompt log-probs —
//! what lm-evaluation-harness uses to score loglikelihoods. Handler and stream chunks.

use super::{AppResult, RequestBody};
use crate::error::ApiError;
use crate::format::{
    completion_logprobs, echo_text_offsets, finish_str, new_id, now_secs, stop_reason_json,
    usage_json, CachedPrompt, TextOffset,
};
use crate::openai::{parse_with_sampling, CompletionRequest, Prompt, StreamOptions};
use crate::run::{blocking, collect, submit, ChoiceSpec};
use crate::sse::{stream, ChunkFormat};
use crate::state::AppState;
use crate::structured;
use crate::validate::{
    cache_salt, check_top_logprobs, choice_params, encode_prompt, generation_params, infill_suffix,
    max_tokens, min_tokens_within_limit, model_stops, unimplemented_completion,
};
use axum::extract::State;
use axum::response::IntoResponse;
use camelid_engine::Usage;
use camelid_model::decode::sampling::TokenLogprob;
use camelid_model::decode::{FinishReason, StopReason};
use camelid_model::text::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::sync::Arc;

pub async fn completions(
    State(state): State<Arc<AppState>>,
    RequestBody(body): RequestBody,
) -> AppResult {
    let permit = state.permit()?;
    let (mut req, sampling): (CompletionRequest, _) = parse_with_sampling(&body)?;
    drop(body);
    state.fill_model_name(&mut req.model)?;
    let f = &sampling;
    let limits = &state.config.limits;
    unimplemented_completion(&req, f.n.unwrap_or(1))?;
    let model = state.model(Some(&req.model))?;
    let vocab = model.engine.vocab_size();
    // Every size and value is checked before a prompt is tokenized or copied per choice.
    let text_prompt = matches!(req.prompt, Prompt::Text(_) | Prompt::Texts(_));
    let suffix = infill_suffix(req.suffix.as_ref(), &model, text_prompt, req.echo)?;
    let stops = model_stops(&model, suffix.is_some());
    let mut base = generation_params(f, &model.sampling_defaults, limits, vocab, &stops, &[])?;
    // A completion is the prompt's text going on: `echo`, `text_offset` and the client's
    // own joining need the space a SentencePiece first token carries.
    base.continues_prompt = true;
    let n = f.n.unwrap_or(1) as usize;
    let prompt_count = match &req.prompt {
        Prompt::Text(_) | Prompt::Tokens(_) => 1,
        Prompt::Texts(v) => v.len(),
        Prompt::TokenLists(l) => l.len(),
    };
    limits.check_sequences(prompt_count, n)?;
    check_top_logprobs("logprobs", req.logprobs)?;
    if f.max_tokens == Some(0) && !req.echo {
        return Err(ApiError::invalid_param(
            "max_tokens",
            "`max_tokens` must be at least 1 (0 is allowed only with `echo`)",
        ));
    }
    if req.echo && f.stream && f.max_tokens == Some(0) {
        return Err(ApiError::invalid_param(
            "stream",
            "scoring a prompt (`max_tokens` 0) cannot be streamed",
        ));
    }
    let tok = model.engine.shared_tokenizer();
    let prompt = std::mem::replace(&mut req.prompt, Prompt::Tokens(vec![]));
    // `echo` gives a text prompt back as it was sent (decoding its tokens would add the BOS
    // token's text and could change the spelling), a token prompt as its decoded tokens.
    let mut echo_texts: Vec<Option<String>> = match (&prompt, req.echo) {
        (Prompt::Text(s), true) => vec![Some(s.clone())],
        (Prompt::Texts(v), true) => v.iter().cloned().map(Some).collect(),
        _ => vec![],
    };
    // An echoed text prompt's offsets come from the same encoding (its tokens' starts).
    let starts = req.echo && req.logprobs.is_some();
    let special = req.add_special_tokens.unwrap_or(true);
    let (prompts, aligned): (Vec<Vec<u32>>, Vec<Option<Vec<usize>>>) = match prompt {
        Prompt::Text(s) => {
            let one = move || encode_text(&tok, &s, suffix.as_deref(), starts, special);
            let (ids, at) = blocking(&permit, one).await?;
            (vec![ids], vec![at])
        }
        Prompt::Texts(v) => {
            let each = move || {
                v.iter()
                    .map(|s| encode_text(&tok, s, suffix.as_deref(), starts, special))
                    .collect::<Result<Vec<_>, ApiError>>()
            };
            blocking(&permit, each).await?.into_iter().unzip()
        }
        Prompt::Tokens(t) => (vec![t], vec![None]),
        Prompt::TokenLists(l) => {
            let none = vec![None; l.len()];
            (l, none)
        }
    };
    if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
        return Err(ApiError::invalid_param(
            "prompt",
            "`prompt` must not be empty",
        ));
    }
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid_param(
            "prompt",
            format!("token id {bad} is outside the vocabulary ({vocab})"),
        ));
    }
    if let (true, Some(top)) = (req.echo, req.logprobs) {
        let prompt_tokens = prompts.iter().map(Vec::len).sum();
        limits.check_prompt_logprobs(prompt_tokens, n, top as usize)?;
    }
    let salt = cache_salt(req.cache_salt.as_deref())?;
    base.constraint = structured::compile(&permit, &model, f).await?;
    let mut specs = vec![];
    // Tokens whose log-probabilities a whole (not streamed) response carries: the echoed
    // prompts' (checked alone above) and the generated ones.
    let mut output_tokens = match (req.echo, req.logprobs) {
        (true, Some(_)) => prompts
            .iter()
            .map(Vec::len)
            .sum::<usize>()
            .saturating_mul(n),
        _ => 0,
    };
    for (pi, prompt) in prompts.iter().enumerate() {
        let mut params = base.clone();
        params.max_tokens = max_tokens(
            f.max_tokens,
            "max_tokens",
            (!f.no_token_limit).then_some(16),
            prompt.len(),
            model.max_model_len,
            "prompt",
            req.echo,
        )?;
        min_tokens_within_limit(&params)?;
        params.logprobs = req.logprobs.map(|l| l as usize);
        if let (false, Some(top)) = (f.stream, params.logprobs) {
            output_tokens = output_tokens.saturating_add(n.saturating_mul(params.max_tokens));
            limits.check_output_logprobs("logprobs", output_tokens, top)?;
        }
        for i in 0..n {
            let p = choice_params(&params, i);
            let prompt_logprobs = if req.echo {
                req.logprobs.map(|l| l as usize)
            } else {
                None
            };
            specs.push(ChoiceSpec {
                index: pi * n + i,
                prompt: prompt.clone(),
                params: p,
                prompt_logprobs,
                cache_salt: salt.clone(),
            });
        }
    }
    let prompt_tokens: usize = prompts.iter().map(|p| p.len()).sum();
    let sub = submit(&state, permit, &model, specs)?;
    let tok = model.engine.tokenizer();
    // Per prompt its echo and, with log-probabilities, its tokens' offsets in it.
    let mut echo_offsets = vec![];
    if req.echo {
        echo_texts.resize(prompts.len(), None);
        for ((t, p), at) in echo_texts.iter_mut().zip(&prompts).zip(aligned) {
            let text = t.get_or_insert_with(|| tok.decode(p, false).unwrap_or_default());
            if req.logprobs.is_some() {
                echo_offsets.push(echo_text_offsets(tok, p, at, text));
            }
        }
    }
    let echo_texts: Vec<String> = echo_texts.into_iter().flatten().collect();
    let id = new_id("cmpl");
    let created = now_secs();
    if f.stream {
        let include_usage = StreamOptions::usage(f.stream_options.as_ref());
        let fmt = CompletionChunks {
            id,
            created,
            model: req.model.clone(),
            tok: model.engine.shared_tokenizer(),
            logprobs: req.logprobs.is_some(),
            echo_texts,
            echo_offsets,
            prompts,
            n,
            offsets: Default::default(),
        };
        return Ok(stream(sub, 0, Box::new(fmt), include_usage, prompt_tokens, n).into_response());
    }
    let results = collect(sub, 0).await?;
    let mut choices = vec![];
    let mut completion_tokens = 0;
    for r in &results {
        completion_tokens += r.usage.completion_tokens;
        let prompt = &prompts[r.index / n];
        let (mut text, mut echoed): (String, Vec<(u32, Option<&TokenLogprob>)>) =
            (String::new(), vec![]);
        if req.echo {
            text += &echo_texts[r.index / n];
            if let Some(lps) = &r.prompt_logprobs {
                echoed.push((prompt[0], None));
                echoed.extend(
                    prompt[1..]
                        .iter()
                        .zip(lps.iter())
                        .map(|(&t, l)| (t, Some(l))),
                );
            }
        }
        let generated: Vec<(u32, Option<&TokenLogprob>)> = r
            .tokens
            .iter()
            .zip(r.logprobs.iter())
            .map(|(&t, l)| (t, Some(l)))
            .collect();
        let logprobs = if req.logprobs.is_some() {
            // The echoed tokens' offsets point into the echoed text, the generated tokens'
            // go on from its end (the prompt's tokens may spell more, e.g. a BOS token).
            let mut v = completion_logprobs(tok, &echoed, &mut TextOffset::at(0));
            if !echoed.is_empty() {
                v["text_offset"] = json!(echo_offsets[r.index / n]);
            }
            let mut at = TextOffset::at(text.chars().count());
            let g = completion_logprobs(tok, &generated, &mut at);
            for k in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
                let more = g[k].as_array().cloned().unwrap_or_default();
                v[k].as_array_mut().expect("an array").extend(more);
            }
            v
        } else {
            Value::Null
        };
        text += &r.text;
        choices.push(json!({"index": r.index, "text": text, "logprobs": logprobs,
            "finish_reason": finish_str(r.finish),
            "stop_reason": stop_reason_json(r.stop_reason.as_ref())}));
    }
    let mut cached = CachedPrompt::new(n);
    for r in &results {
        cached.record(r.index, r.usage.cached_tokens);
    }
    let cached_tokens = cached.total();
    let usage = Usage {
        prompt_tokens,
        completion_tokens,
        cached_tokens,
    };
    Ok(axum::Json(json!({
        "id": id, "object": "text_completion", "created": created, "model": req.model,
        "choices": choices, "usage": usage_json(&usage), "system_fingerprint": null,
    }))
    .into_response())
}

/// A text prompt's ids (`validate::encode_prompt`) and, with `starts` (an echo with
/// log-probabilities, no infill suffix), where each token starts in the text: the offsets
/// its echo reports, from this one encoding.
fn encode_text(
    tok: &Tokenizer,
    text: &str,
    suffix: Option<&str>,
    starts: bool,
    special: bool,
) -> Result<(Vec<u32>, Option<Vec<usize>>), ApiError> {
    if starts && suffix.is_none() {
        let (ids, at) = tok
            .encode_with_starts(text, special)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        return Ok((ids, Some(at)));
    }
    Ok((encode_prompt(tok, text, suffix, special)?, None))
}

struct CompletionChunks {
    id: String,
    created: u64,
    model: String,
    tok: Arc<Tokenizer>,
    logprobs: bool,
    /// Per prompt, its `echo` text (empty without `echo`).
    echo_texts: Vec<String>,
    /// Per prompt, its tokens' `text_offset`s in its echo (empty without `echo` and
    /// `logprobs`).
    echo_offsets: Vec<Vec<usize>>,
    prompts: Vec<Vec<u32>>,
    n: usize,
    /// Per choice whose echo is sent (or not wanted): where its next token's `text_offset`
    /// starts.
    offsets: std::collections::HashMap<usize, TextOffset>,
}

impl CompletionChunks {
    fn chunk(&self, choices: Value) -> Value {
        json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model, "choices": choices})
    }

    /// The echo chunk of choice `index` (with its prompt log-probabilities when they came),
    /// once: before its first token, whether or not prompt log-probabilities arrive.
    fn echo(&mut self, index: usize, lps: Option<&[TokenLogprob]>) -> Option<Value> {
        if self.offsets.contains_key(&index) {
            return None;
        }
        let Some(text) = self.echo_texts.get(index / self.n) else {
            self.offsets.insert(index, TextOffset::at(0));
            return None;
        };
        let logprobs = match lps {
            Some(lps) if self.logprobs => {
                let prompt = &self.prompts[index / self.n];
                let entries: Vec<(u32, Option<&TokenLogprob>)> = std::iter::once((prompt[0], None))
                    .chain(prompt[1..].iter().zip(lps).map(|(&t, l)| (t, Some(l))))
                    .collect();
                let mut v = completion_logprobs(&self.tok, &entries, &mut TextOffset::at(0));
                v["text_offset"] = json!(self.echo_offsets[index / self.n]);
                v
            }
            _ => Value::Null,
        };
        let c = self.chunk(
            json!([{"index": index, "text": text, "logprobs": logprobs, "finish_reason": null}]),
        );
        // The generated tokens count from the echoed text (its tokens may spell more).
        self.offsets
            .insert(index, TextOffset::at(text.chars().count()));
        Some(c)
    }
}

impl ChunkFormat for CompletionChunks {
    fn opening(&self, _choices: &[usize]) -> Vec<Value> {
        // The echo waits for the prompt log-probabilities (`prompt_logprobs`) or the first
        // token, whichever comes first.
        vec![]
    }
    fn prompt_logprobs(&mut self, index: usize, lps: &[TokenLogprob]) -> Option<Value> {
        self.echo(index, Some(lps))
    }
    fn token(&mut self, index: usize, text: &str, logprob: Option<&TokenLogprob>) -> Vec<Value> {
        let mut out: Vec<Value> = self.echo(index, None).into_iter().collect();
        if text.is_empty() && !self.logprobs {
            return out;
        }
        let lp = match logprob {
            Some(l) if self.logprobs => {
                let at = self.offsets.entry(index).or_default();
                completion_logprobs(&self.tok, &[(l.token, Some(l))], at)
            }
            _ => Value::Null,
        };
        out.push(
            self.chunk(
                json!([{"index": index, "text": text, "logprobs": lp, "finish_reason": null}]),
            ),
        );
        out
    }
    fn finish(
        &mut self,
        index: usize,
        reason: FinishReason,
        stop_reason: Option<&StopReason>,
    ) -> Vec<Value> {
        let mut out: Vec<Value> = self.echo(index, None).into_iter().collect();
        out.push(
            self.chunk(json!([{"index": index, "text": "", "logprobs": null,
            "finish_reason": finish_str(reason), "stop_reason": stop_reason_json(stop_reason)}])),
        );
        out
    }
    fn usage(&self, usage: &Usage) -> Value {
        let mut c = self.chunk(json!([]));
        c["usage"] = usage_json(usage);
        c
    }
}
