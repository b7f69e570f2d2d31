//! Chat completions as typed functions: a `ChatRequest` is checked, rendered with the
//! model's template, tokenised and handed to the engine; `complete` waits for the answer
//! and returns it as a `ChatResult`. The HTTP handler (`routes::chat`) and the arena
//! (`routes::arena`) both go through here.

use crate::error::ApiError;
use crate::format::{chat_logprobs, new_id, now_secs, sum_usage};
use crate::openai::{ChatMessage, ChatRequest, Content, SamplingFields};
use crate::run::{self, blocking, collect, ChoiceSpec, Submission};
use crate::state::{AppState, ModelEntry, Permit};
use crate::structured;
use crate::tools::{self, ToolPlan};
use crate::validate::{
    cache_salt, check_top_logprobs, choice_params, generation_params, max_tokens,
    min_tokens_within_limit, unimplemented_chat,
};
use camelid_engine::Usage;
use camelid_model::decode::{FinishReason, StopReason};
use camelid_model::text::chat_prompt::{chat_prompt_ids_ending, PromptEnd};
use camelid_model::text::reasoning::{
    prompt_opens_block, split_reasoning, THINK_CLOSE, THINK_OPEN,
};
use camelid_model::text::template::TemplateKwargs;
use camelid_model::Message;
use serde_json::Value;
use std::sync::Arc;

/// OpenAI messages → template messages. Content parts must be text; an assistant's
/// `tool_calls` and a `tool` message's `tool_call_id` go to the template too.
pub fn to_messages(msgs: &[ChatMessage]) -> Result<Vec<Message>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                "tool" => "tool",
                other => {
                    return Err(ApiError::invalid_param(
                        &format!("messages[{i}].role"),
                        format!("Unknown role {other:?}; expected system, developer, user, assistant or tool"),
                    ))
                }
            };
            let has_calls = m.tool_calls.as_ref().is_some_and(|c| !c.is_null());
            // OpenAI's rule: only an assistant's turn of tool calls may go without content.
            if m.content.is_none() && !(role == "assistant" && has_calls) {
                return Err(ApiError::invalid_param(
                    &format!("messages[{i}].content"),
                    format!(
                        "Missing required parameter: 'messages[{i}].content' (a {} message \
                         needs content{})",
                        m.role,
                        if role == "assistant" { " or tool_calls" } else { "" }
                    ),
                ));
            }
            if role == "tool" && m.tool_call_id.is_none() {
                return Err(ApiError::invalid_param(
                    &format!("messages[{i}].tool_call_id"),
                    format!(
                        "Missing required parameter: 'messages[{i}].tool_call_id' (a tool \
                         message answers the call of that id)"
                    ),
                ));
            }
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(s)) => s.clone(),
                Some(Content::Parts(parts)) => {
                    // Text parts joined by newlines, as vLLM renders them for templates
                    // that take a string.
                    let mut texts = Vec::with_capacity(parts.len());
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text, &p.refusal) {
                            ("text", Some(t), _) => texts.push(t.as_str()),
                            ("text", None, _) => {
                                return Err(ApiError::invalid_param(
                                    &format!("messages[{i}].content[{j}].text"),
                                    "A content part of type \"text\" needs a \"text\" string",
                                ))
                            }
                            // What the model said, as text (OpenAI's assistant parts are
                            // text or refusal).
                            ("refusal", _, Some(r)) if role == "assistant" => {
                                texts.push(r.as_str())
                            }
                            _ => {
                                return Err(ApiError::invalid_param(
                                    &format!("messages[{i}].content[{j}]"),
                                    format!(
                                        "Content part type {:?} is not supported; only text",
                                        p.kind
                                    ),
                                ))
                            }
                        }
                    }
                    texts.join("\n")
                }
            };
            let mut msg = Message::new(role, &content);
            match &m.tool_calls {
                None | Some(Value::Null) => {}
                Some(_) if role != "assistant" => {
                    return Err(ApiError::invalid_param(
                        &format!("messages[{i}].tool_calls"),
                        "only assistant messages have `tool_calls`",
                    ))
                }
                // An empty list is no calls (older vLLM answered `"tool_calls": []`, and
                // clients send it back): templates test the key, not its length.
                Some(Value::Array(calls)) if calls.is_empty() => {}
                Some(calls) => msg.tool_calls = Some(tools::template_tool_calls(i, calls)?),
            }
            if role == "tool" {
                msg.tool_call_id = m.tool_call_id.clone();
            }
            msg.name = m.name.clone();
            if role == "assistant" {
                msg.reasoning_content = [&m.reasoning_content, &m.reasoning]
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .find(|r| !r.is_empty())
                    .map(String::from);
            }
            Ok(msg)
        })
        .collect()
}

