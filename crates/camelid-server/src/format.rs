//! OpenAI response JSON for both endpoints, whole and as stream chunks.

use crate::run::ChoiceResult;
use camelid_engine::Usage;
use camelid_model::decode::sampling::TokenLogprob;
use camelid_model::decode::FinishReason;
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

/// Completions `logprobs` object; `None` marks a leading prompt token without context.
/// `text_offset` counts bytes of the choice's text from `offset0` (where these entries
/// start in it). Each position's `top_logprobs` holds the chosen token too, as OpenAI's
/// and vLLM's do (up to `logprobs + 1` entries). Also returns the offset after the last entry.
pub fn completion_logprobs(
    tok: &Tokenizer,
    entries: &[(u32, Option<&TokenLogprob>)],
    offset0: usize,
) -> (Value, usize) {
    let spell = Spelling::new(tok);
    let mut tokens = vec![];
    let mut token_logprobs = vec![];
    let mut top = vec![];
    let mut offsets = vec![];
    let mut off = offset0;
    for (id, lp) in entries {
        let t = spell.token(*id).0;
        offsets.push(off);
        off += t.len();
        match lp {
            Some(l) => {
                token_logprobs.push(json!(l.logprob));
                let mut m: serde_json::Map<String, Value> = l
                    .top
                    .iter()
                    .map(|&(t, p)| (spell.token(t).0, json!(p)))
                    .collect();
                m.entry(t.clone()).or_insert(json!(l.logprob));
                top.push(Value::Object(m));
            }
            None => {
                token_logprobs.push(Value::Null);
                top.push(Value::Null);
            }
        }
        tokens.push(Value::String(t));
    }
    let v = json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets});
    (v, off)
}

pub fn finish_str(f: FinishReason) -> &'static str {
    f.as_str()
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
