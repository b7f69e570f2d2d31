//! One turn of an arena battle: both sides submitted in the battle's own prefix-cache
//! partition, run to the end together, whole or as one event stream, with nothing that tells
//! the sides' models apart beyond the answers themselves — no usage, no cached-token counts,
//! and one neutral message whichever side failed and however. A reasoning model's thinking
//! is left out, with or without `--reasoning-parser`: the answers are compared, not the
//! thoughts (and a thinking format would name the model family).

use crate::chat::{self, Submitted};
use crate::error::ApiError;
use crate::format::finish_str;
use crate::openai::{ChatRequest, SamplingFields};
use crate::run::{shutting_down, Submission};
use crate::state::{AppState, Permit};
use crate::validate::{battle_cache_salt, no_tools};
use axum::http::StatusCode;
use camelid_engine::Event;
use camelid_model::decode::FinishReason;
use camelid_model::text::reasoning::ReasoningSplitter;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The two sides of a battle, in the page's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }
}

/// One side's finished answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub content: String,
    pub finish: FinishReason,
}

impl Answer {
    /// The answer as a battle response shows it: text and finish reason, nothing else.
    pub fn json(&self) -> Value {
        json!({"content": self.content, "finish_reason": finish_str(self.finish)})
    }
}

/// What a turn sends while it runs: a piece of one side's text, or one side's end.
enum Piece {
    Delta(Side, String),
    Finished(Side, FinishReason),
}

impl Piece {
    fn json(&self) -> Value {
        match self {
            Piece::Delta(side, text) => json!({"side": side.label(), "delta": text}),
            Piece::Finished(side, f) => {
                json!({"side": side.label(), "finish_reason": finish_str(*f)})
            }
        }
    }
}

/// Releases both sides' pieces in step: a side's k-th piece goes out with the other's k-th,
/// so while both are answering neither shows sooner or faster than the other. Sent as each
/// came, the first piece's delay and the pace would tell a small model from a large one (or
/// a busy engine from an idle one) before the vote. Once a side has finished, the other's
/// pieces go as they come: its answer's length is the answer's, not a timing.
#[derive(Default)]
struct Lockstep {
    queued: [std::collections::VecDeque<Piece>; 2],
    /// Whether the side's end has gone out.
    ended: [bool; 2],
}

impl Lockstep {
    /// Queues `side`'s pieces; answers those that may go now, in order.
    fn push(&mut self, side: Side, pieces: Vec<Piece>) -> Vec<Piece> {
        self.queued[side as usize].extend(pieces);
        let mut out = vec![];
        loop {
            let waiting = self.queued.each_ref().map(|q| !q.is_empty());
            let go = match waiting {
                [true, true] => [true, true],
                [true, false] => [self.ended[1], false],
                [false, true] => [false, self.ended[0]],
                [false, false] => [false, false],
            };
            if go == [false, false] {
                return out;
            }
            for i in (0..2).filter(|&i| go[i]) {
                let piece = self.queued[i].pop_front().expect("a queued piece");
                self.ended[i] |= matches!(piece, Piece::Finished(..));
                out.push(piece);
            }
        }
    }
}

/// Cuts a side's streamed text into pieces that depend on the text alone: a piece ends
/// where a word starts after whitespace, or after `MAX_PIECE_CHARS` characters without one.
/// Sent token by token, the pieces would count each side's tokens and show where its
/// tokenizer splits words (and send empty pieces for partial characters): enough to tell
/// model families apart before the vote.
#[derive(Debug, Default)]
struct WordPieces {
    held: String,
    /// Characters in `held`.
    chars: usize,
    /// Whether `held` ends in whitespace.
    after_space: bool,
}

const MAX_PIECE_CHARS: usize = 16;

impl WordPieces {
    /// The pieces `text` completes.
    fn push(&mut self, text: &str) -> Vec<String> {
        let mut out = vec![];
        for c in text.chars() {
            let word_starts = self.after_space && !c.is_whitespace();
            if (word_starts || self.chars == MAX_PIECE_CHARS) && !self.held.is_empty() {
                out.push(std::mem::take(&mut self.held));
                self.chars = 0;
            }
            self.held.push(c);
            self.chars += 1;
            self.after_space = c.is_whitespace();
        }
        out
    }

    /// What is left at the end.
    fn finish(&mut self) -> Option<String> {
        self.chars = 0;
        Some(std::mem::take(&mut self.held)).filter(|h| !h.is_empty())
    }
}

/// Any failure of a side, said the same way for both: which side failed, and why, would
/// tell the models apart (one has the shorter context, another a different template).
/// The cause goes to the log.
pub fn neutral(err: ApiError) -> ApiError {
    tracing::info!("arena turn failed: {}", err.message);
    let (status, kind, message) = if err.status == StatusCode::SERVICE_UNAVAILABLE {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_overloaded",
            "The arena is busy or restarting; try this turn again in a moment.",
        )
    } else if err.status.is_client_error() {
        (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "The models could not answer this turn (it may be too long); start a new round or shorten it.",
        )
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The models could not answer this turn; start a new round.",
        )
    };
    ApiError {
        code: Some("arena_turn_failed"),
        ..ApiError::new(status, kind, message)
    }
}

