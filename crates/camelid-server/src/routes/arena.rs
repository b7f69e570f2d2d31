//! Anonymous side-by-side battles, as Chatbot Arena runs them: two models drawn at random
//! answer the same conversation under the labels A and B; the visitor votes; the vote reveals
//! the names and becomes a battle on the leaderboard (Bradley–Terry ratings, see
//! `camelid_eval::ratings`). The handlers; battles and votes are kept by `crate::arena`
//! (its store of record), and the answers come from `crate::battle`.
//!
//! - `POST /arena/battles` — a chat request without `model`; answered with `{"battle_id",
//!   "token", "a": {"content", "finish_reason"}, "b": {…}}`, or with `stream: true` as
//!   server-sent events: `{"battle_id", "token"}`, then `{"side": "a"|"b", "delta"}` and
//!   `{"side", "finish_reason"}` as both sides answer, `{"done": true}` once the turn is
//!   stored, `[DONE]`. Nothing else (no usage, no per-model error text: see `crate::battle`). The `token` is the visitor's: send it with
//!   every later request (a page keeps it; a new battle without one gets a new token). With
//!   `battle_id` and `token`, a follow-up turn: `messages` are appended to both sides'
//!   conversations, which the store holds, and the same two models answer.
//! - `POST /arena/battles/{id}/regenerate` — `{"token": …}` and the sampling fields, no
//!   `messages`: the last turn answered again by both models (FastChat's Regenerate), replied
//!   to as a turn; the new answers replace the old once both are complete (a stopped or failed
//!   one keeps the old). Refused as a follow-up is, and counted as one.
//! - `POST /arena/battles/{id}/vote` — `{"winner": "model_a" | "model_b" | "tie" |
//!   "tie (bothbad)", "token": …}`, once per battle; answers with the names once the vote
//!   is committed.
//! - `GET /arena/leaderboard` — ratings over the anonymous votes, as last refitted: the plain
//!   Bradley–Terry fit (`leaderboard`) and the style-controlled one (`style_control`: its
//!   `leaderboard`, the votes it rates, the length/headers/lists/bold `coefficients`).

use super::{AppResult, RequestBody};
use crate::arena::{self, OpenBattle, Request, Visitor};
use crate::battle::{self, neutral, Answer, MIN_TOP_P};
use crate::error::ApiError;
use crate::listen::client_network;
use crate::openai::{from_value, parse_json, ChatRequest, SamplingFields};
use crate::state::{AppState, Permit};
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use camelid_eval::ratings::Outcome;
use camelid_model::text::template::Message;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The client's address for the per-address limits: the peer's, or with
/// `--arena-trust-forwarded-for` the `X-Forwarded-For` entry the nearest proxy added (the
/// last one; with `--arena-trusted-proxies`, only from a peer among them, and the last entry
/// that is not one of them).
pub struct ClientAddress(pub String);

impl FromRequestParts<Arc<AppState>> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let config = state.arena.config();
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let trusted = |ip: IpAddr| config.trusted_proxies.iter().any(|n| n.contains(&ip));
        let from_proxy = config.trusted_proxies.is_empty() || peer.is_some_and(trusted);
        if config.trust_forwarded_for && from_proxy {
            let values: Vec<&[u8]> = parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            if let Some(key) = forwarded_client(&values, &trusted) {
                return Ok(Self(key));
            }
        }
        let peer = peer.map(address_key);
        Ok(Self(peer.unwrap_or_else(|| "unknown".into())))
    }
}

/// The key of the client in `X-Forwarded-For` (its header lines in order): the last entry,
/// passing over, right to left, the entries `trusted` says are proxies (where every entry
/// is one, the first). Read as bytes: a client's own entries before it may hold any byte
/// (nginx appends to what the client sent), and refusing the whole value would count the
/// client under the proxy's address, beside every other visitor.
fn forwarded_client(values: &[&[u8]], trusted: &dyn Fn(IpAddr) -> bool) -> Option<String> {
    let entries: Vec<String> = values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|e| String::from_utf8_lossy(e).trim().to_string())
        .collect();
    let mut first = None;
    for entry in entries.iter().rev() {
        if entry.is_empty() {
            return first;
        }
        let ip = forwarded_ip(entry);
        let key = ip.map_or_else(|| entry.clone(), address_key);
        if ip.is_some_and(trusted) {
            first = Some(key);
            continue;
        }
        return Some(key);
    }
    first
}

/// The key of the last entry of an `X-Forwarded-For` value, the one the nearest proxy added.
#[cfg(test)]
fn forwarded_key(value: &[u8]) -> Option<String> {
    forwarded_client(&[value], &|_| false)
}

/// The address in an `X-Forwarded-For` entry, which some proxies write with its port
/// (`192.0.2.7:5678`, `[2001:db8::1]:443`): counted without it, or every connection of one
/// client would count as a new address.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            let bracketed = entry.strip_prefix('[')?.strip_suffix(']')?;
            bracketed.parse().ok()
        })
}

