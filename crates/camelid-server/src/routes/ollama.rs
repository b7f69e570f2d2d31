//! Ollama's native routes: `POST /api/chat` and `/api/generate` (NDJSON lines by default,
//! one object with `stream: false`), `POST /api/embed` and `/api/embeddings`, `GET /api/tags`,
//! `/api/ps`, `/api/version`, `POST /api/show`; the model-management routes answer 501. Requests go through `ollama`'s
//! translation to the chat path; this file runs them and writes Ollama's replies.

use super::RequestBody;
use crate::chat::{self, Submitted};
use crate::embeddings::{self, Overlong};
use crate::error::ApiError;
use crate::format::{chat_logprobs, finish_str};
use crate::ollama::{
    self, error_body, ChatBody, EmbedBody, GenerateBody, LegacyEmbedBody, OllamaError,
};
use crate::openai::Prompt;
use crate::openai::{parse_body, SamplingFields};
use crate::run::{self, blocking, next_step, ChoiceSpec, Step, Submission, Timing};
use crate::state::{AppState, ModelEntry, Permit};
use crate::structured;
use crate::tools::{self, OutputReader};
use crate::validate::{
    check_top_logprobs, encode_prompt, generation_params, infill_suffix, max_tokens, model_stops,
};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use camelid_engine::Usage;
use camelid_model::decode::sampling::TokenLogprob;
use camelid_model::decode::FinishReason;
use camelid_model::text::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

type OllamaResult = Result<Response, OllamaError>;

/// Which reply: a chat's `message` or a generation's `response`.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Generate,
}

pub async fn chat(
    State(state): State<Arc<AppState>>,
    RequestBody(raw): RequestBody,
) -> OllamaResult {
    let entered = Instant::now();
    let permit = state.permit()?;
    let body: ChatBody = parse_body(&raw)?;
    drop(raw);
    let model = ollama::resolve(&state, &body.model)?;
    let unload = ollama::unloads(body.keep_alive.as_ref())?;
    ollama::check_think(body.think.as_ref(), &body.model, &model)?;
    if body.messages.is_empty() {
        // Ollama's way of loading (or with `keep_alive: 0` unloading) a model.
        return Ok(axum::Json(loaded(Kind::Chat, &body.model, unload)).into_response());
    }
    let (req, sampling) = body.chat_request(&model.name)?;
    let sampling = ollama::with_defaults(sampling, &model.sampling_defaults);
    let has_tools = req
        .tools
        .as_ref()
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let Submitted {
        sub,
        model,
        prompt_tokens,
        tools,
        reasoning,
        ..
    } = chat::submit(&state, permit, &req, &sampling)
        .await
        .map_err(|e| tools_refused_as_ollama(e, has_tools, &body.model))?;
    let reply = Reply {
        entered,
        ..Reply::new(
            Kind::Chat,
            body.model,
            model.engine.shared_tokenizer(),
            req.logprobs,
            OutputReader::new(reasoning, tools.map(|t| t.stream())),
            ollama::shows_thinking(body.think.as_ref()),
            prompt_tokens,
        )
    };
    answer(sub, reply, body.stream.unwrap_or(true)).await
}

pub async fn generate(
    State(state): State<Arc<AppState>>,
    RequestBody(raw): RequestBody,
) -> OllamaResult {
    let entered = Instant::now();
    let permit = state.permit()?;
    let body: GenerateBody = parse_body(&raw)?;
    drop(raw);
    let model = ollama::resolve(&state, &body.model)?;
    let unload = ollama::unloads(body.keep_alive.as_ref())?;
    body.check_supported()?;
    ollama::check_think(body.think.as_ref(), &body.model, &model)?;
    if body.prompt.as_deref().unwrap_or("").is_empty() {
        return Ok(axum::Json(loaded(Kind::Generate, &body.model, unload)).into_response());
    }
    let logprobs = body.logprobs.unwrap_or(false);
    // A suffix is fill-in-the-middle: the model's FIM tokens around the prompt, no template.
    let suffix = body.suffix.clone().map(Value::String);
    let suffix = infill_suffix(suffix.as_ref(), &model, true, false)?;
    if suffix.is_some() {
        body.check_infill()?;
    }
    let (sub, tok, prompt_tokens, reasoning) = if body.raw == Some(true) || suffix.is_some() {
        let sampling = ollama::sampling(body.options.as_ref(), body.format.as_ref())?;
        let sampling = ollama::with_defaults(sampling, &model.sampling_defaults);
        let prompt = body.prompt.clone().unwrap_or_default();
        let top = logprobs.then_some(body.top_logprobs.unwrap_or(0));
        let cap = ollama::output_cap(body.options.as_ref())?;
        let text = (prompt, suffix);
        let (sub, n) = submit_raw(&state, permit, &model, text, &sampling, (cap, top)).await?;
        (sub, model.engine.shared_tokenizer(), n, None)
    } else {
        let (req, sampling) = body.chat_request(&model.name)?;
        let sampling = ollama::with_defaults(sampling, &model.sampling_defaults);
        let s = chat::submit(&state, permit, &req, &sampling).await?;
        (
            s.sub,
            s.model.engine.shared_tokenizer(),
            s.prompt_tokens,
            s.reasoning,
        )
    };
    let reply = Reply {
        entered,
        ..Reply::new(
            Kind::Generate,
            body.model,
            tok,
            logprobs,
            OutputReader::new(reasoning, None),
            ollama::shows_thinking(body.think.as_ref()),
            prompt_tokens,
        )
    };
    answer(sub, reply, body.stream.unwrap_or(true)).await
}

