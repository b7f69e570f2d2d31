//! The engine loop: admits requests, builds one varlen batch per step (prefill chunks and
//! decodes), runs the model, hands each sequence its logits.

use crate::metrics::EngineMetrics as M;
use crate::paged::PagedKv;
use crate::seq::{cache_partition, Pooled, PromptScoring, Seq};
use crate::step_cost::StepCost;
use crate::{EngineConfig, Event, Request};
use camelid_model::decode::{FinishReason, SequenceDecoder};
use camelid_model::{ForwardBatch, HostRows, LoadedModel, LogitsWanted};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A request on its way from a handle to the engine thread.
pub(crate) struct Submitted {
    pub(crate) req: Request,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// A later part of a client request whose earlier parts already ran (an embeddings
    /// request's next wave): shutdown lets it run, as it lets running sequences finish.
    pub(crate) continuing: bool,
    /// Set once any sequence queued with this one (the `n` choices of one client request)
    /// starts: shutdown then lets the rest run too, since the client is being answered.
    pub(crate) group_started: Arc<AtomicBool>,
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

/// Zeroes an engine's gauges if it unwinds: nothing runs, waits or holds a block any more
/// (they would keep what the last step set). A local of [`Engine::run`], it is dropped
/// before the engine and its receiver: by the time `is_running` says false.
struct ZeroGaugesOnPanic(Arc<M>);

impl Drop for ZeroGaugesOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for g in [&self.0.running, &self.0.waiting, &self.0.kv_blocks_used] {
                g.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// How far a shutdown has gone: set by the handles, read by the engine every step.
#[derive(Default)]
pub(crate) struct Shutdown {
    /// Requests not started are refused (SIGTERM).
    pub refuse_new: AtomicBool,
    /// Every request still in the engine ends now (the grace period is over).
    pub end_all: AtomicBool,
}

pub(crate) struct Engine {
    lm: LoadedModel,
    cfg: EngineConfig,
    rx: mpsc::UnboundedReceiver<Submitted>,
    /// Shared with the handles: `New` entries in `waiting` and in the channel.
    queued: Arc<AtomicUsize>,
    metrics: Arc<M>,
    stopping: Arc<Shutdown>,
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
    pub(crate) fn new(
        lm: LoadedModel,
        cfg: EngineConfig,
        rx: mpsc::UnboundedReceiver<Submitted>,
        queued: Arc<AtomicUsize>,
        metrics: Arc<M>,
        kv: PagedKv,
        stopping: Arc<Shutdown>,
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

    /// A step budget bounded by time needs the steps' costs: times a ladder of row counts
    /// before serving (see `calibrate`), where a stretch is set.
    pub(crate) fn calibrate(&mut self) {
        if self.cfg.max_step_stretch.is_some() {
            let max_rows = self.cfg.max_batch_tokens;
            crate::calibrate::calibrate(&self.lm, &mut self.kv, &mut self.cost, max_rows);
        }
    }

    pub(crate) fn run(mut self) {
        let _gauges = ZeroGaugesOnPanic(self.metrics.clone());
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.rx.blocking_recv() {
                    Some(s) => self.waiting.push_back(Waiting::New(s)),
                    None => return, // every handle dropped
                }
                // The first request runs before the rest of its burst gathers: a shutdown
                // meanwhile refuses only requests that have not started (this one's client
                // may already hold the first chunk of its stream).
                if !self.stopping.refuse_new.load(Ordering::SeqCst) {
                    self.admit();
                    self.gather_burst();
                }
            }
            while let Ok(s) = self.rx.try_recv() {
                self.waiting.push_back(Waiting::New(s));
            }
            if self.stopping.refuse_new.load(Ordering::SeqCst) {
                self.refuse_new();
            }
            if self.stopping.end_all.load(Ordering::SeqCst) {
                self.end_all();
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

    /// The engine was idle and one request came: takes the rest of its burst too, while they
    /// keep arriving (see [`EngineConfig::burst_window`]).
    fn gather_burst(&mut self) {
        let (window, quiet) = (self.cfg.burst_window, self.cfg.burst_quiet);
        if window.is_zero() {
            return;
        }
        let start = std::time::Instant::now();
        let (mut last, mut n) = (start, 1);
        while start.elapsed() < window {
            match self.rx.try_recv() {
                Ok(s) => {
                    self.waiting.push_back(Waiting::New(s));
                    (last, n) = (std::time::Instant::now(), n + 1);
                }
                Err(mpsc::error::TryRecvError::Empty) if last.elapsed() < quiet => {
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
                Err(_) => break,
            }
        }
        tracing::debug!(
            target: "camelid_engine::step",
            "a burst of {n} requests in {:.2} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    }

    /// Shutting down: requests that have not started are refused; preempted sequences (their
    /// clients have seen tokens), the continuing parts of started requests and the other
    /// choices of a request one of whose choices started stay to be finished.
    fn refuse_new(&mut self) {
        let queued = &self.queued;
        self.waiting.retain(|w| match w {
            Waiting::New(s) if !s.continuing && !s.group_started.load(Ordering::Acquire) => {
                queued.fetch_sub(1, Ordering::AcqRel);
                let _ = s
                    .events
                    .send(Event::Refused("the server is shutting down".into()));
                false
            }
            Waiting::New(_) | Waiting::Preempted(_) => true,
        });
    }

    /// The shutdown's grace period is over: every request still here, running or waiting,
    /// ends now with `Refused` (its client gets an error, not a cut connection) and its
    /// blocks go back.
    fn end_all(&mut self) {
        let why = "the server is shutting down and its grace period is over";
        for s in self.running.drain(..) {
            self.kv.free(s.id);
            let _ = s.events.send(Event::Refused(why.into()));
        }
        for w in self.waiting.drain(..) {
            let events = match w {
                Waiting::New(s) => {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    s.events
                }
                Waiting::Preempted(s) => s.events,
            };
            let _ = events.send(Event::Refused(why.into()));
        }
    }

    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_running {
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            let mut seq = match w {
                // Back once its first chunk's blocks can be had (or nothing else runs, when
                // it must try alone): taken at once, it would pin its cached prefix, find no
                // room beside the older sequences and preempt itself again every step.
                Waiting::Preempted(s) if !self.running.is_empty() && !self.room_for(&s) => {
                    self.waiting.push_front(Waiting::Preempted(s));
                    break;
                }
                Waiting::Preempted(s) => s,
                Waiting::New(s) => {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    if s.events.is_closed() {
                        M::add(&self.metrics.cancelled, 1);
                        continue;
                    }
                    s.group_started.store(true, Ordering::Release);
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
            seq.cached = self.kv.start(
                seq.id,
                if reuse { &seq.tokens } else { &[] },
                salt,
                seq.prompt_len,
            );
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

    /// Whether the pool can give a preempted sequence the blocks of its first chunk now
    /// (free and evictable blocks; its own cached prefix, if any, is among the evictable).
    fn room_for(&self, s: &Seq) -> bool {
        let chunk = s.tokens.len().min(self.cfg.max_batch_tokens.max(1));
        self.kv.free_blocks() >= chunk.div_ceil(self.cfg.block_size.max(1))
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
                let len = todo.min(budget).min(prefill_budget);
                // A lone prompt's last few tokens join its step rather than take one of
                // their own (`finish_prompt_within`), where the pool holds them. Alone: no
                // member yet (decodes go first, so none runs beside it).
                let finish = members.is_empty()
                    && todo - len <= self.cfg.finish_prompt_within
                    && self.kv.blocks_wanted(id, cached + todo) <= self.kv.free_blocks();
                if finish {
                    todo
                } else {
                    len
                }
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
            debug_assert!(
                is_prefill || len + draft.len() <= budget,
                "a decode past the budget"
            );
            budget = budget.saturating_sub(len + draft.len());
            if is_prefill {
                prefill_budget = prefill_budget.saturating_sub(len);
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
        // Only a block it could reuse (`blocks::roles_reuse`, as the prefix lookups).
        let roles = |q: &Seq| crate::blocks::prompt_part(bs, q.prompt_len, k);
        let mine = roles(s);
        let usable = |o: &Seq| crate::blocks::roles_reuse(bs, mine, roles(o));
        self.running.iter().enumerate().any(|(j, o)| {
            j != i
                && !preempted.contains(&j)
                && o.prefix_hashes.get(k) == Some(&h)
                && usable(o)
                && ((o.cached > start && o.cached < end) || (o.cached == start && j < i))
        })
    }

    /// Draft tokens (speculative decoding) for decode `i`, at most `room`: none when it is
    /// off (or for this model, see [`crate::EngineHandle::spawn`]) or the batch is too full for it,
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
        let step = M::get(&self.metrics.steps);
        if self
            .cfg
            .lose_logits_from_step
            .is_some_and(|from| step >= from)
        {
            self.logits.drop_rows();
        }
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
                // As below: without its rows (a failed device) the decoded position would be
                // marked computed with no token drawn for it, and the next step would take
                // it for an empty prompt chunk.
                if my_rows.is_empty() {
                    let _ = s.events.send(Event::Error("the logits were lost".into()));
                    done.push(s.id);
                    continue;
                }
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
            // Rows asked for and not read back (a failed device): the sequence ends with an
            // error, as below, before its positions count as computed (and their blocks as
            // cached for others); scoring nothing would end prompt log-probabilities short.
            if matches!(s.pooling, Pooled::Off) && rows > 0 && logits.range(row, rows).is_empty() {
                row += rows;
                let _ = s.events.send(Event::Error("the logits were lost".into()));
                done.push(s.id);
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
