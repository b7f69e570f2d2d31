//! OpenAI's Responses API (`POST /v1/responses`, what `client.responses.create` sends) on the
//! chat path: `input` items and `instructions` become a `ChatRequest` (so they pass the same
//! checks and caps as `/v1/chat/completions`), and the answer comes back as a `response`
//! object whose `output` holds a `reasoning` item (with `--reasoning-parser`), a `message`
//! and `function_call` items; streamed as the typed events the SDK's `responses.stream()`
//! accumulates. Stateless: nothing is stored, so `previous_response_id` is refused.

use crate::error::ApiError;
use crate::format::new_id;
use crate::openai::{ChatMessage, ChatRequest, Content, SamplingFields};
use crate::tools::OutputPiece;
use crate::validate::check_top_logprobs;
use camelid_engine::Usage;
use camelid_model::decode::FinishReason;
use serde::Deserialize;
use serde_json::{json, Value};

/// `POST /v1/responses`: the fields read; the others (`store`, `truncation`, `service_tier`,
/// …, and `include` values other than [`LOGPROBS`]) are accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct ResponsesBody {
    /// Left out or empty: the one model served (as vLLM takes it); answered with its name.
    #[serde(default)]
    pub model: String,
    pub input: Option<Value>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stream: Option<bool>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<Value>,
    pub previous_response_id: Option<String>,
    pub conversation: Option<Value>,
    pub background: Option<bool>,
    pub metadata: Option<Value>,
    pub user: Option<String>,
    /// Extra output to include; [`LOGPROBS`] is the one camelid has.
    pub include: Option<Vec<String>>,
    /// Alternatives per token with [`LOGPROBS`] (0–20).
    pub top_logprobs: Option<u32>,
    /// `{"effort": …}`: the chat's `reasoning_effort`.
    pub reasoning: Option<Value>,
}

/// The `include` value that asks for the answer's token log-probabilities.
pub const LOGPROBS: &str = "message.output_text.logprobs";

/// An id as OpenAI writes them: `resp_…`, `msg_…`, `fc_…`.
fn item_id(prefix: &str) -> String {
    new_id(prefix).replacen('-', "_", 1)
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message)
}

impl ResponsesBody {
    /// Whether the answer's text comes with its tokens' log-probabilities.
    pub fn wants_logprobs(&self) -> bool {
        self.include
            .as_ref()
            .is_some_and(|i| i.iter().any(|v| v == LOGPROBS))
    }

