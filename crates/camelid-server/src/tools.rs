//! OpenAI tool calling on the chat route: `tools`, `tool_choice` and `parallel_tool_calls`
//! checked into a [`ToolPlan`]; a conversation's assistant `tool_calls` as the template reads
//! them; calls found in the output as `message.tool_calls` and as stream deltas.

use crate::error::ApiError;
use crate::openai::ChatRequest;
use crate::run::blocking;
use crate::state::{ModelEntry, Permit};
use crate::structured::Requested;
use camelid_model::text::reasoning::{ReasoningSplitter, Split};
use camelid_model::text::tokenizer::Tokenizer;
use camelid_model::text::tool_calls::{renders_tools, ToolCallParser, ToolEvent, ToolFormat};
use camelid_model::text::tool_grammar::{
    answer_or_calls, arguments_schema, call_grammar, lazy_trigger, CallableTool,
};
use camelid_model::{ChatTemplate, Constraint, GrammarCompiler, Message, TopLevelGrammar};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// No call: the tools are still shown to the model (as OpenAI does), the output is text.
    None,
    /// The model chooses between text and calls; calls are parsed from the output.
    Auto,
    /// At least one call, enforced by a grammar.
    Required,
    /// A call of this function, enforced by a grammar.
    Named(String),
}

/// What a request's tools ask for, checked against the model's template.
#[derive(Debug, Clone)]
pub struct ToolPlan {
    /// The function definitions as given, for the template.
    pub tools: Vec<Value>,
    pub choice: ToolChoice,
    pub parallel: bool,
    /// How the template writes calls (so how they are parsed and constrained).
    pub format: ToolFormat,
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message)
}

/// OpenAI's rule for function names.
fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether a field is absent, null or one of `off`.
fn off(v: &Option<Value>, off: &[&str]) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => off.contains(&s.as_str()),
        Some(_) => false,
    }
}

/// The legacy `functions` / `function_call`: refused with a pointer to `tools` (mapping them
/// would answer in `tool_calls`, which their clients do not read).
fn refuse_legacy(req: &ChatRequest) -> Result<(), ApiError> {
    let empty = |v: &Option<Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    const USE_TOOLS: &str =
        "the legacy function calling is not supported; send `tools` and `tool_choice` instead";
    if !empty(&req.functions) {
        return Err(bad("functions", format!("`functions`: {USE_TOOLS}")));
    }
    if !off(&req.function_call, &["none", "auto"]) {
        return Err(bad(
            "function_call",
            format!("`function_call`: {USE_TOOLS}"),
        ));
    }
    Ok(())
}

/// One entry of `tools`: `{"type": "function", "function": {"name", "description"?,
/// "parameters"?, "strict"?}}`.
fn check_tool(i: usize, t: &Value) -> Result<String, ApiError> {
    let at = |f: &str| format!("tools[{i}]{f}");
    let o = t
        .as_object()
        .ok_or_else(|| bad(&at(""), "a tool must be an object"))?;
    if o.get("type").and_then(Value::as_str) != Some("function") {
        return Err(bad(
            &at(".type"),
            "only tools of type \"function\" are supported",
        ));
    }
    let f = o
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| bad(&at(".function"), "`function` must be an object"))?;
    let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
    if !valid_name(name) {
        return Err(bad(
            &at(".function.name"),
            "a function name must be 1 to 64 letters, digits, underscores or dashes",
        ));
    }
    if let Some(d) = f.get("description") {
        if !d.is_string() && !d.is_null() {
            return Err(bad(&at(".function.description"), "must be a string"));
        }
    }
    match f.get("parameters") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(bad(
                &at(".function.parameters"),
                "`parameters` must be a JSON schema object",
            ))
        }
    }
    Ok(name.to_string())
}

/// A request's `tools` (absent or null: none), each checked, at most `max_tools` of them, and
/// their names (distinct).
fn checked_tools(
    tools: Option<&Value>,
    max_tools: usize,
) -> Result<(Vec<Value>, HashSet<String>), ApiError> {
    let tools: Vec<Value> = match tools {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) if a.len() > max_tools => {
            return Err(bad(
                "tools",
                format!(
                    "`tools`: {} tools; at most {max_tools} are allowed",
                    a.len()
                ),
            ))
        }
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(bad("tools", "`tools` must be an array of tools")),
    };
    let mut names = HashSet::new();
    for (i, t) in tools.iter().enumerate() {
        let n = check_tool(i, t)?;
        if names.contains(&n) {
            return Err(bad(
                &format!("tools[{i}].function.name"),
                format!("two tools are named {n:?}"),
            ));
        }
        names.insert(n);
    }
    Ok((tools, names))
}

