//! Ollama's native API as a translation onto the OpenAI path. An `/api/chat` or
//! `/api/generate` body becomes a `ChatRequest` and its `SamplingFields`, so it passes the
//! same checks and caps as `/v1/chat/completions`; this module also writes the objects
//! Ollama's clients read back (its Python and JS libraries, Open WebUI, LangChain's
//! `ChatOllama`). The handlers and the NDJSON stream are `routes::ollama`'s.
//!
//! Ollama's sampling defaults apply where `options` leaves a field out (temperature 0.8,
//! top-k 40, top-p 0.9), as its clients expect; `repeat_penalty` maps to vLLM's
//! `repetition_penalty` (over the whole sequence, not Ollama's last 64 tokens) and has no
//! default. Options that size the runtime (`num_ctx`, `num_gpu`, `num_thread`, …) are
//! ignored: camelid's are set when it starts, as are its models (no `pull`, `create`, …).

use crate::error::ApiError;
use crate::openai::{ChatMessage, ChatRequest, Content, SamplingFields, StopSpec};
use crate::state::{AppState, ModelEntry};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The Ollama API version whose fields are served (`GET /api/version`): clients gate
/// features on it.
pub const API_VERSION: &str = "0.12.0";

/// Ollama's defaults for the sampling options a request leaves out.
const DEFAULT_TEMPERATURE: f32 = 0.8;
const DEFAULT_TOP_K: i64 = 40;
const DEFAULT_TOP_P: f32 = 0.9;

/// An error as Ollama writes it: `{"error": "…"}` with the HTTP status (its clients read
/// the string).
#[derive(Debug)]
pub struct OllamaError(pub ApiError);

/// The OpenAI fields an Ollama request's `options` and `format` become ([`sampling`]), and
/// the names its client sent: an error about one of them names what the client wrote.
const OLLAMA_NAMES: [(&str, &str); 11] = [
    ("repetition_penalty", "options.repeat_penalty"),
    ("temperature", "options.temperature"),
    ("top_p", "options.top_p"),
    ("top_k", "options.top_k"),
    ("min_p", "options.min_p"),
    ("presence_penalty", "options.presence_penalty"),
    ("frequency_penalty", "options.frequency_penalty"),
    ("stop", "options.stop"),
    ("seed", "options.seed"),
    ("max_tokens", "options.num_predict"),
    ("response_format", "format"),
];

impl From<ApiError> for OllamaError {
    fn from(mut e: ApiError) -> Self {
        let named = e.param.as_deref().and_then(|p| {
            OLLAMA_NAMES
                .iter()
                .find(|(openai, _)| *openai == p)
                .map(|(_, ollama)| *ollama)
        });
        if let Some(ollama) = named {
            let openai = e.param.take().unwrap_or_default();
            e.message = e
                .message
                .replace(&format!("`{openai}`"), &format!("`{ollama}`"));
            e.param = Some(ollama.to_string());
        }
        Self(e)
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let mut r = (self.0.status, axum::Json(error_body(&self.0))).into_response();
        if let Some(s) = self.0.retry_after {
            r.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        r
    }
}

/// `{"error": message}`: a response's body, or the last line of a stream that failed.
pub fn error_body(e: &ApiError) -> Value {
    json!({"error": e.message})
}

/// The `options` a generation reads; the others are accepted and ignored.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Options {
    #[serde(default, deserialize_with = "integer")]
    pub num_predict: Option<i64>,
    pub temperature: Option<f32>,
    #[serde(default, deserialize_with = "integer")]
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    #[serde(default, deserialize_with = "integer")]
    pub seed: Option<i64>,
    pub stop: Option<Vec<String>>,
    pub repeat_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
}

/// An integer option, also as a JSON float: Ollama's `Options.FromMap` takes a float for an
/// integer field and truncates it (clients in JavaScript send `40.0` for 40).
fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.is_finite() && f.abs() < 9.2e18 => Ok(Some(f.trunc() as i64)),
            _ => Err(serde::de::Error::custom(format!(
                "{n} is not an integer an option can take"
            ))),
        },
    }
}

