//! Request fields → engine parameters, with OpenAI's limits and error wording (output
//! constraints are `structured`'s).

use crate::error::ApiError;
use crate::limits::RequestLimits;
use crate::openai::{ChatRequest, CompletionRequest, SamplingFields};
use camelid_model::decode::GenerationParams;
use camelid_model::sampling_ranges::{
    FieldRange, MIN_P, PENALTY, REPETITION_PENALTY, TEMPERATURE, TOP_P,
};
use camelid_model::text::stream::StopSet;
use camelid_model::{SamplingDefaults, SamplingParams};
use serde_json::Value;
use std::sync::Arc;

pub const MAX_TOP_LOGPROBS: u32 = 20;

/// `min_tokens` within the output limit, as vLLM checks it: a floor above the limit would
/// hold the end of text off to the limit and still stop there, cut.
pub fn min_tokens_within_limit(params: &GenerationParams) -> Result<(), ApiError> {
    if params.min_tokens > params.max_tokens {
        return Err(ApiError::invalid_param(
            "min_tokens",
            format!(
                "`min_tokens` ({}) must be at most the output limit ({})",
                params.min_tokens, params.max_tokens
            ),
        ));
    }
    Ok(())
}

/// `top_logprobs` (or completions' `logprobs`, named by `param`) at most [`MAX_TOP_LOGPROBS`].
pub fn check_top_logprobs(param: &str, t: Option<u32>) -> Result<(), ApiError> {
    match t {
        Some(t) if t > MAX_TOP_LOGPROBS => Err(ApiError::invalid_param(
            param,
            format!("`{param}` must be at most {MAX_TOP_LOGPROBS}, got {t}"),
        )),
        _ => Ok(()),
    }
}

/// The sampling of a request's `i`-th choice: its seed moved by `i`, so `n` seeded choices
/// differ from each other and each is the same on every run.
pub fn choice_params(params: &GenerationParams, i: usize) -> GenerationParams {
    let mut p = params.clone();
    p.sampling.seed = p.sampling.seed.map(|s| s.wrapping_add(i as u64));
    p
}

fn not_implemented(param: &str, what: &str) -> ApiError {
    ApiError::invalid_param(
        param,
        format!("`{param}` is not supported by this server: {what}"),
    )
}

/// Whether a list-valued field is absent, null or empty.
fn no_entries(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    }
}

/// Whether a choice field is absent, null or one of `off`.
fn off(v: &Option<Value>, off: &[&str]) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => off.contains(&s.as_str()),
        Some(_) => false,
    }
}

/// Arena battles answer in text: tools, a tool choice and tool messages are refused (a
/// battle's conversation is text both models read the same way).
pub fn no_tools(req: &ChatRequest) -> Result<(), ApiError> {
    const TEXT_ONLY: &str = "arena battles answer in text; tool calling is not offered";
    for (name, v) in [("tools", &req.tools), ("functions", &req.functions)] {
        if !no_entries(v) {
            return Err(ApiError::invalid_param(
                name,
                format!("`{name}`: {TEXT_ONLY}"),
            ));
        }
    }
    for (name, v) in [
        ("tool_choice", &req.tool_choice),
        ("function_call", &req.function_call),
    ] {
        if !off(v, &["none"]) {
            return Err(ApiError::invalid_param(
                name,
                format!("`{name}`: {TEXT_ONLY}"),
            ));
        }
    }
    if let Some(i) = req
        .messages
        .iter()
        .position(|m| m.role == "tool" || m.tool_calls.as_ref().is_some_and(|c| !c.is_null()))
    {
        return Err(ApiError::invalid_param(
            &format!("messages[{i}]"),
            format!("tool messages and tool calls: {TEXT_ONLY}"),
        ));
    }
    Ok(())
}