/// The error code of tools a model's template does not render (Ollama's routes answer it in
/// Ollama's words).
pub const TOOLS_NOT_SUPPORTED: &str = "tools_not_supported";

/// Tools the model's template does not render are a 400: the model could not know them.
/// The probe renders stop at `max_bytes`.
fn check_rendered(
    template: &ChatTemplate,
    tools: &[Value],
    max_bytes: usize,
) -> Result<(), ApiError> {
    let rendered = renders_tools(template, tools, max_bytes)
        .map_err(|e| ApiError::invalid_param("tools", e.to_string()))?;
    if !rendered {
        return Err(ApiError {
            code: Some(TOOLS_NOT_SUPPORTED),
            ..bad(
                "tools",
                "this model's chat template does not render tools, so the model cannot be \
                 offered them (serve it with a tools-capable template: `--chat-template FILE`)",
            )
        });
    }
    Ok(())
}

/// The tools a `/tokenize` chat body shows the model, checked as a chat's are: the
/// prompt's tokens then count them, as the chat's `usage` does (vLLM's `/tokenize` too).
pub fn tokenize_tools(
    tools: Option<&Value>,
    template: &ChatTemplate,
    max_tools: usize,
    max_bytes: usize,
) -> Result<Option<Vec<Value>>, ApiError> {
    let (tools, _) = checked_tools(tools, max_tools)?;
    if tools.is_empty() {
        return Ok(None);
    }
    check_rendered(template, &tools, max_bytes)?;
    Ok(Some(tools))
}

impl ToolPlan {
    /// The request's tools, checked; `None` when it has none (then `tool_choice` may only be
    /// `none` or `auto`). Tools the model's template does not render are a 400: the model
    /// could not know them.
    ///
    /// At most `max_tools` tools (OpenAI's limit is 128); the probe renders stop at
    /// `max_bytes`.
    pub fn from_request(
        req: &ChatRequest,
        template: &ChatTemplate,
        max_tools: usize,
        max_bytes: usize,
    ) -> Result<Option<ToolPlan>, ApiError> {
        refuse_legacy(req)?;
        let (tools, names) = checked_tools(req.tools.as_ref(), max_tools)?;
        let choice = match &req.tool_choice {
            None | Some(Value::Null) if tools.is_empty() => ToolChoice::None,
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "none" => ToolChoice::None,
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                other => {
                    return Err(bad(
                        "tool_choice",
                        format!("`tool_choice` must be \"none\", \"auto\", \"required\" or a function, got {other:?}"),
                    ))
                }
            },
            Some(v) => {
                let name = (v.get("type").and_then(Value::as_str) == Some("function"))
                    .then(|| v.pointer("/function/name").and_then(Value::as_str))
                    .flatten()
                    .ok_or_else(|| {
                        bad(
                            "tool_choice",
                            "a named `tool_choice` is {\"type\": \"function\", \"function\": {\"name\": …}}",
                        )
                    })?;
                if !names.contains(name) {
                    return Err(bad(
                        "tool_choice",
                        format!("`tool_choice` names the function {name:?}, which is not in `tools`"),
                    ));
                }
                ToolChoice::Named(name.to_string())
            }
        };
        if tools.is_empty() {
            return match choice {
                ToolChoice::None | ToolChoice::Auto => Ok(None),
                _ => Err(bad("tool_choice", "`tool_choice` requires `tools`")),
            };
        }
        if let Err(e) = check_rendered(template, &tools, max_bytes) {
            // Under `none` the tools need not be shown (vLLM's
            // `--exclude-tools-when-tool-choice-none`): agent frameworks send theirs with
            // every request, to models whose template has no place for them too.
            return if choice == ToolChoice::None && e.code == Some(TOOLS_NOT_SUPPORTED) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        // Under `auto` such a model's calls would come back as text; `required` and a named
        // function are forced into a format the grammar holds (and read).
        if choice == ToolChoice::Auto && ToolFormat::template_teaches_pythonic(template) {
            return Err(ApiError {
                code: Some(TOOLS_NOT_SUPPORTED),
                ..bad(
                    "tools",
                    "this model's chat template asks for pythonic tool calls \
                     ([name(arg=value)]), which camelid does not read under `tool_choice: \
                     \"auto\"`: serve it with a template in a JSON call format \
                     (`--chat-template FILE`), or send `required`, a named function or `none`",
                )
            });
        }
        Ok(Some(ToolPlan {
            tools,
            choice,
            parallel: req.parallel_tool_calls.unwrap_or(true),
            format: ToolFormat::for_template(template),
        }))
    }