/// A chat's tools refused because the model's template does not show them: Ollama's words
/// (`"name" does not support tools`), which its clients match on to retry without tools.
fn tools_refused_as_ollama(e: ApiError, has_tools: bool, name: &str) -> ApiError {
    if has_tools && e.code == Some(tools::TOOLS_NOT_SUPPORTED) {
        return ApiError::invalid_param("tools", format!("\"{name}\" does not support tools"));
    }
    e
}

/// A raw generation: the prompt tokenized as it is (with the BOS the tokenizer adds; with a
/// suffix, the fill-in-the-middle prompt), no chat template and no template stop strings, as
/// `/v1/completions` does.
async fn submit_raw(
    state: &Arc<AppState>,
    permit: Permit,
    model: &Arc<ModelEntry>,
    (prompt, suffix): (String, Option<String>),
    f: &SamplingFields,
    (cap, logprobs): (Option<u32>, Option<u32>),
) -> Result<(Submission, usize), ApiError> {
    check_top_logprobs("top_logprobs", logprobs)?;
    let limits = &state.config.limits;
    let vocab = model.engine.vocab_size();
    let stops = model_stops(model, suffix.is_some());
    let mut params = generation_params(f, &model.sampling_defaults, limits, vocab, &stops, &[])?;
    // The prompt's text going on, as a completion's: a SentencePiece first token keeps its
    // space.
    params.continues_prompt = true;
    let tok = model.engine.shared_tokenizer();
    let ids = blocking(&permit, move || {
        encode_prompt(&tok, &prompt, suffix.as_deref(), true)
    })
    .await?;
    params.constraint = structured::compile(&permit, model, f).await?;
    params.max_tokens = max_tokens(
        None,
        "options.num_predict",
        cap.map(|c| c as usize),
        ids.len(),
        model.max_model_len,
        "prompt",
        false,
    )?;
    params.logprobs = logprobs.map(|t| t as usize);
    let n = ids.len();
    let spec = ChoiceSpec {
        index: 0,
        prompt: ids,
        params,
        prompt_logprobs: None,
        cache_salt: None,
    };
    Ok((run::submit(state, permit, model, vec![spec])?, n))
}

/// What `/api/chat` without messages and `/api/generate` without a prompt answer: loaded, or
/// with `keep_alive: 0` unloaded (`ollama stop`'s request; camelid keeps its models loaded,
/// the reply is Ollama's).
fn loaded(kind: Kind, model: &str, unload: bool) -> Value {
    let reason = if unload { "unload" } else { "load" };
    let mut v = json!({"model": model, "created_at": ollama::now(), "done": true,
                       "done_reason": reason});
    match kind {
        Kind::Chat => v["message"] = json!({"role": "assistant", "content": ""}),
        Kind::Generate => v["response"] = "".into(),
    }
    v
}

/// One request's reply, built from its engine events: the objects Ollama streams.
struct Reply {
    kind: Kind,
    /// The model as the request named it.
    model: String,
    tok: Arc<Tokenizer>,
    logprobs: bool,
    /// The output read for thinking and tool calls, and the calls' deltas so far.
    reader: OutputReader,
    call_deltas: Vec<Value>,
    /// Calls already sent: Ollama sends each as soon as it is whole, numbering them on.
    calls_sent: usize,
    /// Whether the thinking is sent (`think: false` drops it).
    show_thinking: bool,
    /// When the handler took the request: `total_duration` counts from here, as Ollama's
    /// does (parsing, the template and a `format` grammar's compilation included).
    entered: Instant,
    /// When the prompt went to the engine: `prompt_eval_duration` counts from here.
    started: Instant,
    first_token: Option<Instant>,
    prompt_tokens: usize,
}

