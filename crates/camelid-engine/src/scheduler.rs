//! The engine loop: admits requests, builds one varlen batch per step (prefill chunks and
//! decodes), runs the model, hands each sequence its logits.

use crate::metrics::EngineMetrics as M;
use crate::paged::PagedKv;
use crate::step_cost::StepCost;
use crate::{EngineConfig, Event, Pooling, Request, SubmitError, Usage};
use camelid_model::config::ModelConfig;
use camelid_model::decode::sampling::{token_logprob, TokenLogprob};
use camelid_model::decode::{FinishReason, SequenceDecoder};
use camelid_model::text::tokenizer::Tokenizer;
use camelid_model::{
    ForwardBatch, GrammarCompiler, HostRows, LoadedModel, LogitsWanted, LoraAdapter, SharedLora,
};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

struct Submitted {
    req: Request,
    events: mpsc::UnboundedSender<Event>,
    /// A later part of a client request whose earlier parts already ran (an embeddings
    /// request's next wave): shutdown lets it run, as it lets running sequences finish.
    continuing: bool,
}

/// Cheap to clone; the engine thread stops when every handle is dropped.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Submitted>,
    /// Sequences submitted and not yet admitted (or dropped): the bounded waiting queue.
    queued: Arc<AtomicUsize>,
    max_waiting: usize,
    pub metrics: Arc<M>,
    tokenizer: Arc<Tokenizer>,
    grammar: Arc<GrammarCompiler>,
    context_length: usize,
    vocab_size: usize,
    /// Positions the whole KV pool holds: no single request may need more.
    kv_capacity: usize,
    /// Set by [`Self::stop_admitting`]; the engine thread reads it every step.
    stopping: Arc<AtomicBool>,
    /// The LoRA adapter this handle's requests run under ([`Self::with_lora`]).
    lora: Option<SharedLora>,
    /// The model's configuration, which an adapter must fit.
    model_config: Arc<ModelConfig>,
    /// Where the model's weights live (an adapter is read onto it).
    device: candle_core::Device,
}