    /// Whether the output is read for calls.
    pub fn parses(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The function named by `tool_choice`, if one is.
    fn named(&self) -> Option<&str> {
        match &self.choice {
            ToolChoice::Named(n) => Some(n.as_str()),
            _ => None,
        }
    }

    /// Whether calls are forced (`required`, a named function).
    pub fn forced(&self) -> bool {
        matches!(self.choice, ToolChoice::Required | ToolChoice::Named(_))
    }

    /// The functions a grammar lets the model call (the named one, else all), with their
    /// index in `tools`.
    fn callable(&self) -> Vec<(usize, CallableTool<'_>)> {
        let named = self.named();
        self.tools
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let f = t.get("function")?;
                let name = f.get("name")?.as_str()?;
                let parameters = f.get("parameters").filter(|p| p.is_object());
                let strict = f.get("strict") == Some(&Value::Bool(true));
                Some((
                    i,
                    CallableTool {
                        name,
                        parameters,
                        strict,
                    },
                ))
            })
            .filter(|(_, t)| named.is_none_or(|n| n == t.name))
            .collect()
    }

    /// The plan with the arguments of each callable function that `refused` (its schema
    /// alone does not compile) taken as any object.
    fn relaxed(&self, refused: &dyn Fn(CallableTool) -> bool) -> ToolPlan {
        let mut plan = self.clone();
        for (i, t) in self.callable() {
            if refused(t) {
                if let Some(f) = plan.tools[i].get_mut("function") {
                    f["parameters"] = json!({"type": "object"});
                }
            }
        }
        plan
    }

    /// Whether a function asks for `strict` arguments (OpenAI then keeps its schema under
    /// `auto` too).
    fn any_strict(&self) -> bool {
        self.tools
            .iter()
            .any(|t| t.pointer("/function/strict") == Some(&Value::Bool(true)))
    }

    /// The Lark grammar of the output's calls and, where it waits for the model to begin a
    /// call, the text that begins one:
    /// - `required`, a named function: calls only (a named function is called once);
    /// - `auto` beside a JSON answer format (`answer`: its schema): that answer or calls;
    /// - `auto` alone: free text until the format's call opening, then calls (Llama 3's JSON
    ///   calls have no opening: no grammar);
    /// - `none`: none.
    ///
    /// `special_token`: the id of a token the grammar's vocabulary holds as special
    /// ([`GrammarCompiler::special_token`]).
    pub fn grammar(
        &self,
        special_token: &dyn Fn(&str) -> Option<u32>,
        answer: Option<&Value>,
    ) -> Option<(String, Option<&'static str>)> {
        let callable: Vec<CallableTool> = self.callable().into_iter().map(|(_, t)| t).collect();
        let parallel = self.parallel && self.named().is_none();
        match (&self.choice, answer) {
            (ToolChoice::None, _) => None,
            (ToolChoice::Required | ToolChoice::Named(_), _) => Some((
                call_grammar(self.format, &callable, parallel, special_token),
                None,
            )),
            (ToolChoice::Auto, Some(answer)) => Some((
                answer_or_calls(self.format, &callable, parallel, special_token, answer),
                None,
            )),
            (ToolChoice::Auto, None) => {
                let trigger = lazy_trigger(self.format)?;
                Some((
                    call_grammar(self.format, &callable, parallel, special_token),
                    Some(trigger),
                ))
            }
        }
    }

    /// Whether the call trigger is a control token of `tok` (Mistral's `[TOOL_CALLS]`, Llama's
    /// `<|python_tag|>`): the output must then keep special tokens for the parser to see it.
    pub fn needs_special_tokens(&self, tok: &Tokenizer) -> bool {
        self.parses()
            && tok
                .token_to_id(self.format.trigger())
                .is_some_and(|id| tok.is_special(id))
    }

    /// The functions' names, as the tools give them.
    fn names(&self) -> Vec<String> {
        self.tools
            .iter()
            .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
            .map(String::from)
            .collect()
    }

    /// The parser for one choice's output.
    pub fn stream(&self) -> CallStream {
        CallStream {
            parser: ToolCallParser::new(self.format).with_names(self.names()),
            format: self.format,
            parallel: self.parallel,
            sent: 0,
            dropping: false,
        }
    }
}