/// The key the per-address limits count under ([`client_network`]): an IPv6 network with
/// its `/64`.
fn address_key(ip: IpAddr) -> String {
    match client_network(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(net) => format!("{net}/64"),
    }
}

/// Removes an optional string field from the body.
fn take_string(obj: &mut Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid_param(field, "must be a string")),
    }
}

/// The battle id of a `/arena/battles/{id}/…` route.
fn battle_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    id.map(|Path(id)| id)
        .map_err(|e| ApiError::bad_request(format!("Invalid battle id: {e}")))
}

/// The names of the served models.
fn served(state: &AppState) -> Result<Vec<String>, ApiError> {
    let models = state.models().ok_or_else(AppState::loading_error)?;
    Ok(models.iter().map(|m| m.name.clone()).collect())
}

/// The models a new battle may draw: chat models whose engine still runs. Not a stopped
/// one (FastChat gives a model in an outage no weight: every battle drawing it would fail),
/// nor an embedding model (its files name a pooling; served beside the chat models for
/// `/api/embed`, it is no contestant, as `/api/show` lists it for embedding alone).
fn drawable(state: &AppState) -> Result<Vec<String>, ApiError> {
    let models = state.models().ok_or_else(AppState::loading_error)?;
    Ok(models
        .iter()
        .filter(|m| m.engine.is_running() && m.details.pooling.is_none())
        .map(|m| m.name.clone())
        .collect())
}

/// Every name a served model answers to (its aliases too): what an answer or a prompt
/// naming a model is looked for by.
fn known_names(state: &AppState) -> Result<Vec<String>, ApiError> {
    let models = state.models().ok_or_else(AppState::loading_error)?;
    Ok(models
        .iter()
        .flat_map(|m| std::iter::once(&m.name).chain(&m.aliases))
        .cloned()
        .collect())
}

/// A turn's output length within the arena's bounds: `max_tokens` (or OpenAI's newer
/// `max_completion_tokens`) above the cap or below the floor is refused naming the field; a
/// turn that names neither gets the cap (FastChat's arena bounds its slider the same way).
fn cap_max_tokens(obj: &mut Map<String, Value>, floor: u64, cap: u64) -> Result<(), ApiError> {
    let floor = floor.min(cap);
    let mut named = false;
    for field in ["max_tokens", "max_completion_tokens"] {
        match obj.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => {
                named = true;
                let n = v.as_f64();
                if n.is_some_and(|n| n > cap as f64) {
                    return Err(ApiError::invalid_param(
                        field,
                        format!("`{field}` may be at most {cap} in the arena, got {v}"),
                    ));
                }
                // 0 is refused by `check_sampling`, as for any model.
                if n.is_some_and(|n| n > 0.0 && n < floor as f64) {
                    return Err(ApiError::invalid_param(
                        field,
                        format!(
                            "`{field}` must be at least {floor} in the arena (an answer cut \
                             after a few tokens shows its model's tokenizer), got {v}"
                        ),
                    ));
                }
            }
        }
    }
    if !named {
        obj.insert("max_tokens".into(), cap.into());
    }
    Ok(())
}

