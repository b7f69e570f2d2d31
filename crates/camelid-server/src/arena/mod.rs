//! The arena's rules over its store of record (SQLite or PostgreSQL, `store`): a battle
//! belongs to the visitor whose token started it; it takes one vote; turns and votes are
//! rate-limited per visitor and per address; an open battle expires after a time to live,
//! never pushed out by other battles. A vote whose conversation names a served model, a model
//! family or a maker is kept but marked non-anonymous (`anony`, FastChat's field) and left out of the leaderboard, which is
//! refitted when the votes change (`board`). Pairs are drawn by `pairs`. It knows nothing of
//! HTTP routes; the handlers are in `routes::arena`.
//!
//! A battle's life, as the handlers drive it: `admit` (429) → `start` (new) or `resume`
//! (follow-up; 403/404/409/410) → the two answers → `record_turn` → … → `admit` → `vote`.

mod board;
pub mod pairs;
mod store;

use crate::error::ApiError;
use axum::http::StatusCode;
use camelid_eval::ratings::Outcome;
use rand::Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use store::{BattleRow, Store, VoteRow};

/// The window of the rate limits.
const RATE_WINDOW_SECS: f64 = 60.0;
/// How often expired battles and old rate-limit entries are deleted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Requests allowed per minute; 0 means no limit.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    pub per_visitor: u32,
    pub per_address: u32,
}

#[derive(Debug, Clone)]
pub struct ArenaConfig {
    /// An open battle expires this long after its start or last turn.
    pub battle_ttl: Duration,
    /// Turns (new battles and follow-ups).
    pub turn_limits: RateLimits,
    pub vote_limits: RateLimits,
    /// Sampling weights by model name (`--arena-weight`); unnamed models weigh 1.
    pub weights: BTreeMap<String, f64>,
    /// Take the client's address from the last `X-Forwarded-For` entry (behind a proxy).
    pub trust_forwarded_for: bool,
    /// The proxies `X-Forwarded-For` is taken from (`--arena-trusted-proxies`; empty: any
    /// peer, with `trust_forwarded_for`): a peer outside them counts as itself whatever the
    /// header says, and their own entries in the header are passed over, right to left, to
    /// the first address that is not one of them (nginx's `set_real_ip_from` with
    /// `real_ip_recursive`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The arena's routes need an API key like the OpenAI API (`--arena-private`); by
    /// default they are open to visitors, held by the rate limits (per address: a client
    /// may start battles under fresh visitor tokens).
    pub private: bool,
    /// Tokens one side of a turn may generate (`--arena-max-tokens`): a turn that names
    /// none gets this many, one that asks for more is refused. Without it a visitor's turn
    /// could run both models to the end of their context.
    pub max_tokens: u64,
    /// The least `max_tokens` a turn may ask (`--arena-max-tokens-floor`; FastChat's
    /// slider starts at 16): an answer cut after a token or two ends where its model's
    /// tokenizer splits the prompt's words, which tells model families apart.
    pub max_tokens_floor: u64,
    /// How long a follow-up's "being answered" mark lasts unless its server renews it
    /// (every third of this while the turn runs): a server that dies mid-turn leaves a mark
    /// that blocks votes on the battle this long at most, not for the battle's life.
    pub answer_lease: Duration,
    /// Connections this server's pool keeps to the store at most
    /// (`--arena-db-max-connections`): replicas × this must stay under the database's
    /// `max_connections` (small managed PostgreSQL tiers allow 25–50).
    pub db_max_connections: u32,
    /// The lowest temperature a turn may ask (`--arena-min-temperature`); above 0 the
    /// samplers that make an answer (nearly) greedy are refused too. A greedy answer can be
    /// replayed: a visitor who learnt each model's answer to a probe prompt from earlier
    /// battles (the vote names them) would know both sides of the next battle from it.
    pub min_temperature: f32,
    /// Turns one battle takes at most (`--arena-max-turns`; FastChat's
    /// `CONVERSATION_TURN_LIMIT`): both sides' conversations are stored, read back and
    /// rendered again on every follow-up, and as a side drops its oldest turns to fit its
    /// context, nothing else would stop them growing.
    pub max_turns: u32,
    /// Characters of the visitor's text one turn may carry (`--arena-max-input-chars`;
    /// FastChat's `INPUT_CHAR_LEN_LIMIT`, which cuts the text where camelid refuses it).
    pub max_input_chars: usize,
    /// Turns one client address may have answered at once on this server
    /// (`--arena-address-turns-in-flight`; 0: no cap). Each turn holds two generation slots
    /// for up to `max_tokens` each: without it one address within its per-minute limits
    /// could hold every slot of the server, and other visitors and API clients get 429.
    pub turns_in_flight_per_address: u32,
}

impl Default for ArenaConfig {
    fn default() -> Self {
        Self {
            battle_ttl: Duration::from_secs(3600),
            turn_limits: RateLimits {
                per_visitor: 20,
                per_address: 60,
            },
            vote_limits: RateLimits {
                per_visitor: 20,
                per_address: 60,
            },
            weights: BTreeMap::new(),
            trust_forwarded_for: false,
            trusted_proxies: vec![],
            private: false,
            max_tokens: 1024,
            max_tokens_floor: 16,
            answer_lease: Duration::from_secs(60),
            db_max_connections: 8,
            // FastChat's default and LMSYS's fixed arena temperature.
            min_temperature: 0.7,
            // FastChat's defaults.
            max_turns: 50,
            max_input_chars: 12_000,
            turns_in_flight_per_address: 4,
        }
    }
}

/// Turns being answered on this server, by client address.
#[derive(Debug, Default)]
struct InFlight(std::sync::Mutex<HashMap<String, u32>>);

/// One turn of an address being answered ([`Arena::hold_turn`]); it ends when dropped.
#[derive(Debug)]
pub struct TurnSlot {
    in_flight: Arc<InFlight>,
    address: String,
}