/// The grammar a request's tools put on its output ([`ToolPlan::grammar`]) and, when it
/// applies lazily, the text that starts it.
pub struct CallConstraint {
    pub constraint: Constraint,
    pub trigger: Option<String>,
}

/// Compiles the grammar of the output's calls ([`ToolPlan::grammar`]; `answer`: the
/// request's `response_format` or other output constraint), off the async workers under the
/// request's permit. `None`: the tools add nothing (`none`; `auto` with a constraint that is
/// not a JSON schema, which then applies alone; `auto` in a format without a call opening).
/// A forced call's grammar that does not compile is a 400 naming the `parameters` at fault;
/// under `auto` so is a `strict` function's, and any other leaves the calls unchecked (as
/// before a grammar was kept under `auto`, and as vLLM does).
pub async fn compile(
    permit: &Permit,
    model: &Arc<ModelEntry>,
    plan: &ToolPlan,
    answer: Option<&Requested>,
) -> Result<Option<CallConstraint>, ApiError> {
    let answer = match answer {
        Some(a) if plan.choice == ToolChoice::Auto => match &a.schema {
            // `true` (any JSON) as the schema `%json` takes for it.
            Some(Value::Bool(true)) => Some(json!({})),
            Some(schema) => Some(schema.clone()),
            None => return Ok(None),
        },
        _ => None,
    };
    let compiler = model.grammar().clone();
    let plan = plan.clone();
    blocking(permit, move || {
        let special = |t: &str| compiler.special_token(t);
        let compiled = |plan: &ToolPlan| {
            let (g, trigger) = plan.grammar(&special, answer.as_ref())?;
            Some(
                compiler
                    .compile(TopLevelGrammar::from_lark(g))
                    .map(|constraint| CallConstraint {
                        constraint,
                        trigger: trigger.map(String::from),
                    }),
            )
        };
        match compiled(&plan) {
            None => Ok(None),
            Some(Ok(c)) => Ok(Some(c)),
            Some(Err(why)) if plan.forced() => Err(schema_refused(&plan, &compiler, false)
                .unwrap_or_else(|| {
                    bad(
                        "tool_choice",
                        format!("The tool-call grammar for `tool_choice` does not compile: {why}"),
                    )
                })),
            // `auto`: a strict function's schema must hold (a 400 naming it); a function
            // whose schema the compiler refuses otherwise takes any object as arguments
            // (unchecked, as vLLM leaves them), and the other functions' schemas and the
            // answer format still hold. (Leaving out the whole grammar beside a JSON answer
            // format had left that format alone, from the first token: no call possible.)
            Some(Err(_)) => {
                if plan.any_strict() {
                    if let Some(e) = schema_refused(&plan, &compiler, true) {
                        return Err(e);
                    }
                }
                let relaxed = plan.relaxed(&|t| {
                    compiler
                        .compile(TopLevelGrammar::from_json_schema(arguments_schema(t)))
                        .is_err()
                });
                Ok(compiled(&relaxed).and_then(Result::ok))
            }
        }
    })
    .await
}

/// The first callable function (`strict` ones only, with `strict_only`) whose arguments
/// schema alone the compiler refuses, as a 400 naming its `parameters` (the reason in the
/// client's own terms).
fn schema_refused(
    plan: &ToolPlan,
    compiler: &GrammarCompiler,
    strict_only: bool,
) -> Option<ApiError> {
    let strict = |i: usize| plan.tools[i].pointer("/function/strict") == Some(&Value::Bool(true));
    plan.callable().into_iter().find_map(|(i, t)| {
        if strict_only && !strict(i) {
            return None;
        }
        let e = compiler
            .compile(TopLevelGrammar::from_json_schema(arguments_schema(t)))
            .err()?;
        let at = format!("tools[{i}].function.parameters");
        Some(bad(&at, format!("Invalid JSON schema in `{at}`: {e}")))
    })
}