/// Fields a battle does not take: the arena sets them (`model`, `cache_salt`), or they would
/// tell the models apart (token log-probs, token ids and special tokens show the tokenizer;
/// usage the lengths as each model counts them; template variables act on one family's
/// template only; a seed lets the API replay each side's sampled answer; a stop string cuts
/// the side that would have written it), or a battle has one answer per side (`n`).
fn refuse_fields(obj: &Map<String, Value>) -> Result<(), ApiError> {
    let why = |field: &str| -> Option<&'static str> {
        let v = obj.get(field).filter(|v| !v.is_null())?;
        match field {
            "model" => Some("the arena draws the models; leave `model` out"),
            "cache_salt" => Some("a battle has its own cache partition; leave `cache_salt` out"),
            "n" if v.as_u64() == Some(1) => None,
            "n" => Some("a battle has one answer per side; leave `n` out"),
            "logprobs" if v.as_bool() == Some(false) => None,
            "top_logprobs" if v.as_u64() == Some(0) => None,
            "logprobs" | "top_logprobs" => {
                Some("log-probabilities would tell the models apart; leave them out")
            }
            "stream_options" => Some("battles report no usage; leave `stream_options` out"),
            "seed" => Some("a seed would let each side's answer be replayed; leave `seed` out"),
            "add_generation_prompt" if v.as_bool() == Some(true) => None,
            "continue_final_message" if v.as_bool() == Some(false) => None,
            "add_generation_prompt" | "continue_final_message" => {
                Some("a battle turn is answered as a new assistant turn; leave the prompt's end to the arena")
            }
            "ignore_eos" if v.as_bool() == Some(false) => None,
            "min_tokens" if v.as_u64() == Some(0) => None,
            "ignore_eos" | "min_tokens" => Some(
                "each model ends its answer where it would (past its end its template shows); \
                 leave the length floor out",
            ),
            "stop" if v.as_array().is_some_and(Vec::is_empty) || v.as_str() == Some("") => None,
            "include_stop_str_in_output" if v.as_bool() == Some(false) => None,
            "stop" | "include_stop_str_in_output" => Some(
                "stop strings would tell the models apart (a side cut before a name shows \
                 whose name it was); leave them out",
            ),
            "logit_bias" | "stop_token_ids" => {
                Some("token ids would tell the models' tokenizers apart; leave them out")
            }
            "skip_special_tokens" if v.as_bool() == Some(true) => None,
            "skip_special_tokens" => Some("special tokens would tell the models apart"),
            "chat_template_kwargs" | "reasoning_effort" => {
                Some("each model renders its own template as it is; leave the variables out")
            }
            "response_format" if v.get("type").and_then(Value::as_str) == Some("text") => None,
            "response_format" | "structured_outputs" | "guided_json" | "guided_regex"
            | "guided_choice" | "guided_grammar" | "json_schema" | "grammar" => {
                Some("battles compare free answers; output constraints are not taken")
            }
            "n_predict" => Some("the arena's name for the output limit is `max_tokens`"),
            "tools" | "tool_choice" | "parallel_tool_calls" | "functions" | "function_call" => {
                Some("arena battles answer in text; tool calling is not offered")
            }
            _ => None,
        }
    };
    for field in [
        "model",
        "cache_salt",
        "n",
        "logprobs",
        "top_logprobs",
        "stream_options",
        "seed",
        "ignore_eos",
        "min_tokens",
        "add_generation_prompt",
        "continue_final_message",
        "stop",
        "include_stop_str_in_output",
        "logit_bias",
        "stop_token_ids",
        "skip_special_tokens",
        "chat_template_kwargs",
        "reasoning_effort",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "response_format",
        "structured_outputs",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "json_schema",
        "grammar",
        "n_predict",
    ] {
        if let Some(message) = why(field) {
            return Err(ApiError::invalid_param(field, message));
        }
    }
    Ok(())
}

/// What a turn asks that is wrong whichever models answer it (`max_tokens` 0, a sampling
/// field out of range): a 400 naming the field, before a battle is stored or a turn counted.
/// What depends on the models (the context) fails later, neutrally.
fn check_sampling(state: &AppState, req: &ChatRequest, f: &SamplingFields) -> Result<(), ApiError> {
    for (field, v) in [
        ("max_tokens", f.max_tokens),
        ("max_completion_tokens", req.max_completion_tokens),
    ] {
        if v == Some(0) {
            return Err(ApiError::invalid_param(
                field,
                format!("`{field}` must be at least 1"),
            ));
        }
    }
    check_randomness(state.arena.config().min_temperature, f)?;
    let models = state.models().ok_or_else(AppState::loading_error)?;
    if let Some(m) = models.first() {
        crate::validate::generation_params(
            f,
            &Default::default(),
            &state.config.limits,
            m.engine.vocab_size(),
            &[],
            &[],
        )?;
    }
    Ok(())
}

/// 400 for sampling a turn's answers could be replayed from (`--arena-min-temperature`): a
/// temperature below `floor`, and above a floor of 0 the samplers that truncate towards
/// greedy (`top_p` below [`MIN_TOP_P`], `top_k`, `min_p`). Absent fields take each model's
/// own values, raised where those are greedy (`battle::above_the_floor`).
fn check_randomness(floor: f32, f: &SamplingFields) -> Result<(), ApiError> {
    if floor <= 0.0 {
        return Ok(());
    }
    let refuse = |field: &str, why: String| {
        Err(ApiError::invalid_param(
            field,
            format!("{why}: arena answers are sampled so that none can be replayed"),
        ))
    };
    if let Some(t) = f.temperature.filter(|t| *t < floor) {
        return refuse(
            "temperature",
            format!("`temperature` {t} is below the arena's least, {floor}"),
        );
    }
    if let Some(p) = f.top_p.filter(|p| *p < MIN_TOP_P) {
        return refuse(
            "top_p",
            format!("`top_p` {p} is below the arena's least, {MIN_TOP_P}"),
        );
    }
    if f.top_k.is_some_and(|k| k > 0) {
        return refuse("top_k", "leave `top_k` out".into());
    }
    if f.min_p.is_some_and(|p| p > 0.0) {
        return refuse("min_p", "leave `min_p` out".into());
    }
    Ok(())
}

