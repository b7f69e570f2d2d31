//! OpenAI request bodies as they arrive, and the parse step that turns a body into one of
//! them with errors that name the offending field.

use crate::error::ApiError;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::HashMap;

/// The body as JSON: invalid UTF-8, an empty body and malformed JSON are 400s.
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("The body is not valid UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(
            "The request body is empty; expected a JSON object.",
        ));
    }
    serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("The body is not valid JSON: {e}")))
}

/// A typed view of the JSON; a wrong type or missing field is a 400 naming the field.
pub fn from_value<T: DeserializeOwned>(v: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut err = ApiError::bad_request(if path == "." {
            format!("Invalid request: {inner}")
        } else {
            format!("Invalid value for `{path}`: {inner}")
        });
        if path != "." {
            err.param = Some(path);
        }
        err
    })
}

pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    from_value(&parse_json(body)?)
}

/// Chat and completion bodies: the endpoint's own fields, then the shared sampling fields
/// read from the same JSON (kept apart so errors name the field).
pub fn parse_with_sampling<T: DeserializeOwned>(
    body: &[u8],
) -> Result<(T, SamplingFields), ApiError> {
    let v = parse_json(body)?;
    if !v.is_object() {
        return Err(ApiError::bad_request("The body must be a JSON object."));
    }
    let sampling: SamplingFields = from_value(&v)?;
    Ok((from_value(&v)?, sampling.with_llama_cpp_names()))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn as_slice(&self) -> &[String] {
        match self {
            StopSpec::One(s) => std::slice::from_ref(s),
            StopSpec::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    /// An assistant part of type `refusal` (OpenAI's: a model's refusal sent back in the
    /// history).
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant message's tool calls (checked by `tools::template_messages`).
    #[serde(default)]
    pub tool_calls: Option<serde_json::Value>,
    /// A `tool` message: the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// An earlier assistant turn's thinking, as the server answered it (`reasoning_content`,
    /// or current vLLM's `reasoning`): templates that show it again (Qwen3's, after the last
    /// user turn) get it back. Read leniently: what is not a string is left out, as before
    /// these were read.
    #[serde(default)]
    pub reasoning_content: Option<serde_json::Value>,
    #[serde(default)]
    pub reasoning: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default, deserialize_with = "null_is_false")]
    pub include_usage: bool,
    /// vLLM's: with `include_usage`, every chunk carries the usage so far.
    #[serde(default, deserialize_with = "null_is_false")]
    pub continuous_usage_stats: bool,
}

impl StreamOptions {
    /// What usage a stream with these options reports.
    pub fn usage(options: Option<&StreamOptions>) -> StreamUsage {
        match options {
            Some(o) if o.include_usage && o.continuous_usage_stats => StreamUsage::EveryChunk,
            Some(o) if o.include_usage => StreamUsage::AtTheEnd,
            _ => StreamUsage::None,
        }
    }
}

/// Usage in a stream: none, a last chunk of it (OpenAI's `include_usage`), or that and the
/// usage so far on every chunk (vLLM's `continuous_usage_stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamUsage {
    None,
    AtTheEnd,
    EveryChunk,
}

