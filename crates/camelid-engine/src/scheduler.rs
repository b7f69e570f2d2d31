//! The engine loop: admits requests, builds one varlen batch per step (prefill chunks and
//! decodes), runs the model, hands each sequence its logits.

use crate::metrics::EngineMetrics as M;
use crate::{Event, Request, SubmitError, Usage};
use camelid_model::generate::{FinishReason, SequenceDecoder};
use camelid_model::kv::ContiguousKv;
use camelid_model::sampling::token_logprob;
use camelid_model::tokenizer::Tokenizer;
use camelid_model::{ForwardBatch, LoadedModel, LogitsWanted};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests that may wait for a batch slot before `submit` says the queue is full.
    pub max_waiting: usize,
    /// Sequences in one batch.
    pub max_running: usize,
    /// Tokens in one forward (prefill is chunked to fit).
    pub max_batch_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_waiting: 256,
            max_running: 32,
            max_batch_tokens: 512,
        }
    }
}

struct Submitted {
    req: Request,
    events: mpsc::UnboundedSender<Event>,
}

/// Cheap to clone; the engine thread stops when every handle is dropped.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Submitted>,
    pub metrics: Arc<M>,
    tokenizer: Arc<Tokenizer>,
    context_length: usize,
    vocab_size: usize,
}

impl EngineHandle {
    /// Starts the engine thread for `lm`.
    pub fn spawn(lm: LoadedModel, cfg: EngineConfig) -> Self {
        let (tx, rx) = mpsc::channel(cfg.max_waiting.max(1));
        let metrics = Arc::new(M::default());
        let handle = Self {
            tx,
            metrics: metrics.clone(),
            tokenizer: Arc::new(lm.tokenizer.clone()),
            context_length: lm.context_length,
            vocab_size: lm.model.config().vocab_size,
        };
        std::thread::Builder::new()
            .name(format!("engine-{}", lm.name))
            .spawn(move || Engine::new(lm, cfg, rx, metrics).run())
            .expect("spawn engine thread");
        handle
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn context_length(&self) -> usize {
        self.context_length
    }
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Queues a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request at the next step.
    pub fn submit(&self, req: Request) -> Result<mpsc::UnboundedReceiver<Event>, SubmitError> {
        if req.prompt.is_empty() {
            return Err(SubmitError::Invalid("the prompt is empty".into()));
        }
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(SubmitError::Invalid(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.vocab_size
            )));
        }
        if req.prompt.len() + req.params.max_tokens > self.context_length {
            return Err(SubmitError::Invalid(format!(
                "prompt ({} tokens) + max_tokens ({}) exceeds the context length {}",
                req.prompt.len(),
                req.params.max_tokens,
                self.context_length
            )));
        }
        let (etx, erx) = mpsc::unbounded_channel();
        match self.tx.try_send(Submitted { req, events: etx }) {
            Ok(()) => {
                self.metrics
                    .waiting
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(erx)
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(SubmitError::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SubmitError::Stopped),
        }
    }
}

struct Seq {
    id: u64,
    events: mpsc::UnboundedSender<Event>,
    decoder: SequenceDecoder,
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose keys/values are in the KV store.
    cached: usize,
    prompt_logprobs: Option<usize>,
    prompt_lp: Vec<camelid_model::sampling::TokenLogprob>,
    max_tokens: usize,
}

struct Engine {
    lm: LoadedModel,
    cfg: EngineConfig,
    rx: mpsc::Receiver<Submitted>,
    metrics: Arc<M>,
    waiting: VecDeque<Submitted>,
    running: Vec<Seq>,
    kv: ContiguousKv,
    next_id: u64,
}

impl Engine {
    fn new(
        lm: LoadedModel,
        cfg: EngineConfig,
        rx: mpsc::Receiver<Submitted>,
        metrics: Arc<M>,
    ) -> Self {
        Self {
            lm,
            cfg,
            rx,
            metrics,
            waiting: VecDeque::new(),
            running: vec![],
            kv: ContiguousKv::new(),
            next_id: 0,
        }
    }