/// A chat message as Ollama's clients send it.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<String>,
    pub images: Option<Vec<Value>>,
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A `tool` message: the function whose result it is.
    pub tool_name: Option<String>,
    /// A `tool` message: the call it answers (LangChain's `ChatOllama` sends it).
    pub tool_call_id: Option<String>,
    /// An assistant turn's thinking, as `/api/chat` answered it: the template gets it back.
    pub thinking: Option<String>,
}

/// `{"function": {"name", "arguments": {…}}}`, with an `id` from newer clients.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolCall {
    pub id: Option<String>,
    pub function: CallFunction,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CallFunction {
    pub name: String,
    #[serde(default)]
    pub arguments: Value,
}

/// `POST /api/chat`.
#[derive(Debug, Deserialize)]
pub struct ChatBody {
    pub model: String,
    #[serde(default)]
    pub messages: Vec<Message>,
    pub tools: Option<Value>,
    pub format: Option<Value>,
    pub options: Option<Options>,
    /// How long the model stays loaded after the request (camelid keeps every model
    /// loaded): read to answer `0` with Ollama's unload reply and refuse a malformed value.
    pub keep_alive: Option<Value>,
    pub stream: Option<bool>,
    pub think: Option<Value>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    /// Whether a conversation longer than the context loses its oldest turns (Ollama's
    /// default) instead of being refused.
    pub truncate: Option<bool>,
}

/// `POST /api/generate`.
#[derive(Debug, Deserialize)]
pub struct GenerateBody {
    pub model: String,
    pub prompt: Option<String>,
    pub suffix: Option<String>,
    pub system: Option<String>,
    pub template: Option<String>,
    pub context: Option<Vec<u32>>,
    pub raw: Option<bool>,
    pub images: Option<Vec<Value>>,
    pub format: Option<Value>,
    pub options: Option<Options>,
    /// How long the model stays loaded after the request (camelid keeps every model
    /// loaded): read to answer `0` with Ollama's unload reply and refuse a malformed value.
    pub keep_alive: Option<Value>,
    pub stream: Option<bool>,
    pub think: Option<Value>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
}

/// `POST /api/embed`.
#[derive(Debug, Deserialize)]
pub struct EmbedBody {
    pub model: String,
    /// A string or strings; none (or an empty list) only loads the model, as in Ollama.
    pub input: Option<crate::openai::Prompt>,
    /// Cut inputs longer than the context (Ollama's default) instead of refusing them.
    pub truncate: Option<bool>,
    pub dimensions: Option<u64>,
}

/// `POST /api/embeddings`, Ollama's first embedding route: one prompt, the vector as the
/// model makes it (not normalized).
#[derive(Debug, Deserialize)]
pub struct LegacyEmbedBody {
    pub model: String,
    #[serde(default)]
    pub prompt: String,
}

impl GenerateBody {
    /// With a `suffix` (fill-in-the-middle: the model's FIM tokens around the prompt, no
    /// template), the fields that belong to the template are refused, not dropped.
    pub fn check_infill(&self) -> Result<(), ApiError> {
        let refused = [
            (
                "system",
                self.system.as_deref().is_some_and(|s| !s.is_empty()),
            ),
            ("raw", self.raw == Some(true)),
            ("think", self.think.as_ref().is_some_and(|t| !t.is_null())),
        ];
        match refused.iter().find(|(_, set)| *set) {
            Some((field, _)) => Err(ApiError::invalid_param(
                field,
                format!("`{field}` does not go with `suffix` (a fill-in-the-middle prompt has no template)"),
            )),
            None => Ok(()),
        }
    }

    /// `system`; an empty one is none, as Ollama reads it (older clients always send one).
    fn system(&self) -> Option<&str> {
        self.system.as_deref().filter(|s| !s.is_empty())
    }