/// Sampling and stopping fields shared by both endpoints (OpenAI's plus vLLM's extensions).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct SamplingFields {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<u32>,
    pub stop: Option<StopSpec>,
    #[serde(default, deserialize_with = "null_is_false")]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Any 64-bit integer, as OpenAI and vLLM take it (llama.cpp's clients send −1).
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub user: Option<String>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub min_tokens: Option<u32>,
    #[serde(default, deserialize_with = "null_is_false")]
    pub ignore_eos: bool,
    pub stop_token_ids: Option<Vec<u32>>,
    /// vLLM's: the matched stop string (or stop token's text) ends the output.
    #[serde(default, deserialize_with = "null_is_false")]
    pub include_stop_str_in_output: bool,
    pub skip_special_tokens: Option<bool>,
    /// Structured output (read by `structured::requested`): OpenAI's `response_format`,
    /// vLLM's `structured_outputs` and its older `guided_*` names.
    pub response_format: Option<serde_json::Value>,
    pub structured_outputs: Option<serde_json::Value>,
    pub guided_json: Option<serde_json::Value>,
    pub guided_regex: Option<serde_json::Value>,
    pub guided_choice: Option<serde_json::Value>,
    pub guided_grammar: Option<serde_json::Value>,
    /// vLLM's and llama.cpp's extensions that would change the output and are not
    /// implemented: refused by name (`validate::unimplemented_extensions`), where serde
    /// would drop them unread and answer as if they were not sent.
    pub grammar: Option<serde_json::Value>,
    pub allowed_token_ids: Option<serde_json::Value>,
    pub bad_words: Option<serde_json::Value>,
    pub prompt_logprobs: Option<serde_json::Value>,
    pub truncate_prompt_tokens: Option<serde_json::Value>,
    pub use_beam_search: Option<serde_json::Value>,
    pub n_probs: Option<serde_json::Value>,
    pub typical_p: Option<serde_json::Value>,
    pub tfs_z: Option<serde_json::Value>,
    pub mirostat: Option<serde_json::Value>,
    pub dry_multiplier: Option<serde_json::Value>,
    pub xtc_probability: Option<serde_json::Value>,
    pub return_tokens_as_token_ids: Option<serde_json::Value>,
    pub detokenize: Option<serde_json::Value>,
    /// llama.cpp's names of `max_tokens` (−1: no limit), `repetition_penalty` and
    /// `guided_json` (a schema at the top level): taken where the OpenAI/vLLM name is not
    /// sent ([`SamplingFields::with_llama_cpp_names`]). Separate fields, not serde aliases: a
    /// client that sends both names (as one written for several servers does) would get a
    /// "duplicate field" error.
    pub n_predict: Option<i64>,
    pub repeat_penalty: Option<f32>,
    pub json_schema: Option<serde_json::Value>,
    /// Set from llama.cpp's `n_predict: -1` (no `max_tokens`): the rest of the context,
    /// where an endpoint's own default is shorter (`/v1/completions`' 16).
    #[serde(skip)]
    pub no_token_limit: bool,
}