/// The prompt ids of a conversation: rendered with the model's template, special tokens only
/// where the template wrote them (a message's content is text, whatever it spells).
pub fn prompt_ids(
    model: &ModelEntry,
    msgs: &[Message],
    tools: Option<&[Value]>,
    end: PromptEnd,
    kwargs: &TemplateKwargs,
    max_bytes: usize,
) -> Result<Vec<u32>, ApiError> {
    chat_prompt_ids_ending(
        model.template_for(tools.is_some()),
        model.engine.tokenizer(),
        msgs,
        tools,
        end,
        kwargs,
        max_bytes,
    )
    .map_err(|e| match e {
        camelid_model::Error::Template(_) => ApiError::invalid_param("messages", e.to_string()),
        // Rendered past what the context could hold: OpenAI's code for a prompt too long.
        camelid_model::Error::TooLong(_) => ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid_param("messages", e.to_string())
        },
        e => ApiError::bad_request(e.to_string()),
    })
}

/// The most bytes a conversation may render to: more could not be `max_model_len` tokens
/// (see `Tokenizer::max_text_bytes_per_token`), and never less than the largest body: a
/// tokenizer that fuses unknown text or drops whitespace may make a long text few tokens,
/// and a render no larger than a body costs what the body could anyway.
pub fn render_budget(model: &ModelEntry, body_limit: usize) -> usize {
    let per_token = model.engine.tokenizer().max_text_bytes_per_token();
    model
        .max_model_len
        .saturating_mul(per_token)
        .max(body_limit)
}

/// A chat request handed to the engine: its choices are being generated.
pub struct Submitted {
    /// The generation; dropping it cancels it.
    pub sub: Submission,
    pub model: Arc<ModelEntry>,
    /// Tokens in the rendered prompt.
    pub prompt_tokens: usize,
    /// Choices asked for (`n`).
    pub n: usize,
    /// The request's tools, when its output is read for calls.
    pub tools: Option<ToolPlan>,
    /// When a leading `<think>` block is split from the answer: whether the prompt already
    /// opened it.
    pub reasoning: Option<bool>,
}

/// Whether a request's output is split into thinking and answer, and if so whether the
/// prompt left a `<think>` block open (the end of its rendered text tells).
fn reasoning_split(
    state: &AppState,
    req: &ChatRequest,
    model: &ModelEntry,
    prompt: &[u32],
) -> Option<bool> {
    if !req.split_reasoning.unwrap_or(state.config.reasoning_parser) {
        return None;
    }
    Some(prompt_opens_thinking(model, prompt))
}

/// Whether the prompt's end opened a thinking block (DeepSeek-R1's, QwQ's templates).
fn prompt_opens_thinking(model: &ModelEntry, prompt: &[u32]) -> bool {
    let tail = &prompt[prompt.len().saturating_sub(16)..];
    let text = model
        .engine
        .tokenizer()
        .decode(tail, false)
        .unwrap_or_default();
    prompt_opens_block(&text)
}