/// A turn's body as both sides read it: what the arena refuses taken out and checked, its
/// own fields (`stream`, `battle_id`, `token`) apart.
struct TurnRequest {
    /// The chat request each side's is made from (its `model` and `messages` set per side;
    /// no output length: `output_cap` is each side's cap instead).
    req: Value,
    sampling: SamplingFields,
    output_cap: Option<u32>,
    stream: bool,
    battle_id: Option<String>,
    token: Option<String>,
    /// The battle's revision the page shows (a follow-up or regenerate builds on it).
    revision: Option<String>,
}

impl TurnRequest {
    /// Reads and checks `body`, before anything is counted or stored; with `messages`, also
    /// the visitor's new messages (a turn), else a body that has none (a regenerate).
    fn read(state: &AppState, body: &[u8], messages: bool) -> Result<(Self, Vec<Value>), ApiError> {
        let mut req = parse_json(body)?;
        let Some(obj) = req.as_object_mut() else {
            return Err(ApiError::bad_request("The body must be a JSON object."));
        };
        refuse_fields(obj)?;
        if !messages {
            for field in ["messages", "battle_id"] {
                if obj.get(field).is_some_and(|v| !v.is_null()) {
                    return Err(ApiError::invalid_param(
                        field,
                        "a regenerate answers the battle's last turn again; leave `messages` and `battle_id` out",
                    ));
                }
            }
            obj.insert("messages".into(), json!([]));
        }
        let c = state.arena.config();
        cap_max_tokens(obj, c.max_tokens_floor, c.max_tokens)?;
        let stream = match obj.remove("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(ApiError::invalid_param("stream", "must be a boolean")),
        };
        let battle_id = take_string(obj, "battle_id")?;
        let token = take_string(obj, "token")?;
        let revision = take_string(obj, "revision")?;
        // The request read as the chat endpoint reads it (`model` is set per contestant).
        obj.insert("model".into(), "".into());
        let whole = from_value::<ChatRequest>(&req)?;
        let mut sampling = from_value::<SamplingFields>(&req)?.with_llama_cpp_names();
        // The other extensions no model here implements: refused before the turn counts.
        crate::validate::unimplemented_extensions(&sampling)?;
        let new_messages = if messages {
            let checked = crate::chat::to_messages(&whole.messages)?;
            check_sampling(state, &whole, &sampling)?;
            // The visitor's words only: an assistant message would be stored (and exported,
            // and counted by style control) as a model's answer it never gave, and a system
            // message would act on one family's template only.
            if let Some(i) = whole.messages.iter().position(|m| m.role != "user") {
                return Err(ApiError::invalid_param(
                    &format!("messages[{i}].role"),
                    "a battle turn takes the visitor's messages (`user`) only; each side's answers are its model's own",
                ));
            }
            // A battle's stored text is bounded (`--arena-max-input-chars` a turn).
            let chars: usize = checked.iter().map(|m| m.content.chars().count()).sum();
            let max_chars = state.arena.config().max_input_chars;
            if chars > max_chars {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!(
                        "a turn's text is {chars} characters; this arena takes at most {max_chars}"
                    ),
                ));
            }
            // Stored as the templates read them, role and text: other keys a message
            // carries (unknown fields, `name`, a content part's extras) would be kept in the
            // battle, its vote and the export without ever counting against a model's
            // context.
            checked
                .into_iter()
                .map(|m: Message| json!({"role": m.role, "content": m.content}))
                .collect()
        } else {
            check_sampling(state, &whole, &sampling)?;
            vec![]
        };
        // Each side's output stops at its context rather than being refused, and a
        // conversation past a side's context loses its oldest turns (as FastChat's workers
        // cut the prompt): which side refuses a turn, or how many tokens are left, would
        // tell the models apart.
        let output_cap = whole.max_completion_tokens.or(sampling.max_tokens);
        sampling.max_tokens = None;
        req["max_completion_tokens"] = Value::Null;
        req["max_tokens"] = Value::Null;
        let turn = Self {
            req,
            sampling,
            output_cap,
            stream,
            battle_id,
            token,
            revision,
        };
        Ok((turn, new_messages))
    }
}