    /// Fields camelid cannot honour: a 400 naming them, never a silently different answer.
    pub fn check_supported(&self) -> Result<(), ApiError> {
        if self.template.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid_param(
                "template",
                "`template` (a Go template) is not supported; the model's own chat template \
                 is used, or `raw: true` sends the prompt as it is",
            ));
        }
        if self.context.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(ApiError::invalid_param(
                "context",
                "`context` is not supported (camelid does not return one); send the \
                 conversation to /api/chat",
            ));
        }
        no_images(self.images.as_deref(), "images")?;
        if self.raw == Some(true) && self.system().is_some() {
            return Err(ApiError::invalid_param(
                "system",
                "`system` needs the chat template, which `raw: true` leaves out",
            ));
        }
        Ok(())
    }

    /// The prompt as a chat (`system` then the prompt as the user's message).
    pub fn chat_request(&self, model: &str) -> Result<(ChatRequest, SamplingFields), ApiError> {
        let mut messages = vec![];
        if let Some(s) = self.system() {
            messages.push(text_message("system", s));
        }
        messages.push(text_message("user", self.prompt.as_deref().unwrap_or("")));
        let req = ChatRequest {
            messages,
            ..chat_defaults(
                model,
                self.options.as_ref(),
                (self.logprobs, self.top_logprobs),
                self.think.as_ref(),
            )?
        };
        Ok((req, sampling(self.options.as_ref(), self.format.as_ref())?))
    }
}

fn text_message(role: &str, text: &str) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: Some(Content::Text(text.into())),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        reasoning_content: None,
        reasoning: None,
    }
}

fn no_images(images: Option<&[Value]>, field: &str) -> Result<(), ApiError> {
    if images.is_some_and(|i| !i.is_empty()) {
        return Err(ApiError::invalid_param(
            field,
            "images are not supported: camelid serves text models",
        ));
    }
    Ok(())
}

/// The chat request an Ollama body makes, but its messages and tools.
fn chat_defaults(
    model: &str,
    options: Option<&Options>,
    (logprobs, top_logprobs): (Option<bool>, Option<u32>),
    think: Option<&Value>,
) -> Result<ChatRequest, ApiError> {
    let kwargs = template_kwargs(think)?;
    Ok(ChatRequest {
        model: model.into(),
        messages: vec![],
        max_completion_tokens: None,
        logprobs: logprobs.unwrap_or(false),
        top_logprobs,
        max_tokens_cap: output_cap(options)?,
        tools: None,
        tool_choice: None,
        parallel_tool_calls: None,
        functions: None,
        function_call: None,
        cache_salt: None,
        // Asked about thinking, the client reads it apart (`message.thinking`); not asked,
        // the server's `--reasoning-parser` decides.
        split_reasoning: kwargs.is_some().then_some(true),
        chat_template_kwargs: kwargs,
        chat_template: None,
        echo: None,
        add_special_tokens: None,
        reasoning_effort: None,
        add_generation_prompt: None,
        continue_final_message: false,
        drop_oldest_to_fit: false,
        keep_answer_room: false,
    })
}

/// Whether the client wants the thinking back: not when it turned thinking off.
pub fn shows_thinking(think: Option<&Value>) -> bool {
    think != Some(&Value::Bool(false))
}

impl ChatBody {
    /// The OpenAI request this chat is. A conversation that ends with an assistant message
    /// (without calls) is continued from inside it, as Ollama does; one whose text is blank
    /// is left out, and the model answers a new turn (Ollama's templates leave the last
    /// assistant turn open: an empty one is the generation prompt).
    pub fn chat_request(&self, model: &str) -> Result<(ChatRequest, SamplingFields), ApiError> {
        // An empty `tool_calls` is none, as `chat_messages` reads it.
        let open_answer = self.messages.last().filter(|m| {
            m.role.eq_ignore_ascii_case("assistant")
                && m.tool_calls.as_ref().is_none_or(Vec::is_empty)
        });
        // Alone, a blank message is not dropped (nothing would be left to answer): continuing
        // it is refused, saying why.
        let blank = self.messages.len() > 1
            && open_answer.is_some_and(|m| m.content.as_deref().unwrap_or("").trim().is_empty());
        let messages = match blank {
            true => &self.messages[..self.messages.len() - 1],
            false => &self.messages[..],
        };
        let req = ChatRequest {
            messages: chat_messages(messages)?,
            tools: self.tools.clone(),
            continue_final_message: open_answer.is_some() && !blank,
            drop_oldest_to_fit: self.truncate.unwrap_or(true),
            ..chat_defaults(
                model,
                self.options.as_ref(),
                (self.logprobs, self.top_logprobs),
                self.think.as_ref(),
            )?
        };
        Ok((req, sampling(self.options.as_ref(), self.format.as_ref())?))
    }
}