/// `prompt_ids` off the async
/// workers (a body of megabytes takes a while). Call ids are first fitted to what the
/// template's model takes ([`tools::fit_call_ids`]).
pub async fn render_and_encode(
    permit: &Permit,
    model: &Arc<ModelEntry>,
    mut msgs: Vec<Message>,
    tools: Option<Vec<Value>>,
    end: PromptEnd,
    kwargs: TemplateKwargs,
    max_bytes: usize,
) -> Result<Vec<u32>, ApiError> {
    tools::fit_call_ids(model.template_for(tools.is_some()), &mut msgs);
    let model = model.clone();
    blocking(permit, move || {
        prompt_ids(&model, &msgs, tools.as_deref(), end, &kwargs, max_bytes)
    })
    .await
}

/// Ollama's truncation of a conversation longer than the context: the prompt of its latest
/// turns that `fits` (leaves room for an answer: cut to the brim, it would have none). Every system message stays, and the
/// conversation is cut only before a user message (Ollama cuts before any message; a
/// template may refuse a conversation that starts with an assistant's or a tool's); the
/// fewest turns are left out (bisection over the cut points, each a render). When even the
/// last turn does not fit, the whole conversation is rendered, and the length check
/// refuses it.
async fn render_latest_turns(
    permit: &Permit,
    model: &Arc<ModelEntry>,
    msgs: Vec<Message>,
    tools: Option<Vec<Value>>,
    (end, kwargs): (PromptEnd, TemplateKwargs),
    max_bytes: usize,
    (fits, whole_fits): (impl Fn(usize) -> bool, impl Fn(usize) -> bool),
) -> Result<Vec<u32>, ApiError> {
    let render = |m: Vec<Message>| {
        render_and_encode(
            permit,
            model,
            m,
            tools.clone(),
            end,
            kwargs.clone(),
            max_bytes,
        )
    };
    // A conversation within the context is left whole, as Ollama leaves it (`whole_fits`). One
    // that renders past what the context could hold (the byte budget) is cut like one too
    // many tokens long.
    let whole = match render(msgs.clone()).await {
        Ok(p) if whole_fits(p.len()) => return Ok(p),
        Err(e) if e.code != Some("context_length_exceeded") => return Err(e),
        r => r,
    };
    let last = msgs.len() - 1;
    // Where the kept part may start: a user message after the first one that is not system.
    let first = msgs.iter().position(|m| m.role != "system").unwrap_or(last);
    let cuts: Vec<usize> = (first + 1..=last)
        .filter(|&i| msgs[i].role == "user")
        .collect();
    let keep_from = |cut: usize| -> Vec<Message> {
        msgs.iter()
            .enumerate()
            .filter(|&(i, m)| i >= cut || m.role == "system")
            .map(|(_, m)| m.clone())
            .collect()
    };
    // Later cuts give shorter prompts: find the earliest one that fits.
    let (mut lo, mut hi, mut best) = (0, cuts.len(), None);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let fitting = match render(keep_from(cuts[mid])).await {
            Ok(prompt) => fits(prompt.len()).then_some(prompt),
            Err(e) if e.code == Some("context_length_exceeded") => None,
            Err(e) => return Err(e),
        };
        match fitting {
            Some(prompt) => {
                best = Some((cuts[mid], prompt));
                hi = mid;
            }
            None => lo = mid + 1,
        }
    }
    match best {
        Some((cut, prompt)) => {
            tracing::debug!("a conversation cut to fit the context: from message {cut} on");
            Ok(prompt)
        }
        None => whole,
    }
}

/// The template's variables: the client's `chat_template_kwargs`, and OpenAI's
/// `reasoning_effort`: the variable of that name (as vLLM passes it, for gpt-oss-style
/// templates) and Qwen3's switch `enable_thinking` (off for `"none"`), unless the client set
/// them there.
pub fn template_kwargs(
    explicit: Option<&TemplateKwargs>,
    effort: Option<&str>,
) -> Result<TemplateKwargs, ApiError> {
    let mut kwargs = explicit.cloned().unwrap_or_default();
    if let Some(effort) = effort {
        if !matches!(
            effort,
            "none" | "minimal" | "low" | "medium" | "high" | "xhigh"
        ) {
            return Err(ApiError::invalid_param(
                "reasoning_effort",
                format!(
                    "`reasoning_effort` is \"none\", \"minimal\", \"low\", \"medium\", \"high\" \
                     or \"xhigh\", got {effort:?}"
                ),
            ));
        }
        kwargs
            .entry("reasoning_effort")
            .or_insert_with(|| effort.into());
        kwargs
            .entry("enable_thinking")
            .or_insert_with(|| (effort != "none").into());
    }
    Ok(kwargs)
}

