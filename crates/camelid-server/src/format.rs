//! OpenAI response JSON for both endpoints, whole and as stream chunks.

use crate::run::ChoiceResult;
use camelid_engine::Usage;
use camelid_model::decode::sampling::TokenLogprob;
use camelid_model::decode::{FinishReason, StopReason};
use camelid_model::text::stream::IncrementalDecoder;
use camelid_model::text::token_bytes::TokenBytes;
use camelid_model::text::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};

pub fn new_id(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{prefix}-{:x}{:04x}",
        nanos,
        N.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

pub fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens}
    })
}

/// [`usage_json`] of a chat whose output is split into thinking and answer: the thinking's
/// tokens in `completion_tokens_details.reasoning_tokens`, as OpenAI reports them.
pub fn chat_usage_json(u: &Usage, reasoning_tokens: Option<usize>) -> Value {
    let mut v = usage_json(u);
    if let Some(r) = reasoning_tokens {
        v["completion_tokens_details"] = json!({ "reasoning_tokens": r });
    }
    v
}

/// How logprob entries spell a token: its own bytes (from the vocabulary's pieces), and as
/// `token` text those bytes read as UTF-8. Decoding one token alone would drop a
/// SentencePiece token's leading space (`▁the` → "the") and turn a byte piece into U+FFFD,
/// so the texts would not join into the answer; a piece of a multi-byte character is still
/// U+FFFD as text, and whole in `bytes`. A vocabulary of neither known spelling falls back
/// to the decoded token.
struct Spelling<'a> {
    tok: &'a Tokenizer,
    pieces: Option<TokenBytes>,
}

impl<'a> Spelling<'a> {
    fn new(tok: &'a Tokenizer) -> Self {
        Self {
            tok,
            pieces: TokenBytes::new(tok),
        }
    }

    fn bytes(&self, id: u32) -> Vec<u8> {
        match self.pieces.as_ref().and_then(|s| s.token(self.tok, id)) {
            Some(b) => b,
            None => self
                .tok
                .decode(&[id], false)
                .unwrap_or_default()
                .into_bytes(),
        }
    }

    /// (text, bytes)
    fn token(&self, id: u32) -> (String, Vec<u8>) {
        let bytes = self.bytes(id);
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }
}

/// Chat `logprobs.content` entries. `bytes` are the token's own bytes (a piece of a
/// multi-byte character is that piece, so a client can join them into the text).
pub fn chat_logprobs(tok: &Tokenizer, lps: &[TokenLogprob]) -> Value {
    let spell = Spelling::new(tok);
    let entry = |id: u32, lp: f32| {
        let (t, bytes) = spell.token(id);
        json!({"token": t, "logprob": lp, "bytes": bytes})
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|l| {
            let mut e = entry(l.token, l.logprob);
            e["top_logprobs"] = Value::Array(l.top.iter().map(|&(t, p)| entry(t, p)).collect());
            e
        })
        .collect();
    json!({"content": content})
}

/// Where the next token starts in a choice's text, in characters (Python's and OpenAI's
/// `text_offset` unit): the characters of the tokens so far, a character split over several
/// tokens counted once it is whole (its tokens start where it does).
#[derive(Debug, Clone, Default)]
pub struct TextOffset {
    chars: usize,
    /// The first bytes of a character still to be completed by the next tokens.
    pending: Vec<u8>,
}

impl TextOffset {
    /// At character `chars` of the text, nothing pending (e.g. after an echoed prompt).
    pub fn at(chars: usize) -> Self {
        Self {
            chars,
            pending: vec![],
        }
    }