/// vLLM's and llama.cpp's extensions that change the output and are not implemented: 400
/// naming the field (and what does the job here); their "off" values (null, false, 0 for
/// `n_probs`, an empty list or string) pass.
pub fn unimplemented_extensions(f: &SamplingFields) -> Result<(), ApiError> {
    let set = |v: &Option<Value>| {
        // llama.cpp's "no grammar" is an empty string.
        if v.as_ref().and_then(Value::as_str) == Some("") {
            return false;
        }
        !no_entries(v)
            && !matches!(v, Some(Value::Bool(false)))
            && v.as_ref().and_then(Value::as_f64) != Some(0.0)
    };
    let fields = [
        (&f.grammar, "grammar", "llama.cpp's GBNF grammars are not read; `guided_grammar` takes a Lark grammar, `response_format` a JSON schema"),
        (&f.allowed_token_ids, "allowed_token_ids", "use `logit_bias` or `guided_choice`"),
        (&f.bad_words, "bad_words", "use `logit_bias`"),
        (&f.prompt_logprobs, "prompt_logprobs", "`/v1/completions` with `echo` and `logprobs` scores a prompt"),
        (&f.truncate_prompt_tokens, "truncate_prompt_tokens", "a prompt past the context is refused"),
        (&f.use_beam_search, "use_beam_search", "sampling only"),
        (&f.n_probs, "n_probs", "use `logprobs` (and `top_logprobs`)"),
        (&f.mirostat, "mirostat", "use `temperature`, `top_p`, `min_p`"),
        (&f.dry_multiplier, "dry_multiplier", "use `repetition_penalty` or `frequency_penalty`"),
        (&f.xtc_probability, "xtc_probability", "use `temperature`, `top_p`, `min_p`"),
        (&f.return_tokens_as_token_ids, "return_tokens_as_token_ids", "`logprobs` name each token's text and bytes"),
    ];
    if let Some((_, name, what)) = fields.into_iter().find(|(v, _, _)| set(v)) {
        return Err(not_implemented(name, what));
    }
    // Those whose "off" is 1 (or true): any other value changes the output.
    let on = |v: &Option<Value>, off: Value| {
        v.as_ref().is_some_and(|v| {
            let same = *v == off || (v.is_number() && v.as_f64() == off.as_f64());
            !v.is_null() && !same
        })
    };
    let ones = [
        (
            &f.typical_p,
            "typical_p",
            Value::from(1.0),
            "use `top_p` or `min_p`",
        ),
        (
            &f.tfs_z,
            "tfs_z",
            Value::from(1.0),
            "use `top_p` or `min_p`",
        ),
        (
            &f.detokenize,
            "detokenize",
            Value::Bool(true),
            "answers are text; `/tokenize` gives ids",
        ),
    ];
    match ones.into_iter().find(|(v, _, off, _)| on(v, off.clone())) {
        Some((_, name, _, what)) => Err(not_implemented(name, what)),
        None => Ok(()),
    }
}

/// A chat's fields of vLLM that change its prompt and are not implemented: 400 naming the
/// field; their defaults (null, false) pass.
pub fn unimplemented_chat(req: &ChatRequest) -> Result<(), ApiError> {
    let set = |v: &Option<Value>| !matches!(v, None | Some(Value::Null) | Some(Value::Bool(false)));
    if set(&req.chat_template) {
        return Err(not_implemented(
            "chat_template",
            "the model's own template renders the chat (`chat_template_kwargs` passes it variables)",
        ));
    }
    if set(&req.echo) {
        return Err(not_implemented(
            "echo",
            "`/v1/completions` with `echo` returns the prompt",
        ));
    }
    if set(&req.add_special_tokens) {
        return Err(not_implemented(
            "add_special_tokens",
            "the chat template writes the special tokens",
        ));
    }
    Ok(())
}

/// The completions endpoint's fields that are not implemented (or not of their type): 400
/// naming the field, never silently ignored; their "off" values pass.
pub fn unimplemented_completion(req: &CompletionRequest, n: u32) -> Result<(), ApiError> {
    // A text suffix is fill-in-the-middle (`routes::completions`).
    if !matches!(
        &req.suffix,
        None | Some(Value::Null) | Some(Value::String(_))
    ) {
        return Err(ApiError::invalid_param(
            "suffix",
            "`suffix` must be a string",
        ));
    }
    if req.best_of.is_some_and(|b| b != n) {
        return Err(not_implemented(
            "best_of",
            "only `best_of` equal to `n` (every sequence generated is returned)",
        ));
    }
    Ok(())
}
/// Longest `cache_salt`, in bytes: room for any tenant id or key digest.
pub const MAX_CACHE_SALT_BYTES: usize = 256;