/// An assistant message's `tool_calls` as templates read them: OpenAI's objects with
/// `arguments` parsed from its JSON text into an object (HF's convention, vLLM does the same).
/// Arguments that are not JSON (a call cut short, a client's `invalid_tool_calls` written
/// back) stay the string they are: OpenAI takes them as opaque text, and refusing them would
/// refuse every later turn of that conversation.
pub fn template_tool_calls(i: usize, calls: &Value) -> Result<Vec<Value>, ApiError> {
    let at = |j: usize, f: &str| format!("messages[{i}].tool_calls[{j}]{f}");
    let calls = calls
        .as_array()
        .ok_or_else(|| bad(&format!("messages[{i}].tool_calls"), "must be an array"))?;
    calls
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let f = c
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| bad(&at(j, ".function"), "must be an object"))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&at(j, ".function.name"), "must be a string"))?;
            let arguments = match f.get("arguments") {
                // A call without arguments, as some clients write it back (vLLM reads `{}`).
                Some(Value::String(s)) if s.trim().is_empty() => json!({}),
                Some(Value::String(s)) => {
                    serde_json::from_str::<Value>(s).unwrap_or_else(|_| Value::from(s.as_str()))
                }
                Some(v @ Value::Object(_)) => v.clone(),
                None | Some(Value::Null) => json!({}),
                Some(_) => {
                    return Err(bad(
                        &at(j, ".function.arguments"),
                        "must be a JSON text (a string)",
                    ))
                }
            };
            let id = c.get("id").and_then(Value::as_str).unwrap_or_default();
            Ok(json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }))
        })
        .collect()
}

/// Whether a format is Mistral's: its models take call ids of 9 letters and digits
/// (mistral-common's rule; the templates of Mistral-7B-Instruct-v0.3 and Mistral-Nemo raise
/// "Tool call IDs should be alphanumeric strings with length 9!" for any other length).
fn mistral_ids(format: ToolFormat) -> bool {
    matches!(format, ToolFormat::Mistral | ToolFormat::MistralArgs)
}

/// A new call id: OpenAI's shape, or 9 letters and digits for Mistral's formats (as vLLM's
/// Mistral tool parser makes them), so the call can be sent back in the conversation.
pub fn call_id(format: ToolFormat) -> String {
    let mut rng = rand::rng();
    if mistral_ids(format) {
        Alphanumeric.sample_string(&mut rng, 9)
    } else {
        format!("call_{}", Alphanumeric.sample_string(&mut rng, 24))
    }
}

/// For a template in Mistral's formats, the conversation's call ids (assistants'
/// `tool_calls[].id`, tools' `tool_call_id`) longer than 9 characters cut to their last 9, as
/// vLLM's `truncate_tool_call_ids` does: ids from elsewhere (OpenAI's `call_…`) then render
/// instead of failing the template's length check, and a call and its result still pair up.
/// Done for every such template, not only those that check: the ids only pair calls with
/// results, and these models saw 9-character ids in training.
pub fn fit_call_ids(template: &ChatTemplate, msgs: &mut [Message]) {
    if !mistral_ids(ToolFormat::for_template(template)) {
        return;
    }
    let last9 = |id: &str| -> Option<String> {
        let n = id.chars().count();
        (n > 9).then(|| id.chars().skip(n - 9).collect())
    };
    for m in msgs {
        for c in m.tool_calls.iter_mut().flatten() {
            if let Some(id) = c.get("id").and_then(Value::as_str).and_then(last9) {
                c["id"] = id.into();
            }
        }
        if let Some(id) = m.tool_call_id.as_deref().and_then(last9) {
            m.tool_call_id = Some(id);
        }
    }
}

/// A whole output → its text (`None` when blank and there are calls) and its calls.
pub fn split_output(plan: &ToolPlan, output: &str) -> (Option<String>, Vec<Value>) {
    let mut s = plan.stream();
    let (mut text, mut deltas) = s.push(output);
    let (t, d) = s.finish();
    text += &t;
    deltas.extend(d);
    // Ended inside a call (a stop string cut it): no call the model never finished, its
    // output is text (as vLLM answers an unclosed call).
    if s.cut() {
        return (Some(output.to_string()), vec![]);
    }
    let calls = whole_calls(deltas);
    let text = (calls.is_empty() || !text.trim().is_empty()).then_some(text);
    (text, calls)
}