impl Reply {
    fn new(
        kind: Kind,
        model: String,
        tok: Arc<Tokenizer>,
        logprobs: bool,
        reader: OutputReader,
        show_thinking: bool,
        prompt_tokens: usize,
    ) -> Self {
        Self {
            kind,
            model,
            tok,
            logprobs,
            reader,
            call_deltas: vec![],
            calls_sent: 0,
            show_thinking,
            entered: Instant::now(),
            started: Instant::now(),
            first_token: None,
            prompt_tokens,
        }
    }

    fn object(&self, text: &str, logprobs: Option<Value>, tool_calls: Vec<Value>) -> Value {
        self.object_thinking("", text, logprobs, tool_calls)
    }

    fn object_thinking(
        &self,
        thought: &str,
        text: &str,
        logprobs: Option<Value>,
        tool_calls: Vec<Value>,
    ) -> Value {
        let mut v = json!({"model": self.model, "created_at": ollama::now(), "done": false});
        let thought = (self.show_thinking && !thought.is_empty()).then_some(thought);
        match self.kind {
            Kind::Chat => {
                v["message"] = json!({"role": "assistant", "content": text});
                if let Some(t) = thought {
                    v["message"]["thinking"] = t.into();
                }
                if !tool_calls.is_empty() {
                    v["message"]["tool_calls"] = tool_calls.into();
                }
            }
            Kind::Generate => {
                v["response"] = text.into();
                if let Some(t) = thought {
                    v["thinking"] = t.into();
                }
            }
        }
        if let Some(l) = logprobs {
            v["logprobs"] = l;
        }
        v
    }

    /// A token's object (none while text is held back for a possible call).
    fn token(&mut self, text: &str, logprob: Option<&TokenLogprob>) -> Option<Value> {
        self.first_token.get_or_insert_with(Instant::now);
        let lps = match (self.logprobs, logprob) {
            (true, Some(l)) => {
                Some(chat_logprobs(&self.tok, std::slice::from_ref(l))["content"].take())
            }
            _ => None,
        };
        let p = self.reader.push(text);
        self.call_deltas.extend(p.deltas);
        let calls = self.calls_before_the_newest();
        let thought = if self.show_thinking {
            p.thought
        } else {
            String::new()
        };
        (!p.text.is_empty() || !thought.is_empty() || lps.is_some() || !calls.is_empty())
            .then(|| self.object_thinking(&thought, &p.text, lps, calls))
    }

    /// The calls known whole: every one before the newest (a call is whole once the next
    /// begins; the last waits for the end of the output, where a cut one is left out).
    fn calls_before_the_newest(&mut self) -> Vec<Value> {
        match self.call_deltas.iter().rposition(|d| d.get("id").is_some()) {
            Some(newest) if newest > 0 => {
                let newest_on = self.call_deltas.split_off(newest);
                let whole = std::mem::replace(&mut self.call_deltas, newest_on);
                self.numbered(tools::whole_calls(whole))
            }
            _ => vec![],
        }
    }

    /// Whole calls in Ollama's shape, numbered on from those sent.
    fn numbered(&mut self, calls: Vec<Value>) -> Vec<Value> {
        let calls = ollama_calls(calls, self.calls_sent);
        self.calls_sent += calls.len();
        calls
    }

    /// The last objects: held-back text and the calls, then the one with `done: true` and
    /// the counts and durations (nanoseconds).
    fn finish(&mut self, reason: FinishReason, usage: &Usage) -> Vec<Value> {
        let mut out = vec![];
        let p = self.reader.finish();
        self.call_deltas.extend(p.deltas);
        let (text, thought) = (
            p.text,
            if self.show_thinking {
                p.thought
            } else {
                String::new()
            },
        );
        let rest = std::mem::take(&mut self.call_deltas);
        let calls = self.numbered(tools::whole_calls(rest));
        if !text.is_empty() || !thought.is_empty() || !calls.is_empty() {
            out.push(self.object_thinking(&thought, &text, None, calls));
        }
        let end = Instant::now();
        let first = self.first_token.unwrap_or(end);
        let mut done = self.object("", None, vec![]);
        let ns = |d: std::time::Duration| d.as_nanos() as u64;
        for (k, v) in [
            ("done", json!(true)),
            ("done_reason", finish_str(reason).into()),
            ("total_duration", ns(end - self.entered).into()),
            ("load_duration", 0.into()),
            ("prompt_eval_count", self.prompt_tokens.into()),
            ("prompt_eval_duration", ns(first - self.started).into()),
            ("eval_count", usage.completion_tokens.into()),
            ("eval_duration", ns(end - first).into()),
        ] {
            done[k] = v;
        }
        out.push(done);
        out
    }
}