/// How a chat's prompt ends: the generation prompt (the default), nothing more
/// (`add_generation_prompt: false`), or inside the final assistant message
/// (`continue_final_message`, vLLM's names; asking for both is a 400, as in vLLM).
pub fn prompt_end(
    add_generation_prompt: Option<bool>,
    continue_final_message: bool,
) -> Result<PromptEnd, ApiError> {
    match (add_generation_prompt, continue_final_message) {
        (Some(true), true) => Err(ApiError::invalid_param(
            "continue_final_message",
            "`continue_final_message` and `add_generation_prompt` cannot both be true",
        )),
        (_, true) => Ok(PromptEnd::ContinueFinal),
        (Some(false), false) => Ok(PromptEnd::AsRendered),
        (_, false) => Ok(PromptEnd::GenerationPrompt),
    }
}

/// Checks `req` and its sampling fields (every size cap before anything is built from
/// them), renders and tokenises the conversation and submits its `n` choices under
/// `permit`. Whether the answer is streamed is the caller's business.
pub async fn submit(
    state: &Arc<AppState>,
    permit: Permit,
    req: &ChatRequest,
    sampling: &SamplingFields,
) -> Result<Submitted, ApiError> {
    let salt = cache_salt(req.cache_salt.as_deref())?;
    submit_salted(state, permit, req, sampling, salt).await
}