    /// The chat request this is, with its sampling fields.
    pub fn chat_request(&self) -> Result<(ChatRequest, SamplingFields), ApiError> {
        if self.previous_response_id.is_some() || self.conversation.is_some() {
            let param = if self.conversation.is_some() {
                "conversation"
            } else {
                "previous_response_id"
            };
            return Err(bad(
                param,
                "camelid stores no responses or conversations: send the whole conversation in \
                 `input`",
            ));
        }
        if self.background == Some(true) {
            return Err(bad("background", "background responses are not supported"));
        }
        check_top_logprobs("top_logprobs", self.top_logprobs)?;
        let input = self
            .input
            .as_ref()
            .ok_or_else(|| bad("input", "`input` is required"))?;
        let mut messages = input_messages(input)?;
        // `instructions` and the input's own leading system message make one (templates
        // take a single system message, first); empty instructions are none.
        if let Some(i) = self.instructions.as_deref().filter(|i| !i.is_empty()) {
            match messages.first_mut() {
                Some(m) if m.role == "system" || m.role == "developer" => {
                    let own = match &m.content {
                        Some(Content::Text(t)) => t.clone(),
                        _ => String::new(),
                    };
                    m.content = Some(Content::Text(format!("{i}\n\n{own}")));
                }
                _ => messages.insert(0, message("system", i.to_string())),
            }
        }
        let mut tools: Option<Vec<Value>> = match &self.tools {
            None => None,
            Some(t) => Some(
                t.iter()
                    .enumerate()
                    .map(|(i, t)| chat_tool(i, t))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let tool_choice = match &self.tool_choice {
            Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
                let name = o.get("name").cloned().unwrap_or(Value::Null);
                Some(json!({"type": "function", "function": {"name": name}}))
            }
            // A subset of the tools, in a mode: the others are not offered.
            Some(Value::Object(o))
                if o.get("type").and_then(Value::as_str) == Some("allowed_tools") =>
            {
                let names: Vec<&str> = o
                    .get("tools")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|t| t.get("name")?.as_str()).collect())
                    .unwrap_or_default();
                if let Some(t) = &mut tools {
                    t.retain(|t| {
                        t.pointer("/function/name")
                            .and_then(Value::as_str)
                            .is_some_and(|n| names.contains(&n))
                    });
                }
                match o.get("mode").and_then(Value::as_str) {
                    Some(m @ ("auto" | "required")) => Some(json!(m)),
                    _ => {
                        return Err(bad(
                            "tool_choice.mode",
                            "`allowed_tools` takes a `mode` of \"auto\" or \"required\"",
                        ))
                    }
                }
            }
            Some(c @ Value::String(_)) | Some(c @ Value::Null) => Some(c.clone()),
            Some(_) => {
                return Err(bad(
                    "tool_choice",
                    "`tool_choice` is \"none\", \"auto\", \"required\", {\"type\": \"function\", \"name\": …} or {\"type\": \"allowed_tools\", …}",
                ))
            }
            None => None,
        };
        let tools = tools.map(Value::Array);
        let req = ChatRequest {
            model: self.model.clone(),
            messages,
            max_completion_tokens: self.max_output_tokens,
            // Without `include`, OpenAI gives no log-probabilities, alternatives asked or not.
            logprobs: self.wants_logprobs(),
            top_logprobs: self.top_logprobs.filter(|_| self.wants_logprobs()),
            tools,
            tool_choice,
            parallel_tool_calls: self.parallel_tool_calls,
            functions: None,
            function_call: None,
            cache_salt: None,
            chat_template_kwargs: None,
            chat_template: None,
            echo: None,
            add_special_tokens: None,
            reasoning_effort: self
                .reasoning
                .as_ref()
                .and_then(|r| r.get("effort"))
                .and_then(Value::as_str)
                .map(String::from),
            add_generation_prompt: None,
            continue_final_message: false,
            split_reasoning: None,
            max_tokens_cap: None,
            drop_oldest_to_fit: false,
            keep_answer_room: false,
        };
        let sampling = SamplingFields {
            temperature: self.temperature,
            top_p: self.top_p,
            // What the chat checks read it for (a streamed answer's log-probabilities are
            // not held whole).
            stream: self.stream.unwrap_or(false),
            user: self.user.clone(),
            response_format: text_format(self.text.as_ref())?,
            ..Default::default()
        };
        Ok((req, sampling))
    }
}

fn message(role: &str, text: String) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: Some(Content::Text(text)),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        reasoning_content: None,
        reasoning: None,
    }
}

