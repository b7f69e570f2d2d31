//! The leaderboard as last computed. It is refitted when the store's votes change (a vote
//! here, or one on another server sharing the store), at most every `MIN_INTERVAL`; a
//! request only reads it.

use super::store::{RatedVote, Store};
use camelid_eval::ratings::{self, Battle, Outcome};
use serde_json::{json, Value};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

/// Bootstrap resamples behind the leaderboard's intervals.
const BOOTSTRAP_ROUNDS: usize = 100;
/// The least time between two fits.
pub(super) const MIN_INTERVAL: Duration = Duration::from_secs(2);
/// How often the store is asked whether votes changed (votes cast on other servers).
pub(super) const POLL_INTERVAL: Duration = Duration::from_secs(5);

pub(super) struct Board {
    current: RwLock<Arc<Value>>,
    /// Votes in the store when `current` was fitted (-1: never fitted).
    fitted_votes: RwLock<i64>,
    /// Told of each vote cast here.
    pub changed: Notify,
}

impl Default for Board {
    fn default() -> Self {
        Self {
            current: RwLock::new(Arc::new(render(&[], 0, 0, None))),
            fitted_votes: RwLock::new(-1),
            changed: Notify::new(),
        }
    }
}

/// `battles`: the votes rated; `votes`: all of them (those naming a model too).
fn render(
    rows: &[ratings::Rating],
    battles: usize,
    votes: usize,
    computed_at: Option<f64>,
) -> Value {
    json!({"battles": battles, "votes": votes, "computed_at": computed_at, "leaderboard": rows})
}

impl Board {
    pub fn current(&self) -> Arc<Value> {
        self.current.read().unwrap().clone()
    }

    /// Refits if the store's vote count differs from the last fit's.
    pub async fn refresh(&self, store: &Store) -> Result<(), String> {
        let count = store.vote_count().await.map_err(|e| e.to_string())?;
        if count == *self.fitted_votes.read().unwrap() {
            return Ok(());
        }
        let votes = store.rated_votes().await.map_err(|e| e.to_string())?;
        let total = votes.len();
        let battles = anonymous_battles(votes);
        let rated = battles.len();
        // A hundred fits of the votes: off the async workers.
        let rows = tokio::task::spawn_blocking(move || {
            ratings::leaderboard(&battles, BOOTSTRAP_ROUNDS, 0)
        })
        .await
        .map_err(|e| format!("rating the battles: {e}"))?;
        *self.current.write().unwrap() =
            Arc::new(render(&rows, rated, total, Some(camelid_eval::data::now())));
        *self.fitted_votes.write().unwrap() = total as i64;
        Ok(())
    }
}

/// The votes the default leaderboard rates: those whose answers named no model.
fn anonymous_battles(votes: Vec<RatedVote>) -> Vec<Battle> {
    votes
        .into_iter()
        .filter(|v| v.anony)
        .filter_map(|v| {
            let winner: Outcome = serde_json::from_value(Value::String(v.winner)).ok()?;
            Some(Battle {
                model_a: v.model_a,
                model_b: v.model_b,
                winner,
            })
        })
        .collect()
}
