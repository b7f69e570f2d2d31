//! The leaderboard as last computed: the plain Bradley–Terry fit and the style-controlled
//! one (answer length and Markdown as covariates, from the stored conversations). It is
//! refitted when the store's votes change (a vote here, or one on another server sharing the
//! store), at most every `MIN_INTERVAL`; a request only reads it.

use super::parse_conversation;
use super::store::{RatedVote, Store};
use camelid_eval::ratings::{self, Battle, BattleRecord, Outcome, RatingOptions};
use camelid_eval::style;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
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
    /// Each anonymous vote's style ([`style::summary`]; `None`: a side without answers), by
    /// battle id. Votes never change, so a vote's conversations are read and parsed once,
    /// not at every refit (they may be megabytes each, and refits follow every vote).
    styles: Mutex<HashMap<String, Option<Value>>>,
}

impl Default for Board {
    fn default() -> Self {
        let empty = Fits {
            plain: vec![],
            styled: vec![],
            styled_battles: 0,
            coefficients: None,
        };
        Self {
            current: RwLock::new(Arc::new(render(&empty, 0, 0, None))),
            fitted_votes: RwLock::new(-1),
            changed: Notify::new(),
            styles: Mutex::default(),
        }
    }
}

/// Both fits of the rated votes.
struct Fits {
    plain: Vec<ratings::Rating>,
    styled: Vec<ratings::Rating>,
    /// The votes the style-controlled fit rates: those with an answer on both sides.
    styled_battles: usize,
    coefficients: Option<[f64; 4]>,
}

/// `battles`: the votes rated; `votes`: all of them (those naming a model too).
fn render(fits: &Fits, battles: usize, votes: usize, computed_at: Option<f64>) -> Value {
    let coefficients = fits.coefficients.map(|c| {
        style::ELEMENTS
            .iter()
            .zip(c)
            .map(|(e, c)| (e.to_string(), json!(c)))
            .collect::<serde_json::Map<_, _>>()
    });
    json!({
        "battles": battles,
        "votes": votes,
        "computed_at": computed_at,
        "leaderboard": fits.plain,
        "style_control": {
            "battles": fits.styled_battles,
            "leaderboard": fits.styled,
            "coefficients": coefficients,
        },
    })
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
        let missing: Vec<&str> = {
            let styles = self.styles.lock().unwrap();
            votes
                .iter()
                .filter(|v| v.anony && !styles.contains_key(&v.battle_id))
                .map(|v| v.battle_id.as_str())
                .collect()
        };
        if !missing.is_empty() {
            let conversations = store
                .vote_conversations(&missing)
                .await
                .map_err(|e| e.to_string())?;
            let summaries = tokio::task::spawn_blocking(move || {
                conversations
                    .into_iter()
                    .map(|(id, a, b)| {
                        let raw = json!({
                            "conversation_a": parse_conversation(&a),
                            "conversation_b": parse_conversation(&b),
                        });
                        (id, style::summary(&raw))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| format!("reading the votes' conversations: {e}"))?;
            self.styles.lock().unwrap().extend(summaries);
        }
        let records = anonymous_battles(votes, &self.styles.lock().unwrap());
        // Two hundred fits of the votes: off the async workers.
        let (fits, rated) = tokio::task::spawn_blocking(move || {
            let rated = records.len();
            fit(records).map(|f| (f, rated))
        })
        .await
        .map_err(|e| format!("rating the battles: {e}"))??;
        *self.current.write().unwrap() =
            Arc::new(render(&fits, rated, total, Some(camelid_eval::data::now())));
        *self.fitted_votes.write().unwrap() = total as i64;
        Ok(())
    }
}

/// The plain fit over every rated vote; the style-controlled one over those with answers on
/// both sides (an imported battle may carry no conversation).
fn fit(records: Vec<BattleRecord>) -> Result<Fits, String> {
    let opts = RatingOptions {
        convention: Default::default(),
        rounds: BOOTSTRAP_ROUNDS,
        seed: ratings::FASTCHAT_SEED,
    };
    let battles: Vec<Battle> = records.iter().map(|r| r.battle.clone()).collect();
    let plain = ratings::leaderboard_with(&battles, &opts);
    let answered: Vec<BattleRecord> = records
        .into_iter()
        .filter(|r| style::has_answers(&r.raw))
        .collect();
    let (styled, coefficients) =
        style::style_controlled(&answered, &opts).map_err(|e| e.to_string())?;
    Ok(Fits {
        plain,
        styled,
        styled_battles: answered.len(),
        coefficients: (!answered.is_empty()).then_some(coefficients),
    })
}

/// The votes the default leaderboard rates: those whose answers named no model, with their
/// style (for the style-controlled fit; `{}` where a side has no answer).
fn anonymous_battles(
    votes: Vec<RatedVote>,
    styles: &HashMap<String, Option<Value>>,
) -> Vec<BattleRecord> {
    votes
        .into_iter()
        .filter(|v| v.anony)
        .filter_map(|v| {
            let winner: Outcome = serde_json::from_value(Value::String(v.winner)).ok()?;
            let raw = styles.get(&v.battle_id).cloned().flatten();
            Some(BattleRecord {
                battle: Battle {
                    model_a: v.model_a,
                    model_b: v.model_b,
                    winner,
                },
                anony: Some(true),
                tstamp: None,
                raw: raw.unwrap_or_else(|| json!({})),
            })
        })
        .collect()
}