/// Ollama's messages → OpenAI's. Calls get ids when the client sent none (9 letters and
/// digits, what Mistral's templates require), and each `tool` message takes the id of the
/// call it answers: its own `tool_call_id`, else the pending call of its `tool_name`, else
/// the first pending call.
pub fn chat_messages(msgs: &[Message]) -> Result<Vec<ChatMessage>, ApiError> {
    let mut pending: Vec<(String, String)> = vec![];
    let mut made = 0usize;
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            no_images(m.images.as_deref(), &format!("messages[{i}].images"))?;
            // Ollama lowercases roles as it reads a message.
            let role = m.role.to_lowercase();
            let tool_calls = match &m.tool_calls {
                Some(calls) if !calls.is_empty() => {
                    pending.clear();
                    let calls: Vec<Value> = calls
                        .iter()
                        .map(|c| {
                            let id = c.id.clone().unwrap_or_else(|| {
                                made += 1;
                                format!("call{made:05}")
                            });
                            pending.push((id.clone(), c.function.name.clone()));
                            json!({"id": id, "type": "function",
                                   "function": {"name": c.function.name, "arguments": c.function.arguments}})
                        })
                        .collect();
                    Some(Value::Array(calls))
                }
                _ => None,
            };
            let tool_call_id = if role != "tool" {
                None
            } else if let Some(id) = &m.tool_call_id {
                pending.retain(|(p, _)| p != id);
                Some(id.clone())
            } else if !pending.is_empty() {
                let at = m
                    .tool_name
                    .as_ref()
                    .and_then(|n| pending.iter().position(|(_, name)| name == n))
                    .unwrap_or(0);
                Some(pending.remove(at).0)
            } else {
                // A result whose call the client did not send back (it kept only the text):
                // Ollama renders it anyway, so it gets an id of its own.
                made += 1;
                Some(format!("call{made:05}"))
            };
            Ok(ChatMessage {
                role,
                content: Some(Content::Text(m.content.clone().unwrap_or_default())),
                name: None,
                tool_calls,
                tool_call_id,
                reasoning_content: m.thinking.clone().map(Value::from),
                reasoning: None,
            })
        })
        .collect()
}

/// `think` → the template's variables: `enable_thinking` (Qwen3's), and for a level
/// (`"low"`, `"medium"`, `"high"`) `reasoning_effort` too.
fn template_kwargs(think: Option<&Value>) -> Result<Option<Map<String, Value>>, ApiError> {
    let mut m = Map::new();
    match think {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Bool(b)) => {
            m.insert("enable_thinking".into(), (*b).into());
        }
        Some(Value::String(s)) if matches!(s.as_str(), "low" | "medium" | "high") => {
            m.insert("enable_thinking".into(), true.into());
            m.insert("reasoning_effort".into(), s.clone().into());
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                "think",
                "`think` is true, false, \"low\", \"medium\" or \"high\"",
            ))
        }
    }
    Ok(Some(m))
}

/// `options` and `format` → the OpenAI sampling fields. What `options` leaves out of the
/// temperature, top_p and top_k stays unset here: [`with_defaults`] fills it in.
pub fn sampling(
    options: Option<&Options>,
    format: Option<&Value>,
) -> Result<SamplingFields, ApiError> {
    let o = options.cloned().unwrap_or_default();
    Ok(SamplingFields {
        temperature: o.temperature,
        top_p: o.top_p,
        // 0 or less: off, as in llama.cpp.
        top_k: o.top_k.map(|k| k.max(0)),
        min_p: o.min_p,
        // Ollama's -1 (its default) is a random seed.
        seed: o.seed.filter(|&s| s >= 0),
        stop: o.stop.map(StopSpec::Many),
        repetition_penalty: o.repeat_penalty,
        presence_penalty: o.presence_penalty,
        frequency_penalty: o.frequency_penalty,
        response_format: response_format(format)?,
        ..Default::default()
    })
}

