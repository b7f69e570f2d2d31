//! Anonymous side-by-side battles, as Chatbot Arena runs them: two models drawn at random
//! answer the same conversation under the labels A and B; the user votes; the vote reveals
//! the names and becomes a battle on the leaderboard (Bradley–Terry ratings, see
//! `camelid_eval::ratings`).
//!
//! - `POST /arena/battles` — a chat request without `model` (and not streamed). With
//!   `battle_id`, a follow-up turn answered by the same two models.
//! - `POST /arena/battles/{id}/vote` — `{"winner": "model_a" | "model_b" | "tie" |
//!   "tie (bothbad)"}`, once per battle; answers with the names.
//! - `GET /arena/leaderboard` — ratings over every vote (and those of `--arena-log`).

use crate::error::ApiError;
use crate::state::AppState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use camelid_eval::ratings::{self, Battle, Outcome};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Battles waiting for a vote that are remembered; older ones are forgotten first.
const MAX_OPEN: usize = 10_000;
/// Bootstrap resamples behind the leaderboard's intervals.
const BOOTSTRAP_ROUNDS: usize = 100;

struct Open {
    model_a: String,
    model_b: String,
    voted: bool,
}

#[derive(Default)]
pub struct Arena {
    open: Mutex<(HashMap<String, Open>, VecDeque<String>)>,
    votes: Mutex<Vec<Battle>>,
    log: Option<PathBuf>,
}

impl Arena {
    /// An arena whose votes are appended to `log` (FastChat battle lines), starting from the
    /// votes already there.
    pub fn new(log: Option<PathBuf>) -> std::io::Result<Self> {
        let votes = match &log {
            Some(p) if p.exists() => ratings::read_battles(&std::fs::read_to_string(p)?)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", p.display())))?,
            _ => vec![],
        };
        Ok(Self {
            votes: Mutex::new(votes),
            log,
            ..Default::default()
        })
    }
}

fn conflict(message: &str) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "invalid_request_error", message)
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("No open battle {id:?}."),
    )
}

/// The two models of a new battle (drawn at random, distinct) or of an open one.
fn contestants(state: &AppState, battle_id: Option<&str>) -> Result<(String, String), ApiError> {
    let arena = &state.arena;
    if let Some(id) = battle_id {
        let open = arena.open.lock().unwrap();
        let b = open.0.get(id).ok_or_else(|| not_found(id))?;
        if b.voted {
            return Err(conflict("This battle has been voted on; start a new one."));
        }
        return Ok((b.model_a.clone(), b.model_b.clone()));
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
async fn answer(state: Arc<AppState>, mut body: Value, model: &str) -> Result<Value, ApiError> {
    body["model"] = model.into();
    let resp = crate::chat::chat_completions(state, body.to_string().as_bytes()).await?;
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::internal(format!("reading an answer: {e}")))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::internal(format!("an answer is not JSON: {e}")))?;
    Ok(json!({
        "content": v["choices"][0]["message"]["content"],
        "finish_reason": v["choices"][0]["finish_reason"],
        "usage": v["usage"],
    }))
}

pub async fn battle(state: Arc<AppState>, body: &[u8]) -> Result<Response, ApiError> {
    let mut req: Value = serde_json::from_slice(body)
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
    let battle_id = match obj.remove("battle_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(ApiError::invalid_param("battle_id", "must be a string")),
    };
    let (model_a, model_b) = contestants(&state, battle_id.as_deref())?;
    let (a, b) = tokio::join!(
        answer(state.clone(), req.clone(), &model_a),
        answer(state.clone(), req, &model_b)
    );
    let (a, b) = (a?, b?);
    let id = battle_id.unwrap_or_else(|| {
        let id = format!("battle-{:032x}", rand::rng().random::<u128>());
        let mut open = state.arena.open.lock().unwrap();
        open.0.insert(
            id.clone(),
            Open {
                model_a,
                model_b,
                voted: false,
            },
        );
        open.1.push_back(id.clone());
        while open.1.len() > MAX_OPEN {
            if let Some(old) = open.1.pop_front() {
                open.0.remove(&old);
            }
        }
        id
    });
    Ok(axum::Json(json!({"battle_id": id, "a": a, "b": b})).into_response())
}

pub fn vote(state: &AppState, id: &str, body: &[u8]) -> Result<Response, ApiError> {
    #[derive(serde::Deserialize)]
    struct Vote {
        winner: Outcome,
    }
    let v: Vote = serde_json::from_slice(body).map_err(|_| {
        ApiError::invalid_param(
            "winner",
            "one of \"model_a\", \"model_b\", \"tie\", \"tie (bothbad)\"",
        )
    })?;
    let battle = {
        let mut open = state.arena.open.lock().unwrap();
        let b = open.0.get_mut(id).ok_or_else(|| not_found(id))?;
        if b.voted {
            return Err(conflict("This battle has been voted on already."));
        }
        b.voted = true;
        Battle {
            model_a: b.model_a.clone(),
            model_b: b.model_b.clone(),
            winner: v.winner,
        }
    };
    if let Some(path) = &state.arena.log {
        let line = json!({"model_a": battle.model_a, "model_b": battle.model_b,
                          "winner": battle.winner, "tstamp": camelid_eval::data::now()});
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            tracing::error!("arena log {}: {e}", path.display());
        }
    }
    let reply = json!({"battle_id": id, "model_a": battle.model_a, "model_b": battle.model_b,
                       "winner": battle.winner});
    state.arena.votes.lock().unwrap().push(battle);
    Ok(axum::Json(reply).into_response())
}

pub async fn leaderboard(state: Arc<AppState>) -> Response {
    let votes = state.arena.votes.lock().unwrap().clone();
    // A hundred fits of the votes: off the async workers.
    let rows = tokio::task::spawn_blocking(move || {
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