    /// The offset of a token of these bytes, moving past it.
    fn take(&mut self, bytes: &[u8]) -> usize {
        let start = self.chars;
        self.pending.extend_from_slice(bytes);
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.chars += s.chars().count();
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let ok = &rest[..e.valid_up_to()];
                    // Safety of the count: `valid_up_to` ends on a character boundary.
                    self.chars += std::str::from_utf8(ok).map_or(0, |s| s.chars().count());
                    match e.error_len() {
                        // Invalid bytes read as one U+FFFD, as lossy decoding shows them.
                        Some(n) => {
                            self.chars += 1;
                            rest = &rest[e.valid_up_to() + n..];
                        }
                        // A character's first bytes: wait for the rest.
                        None => {
                            rest = &rest[e.valid_up_to()..];
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        start
    }
}

/// The `text_offset`s of an echoed prompt's tokens: where each starts in the echoed `text`,
/// in characters. A text prompt is echoed as it was sent: its tokens start where the
/// tokenizer aligned them in it when it encoded it (`aligned`: a BOS it added at 0, one
/// written in the text where it is, a SentencePiece `▁word` at its word). A token prompt's
/// text is its decoding: each starts where its incremental decoding does. Never past the
/// text, never going back: the generated tokens' offsets go on from its end.
pub fn echo_text_offsets(
    tok: &Tokenizer,
    prompt: &[u32],
    aligned: Option<Vec<usize>>,
    text: &str,
) -> Vec<usize> {
    let end = text.chars().count();
    let starts = match aligned {
        Some(starts) => starts,
        // Decoded token by token (a token prompt, or an infill's, whose ids are not its
        // text's alone).
        None => {
            let mut decoder = IncrementalDecoder::new(false);
            let mut at = 0;
            prompt
                .iter()
                .map(|&id| {
                    let start = at;
                    at += decoder.push(tok, id).map_or(0, |t| t.chars().count());
                    start
                })
                .collect()
        }
    };
    let mut last = 0;
    starts
        .into_iter()
        .map(|s| {
            last = s.clamp(last, end);
            last
        })
        .collect()
}

/// A token as completions' `tokens` and `top_logprobs` keys spell it: its text, or where its
/// bytes are not whole UTF-8 (a piece of a multi-byte character) OpenAI's `bytes:\xNN…`, so
/// the pieces of different characters do not all read U+FFFD and overwrite each other's keys.
fn completion_token(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut t = String::from("bytes:");
            for b in bytes {
                t += &format!("\\x{b:02x}");
            }
            t
        }
    }
}

/// Completions `logprobs` object; `None` marks a leading prompt token without context.
/// `text_offset` counts characters of the choice's text, from `at` (moved past the entries).
/// Each position's `top_logprobs` holds the chosen token too, as OpenAI's and vLLM's do (up
/// to `logprobs + 1` entries).
pub fn completion_logprobs(
    tok: &Tokenizer,
    entries: &[(u32, Option<&TokenLogprob>)],
    at: &mut TextOffset,
) -> Value {
    let spell = Spelling::new(tok);
    let mut tokens = vec![];
    let mut token_logprobs = vec![];
    let mut top = vec![];
    let mut offsets = vec![];
    for (id, lp) in entries {
        let bytes = spell.bytes(*id);
        let t = completion_token(&bytes);
        offsets.push(at.take(&bytes));
        match lp {
            Some(l) => {
                token_logprobs.push(json!(l.logprob));
                let mut m: serde_json::Map<String, Value> = l
                    .top
                    .iter()
                    .map(|&(t, p)| (completion_token(&spell.bytes(t)), json!(p)))
                    .collect();
                // The chosen token's own value, also where another token spells the same.
                m.insert(t.clone(), json!(l.logprob));
                top.push(Value::Object(m));
            }
            None => {
                token_logprobs.push(Value::Null);
                top.push(Value::Null);
            }
        }
        tokens.push(Value::String(t));
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets})
}

pub fn finish_str(f: FinishReason) -> &'static str {
    f.as_str()
}

/// vLLM's `stop_reason` of a choice: the client's stop token id or stop string that ended
/// it, else null (the model's own end, the length, a finished grammar).
pub fn stop_reason_json(r: Option<&StopReason>) -> Value {
    match r {
        None => Value::Null,
        Some(StopReason::Token(id)) => json!(id),
        Some(StopReason::Text(s)) => json!(s),
    }
}

pub fn sum_usage(results: &[ChoiceResult], prompt_tokens: usize, n: usize) -> Usage {
    let mut cached = CachedPrompt::new(n);
    for r in results {
        cached.record(r.index, r.usage.cached_tokens);
    }
    Usage {
        prompt_tokens,
        completion_tokens: results.iter().map(|r| r.usage.completion_tokens).sum(),
        cached_tokens: cached.total(),
    }
}

/// `usage.prompt_tokens_details.cached_tokens`, counted as `prompt_tokens` is: once per
/// prompt. The `n` choices of a prompt (choice indices `p·n .. p·n + n`) share its blocks —
/// one computes them, the others reuse them — so a prompt counts what was cached before the
/// request: the least any of its choices found.
#[derive(Debug, Default)]
pub struct CachedPrompt {
    n: usize,
    least: std::collections::BTreeMap<usize, usize>,
}

impl CachedPrompt {
    pub fn new(n: usize) -> Self {
        Self {
            n: n.max(1),
            least: Default::default(),
        }
    }
    pub fn record(&mut self, choice: usize, cached: usize) {
        let v = self.least.entry(choice / self.n).or_insert(cached);
        *v = (*v).min(cached);
    }
    pub fn total(&self) -> usize {
        self.least.values().sum()
    }
}
