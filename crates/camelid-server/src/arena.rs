//! The arena's store: battles waiting for a vote, the votes cast, and the vote log on disk
//! (FastChat's battle format). It knows nothing of HTTP routes; the handlers are in
//! `routes::arena`.

use crate::error::ApiError;
use axum::http::StatusCode;
use camelid_eval::ratings::{self, Battle, Outcome};
use rand::Rng;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// Battles waiting for a vote that are remembered; older ones are forgotten first.
const MAX_OPEN: usize = 10_000;

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

    /// The two models (A, B) of an open battle; 404 if unknown, 409 once voted on.
    pub(crate) fn contestants(&self, id: &str) -> Result<(String, String), ApiError> {
        let open = self.open.lock().unwrap();
        let b = open.0.get(id).ok_or_else(|| not_found(id))?;
        if b.voted {
            return Err(conflict("This battle has been voted on; start a new one."));
        }
        Ok((b.model_a.clone(), b.model_b.clone()))
    }

    /// Remembers a new battle between `model_a` and `model_b`; returns its id.
    pub(crate) fn open(&self, model_a: String, model_b: String) -> String {
        let id = format!("battle-{:032x}", rand::rng().random::<u128>());
        let mut open = self.open.lock().unwrap();
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
    }

    /// Casts the one vote of battle `id`: appends it to the log (if any) and to the votes.
    pub(crate) fn vote(&self, id: &str, winner: Outcome) -> Result<Battle, ApiError> {
        let battle = {
            let mut open = self.open.lock().unwrap();
            let b = open.0.get_mut(id).ok_or_else(|| not_found(id))?;
            if b.voted {
                return Err(conflict("This battle has been voted on already."));
            }
            b.voted = true;
            Battle {
                model_a: b.model_a.clone(),
                model_b: b.model_b.clone(),
                winner,
            }
        };
        if let Some(path) = &self.log {
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
        self.votes.lock().unwrap().push(battle.clone());
        Ok(battle)
    }

    /// Every vote so far (those of the log included).
    pub(crate) fn votes(&self) -> Vec<Battle> {
        self.votes.lock().unwrap().clone()
    }
}
