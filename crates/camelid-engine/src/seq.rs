//! One sequence's state between engine steps: its tokens, what of it the KV store holds, the
//! prefix-cache partition it reads, the prompt scores and pooled state it gathers, and the
//! sampling of its next token.

use crate::metrics::EngineMetrics as M;
use crate::paged::PagedKv;
use crate::{Event, Pooling, Usage};
use camelid_model::decode::sampling::{token_logprob, TokenLogprob};
use camelid_model::decode::SequenceDecoder;
use camelid_model::text::tokenizer::Tokenizer;
use camelid_model::{LoraAdapter, SharedLora};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The prefix cache's partition of a request: its cache salt, and its LoRA adapter (an
/// adapter's keys and values differ from the base model's for the same tokens). `None` for
/// the base model without a salt; the encoding is injective, so no salt can name another
/// adapter's partition.
pub(crate) fn cache_partition(lora: Option<&LoraAdapter>, salt: Option<&str>) -> Option<Arc<str>> {
    match (lora, salt) {
        (None, None) => None,
        (None, Some(s)) => Some(Arc::from(format!("salt:{s}"))),
        (Some(a), None) => Some(Arc::from(format!("lora{}", a.id()))),
        (Some(a), Some(s)) => Some(Arc::from(format!("lora{}:{s}", a.id()))),
    }
}

pub(crate) struct Seq {
    pub(crate) id: u64,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) decoder: SequenceDecoder,
    /// Prompt then generated tokens.
    pub(crate) tokens: Vec<u32>,
    pub(crate) prompt_len: usize,
    /// Tokens whose keys/values are in the KV store.
    pub(crate) cached: usize,
    /// Prompt tokens found in the prefix cache at first admission (or picked up from a
    /// sequence that computed them meanwhile).
    pub(crate) cached_prompt: Option<usize>,
    /// Preempted once: what it picks up from the cache now, it had computed itself before,
    /// so `cached_prompt` no longer grows.
    pub(crate) preempted: bool,
    /// Chain hashes of the full blocks a prefix lookup could reuse (empty when this sequence
    /// does not use the prefix cache): sequences admitted together with a common prefix
    /// compute it once (the scheduler holds a follower until its leader has).
    pub(crate) prefix_hashes: Vec<u64>,
    /// The prefix cache's partition: the request's cache salt and its LoRA adapter
    /// ([`cache_partition`]).
    pub(crate) cache_salt: Option<Arc<str>>,
    pub(crate) lora: Option<SharedLora>,
    pub(crate) prompt_scoring: PromptScoring,
    pub(crate) pooling: Pooled,
    pub(crate) max_tokens: usize,
    /// Speculative decoding: the most draft tokens its next step may verify (within the
    /// configured count): one more than twice what its last draft had accepted, so that
    /// text that stops repeating itself costs a row a step, not a whole draft.
    pub(crate) draft_cap: usize,
}

/// An embedding request's pooled hidden state, gathered as its prompt's chunks run.
pub(crate) enum Pooled {
    /// Not an embedding request.
    Off,
    /// The last prompt position's row, taken when the prompt ends.
    Last,
    /// The sum of the rows of positions `0..rows`; a preempted sequence keeps it and adds
    /// only positions past `rows` when it recomputes.
    Mean { sum: Vec<f64>, rows: usize },
}

impl Pooled {
    pub(crate) fn new(p: Option<Pooling>) -> Self {
        match p {
            None => Pooled::Off,
            Some(Pooling::Last) => Pooled::Last,
            Some(Pooling::Mean) => Pooled::Mean {
                sum: vec![],
                rows: 0,
            },
        }
    }
}

/// The prompt log-probabilities a request asked for: collected row by row, sent once. A
/// preempted sequence keeps what it collected; its recompute scores only the rest.
pub(crate) enum PromptScoring {
    Off,
    /// `got[p]` scores prompt token `p + 1` (from the logits of position `p`); `top`
    /// alternatives each.
    Collecting {
        top: usize,
        got: Vec<TokenLogprob>,
    },
    Sent,
}