/// A turn that did not finish: why (`None`: its client left, which cancels both sides), and
/// the text each side had sent by then (nothing unless streamed).
pub struct Unfinished {
    pub error: Option<ApiError>,
    pub shown: [String; 2],
}

/// Both sides of a turn, handed to their engines.
pub struct Turn {
    a: Submission,
    b: Submission,
    /// Each side's thinking split, when its output is split (`chat::Submitted::reasoning`).
    thinking: [Option<ReasoningSplitter>; 2],
}

/// Submits `req_a` and `req_b` (each naming its side's model) in battle `battle_id`'s cache
/// partition, each under its own permit. Errors are already neutral.
pub async fn submit(
    state: &Arc<AppState>,
    battle_id: &str,
    permits: (Permit, Permit),
    (req_a, req_b): (ChatRequest, ChatRequest),
    sampling: &SamplingFields,
) -> Result<Turn, ApiError> {
    for r in [&req_a, &req_b] {
        no_tools(r)?;
    }
    let salt = Some(battle_cache_salt(battle_id));
    let (sampling_a, sampling_b) = (
        above_the_floor(state, &req_a, sampling)?,
        above_the_floor(state, &req_b, sampling)?,
    );
    let (a, b) = tokio::join!(
        chat::submit_salted(state, permits.0, &req_a, &sampling_a, salt.clone()),
        chat::submit_salted(state, permits.1, &req_b, &sampling_b, salt)
    );
    let (a, b) = (a.map_err(neutral)?, b.map_err(neutral)?);
    let thinking = [a.reasoning, b.reasoning].map(|r| r.map(ReasoningSplitter::new));
    let (Submitted { sub: a, .. }, Submitted { sub: b, .. }) = (a, b);
    Ok(Turn { a, b, thinking })
}

/// `top_p` below this leaves the next token nearly always the likeliest one: under a
/// temperature floor a turn may not ask it, and a model's own is raised to it.
pub const MIN_TOP_P: f32 = 0.9;

/// `sampling` for side `req` under `--arena-min-temperature`: what the turn leaves out takes
/// its model's own values (its generation config), but where those are (nearly) greedy they
/// are raised, so that no model's answers can be replayed: a temperature below the floor to
/// the floor, a `top_p` below [`MIN_TOP_P`] to it, a `top_k` of 1 to none. (What the turn
/// names was checked already.)
fn above_the_floor(
    state: &AppState,
    req: &ChatRequest,
    sampling: &SamplingFields,
) -> Result<SamplingFields, ApiError> {
    let floor = state.arena.config().min_temperature;
    let mut s = sampling.clone();
    if floor <= 0.0 {
        return Ok(s);
    }
    let own = state
        .model(Some(&req.model))
        .map_err(neutral)?
        .sampling_defaults;
    if s.temperature.is_none() && own.temperature.is_some_and(|t| t < floor) {
        s.temperature = Some(floor);
    }
    if s.top_p.is_none() && own.top_p.is_some_and(|p| p < MIN_TOP_P) {
        s.top_p = Some(MIN_TOP_P);
    }
    if s.top_k.is_none() && own.top_k == Some(1) {
        s.top_k = Some(0);
    }
    Ok(s)
}