pub async fn battle(
    State(state): State<Arc<AppState>>,
    ClientAddress(address): ClientAddress,
    RequestBody(body): RequestBody,
) -> AppResult {
    // A battle is two generations: a slot for each.
    let permits = (state.permit()?, state.permit()?);
    let (mut turn, new_messages) = TurnRequest::read(&state, &body, true)?;
    drop(body);
    let visitor = match (&turn.battle_id, turn.token.take()) {
        (Some(id), token) => token
            .as_deref()
            .and_then(Visitor::from_token)
            .ok_or_else(|| arena::not_yours(id))?,
        (None, Some(t)) => Visitor::from_token(&t).ok_or_else(|| {
            ApiError::invalid_param(
                "token",
                "must be the 64 hex digits a battle's start returned",
            )
        })?,
        (None, None) => Visitor::new(),
    };
    let battle = match turn.battle_id.take() {
        // A follow-up is counted once its battle is found to be the visitor's: made-up ids
        // and tokens do not spend the limits real visitors share (an address behind a proxy).
        Some(id) => {
            let battle = state.arena.resume(&id, &visitor).await?;
            battle.check_seen(turn.revision.as_deref())?;
            let max_turns = state.arena.config().max_turns;
            if battle.turns >= i64::from(max_turns) {
                return Err(arena::turn_limit(&id, max_turns));
            }
            let slot = state.arena.hold_turn(&address)?;
            state.arena.admit(Request::Turn, &visitor, &address).await?;
            served_here(&state, &battle).await?;
            (battle, slot)
        }
        None => {
            let (a, b) = state.arena.draw_pair(&drawable(&state)?)?;
            let slot = state.arena.hold_turn(&address)?;
            state.arena.admit(Request::Turn, &visitor, &address).await?;
            (state.arena.start(&visitor, a, b).await?, slot)
        }
    };
    let (battle, slot) = battle;
    // Each side: its own conversation so far, then the new messages.
    let follow = |conversation: &[Value]| {
        let mut messages = conversation.to_vec();
        messages.extend(new_messages.iter().cloned());
        messages
    };
    let bases = (
        follow(&battle.conversation_a),
        follow(&battle.conversation_b),
    );
    let answer = Answerable {
        battle,
        visitor,
        prompt: new_messages,
        bases,
        regenerated: false,
        slot,
    };
    answer.run(state, permits, turn).await
}

/// `POST /arena/battles/{id}/regenerate`: the battle's last turn answered again by both
/// models (FastChat's Regenerate), the new answers replacing the old once both are complete;
/// refused as a follow-up is (and counted as one).
pub async fn regenerate(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    ClientAddress(address): ClientAddress,
    RequestBody(body): RequestBody,
) -> AppResult {
    let id = battle_id(id)?;
    let permits = (state.permit()?, state.permit()?);
    let (mut turn, _) = TurnRequest::read(&state, &body, false)?;
    drop(body);
    let visitor = turn
        .token
        .take()
        .as_deref()
        .and_then(Visitor::from_token)
        .ok_or_else(|| arena::not_yours(&id))?;
    let battle = state
        .arena
        .resume_to_regenerate(
            &id,
            &visitor,
            &known_names(&state)?,
            turn.revision.as_deref(),
        )
        .await?;
    let (Some((base_a, prompt)), Some((base_b, _))) = (
        arena::without_last_answer(&battle.conversation_a),
        arena::without_last_answer(&battle.conversation_b),
    ) else {
        return Err(arena::unanswered(&id));
    };
    let slot = state.arena.hold_turn(&address)?;
    state.arena.admit(Request::Turn, &visitor, &address).await?;
    served_here(&state, &battle).await?;
    let answer = Answerable {
        battle,
        visitor,
        prompt,
        bases: (base_a, base_b),
        regenerated: true,
        slot,
    };
    answer.run(state, permits, turn).await
}

/// 503 when a model of `battle` is no longer served here (an update rolling through the
/// fleet). The answer tells the visitor that one side is a model this server lacks, so the
/// battle's vote is no longer rated ([`note_failure`]), and it comes after the turn was
/// counted against the limits: a free probe of the pair before a rated vote otherwise.
async fn served_here(state: &AppState, battle: &OpenBattle) -> Result<(), ApiError> {
    let here = served(state)?;
    if !here.contains(&battle.model_a) || !here.contains(&battle.model_b) {
        note_failure(state, battle).await;
        return Err(arena::models_not_served_here(&battle.id));
    }
    Ok(())
}

/// A turn let in and ready to be answered by both sides.
struct Answerable {
    battle: OpenBattle,
    visitor: Visitor,
    /// The turn's messages (the visitor's).
    prompt: Vec<Value>,
    /// Each side's conversation its answer follows (ending with `prompt`).
    bases: (Vec<Value>, Vec<Value>),
    /// The answers replace the battle's last ones (Regenerate).
    regenerated: bool,
    /// The address's turn in flight (`Arena::hold_turn`).
    slot: Option<arena::TurnSlot>,
}