    fn run(mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.rx.blocking_recv() {
                    Some(s) => self.waiting.push_back(s),
                    None => return, // every handle dropped
                }
            }
            while let Ok(s) = self.rx.try_recv() {
                self.waiting.push_back(s);
            }
            self.admit();
            self.drop_cancelled();
            if !self.running.is_empty() {
                self.step();
            }
            M::set(&self.metrics.running, self.running.len() as u64);
            M::set(&self.metrics.waiting, self.waiting.len() as u64);
        }
    }

    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_running {
            let Some(s) = self.waiting.pop_front() else {
                break;
            };
            if s.events.is_closed() {
                M::add(&self.metrics.cancelled, 1);
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let prompt = s.req.prompt.clone();
            M::add(&self.metrics.prompt_tokens, prompt.len() as u64);
            self.running.push(Seq {
                id,
                events: s.events,
                decoder: SequenceDecoder::new(
                    prompt.clone(),
                    s.req.params.clone(),
                    self.lm.context_length,
                ),
                prompt_len: prompt.len(),
                tokens: prompt,
                cached: 0,
                prompt_logprobs: s.req.prompt_logprobs,
                prompt_lp: vec![],
                max_tokens: s.req.params.max_tokens,
            });
        }
    }

    fn drop_cancelled(&mut self) {
        let kv = &mut self.kv;
        let metrics = &self.metrics;
        self.running.retain(|s| {
            let keep = !s.events.is_closed();
            if !keep {
                kv.remove(s.id);
                M::add(&metrics.cancelled, 1);
            }
            keep
        });
    }

    /// One forward over every running sequence.
    fn step(&mut self) {
        let mut batch = ForwardBatch::default();
        let mut budget = self.cfg.max_batch_tokens.max(1);
        // (index into running, rows of logits it gets, chunk end)
        let mut members: Vec<(usize, usize, usize)> = vec![];
        // Decodes first: they keep streams flowing; prefill takes what budget is left.
        let order: Vec<usize> = {
            let (mut dec, mut pre): (Vec<usize>, Vec<usize>) = (0..self.running.len())
                .partition(|&i| self.running[i].cached >= self.running[i].prompt_len);
            dec.append(&mut pre);
            dec
        };
        for i in order {
            if budget == 0 {
                break;
            }
            let s = &self.running[i];
            let todo = s.tokens.len() - s.cached;
            let len = todo.min(budget);
            let end = s.cached + len;
            let completes_prompt = end == s.tokens.len();
            let want = if s.prompt_logprobs.is_some() && s.cached < s.prompt_len {
                LogitsWanted::All
            } else if completes_prompt {
                LogitsWanted::Last
            } else {
                LogitsWanted::None
            };
            let rows = match want {
                LogitsWanted::None => 0,
                LogitsWanted::Last => 1,
                LogitsWanted::All => len,
            };
            batch.push(s.id, s.cached, &s.tokens[s.cached..end], want);
            members.push((i, rows, end));
            budget -= len;
        }
        M::add(&self.metrics.steps, 1);
        M::add(&self.metrics.batched_sequences, members.len() as u64);
        M::add(&self.metrics.batched_tokens, batch.tokens.len() as u64);
        let logits = match self
            .lm
            .model
            .forward(&batch, &mut self.kv)
            .and_then(|l| Ok(l.to_vec2::<f32>()?))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("forward failed: {e}");
                for (i, _, _) in &members {
                    let _ = self.running[*i]
                        .events
                        .send(Event::Error(format!("model forward failed: {e}")));
                }
                let ids: Vec<u64> = members
                    .iter()
                    .map(|(i, _, _)| self.running[*i].id)
                    .collect();
                self.finish_ids(&ids);
                return;
            }
        };
        let mut row = 0;
        let mut done: Vec<u64> = vec![];
        for (i, rows, end) in members {
            let s = &mut self.running[i];
            let chunk_start = s.cached;
            s.cached = end;
            let my_rows = &logits[row..row + rows];
            row += rows;
            if rows == 0 {
                continue;
            }
            // Prompt scoring: row r (position chunk_start + r) predicts the next prompt token.
            if let Some(n) = s.prompt_logprobs {
                if chunk_start < s.prompt_len {
                    for (r, l) in my_rows.iter().enumerate() {
                        let next = chunk_start + r + 1;
                        if next < s.prompt_len {
                            s.prompt_lp.push(token_logprob(l, s.tokens[next], n));
                        }
                    }
                    if end == s.prompt_len {
                        let _ = s
                            .events
                            .send(Event::PromptLogprobs(std::mem::take(&mut s.prompt_lp)));
                    }
                }
            }
            if end < s.tokens.len() {
                continue; // more prompt to prefill
            }
            if s.max_tokens == 0 {
                let _ = s.events.send(Event::Finished {
                    reason: FinishReason::Length,
                    usage: Usage {
                        prompt_tokens: s.prompt_len,
                        completion_tokens: 0,
                        cached_tokens: 0,
                    },
                });
                done.push(s.id);
                continue;
            }
            let last = my_rows.last().expect("rows > 0");
            match s.decoder.step(&self.lm.tokenizer, last) {
                Ok(out) => {
                    M::add(&self.metrics.generation_tokens, 1);
                    s.tokens.push(out.token);
                    let _ = s.events.send(Event::Token {
                        token: out.token,
                        text: out.text,
                        logprob: out.logprob,
                    });
                    if let Some(reason) = out.finished {
                        let usage = Usage {
                            prompt_tokens: s.prompt_len,
                            completion_tokens: s.tokens.len() - s.prompt_len,
                            cached_tokens: 0,
                        };
                        let _ = s.events.send(Event::Finished { reason, usage });
                        done.push(s.id);
                    }
                }
                Err(e) => {
                    let _ = s.events.send(Event::Error(e.to_string()));
                    done.push(s.id);
                }
            }
        }
        self.finish_ids(&done);
    }

    fn finish_ids(&mut self, ids: &[u64]) {
        for id in ids {
            self.kv.remove(*id);
        }
        self.running.retain(|s| !ids.contains(&s.id));
    }
}