/// `input` → chat messages: a string is the user's message; a list holds messages (text
/// content or `input_text`/`output_text` parts), `function_call` items (consecutive ones make
/// one assistant message) and `function_call_output` items (tool messages). A `reasoning`
/// item's text (its `reasoning_text` content, else its summary) goes to the assistant message
/// after it as `reasoning_content`: templates that keep the thinking of a turn still under
/// way (Qwen3's, between tool calls) get it back; others leave it out.
fn input_messages(input: &Value) -> Result<Vec<ChatMessage>, ApiError> {
    let items = match input {
        Value::String(s) => return Ok(vec![message("user", s.clone())]),
        Value::Array(items) => items,
        _ => return Err(bad("input", "`input` is a string or a list of items")),
    };
    let mut out: Vec<ChatMessage> = vec![];
    // A reasoning item's text, until the assistant message it belongs to.
    let mut thought: Option<String> = None;
    for (i, item) in items.iter().enumerate() {
        let at = |f: &str| format!("input[{i}]{f}");
        let kind = item.get("type").and_then(Value::as_str);
        let text_of = |key: &str| {
            item.get(key)
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| bad(&at(&format!(".{key}")), format!("`{key}` must be a string")))
        };
        match kind {
            Some("function_call") => {
                let call = json!({"id": text_of("call_id")?, "type": "function",
                    "function": {"name": text_of("name")?, "arguments": text_of("arguments")?}});
                // The calls of one turn join its assistant message (its text, if any, came
                // first), as the turn was written.
                match out.last_mut().filter(|m| m.role == "assistant") {
                    Some(m) => match &mut m.tool_calls {
                        Some(Value::Array(calls)) => calls.push(call),
                        _ => m.tool_calls = Some(Value::Array(vec![call])),
                    },
                    None => out.push(ChatMessage {
                        tool_calls: Some(Value::Array(vec![call])),
                        content: None,
                        ..message("assistant", String::new())
                    }),
                }
            }
            Some("function_call_output") => {
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts_text(parts, &at(".output"))?,
                    _ => return Err(bad(&at(".output"), "`output` must be a string")),
                };
                out.push(ChatMessage {
                    tool_call_id: Some(text_of("call_id")?),
                    ..message("tool", output)
                });
            }
            Some("reasoning") => {
                let text = reasoning_text(item);
                if !text.is_empty() {
                    thought = Some(match thought.take() {
                        Some(t) => t + "\n" + &text,
                        None => text,
                    });
                }
                continue;
            }
            None | Some("message") => {
                let role = item
                    .get("role")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(&at(".role"), "a message needs a `role`"))?;
                if !matches!(role, "user" | "assistant" | "system" | "developer") {
                    return Err(bad(
                        &at(".role"),
                        format!("role {role:?}: a message is the user's, the assistant's, system or developer (a tool's result is a `function_call_output` item)"),
                    ));
                }
                let text = match item.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts_text(parts, &at(".content"))?,
                    _ => {
                        return Err(bad(
                            &at(".content"),
                            "`content` must be a string or a list of parts",
                        ))
                    }
                };
                out.push(message(role, text));
            }
            Some(other) => {
                return Err(bad(
                    &at(".type"),
                    format!("input items of type {other:?} are not supported"),
                ))
            }
        }
        // The thinking before this item is its assistant turn's (another role's message
        // in between leaves it out, as that turn is over).
        if let Some(t) = thought.take() {
            if let Some(m) = out.last_mut().filter(|m| m.role == "assistant") {
                if m.reasoning_content.is_none() {
                    m.reasoning_content = Some(Value::String(t));
                }
            }
        }
    }
    Ok(out)
}