/// OpenAI's calls → Ollama's: `arguments` an object, not its JSON text. A call whose
/// arguments are not a JSON object is left out: Ollama's clients cannot read it. (A call
/// cut off by the length limit has its arguments closed by the parser.)
fn ollama_calls(calls: Vec<Value>, first_index: usize) -> Vec<Value> {
    calls
        .into_iter()
        .filter_map(|c| {
            let args = c["function"]["arguments"].as_str().unwrap_or_default();
            let args: Value = serde_json::from_str(args).ok().filter(Value::is_object)?;
            Some((c, args))
        })
        .enumerate()
        .map(|(i, (c, args))| {
            json!({"id": c["id"], "function": {"index": first_index + i,
                   "name": c["function"]["name"], "arguments": args}})
        })
        .collect()
}

/// The next objects of a reply from its engine events; `None` once the request is done.
async fn next_objects(
    sub: &mut Submission,
    reply: &mut Reply,
    timing: &mut Timing,
) -> Option<Result<Vec<Value>, ApiError>> {
    Some(next_step(sub, timing).await?.map(|step| match step {
        Step::Token { text, logprob } => reply.token(&text, logprob.as_ref()).into_iter().collect(),
        Step::Finished { reason, usage } => reply.finish(reason, &usage),
    }))
}