/// Whole calls from [`CallStream`] deltas: each call's first delta (without its `index`),
/// its arguments pieces appended.
pub fn whole_calls(deltas: Vec<Value>) -> Vec<Value> {
    let mut calls: Vec<Value> = vec![];
    for mut d in deltas {
        if d.get("id").is_some() {
            if let Some(o) = d.as_object_mut() {
                o.remove("index");
            }
            calls.push(d);
        } else if let Some(c) = calls.last_mut() {
            let whole = format!(
                "{}{}",
                c["function"]["arguments"].as_str().unwrap_or_default(),
                d["function"]["arguments"].as_str().unwrap_or_default()
            );
            c["function"]["arguments"] = whole.into();
        }
    }
    calls
}

/// Whether `template` offers tools to the model (it renders a probe tool into the prompt).
pub fn template_takes_tools(template: &ChatTemplate) -> bool {
    let probe = [
        json!({"type": "function", "function": {"name": "camelid_probe_tool",
        "description": "probe", "parameters": {"type": "object", "properties": {}}}}),
    ];
    renders_tools(template, &probe, 1 << 20).unwrap_or(false)
}

/// What a piece of one choice's output is: thinking, answer text, and tool-call deltas (as
/// [`CallStream::push`] gives them), in that order.
#[derive(Debug, Default)]
pub struct OutputPiece {
    pub thought: String,
    pub text: String,
    pub deltas: Vec<Value>,
}

/// One choice's output read as it streams, as every streaming route reads it: a leading
/// thinking block split off (when the output is split), then the answer read for tool
/// calls (when the request has tools).
#[derive(Debug)]
pub struct OutputReader {
    thinking: Option<ReasoningSplitter>,
    calls: Option<CallStream>,
    /// Tokens pushed that were thinking.
    thinking_tokens: usize,
}

impl OutputReader {
    /// `reasoning`: as `chat::Submitted::reasoning` (whether the prompt opened the block).
    pub fn new(reasoning: Option<bool>, calls: Option<CallStream>) -> Self {
        Self {
            thinking: reasoning.map(ReasoningSplitter::new),
            calls,
            thinking_tokens: 0,
        }
    }

    /// One token's text.
    pub fn push(&mut self, text: &str) -> OutputPiece {
        // A token inside the block, or the one that opens or closes it, is thinking.
        let before = self.in_reasoning();
        let split = match &mut self.thinking {
            Some(s) => s.push(text),
            None => Split {
                reasoning: String::new(),
                content: text.to_string(),
            },
        };
        if before || self.in_reasoning() {
            self.thinking_tokens += 1;
        }
        self.answer(split, false)
    }

    /// The tokens pushed that were thinking (OpenAI's `reasoning_tokens`); `None` when the
    /// output is not split.
    pub fn thinking_tokens(&self) -> Option<usize> {
        self.thinking.as_ref().map(|_| self.thinking_tokens)
    }

    /// The output has ended: what the split and the parser held back.
    pub fn finish(&mut self) -> OutputPiece {
        let split = self
            .thinking
            .as_mut()
            .map(|s| s.finish())
            .unwrap_or_default();
        self.answer(split, true)
    }

    fn answer(&mut self, split: Split, end: bool) -> OutputPiece {
        let (text, deltas) = match &mut self.calls {
            Some(c) => {
                let (mut t, mut d) = c.push(&split.content);
                if end {
                    let (t2, d2) = c.finish();
                    t += &t2;
                    d.extend(d2);
                }
                (t, d)
            }
            None => (split.content, vec![]),
        };
        OutputPiece {
            thought: split.reasoning,
            text,
            deltas,
        }
    }

    /// Whether the output is inside its thinking block now.
    pub fn in_reasoning(&self) -> bool {
        self.thinking.as_ref().is_some_and(|s| s.in_reasoning())
    }

    /// Calls released so far.
    pub fn calls(&self) -> usize {
        self.calls.as_ref().map_or(0, CallStream::calls)
    }