impl Answerable {
    async fn run(
        self,
        state: Arc<AppState>,
        permits: (Permit, Permit),
        turn: TurnRequest,
    ) -> AppResult {
        let Self {
            battle,
            visitor,
            prompt,
            bases,
            regenerated,
            slot,
        } = self;
        let side = |conversation: &[Value], model: &str| {
            let mut r = turn.req.clone();
            r["messages"] = Value::from(conversation.to_vec());
            r["model"] = model.into();
            let mut r = from_value::<ChatRequest>(&r)?;
            r.max_tokens_cap = turn.output_cap;
            r.drop_oldest_to_fit = true;
            r.keep_answer_room = true;
            // Whatever `--reasoning-parser` says: voters compare answers, and a thinking
            // format would name its family.
            r.split_reasoning = Some(true);
            Ok::<_, ApiError>(r)
        };
        let req_a = side(&bases.0, &battle.model_a)?;
        let req_b = side(&bases.1, &battle.model_b)?;
        // A battle with answers takes votes: not while its next turn is answered.
        let answering = if battle.turns > 0 {
            state.arena.begin_answer(&battle).await?;
            Some(Answering::new(state.clone(), battle.id.clone()))
        } else {
            None
        };
        let generating =
            match battle::submit(&state, &battle.id, permits, (req_a, req_b), &turn.sampling).await
            {
                Ok(g) => g,
                Err(e) => {
                    // Marked before the "being answered" mark goes (with `answering`).
                    let noted = note_failure(&state, &battle).await;
                    settle_failed(answering, noted);
                    return Err(e);
                }
            };
        let head = json!({"battle_id": battle.id, "token": visitor.token()});
        let finish = TurnRecord {
            state: state.clone(),
            battle,
            visitor,
            prompt,
            conversations: bases,
            answering,
            regenerated,
            _slot: slot,
        };
        if !turn.stream {
            let (a, b) = match generating.run(None).await {
                Ok(answers) => answers,
                Err(u) => {
                    let e = u
                        .error
                        .unwrap_or_else(|| neutral(ApiError::internal("no answer")));
                    let mut finish = finish;
                    let noted = note_failure(&state, &finish.battle).await;
                    settle_failed(finish.answering.take(), noted);
                    return Err(e);
                }
            };
            let revision = finish.record(&a, &b).await?;
            let mut reply = head;
            reply["a"] = a.json();
            reply["b"] = b.json();
            reply["revision"] = revision.into();
            return Ok(axum::Json(reply).into_response());
        }
        // Streamed: the battle's id and token, then both sides' pieces as they come, then
        // `{"done": true, "revision"}` once the turn is stored (or an error), then `[DONE]`.
        // The task owns the generations: a client that leaves closes the channel and cancels
        // both.
        let (tx, rx) = mpsc::channel::<Value>(64);
        let _ = tx.try_send(head);
        tokio::spawn(async move {
            let last = match generating.run(Some(&tx)).await {
                Ok((a, b)) => match finish.record(&a, &b).await {
                    Ok(revision) => json!({"done": true, "revision": revision}),
                    Err(e) => e.body(),
                },
                Err(unfinished) => {
                    let mut finish = finish;
                    if unfinished.error.is_some()
                        && !note_failure(&finish.state, &finish.battle).await
                    {
                        settle_failed(finish.answering.take(), false);
                    }
                    finish.not_kept(&unfinished.shown).await;
                    match unfinished.error {
                        Some(e) => e.body(),
                        None => return,
                    }
                }
            };
            let _ = tx.send(last).await;
        });
        let events = ReceiverStream::new(rx)
            .map(|v| Ok::<_, Infallible>(SseEvent::default().data(v.to_string())))
            .chain(futures::stream::once(async {
                Ok(SseEvent::default().data("[DONE]"))
            }));
        Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response())
    }
}

/// A turn of `battle` failed: its vote will not be rated ([`arena::Arena::turn_failed`]),
/// unless the server is shutting down (a rolling update's doing, not a side's: the visitor
/// retries on another server). A busy side still counts: one model's full queue is a failure
/// a visitor can cause and tell apart. Whether the mark is in the store (or none is due):
/// where the store cannot take it now, this server's votes write it first, and the turn's
/// "being answered" mark must run out its lease ([`Answering::keep`]) so that no other
/// server rates a vote before then.
async fn note_failure(state: &AppState, battle: &arena::OpenBattle) -> bool {
    if state.is_shutting_down() {
        return true;
    }
    match state.arena.turn_failed(battle).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!("arena: a failed turn's mark not written yet: {}", e.message);
            false
        }
    }
}

/// A failed turn's "being answered" mark: ended if its failure is noted in the store, else
/// left to run out its lease.
fn settle_failed(answering: Option<Answering>, noted: bool) {
    if let Some(a) = answering.filter(|_| !noted) {
        a.keep();
    }
}

/// What storing an answered turn needs: the battle, its owner, both conversations so far.
struct TurnRecord {
    state: Arc<AppState>,
    battle: OpenBattle,
    visitor: Visitor,
    /// This turn's messages.
    prompt: Vec<Value>,
    conversations: (Vec<Value>, Vec<Value>),
    /// Ended once the turn is stored, or dropped with the turn when it fails or is left.
    answering: Option<Answering>,
    /// The answers replace the battle's last ones (Regenerate).
    regenerated: bool,
    /// The address's turn in flight, ended with the turn.
    _slot: Option<arena::TurnSlot>,
}

/// A follow-up turn being answered ([`arena::Arena::begin_answer`]): its mark is renewed
/// while this lives and removed when it ends or is dropped.
struct Answering {
    state: Arc<AppState>,
    id: String,
    renewing: Option<tokio::task::JoinHandle<()>>,
}