fn range(param: &str, v: Option<f32>, r: FieldRange) -> Result<(), ApiError> {
    match v {
        Some(x) if !r.contains(x) => Err(ApiError::invalid_param(
            param,
            format!("`{param}` must be in {}, got {x}", r.describe()),
        )),
        _ => Ok(()),
    }
}

/// Checks every sampling field (first the sizes `limits` caps, so nothing is copied from an
/// oversized list) and builds the engine's parameters, once per request: its choices share
/// the stop strings. `max_tokens` is set by the caller once the prompt length is known.
pub fn generation_params(
    f: &SamplingFields,
    defaults: &SamplingDefaults,
    limits: &RequestLimits,
    vocab_size: usize,
    stop_token_ids: &[u32],
    template_stops: &[String],
) -> Result<GenerationParams, ApiError> {
    unimplemented_extensions(f)?;
    limits.check_stops(
        f.stop.as_ref().map_or(&[], |s| s.as_slice()),
        f.stop_token_ids.as_ref().map_or(0, Vec::len),
        f.logit_bias.as_ref().map_or(0, |b| b.len()),
    )?;
    if f.stream_options.is_some() && !f.stream {
        // OpenAI's and vLLM's 400: the options say what to stream.
        return Err(ApiError::invalid_param(
            "stream_options",
            "`stream_options` is only allowed when `stream` is true",
        ));
    }
    range("temperature", f.temperature, TEMPERATURE)?;
    range("top_p", f.top_p, TOP_P)?;
    range("presence_penalty", f.presence_penalty, PENALTY)?;
    range("frequency_penalty", f.frequency_penalty, PENALTY)?;
    range("min_p", f.min_p, MIN_P)?;
    range(
        "repetition_penalty",
        f.repetition_penalty,
        REPETITION_PENALTY,
    )?;
    // Up to the sequences one request may start (`--max-seqs-per-request`): pass@k
    // harnesses ask for n = 20–100 (OpenAI allows 128).
    let n = f.n.unwrap_or(1);
    if n == 0 || n as usize > limits.max_sequences {
        return Err(ApiError::invalid_param(
            "n",
            format!(
                "`n` must be between 1 and {}, got {n}",
                limits.max_sequences
            ),
        ));
    }
    let top_k = match f.top_k.or(defaults.top_k) {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid_param(
                "top_k",
                format!("`top_k` must be -1 (off) or positive, got {k}"),
            ))
        }
    };
    let mut logit_bias = std::collections::HashMap::new();
    for (k, &v) in f.logit_bias.iter().flatten() {
        let id: u32 = k.parse().map_err(|_| {
            ApiError::invalid_param(
                "logit_bias",
                format!("logit_bias key {k:?} is not a token id"),
            )
        })?;
        if id as usize >= vocab_size {
            return Err(ApiError::invalid_param(
                "logit_bias",
                format!("token id {id} is outside the vocabulary ({vocab_size})"),
            ));
        }
        if !(-100.0..=100.0).contains(&v) {
            return Err(ApiError::invalid_param(
                "logit_bias",
                format!("logit_bias values must be in [-100, 100], got {v}"),
            ));
        }
        logit_bias.insert(id, v);
    }
    if let Some(bad) = f
        .stop_token_ids
        .iter()
        .flatten()
        .find(|&&t| t as usize >= vocab_size)
    {
        return Err(ApiError::invalid_param(
            "stop_token_ids",
            format!("token id {bad} is outside the vocabulary"),
        ));
    }
    // A field the request leaves out: the model's recommended value, else the neutral one.
    let sampling = SamplingParams {
        temperature: f.temperature.or(defaults.temperature).unwrap_or(1.0),
        top_p: f.top_p.or(defaults.top_p).unwrap_or(1.0),
        top_k,
        min_p: f.min_p.or(defaults.min_p).unwrap_or(0.0),
        repetition_penalty: f
            .repetition_penalty
            .or(defaults.repetition_penalty)
            .unwrap_or(1.0),
        presence_penalty: f.presence_penalty.unwrap_or(0.0),
        frequency_penalty: f.frequency_penalty.unwrap_or(0.0),
        logit_bias,
        // -1 asks for a random seed, as in vLLM and llama.cpp (whose clients send it by
        // default); any other seed, negative too, seeds the generator with its bits.
        seed: f.seed.filter(|&s| s != -1).map(|s| s as u64),
    };
    let mut p = GenerationParams::new(0, sampling);
    let stops = f.stop.as_ref().map_or(&[][..], |s| s.as_slice());
    let mut stop_set = StopSet::client_then_server(stops, template_stops);
    stop_set.include_in_output = f.include_stop_str_in_output;
    p.stop_strings = Arc::new(stop_set);
    p.stop_token_ids = stop_token_ids
        .iter()
        .chain(f.stop_token_ids.iter().flatten())
        .copied()
        .collect();
    // What `ignore_eos` takes away: the model's end tokens the client did not also list (vLLM
    // stops on a listed one even with ignore_eos).
    let listed = f.stop_token_ids.as_deref().unwrap_or_default();
    p.eos_token_ids = stop_token_ids
        .iter()
        .filter(|t| !(f.ignore_eos && listed.contains(t)))
        .copied()
        .collect();
    p.ignore_eos = f.ignore_eos;
    p.min_tokens = f.min_tokens.unwrap_or(0) as usize;
    p.skip_special_tokens = f.skip_special_tokens.unwrap_or(true);
    Ok(p)
}