    /// Whether the output ended inside a call ([`CallStream::cut`]).
    pub fn calls_cut(&self) -> bool {
        self.calls.as_ref().is_some_and(CallStream::cut)
    }
}

/// One choice's output read as it streams.
#[derive(Debug)]
pub struct CallStream {
    parser: ToolCallParser,
    /// The template's format (call ids are made for it).
    format: ToolFormat,
    parallel: bool,
    sent: usize,
    /// Without parallel calls, a call after the first is not sent.
    dropping: bool,
}

impl CallStream {
    /// Calls released so far.
    pub fn calls(&self) -> usize {
        self.sent
    }

    /// Whether the output ended inside a call (its arguments sent as far as written).
    pub fn cut(&self) -> bool {
        self.parser.cut_off()
    }

    /// The next piece of output → the text now known to be text, and `delta.tool_calls`
    /// entries: per call, first its `index`, `id`, `type` and `function.name` (arguments
    /// `""`), then `index` and a piece of `function.arguments` as the model writes them.
    pub fn push(&mut self, text: &str) -> (String, Vec<Value>) {
        let events = self.parser.push(text);
        self.deltas(events)
    }

    /// The output has ended: what was held back.
    pub fn finish(&mut self) -> (String, Vec<Value>) {
        let events = self.parser.finish();
        self.deltas(events)
    }

    fn deltas(&mut self, events: Vec<ToolEvent>) -> (String, Vec<Value>) {
        let mut text = String::new();
        let mut deltas = vec![];
        for e in events {
            match e {
                ToolEvent::Text(t) => text += &t,
                // Without parallel calls only the first is the answer.
                ToolEvent::CallStart { .. } if !self.parallel && self.sent > 0 => {
                    self.dropping = true
                }
                ToolEvent::CallStart { name } => {
                    self.sent += 1;
                    deltas.push(
                        json!({"index": self.sent - 1, "id": call_id(self.format), "type": "function",
                                       "function": {"name": name, "arguments": ""}}),
                    );
                }
                ToolEvent::Arguments(_) if self.dropping => {}
                ToolEvent::Arguments(a) => {
                    deltas.push(json!({"index": self.sent - 1, "function": {"arguments": a}}));
                }
            }
        }
        (text, deltas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(parallel: bool) -> ToolPlan {
        let tool = |name: &str| json!({"type": "function", "function": {"name": name}});
        ToolPlan {
            tools: vec![tool("a"), tool("b")],
            choice: ToolChoice::Auto,
            parallel,
            format: ToolFormat::Hermes,
        }
    }

    #[test]
    fn deltas_name_first_then_arguments_and_whole_calls_merge_them() {
        let out = "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>";
        let mut s = plan(true).stream();
        let (text, d) = s.push(out);
        assert_eq!(text, "");
        assert_eq!(d.len(), 4);
        assert_eq!(d[0]["function"]["name"], "a");
        assert_eq!(d[0]["function"]["arguments"], "");
        assert!(d[0]["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(
            d[1],
            json!({"index": 0, "function": {"arguments": "{\"x\": 1}"}})
        );
        assert_eq!(d[2]["index"], 1);
        // Fed a character at a time, the arguments come in pieces, by index.
        let mut s = plan(true).stream();
        let mut d = vec![];
        for c in out.chars() {
            d.extend(s.push(&c.to_string()).1);
        }
        d.extend(s.finish().1);
        let pieces: Vec<&Value> = d.iter().filter(|d| d.get("id").is_none()).collect();
        assert!(pieces.len() > 3, "{d:?}");
        assert!(pieces.iter().all(|p| p.as_object().unwrap().len() == 2));
        let first: String = pieces
            .iter()
            .filter(|p| p["index"] == 0)
            .map(|p| p["function"]["arguments"].as_str().unwrap())
            .collect();
        assert_eq!(first, "{\"x\": 1}");
        let (text, calls) = split_output(&plan(true), out);
        assert_eq!(text, None);
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[1]["function"],
            json!({"name": "b", "arguments": "{}"})
        );
        assert!(calls[0].get("index").is_none());
        // Without parallel calls, the first is the answer.
        let (_, calls) = split_output(&plan(false), out);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["function"]["name"], "a");
    }

    #[test]
    fn valid_names() {
        assert!(valid_name("get_weather-2"));
        assert!(!valid_name(""));
        assert!(!valid_name("has space"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