impl Answering {
    fn new(state: Arc<AppState>, id: String) -> Self {
        let (s, i) = (state.clone(), id.clone());
        let every = state.arena.config().answer_lease / 3;
        let renewing = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                s.arena.renew_answer(&i).await;
            }
        });
        Self {
            state,
            id,
            renewing: Some(renewing),
        }
    }

    /// Stops renewing and leaves the mark to run out its lease: no vote lands before then.
    fn keep(mut self) {
        if let Some(r) = self.renewing.take() {
            r.abort();
        }
        self.id.clear();
    }

    /// Ends it now, before the visitor hears that the turn is stored.
    async fn end(mut self) {
        let finish = self.finish();
        // In a task of its own: if this request's future is dropped while it waits (its
        // client left), the mark still goes (`drop` finds nothing left to do).
        let _ = tokio::spawn(finish).await;
    }

    /// Stops the renewals (waiting out one in flight, which would put the mark back) and
    /// then removes the mark.
    fn finish(&mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (state, id) = (self.state.clone(), std::mem::take(&mut self.id));
        let renewing = self.renewing.take();
        async move {
            if let Some(r) = renewing {
                r.abort();
                let _ = r.await;
            }
            if !id.is_empty() && !state.arena.end_answer(&id).await {
                // The store is away: left, the mark would hold the battle's votes off for the
                // rest of its lease, and once run out unended leave the vote unrated
                // (`Store::name_unsettled`) though this turn was settled. Tried again for as
                // long as the battle may live.
                tokio::spawn(async move {
                    let mut pause = Duration::from_secs(1);
                    let mut waited = Duration::ZERO;
                    while waited < state.arena.config().battle_ttl {
                        tokio::time::sleep(pause).await;
                        waited += pause;
                        if state.arena.end_answer(&id).await {
                            break;
                        }
                        pause = (pause * 2).min(Duration::from_secs(10));
                    }
                });
            }
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if self.id.is_empty() && self.renewing.is_none() {
            return;
        }
        let finish = self.finish();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(finish);
        }
    }
}

impl TurnRecord {
    /// The turn ends unstored after showing `shown` (stopped or failed): the battle keeps its
    /// earlier turns, but if what was shown named a model its vote is not anonymous.
    async fn not_kept(self, shown: &[String; 2]) {
        if shown.iter().all(String::is_empty) {
            return;
        }
        let noted = self.note_names(shown).await;
        self.release(noted).await;
    }

    /// Whether what an unstored turn showed is noted (`Arena::turn_not_kept`).
    async fn note_names(&self, shown: &[String; 2]) -> bool {
        let served = served(&self.state).unwrap_or_default();
        let shown = [shown[0].as_str(), shown[1].as_str()];
        let arena = &self.state.arena;
        match arena
            .turn_not_kept(&self.battle, &self.prompt, shown, &served)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("arena: an unstored turn's names not noted: {}", e.message);
                false
            }
        }
    }

    /// Ends the turn's "being answered" mark once what it showed is noted, so no vote lands
    /// in between; not noted (the store failed), the mark runs out its lease instead.
    async fn release(self, noted: bool) {
        match self.answering {
            Some(answering) if noted => answering.end().await,
            Some(answering) => answering.keep(),
            None => {}
        }
    }

    /// Appends each side's answer to its own conversation and stores both; answers the
    /// battle's new revision.
    async fn record(mut self, a: &Answer, b: &Answer) -> Result<String, ApiError> {
        let (mut conversation_a, mut conversation_b) = std::mem::take(&mut self.conversations);
        conversation_a.push(json!({"role": "assistant", "content": a.content}));
        conversation_b.push(json!({"role": "assistant", "content": b.content}));
        let recorded = self
            .state
            .arena
            .record_turn(
                &self.battle,
                &self.visitor,
                &conversation_a,
                &conversation_b,
                self.regenerated,
            )
            .await;
        // Not stored (a vote or expiry came first), the answers were still shown.
        let noted = recorded.is_ok()
            || self
                .note_names(&[a.content.clone(), b.content.clone()])
                .await;
        self.release(noted).await;
        recorded
    }
}