impl Turn {
    /// Runs both sides to their ends; each piece of text (`{"side", "delta"}`) or end
    /// (`{"side", "finish_reason"}`) goes to `pieces` as it comes, when given. A closed
    /// `pieces` (the client left) cancels both sides.
    pub async fn run(
        mut self,
        pieces: Option<&mpsc::Sender<Value>>,
    ) -> Result<(Answer, Answer), Unfinished> {
        let a = std::mem::take(&mut self.a.streams).map(|e| (Side::A, e));
        let b = std::mem::take(&mut self.b.streams).map(|e| (Side::B, e));
        let mut events = stream::select(a, b);
        let mut text = [String::new(), String::new()];
        let mut words = [WordPieces::default(), WordPieces::default()];
        let mut finish = [None, None];
        let mut shown = [String::new(), String::new()];
        let mut lockstep = Lockstep::default();
        loop {
            // The client's leaving is heard while nothing is sent too: a side still
            // thinking, or holding a word back, sends nothing for many steps.
            let next = match pieces {
                Some(tx) => tokio::select! {
                    next = events.next() => next,
                    () = tx.closed() => return Err(Unfinished { error: None, shown }),
                },
                None => events.next().await,
            };
            let Some((side, (_, ev))) = next else { break };
            let i = side as usize;
            let sent: Vec<Piece> = match ev {
                Event::Token { text: t, .. } => {
                    let t = match &mut self.thinking[i] {
                        Some(split) => split.push(&t).content,
                        None => t,
                    };
                    text[i].push_str(&t);
                    let pieces = words[i].push(&t);
                    pieces.into_iter().map(|p| Piece::Delta(side, p)).collect()
                }
                Event::Finished { reason, .. } => {
                    finish[i] = Some(reason);
                    let held = self.thinking[i].as_mut().map(|s| s.finish().content);
                    let held = held.unwrap_or_default();
                    text[i].push_str(&held);
                    let mut rest = words[i].push(&held);
                    let last = words[i].finish();
                    if reason == FinishReason::Length {
                        // The word the limit cut is dropped, shown and kept alike: where a
                        // side stopped within it is where its tokenizer splits it.
                        let cut = last.map_or(0, |w| w.len());
                        text[i].truncate(text[i].len() - cut);
                    } else {
                        rest.extend(last);
                    }
                    rest.into_iter()
                        .map(|p| Piece::Delta(side, p))
                        .chain([Piece::Finished(side, reason)])
                        .collect()
                }
                Event::PromptLogprobs(_) | Event::Embedding(_) => continue,
                Event::Error(e) | Event::GrammarFailed(e) => {
                    let error = Some(neutral(ApiError::internal(e)));
                    return Err(Unfinished { error, shown });
                }
                Event::Refused(_) => {
                    let error = Some(neutral(shutting_down()));
                    return Err(Unfinished { error, shown });
                }
            };
            if let Some(tx) = pieces {
                for piece in lockstep.push(side, sent) {
                    if tx.send(piece.json()).await.is_err() {
                        return Err(Unfinished { error: None, shown });
                    }
                    if let Piece::Delta(side, text) = piece {
                        shown[side as usize].push_str(&text);
                    }
                }
            }
        }
        let [ta, tb] = text;
        match finish {
            [Some(fa), Some(fb)] => Ok((
                Answer {
                    content: ta,
                    finish: fa,
                },
                Answer {
                    content: tb,
                    finish: fb,
                },
            )),
            _ => Err(Unfinished {
                error: Some(neutral(ApiError::internal(
                    "the engine dropped a battle side",
                ))),
                shown,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(pieces: Vec<Piece>) -> Vec<String> {
        pieces.iter().map(|p| p.json().to_string()).collect()
    }

    fn words(side: Side, ws: &[&str]) -> Vec<Piece> {
        ws.iter()
            .map(|w| Piece::Delta(side, w.to_string()))
            .collect()
    }

    /// A side's pieces wait for the other's: nothing goes before both have a piece, then
    /// they go in pairs; once a side has ended, the other's go as they come.
    #[test]
    fn both_sides_are_shown_in_step() {
        let mut l = Lockstep::default();
        // A is fast: three words before B's first.
        assert!(l
            .push(Side::A, words(Side::A, &["One ", "two ", "three "]))
            .is_empty());
        assert_eq!(
            sent(l.push(Side::B, words(Side::B, &["Uno "]))),
            [
                sent(words(Side::A, &["One "])),
                sent(words(Side::B, &["Uno "]))
            ]
            .concat()
        );
        assert_eq!(
            sent(l.push(Side::B, words(Side::B, &["dos "]))),
            [
                sent(words(Side::A, &["two "])),
                sent(words(Side::B, &["dos "]))
            ]
            .concat()
        );
        // B ends: A's third word goes with B's end, then A's pieces as they come.
        let end_b = || Piece::Finished(Side::B, FinishReason::Stop);
        assert_eq!(
            sent(l.push(Side::B, vec![end_b()])),
            sent(vec![Piece::Delta(Side::A, "three ".into()), end_b()])
        );
        assert_eq!(
            sent(l.push(Side::A, words(Side::A, &["four"]))),
            sent(words(Side::A, &["four"]))
        );
        let end_a = Piece::Finished(Side::A, FinishReason::Stop);
        assert_eq!(sent(l.push(Side::A, vec![end_a])).len(), 1);
    }

    fn pieces(tokens: &[&str]) -> Vec<String> {
        let mut w = WordPieces::default();
        let mut out: Vec<String> = tokens.iter().flat_map(|t| w.push(t)).collect();
        out.extend(w.finish());
        out
    }

    #[test]
    fn pieces_depend_on_the_text_not_its_tokens() {
        let text =
            "Hello,  world!\nA verylongwordwithoutanyspaceatall ends. 東京は日本の首都です。";
        let one = pieces(&[text]);
        assert_eq!(one.concat(), text);
        assert!(one
            .iter()
            .all(|p| !p.is_empty() && p.chars().count() <= MAX_PIECE_CHARS));
        assert_eq!(one[0], "Hello,  ");
        // Any other cut into tokens (by characters, by twos, a partial character as an
        // empty token) gives the same pieces.
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let by_char: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(pieces(&by_char), one);
        let pairs: Vec<String> = chars.chunks(2).map(|c| c.concat()).collect();
        let mut by_pair: Vec<&str> = pairs.iter().map(String::as_str).collect();
        by_pair.insert(3, "");
        assert_eq!(pieces(&by_pair), one);
        assert_eq!(pieces(&[]), Vec::<String>::new());
    }
}
