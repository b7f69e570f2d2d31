//! Anonymous side-by-side battles, as Chatbot Arena runs them: two models drawn at random
//! answer the same conversation under the labels A and B; the visitor votes; the vote reveals
//! the names and becomes a battle on the leaderboard (Bradley–Terry ratings, see
//! `camelid_eval::ratings`). The handlers; battles and votes are kept by `crate::arena`
//! (its store of record), and the answers come from `chat::complete`.
//!
//! - `POST /arena/battles` — a chat request without `model` (and not streamed); answered
//!   with `{"battle_id", "token", "a", "b"}`. The `token` is the visitor's: send it with
//!   every later request (a page keeps it; a new battle without one gets a new token). With
//!   `battle_id` and `token`, a follow-up turn: `messages` are appended to both sides'
//!   conversations, which the store holds, and the same two models answer.
//! - `POST /arena/battles/{id}/vote` — `{"winner": "model_a" | "model_b" | "tie" |
//!   "tie (bothbad)", "token": …}`, once per battle; answers with the names once the vote
//!   is committed.
//! - `GET /arena/leaderboard` — ratings over the anonymous votes, as last refitted.

use super::{body_bytes, AppResult};
use crate::arena::{self, Request, Visitor};
use crate::chat;
use crate::error::ApiError;
use crate::format::{finish_str, usage_json};
use crate::openai::{from_value, ChatRequest, SamplingFields};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use camelid_eval::ratings::Outcome;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// The client's address for the per-address limits: the peer's, or the last
/// `X-Forwarded-For` entry (the one the nearest proxy added) with `--arena-trust-forwarded-for`.
pub struct ClientAddress(pub String);

impl FromRequestParts<Arc<AppState>> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        if state.arena.config().trust_forwarded_for {
            let forwarded = parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .map(str::trim)
                .filter(|a| !a.is_empty());
            if let Some(a) = forwarded {
                return Ok(Self(a.to_string()));
            }
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        Ok(Self(peer.unwrap_or_else(|| "unknown".into())))
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

/// The names of the served models.
fn served(state: &AppState) -> Result<Vec<String>, ApiError> {
    let models = state.models().ok_or_else(AppState::loading_error)?;
    Ok(models.iter().map(|m| m.name.clone()).collect())
}

/// One contestant's answer: the chat completion's first choice.
async fn answer(
    state: Arc<AppState>,
    req: ChatRequest,
    sampling: SamplingFields,
) -> Result<Value, ApiError> {
    let r = chat::complete(state, req, sampling).await?;
    let first = r.choices.first();
    Ok(json!({
        "content": first.map(|c| c.content.as_str()),
        "finish_reason": first.map(|c| finish_str(c.finish)),
        "usage": usage_json(&r.usage),
    }))
}

pub async fn battle(
    State(state): State<Arc<AppState>>,
    ClientAddress(address): ClientAddress,
    body: Result<Bytes, BytesRejection>,
) -> AppResult {
    let body = body_bytes(body)?;
    let mut req: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("The body is not valid JSON: {e}")))?;
    let Some(obj) = req.as_object_mut() else {
        return Err(ApiError::bad_request("The body must be a JSON object."));
    };
    if obj.contains_key("model") {
        return Err(ApiError::invalid_param(
            "model",
            "the arena draws the models; leave `model` out",
        ));
    }
    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::invalid_param(
            "stream",
            "arena answers come whole; leave `stream` out",
        ));
    }
    let battle_id = take_string(obj, "battle_id")?;
    let token = take_string(obj, "token")?;
    // The request read as the chat endpoint reads it (`model` is set per contestant), before
    // anything is counted or stored.
    obj.insert("model".into(), "".into());
    from_value::<ChatRequest>(&req)?;
    let sampling: SamplingFields = from_value(&req)?;
    let new_messages = req["messages"].as_array().cloned().unwrap_or_default();
    let visitor = match (&battle_id, token) {
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
    let battle = match battle_id {
        Some(id) => {
            state.arena.admit(Request::Turn, &visitor, &address).await?;
            state.arena.resume(&id, &visitor).await?
        }
        None => {
            let (a, b) = state.arena.draw_pair(&served(&state)?)?;
            state.arena.admit(Request::Turn, &visitor, &address).await?;
            state.arena.start(&visitor, a, b).await?
        }
    };
    // Each side: its own conversation so far, the new messages, its model.
    let side = |conversation: &[Value], model: &str| {
        let mut messages = conversation.to_vec();
        messages.extend(new_messages.iter().cloned());
        let mut r = req.clone();
        r["messages"] = Value::from(messages.clone());
        r["model"] = model.into();
        from_value::<ChatRequest>(&r).map(|r| (r, messages))
    };
    let (req_a, mut conversation_a) = side(&battle.conversation_a, &battle.model_a)?;
    let (req_b, mut conversation_b) = side(&battle.conversation_b, &battle.model_b)?;
    let (a, b) = tokio::join!(
        answer(state.clone(), req_a, sampling.clone()),
        answer(state.clone(), req_b, sampling)
    );
    let (a, b) = (a?, b?);
    conversation_a.push(json!({"role": "assistant", "content": a["content"]}));
    conversation_b.push(json!({"role": "assistant", "content": b["content"]}));
    state
        .arena
        .record_turn(&battle, &visitor, &conversation_a, &conversation_b)
        .await?;
    let reply = json!({"battle_id": battle.id, "token": visitor.token(), "a": a, "b": b});
    Ok(axum::Json(reply).into_response())
}

pub async fn vote(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ClientAddress(address): ClientAddress,
    body: Result<Bytes, BytesRejection>,
) -> AppResult {
    let body = body_bytes(body)?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("The body is not valid JSON: {e}")))?;
    let winner: Outcome = serde_json::from_value(v["winner"].clone()).map_err(|_| {
        ApiError::invalid_param(
            "winner",
            "one of \"model_a\", \"model_b\", \"tie\", \"tie (bothbad)\"",
        )
    })?;
    let visitor = v["token"]
        .as_str()
        .and_then(Visitor::from_token)
        .ok_or_else(|| arena::not_yours(&id))?;
    state.arena.admit(Request::Vote, &visitor, &address).await?;
    let cast = state
        .arena
        .vote(&id, &visitor, winner, &served(&state)?)
        .await?;
    let reply = json!({"battle_id": id, "model_a": cast.model_a, "model_b": cast.model_b,
                       "winner": cast.winner, "anony": cast.anony});
    Ok(axum::Json(reply).into_response())
}

pub async fn leaderboard(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(state.arena.leaderboard().as_ref().clone()).into_response()
}