/// `cache_salt` (vLLM's): requests share cached prompt prefixes only under the same salt. A
/// salt, when given, is a non-empty string of at most [`MAX_CACHE_SALT_BYTES`]. A client's
/// salt is put in its own namespace, so no client can name the partition of an arena battle
/// ([`battle_cache_salt`]).
pub fn cache_salt(salt: Option<&str>) -> Result<Option<String>, ApiError> {
    match salt {
        None => Ok(None),
        Some("") => Err(ApiError::invalid_param(
            "cache_salt",
            "`cache_salt` must be a non-empty string when given",
        )),
        Some(s) if s.len() > MAX_CACHE_SALT_BYTES => Err(ApiError::invalid_param(
            "cache_salt",
            format!(
                "`cache_salt` must be at most {MAX_CACHE_SALT_BYTES} bytes, got {}",
                s.len()
            ),
        )),
        Some(s) => Ok(Some(format!("client:{s}"))),
    }
}

/// The prefix-cache partition of an arena battle: its turns share cached prefixes with each
/// other and with nothing else, so no request can learn from its cache hits which model
/// answered a battle's prompt, nor a battle from another request's.
pub fn battle_cache_salt(battle_id: &str) -> String {
    format!("battle:{battle_id}")
}

/// OpenAI's wording and code when prompt + completion do not fit; `param` is the field to
/// change (the output limit, or the prompt when it alone fills the context).
pub fn context_error(
    context: usize,
    prompt: usize,
    max_tokens: usize,
    what: &str,
    param: &str,
) -> ApiError {
    ApiError {
        code: Some("context_length_exceeded"),
        ..ApiError::invalid_param(
            param,
            format!(
                "This model's maximum context length is {context} tokens. However, you requested {} tokens ({prompt} in the {what}, {max_tokens} in the completion). Please reduce the length of the {what} or completion.",
                prompt + max_tokens
            ),
        )
    }
}

/// Resolves the output limit (`requested`, sent as `field`: `max_tokens` or
/// `max_completion_tokens`) against the prompt length and the context length.
#[allow(clippy::too_many_arguments)]
pub fn max_tokens(
    requested: Option<u32>,
    field: &str,
    default: Option<usize>,
    prompt: usize,
    context: usize,
    what: &str,
    allow_zero: bool,
) -> Result<usize, ApiError> {
    if let Some(m) = requested {
        if m == 0 && !allow_zero {
            return Err(ApiError::invalid_param(
                field,
                format!("`{field}` must be at least 1"),
            ));
        }
    }
    if prompt >= context && requested != Some(0) {
        return Err(context_error(
            context,
            prompt,
            requested.unwrap_or(1) as usize,
            what,
            what,
        ));
    }
    let want = match requested {
        Some(m) => m as usize,
        None => default
            .unwrap_or(context - prompt)
            .min(context.saturating_sub(prompt)),
    };
    if prompt + want > context {
        // Nothing to generate (scoring a prompt): the prompt alone is too long.
        let param = if want == 0 { what } else { field };
        return Err(context_error(context, prompt, want, what, param));
    }
    Ok(want)
}