/// The reply as NDJSON lines, or gathered into one object.
async fn answer(mut sub: Submission, mut reply: Reply, stream: bool) -> OllamaResult {
    let mut timing = Timing::new(1);
    if stream {
        return Ok(lines(sub, reply, timing));
    }
    let mut whole: Option<Value> = None;
    let (mut text, mut calls, mut logprobs) = (String::new(), vec![], vec![]);
    let mut thought = String::new();
    while let Some(objects) = next_objects(&mut sub, &mut reply, &mut timing).await {
        for o in objects? {
            let (part, thinking) = match reply.kind {
                Kind::Chat => (&o["message"]["content"], &o["message"]["thinking"]),
                Kind::Generate => (&o["response"], &o["thinking"]),
            };
            text += part.as_str().unwrap_or_default();
            thought += thinking.as_str().unwrap_or_default();
            calls.extend(
                o["message"]["tool_calls"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
            logprobs.extend(o["logprobs"].as_array().cloned().unwrap_or_default());
            if o["done"] == true {
                whole = Some(o);
            }
        }
    }
    let mut whole = whole.ok_or_else(|| ApiError::internal("the engine dropped the request"))?;
    match reply.kind {
        Kind::Chat => {
            whole["message"]["content"] = text.into();
            if !thought.is_empty() {
                whole["message"]["thinking"] = thought.into();
            }
            if !calls.is_empty() {
                whole["message"]["tool_calls"] = calls.into();
            }
        }
        Kind::Generate => {
            whole["response"] = text.into();
            if !thought.is_empty() {
                whole["thinking"] = thought.into();
            }
        }
    }
    if reply.logprobs {
        whole["logprobs"] = logprobs.into();
    }
    Ok(axum::Json(whole).into_response())
}

/// Streams the reply, one JSON object a line. A failure after the first line is a last
/// `{"error": …}` line (Ollama's clients raise it); the stream owns the submission, so a
/// client that hangs up cancels the generation.
fn lines(sub: Submission, reply: Reply, timing: Timing) -> Response {
    let st = (sub, reply, timing, VecDeque::<Value>::new(), false);
    let s = futures::stream::unfold(
        st,
        |(mut sub, mut reply, mut timing, mut queue, mut done)| async move {
            loop {
                if let Some(v) = queue.pop_front() {
                    let mut line = v.to_string();
                    line.push('\n');
                    return Some((
                        Ok::<_, Infallible>(Bytes::from(line)),
                        (sub, reply, timing, queue, done),
                    ));
                }
                if done {
                    return None;
                }
                match next_objects(&mut sub, &mut reply, &mut timing).await {
                    None => done = true,
                    Some(Ok(objects)) => queue.extend(objects),
                    Some(Err(e)) => {
                        queue.push_back(error_body(&e));
                        done = true;
                    }
                }
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(s),
    )
        .into_response()
}

pub async fn tags(State(state): State<Arc<AppState>>) -> OllamaResult {
    let models = state.models().ok_or_else(AppState::loading_error)?;
    Ok(axum::Json(ollama::listing(&models, false)).into_response())
}

pub async fn ps(State(state): State<Arc<AppState>>) -> OllamaResult {
    let models = state.models().ok_or_else(AppState::loading_error)?;
    Ok(axum::Json(ollama::listing(&models, true)).into_response())
}

pub async fn version() -> Response {
    axum::Json(json!({"version": ollama::API_VERSION})).into_response()
}

/// `POST /api/show` with `{"model": …}` (older clients: `"name"`).
pub async fn show(
    State(state): State<Arc<AppState>>,
    RequestBody(body): RequestBody,
) -> OllamaResult {
    // Rendering the template to see whether it takes tools is work: it holds a slot.
    let permit = state.permit()?;
    let v = crate::openai::parse_json(&body)?;
    let name = v
        .get("model")
        .or_else(|| v.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid_param("model", "`model` is required"))?;
    let model = ollama::resolve(&state, name)?;
    let template = model.template_for(true).clone();
    let takes_tools = blocking(&permit, move || Ok(tools::template_takes_tools(&template))).await?;
    let models = state.models().unwrap_or_default();
    Ok(axum::Json(ollama::show(&models, &model, takes_tools)).into_response())
}

/// `POST /api/embed`: unit-length vectors of the final hidden states, pooled as the model is
/// served (`--pooling`).
pub async fn embed(
    State(state): State<Arc<AppState>>,
    RequestBody(raw): RequestBody,
) -> OllamaResult {
    let started = Instant::now();
    let permit = state.permit()?;
    let body: EmbedBody = parse_body(&raw)?;
    drop(raw);
    let model = ollama::resolve(&state, &body.model)?;
    // Ollama's `dimensions`: a shorter vector is the first ones, made unit length again; a
    // larger number changes nothing. (`/v1/embeddings` refuses it: OpenAI's models are
    // trained to be cut, these are not.)
    let width = model.details.embedding_length;
    let keep = body
        .dimensions
        .filter(|&d| d > 0 && d < width as u64)
        .map(|d| d as usize);
    let input = match body.input {
        None => None,
        Some(Prompt::Text(s)) if s.is_empty() => None,
        Some(Prompt::Texts(v)) if v.is_empty() => None,
        Some(Prompt::TokenLists(l)) if l.is_empty() => None,
        Some(p) => Some(p),
    };
    let Some(input) = input else {
        // Ollama's way of loading a model: no vectors.
        return Ok(axum::Json(json!({"model": body.model, "embeddings": []})).into_response());
    };
    let overlong = match body.truncate {
        Some(false) => Overlong::Refuse,
        _ => Overlong::Truncate,
    };
    let prepared = embeddings::prepare(&state, &permit, &model, input, "input", overlong).await?;
    let prompt_tokens = prepared.prompt_tokens;
    let vectors = embeddings::run(state.clone(), permit, model, prepared, true);
    let head = format!(r#"{{"model":{},"embeddings":["#, json!(body.model));
    let item = move |_, mut v: Vec<f32>| {
        if let Some(d) = keep {
            v.truncate(d);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
        serde_json::to_vec(&v).expect("a vector serializes")
    };
    let tail = move || {
        format!(
            r#"],"total_duration":{},"load_duration":0,"prompt_eval_count":{prompt_tokens}}}"#,
            started.elapsed().as_nanos()
        )
    };
    Ok(embeddings::json_response(vectors, head, item, tail).await?)
}

/// `POST /api/embeddings`: one prompt's vector as the model makes it.
pub async fn embeddings_legacy(
    State(state): State<Arc<AppState>>,
    RequestBody(raw): RequestBody,
) -> OllamaResult {
    let permit = state.permit()?;
    let body: LegacyEmbedBody = parse_body(&raw)?;
    drop(raw);
    let model = ollama::resolve(&state, &body.model)?;
    if body.prompt.is_empty() {
        return Ok(axum::Json(json!({"embedding": []})).into_response());
    }
    let input = Prompt::Text(body.prompt);
    let prepared =
        embeddings::prepare(&state, &permit, &model, input, "prompt", Overlong::Truncate).await?;
    let mut vectors = embeddings::run(state.clone(), permit, model, prepared, false);
    let embedding = futures::StreamExt::next(&mut vectors)
        .await
        .transpose()?
        .unwrap_or_default();
    #[derive(serde::Serialize)]
    struct Reply {
        embedding: Vec<f32>,
    }
    Ok(axum::Json(Reply { embedding }).into_response())
}

/// `pull`, `push`, `create`, `copy`, `delete`, `blobs`: not served.
pub async fn not_served() -> OllamaError {
    OllamaError(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "invalid_request_error",
        "camelid does not manage models through the Ollama API: its models are chosen when \
         it starts (`camelid serve --model …`)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::{from_value, ChatRequest};
    use camelid_model::ChatTemplate;

    /// A Hermes call streamed a character at a time comes out as Ollama's call, arguments
    /// an object; a call cut off by the length limit is left out.
    #[test]
    fn streamed_calls_become_ollamas_with_object_arguments() {
        let template = ChatTemplate::Jinja {
            source: include_str!("../../../../tests/fixtures/chat-templates/qwen2.5-tools.jinja")
                .into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let req: ChatRequest = from_value(&json!({"model": "m", "messages": [],
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]}))
        .unwrap();
        let plan = tools::ToolPlan::from_request(&req, &template, 8, 1 << 20)
            .unwrap()
            .unwrap();
        let out = "Sure.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Ro";
        let mut s = plan.stream();
        let (mut text, mut deltas) = (String::new(), vec![]);
        for c in out.chars() {
            let (t, d) = s.push(&c.to_string());
            text += &t;
            deltas.extend(d);
        }
        let (t, d) = s.finish();
        text += &t;
        deltas.extend(d);
        assert_eq!(text, "Sure.");
        // The second call is cut off: its arguments stay as written (not closed into a call
        // the model never finished), which is no object: left out.
        assert!(s.cut());
        let calls = ollama_calls(tools::whole_calls(deltas), 0);
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(
            calls[0]["function"],
            json!({"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}})
        );
        assert!(calls[0]["id"].is_string());
        // Arguments that are not an object cannot be Ollama's: left out.
        let odd = vec![json!({"id": "c", "function": {"name": "f", "arguments": "[1]"}})];
        assert!(ollama_calls(odd, 0).is_empty());

        // Streamed, each call goes out once it is whole (the next one has begun), as Ollama
        // sends them, and they are numbered on; a cut last call never goes out.
        let tok = Arc::new(
            Tokenizer::from_json_value(
                json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                   "normalizer": null, "pre_tokenizer": null, "post_processor": null,
                   "decoder": null, "model": {"type": "WordLevel", "vocab": {"a": 0},
                   "unk_token": "a"}}),
                "test",
            )
            .unwrap(),
        );
        let whole_second = out.replace("\"Ro", "\"Rome\"}}\n</tool_call>");
        for (output, last) in [(out, None), (whole_second.as_str(), Some("Rome"))] {
            let reader = OutputReader::new(None, Some(plan.stream()));
            let mut reply = Reply::new(Kind::Chat, "m".into(), tok.clone(), false, reader, true, 1);
            let mut sent = vec![];
            let second_begins = output.rfind("<tool_call>").unwrap();
            for (i, c) in output.char_indices() {
                for call in reply.token(&c.to_string(), None).map_or(vec![], |o| {
                    o["message"]["tool_calls"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                }) {
                    sent.push((i, call));
                }
            }
            assert_eq!(sent.len(), 1, "{sent:?}");
            assert!(sent[0].0 > second_begins, "sent at {}", sent[0].0);
            assert_eq!(sent[0].1["function"]["arguments"]["city"], "Paris");
            let end = reply.finish(FinishReason::Stop, &Usage::default());
            let rest: Vec<Value> = end
                .iter()
                .flat_map(|o| {
                    o["message"]["tool_calls"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            match last {
                None => assert!(rest.is_empty(), "{rest:?}"),
                Some(city) => {
                    assert_eq!(rest.len(), 1, "{rest:?}");
                    assert_eq!(rest[0]["function"]["index"], 1);
                    assert_eq!(rest[0]["function"]["arguments"]["city"], city);
                }
            }
        }
    }
}