impl Drop for TurnSlot {
    fn drop(&mut self) {
        let mut counts = self.in_flight.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// A visitor: the token its page holds (64 hex digits), known to the store only by its
/// SHA-256.
pub struct Visitor {
    token: String,
    key: String,
}

impl Visitor {
    /// A new visitor with a fresh random token.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let bytes: [u8; 32] = rand::rng().random();
        Self::with_token(hex(&bytes))
    }

    /// The visitor holding `token`; `None` unless it is 64 lowercase hex digits.
    pub fn from_token(token: &str) -> Option<Self> {
        let well_formed = token.len() == 64
            && token
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        well_formed.then(|| Self::with_token(token.to_string()))
    }

    fn with_token(token: String) -> Self {
        let key = hex(&Sha256::digest(token.as_bytes()));
        Self { token, key }
    }

    pub fn token(&self) -> &str {
        &self.token
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a request asks of the rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A new battle or a follow-up turn.
    Turn,
    Vote,
}

/// An open battle as its owner sees it: the models and both conversations so far
/// (`{"role", "content"}` messages, as the chat API takes them).
#[derive(Debug, Clone)]
pub struct OpenBattle {
    pub id: String,
    pub model_a: String,
    pub model_b: String,
    pub conversation_a: Vec<Value>,
    pub conversation_b: Vec<Value>,
    /// Turns answered so far.
    pub turns: i64,
    /// When this turn was let in: a turn admitted before the battle expired is stored even
    /// if its answers outlast the battle's time to live.
    pub admitted_at: f64,
    /// Both conversations as the store holds them (what a regenerated turn replaces, and
    /// only if they are still these).
    pub stored: (String, String),
}

impl OpenBattle {
    /// 409 `battle_changed` if `seen` (the [`revision`] a page shows, when it says) is not
    /// what the battle holds: a turn was stored after the page lost its reply, and a
    /// follow-up, regenerate or vote now would build on answers the visitor has not seen.
    pub fn check_seen(&self, seen: Option<&str>) -> Result<(), ApiError> {
        match seen {
            Some(r) if r != revision(&self.stored.0, &self.stored.1) => Err(changed(&self.id)),
            _ => Ok(()),
        }
    }
}

/// A conversation without its last answer: what the answer followed (ending with the turn's
/// messages) and those messages (the visitor's, since the answer before). `None` when it does
/// not end with an answer.
pub fn without_last_answer(conversation: &[Value]) -> Option<(Vec<Value>, Vec<Value>)> {
    let (last, base) = conversation.split_last()?;
    if last["role"] != "assistant" {
        return None;
    }
    let start = base
        .iter()
        .rposition(|m| m["role"] == "assistant")
        .map_or(0, |i| i + 1);
    Some((base.to_vec(), base[start..].to_vec()))
}

/// A vote as stored.
#[derive(Debug, Clone)]
pub struct CastVote {
    pub battle_id: String,
    pub model_a: String,
    pub model_b: String,
    pub winner: Outcome,
    /// False when an answer named a served model: kept, but not rated.
    pub anony: bool,
}

pub struct Arena {
    store: Store,
    config: ArenaConfig,
    board: board::Board,
    /// Battles shown a model's name whose mark the store could not take (an outage): the
    /// vote writes it first, or is refused while it cannot, so the names seen do not go
    /// rated. This process's memory: a vote another replica takes does not see it.
    unmarked: std::sync::Mutex<std::collections::HashSet<String>>,
    in_flight: Arc<InFlight>,
}

impl Default for Arena {
    /// An arena in this process's memory, with the default rules.
    fn default() -> Self {
        Self::in_memory(ArenaConfig::default())
    }
}

fn now() -> f64 {
    camelid_eval::data::now()
}

fn store_error(e: sqlx::Error) -> ApiError {
    // The database's own message (its host, tables, constraints) stays in the log.
    tracing::error!("arena store: {e}");
    if store::unreachable(&e) {
        // Down or restarting: a moment later it may answer (as a proxy's 503 says).
        return ApiError {
            code: Some("arena_store_unavailable"),
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_overloaded",
                "The arena's store cannot be reached; retry in a moment.",
            )
        };
    }
    ApiError::internal("The arena's store failed; retry later.".to_string())
}

fn refusal(status: StatusCode, code: &'static str, message: String) -> ApiError {
    ApiError {
        code: Some(code),
        ..ApiError::new(status, "invalid_request_error", message)
    }
}

/// A follow-up on a server that does not serve one of its battle's models (while an update
/// rolls through a fleet its servers serve different sets): 503, to be tried again (another
/// server may take it). Which model is missing is not said: it would tell the sides apart.
pub fn models_not_served_here(id: &str) -> ApiError {
    ApiError {
        code: Some("battle_models_unavailable"),
        retry_after: Some(5),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_overloaded",
            format!(
                "This server does not serve battle {id:?}'s models right now; try this turn \
                 again in a moment."
            ),
        )
    }
}

fn not_found(id: &str) -> ApiError {
    refusal(
        StatusCode::NOT_FOUND,
        "battle_not_found",
        format!("No battle {id:?}."),
    )
}

/// The request's token is not the one that started battle `id` (or there is none).
pub fn not_yours(id: &str) -> ApiError {
    ApiError {
        param: Some("token".into()),
        ..refusal(
            StatusCode::FORBIDDEN,
            "battle_not_yours",
            format!("Battle {id:?} belongs to the visitor who started it: send the `token` its start returned."),
        )
    }
}

/// A follow-up to a battle that has had its `--arena-max-turns`: it may still be voted on.
pub fn turn_limit(id: &str, max: u32) -> ApiError {
    refusal(
        StatusCode::BAD_REQUEST,
        "battle_turn_limit",
        format!("Battle {id:?} has had its {max} turns: vote on it, or start a new battle."),
    )
}

fn voted(id: &str) -> ApiError {
    refusal(
        StatusCode::CONFLICT,
        "battle_voted",
        format!("Battle {id:?} has been voted on; start a new one."),
    )
}

fn expired(id: &str) -> ApiError {
    refusal(
        StatusCode::GONE,
        "battle_expired",
        format!("Battle {id:?} has expired; start a new one."),
    )
}

fn answering(id: &str) -> ApiError {
    refusal(
        StatusCode::CONFLICT,
        "battle_answering",
        format!("Battle {id:?} is answering a turn; vote or ask again once both answers are in."),
    )
}

/// A battle whose first turn has not been stored: nothing to vote on, and it takes no
/// follow-up (a first turn that failed or was stopped leaves it so: a new round starts a new
/// battle). A follow-up would let a visitor keep only the battles whose first turn failed,
/// and a failure can depend on which models were drawn (one's shorter context).
pub fn unanswered(id: &str) -> ApiError {
    refusal(
        StatusCode::CONFLICT,
        "battle_unanswered",
        format!("Battle {id:?} has no answered turn; start a new one."),
    )
}

fn busy(id: &str) -> ApiError {
    refusal(
        StatusCode::CONFLICT,
        "battle_busy",
        format!("Battle {id:?} changed while this request ran (another turn or vote); retry."),
    )
}

/// The answers a page shows are not what the battle holds: a turn was stored after the
/// page lost its reply (the connection dropped between the answers and `done`), and a vote
/// now would count answers the visitor is not looking at.
fn changed(id: &str) -> ApiError {
    refusal(
        StatusCode::CONFLICT,
        "battle_changed",
        format!(
            "Battle {id:?} holds answers this page has not shown (a turn was stored after its \
             reply was lost); start a new one."
        ),
    )
}

/// A battle's revision: names the conversations it holds (as stored), so that a vote can
/// say which answers it was cast on. Sent with each stored turn (`done`).
pub fn revision(conversation_a: &str, conversation_b: &str) -> String {
    let mut h = Sha256::new();
    h.update(conversation_a.as_bytes());
    h.update([0]);
    h.update(conversation_b.as_bytes());
    hex(&h.finalize())[..16].to_string()
}