impl EngineHandle {
    /// Starts the engine thread for `lm`.
    pub fn spawn(lm: LoadedModel, mut cfg: EngineConfig) -> Self {
        // Unbounded as a channel: `queued` bounds what may be in it and in the waiting queue.
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(M::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let num_blocks = cfg.num_blocks(&lm);
        let handle = Self {
            tx,
            queued: queued.clone(),
            max_waiting: cfg.max_waiting.max(1),
            metrics: metrics.clone(),
            tokenizer: Arc::new(lm.tokenizer.clone()),
            grammar: lm.grammar.clone(),
            context_length: lm.context_length,
            vocab_size: lm.model.config().vocab_size,
            kv_capacity: num_blocks * cfg.block_size,
            stopping: stopping.clone(),
            lora: None,
            model_config: Arc::new(lm.model.config().clone()),
            device: lm.model.device().clone(),
        };
        M::set(&metrics.kv_blocks_total, num_blocks as u64);
        let c = lm.model.config().clone();
        let kv = PagedKv::new(
            c.num_layers,
            c.num_kv_heads,
            c.head_dim,
            num_blocks,
            cfg.block_size,
            lm.model.dtype(),
            cfg.host_kv_dtype,
            lm.model.device(),
        )
        .expect("allocating the KV cache");
        tracing::info!(
            "{}: KV cache of {num_blocks} blocks x {} positions ({} MiB)",
            lm.name,
            cfg.block_size,
            cfg.kv_cache_mb
        );
        if cfg.speculative.is_some() && lm.model.config().rope_scaling.depends_on_length() {
            // A position's rotation depends on its chunk (dynamic NTK, LongRoPE): a draft
            // would change the bits of the positions it rides with.
            tracing::warn!(
                "{}: no speculative decoding: its rotary scaling depends on the run's length",
                lm.name
            );
            cfg.speculative = None;
        }
        if let Some(s) = cfg.speculative {
            tracing::info!(
                "{}: speculative decoding by prompt lookup: up to {} draft tokens after a \
                 repeated run of {} tokens{}",
                lm.name,
                s.tokens,
                if s.min_n == s.max_n {
                    s.max_n.to_string()
                } else {
                    format!("{} to {}", s.min_n, s.max_n)
                },
                s.max_batch
                    .map(|b| format!(", off above {b} running sequences"))
                    .unwrap_or_default()
            );
        }
        // The loop runs on a worker of the engine's own rayon pool: the forward's parallel
        // regions (several per layer) then fork and join among workers instead of waking the
        // pool from outside and sleeping on a latch each time (step_bench: one decode step
        // 10.8 -> 9.1 ms on 2 cores).
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name({
                let name = lm.name.clone();
                move |i| format!("engine-{name}-{i}")
            })
            .build()
            .expect("engine thread pool");
        let name = lm.name.clone();
        std::thread::Builder::new()
            .name(format!("engine-{name}"))
            .spawn(move || {
                // A panic unwinds the engine (dropping every request's sender, so each client
                // sees its request end unfinished) and the receiver (so `is_running` is false).
                let run = std::panic::AssertUnwindSafe(|| {
                    pool.install(move || {
                        Engine::new(lm, cfg, rx, queued, metrics, kv, stopping).run()
                    })
                });
                if let Err(p) = std::panic::catch_unwind(run) {
                    let why = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!("the engine of {name} stopped: it panicked: {why}");
                }
            })
            .expect("spawn engine thread");
        handle
    }

    /// The same engine, its requests run under the LoRA adapter `lora`: one base model in
    /// memory serves itself and each of its adapters, batched together. The adapter must have
    /// been read for this engine's model ([`camelid_model::LoraAdapter::load`]), else an error
    /// (a forward would fail every sequence of its step).
    pub fn with_lora(&self, lora: SharedLora) -> Result<Self, String> {
        if !lora.fits(&self.model_config) {
            return Err(format!(
                "LoRA adapter {} was read for a model of another shape",
                lora.name
            ));
        }
        Ok(Self {
            lora: Some(lora),
            ..self.clone()
        })
    }

    /// The model's configuration and device: what [`camelid_model::LoraAdapter::load`] reads
    /// an adapter for.
    pub fn model_config(&self) -> &ModelConfig {
        &self.model_config
    }
    pub fn device(&self) -> &candle_core::Device {
        &self.device
    }

    /// Whether `other` is a handle of the same engine (with or without an adapter).
    pub fn same_engine(&self, other: &Self) -> bool {
        self.tx.same_channel(&other.tx)
    }

    /// The LoRA adapter this handle's requests run under, if any.
    pub fn lora(&self) -> Option<&SharedLora> {
        self.lora.as_ref()
    }

    /// False once the engine thread has stopped (it panicked): nothing submitted will run.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// For shutdown: requests not yet started are refused ([`Event::Refused`]) at the next
    /// step, and so is anything submitted from now on; running sequences (preempted ones
    /// too: their clients have seen tokens) go on to their end.
    pub fn stop_admitting(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    /// The tokenizer, shared: cloning a `Tokenizer` itself copies its vocabulary, merges and
    /// JSON document (~40 ms and ~20 ms to drop for a 49k vocabulary), work a request must
    /// not do on the cores the engine runs on.
    pub fn shared_tokenizer(&self) -> Arc<Tokenizer> {
        self.tokenizer.clone()
    }
    /// Compiles structured-output grammars for this model (off the engine's thread: the
    /// caller's).
    pub fn grammar(&self) -> &Arc<GrammarCompiler> {
        &self.grammar
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
        let mut rxs = self.submit_all(vec![req])?;
        Ok(rxs.pop().expect("one receiver per request"))
    }

    /// Queues several requests (the choices of one client request) all or none: each is
    /// checked, then room for all of them is taken in the waiting queue, which counts
    /// sequences. A full queue is `QueueFull` and nothing is queued.
    pub fn submit_all(
        &self,
        reqs: Vec<Request>,
    ) -> Result<Vec<mpsc::UnboundedReceiver<Event>>, SubmitError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        self.enqueue(reqs, false)
    }

    /// [`Self::submit_all`] for the later parts of a client request whose first parts were
    /// taken before shutdown began (an embeddings request's next wave): taken and run during
    /// shutdown too, so an answer under way is not cut.
    pub fn submit_all_continuing(
        &self,
        reqs: Vec<Request>,
    ) -> Result<Vec<mpsc::UnboundedReceiver<Event>>, SubmitError> {
        self.enqueue(reqs, true)
    }

    /// Whether the waiting queue has room for `k` more sequences now.
    pub fn has_room(&self, k: usize) -> bool {
        self.queued.load(Ordering::Acquire) + k <= self.max_waiting
    }

    fn enqueue(
        &self,
        reqs: Vec<Request>,
        continuing: bool,
    ) -> Result<Vec<mpsc::UnboundedReceiver<Event>>, SubmitError> {
        for req in &reqs {
            self.check(req)?;
        }
        let k = reqs.len();
        if k > self.max_waiting {
            return Err(SubmitError::Invalid(format!(
                "{k} sequences are more than the engine's waiting queue holds ({})",
                self.max_waiting
            )));
        }
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + k <= self.max_waiting).then_some(q + k)
            })
            .map_err(|_| SubmitError::QueueFull)?;
        let mut rxs = Vec::with_capacity(k);
        for (i, mut req) in reqs.into_iter().enumerate() {
            if self.lora.is_some() {
                req.lora = self.lora.clone();
            }
            let (etx, erx) = mpsc::unbounded_channel();
            let s = Submitted {
                req,
                events: etx,
                continuing,
            };
            if self.tx.send(s).is_err() {
                // Those not sent never reach the engine: give their room back.
                self.queued.fetch_sub(k - i, Ordering::AcqRel);
                return Err(SubmitError::Stopped);
            }
            rxs.push(erx);
        }
        self.metrics.waiting.fetch_add(k as u64, Ordering::Relaxed);
        Ok(rxs)
    }

    /// Whether the engine can serve `req` at all.
    fn check(&self, req: &Request) -> Result<(), SubmitError> {
        if req.prompt.is_empty() {
            return Err(SubmitError::Invalid("the prompt is empty".into()));
        }
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(SubmitError::Invalid(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.vocab_size
            )));
        }
        if req.embed.is_some() && (req.params.max_tokens > 0 || req.prompt_logprobs.is_some()) {
            return Err(SubmitError::Invalid(
                "an embedding request generates nothing and scores no prompt".into(),
            ));
        }
        if req.prompt.len() + req.params.max_tokens > self.kv_capacity {
            return Err(SubmitError::Invalid(format!(
                "prompt ({} tokens) + max_tokens ({}) needs more KV memory than the whole cache holds ({} positions)",
                req.prompt.len(),
                req.params.max_tokens,
                self.kv_capacity
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
        Ok(())
    }
}

/// The prefix cache's partition of a request: its cache salt, and its LoRA adapter (an
/// adapter's keys and values differ from the base model's for the same tokens). `None` for
/// the base model without a salt; the encoding is injective, so no salt can name another
/// adapter's partition.
fn cache_partition(lora: Option<&LoraAdapter>, salt: Option<&str>) -> Option<Arc<str>> {
    match (lora, salt) {
        (None, None) => None,
        (None, Some(s)) => Some(Arc::from(format!("salt:{s}"))),
        (Some(a), None) => Some(Arc::from(format!("lora{}", a.id()))),
        (Some(a), Some(s)) => Some(Arc::from(format!("lora{}:{s}", a.id()))),
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
    /// Prompt tokens found in the prefix cache at first admission (or picked up from a
    /// sequence that computed them meanwhile).
    cached_prompt: Option<usize>,
    /// Preempted once: what it picks up from the cache now, it had computed itself before,
    /// so `cached_prompt` no longer grows.
    preempted: bool,
    /// Chain hashes of the full blocks a prefix lookup could reuse (empty when this sequence
    /// does not use the prefix cache): sequences admitted together with a common prefix
    /// compute it once (see [`Engine::waits_for_shared_block`]).
    prefix_hashes: Vec<u64>,
    /// The prefix cache's partition: the request's cache salt and its LoRA adapter
    /// ([`cache_partition`]).
    cache_salt: Option<Arc<str>>,
    lora: Option<SharedLora>,
    prompt_scoring: PromptScoring,
    pooling: Pooled,
    max_tokens: usize,
    /// Speculative decoding: the most draft tokens its next step may verify (within the
    /// configured count): one more than twice what its last draft had accepted, so that
    /// text that stops repeating itself costs a row a step, not a whole draft.
    draft_cap: usize,
}

/// An embedding request's pooled hidden state, gathered as its prompt's chunks run.
enum Pooled {
    /// Not an embedding request.
    Off,
    /// The last prompt position's row, taken when the prompt ends.
    Last,
    /// The sum of the rows of positions `0..rows`; a preempted sequence keeps it and adds
    /// only positions past `rows` when it recomputes.
    Mean { sum: Vec<f64>, rows: usize },
}

impl Pooled {
    fn new(p: Option<Pooling>) -> Self {
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
enum PromptScoring {
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
    fn scores_prompt_in(&self, from: usize, to: usize) -> bool {
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
    fn score_prompt(&mut self, from: usize, rows: &[f32], width: usize, end: usize) {
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
    fn pool(&mut self, from: usize, rows: &[Vec<f32>], end: usize) -> Option<Vec<f32>> {
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
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.tokens.len() - self.prompt_len,
            cached_tokens: self.cached_prompt.unwrap_or(0),
        }
    }

    /// Positions `..end` are computed: their full blocks go into the prefix cache, and blocks
    /// no later query attends go back to the pool (only where every layer keeps to a
    /// `window`: a global layer reads every key).
    fn computed(&mut self, kv: &mut PagedKv, window: Option<usize>, end: usize) {
        self.cached = end;
        kv.commit(self.id, &self.tokens, end);
        if let Some(w) = window {
            kv.release_before(self.id, (end + 1).saturating_sub(w));
        }
    }

    /// Draws the next token from its logits and sends it; true when the sequence has ended
    /// (finished, or failed: the event says which).
    fn sample(&mut self, tokenizer: &Tokenizer, metrics: &M, logits: &[f32]) -> bool {
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

/// Waiting for a batch slot: new requests, and preempted sequences to recompute.
#[allow(clippy::large_enum_variant)] // a short queue; boxing buys nothing
enum Waiting {
    New(Submitted),
    Preempted(Seq),
}

/// A running sequence's part of a step's batch.
struct Member {
    /// Index into `Engine::running`.
    i: usize,
    /// Rows of logits (or hidden states) it gets back.
    rows: usize,
    /// The chunk's end: the sequence's computed positions once the step ran, drafted ones
    /// included.
    end: usize,
    /// Draft tokens after the decoded one (speculative decoding), to verify.
    draft: Vec<u32>,
}

struct Engine {
    lm: LoadedModel,
    cfg: EngineConfig,
    rx: mpsc::UnboundedReceiver<Submitted>,
    /// Shared with the handles: `New` entries in `waiting` and in the channel.
    queued: Arc<AtomicUsize>,
    metrics: Arc<M>,
    stopping: Arc<AtomicBool>,
    waiting: VecDeque<Waiting>,
    /// In admission order: the last is the first to be preempted.
    running: Vec<Seq>,
    kv: PagedKv,
    next_id: u64,
    cost: StepCost,
    /// The last step's logit rows on the host (a buffer kept across steps).
    logits: HostRows,
    /// Set when a step ran nothing because its prompts all waited for shared blocks (their
    /// leaders could not run, e.g. the pool was short): the next step does not wait, so the
    /// engine always progresses.
    skip_shared_waits: bool,
}

impl Engine {
    fn new(
        lm: LoadedModel,
        cfg: EngineConfig,
        rx: mpsc::UnboundedReceiver<Submitted>,
        queued: Arc<AtomicUsize>,
        metrics: Arc<M>,
        kv: PagedKv,
        stopping: Arc<AtomicBool>,
    ) -> Self {
        Self {
            lm,
            cfg,
            rx,
            queued,
            metrics,
            stopping,
            waiting: VecDeque::new(),
            running: vec![],
            kv,
            next_id: 0,
            cost: StepCost::default(),
            logits: HostRows::default(),
            skip_shared_waits: false,
        }
    }

    fn run(mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.rx.blocking_recv() {
                    Some(s) => self.waiting.push_back(Waiting::New(s)),
                    None => return, // every handle dropped
                }
            }
            while let Ok(s) = self.rx.try_recv() {
                self.waiting.push_back(Waiting::New(s));
            }
            if self.stopping.load(Ordering::SeqCst) {
                self.refuse_new();
            }
            self.admit();
            self.drop_cancelled();
            if !self.running.is_empty() {
                self.step();
            }
            M::set(&self.metrics.running, self.running.len() as u64);
            M::set(&self.metrics.waiting, self.waiting.len() as u64);
            M::set(&self.metrics.kv_blocks_used, self.kv.pool.used() as u64);
            M::set(&self.metrics.prefix_cache_hits, self.kv.pool.hits);
            M::set(&self.metrics.prefix_cache_lookups, self.kv.pool.lookups);
        }
    }

    /// Shutting down: requests that have not started are refused; preempted sequences (their
    /// clients have seen tokens) and the continuing parts of started requests stay to be
    /// finished.
    fn refuse_new(&mut self) {
        let queued = &self.queued;
        self.waiting.retain(|w| match w {
            Waiting::New(s) if !s.continuing => {
                queued.fetch_sub(1, Ordering::AcqRel);
                let _ = s
                    .events
                    .send(Event::Refused("the server is shutting down".into()));
                false
            }
            Waiting::New(_) | Waiting::Preempted(_) => true,
        });
    }

    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_running {
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            let mut seq = match w {
                Waiting::Preempted(s) => s,
                Waiting::New(s) => {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    if s.events.is_closed() {
                        M::add(&self.metrics.cancelled, 1);
                        continue;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    let prompt = s.req.prompt.clone();
                    M::add(&self.metrics.prompt_tokens, prompt.len() as u64);
                    Seq {
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
                        cached_prompt: None,
                        preempted: false,
                        prefix_hashes: vec![],
                        cache_salt: cache_partition(
                            s.req.lora.as_deref(),
                            s.req.cache_salt.as_deref(),
                        ),
                        lora: s.req.lora.clone(),
                        prompt_scoring: match s.req.prompt_logprobs {
                            Some(top) => PromptScoring::Collecting { top, got: vec![] },
                            None => PromptScoring::Off,
                        },
                        pooling: Pooled::new(s.req.embed),
                        max_tokens: s.req.params.max_tokens,
                        draft_cap: usize::MAX,
                    }
                }
            };
            // Prompt scoring needs every position's logits and mean pooling every position's
            // hidden state, so neither skips a prefix.
            let reuse = self.cfg.prefix_caching
                && matches!(seq.prompt_scoring, PromptScoring::Off | PromptScoring::Sent)
                && !matches!(seq.pooling, Pooled::Mean { .. });
            let salt = seq.cache_salt.clone();
            seq.cached = self
                .kv
                .start(seq.id, if reuse { &seq.tokens } else { &[] }, salt);
            seq.prefix_hashes = if reuse {
                self.kv
                    .pool
                    .prefix_hashes(&seq.tokens, seq.cache_salt.as_deref())
            } else {
                vec![]
            };
            if seq.cached_prompt.is_none() {
                seq.cached_prompt = Some(seq.cached.min(seq.prompt_len));
                M::add(&self.metrics.cached_prompt_tokens, seq.cached as u64);
            }
            self.running.push(seq);
        }
    }

    fn drop_cancelled(&mut self) {
        let kv = &mut self.kv;
        let metrics = &self.metrics;
        self.running.retain(|s| {
            let keep = !s.events.is_closed();
            if !keep {
                kv.free(s.id);
                M::add(&metrics.cancelled, 1);
            }
            keep
        });
        let queued = &self.queued;
        self.waiting.retain(|w| match w {
            Waiting::Preempted(s) if s.events.is_closed() => {
                M::add(&metrics.cancelled, 1);
                false
            }
            // A cancelled request gives its room in the queue back at once.
            Waiting::New(s) if s.events.is_closed() => {
                queued.fetch_sub(1, Ordering::AcqRel);
                M::add(&metrics.cancelled, 1);
                false
            }
            _ => true,
        });
    }

    /// One forward over every running sequence that fits.
    fn step(&mut self) {
        let step = M::get(&self.metrics.steps) + 1;
        if self.cfg.panic_at_step == Some(step) {
            panic!("fault injected by EngineConfig::panic_at_step at step {step}");
        }
        let mut batch = ForwardBatch::default();
        let mut budget = self.cfg.max_batch_tokens.max(1);
        let mut members: Vec<Member> = vec![];
        let mut preempted: Vec<usize> = vec![];
        let mut failed: Vec<(usize, String)> = vec![];
        // Decodes first: they keep streams flowing; prefill takes what budget is left.
        let (order, decodes) = {
            let (mut dec, mut pre): (Vec<usize>, Vec<usize>) = (0..self.running.len())
                .partition(|&i| self.running[i].tokens.len() - self.running[i].cached == 1);
            let decodes = dec.len();
            dec.append(&mut pre);
            (dec, decodes)
        };
        let mut prefill_budget = if decodes > 0 {
            self.prefill_budget(decodes)
        } else {
            usize::MAX
        };
        // What the prompts would take of this step: draft tokens leave it to them.
        let prefill_share = order[decodes..]
            .iter()
            .map(|&i| self.running[i].tokens.len() - self.running[i].cached)
            .sum::<usize>()
            .min(prefill_budget);
        let (mut batch_decodes, mut draft_rows) = (0, 0);
        let mut waited = false;
        let may_wait = !std::mem::take(&mut self.skip_shared_waits);
        for (n, i) in order.into_iter().enumerate() {
            let is_prefill = n >= decodes;
            if budget == 0 || (is_prefill && prefill_budget == 0) {
                break;
            }
            if preempted.contains(&i) {
                continue;
            }
            if is_prefill {
                self.pick_up_shared_blocks(i);
                if may_wait && self.waits_for_shared_block(i, &preempted) {
                    waited = true;
                    continue;
                }
            }
            let (id, cached, todo) = {
                let s = &self.running[i];
                (s.id, s.cached, s.tokens.len() - s.cached)
            };
            let len = if is_prefill {
                todo.min(budget).min(prefill_budget)
            } else {
                todo.min(budget)
            };
            // A decode may take draft tokens along (speculative decoding), in budget and
            // blocks that no later decode or this step's prompts need: drafts never preempt
            // and never hold a prompt back.
            let later = decodes.saturating_sub(n + 1);
            let mut draft = if is_prefill {
                vec![]
            } else {
                self.draft_for(i, (budget - len).saturating_sub(later + prefill_share))
            };
            if !draft.is_empty() {
                let bs = self.cfg.block_size.max(1);
                let spare = self.kv.free_blocks().saturating_sub(
                    later + prefill_share.div_ceil(bs) + self.running.len() - decodes,
                );
                if self.kv.blocks_wanted(id, cached + len + draft.len()) > spare
                    || !self.kv.reserve(id, cached + len + draft.len())
                {
                    draft.clear();
                }
            }
            // Make room by preempting newer sequences not yet in this batch (the newest
            // first). Decodes already in the batch are not victims: a prefill that still does
            // not fit preempts itself and comes back behind them (vLLM v1 un-schedules them
            // instead); they finish, so the wait is bounded and nothing deadlocks.
            let mut fits = self.kv.reserve(id, cached + len);
            while !fits {
                let victim = (i + 1..self.running.len())
                    .rev()
                    .find(|&j| !preempted.contains(&j) && !members.iter().any(|m| m.i == j));
                let Some(j) = victim else { break };
                self.kv.free(self.running[j].id);
                preempted.push(j);
                M::add(&self.metrics.preemptions, 1);
                fits = self.kv.reserve(id, cached + len);
            }
            if !fits {
                let alone = members.is_empty()
                    && (0..self.running.len()).all(|j| j == i || preempted.contains(&j));
                if alone {
                    failed.push((i, "the KV cache cannot hold this sequence".into()));
                } else {
                    // Give its blocks to the older sequences and recompute it later.
                    self.kv.free(id);
                    preempted.push(i);
                    M::add(&self.metrics.preemptions, 1);
                }
                continue;
            }
            let s = &self.running[i];
            let end = cached + len;
            let completes = end == s.tokens.len();
            let want = if !draft.is_empty()
                || s.scores_prompt_in(cached, end)
                || matches!(s.pooling, Pooled::Mean { .. })
            {
                LogitsWanted::All
            } else if completes {
                LogitsWanted::Last
            } else {
                LogitsWanted::None
            };
            // Drafted positions are generated ones: each attends as the decode it stands in
            // for (`prompt_len` marks where generation starts), so its logits are the bits a
            // one-token step would give.
            let tokens: Cow<[u32]> = if draft.is_empty() {
                Cow::Borrowed(&s.tokens[cached..end])
            } else {
                Cow::Owned([&s.tokens[cached..end], &draft[..]].concat())
            };
            if matches!(s.pooling, Pooled::Off) {
                batch.push_with_prompt(s.id, cached, &tokens, want, s.prompt_len);
            } else {
                batch.push_hidden(s.id, cached, &tokens, want, s.prompt_len);
            }
            batch.adapt_last(s.lora.clone());
            let rows = batch.chunks.last().expect("just pushed").rows();
            budget -= len + draft.len();
            if is_prefill {
                prefill_budget -= len;
            } else {
                batch_decodes += 1;
                draft_rows += draft.len();
            }
            members.push(Member {
                i,
                rows,
                end: end + draft.len(),
                draft,
            });
        }
        self.skip_shared_waits = waited && members.is_empty();
        let mut done: Vec<u64> = failed
            .iter()
            .map(|(i, e)| {
                let _ = self.running[*i].events.send(Event::Error(e.clone()));
                self.running[*i].id
            })
            .collect();
        if !members.is_empty() {
            let started = std::time::Instant::now();
            // A drafted position costs what a decode does (a row through every layer, decode
            // attention), and is counted as one.
            let prefill = batch.tokens.len() - batch_decodes - draft_rows;
            let batch_decodes = batch_decodes + draft_rows;
            if batch_decodes > 0 {
                M::max(
                    &self.metrics.max_prefill_tokens_with_decodes,
                    prefill as u64,
                );
            }
            M::max(&self.metrics.kv_blocks_peak, self.kv.pool.used() as u64);
            let forward = self.forward_and_sample(batch, members, &mut done);
            let secs = started.elapsed().as_secs_f64();
            self.metrics.step_seconds.observe(secs);
            let ms = secs * 1e3;
            self.cost.observe(batch_decodes + prefill, ms);
            // RUST_LOG=camelid_engine::step=debug traces every step (for scheduling studies).
            tracing::debug!(
                target: "camelid_engine::step",
                decodes = batch_decodes,
                prefill,
                ms,
                // The forward with its logits on the host; the rest is sampling and sending.
                forward_ms = forward.as_secs_f64() * 1e3,
            );
        }
        // Preempted sequences wait at the front and recompute their KV later.
        preempted.sort_unstable();
        for j in preempted.into_iter().rev() {
            let mut s = self.running.remove(j);
            s.cached = 0;
            s.preempted = true;
            self.waiting.push_front(Waiting::Preempted(s));
        }
        self.finish_ids(&done);
    }

    /// Takes over the blocks of this sequence's prompt that another sequence has computed and
    /// cached since it was admitted (while it waited, see [`Self::waits_for_shared_block`]).
    fn pick_up_shared_blocks(&mut self, i: usize) {
        let s = &mut self.running[i];
        if s.prefix_hashes.is_empty() {
            return;
        }
        let now = self.kv.extend_prefix(s.id, &s.tokens, s.cached);
        if now > s.cached {
            // Counted as this request's cached prompt while it has computed nothing itself.
            let first_run = !s.preempted;
            if let Some(c) = s
                .cached_prompt
                .as_mut()
                .filter(|c| first_run && **c == s.cached)
            {
                let more = now.min(s.prompt_len) - *c;
                *c += more;
                M::add(&self.metrics.cached_prompt_tokens, more as u64);
            }
            s.cached = now;
        }
    }

    /// Whether sequence `i` should leave its next prompt block to another running sequence
    /// that is computing the same block (the same chain hash: the same tokens from position
    /// 0): the n choices of one request, or requests with a common system prompt, admitted
    /// together. The one furthest into the block computes it (ties: the earlier admitted),
    /// the others wait a step and then pick it up from the prefix cache — a common prefix is
    /// computed once, and each sequence computes only its own tail (at most a block and the
    /// last token's; shared blocks are full, so they are never written again). The order
    /// (further in, then earlier) is strict, so no two sequences wait for each other.
    fn waits_for_shared_block(&self, i: usize, preempted: &[usize]) -> bool {
        let bs = self.cfg.block_size.max(1);
        let s = &self.running[i];
        if !s.cached.is_multiple_of(bs) {
            return false;
        }
        let k = s.cached / bs;
        let Some(&h) = s.prefix_hashes.get(k) else {
            return false;
        };
        let (start, end) = (k * bs, (k + 1) * bs);
        self.running.iter().enumerate().any(|(j, o)| {
            j != i
                && !preempted.contains(&j)
                && o.prefix_hashes.get(k) == Some(&h)
                && ((o.cached > start && o.cached < end) || (o.cached == start && j < i))
        })
    }

    /// Draft tokens (speculative decoding) for decode `i`, at most `room`: none when it is
    /// off (or for this model, see [`EngineHandle::spawn`]) or the batch is too full for it,
    /// before the sequence's first generated token (its last prompt position may still score
    /// the prompt), and never past `max_tokens` or the context (a step yields a token more
    /// than its draft).
    fn draft_for(&self, i: usize, room: usize) -> Vec<u32> {
        let Some(spec) = self
            .cfg
            .speculative
            .filter(|c| c.drafts_at(self.running.len()))
        else {
            return vec![];
        };
        let s = &self.running[i];
        if s.tokens.len() <= s.prompt_len {
            return vec![];
        }
        let generated = s.tokens.len() - s.prompt_len;
        let room = room
            .min(s.draft_cap)
            .min(s.max_tokens.saturating_sub(generated + 1))
            .min(self.lm.context_length.saturating_sub(s.tokens.len() + 1));
        spec.propose(&s.tokens, room)
    }

    /// Prefill tokens a step carrying `decodes` decodes may add: the token cap, and within it
    /// the time bound where one is set and the costs are known yet. At least one token, so
    /// that prompts always progress; no more floor than that, or the bound would not hold
    /// (a block of 16 prompt tokens costs as much as the 8-decode step it rides in, on 2 cores).
    fn prefill_budget(&self, decodes: usize) -> usize {
        let cap = self.cfg.max_prefill_tokens_while_decoding.max(1);
        let Some(stretch) = self.cfg.max_step_stretch else {
            return cap;
        };
        self.cost
            .prefill_tokens(
                decodes,
                self.running.len(),
                stretch,
                self.cfg.lone_stream_gaps,
                cap,
            )
            .map_or(cap, |n| n.max(1))
    }

    /// Runs the step's forward, then samples and sends each member's token; returns how long
    /// the forward took (logits on the host included).
    fn forward_and_sample(
        &mut self,
        batch: ForwardBatch,
        members: Vec<Member>,
        done: &mut Vec<u64>,
    ) -> std::time::Duration {
        let started = std::time::Instant::now();
        M::add(&self.metrics.steps, 1);
        M::add(&self.metrics.batched_sequences, members.len() as u64);
        M::add(&self.metrics.batched_tokens, batch.tokens.len() as u64);
        let logits = &mut self.logits;
        let out = self
            .lm
            .model
            .forward_output(&batch, &mut self.kv)
            .and_then(|o| {
                let hidden = match o.hidden {
                    Some(h) => h.to_vec2::<f32>()?,
                    None => vec![],
                };
                logits.load(&o.logits)?;
                Ok(hidden)
            });
        let forward = started.elapsed();
        let logits = &self.logits;
        let width = logits.width();
        let hidden = match out {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("forward failed: {e}");
                for m in &members {
                    let s = &self.running[m.i];
                    let _ = s
                        .events
                        .send(Event::Error(format!("model forward failed: {e}")));
                    done.push(s.id);
                }
                return forward;
            }
        };
        let (mut row, mut hidden_row) = (0, 0);
        let window = self.lm.model.config().features.kv_window();
        for Member {
            i,
            rows,
            end,
            draft,
        } in members
        {
            let s = &mut self.running[i];
            let chunk_start = s.cached;
            if !draft.is_empty() {
                let my_rows = logits.range(row, rows);
                row += rows;
                // Row j is the distribution after the decoded token and `draft[..j]`: sample
                // each in turn, the same draws as one token a step, while the token drawn is
                // the draft's; the positions of the drafts kept are computed.
                let (mut valid, mut checked) = (chunk_start + 1, 0);
                for (j, l) in my_rows.chunks_exact(width).enumerate() {
                    if s.sample(&self.lm.tokenizer, &self.metrics, l) {
                        done.push(s.id);
                        break;
                    }
                    let Some(d) = draft.get(j) else { break };
                    checked += 1;
                    if Some(d) != s.tokens.last() {
                        break;
                    }
                    valid += 1;
                }
                let accepted = valid - chunk_start - 1;
                s.draft_cap = 2 * accepted + 1;
                M::add(&self.metrics.spec_draft_tokens, checked as u64);
                M::add(&self.metrics.spec_accepted_tokens, accepted as u64);
                s.computed(&mut self.kv, window, valid);
                // The blocks taken for rejected positions go back (the next step writes
                // position `valid`).
                self.kv.truncate(s.id, valid + 1);
                continue;
            }
            s.computed(&mut self.kv, window, end);
            if !matches!(s.pooling, Pooled::Off) {
                let my_rows = &hidden[hidden_row..hidden_row + rows];
                hidden_row += rows;
                if let Some(v) = s.pool(chunk_start, my_rows, end) {
                    let _ = s.events.send(Event::Embedding(v));
                    let _ = s.events.send(Event::Finished {
                        reason: FinishReason::Stop,
                        usage: s.usage(),
                        stop_reason: None,
                    });
                    done.push(s.id);
                }
                continue;
            }
            let my_rows = logits.range(row, rows);
            row += rows;
            // With a row per position (all rows, or a one-token chunk), row r is position
            // chunk_start + r.
            if rows == end - chunk_start {
                s.score_prompt(chunk_start, my_rows, width, end);
            } else {
                s.score_prompt(chunk_start, &[], width, end);
            }
            if rows == 0 {
                continue;
            }
            if end < s.tokens.len() {
                continue; // more prompt to prefill
            }
            if s.max_tokens == 0 {
                let _ = s.events.send(Event::Finished {
                    reason: FinishReason::Length,
                    usage: s.usage(),
                    stop_reason: None,
                });
                done.push(s.id);
                continue;
            }
            // Always there, unless the rows could not be read back (a failed device).
            let Some(last) = my_rows.chunks_exact(width).last() else {
                let _ = s.events.send(Event::Error("the logits were lost".into()));
                done.push(s.id);
                continue;
            };
            if s.sample(&self.lm.tokenizer, &self.metrics, last) {
                done.push(s.id);
            }
        }
        forward
    }

    fn finish_ids(&mut self, ids: &[u64]) {
        for id in ids {
            self.kv.free(*id);
        }
        self.running.retain(|s| !ids.contains(&s.id));
    }
}