pub async fn vote(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    ClientAddress(address): ClientAddress,
    RequestBody(body): RequestBody,
) -> AppResult {
    let id = battle_id(id)?;
    let _permit = state.vote_permit()?;
    let v = parse_json(&body)?;
    let winner: Outcome = serde_json::from_value(v["winner"].clone()).map_err(|_| {
        ApiError::invalid_param(
            "winner",
            "one of \"model_a\", \"model_b\", \"tie\", \"tie (bothbad)\"",
        )
    })?;
    // The answers the page shows (their revision, from the turn's reply): a vote on others
    // is refused. API clients may leave it out.
    let seen = match &v["revision"] {
        Value::Null => None,
        Value::String(r) => Some(r.as_str()),
        _ => {
            return Err(ApiError::invalid_param(
                "revision",
                "the `revision` a turn's reply gave, a string",
            ))
        }
    };
    let visitor = v["token"]
        .as_str()
        .and_then(Visitor::from_token)
        .ok_or_else(|| arena::not_yours(&id))?;
    state.arena.check_owner(&id, &visitor).await?;
    state.arena.not_answering(&id).await?;
    state.arena.admit(Request::Vote, &visitor, &address).await?;
    let cast = state
        .arena
        .vote(&id, &visitor, winner, &known_names(&state)?, seen)
        .await?;
    let reply = json!({"battle_id": id, "model_a": cast.model_a, "model_b": cast.model_b,
                       "winner": cast.winner, "anony": cast.anony});
    Ok(axum::Json(reply).into_response())
}

/// `GET /arena/config`: what a visitor's turn may ask (`--arena-min-temperature`,
/// `--arena-max-tokens`, `--arena-max-tokens-floor`, `--arena-max-turns`, `--arena-max-input-chars`), so the page offers
/// only settings the server takes.
pub async fn config(State(state): State<Arc<AppState>>) -> Response {
    #[derive(serde::Serialize)]
    struct Limits {
        /// The least `temperature` (0: any).
        min_temperature: f32,
        /// The most `max_tokens`, and what a turn that leaves it out gets.
        max_tokens: u64,
        /// The least `max_tokens`.
        max_tokens_floor: u64,
        /// Turns a battle takes.
        max_turns: u32,
        /// Characters of the visitor's text a turn may carry.
        max_input_chars: usize,
    }
    let c = state.arena.config();
    axum::Json(Limits {
        min_temperature: c.min_temperature,
        max_tokens: c.max_tokens,
        max_tokens_floor: c.max_tokens_floor,
        max_turns: c.max_turns,
        max_input_chars: c.max_input_chars,
    })
    .into_response()
}

pub async fn leaderboard(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(state.arena.leaderboard().as_ref().clone()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_visitor_counts_by_its_64_network() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff:1:2:3"), key("2001:db8:1:2::9"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn a_forwarded_address_counts_without_its_port() {
        let ip = |s: &str| forwarded_ip(s).map(address_key);
        assert_eq!(ip("192.0.2.7:5678"), ip("192.0.2.7"));
        assert_eq!(ip("192.0.2.7").as_deref(), Some("192.0.2.7"));
        assert_eq!(ip("[2001:db8::1]:443"), ip("2001:db8::1"));
        assert_eq!(ip("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(ip("2001:db8::1").as_deref(), Some("2001:db8::/64"));
        assert_eq!(ip("unknown"), None);
    }

    /// The proxy's own entry counts, whatever bytes the client's entries before it hold.
    #[test]
    fn the_last_forwarded_entry_counts_whatever_comes_before() {
        let key = |v: &[u8]| forwarded_key(v);
        assert_eq!(key(b"198.51.100.7").as_deref(), Some("198.51.100.7"));
        assert_eq!(
            key(b"\x80\xff, 198.51.100.7").as_deref(),
            Some("198.51.100.7")
        );
        assert_eq!(
            key("é, 2001:db8::1".as_bytes()).as_deref(),
            Some("2001:db8::/64")
        );
        assert_eq!(
            key(b"192.0.2.1,198.51.100.7:80").as_deref(),
            Some("198.51.100.7")
        );
        assert_eq!(key(b"198.51.100.7, "), None);
        assert_eq!(key(b""), None);
    }

    /// With trusted proxies, their own entries are passed over right to left: the client is
    /// the last address that is not one of them (across header lines), the first entry where
    /// all are.
    #[test]
    fn trusted_proxies_entries_are_passed_over() {
        let nets: Vec<ipnet::IpNet> = ["10.0.0.0/8", "2001:db8:ffff::/48"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let trusted = |ip: IpAddr| nets.iter().any(|n| n.contains(&ip));
        let client = |values: &[&[u8]]| forwarded_client(values, &trusted);
        assert_eq!(
            client(&[b"203.0.113.9, 198.51.100.7, 10.1.2.3"]).as_deref(),
            Some("198.51.100.7")
        );
        assert_eq!(
            client(&[b"198.51.100.7", b"10.0.0.1, [2001:db8:ffff::5]:443"]).as_deref(),
            Some("198.51.100.7")
        );
        assert_eq!(
            client(&[b"10.9.9.9, 10.0.0.1"]).as_deref(),
            Some("10.9.9.9")
        );
        // A client's own made-up entries before the first untrusted one do not count.
        assert_eq!(
            client(&[b"1.2.3.4, 198.51.100.7, 10.0.0.1"]).as_deref(),
            Some("198.51.100.7")
        );
    }
}