/// The temperature, top_p and top_k a request's `options` left out: the model's own (its
/// `generation_config.json`, as Ollama layers a Modelfile's parameters over its defaults),
/// else Ollama's defaults (0.8, 0.9, 40).
pub fn with_defaults(
    mut f: SamplingFields,
    model: &camelid_model::SamplingDefaults,
) -> SamplingFields {
    f.temperature = f
        .temperature
        .or(model.temperature)
        .or(Some(DEFAULT_TEMPERATURE));
    f.top_p = f.top_p.or(model.top_p).or(Some(DEFAULT_TOP_P));
    f.top_k = f.top_k.or(model.top_k).or(Some(DEFAULT_TOP_K));
    f
}

/// `options.num_predict` as an output cap: generation stops there or at the end of the
/// context, whichever comes first, as in Ollama (`None`: the context). As Ollama's runner
/// reads it, only a positive count limits: 0, -1 (until the context is full), -2 (fill the
/// context) and any other negative are no limit.
pub fn output_cap(options: Option<&Options>) -> Result<Option<u32>, ApiError> {
    Ok(options
        .and_then(|o| o.num_predict)
        .filter(|&n| n > 0)
        .map(|n| n.min(u32::MAX as i64) as u32))
}

/// `format`: `"json"` (any JSON object) or a JSON schema.
fn response_format(format: Option<&Value>) -> Result<Option<Value>, ApiError> {
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(json!({"type": "json_object"}))),
        Some(schema @ Value::Object(_)) => Ok(Some(json!({"type": "json_schema",
            "json_schema": {"name": "format", "schema": schema}}))),
        Some(_) => Err(ApiError::invalid_param(
            "format",
            "`format` is \"json\" or a JSON schema object",
        )),
    }
}

/// The served model a name means: its own name or an alias, with or without Ollama's
/// `:latest` tag.
pub fn resolve(state: &AppState, name: &str) -> Result<Arc<ModelEntry>, ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid_param("model", "model is required"));
    }
    let found = match state.model(Some(name)) {
        Err(e) if e.code == Some("model_not_found") => match name.strip_suffix(":latest") {
            Some(bare) => state.model(Some(bare)).map_err(|_| e),
            None => Err(e),
        },
        r => r,
    };
    // Ollama's words: its clients match on "not found".
    found.map_err(|e| match e.code {
        Some("model_not_found") => ApiError {
            message: format!("model '{}' not found", crate::error::excerpt(name, 100)),
            ..e
        },
        _ => e,
    })
}

/// `keep_alive` as Ollama reads it: seconds as a number (fractions kept: 0.5 is half a
/// second, its `time.Duration(t * float64(time.Second))`), or a Go duration string ("5m",
/// "1h30m", "-1s"); a negative one is forever. Whether it asks to unload now (zero); a
/// malformed one is a 400.
pub fn unloads(keep_alive: Option<&Value>) -> Result<bool, ApiError> {
    let bad = || {
        ApiError::invalid_param(
            "keep_alive",
            "`keep_alive` is a number of seconds or a duration such as \"5m\" or \"1h\"",
        )
    };
    match keep_alive {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Number(n)) => n.as_f64().map(|x| x == 0.0).ok_or_else(bad),
        Some(Value::String(s)) => go_duration_secs(s).map(|x| x == 0.0).ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// A Go duration string's seconds (`time.ParseDuration`: a sign, then numbers each with a
/// unit of ns, us/µs, ms, s, m, h; "0" alone is zero, any other number needs its unit).
fn go_duration_secs(s: &str) -> Option<f64> {
    let (sign, mut rest) = match s.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit..];
        total += value * scale;
    }
    Some(sign * total)
}

/// A time as Ollama writes it (RFC 3339, nanoseconds, UTC).
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

pub fn now() -> String {
    timestamp(chrono::Utc::now())
}

