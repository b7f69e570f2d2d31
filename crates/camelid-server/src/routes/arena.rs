//! Anonymous side-by-side battles, as Chatbot Arena runs them: two models drawn at random
//! answer the same conversation under the labels A and B; the user votes; the vote reveals
//! the names and becomes a battle on the leaderboard (Bradley–Terry ratings, see
//! `camelid_eval::ratings`). The handlers; battles and votes are kept by `crate::arena`,
//! and the answers come from `chat::complete`.
//!
//! - `POST /arena/battles` — a chat request without `model` (and not streamed). With
//!   `battle_id`, a follow-up turn answered by the same two models.
//! - `POST /arena/battles/{id}/vote` — `{"winner": "model_a" | "model_b" | "tie" |
//!   "tie (bothbad)"}`, once per battle; answers with the names.
//! - `GET /arena/leaderboard` — ratings over every vote (and those of `--arena-log`).

use super::{AppResult, RequestBody};
use crate::chat;
use crate::error::ApiError;
use crate::format::{finish_str, usage_json};
use crate::openai::{from_value, parse_json, ChatRequest, SamplingFields};
use crate::state::{AppState, Permit};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use camelid_eval::ratings::{self, Outcome};
use rand::Rng;
use serde_json::{json, Value};
use std::sync::Arc;

/// Bootstrap resamples behind the leaderboard's intervals.
const BOOTSTRAP_ROUNDS: usize = 100;

/// The two models of a new battle (drawn at random, distinct) or of an open one.
fn contestants(state: &AppState, battle_id: Option<&str>) -> Result<(String, String), ApiError> {
    if let Some(id) = battle_id {
        return state.arena.contestants(id);
    }
    let models = state.models().ok_or_else(AppState::loading_error)?;
    if models.len() < 2 {
        return Err(ApiError::bad_request(
            "The arena needs at least two served models (`--model` twice).",
        ));
    }
    let mut rng = rand::rng();
    let i = rng.random_range(0..models.len());
    let j = (i + rng.random_range(1..models.len())) % models.len();
    Ok((models[i].name.clone(), models[j].name.clone()))
}

/// One contestant's answer: the chat completion's first choice.
async fn answer(
    state: Arc<AppState>,
    permit: Permit,
    mut req: ChatRequest,
    sampling: SamplingFields,
    model: String,
) -> Result<Value, ApiError> {
    req.model = model;
    let r = chat::complete(state, permit, req, sampling).await?;
    let first = r.choices.first();
    Ok(json!({
        "content": first.map(|c| c.content.as_str()),
        "finish_reason": first.map(|c| finish_str(c.finish)),
        "usage": usage_json(&r.usage),
    }))
}

pub async fn battle(
    State(state): State<Arc<AppState>>,
    RequestBody(body): RequestBody,
) -> AppResult {
    // A battle is two generations: a slot for each.
    let permits = (state.permit()?, state.permit()?);
    let mut req = parse_json(&body)?;
    drop(body);
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
    let battle_id = match obj.remove("battle_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(ApiError::invalid_param("battle_id", "must be a string")),
    };
    let (model_a, model_b) = contestants(&state, battle_id.as_deref())?;
    // The chat request, read as the chat endpoint reads it (`model` is set per contestant).
    obj.insert("model".into(), model_a.clone().into());
    let chat_req: ChatRequest = from_value(&req)?;
    let sampling: SamplingFields = from_value(&req)?;
    let (a, b) = tokio::join!(
        answer(
            state.clone(),
            permits.0,
            chat_req.clone(),
            sampling.clone(),
            model_a.clone()
        ),
        answer(
            state.clone(),
            permits.1,
            chat_req,
            sampling,
            model_b.clone()
        )
    );
    let (a, b) = (a?, b?);
    let id = battle_id.unwrap_or_else(|| state.arena.open(model_a, model_b));
    Ok(axum::Json(json!({"battle_id": id, "a": a, "b": b})).into_response())
}

pub async fn vote(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    RequestBody(body): RequestBody,
) -> AppResult {
    #[derive(serde::Deserialize)]
    struct Vote {
        winner: Outcome,
    }
    let Path(id) = id.map_err(|e| ApiError::bad_request(format!("Invalid battle id: {e}")))?;
    let _permit = state.permit()?;
    let v: Vote = serde_json::from_slice(&body).map_err(|_| {
        ApiError::invalid_param(
            "winner",
            "one of \"model_a\", \"model_b\", \"tie\", \"tie (bothbad)\"",
        )
    })?;
    let battle = state.arena.vote(&id, v.winner)?;
    let reply = json!({"battle_id": id, "model_a": battle.model_a, "model_b": battle.model_b,
                       "winner": battle.winner});
    Ok(axum::Json(reply).into_response())
}

pub async fn leaderboard(State(state): State<Arc<AppState>>) -> Response {
    // A hundred fits of every vote: as much work as a request, so it holds a permit (until
    // the fits are done, even if the client leaves), off the async workers.
    let permit = match state.permit() {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let votes = state.arena.votes();
    let rows = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        (
            votes.len(),
            ratings::leaderboard(&votes, BOOTSTRAP_ROUNDS, 0),
        )
    })
    .await;
    match rows {
        Ok((n, rows)) => axum::Json(json!({"battles": n, "leaderboard": rows})).into_response(),
        Err(e) => ApiError::internal(format!("rating the battles: {e}")).into_response(),
    }
}