impl Seq {
    /// Whether positions `from..to` include one whose logits score a prompt token not yet
    /// scored.
    pub(crate) fn scores_prompt_in(&self, from: usize, to: usize) -> bool {
        match &self.prompt_scoring {
            PromptScoring::Collecting { got, .. } => {
                from.max(got.len()) < to.min(self.prompt_len.saturating_sub(1))
            }
            PromptScoring::Off | PromptScoring::Sent => false,
        }
    }

    /// Takes the logits of positions `from..` (rows of `width`, one each) and scores the prompt tokens
    /// they predict that are not scored yet; once the prompt's end is computed (`end`), sends
    /// the scores.
    pub(crate) fn score_prompt(&mut self, from: usize, rows: &[f32], width: usize, end: usize) {
        let PromptScoring::Collecting { top, got } = &mut self.prompt_scoring else {
            return;
        };
        for (r, l) in rows.chunks_exact(width.max(1)).enumerate() {
            let p = from + r;
            if p == got.len() && p + 1 < self.prompt_len {
                got.push(token_logprob(l, self.tokens[p + 1], *top));
            }
        }
        if end >= self.prompt_len {
            debug_assert_eq!(got.len(), self.prompt_len - 1, "a prompt row was skipped");
            let _ = self.events.send(Event::PromptLogprobs(std::mem::take(got)));
            self.prompt_scoring = PromptScoring::Sent;
        }
    }
}

impl Seq {
    /// Takes the hidden-state rows of a chunk of an embedding request that ran positions
    /// `from..end` (a row each for mean pooling, the last one's at the prompt's end for the
    /// last token's); the pooled vector once the prompt is done.
    pub(crate) fn pool(&mut self, from: usize, rows: &[Vec<f32>], end: usize) -> Option<Vec<f32>> {
        match &mut self.pooling {
            Pooled::Off => None,
            Pooled::Last => (end == self.prompt_len)
                .then(|| rows.last().cloned())
                .flatten(),
            Pooled::Mean { sum, rows: summed } => {
                debug_assert_eq!(rows.len(), end - from, "mean pooling wants every row");
                for (r, h) in rows.iter().enumerate() {
                    if from + r != *summed {
                        continue; // summed before a preemption
                    }
                    if sum.is_empty() {
                        sum.resize(h.len(), 0.0);
                    }
                    sum.iter_mut().zip(h).for_each(|(a, &b)| *a += b as f64);
                    *summed += 1;
                }
                (end == self.prompt_len).then(|| {
                    let n = *summed as f64;
                    sum.iter().map(|&a| (a / n) as f32).collect()
                })
            }
        }
    }
}

impl Seq {
    pub(crate) fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.tokens.len() - self.prompt_len,
            cached_tokens: self.cached_prompt.unwrap_or(0),
        }
    }

    /// Positions `..end` are computed: their full blocks go into the prefix cache, and blocks
    /// no later query attends go back to the pool (only where every layer keeps to a
    /// `window`: a global layer reads every key).
    pub(crate) fn computed(&mut self, kv: &mut PagedKv, window: Option<usize>, end: usize) {
        self.cached = end;
        kv.commit(self.id, &self.tokens, end);
        if let Some(w) = window {
            kv.release_before(self.id, (end + 1).saturating_sub(w));
        }
    }

    /// Draws the next token from its logits and sends it; true when the sequence has ended
    /// (finished, or failed: the event says which).
    pub(crate) fn sample(&mut self, tokenizer: &Tokenizer, metrics: &M, logits: &[f32]) -> bool {
        match self.decoder.step(tokenizer, logits) {
            Ok(out) => {
                M::add(&metrics.generation_tokens, 1);
                self.tokens.push(out.token);
                let _ = self.events.send(Event::Token {
                    token: out.token,
                    text: out.text,
                    logprob: out.logprob,
                });
                if let Some(reason) = out.finished {
                    let _ = self.events.send(Event::Finished {
                        reason,
                        usage: self.usage(),
                        stop_reason: out.stop_reason,
                    });
                    return true;
                }
                false
            }
            Err(camelid_model::Error::Grammar(m)) => {
                let _ = self.events.send(Event::GrammarFailed(m));
                true
            }
            Err(e) => {
                let _ = self.events.send(Event::Error(e.to_string()));
                true
            }
        }
    }
}
