//! What happens to one sequence after each forward pass: sample, log-probabilities,
//! incremental text, stop conditions. [`SequenceDecoder`] is shared by the single-sequence
//! [`super::generate`] loop (CLI, tests) and the serving engine.

use super::sampling::{token_logprob, Sampler, SamplingParams, TokenLogprob};
use crate::constraint::{Constraint, SequenceConstraint};
use crate::error::{Error, Result};
use crate::text::stream::{IncrementalDecoder, StopCheck, StopMatcher, StopSet};
use crate::text::tokenizer::Tokenizer;
use std::borrow::Cow;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token, a stop string, or the grammar finished.
    Stop,
    /// `max_tokens` or the context length.
    Length,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerationParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Built once per request and shared by its choices (stop strings may be megabytes):
    /// starting a sequence on the engine thread copies nothing.
    pub stop_strings: Arc<StopSet>,
    /// Every token that ends the sequence: the model's own end tokens and the client's.
    pub stop_token_ids: Vec<u32>,
    /// The model's own end tokens among them: what `ignore_eos` takes away (never drawn, as
    /// llama.cpp's `ignore_eos`); the client's `stop_token_ids` still stop, as in vLLM.
    pub eos_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub min_tokens: usize,
    /// Number of alternatives per token when log-probabilities are wanted.
    pub logprobs: Option<usize>,
    pub skip_special_tokens: bool,
    /// Structured output: only tokens the grammar allows are drawn; stop tokens only where
    /// it can end; a finished grammar ends the sequence.
    pub constraint: Option<Constraint>,
    /// Text the output must write before `constraint` applies (a reasoning model's
    /// `</think>` when its prompt opened the block): the model thinks freely, then answers
    /// in the grammar, as vLLM's structured outputs do with a reasoning parser.
    pub constraint_after: Option<String>,
    /// With `constraint_after`: the token a model opens its thinking with itself (Qwen3's
    /// `<think>`). The grammar applies from the first token, which may also be this one;
    /// drawn, it holds the grammar off until `constraint_after`, so the model may think
    /// first or answer at once, and the answer is the grammar's either way.
    pub think_open: Option<u32>,
    /// A lazy `constraint`: the output is free until it writes this text (a tool call's
    /// opening, `<tool_call>` or `[TOOL_CALLS]`), and from there on it follows the grammar,
    /// which starts with this text (llama.cpp's lazy grammars under `tool_choice: auto`:
    /// the model may answer in words, and a call it begins is a call to a given function
    /// in its schema). Waits for `constraint_after` first where that is set.
    pub constraint_trigger: Option<String>,
    /// The output continues the prompt's text (a completion): its first token is read after
    /// the prompt's last ones, so a SentencePiece `▁word` keeps its space (`"… is" + " Paris"`,
    /// as vLLM and llama.cpp give it). Off, the output is a text of its own (a chat answer),
    /// decoded as HF decodes generated tokens: its first space is the decoder's to strip.
    pub continues_prompt: bool,
}

impl GenerationParams {
    pub fn new(max_tokens: usize, sampling: SamplingParams) -> Self {
        Self {
            max_tokens,
            sampling,
            stop_strings: Arc::default(),
            stop_token_ids: vec![],
            eos_token_ids: vec![],
            ignore_eos: false,
            min_tokens: 0,
            logprobs: None,
            skip_special_tokens: true,
            constraint: None,
            constraint_after: None,
            think_open: None,
            constraint_trigger: None,
            continues_prompt: false,
        }
    }
}

/// What stopped a sequence that finished `stop`, where the client asked for it (vLLM's
/// `stop_reason`): one of its `stop_token_ids` or stop strings. The model's own end tokens,
/// a finished grammar and the length are none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Token(u32),
    Text(String),
}

/// One step's outcome for a sequence.
#[derive(Debug, Clone)]
pub struct StepOutput {
    pub token: u32,
    /// Text that may be shown now.
    pub text: String,
    pub logprob: Option<TokenLogprob>,
    pub finished: Option<FinishReason>,
    pub stop_reason: Option<StopReason>,
}