fn since_epoch(secs: u64) -> String {
    timestamp(chrono::DateTime::from_timestamp(secs as i64, 0).unwrap_or_default())
}

/// `details` of a model listing; a LoRA adapter's `parent_model` is its base's name.
fn details(models: &[Arc<ModelEntry>], m: &ModelEntry) -> Value {
    let d = &m.details;
    let parent = crate::state::base_of(models, m).map_or("", |b| b.name.as_str());
    json!({"parent_model": parent, "format": d.format, "family": d.architecture,
           "families": [d.architecture], "parameter_size": d.parameter_size(),
           "quantization_level": d.quantization})
}

/// A stable digest for a served name (Ollama's is its manifest's; clients use it as a key).
fn digest(m: &ModelEntry, name: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{name}\0{}\0{}", m.name, m.created));
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every served model under each of its names: `/api/tags`' entries (and `/api/ps`' with
/// `running`).
pub fn listing(models: &[Arc<ModelEntry>], running: bool) -> Value {
    let mut out = vec![];
    for m in models {
        for name in std::iter::once(&m.name).chain(&m.aliases) {
            // Ollama lists every model with its tag (clients check a name against
            // `NAME:TAG`); a bare name is `:latest`, which resolves to it.
            let listed = if name.contains(':') {
                name.clone()
            } else {
                format!("{name}:latest")
            };
            let mut e = json!({"name": listed, "model": listed, "size": m.details.size_bytes,
                "digest": digest(m, name), "details": details(models, m)});
            if running {
                // Loaded until the server stops.
                e["expires_at"] = "2318-01-01T00:00:00Z".into();
                // Ollama's `ps` reads the share in GPU memory (100 % GPU or CPU).
                let vram = if m.engine.device().is_cuda() {
                    m.details.size_bytes
                } else {
                    0
                };
                e["size_vram"] = vram.into();
                e["context_length"] = m.max_model_len.into();
            } else {
                e["modified_at"] = since_epoch(m.created).into();
            }
            out.push(e);
        }
    }
    json!({"models": out})
}

/// Whether the model thinks: its template writes or switches thinking (Qwen3's
/// `enable_thinking`, R1's `<think>`).
pub fn thinks(m: &ModelEntry) -> bool {
    let t = template_text(m);
    t.contains("<think>") || t.contains("enable_thinking")
}

/// The model's jinja template, or the name of its built-in one.
fn template_text(m: &ModelEntry) -> String {
    match &m.template {
        camelid_model::ChatTemplate::Jinja { source, .. } => source.clone(),
        t => t.name(),
    }
}

/// `think` asking for thinking (`true`, or a level as gpt-oss takes) from a model that does
/// not think: Ollama's 400, in its words (clients match on "does not support thinking").
pub fn check_think(think: Option<&Value>, name: &str, m: &ModelEntry) -> Result<(), ApiError> {
    let asks = match think {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(_) => true,
    };
    if asks && !thinks(m) {
        return Err(ApiError::invalid_param(
            "think",
            format!("\"{name}\" does not support thinking"),
        ));
    }
    Ok(())
}

/// `/api/show`: what the model is and what it can do (`models`: every served one, for an
/// adapter's base).
pub fn show(models: &[Arc<ModelEntry>], m: &ModelEntry, takes_tools: bool) -> Value {
    let d = &m.details;
    let a = &d.architecture;
    // Every model embeds; one whose files name a pooling is made for it, and listed as
    // Ollama lists such models: for embedding alone (clients keep them out of chat pickers).
    let mut capabilities = if d.pooling.is_some() {
        vec!["embedding"]
    } else {
        vec!["completion"]
    };
    if takes_tools {
        capabilities.push("tools");
    }
    // Fill-in-the-middle tokens: `/api/generate` takes a `suffix` (Ollama's "insert").
    if m.engine.tokenizer().fim.is_some() {
        capabilities.push("insert");
    }
    let template = template_text(m);
    if thinks(m) {
        capabilities.push("thinking");
    }
    json!({
        "modelfile": "",
        "parameters": "",
        "template": template,
        "details": details(models, m),
        "model_info": {
            "general.architecture": a,
            "general.parameter_count": d.parameters,
            format!("{a}.context_length"): m.max_model_len,
            format!("{a}.embedding_length"): d.embedding_length,
            format!("{a}.block_count"): d.block_count,
        },
        "capabilities": capabilities,
        "modified_at": since_epoch(m.created),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(v: Value) -> Message {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn tool_results_take_the_ids_of_the_calls_they_answer() {
        let msgs = [
            msg(json!({"role": "user", "content": "weather?"})),
            msg(json!({"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "a", "arguments": {"x": 1}}},
                {"function": {"name": "b", "arguments": {}}}]})),
            msg(json!({"role": "tool", "content": "B", "tool_name": "b"})),
            msg(json!({"role": "tool", "content": "A"})),
        ];
        let out = chat_messages(&msgs).unwrap();
        let calls = out[1].tool_calls.as_ref().unwrap();
        let id = |k: usize| calls[k]["id"].as_str().unwrap().to_string();
        assert_eq!(id(0).len(), 9);
        assert!(id(0).chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(id(0), id(1));
        assert_eq!(calls[0]["function"]["arguments"], json!({"x": 1}));
        assert_eq!(out[2].tool_call_id.as_deref(), Some(id(1).as_str()));
        assert_eq!(out[3].tool_call_id.as_deref(), Some(id(0).as_str()));
        // A result naming its call (LangChain's `tool_call_id`) answers that call, whatever
        // the order.
        let msgs = [
            msg(json!({"role": "assistant", "content": "", "tool_calls": [
                {"id": "u1", "function": {"name": "a", "arguments": {}}},
                {"id": "u2", "function": {"name": "a", "arguments": {}}}]})),
            msg(json!({"role": "tool", "content": "2", "tool_call_id": "u2"})),
            msg(json!({"role": "tool", "content": "1"})),
        ];
        let out = chat_messages(&msgs).unwrap();
        assert_eq!(out[1].tool_call_id.as_deref(), Some("u2"));
        assert_eq!(out[2].tool_call_id.as_deref(), Some("u1"));
    }

    /// A tool result whose call the client did not send back gets an id of its own (Ollama
    /// renders it; the chat's rule that a tool message answers a call would refuse it).
    #[test]
    fn a_tool_result_without_its_call_is_taken() {
        let msgs = [
            msg(json!({"role": "user", "content": "weather?"})),
            msg(json!({"role": "assistant", "content": "Let me look."})),
            msg(json!({"role": "tool", "content": "18 C", "tool_name": "get_weather"})),
            msg(json!({"role": "tool", "content": "19 C"})),
        ];
        let out = chat_messages(&msgs).unwrap();
        let (a, b) = (out[2].tool_call_id.clone(), out[3].tool_call_id.clone());
        assert!(a.is_some() && b.is_some() && a != b, "{a:?} {b:?}");
        crate::chat::to_messages(&out).unwrap();
    }

    /// An assistant turn's `thinking`, as `/api/chat` answered it, goes back to the template
    /// as the chat route's `reasoning_content` does.
    #[test]
    fn an_answers_thinking_goes_back_to_the_template() {
        let msgs = [
            msg(json!({"role": "user", "content": "Is 7 prime?"})),
            msg(json!({"role": "assistant", "content": "Yes.", "thinking": "no divisors"})),
        ];
        let out = crate::chat::to_messages(&chat_messages(&msgs).unwrap()).unwrap();
        assert_eq!(out[1].reasoning_content.as_deref(), Some("no divisors"));
        assert_eq!(out[0].reasoning_content, None);
    }

    /// `keep_alive` as Ollama reads it: seconds, or a Go duration; zero unloads; anything
    /// else is a 400 naming the field.
    #[test]
    fn keep_alive_reads_seconds_and_go_durations() {
        for (v, zero) in [
            (json!(0), true),
            (json!(0.0), true),
            (json!("0"), true),
            (json!("0s"), true),
            (json!("0m0s"), true),
            (json!(300), false),
            (json!("5m"), false),
            (json!("1h30m"), false),
            (json!(-1), false),
            (json!("-1m"), false),
            (json!("1.5h"), false),
            (json!("250ms"), false),
        ] {
            assert_eq!(unloads(Some(&v)).unwrap(), zero, "{v}");
        }
        assert!(!unloads(None).unwrap());
        // Fractions of a second are kept, as Ollama's current parser does (0.5: half a second,
        // not an unload; it once truncated to whole seconds).
        assert!(!unloads(Some(&json!(0.5))).unwrap());
        assert!(!unloads(Some(&json!(1.5))).unwrap());
        // A string is a Go duration: a number needs its unit ("0" alone excepted).
        for bad in [
            json!("soon"),
            json!("5"),
            json!("-1"),
            json!("1e3"),
            json!("--5"),
            json!("1h-5m"),
            json!("m"),
            json!(""),
            json!("5x"),
            json!([1]),
        ] {
            let e = unloads(Some(&bad)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("keep_alive"), "{bad}");
        }
        assert_eq!(go_duration_secs("1h30m"), Some(5400.0));
        assert_eq!(go_duration_secs("-2m"), Some(-120.0));
        assert_eq!(go_duration_secs("1.5s"), Some(1.5));
    }

    /// Integer options come as JSON integers or floats (truncated, as Ollama's `FromMap`).
    #[test]
    fn integer_options_take_floats() {
        let o: Options =
            serde_json::from_value(json!({"num_predict": 8.0, "top_k": 40.7, "seed": -3})).unwrap();
        assert_eq!(
            (o.num_predict, o.top_k, o.seed),
            (Some(8), Some(40), Some(-3))
        );
        assert!(serde_json::from_value::<Options>(json!({"num_predict": "8"})).is_err());
        assert!(serde_json::from_value::<Options>(json!({"num_predict": 1e300})).is_err());
    }

    #[test]
    fn options_map_to_openai_fields_with_ollamas_defaults() {
        let none = camelid_model::SamplingDefaults::default();
        let f = with_defaults(sampling(None, None).unwrap(), &none);
        assert_eq!(
            (f.temperature, f.top_p, f.top_k, f.max_tokens),
            (Some(0.8), Some(0.9), Some(40), None)
        );
        // A model's generation_config.json comes before Ollama's defaults (as a Modelfile's
        // parameters do), the request's options before both.
        let qwen3 = camelid_model::SamplingDefaults {
            temperature: Some(0.6),
            top_p: Some(0.95),
            top_k: Some(20),
            ..Default::default()
        };
        let f = with_defaults(sampling(None, None).unwrap(), &qwen3);
        assert_eq!(
            (f.temperature, f.top_p, f.top_k),
            (Some(0.6), Some(0.95), Some(20))
        );
        let o: Options = serde_json::from_value(json!({"temperature": 1.1})).unwrap();
        let f = with_defaults(sampling(Some(&o), None).unwrap(), &qwen3);
        assert_eq!(
            (f.temperature, f.top_p, f.top_k),
            (Some(1.1), Some(0.95), Some(20))
        );
        let o: Options = serde_json::from_value(json!({"num_predict": 7, "temperature": 0,
            "top_k": 0, "seed": -1, "stop": ["x"], "repeat_penalty": 1.2, "num_ctx": 4096}))
        .unwrap();
        let f = sampling(Some(&o), Some(&json!("json"))).unwrap();
        assert_eq!(output_cap(Some(&o)).unwrap(), Some(7));
        assert_eq!(f.max_tokens, None);
        assert_eq!(f.temperature, Some(0.0));
        assert_eq!(f.top_k, Some(0));
        assert_eq!(f.seed, None);
        assert_eq!(f.repetition_penalty, Some(1.2));
        assert_eq!(f.response_format, Some(json!({"type": "json_object"})));
        for n in [0, -1, -2, -7] {
            let o: Options = serde_json::from_value(json!({ "num_predict": n })).unwrap();
            assert_eq!(output_cap(Some(&o)).unwrap(), None, "{n}");
        }
        assert!(sampling(None, Some(&json!(3))).is_err());
    }
}