impl SamplingFields {
    /// The llama.cpp names moved to the fields camelid reads, where those are not set.
    pub fn with_llama_cpp_names(mut self) -> Self {
        let n_predict = self.n_predict.take();
        if self.max_tokens.is_none() {
            match n_predict {
                Some(n) if n >= 0 => self.max_tokens = Some(u32::try_from(n).unwrap_or(u32::MAX)),
                Some(_) => self.no_token_limit = true,
                None => {}
            }
        }
        self.repetition_penalty = self.repetition_penalty.or(self.repeat_penalty.take());
        let schema = self.json_schema.take().filter(|v| !v.is_null());
        self.guided_json = self.guided_json.or(schema);
        self
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// Left out or empty: the one model served (as vLLM takes it); answered with its name.
    #[serde(default)]
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub max_completion_tokens: Option<u32>,
    #[serde(default, deserialize_with = "null_is_false")]
    pub logprobs: bool,
    pub top_logprobs: Option<u32>,
    /// Tool calling (checked by `tools::ToolPlan::from_request`).
    pub tools: Option<serde_json::Value>,
    pub tool_choice: Option<serde_json::Value>,
    pub parallel_tool_calls: Option<bool>,
    /// The legacy function calling: refused (400), `tools` replaces it.
    pub functions: Option<serde_json::Value>,
    pub function_call: Option<serde_json::Value>,
    /// vLLM's prefix-cache partition (checked by `validate::cache_salt`).
    pub cache_salt: Option<String>,
    /// Extra variables for the model's jinja chat template (vLLM's name), e.g. Qwen3's
    /// `{"enable_thinking": false}`.
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// OpenAI's thinking effort (`chat::template_kwargs`), as the template reads it.
    pub reasoning_effort: Option<String>,
    /// vLLM's extensions that change the prompt and are not implemented: refused by name
    /// (`validate::unimplemented_chat`).
    pub chat_template: Option<serde_json::Value>,
    pub echo: Option<serde_json::Value>,
    pub add_special_tokens: Option<serde_json::Value>,
    /// vLLM's: end the prompt with the template's generation prompt (default true), or go
    /// on with the final assistant message (`chat::prompt_end`).
    pub add_generation_prompt: Option<bool>,
    #[serde(default, deserialize_with = "null_is_false")]
    pub continue_final_message: bool,
    /// Whether a leading `<think>` block is split from the answer (`None`: the server's
    /// `--reasoning-parser`). Not a client field: Ollama's `think` sets it.
    #[serde(skip)]
    pub split_reasoning: Option<bool>,
    /// An output limit that stops at the context instead of refusing a prompt it does not
    /// fit beside (Ollama's `num_predict`). Not a client field.
    #[serde(skip)]
    pub max_tokens_cap: Option<u32>,
    /// A conversation longer than the context loses its oldest turns until it fits (Ollama's
    /// chat, its `truncate`); OpenAI's and vLLM's refuse it. Not a client field.
    #[serde(skip)]
    pub drop_oldest_to_fit: bool,
    /// With `drop_oldest_to_fit`: a conversation that leaves the answer less room than it
    /// asks (up to a quarter of the context) is cut too, not only one past the context (the
    /// arena: a side with less room left would answer shorter). Not a client field.
    #[serde(skip)]
    pub keep_answer_room: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// Left out or empty: the one model served (as vLLM takes it); answered with its name.
    #[serde(default)]
    pub model: String,
    pub prompt: Prompt,
    #[serde(default, deserialize_with = "null_is_false")]
    pub echo: bool,
    pub logprobs: Option<u32>,
    /// Insertion (text after the completion): not implemented.
    pub suffix: Option<serde_json::Value>,
    /// Generate this many and return the best `n`: not implemented beyond `best_of == n`.
    pub best_of: Option<u32>,
    /// vLLM's: whether the tokenizer adds its special tokens (BOS) to a text prompt
    /// (default true).
    pub add_special_tokens: Option<bool>,
    /// vLLM's prefix-cache partition (checked by `validate::cache_salt`).
    pub cache_salt: Option<String>,
}

/// `/tokenize`'s body: a chat conversation (`messages`) or a text (`prompt`), vLLM's two forms.
#[derive(Debug, Clone)]
pub enum TokenizeRequest {
    Chat(TokenizeChat),
    Text(TokenizeText),
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeChat {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub add_generation_prompt: Option<bool>,
    #[serde(default, deserialize_with = "null_is_false")]
    pub continue_final_message: bool,
    /// Extra variables for the model's jinja template (vLLM's name), as in a chat.
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    pub reasoning_effort: Option<String>,
    /// Function definitions the template shows the model, as a chat's `tools`.
    pub tools: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeText {
    pub model: Option<String>,
    pub prompt: String,
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
}

impl TokenizeRequest {
    /// The form is told by its field (`messages` or `prompt`, not both), so a wrong type
    /// is a 400 naming the field rather than "matched no form".
    pub fn parse(body: &[u8]) -> Result<TokenizeRequest, ApiError> {
        let v = parse_json(body)?;
        let Some(o) = v.as_object() else {
            return Err(ApiError::bad_request("The body must be a JSON object."));
        };
        match (o.contains_key("messages"), o.contains_key("prompt")) {
            (true, true) => Err(ApiError::invalid_param(
                "prompt",
                "send `prompt` (a text) or `messages` (a chat), not both",
            )),
            (true, false) => Ok(TokenizeRequest::Chat(from_value(&v)?)),
            (false, true) => Ok(TokenizeRequest::Text(from_value(&v)?)),
            (false, false) => Err(ApiError::invalid_param(
                "prompt",
                "`/tokenize` needs `prompt` (a text) or `messages` (a chat)",
            )),
        }
    }
}

fn yes() -> bool {
    true
}

/// An optional flag sent as `null` is off, as when it is left out: OpenAI takes `null` for
/// every optional field, and typed SDKs (and `logprobs=None` in Python) write it out.
fn null_is_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}