/// A completion's fill-in-the-middle `suffix` (non-empty text), checked against the model
/// and the request: the model needs FIM tokens, the prompt must be text, and `echo` would
/// give back a prompt the client did not write.
pub fn infill_suffix(
    suffix: Option<&Value>,
    model: &crate::state::ModelEntry,
    text_prompt: bool,
    echo: bool,
) -> Result<Option<String>, ApiError> {
    let Some(s) = suffix.and_then(Value::as_str).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if model.engine.tokenizer().fim.is_none() {
        return Err(ApiError::invalid_param(
            "suffix",
            format!(
                "`{}` has no fill-in-the-middle tokens: `suffix` needs a model whose vocabulary \
                 has them (code models such as Qwen2.5-Coder, CodeLlama, StarCoder, \
                 DeepSeek-Coder, CodeGemma)",
                model.name
            ),
        ));
    }
    if !text_prompt {
        return Err(ApiError::invalid_param(
            "suffix",
            "`suffix` goes with a text `prompt`, not token ids",
        ));
    }
    if echo {
        return Err(ApiError::invalid_param(
            "echo",
            "`echo` cannot be used with `suffix`",
        ));
    }
    Ok(Some(s.to_string()))
}

/// The tokens that end a raw completion of `model`: its own stop tokens, and for an infill
/// (`suffix`) the tokens code models end a middle with too.
pub fn model_stops(model: &crate::state::ModelEntry, infill: bool) -> Vec<u32> {
    let mut stops = model.stop_token_ids.clone();
    if infill {
        for id in model.engine.tokenizer().fim_stop_ids() {
            if !stops.contains(&id) {
                stops.push(id);
            }
        }
    }
    stops
}

/// A text prompt's ids (with the BOS the tokenizer adds where `special`); with a `suffix`
/// checked by [`infill_suffix`], the fill-in-the-middle prompt around it.
pub fn encode_prompt(
    tok: &camelid_model::text::tokenizer::Tokenizer,
    text: &str,
    suffix: Option<&str>,
    special: bool,
) -> Result<Vec<u32>, ApiError> {
    let ids = match suffix {
        None => tok.encode(text, special),
        Some(s) => tok
            .encode_infill(text, s)
            .map(|ids| ids.expect("checked by infill_suffix")),
    };
    ids.map_err(|e| ApiError::bad_request(e.to_string()))
}

#[cfg(test)]
mod no_tools_tests {
    use super::*;

    fn req(v: Value) -> ChatRequest {
        crate::openai::from_value(&v).unwrap()
    }

    /// A battle's request with tools, a tool choice, a call or a tool's answer is refused,
    /// naming what carries it; `tool_choice: "none"` and `tools: []` pass.
    #[test]
    fn battles_refuse_every_form_of_tools() {
        let user = serde_json::json!({"role": "user", "content": "hi"});
        let param = |v: Value| no_tools(&req(v)).unwrap_err().param.unwrap();
        assert_eq!(
            param(serde_json::json!({"model": "", "messages": [user],
                "tools": [{"type": "function", "function": {"name": "f"}}]})),
            "tools"
        );
        assert_eq!(
            param(serde_json::json!({"model": "", "messages": [user], "tool_choice": "auto"})),
            "tool_choice"
        );
        assert_eq!(
            param(serde_json::json!({"model": "", "messages": [user,
                {"role": "tool", "tool_call_id": "c", "content": "x"}]})),
            "messages[1]"
        );
        assert_eq!(
            param(serde_json::json!({"model": "", "messages": [
                {"role": "assistant", "content": null, "tool_calls": []}, user]})),
            "messages[0]"
        );
        assert!(
            no_tools(&req(serde_json::json!({"model": "", "messages": [user],
            "tools": [], "tool_choice": "none"})))
            .is_ok()
        );
    }
}