pub struct SequenceDecoder {
    params: GenerationParams,
    sampler: Sampler,
    detok: IncrementalDecoder,
    stops: StopMatcher,
    prompt: Vec<u32>,
    output: Vec<u32>,
    context_length: usize,
    done: bool,
    /// The sequence's matcher when it is constrained (an error if it could not start).
    grammar: Option<std::result::Result<SequenceConstraint, String>>,
    /// While `constraint_after` has not been written: the output's latest text, as long as
    /// the marker (the matcher starts once it holds the marker).
    gate: Option<String>,
    /// A lazy grammar's watch for `constraint_trigger` (once past any `constraint_after`):
    /// the output's latest text, as long as the trigger.
    watch: Option<String>,
}

/// Whether `t` is one of `params`' `stop_token_ids` (sorted by [`SequenceDecoder::new`]).
fn is_stop_token_id(params: &GenerationParams, t: u32) -> bool {
    params.stop_token_ids.binary_search(&t).is_ok()
}

/// Keeps only the end of `seen` that could still begin `marker` (at a character boundary).
fn keep_tail(seen: &mut String, marker: &str) {
    let keep = seen.len().saturating_sub(marker.len());
    let cut = (keep..=seen.len())
        .find(|&i| seen.is_char_boundary(i))
        .unwrap_or(seen.len());
    seen.drain(..cut);
}

impl SequenceDecoder {
    pub fn new(prompt: Vec<u32>, mut params: GenerationParams, context_length: usize) -> Self {
        // Sorted, so a step looks a token up among them by bisection: a grammar step asks
        // it of every token it allows (up to a vocabulary against 1 024 ids).
        params.stop_token_ids.sort_unstable();
        params.stop_token_ids.dedup();
        let gated = params.constraint.is_some()
            && params.constraint_after.is_some()
            && params.think_open.is_none();
        let lazy = params.constraint.is_some() && params.constraint_trigger.is_some();
        let grammar = params
            .constraint
            .as_ref()
            .filter(|_| !gated && !lazy)
            .map(|c| SequenceConstraint::start(c, &[]).map_err(|e| e.to_string()));
        Self {
            grammar,
            gate: gated.then(String::new),
            watch: (lazy && !gated).then(String::new),
            sampler: Sampler::new(params.sampling.clone()),
            detok: if params.continues_prompt {
                IncrementalDecoder::after(&prompt, params.skip_special_tokens)
            } else {
                IncrementalDecoder::new(params.skip_special_tokens)
            },
            stops: StopMatcher::new(params.stop_strings.clone()),
            params,
            prompt,
            output: vec![],
            context_length,
            done: false,
        }
    }

    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// Starts the matcher once the output's text has written `constraint_after` (a lazy
    /// grammar's watch for its trigger instead); `piece` is the text of the token just drawn.
    /// Returns the piece's text after the marker when this piece opened the gate.
    fn open_gate(&mut self, piece: &str) -> Option<String> {
        let (Some(seen), Some(marker), Some(c)) = (
            self.gate.as_mut(),
            self.params.constraint_after.as_deref(),
            self.params.constraint.as_ref(),
        ) else {
            return None;
        };
        seen.push_str(piece);
        let Some(at) = seen.find(marker) else {
            keep_tail(seen, marker);
            return None;
        };
        let rest = seen[at + marker.len()..].to_string();
        self.gate = None;
        if self.params.constraint_trigger.is_some() {
            self.watch = Some(String::new());
        } else {
            self.grammar = Some(SequenceConstraint::start(c, &[]).map_err(|e| e.to_string()));
        }
        Some(rest)
    }

    /// Starts a lazy grammar once the output's text has written `constraint_trigger`: the
    /// matcher consumes the trigger and whatever the same token wrote after it. Text the
    /// grammar refuses there leaves the output free (the call parser reads it as it would
    /// without a grammar).
    fn watch_trigger(&mut self, piece: &str) {
        let (Some(seen), Some(trigger), Some(c)) = (
            self.watch.as_mut(),
            self.params.constraint_trigger.as_deref(),
            self.params.constraint.as_ref(),
        ) else {
            return;
        };
        seen.push_str(piece);
        let Some(at) = seen.find(trigger) else {
            keep_tail(seen, trigger);
            return;
        };
        let mut replay = c.tokens_of(trigger);
        replay.extend(c.tokens_of(&seen[at + trigger.len()..]));
        self.watch = None;
        self.grammar = SequenceConstraint::start(c, &replay).ok().map(Ok);
    }