/// [`submit`] with the prefix-cache partition given by the caller (an arena battle's; the
/// request's own `cache_salt` is not read).
pub async fn submit_salted(
    state: &Arc<AppState>,
    permit: Permit,
    req: &ChatRequest,
    sampling: &SamplingFields,
    salt: Option<String>,
) -> Result<Submitted, ApiError> {
    let limits = &state.config.limits;
    limits.check_messages(req.messages.len())?;
    let model = state.model(Some(&req.model))?;
    unimplemented_chat(req)?;
    let budget = render_budget(&model, state.config.body_limit);
    let plan = ToolPlan::from_request(req, model.template_for(true), limits.max_tools, budget)?;
    check_top_logprobs("top_logprobs", req.top_logprobs)?;
    // 0 is the default and asks for nothing (vLLM takes it without `logprobs`).
    if req.top_logprobs.is_some_and(|t| t > 0) && !req.logprobs {
        return Err(ApiError::invalid_param(
            "top_logprobs",
            "`top_logprobs` requires `logprobs` to be true",
        ));
    }
    let f = sampling;
    let mut params = generation_params(
        f,
        &model.sampling_defaults,
        limits,
        model.engine.vocab_size(),
        &model.stop_token_ids,
        &model.stop_strings,
    )?;
    let n = f.n.unwrap_or(1) as usize;
    limits.check_sequences(1, n)?;
    let msgs = to_messages(&req.messages)?;
    let kwargs = template_kwargs(
        req.chat_template_kwargs.as_ref(),
        req.reasoning_effort.as_deref(),
    )?;
    let shown = plan.as_ref().map(|p| p.tools.clone());
    let end = prompt_end(req.add_generation_prompt, req.continue_final_message)?;
    // A continued final message is its text going on: a SentencePiece first token keeps its
    // space ("…is" + " Paris"), as a completion's does.
    params.continues_prompt = end == PromptEnd::ContinueFinal;
    let prompt = if req.drop_oldest_to_fit {
        // Room for the answer once turns are left out: Ollama's `num_predict` where it is
        // smaller, else a quarter of the context (Ollama's runner shifts its context while
        // it generates; camelid's does not).
        let context = model.max_model_len;
        let keep_room = req.keep_answer_room;
        let quarter = (context / 4).max(1);
        let room = req
            .max_tokens_cap
            .map_or(quarter, |c| (c as usize).clamp(1, quarter));
        let fits = move |prompt: usize| prompt + room <= context;
        let whole_fits = move |prompt: usize| prompt < context && (!keep_room || fits(prompt));
        let cut = (fits, whole_fits);
        render_latest_turns(&permit, &model, msgs, shown, (end, kwargs), budget, cut).await?
    } else {
        render_and_encode(&permit, &model, msgs, shown, end, kwargs, budget).await?
    };
    // The tools' grammar where they have one: `required` and a named function (calls only:
    // they win over `response_format`, which shapes a text answer, as OpenAI takes both and
    // the Agents SDK sends them); `auto` beside a JSON answer format (that answer or calls);
    // `auto` alone (free text, then calls in their schemas once the model opens one).
    let answer = structured::requested(f)?;
    let calls = match &plan {
        Some(p) => {
            if p.needs_special_tokens(model.engine.tokenizer()) {
                params.skip_special_tokens = false;
            }
            tools::compile(&permit, &model, p, answer.as_ref()).await?
        }
        None => None,
    };
    params.constraint = match (calls, answer) {
        (Some(c), answer) => {
            // A forced call's grammar wins, but the answer format is still checked (a bad
            // schema is a 400 as it is without tools).
            if let Some(a) = answer.filter(|_| plan.as_ref().is_some_and(ToolPlan::forced)) {
                structured::compile_requested(&permit, &model, a).await?;
            }
            params.constraint_trigger = c.trigger;
            Some(c.constraint)
        }
        (None, Some(a)) => Some(structured::compile_requested(&permit, &model, a).await?),
        (None, None) => None,
    };
    // OpenAI's newer name wins when both are sent.
    let limit_field = if req.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    params.max_tokens = max_tokens(
        req.max_completion_tokens.or(f.max_tokens),
        limit_field,
        req.max_tokens_cap.map(|c| c as usize),
        prompt.len(),
        model.max_model_len,
        "messages",
        false,
    )?;
    min_tokens_within_limit(&params)?;
    if req.logprobs {
        let top = req.top_logprobs.unwrap_or(0) as usize;
        // A single answer that names no limit may run to the end of the context, as
        // OpenAI's clients expect (LangChain's `logprobs=True` sends no `max_tokens`):
        // checked are the limits asked for, and several choices' whole contexts.
        let asked = req.max_completion_tokens.or(f.max_tokens).is_some();
        if !f.stream && (asked || n > 1) {
            limits.check_output_logprobs(
                "top_logprobs",
                n.saturating_mul(params.max_tokens),
                top,
            )?;
        }
        params.logprobs = Some(top);
    }
    let prompt_tokens = prompt.len();
    // With the thinking split, a prompt that opened the block (DeepSeek-R1's, QwQ's) lets the
    // model think first and holds the grammar off until `</think>`, as vLLM does. Where the
    // model itself may open one (Qwen3's: a vocabulary with a `<think>` token), the grammar
    // applies from the first token, which may also be `<think>`: then it waits for
    // `</think>` (vLLM's waits for it even when the model answers at once, unconstrained).
    let reasoning = reasoning_split(state, req, &model, &prompt);
    // A lazy grammar (calls under `auto`) waits out the model's thinking whether or not it is
    // split from the answer: a call opened while thinking is thought, not made.
    let thinking = match reasoning {
        None if params.constraint_trigger.is_some() => Some(prompt_opens_thinking(&model, &prompt)),
        r => r,
    };
    if params.constraint.is_some() {
        match thinking {
            Some(true) => params.constraint_after = Some(THINK_CLOSE.to_string()),
            Some(false) => {
                let open = model.engine.tokenizer().token_to_id(THINK_OPEN);
                if open.is_some() {
                    params.constraint_after = Some(THINK_CLOSE.to_string());
                    params.think_open = open;
                }
            }
            None => {}
        }
    }
    let specs = (0..n)
        .map(|i| ChoiceSpec {
            index: i,
            prompt: prompt.clone(),
            params: choice_params(&params, i),
            prompt_logprobs: None,
            cache_salt: salt.clone(),
        })
        .collect();
    let sub = run::submit(state, permit, &model, specs)?;
    Ok(Submitted {
        sub,
        model,
        prompt_tokens,
        n,
        tools: plan.filter(ToolPlan::parses),
        reasoning,
    })
}