/// The text of a `reasoning` input item: its `reasoning_text` content parts (what camelid's
/// own answers carry), else its `summary_text` parts, joined by newlines.
fn reasoning_text(item: &Value) -> String {
    let texts = |key: &str| -> Vec<&str> {
        item.get(key)
            .and_then(Value::as_array)
            .map(|parts| {
                parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default()
    };
    let content = texts("content");
    if content.is_empty() {
        texts("summary").join("\n")
    } else {
        content.join("\n")
    }
}

/// Text parts (`input_text`, `output_text`, `text`), joined by newlines; anything else
/// (images, files, audio) is refused: camelid serves text models.
fn parts_text(parts: &[Value], at: &str) -> Result<String, ApiError> {
    let mut texts = vec![];
    for (j, p) in parts.iter().enumerate() {
        let kind = p.get("type").and_then(Value::as_str);
        let text = match kind {
            Some("refusal") => p.get("refusal"),
            _ => p.get("text"),
        };
        match (kind, text.and_then(Value::as_str)) {
            (Some("input_text" | "output_text" | "text" | "refusal"), Some(t)) => texts.push(t),
            (kind, _) => {
                return Err(bad(
                    &format!("{at}[{j}]"),
                    match kind {
                        Some(k) => {
                            format!("content parts of type \"{k}\" are not supported; only text")
                        }
                        None => "a content part needs a `type` (only text is supported)".into(),
                    },
                ))
            }
        }
    }
    Ok(texts.join("\n"))
}

/// A Responses function tool (`{"type": "function", "name", "parameters", …}`) as a chat
/// tool; the hosted tools (web search, file search, …) are refused.
fn chat_tool(i: usize, t: &Value) -> Result<Value, ApiError> {
    match t.get("type").and_then(Value::as_str) {
        Some("function") => {
            let mut f = serde_json::Map::new();
            for k in ["name", "description", "parameters", "strict"] {
                if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                    f.insert(k.into(), v.clone());
                }
            }
            Ok(json!({"type": "function", "function": f}))
        }
        other => Err(bad(
            &format!("tools[{i}].type"),
            match other {
                Some(k) => format!("tools of type \"{k}\" are not supported; only \"function\""),
                None => "a tool needs a `type` (only \"function\" is supported)".into(),
            },
        )),
    }
}

/// `text.format` → `response_format`.
fn text_format(text: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = text.and_then(|t| t.get("format")).filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = serde_json::Map::new();
            for k in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(k).filter(|v| !v.is_null()) {
                    schema.insert(k.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(bad(
            "text.format",
            "`text.format.type` is \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}

/// The item being streamed.
enum Open {
    Reasoning {
        id: String,
        text: String,
    },
    /// The text so far, and its tokens' log-probability entries (with `include`).
    Message {
        id: String,
        text: String,
        logprobs: Vec<Value>,
    },
    Call {
        item: Value,
        arguments: String,
    },
}

/// Which answer text each token's log-probability entry goes with (`include` logprobs): the
/// text it shows in. A thinking token's (this API gives thinking none), a call's and call
/// markup's are dropped; one that shows nothing yet waits for the text the call parser
/// holds back, and goes with it.
#[derive(Debug, Default)]
pub struct TextLogprobs {
    held: Vec<Value>,
    /// A call has been read: output that shows nothing from here on is call markup (a
    /// closing tag, a call not sent), not text held back.
    called: bool,
}

impl TextLogprobs {
    /// The entries that go with `piece.text`, given the entry of the token that made the
    /// piece (`None` at the end, or without log-probabilities), whether that token was
    /// thinking, and whether the output has ended.
    pub fn route(
        &mut self,
        piece: &OutputPiece,
        entry: Option<Value>,
        thinking: bool,
        end: bool,
    ) -> Vec<Value> {
        self.called |= !piece.deltas.is_empty();
        if !piece.text.is_empty() {
            self.held.extend(entry);
            return std::mem::take(&mut self.held);
        }
        if !piece.deltas.is_empty() || end {
            self.held.clear();
        } else if !(thinking || self.called) {
            self.held.extend(entry);
        }
        vec![]
    }
}

/// A response as it is made: the typed stream events for each piece of output, and the
/// final `response` object (the whole answer is the same object, its events unsent).
pub struct ResponseWriter {
    response: Value,
    seq: u64,
    items: Vec<Value>,
    open: Option<Open>,
}

impl ResponseWriter {
    pub fn new(body: &ResponsesBody, model: &str) -> Self {
        let response = json!({
            "id": item_id("resp"),
            "object": "response",
            "created_at": crate::format::now_secs(),
            "status": "in_progress",
            "model": model,
            "output": [],
            "error": null,
            "incomplete_details": null,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "temperature": body.temperature.unwrap_or(1.0),
            "top_p": body.top_p.unwrap_or(1.0),
            "tools": body.tools.clone().unwrap_or_default(),
            "tool_choice": body.tool_choice.clone().unwrap_or(json!("auto")),
            "parallel_tool_calls": body.parallel_tool_calls.unwrap_or(true),
            "text": body.text.clone().unwrap_or(json!({"format": {"type": "text"}})),
            "metadata": body.metadata.clone().unwrap_or(json!({})),
            "previous_response_id": null,
            "reasoning": body.reasoning.clone().unwrap_or(Value::Null),
            "store": false,
            "truncation": "disabled",
            "user": body.user,
            "usage": null,
        });
        Self {
            response,
            seq: 0,
            items: vec![],
            open: None,
        }
    }

    fn event(&mut self, kind: &str, mut body: Value) -> Value {
        body["type"] = kind.into();
        body["sequence_number"] = self.seq.into();
        self.seq += 1;
        body
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self) -> Vec<Value> {
        let r = self.response.clone();
        vec![
            self.event("response.created", json!({"response": r})),
            self.event(
                "response.in_progress",
                json!({"response": self.response.clone()}),
            ),
        ]
    }

    fn index(&self) -> usize {
        self.items.len()
    }

    /// A piece of the thinking.
    pub fn thought(&mut self, piece: &str) -> Vec<Value> {
        let mut out = vec![];
        if piece.is_empty() {
            return out;
        }
        if !matches!(self.open, Some(Open::Reasoning { .. })) {
            out.extend(self.close());
            let id = item_id("rs");
            let item = json!({"type": "reasoning", "id": id, "summary": [], "content": [],
                              "status": "in_progress"});
            let index = self.index();
            out.push(self.event(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            ));
            self.open = Some(Open::Reasoning {
                id,
                text: String::new(),
            });
        }
        let index = self.index();
        let Some(Open::Reasoning { id, text }) = &mut self.open else {
            unreachable!()
        };
        text.push_str(piece);
        let body =
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": piece});
        out.push(self.event("response.reasoning_text.delta", body));
        out
    }

    /// A piece of the answer's text, with the log-probability entries of the tokens it
    /// shows (empty unless they were asked for).
    pub fn text(&mut self, piece: &str, piece_logprobs: Vec<Value>) -> Vec<Value> {
        let mut out = vec![];
        if piece.is_empty() {
            return out;
        }
        out.extend(self.open_message());
        let index = self.index();
        let Some(Open::Message { id, text, logprobs }) = &mut self.open else {
            unreachable!()
        };
        text.push_str(piece);
        logprobs.extend(piece_logprobs.iter().cloned());
        let body = json!({"item_id": id, "output_index": index, "content_index": 0,
                          "delta": piece, "logprobs": piece_logprobs});
        out.push(self.event("response.output_text.delta", body));
        out
    }

    fn open_message(&mut self) -> Vec<Value> {
        let mut out = vec![];
        if matches!(self.open, Some(Open::Message { .. })) {
            return out;
        }
        out.extend(self.close());
        let id = item_id("msg");
        let index = self.index();
        let item = json!({"type": "message", "id": id, "status": "in_progress",
                          "role": "assistant", "content": []});
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        ));
        let part = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
        out.push(self.event(
            "response.content_part.added",
            json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
        ));
        self.open = Some(Open::Message {
            id,
            text: String::new(),
            logprobs: vec![],
        });
        out
    }

    /// A chat stream's `tool_calls` delta: a call's start (it has an `id`) or a piece of its
    /// arguments.
    pub fn call_delta(&mut self, d: &Value) -> Vec<Value> {
        let mut out = vec![];
        if let Some(call_id) = d.get("id") {
            out.extend(self.close());
            let item = json!({"type": "function_call", "id": item_id("fc"), "call_id": call_id,
                "name": d["function"]["name"], "arguments": "", "status": "in_progress"});
            let index = self.index();
            out.push(self.event(
                "response.output_item.added",
                json!({"output_index": index, "item": item.clone()}),
            ));
            self.open = Some(Open::Call {
                item,
                arguments: String::new(),
            });
            return out;
        }
        let piece = d["function"]["arguments"].as_str().unwrap_or_default();
        let index = self.index();
        let Some(Open::Call { item, arguments }) = &mut self.open else {
            return out; // a piece of a call that was not sent (parallel calls off)
        };
        arguments.push_str(piece);
        let id = item["id"].clone();
        out.push(self.event(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": index, "delta": piece}),
        ));
        out
    }

    /// Ends the item being streamed: its `…done` events, and it joins the output.
    fn close(&mut self) -> Vec<Value> {
        self.close_as("completed")
    }

    /// [`Self::close`] with the item's `status` (`incomplete`: cut by the output limit), the
    /// same in its `output_item.done` as in the final response.
    fn close_as(&mut self, status: &str) -> Vec<Value> {
        let index = self.index();
        let mut out = vec![];
        let item = match self.open.take() {
            None => return out,
            Some(Open::Reasoning { id, text }) => {
                out.push(self.event(
                    "response.reasoning_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}),
                ));
                json!({"type": "reasoning", "id": id, "summary": [], "status": status,
                       "content": [{"type": "reasoning_text", "text": text}]})
            }
            Some(Open::Message { id, text, logprobs }) => {
                let part = json!({"type": "output_text", "text": text, "annotations": [],
                                  "logprobs": logprobs});
                out.push(self.event(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                           "text": text, "logprobs": logprobs}),
                ));
                out.push(self.event(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                ));
                json!({"type": "message", "id": id, "status": status, "role": "assistant",
                       "content": [part]})
            }
            Some(Open::Call {
                mut item,
                arguments,
            }) => {
                out.push(self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": item["id"], "output_index": index,
                           "arguments": arguments}),
                ));
                item["arguments"] = arguments.into();
                item["status"] = status.into();
                item
            }
        };
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        ));
        self.items.push(item);
        out
    }

    /// The answer is done: the last item closed (an empty message if there was nothing), and
    /// `response.completed` (or `response.incomplete` when cut by `max_output_tokens`).
    /// `reasoning_tokens`: the output tokens that were thinking.
    pub fn finish(
        &mut self,
        reason: FinishReason,
        usage: &Usage,
        reasoning_tokens: usize,
    ) -> Vec<Value> {
        let mut out = vec![];
        if self.items.is_empty() && self.open.is_none() {
            out.extend(self.open_message());
        }
        // The item the limit cut is incomplete, in its own events as in the response.
        out.extend(self.close_as(match reason {
            FinishReason::Length => "incomplete",
            FinishReason::Stop => "completed",
        }));
        let r = &mut self.response;
        r["output"] = Value::Array(self.items.clone());
        r["usage"] = json!({
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        });
        let kind = match reason {
            FinishReason::Stop => {
                r["status"] = "completed".into();
                "response.completed"
            }
            FinishReason::Length => {
                r["status"] = "incomplete".into();
                r["incomplete_details"] = json!({"reason": "max_output_tokens"});
                "response.incomplete"
            }
        };
        let r = self.response.clone();
        out.push(self.event(kind, json!({"response": r})));
        out
    }

    /// How a stream that fails ends: the open item closed, an `error` event, and
    /// `response.failed` with the output so far.
    pub fn fail(&mut self, e: &ApiError) -> Vec<Value> {
        let mut out = self.close();
        let code = e.code.unwrap_or(if e.status.is_server_error() {
            "server_error"
        } else {
            "invalid_request"
        });
        let body = json!({"code": code, "message": e.message, "param": e.param});
        out.push(self.event("error", body));
        let r = &mut self.response;
        r["status"] = "failed".into();
        r["output"] = Value::Array(self.items.clone());
        r["error"] = json!({"code": code, "message": e.message});
        let r = self.response.clone();
        out.push(self.event("response.failed", json!({"response": r})));
        out
    }

    /// The final response object.
    pub fn response(&self) -> &Value {
        &self.response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probabilities_go_with_the_text_their_tokens_show() {
        let piece = |text: &str, call: bool| OutputPiece {
            thought: String::new(),
            text: text.into(),
            deltas: if call {
                vec![json!({"index": 0})]
            } else {
                vec![]
            },
        };
        let e = |t: &str| Some(json!({"token": t}));
        let tokens = |v: Vec<Value>| -> Vec<String> {
            v.iter()
                .map(|x| x["token"].as_str().unwrap().to_string())
                .collect()
        };
        let mut r = TextLogprobs::default();
        // Thinking and its closing tag show no answer text: their entries are dropped.
        assert!(r
            .route(&piece("", false), e("</think>"), true, false)
            .is_empty());
        // Text the call parser held back comes out with the entries of its tokens.
        assert!(r.route(&piece("", false), e("<"), false, false).is_empty());
        assert_eq!(
            tokens(r.route(&piece("<b", false), e("b"), false, false)),
            ["<", "b"]
        );
        // A call's tokens (the held trigger too) and the markup after it have none.
        assert!(r
            .route(&piece("", false), e("<tool_call>"), false, false)
            .is_empty());
        assert!(r.route(&piece("", true), e("{"), false, false).is_empty());
        assert!(r
            .route(&piece("", false), e("</tool_call>"), false, false)
            .is_empty());
        assert_eq!(
            tokens(r.route(&piece(" ok", false), e(" ok"), false, false)),
            [" ok"]
        );
        // At the end: what the parser still held goes with the text it releases, if any.
        let mut r = TextLogprobs::default();
        r.route(&piece("", false), e("<"), false, false);
        assert_eq!(
            tokens(r.route(&piece("<", false), None, false, true)),
            ["<"]
        );
        let mut r = TextLogprobs::default();
        r.route(&piece("", false), e("<"), false, false);
        assert!(r.route(&piece("", false), None, false, true).is_empty());
        assert!(r.held.is_empty());
    }

    fn body(v: Value) -> ResponsesBody {
        crate::openai::from_value(&v).unwrap()
    }

    /// A reasoning item's text goes back with the assistant turn after it (the template
    /// decides whether to show it); thinking followed by another role's message is dropped.
    #[test]
    fn a_reasoning_items_text_goes_with_its_assistant_turn() {
        let b = body(json!({"model": "m", "input": [
            {"role": "user", "content": "Weather?"},
            {"type": "reasoning", "id": "rs_1", "summary": [],
             "content": [{"type": "reasoning_text", "text": "Call the tool."}]},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sun"},
            {"type": "reasoning", "id": "rs_2",
             "summary": [{"type": "summary_text", "text": "It is sunny."}]},
            {"type": "message", "role": "assistant", "content": "Sun."},
            {"type": "reasoning", "id": "rs_3", "summary": [{"type": "summary_text", "text": "lost"}]},
            {"role": "user", "content": "Thanks."}],
            "reasoning": {"effort": "low"}}));
        let (req, _) = b.chat_request().unwrap();
        let thoughts: Vec<(&str, Option<&Value>)> = req
            .messages
            .iter()
            .map(|m| (m.role.as_str(), m.reasoning_content.as_ref()))
            .collect();
        assert_eq!(
            thoughts,
            [
                ("user", None),
                ("assistant", Some(&json!("Call the tool."))),
                ("tool", None),
                ("assistant", Some(&json!("It is sunny."))),
                ("user", None),
            ]
        );
        // The request's reasoning settings are echoed, as OpenAI's response object does.
        let w = ResponseWriter::new(&b, "m");
        assert_eq!(w.response()["reasoning"], json!({"effort": "low"}));
    }

    #[test]
    fn input_items_become_a_chat() {
        let b = body(json!({"model": "m", "instructions": "Be brief.", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sun"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sun."}]}],
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "w"},
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}}));
        let (req, f) = b.chat_request().unwrap();
        let roles: Vec<&str> = req.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "assistant"]);
        assert_eq!(
            req.messages[2]
                .tool_calls
                .as_ref()
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(req.messages[3].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(req.tools.unwrap()[0]["function"]["name"], "w");
        assert_eq!(req.tool_choice.unwrap()["function"]["name"], "w");
        assert_eq!(f.response_format.unwrap()["json_schema"]["name"], "x");
        // Refused by name.
        let err = |v: Value| body(v).chat_request().unwrap_err().param.unwrap();
        assert_eq!(
            err(json!({"model": "m", "input": "hi", "previous_response_id": "r"})),
            "previous_response_id"
        );
        assert_eq!(
            err(json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]})),
            "tools[0].type"
        );
        assert_eq!(
            err(
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image"}]}]})
            ),
            "input[0].content[0]"
        );
        assert_eq!(err(json!({"model": "m", "input": 5})), "input");
        // `allowed_tools`: the subset offered, in its mode.
        let (req, _) = body(json!({"model": "m", "input": "hi", "tools": [
                {"type": "function", "name": "a"}, {"type": "function", "name": "b"}],
            "tool_choice": {"type": "allowed_tools", "mode": "required",
                            "tools": [{"type": "function", "name": "b"}]}}))
        .chat_request()
        .unwrap();
        let offered = req.tools.unwrap();
        assert_eq!(offered.as_array().unwrap().len(), 1);
        assert_eq!(offered[0]["function"]["name"], "b");
        assert_eq!(req.tool_choice, Some(json!("required")));
        assert_eq!(
            err(json!({"model": "m", "input": [{"role": "tool", "content": "x"}]})),
            "input[0].role"
        );
        // A turn replayed from an output (text, then its call) is one assistant message;
        // instructions and the input's own system message are one.
        let b = body(json!({"model": "m", "instructions": "Be brief.", "input": [
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": "Weather?"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sun"}]}));
        let (req, _) = b.chat_request().unwrap();
        let roles: Vec<&str> = req.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["developer", "user", "assistant", "tool"]);
        assert!(
            matches!(&req.messages[0].content, Some(Content::Text(t)) if t == "Be brief.\n\nUse tools.")
        );
        assert!(matches!(&req.messages[2].content, Some(Content::Text(t)) if t == "Checking."));
        assert_eq!(req.messages[2].tool_calls.as_ref().unwrap()[0]["id"], "c1");
    }

    /// Items open and close in output order; the final response holds them whole.
    #[test]
    fn events_build_the_items_in_order() {
        let b = body(json!({"model": "m", "input": "hi"}));
        let mut w = ResponseWriter::new(&b, "m");
        let mut ev = w.start();
        ev.extend(w.thought("hmm"));
        ev.extend(w.text("Hel", vec![]));
        ev.extend(w.text("lo", vec![]));
        ev.extend(
            w.call_delta(&json!({"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": ""}})),
        );
        ev.extend(w.call_delta(&json!({"index": 0, "function": {"arguments": "{\"a\""}})));
        ev.extend(w.call_delta(&json!({"index": 0, "function": {"arguments": ": 1}"}})));
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 5,
            cached_tokens: 0,
        };
        ev.extend(w.finish(FinishReason::Stop, &usage, 1));
        let kinds: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds.first(), Some(&"response.created"));
        assert_eq!(kinds.last(), Some(&"response.completed"));
        let seqs: Vec<u64> = ev
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        let out = &w.response()["output"];
        assert_eq!(out[0]["type"], "reasoning");
        assert_eq!(out[0]["content"][0]["text"], "hmm");
        assert_eq!(out[1]["content"][0]["text"], "Hello");
        assert_eq!(out[2]["arguments"], "{\"a\": 1}");
        assert_eq!(out[2]["call_id"], "call_1");
        assert_eq!(w.response()["usage"]["total_tokens"], 8);
        assert_eq!(
            w.response()["usage"]["output_tokens_details"]["reasoning_tokens"],
            1
        );
        assert!(w.response()["id"].as_str().unwrap().starts_with("resp_"));
        assert!(out[2]["id"].as_str().unwrap().starts_with("fc_"));
        // Nothing written: still one (empty) message, which the limit cut.
        let mut w = ResponseWriter::new(&b, "m");
        let ev = w.finish(FinishReason::Length, &usage, 0);
        assert_eq!(w.response()["output"][0]["content"][0]["text"], "");
        assert_eq!(w.response()["output"][0]["status"], "incomplete");
        assert_eq!(w.response()["status"], "incomplete");
        // The item's own `done` event says so too, not `completed` before `incomplete`.
        let done: Vec<&Value> = ev
            .iter()
            .filter(|e| e["type"] == "response.output_item.done")
            .collect();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0]["item"]["status"], "incomplete");
        // A failure mid-stream: the open item closed, `error`, then `response.failed` with
        // the output so far.
        let mut w = ResponseWriter::new(&b, "m");
        w.start();
        w.text("Par", vec![]);
        let ev = w.fail(&ApiError::internal("engine stopped"));
        let kinds: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds[kinds.len() - 2..], ["error", "response.failed"]);
        assert_eq!(ev[kinds.len() - 2]["code"], "server_error");
        let r = &ev.last().unwrap()["response"];
        assert_eq!(r["status"], "failed");
        assert_eq!(r["output"][0]["content"][0]["text"], "Par");
    }
}