    pub fn output(&self) -> &[u32] {
        &self.output
    }

    /// Consumes the next-token logits of this sequence.
    pub fn step(&mut self, tok: &Tokenizer, logits: &[f32]) -> Result<StepOutput> {
        if self.done {
            return Err(Error::Invalid("sequence already finished".into()));
        }
        // Copied only when something below changes it: a row is the whole vocabulary
        // (128k entries for Llama 3), and a copy per row per step is host time every
        // stream of a batch waits for (benches/gpu/RESULTS.md, 2026-12-04).
        let mut l = Cow::Borrowed(logits);
        // Before min_tokens no stop token can be drawn; with ignore_eos the model's own end
        // tokens never can.
        let blocked: &[u32] = if self.output.len() < self.params.min_tokens {
            &self.params.stop_token_ids
        } else if self.params.ignore_eos {
            &self.params.eos_token_ids
        } else {
            &[]
        };
        let block_stops = !blocked.is_empty();
        // Plain greedy with no grammar: the row's best token, unless it is a blocked one (then
        // the copy below). Blocking wrote -inf into a copy of the row every step, with
        // `ignore_eos` (benchmarks) or `min_tokens`: ~50 µs a row on a 128k vocabulary.
        let greedy = (self.grammar.is_none() && self.sampler.is_plain_greedy())
            .then(|| self.sampler.sample(logits, &self.prompt, &self.output))
            .filter(|t| !blocked.contains(t));
        if greedy.is_none() {
            for &s in blocked {
                if let Some(x) = l.to_mut().get_mut(s as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        // Log-probabilities are the model's own (before temperature, penalties, bias and
        // min_tokens, as vLLM's raw logprobs) over the tokens the grammar allows (vLLM masks
        // the logits before its sampler reads them): a constrained choice's confidence is
        // spread over the allowed choices only.
        let mut grammar_logits: Option<Vec<f32>> = None;
        // A lazy grammar that fails once started (a parser limit) leaves the rest free: the
        // output was free until the model opened a call, and stays answerable.
        let lazy = self.params.constraint_trigger.is_some();
        let mut lazy_mask = None;
        if lazy {
            if let Some(Ok(g)) = &mut self.grammar {
                match g.mask() {
                    Ok(m) => lazy_mask = Some(m),
                    Err(_) => self.grammar = None,
                }
            }
        }
        let mut grammar = match &mut self.grammar {
            None => None,
            Some(Ok(g)) => Some(g),
            Some(Err(e)) => return Err(Error::Grammar(e.clone())),
        };
        // The first token may open the model's own thinking, whatever the grammar allows.
        let think_open = self
            .params
            .think_open
            .filter(|_| self.output.is_empty() && self.params.constraint_after.is_some())
            .filter(|&t| (t as usize) < logits.len());
        if let Some(g) = grammar.as_mut() {
            let mask = match lazy_mask.take() {
                Some(m) => m,
                None => g.mask()?,
            };
            // A grammar that can only end here ends, even before min_tokens or with
            // ignore_eos: the structure is the guarantee.
            let only_stops = mask.can_end
                && !(0..l.len() as u32)
                    .any(|t| mask.is_allowed(t) && !is_stop_token_id(&self.params, t));
            if only_stops && block_stops {
                l = Cow::Borrowed(logits);
            }
            mask.apply(l.to_mut(), &self.params.stop_token_ids);
            if let Some(t) = think_open {
                l.to_mut()[t as usize] = logits[t as usize];
            }
            // A grammar that cannot end yet still ends where every token it allows is a stop
            // token (a `stop_token_ids` entry, or the end of turn the grammar itself asks
            // for): drawing from nothing would give a token the grammar refuses.
            if l.iter().all(|x| *x == f32::NEG_INFINITY) {
                let mut fresh = logits.to_vec();
                mask.apply(&mut fresh, &[]);
                l = Cow::Owned(fresh);
            }
            if self.params.logprobs.is_some() {
                let mut raw = logits.to_vec();
                mask.apply(&mut raw, &self.params.stop_token_ids);
                if raw.iter().all(|x| *x == f32::NEG_INFINITY) {
                    raw.copy_from_slice(logits);
                    mask.apply(&mut raw, &[]);
                }
                if let Some(t) = think_open {
                    raw[t as usize] = logits[t as usize];
                }
                grammar_logits = Some(raw);
            }
        }
        let token = match greedy {
            Some(t) => t,
            None => self.sampler.sample(&l, &self.prompt, &self.output),
        };
        let logprob = self
            .params
            .logprobs
            .map(|n| token_logprob(grammar_logits.as_deref().unwrap_or(logits), token, n));
        self.output.push(token);
        let is_stop_token = is_stop_token_id(&self.params, token)
            && (!blocked.contains(&token) || grammar.is_some());
        let opens_thinking =
            think_open == Some(token) && (grammar.is_some() || self.watch.is_some());
        // The matcher consumes every token but a stop token (which ends the sequence) and
        // the one opening the model's thinking (the grammar starts again after it).
        let mut grammar_failed = false;
        let grammar_done = match grammar {
            Some(g) if !is_stop_token && !opens_thinking => match g.commit(token) {
                Ok(done) => done,
                Err(_) if lazy => {
                    grammar_failed = true;
                    false
                }
                Err(e) => return Err(e),
            },
            _ => false,
        };
        if grammar_failed {
            self.grammar = None;
        }
        if opens_thinking {
            self.grammar = None;
            self.watch = None;
            self.gate = Some(String::new());
        }
        let mut text = String::new();
        let mut finished = None;
        let mut stop_reason = None;
        if is_stop_token {
            // vLLM's `include_stop_str_in_output` keeps the stop token's text too (an end
            // token's is none unless special tokens are shown).
            let mut tail = String::new();
            if self.params.stop_strings.include_in_output {
                tail += &self.detok.push(tok, token)?;
            }
            tail += &self.detok.flush(tok)?;
            text += &self.stops.flush_after(tail);
            finished = Some(FinishReason::Stop);
            // The stop token's own text may complete a stop string: that names the stop, as
            // vLLM checks stop strings on the text after the engine's stop token.
            stop_reason = match self.stops.stopped_by() {
                Some(s) => Some(StopReason::Text(s.into())),
                None if !self.params.eos_token_ids.contains(&token) => {
                    Some(StopReason::Token(token))
                }
                None => None,
            };
        } else {
            let piece = self.detok.push(tok, token)?;
            // A lazy grammar's trigger counts only after the gate's marker (not inside the
            // model's thinking).
            if self.gate.is_none() {
                self.watch_trigger(&piece);
            } else if let Some(rest) = self.open_gate(&piece) {
                self.watch_trigger(&rest);
            }
            // Stop strings wait for min_tokens as stop tokens do (vLLM's rule).
            if self.output.len() <= self.params.min_tokens {
                text += &self.stops.push_unchecked(&piece);
            } else {
                match self.stops.push(&piece) {
                    StopCheck::Continue(t) => text += &t,
                    StopCheck::Stopped(t) => {
                        text += &t;
                        finished = Some(FinishReason::Stop);
                        stop_reason = self.stops.stopped_by().map(|s| StopReason::Text(s.into()));
                    }
                }
            }
            if grammar_done && finished.is_none() {
                text += &self.stops.flush_after(self.detok.flush(tok)?);
                finished = Some(FinishReason::Stop);
                stop_reason = self.stops.stopped_by().map(|s| StopReason::Text(s.into()));
            }
        }
        if finished.is_none()
            && (self.output.len() >= self.params.max_tokens
                || self.prompt.len() + self.output.len() >= self.context_length)
        {
            // The held-back end of a character may complete a stop string: then it stopped
            // (vLLM checks stop strings before the length).
            let tail = self.detok.flush(tok)?;
            match self.stops.push(&tail) {
                StopCheck::Continue(t) => {
                    text += &(t + &self.stops.flush());
                    finished = Some(FinishReason::Length);
                }
                StopCheck::Stopped(t) => {
                    text += &t;
                    finished = Some(FinishReason::Stop);
                    stop_reason = self.stops.stopped_by().map(|s| StopReason::Text(s.into()));
                }
            }
        }
        self.done = finished.is_some();
        Ok(StepOutput {
            token,
            text,
            logprob,
            finished,
            stop_reason,
        })
    }
}

impl StopMatcher {
    /// Held-back text plus `extra`, when a stop *token* ends generation.
    fn flush_after(&mut self, extra: String) -> String {
        match self.push(&extra) {
            StopCheck::Continue(t) => t + &self.flush(),
            StopCheck::Stopped(t) => t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::sampling::SamplingParams;

    /// Four words, `</s>` (id 3) the end token.
    fn tokenizer() -> Tokenizer {
        let doc = serde_json::json!({"version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "c": 2, "</s>": 3},
                      "unk_token": "a"}});
        Tokenizer::from_json_value(doc, "test").unwrap()
    }

    fn tokens(sampling: SamplingParams, rows: &[[f32; 4]]) -> Vec<u32> {
        let mut p = GenerationParams::new(8, sampling);
        p.eos_token_ids = vec![3];
        p.ignore_eos = true;
        let mut d = SequenceDecoder::new(vec![0], p, 64);
        let tok = tokenizer();
        rows.iter()
            .map(|r| d.step(&tok, r).unwrap().token)
            .collect()
    }

    /// Greedy with `ignore_eos` takes the best token that is not an end token, whether or not
    /// the end token leads (the fast path without a copy of the row, and the copy); with a
    /// bias the biased row decides.
    #[test]
    fn greedy_with_ignore_eos_never_draws_the_end_token() {
        let rows = [
            [0.1, 0.5, 0.2, 0.9],
            [0.7, 0.5, 0.2, 0.1],
            [0.1, 0.2, 0.6, 0.6],
        ];
        assert_eq!(tokens(SamplingParams::greedy(), &rows), [1, 0, 2]);
        let mut biased = SamplingParams::greedy();
        biased.logit_bias.insert(2, 1.0);
        assert_eq!(tokens(biased, &rows), [2, 2, 2]);
    }

    /// vLLM's `stop_reason`: a client's stop token or stop string is named; the model's own
    /// end token and the length are not.
    #[test]
    fn the_stop_reason_names_the_clients_stop_not_the_models_end() {
        let tok = tokenizer();
        let run = |stops: &[&str], client_ids: &[u32], row: [f32; 4]| {
            let mut p = GenerationParams::new(4, SamplingParams::greedy());
            p.eos_token_ids = vec![3];
            p.stop_token_ids = [&[3], client_ids].concat();
            p.stop_strings = Arc::new(stops.iter().copied().collect());
            let mut d = SequenceDecoder::new(vec![0], p, 64);
            loop {
                let out = d.step(&tok, &row).unwrap();
                if out.finished.is_some() {
                    return (out.finished, out.stop_reason);
                }
            }
        };
        let stop = Some(FinishReason::Stop);
        assert_eq!(run(&[], &[], [0.0, 0.0, 0.0, 1.0]), (stop, None));
        assert_eq!(
            run(&[], &[2], [0.0, 0.0, 1.0, 0.0]),
            (stop, Some(StopReason::Token(2)))
        );
        assert_eq!(
            run(&["x", "b"], &[], [0.0, 1.0, 0.0, 0.0]),
            (stop, Some(StopReason::Text("b".into())))
        );
        assert_eq!(
            run(&[], &[], [1.0, 0.0, 0.0, 0.0]),
            (Some(FinishReason::Length), None)
        );
        // A stop token whose own text (kept: `include_stop_str_in_output`) completes a stop
        // string: the string is named.
        let mut p = GenerationParams::new(4, SamplingParams::greedy());
        p.eos_token_ids = vec![3];
        p.stop_token_ids = vec![3, 2];
        let mut stops = StopSet::new(vec!["c".into()]);
        stops.include_in_output = true;
        p.stop_strings = Arc::new(stops);
        let mut d = SequenceDecoder::new(vec![0], p, 64);
        let out = d.step(&tok, &[0.0, 0.0, 1.0, 0.0]).unwrap();
        assert_eq!(out.finished, stop);
        assert_eq!(out.stop_reason, Some(StopReason::Text("c".into())));
    }
}