/// Whether battle `b` may be continued or voted on by `visitor` now: its owner's, unvoted,
/// unexpired. Ownership is checked first, so a stranger learns nothing else.
fn check(id: &str, b: &BattleRow, visitor: &Visitor, now: f64) -> Result<(), ApiError> {
    if b.visitor != visitor.key {
        Err(not_yours(id))
    } else if b.voted {
        Err(voted(id))
    } else if b.expires_at <= now {
        Err(expired(id))
    } else {
        Ok(())
    }
}

fn parse_conversation(text: &str) -> Vec<Value> {
    serde_json::from_str(text).unwrap_or_default()
}

/// Words that say which model or maker is speaking: FastChat's `clean_battle_data`
/// list (less its error banners and "palm", which is mostly a hand here) and the families
/// and makers camelid serves.
const IDENTITY_WORDS: &[&str] = &[
    "vicuna",
    "lmsys",
    "koala",
    "uc berkeley",
    "open assistant",
    "laion",
    "chatglm",
    "chatgpt",
    "gpt-4",
    "openai",
    "anthropic",
    "claude",
    "bard",
    "lamda",
    "google",
    "llama",
    "qianwan",
    "alibaba",
    "mistral",
    "zhipu",
    "keg lab",
    "01.ai",
    "ai2",
    "tülu",
    "tulu",
    // camelid's families and their makers.
    "tinyllama",
    "qwen",
    "tongyi",
    "mixtral",
    "gemma",
    "deepmind",
    "phi",
    "microsoft",
    "smollm",
    "smollm2",
    "hugging face",
    "huggingface",
    "meta ai",
    // Llama 3 says "I was developed by Meta" without its own name.
    "meta",
    "deepseek",
    "nous research",
    "hermes",
    "nvidia",
    "nemotron",
    "falcon",
    "ministral",
    // The same makers and families as they are written in Chinese (Qwen, DeepSeek and GLM
    // answer "who are you?" so in Chinese).
    "通义千问",
    "千问",
    "阿里巴巴",
    "阿里云",
    "深度求索",
    "智谱",
];

/// Whether a message of either conversation (the visitor's too, as FastChat's
/// `clean_battle_data` reads them: "are you Llama?" answered "yes" tells as much) names one
/// of `models` or says who made it (`IDENTITY_WORDS`), case-insensitively and as a whole
/// word (`phi` is not in "philosophy", `smol-a` not in "smol-ab"); only names of three
/// letters or digits or more count (an alias like `a` or `b` is in most texts and tells
/// nothing).
fn conversations_name_a_model(conversations: [&[Value]; 2], models: &[String]) -> bool {
    let names: Vec<String> = models
        .iter()
        .filter(|m| m.chars().filter(|c| c.is_alphanumeric()).count() >= 3)
        .map(|m| m.to_lowercase())
        .chain(IDENTITY_WORDS.iter().map(|w| w.to_string()))
        .collect();
    conversations
        .iter()
        .flat_map(|c| c.iter())
        .filter_map(|m| m["content"].as_str())
        .any(|text| {
            let text = text.to_lowercase();
            names.iter().any(|n| names_as_a_word(&text, n))
        })
}

/// Whether `name` occurs in `text` as a word: no letter or digit just before it, and none
/// of its own kind just after it. A version may follow (`llama3`, `qwen2.5`, `gpt-4o`), but
/// `phi` is not in "philosophy" nor "phiên", nor `orca-3` in "orca-30". Chinese, Japanese and
/// Korean put no space between words: their characters do not join a name ("我是Qwen",
/// "저는 Qwen입니다" name Qwen).
fn names_as_a_word(text: &str, name: &str) -> bool {
    let ends_in_digit = name.chars().next_back().is_some_and(|c| c.is_ascii_digit());
    let continues = |c: Option<char>| {
        c.is_some_and(|c| {
            spaced_word_char(c)
                && if ends_in_digit {
                    c.is_numeric()
                } else {
                    c.is_alphabetic()
                }
        })
    };
    text.match_indices(name).any(|(at, _)| {
        !text[..at].chars().next_back().is_some_and(spaced_word_char)
            && !continues(text[at + name.len()..].chars().next())
    })
}

/// A letter or digit of a script that writes spaces between words: not a Han character,
/// kana or Hangul.
fn spaced_word_char(c: char) -> bool {
    c.is_alphanumeric()
        && !matches!(
            c as u32,
            0x1100..=0x11FF // Hangul Jamo
                | 0x3040..=0x30FF // Hiragana, Katakana
                | 0x3130..=0x318F // Hangul compatibility Jamo
                | 0x3400..=0x4DBF // CJK extension A
                | 0x4E00..=0x9FFF // CJK unified ideographs
                | 0xAC00..=0xD7AF // Hangul syllables
                | 0xF900..=0xFAFF // CJK compatibility ideographs
                | 0xFF66..=0xFF9F // half-width Katakana
                | 0x20000..=0x3FFFF // CJK extensions B and later
        )
}

impl Arena {
    /// The arena on `--arena-db` (`sqlite:PATH` or `postgres://…`); its tables are created
    /// now.
    pub async fn connect(url: &str, config: ArenaConfig) -> Result<Self, String> {
        Self::connect_waiting(url, config, std::time::Duration::ZERO).await
    }

    /// [`Self::connect`], waiting up to `wait` for a database that is not reachable yet
    /// (refused, timed out, still starting up), retrying with a growing pause: a replica
    /// started while its database restarts serves once the database is back, where exiting
    /// would leave SkyServe a replica that failed before it was ever ready (unrecoverable:
    /// it stops scaling that version). A host that does not resolve is waited for too (a new
    /// database's DNS name may lag); other errors (a malformed URL, a refused password) end
    /// it at once.
    pub async fn connect_waiting(
        url: &str,
        config: ArenaConfig,
        wait: std::time::Duration,
    ) -> Result<Self, String> {
        let start = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(500);
        loop {
            match Store::connect(url, config.db_max_connections).await {
                Ok(store) => {
                    return Ok(Self {
                        store,
                        config,
                        board: Default::default(),
                        unmarked: Default::default(),
                        in_flight: Default::default(),
                    })
                }
                Err(e) if store::unreachable(&e) && start.elapsed() + pause < wait => {
                    tracing::warn!(
                        "arena store {}: {e}; trying again in {:.1} s (--arena-db-wait {} s)",
                        store::redact_url(url),
                        pause.as_secs_f64(),
                        wait.as_secs()
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(15));
                }
                Err(e) => return Err(format!("arena store {}: {e}", store::redact_url(url))),
            }
        }
    }

    /// An arena kept in this process's memory: its votes end with it.
    pub fn in_memory(config: ArenaConfig) -> Self {
        Self {
            store: Store::in_memory(),
            config,
            board: Default::default(),
            unmarked: Default::default(),
            in_flight: Default::default(),
        }
    }