/// One finished choice of a chat completion.
#[derive(Debug, Clone)]
pub struct ChatChoice {
    pub index: usize,
    /// The assistant message's text (`None` when it is only tool calls).
    pub content: Option<String>,
    /// The thinking split from it (when the request's output is split).
    pub reasoning: Option<String>,
    /// OpenAI's `message.tool_calls` entries.
    pub tool_calls: Vec<Value>,
    /// OpenAI's chat `logprobs` object, when the request asked for log-probs (token texts
    /// need the model's tokenizer, so it is rendered here).
    pub logprobs: Option<Value>,
    pub finish: FinishReason,
    /// The client's stop token or string that ended it (vLLM's `stop_reason`).
    pub stop_reason: Option<StopReason>,
}

/// A whole chat completion.
#[derive(Debug, Clone)]
pub struct ChatResult {
    /// `chatcmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model as the request named it.
    pub model: String,
    /// Ordered by index.
    pub choices: Vec<ChatChoice>,
    /// Summed over the choices; the prompt counted once.
    pub usage: Usage,
    /// Output tokens that were thinking, summed over the choices (when the output is split).
    pub reasoning_tokens: Option<usize>,
}

/// Answers a chat request whole under `permit` (the request's `stream` is not looked at).
pub async fn complete(
    state: Arc<AppState>,
    permit: Permit,
    req: ChatRequest,
    sampling: SamplingFields,
) -> Result<ChatResult, ApiError> {
    let Submitted {
        sub,
        model,
        prompt_tokens,
        n,
        tools,
        reasoning,
    } = submit(&state, permit, &req, &sampling).await?;
    let id = new_id("chatcmpl");
    let created = now_secs();
    let results = collect(sub, 0).await?;
    let tok = model.engine.tokenizer();
    let choices = results
        .iter()
        .map(|r| {
            let (thought, answer) = match reasoning {
                Some(inside) => {
                    let s = split_reasoning(&r.text, inside);
                    (Some(s.reasoning), s.content)
                }
                None => (None, r.text.clone()),
            };
            let (content, tool_calls) = match &tools {
                Some(plan) => tools::split_output(plan, &answer),
                None => (Some(answer), vec![]),
            };
            ChatChoice {
                index: r.index,
                content,
                reasoning: thought,
                tool_calls,
                logprobs: req.logprobs.then(|| chat_logprobs(tok, &r.logprobs)),
                finish: r.finish,
                stop_reason: r.stop_reason.clone(),
            }
        })
        .collect();
    let reasoning_tokens = reasoning.map(|inside| {
        results
            .iter()
            .map(|r| thinking_tokens(&r.text, &r.token_text_lens, inside))
            .sum()
    });
    Ok(ChatResult {
        id,
        created,
        model: req.model,
        choices,
        usage: sum_usage(&results, prompt_tokens, n),
        reasoning_tokens,
    })
}

/// How many of an output's tokens (each making `lens[i]` bytes of `text` visible) were
/// thinking, read token by token as the streamed routes read them.
fn thinking_tokens(text: &str, lens: &[usize], inside: bool) -> usize {
    let mut reader = tools::OutputReader::new(Some(inside), None);
    let mut at = 0;
    for &len in lens {
        reader.push(text.get(at..at + len).unwrap_or_default());
        at += len;
    }
    reader.thinking_tokens().unwrap_or(0)
}