    pub fn config(&self) -> &ArenaConfig {
        &self.config
    }

    /// Every model named by a weight must be served.
    pub fn check_weights(&self, served: &[String]) -> Result<(), String> {
        match self.config.weights.keys().find(|m| !served.contains(m)) {
            Some(m) => Err(format!(
                "--arena-weight names {m:?}, which is not served (served: {})",
                served.join(", ")
            )),
            None => Ok(()),
        }
    }

    /// Two distinct served models for a new battle, drawn by the configured weights.
    pub fn draw_pair(&self, served: &[String]) -> Result<(String, String), ApiError> {
        pairs::draw_pair(served, &self.config.weights, &mut rand::rng()).ok_or_else(|| {
            ApiError::bad_request(
                "The arena needs at least two served models with a weight above 0 (`--model` twice).",
            )
        })
    }

    /// Counts one request of `visitor` from `address`, or refuses it (429) when either has
    /// made its limit of them in the last minute. The count is the store's, so it holds
    /// across the servers sharing it.
    pub async fn admit(
        &self,
        request: Request,
        visitor: &Visitor,
        address: &str,
    ) -> Result<(), ApiError> {
        let (limits, kind) = match request {
            Request::Turn => (self.config.turn_limits, "turn"),
            Request::Vote => (self.config.vote_limits, "vote"),
        };
        if limits.per_visitor == 0 && limits.per_address == 0 {
            return Ok(());
        }
        let limit = |n: u32| if n == 0 { i64::MAX } else { n as i64 };
        let now = now();
        let admitted = self
            .store
            .admit(
                kind,
                &visitor.key,
                address,
                now,
                now - RATE_WINDOW_SECS,
                limit(limits.per_visitor),
                limit(limits.per_address),
            )
            .await
            .map_err(store_error)?;
        if admitted {
            return Ok(());
        }
        let what = match request {
            Request::Turn => "battle turns",
            Request::Vote => "votes",
        };
        Err(ApiError {
            code: Some("rate_limit_exceeded"),
            retry_after: Some(RATE_WINDOW_SECS as u64),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "Too many arena {what} from this visitor or address in the last minute \
                     (limits {} and {}); retry later.",
                    limits.per_visitor, limits.per_address
                ),
            )
        })
    }

    /// Holds one of `address`'s turns in flight on this server while the slot lives, or
    /// refuses the turn (429) when the address has its
    /// [`ArenaConfig::turns_in_flight_per_address`] being answered already.
    pub fn hold_turn(&self, address: &str) -> Result<Option<TurnSlot>, ApiError> {
        let cap = self.config.turns_in_flight_per_address;
        if cap == 0 {
            return Ok(None);
        }
        let mut counts = self.in_flight.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(address.to_string()).or_default();
        if *n >= cap {
            return Err(ApiError {
                code: Some("rate_limit_exceeded"),
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    format!(
                        "Too many arena turns being answered for this address at once \
                         (limit {cap}); retry once one has ended."
                    ),
                )
            });
        }
        *n += 1;
        Ok(Some(TurnSlot {
            in_flight: self.in_flight.clone(),
            address: address.to_string(),
        }))
    }

    /// Opens a battle of `visitor` between `model_a` and `model_b`, with no turn yet.
    pub async fn start(
        &self,
        visitor: &Visitor,
        model_a: String,
        model_b: String,
    ) -> Result<OpenBattle, ApiError> {
        let id = format!("battle-{:032x}", rand::rng().random::<u128>());
        let now = now();
        self.store
            .insert_battle(
                &id,
                &visitor.key,
                &model_a,
                &model_b,
                now,
                now + self.config.battle_ttl.as_secs_f64(),
            )
            .await
            .map_err(store_error)?;
        Ok(OpenBattle {
            id,
            model_a,
            model_b,
            conversation_a: vec![],
            conversation_b: vec![],
            turns: 0,
            admitted_at: now,
            stored: ("[]".into(), "[]".into()),
        })
    }

    /// Battle `id` for a follow-up turn by `visitor`: 404 unknown, 403 another visitor's,
    /// 409 voted on or without an answered turn, 410 expired.
    pub async fn resume(&self, id: &str, visitor: &Visitor) -> Result<OpenBattle, ApiError> {
        let Some(b) = self.store.battle(id).await.map_err(store_error)? else {
            return Err(self.missing(id).await);
        };
        let now = now();
        check(id, &b, visitor, now)?;
        if b.turns == 0 {
            return Err(unanswered(id));
        }
        // Refused before it is counted: a page asking again right after Stop (the mark holds
        // until the stopped turn's server notices) must not spend the visitor's turns.
        self.not_answering(id).await?;
        Ok(OpenBattle {
            id: id.to_string(),
            conversation_a: parse_conversation(&b.conversation_a),
            conversation_b: parse_conversation(&b.conversation_b),
            model_a: b.model_a,
            model_b: b.model_b,
            turns: b.turns,
            admitted_at: now,
            stored: (b.conversation_a, b.conversation_b),
        })
    }

    /// Battle `id` for its last turn to be answered again (Regenerate), refused as
    /// [`Self::resume`] refuses a follow-up. The answers it will replace were shown: if they
    /// (or the conversations before them) name a model, the battle is marked named now, as
    /// once replaced they are no longer in the row its vote reads. `served`: the names that
    /// count, as for the vote; `seen` as in [`OpenBattle::check_seen`].
    pub async fn resume_to_regenerate(
        &self,
        id: &str,
        visitor: &Visitor,
        served: &[String],
        seen: Option<&str>,
    ) -> Result<OpenBattle, ApiError> {
        let battle = self.resume(id, visitor).await?;
        battle.check_seen(seen)?;
        let mut names = served.to_vec();
        names.extend([battle.model_a.clone(), battle.model_b.clone()]);
        if conversations_name_a_model([&battle.conversation_a, &battle.conversation_b], &names) {
            self.mark_named(id).await?;
        }
        Ok(battle)
    }

    /// Marks battle `id` named (its vote will not be rated); where the store cannot take the
    /// mark now, keeps it for the vote to write ([`Self::write_kept_mark`]).
    async fn mark_named(&self, id: &str) -> Result<(), ApiError> {
        if let Err(e) = self.store.mark_named(id).await {
            self.unmarked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.to_string());
            return Err(store_error(e));
        }
        Ok(())
    }

    /// The mark a failed [`Self::mark_named`] kept for battle `id`, written before its vote.
    async fn write_kept_mark(&self, id: &str) -> Result<(), ApiError> {
        let kept = self
            .unmarked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id);
        if kept {
            self.store.mark_named(id).await.map_err(store_error)?;
            self.unmarked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
        }
        Ok(())
    }

    /// 409 `battle_answering` while a turn of battle `id` is being answered. Checked before
    /// a request is counted against the rate limits; the claim (`begin_answer`) or the vote's
    /// insert decides for good.
    pub async fn not_answering(&self, id: &str) -> Result<(), ApiError> {
        if self.store.answering(id, now()).await.map_err(store_error)? {
            Err(answering(id))
        } else {
            Ok(())
        }
    }

    /// That battle `id` exists (or was voted on) and is `visitor`'s: what a vote is checked
    /// for before it is counted against the rate limits, so requests naming battles that are
    /// not theirs (made-up ids and tokens) cannot spend the limits of the address they share
    /// with real visitors. Its other states are the vote's to answer.
    pub async fn check_owner(&self, id: &str, visitor: &Visitor) -> Result<(), ApiError> {
        match self.store.battle(id).await.map_err(store_error)? {
            None => Err(self.missing(id).await),
            Some(b) if b.visitor != visitor.key => Err(not_yours(id)),
            Some(_) => Ok(()),
        }
    }

    /// 409 if battle `id` (no longer in the battles table) was voted on, else 404.
    async fn missing(&self, id: &str) -> ApiError {
        match self.store.voted(id).await {
            Ok(true) => voted(id),
            Ok(false) => not_found(id),
            Err(e) => store_error(e),
        }
    }

    /// Marks a follow-up turn of `battle` as being answered for `answer_lease`, renewed by
    /// [`Self::renew_answer`] while it runs: until [`Self::end_answer`], votes on it get 409
    /// `battle_answering`, so none lands on the turn before while the visitor reads the new
    /// one.
    /// One follow-up at a time: another while one is answered is 409 `battle_answering` (two
    /// at once would each end the other's mark, and one stored after the other was shown).
    pub async fn begin_answer(&self, battle: &OpenBattle) -> Result<(), ApiError> {
        let now = now();
        let until = now + self.config.answer_lease.as_secs_f64();
        let claimed = self
            .store
            .claim_answer(&battle.id, until, now)
            .await
            .map_err(store_error)?;
        if claimed {
            Ok(())
        } else {
            Err(answering(&battle.id))
        }
    }

    /// Battle `id`'s turn is still being answered: its mark lasts another lease.
    pub async fn renew_answer(&self, id: &str) {
        let until = now() + self.config.answer_lease.as_secs_f64();
        if let Err(e) = self.store.begin_answer(id, until).await {
            tracing::error!("arena store: {e}");
        }
    }

    /// Battle `id`'s turn is over (stored, failed or left by its visitor).
    /// Whether the mark is gone (the store answered).
    pub async fn end_answer(&self, id: &str) -> bool {
        match self.store.end_answer(id).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("arena store: {e}");
                false
            }
        }
    }

    /// A turn of `battle` that was shown in part (`shown`: what each side sent) and is not
    /// stored (stopped or failed): if its messages (`prompt`) or what it showed name a model,
    /// the battle's vote will not be anonymous. Without this a visitor could read the names
    /// in a turn, stop it, and cast a rated vote on the turns before.
    pub async fn turn_not_kept(
        &self,
        battle: &OpenBattle,
        prompt: &[Value],
        shown: [&str; 2],
        served: &[String],
    ) -> Result<(), ApiError> {
        let side = |text: &str| {
            let mut c = prompt.to_vec();
            c.push(json!({"role": "assistant", "content": text}));
            c
        };
        let mut names = served.to_vec();
        names.extend([battle.model_a.clone(), battle.model_b.clone()]);
        if conversations_name_a_model([&side(shown[0]), &side(shown[1])], &names) {
            self.mark_named(&battle.id).await?;
        }
        Ok(())
    }

    /// A turn of `battle` failed on a side (or both): a failure can tell the sides apart
    /// (a follow-up one model's context cannot hold fails on that side only, whatever the
    /// error says), so a visitor could probe the pair with turns that fail and then vote on
    /// the turns before. The battle's vote will not be rated.
    pub async fn turn_failed(&self, battle: &OpenBattle) -> Result<(), ApiError> {
        self.mark_named(&battle.id).await
    }

    /// Stores `battle`'s conversations after the turn just answered (each ending with its
    /// model's answer) and extends its life; 409 if another turn or a vote came first.
    /// `regenerated`: the answers replace the last turn's (the conversations the battle was
    /// read with, and only if they are still stored). Answers the battle's new [`revision`].
    pub async fn record_turn(
        &self,
        battle: &OpenBattle,
        visitor: &Visitor,
        conversation_a: &[Value],
        conversation_b: &[Value],
        regenerated: bool,
    ) -> Result<String, ApiError> {
        // Alive when the turn was let in is alive enough: the answers it waited for are kept.
        let admitted = battle.admitted_at;
        let (a, b) = (
            Value::from(conversation_a).to_string(),
            Value::from(conversation_b).to_string(),
        );
        let expires_at = now() + self.config.battle_ttl.as_secs_f64();
        let turn = (battle.turns, admitted, expires_at);
        let recorded = if regenerated {
            self.store
                .replace_turn(&battle.id, &visitor.key, turn, (&a, &b), &battle.stored)
                .await
        } else {
            self.store
                .record_turn(&battle.id, &visitor.key, turn, (&a, &b), &battle.stored)
                .await
        }
        .map_err(store_error)?;
        if recorded {
            return Ok(revision(&a, &b));
        }
        Err(match self.store.battle(&battle.id).await {
            Ok(Some(b)) => check(&battle.id, &b, visitor, admitted)
                .err()
                .unwrap_or_else(|| busy(&battle.id)),
            Ok(None) => self.missing(&battle.id).await,
            Err(e) => store_error(e),
        })
    }

    /// Casts the one vote of battle `id`, committed to the store before this returns; the
    /// same vote from its visitor again gets the same answer (a retry after a lost reply).
    /// `served` are the model names an answer must not contain for the vote to count as
    /// anonymous. `seen`: the [`revision`] the voter's page shows, if it says (409
    /// `battle_changed` if the battle holds another). 404/403/409/410 as `resume`; 409
    /// before its first answer.
    pub async fn vote(
        &self,
        id: &str,
        visitor: &Visitor,
        winner: Outcome,
        served: &[String],
        seen: Option<&str>,
    ) -> Result<CastVote, ApiError> {
        let winner_str = serde_json::to_value(winner)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        self.write_kept_mark(id).await?;
        // A follow-up may land between the read and the insert: then read again.
        for _ in 0..3 {
            let Some(b) = self.store.battle(id).await.map_err(store_error)? else {
                return Err(self.missing(id).await);
            };
            let now = now();
            if b.voted && b.visitor == visitor.key {
                // Its visitor voting again (the reply to the first was lost, or the page
                // reloaded): the same vote is answered as the first was; another is refused
                // with the vote that counts. Either way the names it was owed come back.
                if let Some(v) = self.store.vote(id).await.map_err(store_error)? {
                    if v.winner == winner_str {
                        return Ok(CastVote {
                            battle_id: id.to_string(),
                            model_a: v.model_a,
                            model_b: v.model_b,
                            winner,
                            anony: v.anony,
                        });
                    }
                    let first = json!({"battle_id": id, "model_a": v.model_a, "model_b": v.model_b,
                                       "winner": v.winner, "anony": v.anony});
                    return Err(ApiError {
                        extra: Some(Box::new(("vote", first))),
                        ..voted(id)
                    });
                }
            }
            check(id, &b, visitor, now)?;
            if b.turns == 0 {
                return Err(unanswered(id));
            }
            if self.store.answering(id, now).await.map_err(store_error)? {
                return Err(answering(id));
            }
            if seen.is_some_and(|r| r != revision(&b.conversation_a, &b.conversation_b)) {
                return Err(changed(id));
            }
            let (a, c) = (
                parse_conversation(&b.conversation_a),
                parse_conversation(&b.conversation_b),
            );
            // The battle's own models too: one this server no longer serves (a rolling
            // update) still names itself.
            let mut names = served.to_vec();
            names.extend([b.model_a.clone(), b.model_b.clone()]);
            let anony = !conversations_name_a_model([&a, &c], &names);
            let judge = format!("arena_user_{}", &visitor.key[..16]);
            // Cast on these conversations only: a regenerated turn stored since the read
            // (same turn count) would be voted on with this text's anonymity.
            let read = (b.conversation_a.as_str(), b.conversation_b.as_str());
            let cast = self
                .store
                .insert_vote(
                    id,
                    &visitor.key,
                    (b.turns, read),
                    &winner_str,
                    anony,
                    &judge,
                    now,
                )
                .await
                .map_err(store_error)?;
            if cast {
                self.board.changed.notify_one();
                // A turn the battle did not keep may have named a model (`mark_named`): the
                // store decided, in the insert.
                let anony = match self.store.vote(id).await {
                    Ok(Some(v)) => v.anony,
                    _ => anony,
                };
                return Ok(CastVote {
                    battle_id: id.to_string(),
                    model_a: b.model_a,
                    model_b: b.model_b,
                    winner,
                    anony,
                });
            }
        }
        Err(busy(id))
    }

    /// The leaderboard as last fitted: `{"battles", "votes", "computed_at", "leaderboard",
    /// "style_control": {"battles", "leaderboard", "coefficients"}}`.
    pub fn leaderboard(&self) -> Arc<Value> {
        self.board.current()
    }

    /// Refits the leaderboard now if the votes changed since the last fit.
    pub async fn refresh_leaderboard(&self) -> Result<(), String> {
        self.board.refresh(&self.store).await
    }

    /// Deletes rate-limit entries older than the window and battles expired for longer than
    /// their time to live (until then a late request gets 410, afterwards 404).
    pub async fn sweep(&self) -> Result<u64, String> {
        let now = now();
        self.store
            .sweep(
                now - RATE_WINDOW_SECS,
                now - self.config.battle_ttl.as_secs_f64(),
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// The arena's background work, for as long as the server runs: refits the leaderboard
    /// after a vote here (at most every two seconds) or one seen in the store (polled
    /// every five), and sweeps expired battles every minute.
    pub async fn upkeep(&self) {
        let mut last_sweep: Option<tokio::time::Instant> = None;
        loop {
            let fitted = tokio::time::Instant::now();
            if let Err(e) = self.refresh_leaderboard().await {
                tracing::warn!("arena leaderboard: {e}");
            }
            if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_INTERVAL) {
                match self.sweep().await {
                    Ok(n) if n > 0 => tracing::info!("arena: {n} expired battles removed"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("arena sweep: {e}"),
                }
                last_sweep = Some(tokio::time::Instant::now());
            }
            tokio::select! {
                _ = self.board.changed.notified() => {}
                _ = tokio::time::sleep(board::POLL_INTERVAL) => {}
            }
            tokio::time::sleep_until(fitted + board::MIN_INTERVAL).await;
        }
    }

    /// Every vote as a FastChat battle (`clean_battle_data`'s fields), oldest first.
    pub async fn export(&self) -> Result<Vec<Value>, String> {
        let votes = self.store.votes().await.map_err(|e| e.to_string())?;
        Ok(votes
            .into_iter()
            .map(|v| {
                let conversation_a = parse_conversation(&v.conversation_a);
                let conversation_b = parse_conversation(&v.conversation_b);
                json!({
                    "question_id": v.battle_id,
                    "model_a": v.model_a,
                    "model_b": v.model_b,
                    "winner": v.winner,
                    "judge": v.judge,
                    "conversation_a": conversation_a,
                    "conversation_b": conversation_b,
                    "turn": v.turn,
                    "anony": v.anony,
                    "tstamp": v.tstamp,
                })
            })
            .collect())
    }

    /// Adds FastChat battles (`model_a`, `model_b`, `winner`; `question_id`, `anony`,
    /// `tstamp`, `judge`, `conversation_a/b`, `turn` when present) as votes. A record's
    /// string `question_id` is its battle id (a numbered question, or none, gets a hash of
    /// the record's text), so importing a file twice adds nothing the second time. Returns
    /// how many were added.
    pub async fn import(&self, records: &[Value]) -> Result<u64, String> {
        let votes = records
            .iter()
            .enumerate()
            .map(|(i, r)| vote_from_fastchat(r).map_err(|e| format!("battle {}: {e}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        self.store
            .import_votes(&votes)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A FastChat battle record as a vote row.
fn vote_from_fastchat(r: &Value) -> Result<VoteRow, String> {
    let text = |k: &str| -> Result<String, String> {
        r[k].as_str()
            .map(String::from)
            .ok_or_else(|| format!("`{k}` must be a string"))
    };
    if r.get("g1_winner").is_some() {
        return Err(
            "this is an `mtbench judge` pairwise judgment, not a visitor's vote: the \
                    arena's store keeps votes only; rate judgments with `camelid arena ratings \
                    --battles FILE`"
                .into(),
        );
    }
    let winner: Outcome = serde_json::from_value(r["winner"].clone()).map_err(|_| {
        "`winner` must be \"model_a\", \"model_b\", \"tie\" or \"tie (bothbad)\"".to_string()
    })?;
    // Chatbot Arena's logs (and camelid's export) give each battle its own string id; MT-bench's
    // human judgments number the question (81–160), shared by many battles: those, and
    // records without one, are told apart by a hash of the whole record.
    let battle_id = match &r["question_id"] {
        Value::String(s) => s.clone(),
        _ => format!(
            "import-{}",
            &hex(&Sha256::digest(r.to_string().as_bytes()))[..32]
        ),
    };
    let conversation = |k: &str| match &r[k] {
        Value::Null => Value::Array(vec![]),
        v => v.clone(),
    };
    let conversation_a = conversation("conversation_a");
    let turn = r["turn"]
        .as_i64()
        .unwrap_or(conversation_a.as_array().map_or(0, |c| c.len() as i64 / 2));
    Ok(VoteRow {
        battle_id,
        model_a: text("model_a")?,
        model_b: text("model_b")?,
        winner: serde_json::to_value(winner)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        anony: r["anony"].as_bool().unwrap_or(true),
        tstamp: r["tstamp"].as_f64().unwrap_or_else(now),
        judge: r["judge"].as_str().unwrap_or("imported").to_string(),
        conversation_a: conversation_a.to_string(),
        conversation_b: conversation("conversation_b").to_string(),
        turn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that cannot be reached (down, restarting, its pool timed out) is a 503 to
    /// retry; any other failure of it a 500.
    #[test]
    fn an_unreachable_store_is_a_503_to_retry() {
        let e = store_error(sqlx::Error::PoolTimedOut);
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, Some("arena_store_unavailable"));
        assert!(e.retry_after.is_some());
        let e = store_error(sqlx::Error::RowNotFound);
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn a_model_named_in_a_conversation_is_found_whatever_its_case() {
        let conv = |question: &str, answer: &str| {
            vec![
                json!({"role": "user", "content": question}),
                json!({"role": "assistant", "content": answer}),
            ]
        };
        let served = ["smol-a".to_string(), "Orca-3".to_string()];
        let plain = conv("Who are you?", "I am a helpful assistant.");
        assert!(!conversations_name_a_model([&plain, &plain], &served));
        assert!(conversations_name_a_model(
            [&plain, &conv("Hi", "I am ORCA-3.")],
            &served
        ));
        assert!(conversations_name_a_model(
            [&conv("Hi", "SMOL-A here"), &plain],
            &served
        ));
        // The visitor's question counts too: "are you smol-a?" answered "yes" tells it.
        assert!(conversations_name_a_model(
            [&conv("Are you smol-a?", "Yes."), &plain],
            &served
        ));
        // A maker or family that is not a served name.
        assert!(conversations_name_a_model(
            [&conv("Hi", "I was made by Alibaba Cloud."), &plain],
            &served
        ));
        assert!(conversations_name_a_model(
            [&plain, &conv("Hi", "I'm SmolLM, from Hugging Face.")],
            &served
        ));
        assert!(conversations_name_a_model(
            [&plain, &conv("Who made you?", "I was developed by Meta.")],
            &served
        ));
        // Whole words only, and no names too short to tell anything.
        assert!(!conversations_name_a_model(
            [&conv("Hi", "smol-ab and xsmol-a"), &conv("Hi", "Orca-30s")],
            &served
        ));
        assert!(conversations_name_a_model(
            [&conv("Hi", "(smol-a)"), &plain],
            &served
        ));
        let phi = ["phi".to_string(), "a".to_string(), "b2".to_string()];
        assert!(!conversations_name_a_model(
            [&conv("Hi", "On philosophy, a b2 answer."), &plain],
            &phi
        ));
        assert!(conversations_name_a_model(
            [&conv("Hi", "I am Phi."), &plain],
            &phi
        ));
        // A version after a name still names it (FastChat matches substrings).
        for answer in [
            "I am Llama3.",
            "Qwen2.5 here",
            "I'm phi3-mini",
            "Like GPT-4o.",
        ] {
            assert!(
                conversations_name_a_model([&conv("Hi", answer), &plain], &phi),
                "{answer}"
            );
        }
        // Chinese, Japanese and Korean write no space beside a name; and the makers' own
        // names in Chinese.
        for answer in [
            "我是Qwen，一个大语言模型。",
            "私はLlamaです。",
            "저는 Qwen입니다.",
            "我是DeepSeek。",
            "我是通义千问。",
            "我由阿里云开发。",
            "由深度求索公司开发。",
            "我是智谱训练的语言模型。",
        ] {
            assert!(
                conversations_name_a_model([&plain, &conv("你是谁？", answer)], &served),
                "{answer}"
            );
        }
        assert!(!conversations_name_a_model(
            [&plain, &conv("你是谁？", "我是一个乐于助人的助手。")],
            &served
        ));
        // Accented Latin letters still join a word: Vietnamese "phiên bản" is not Phi.
        assert!(!conversations_name_a_model(
            [&plain, &conv("Có gì mới?", "Phiên bản mới, phiếu bầu.")],
            &served
        ));
    }

    /// `--arena-db-max-connections` sizes the store's pool (replicas × it must fit the
    /// database's connection limit).
    #[tokio::test]
    async fn the_store_pool_is_as_large_as_configured() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("arena.db").display());
        for n in [3, 8] {
            let config = ArenaConfig {
                db_max_connections: n,
                ..Default::default()
            };
            let arena = Arena::connect(&url, config).await.unwrap();
            assert_eq!(arena.store.max_connections(), n);
        }
    }

    /// A vote reads its battle's own models as names, not only those this server serves:
    /// after a rolling update took `zeta-7` off this server, an answer that says "zeta-7"
    /// still leaves the vote unrated.
    #[tokio::test]
    async fn a_vote_counts_the_battles_own_models_as_names() {
        let arena = Arena::in_memory(ArenaConfig::default());
        let mut anony = vec![];
        for answer in ["I am zeta-7.", "I am an assistant."] {
            let visitor = Visitor::new();
            let battle =
                answered_battle(&arena, &visitor, ["zeta-7", "smol"], [answer, "Hi."]).await;
            let served = ["smol".to_string()];
            let cast = arena
                .vote(&battle.id, &visitor, Outcome::Tie, &served, None)
                .await
                .unwrap();
            anony.push(cast.anony);
        }
        assert_eq!(anony, [false, true]);
    }

    /// A battle of `models` whose first turn ("Who are you?") `answers` answered, stored.
    async fn answered_battle(
        arena: &Arena,
        visitor: &Visitor,
        models: [&str; 2],
        answers: [&str; 2],
    ) -> OpenBattle {
        let battle = arena
            .start(visitor, models[0].into(), models[1].into())
            .await
            .unwrap();
        let answered = |a: &str| {
            vec![
                json!({"role": "user", "content": "Who are you?"}),
                json!({"role": "assistant", "content": a}),
            ]
        };
        arena
            .record_turn(
                &battle,
                visitor,
                &answered(answers[0]),
                &answered(answers[1]),
                false,
            )
            .await
            .unwrap();
        battle
    }

    /// A turn shown and not stored: its answer naming a model (here only the answer does)
    /// leaves the battle's vote unrated; one that names nothing does not. A second follow-up
    /// while one is answered is refused.
    #[tokio::test]
    async fn an_unstored_turn_that_showed_a_name_marks_the_vote() {
        let arena = Arena::in_memory(ArenaConfig::default());
        let served = ["smol-a".to_string(), "smol-b".to_string()];
        let prompt = vec![json!({"role": "user", "content": "Who are you?"})];
        let mut anony = vec![];
        for shown in [
            ["I am Qwen2.5, by Alibaba.", ""],
            ["I am an assistant.", "Hi."],
        ] {
            let visitor = Visitor::new();
            let battle =
                answered_battle(&arena, &visitor, ["smol-a", "smol-b"], ["Hello.", "Hi."]).await;
            let battle = arena.resume(&battle.id, &visitor).await.unwrap();
            arena.begin_answer(&battle).await.unwrap();
            let again = arena.begin_answer(&battle).await.unwrap_err();
            assert_eq!(again.code, Some("battle_answering"));
            arena
                .turn_not_kept(&battle, &prompt, shown, &served)
                .await
                .unwrap();
            assert!(arena.end_answer(&battle.id).await);
            let cast = arena
                .vote(&battle.id, &visitor, Outcome::Tie, &served, None)
                .await
                .unwrap();
            anony.push(cast.anony);
        }
        assert_eq!(anony, [false, true]);
    }

    /// A turn that showed a name while the store could not take the mark (here its table
    /// renamed away, as an outage fails the write): the turn's request fails, and the vote
    /// cast once the store is back writes the kept mark first and is not rated. It was.
    #[tokio::test]
    async fn a_name_mark_the_store_missed_is_written_before_the_vote() {
        let arena = Arena::in_memory(ArenaConfig::default());
        let served = ["smol-a".to_string(), "smol-b".to_string()];
        let prompt = vec![json!({"role": "user", "content": "Who are you?"})];
        let visitor = Visitor::new();
        let battle =
            answered_battle(&arena, &visitor, ["smol-a", "smol-b"], ["Hello.", "Hi."]).await;
        let battle = arena.resume(&battle.id, &visitor).await.unwrap();
        arena.begin_answer(&battle).await.unwrap();
        let sql = |q: &'static str| {
            let pool = arena.store.pool().clone();
            async move { sqlx::query(q).execute(&pool).await.unwrap() }
        };
        sql("ALTER TABLE arena_named RENAME TO arena_named_away").await;
        let shown = ["I am Qwen2.5, by Alibaba.", "Hi."];
        let e = arena
            .turn_not_kept(&battle, &prompt, shown, &served)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR, "{e:?}");
        sql("ALTER TABLE arena_named_away RENAME TO arena_named").await;
        assert!(arena.end_answer(&battle.id).await);
        let cast = arena
            .vote(&battle.id, &visitor, Outcome::Tie, &served, None)
            .await
            .unwrap();
        assert!(!cast.anony, "a vote after names were shown was rated");
        assert!(arena.unmarked.lock().unwrap().is_empty());
    }

    /// The same outage seen from another server sharing the store: the mark the first server
    /// kept in its memory is not there, but the turn's "being answered" mark, left to run
    /// out (the turn's end unsettled), leaves the vote unrated on any server: at once, after
    /// a sweep of expired marks, or after a later follow-up claimed the battle again. It was
    /// rated once the lease ran out.
    #[tokio::test]
    async fn a_turn_whose_end_no_server_settled_leaves_the_vote_unrated_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("arena.db").display());
        let config = ArenaConfig {
            answer_lease: Duration::from_millis(200),
            ..ArenaConfig::default()
        };
        let a = Arena::connect(&url, config.clone()).await.unwrap();
        let b = Arena::connect(&url, config).await.unwrap();
        let served = ["smol-a".to_string(), "smol-b".to_string()];
        let prompt = vec![json!({"role": "user", "content": "Who are you?"})];
        let sql = |q: &'static str| {
            let pool = a.store.pool().clone();
            async move { sqlx::query(q).execute(&pool).await.unwrap() }
        };
        let mut anony = vec![];
        for then in ["vote", "sweep", "follow-up"] {
            let visitor = Visitor::new();
            let battle =
                answered_battle(&a, &visitor, ["smol-a", "smol-b"], ["Hello.", "Hi."]).await;
            let battle = a.resume(&battle.id, &visitor).await.unwrap();
            a.begin_answer(&battle).await.unwrap();
            sql("ALTER TABLE arena_named RENAME TO arena_named_away").await;
            let shown = ["I am Qwen2.5, by Alibaba.", "Hi."];
            a.turn_not_kept(&battle, &prompt, shown, &served)
                .await
                .unwrap_err();
            sql("ALTER TABLE arena_named_away RENAME TO arena_named").await;
            // Not ended (the route leaves the mark to run out): past its lease, on `b`.
            tokio::time::sleep(Duration::from_millis(300)).await;
            match then {
                "sweep" => {
                    b.store.sweep(now(), 0.0).await.unwrap();
                    assert!(!b.store.answering(&battle.id, 0.0).await.unwrap());
                }
                "follow-up" => {
                    let again = b.resume(&battle.id, &visitor).await.unwrap();
                    b.begin_answer(&again).await.unwrap();
                    assert!(b.end_answer(&battle.id).await);
                }
                _ => {}
            }
            let cast = b
                .vote(&battle.id, &visitor, Outcome::Tie, &served, None)
                .await
                .unwrap();
            anony.push(cast.anony);
        }
        assert_eq!(anony, [false; 3], "a vote after names were shown was rated");
        // A turn ended as it should leaves the vote rated.
        let visitor = Visitor::new();
        let battle = answered_battle(&b, &visitor, ["smol-a", "smol-b"], ["Hello.", "Hi."]).await;
        let battle = b.resume(&battle.id, &visitor).await.unwrap();
        b.begin_answer(&battle).await.unwrap();
        assert!(b.end_answer(&battle.id).await);
        let cast = b
            .vote(&battle.id, &visitor, Outcome::Tie, &served, None)
            .await
            .unwrap();
        assert!(cast.anony);
    }

    /// The store's URL carries the database password: a failed connection names the store
    /// without it. Port 1 on the loopback: nothing listens there.
    #[tokio::test]
    async fn a_store_that_cannot_be_reached_is_named_without_its_password() {
        let url = "postgres://camelid:s3cret-pw@127.0.0.1:1/arena";
        let Err(e) = Arena::connect(url, ArenaConfig::default()).await else {
            panic!("connected to {url}");
        };
        assert!(!e.contains("s3cret-pw"), "{e}");
        assert!(
            e.starts_with("arena store postgres://camelid:***@127.0.0.1:1/arena: "),
            "{e}"
        );
    }

    #[test]
    fn tokens_are_64_hex_digits_and_keys_their_hash() {
        let v = Visitor::new();
        assert_eq!(v.token().len(), 64);
        let again = Visitor::from_token(v.token()).unwrap();
        assert_eq!(again.key, v.key);
        assert_ne!(v.key, v.token());
        assert!(Visitor::from_token(&v.token()[1..]).is_none());
        assert!(Visitor::from_token(&v.token().to_uppercase()).is_none());
        assert!(Visitor::from_token("").is_none());
    }
}
