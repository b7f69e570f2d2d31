//! The engine's handle, what the server holds: it starts the engine thread on a loaded model,
//! checks a request against the model's limits, and queues it (the queue bounded in
//! sequences, not requests).

use crate::metrics::EngineMetrics as M;
use crate::paged::PagedKv;
use crate::scheduler::{Engine, Shutdown, Submitted};
use crate::{EngineConfig, Event, Request, SubmitError};
use camelid_model::config::ModelConfig;
use camelid_model::text::tokenizer::Tokenizer;
use camelid_model::{GrammarCompiler, LoadedModel, SharedLora};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

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
    /// Set by [`Self::stop_admitting`] and [`Self::end_all`]; the engine thread reads it
    /// every step.
    stopping: Arc<Shutdown>,
    /// The LoRA adapter this handle's requests run under ([`Self::with_lora`]).
    lora: Option<SharedLora>,
    /// The model's configuration, which an adapter must fit.
    model_config: Arc<ModelConfig>,
    /// Where the model's weights live (an adapter is read onto it).
    device: candle_core::Device,
}

impl EngineHandle {
    /// Starts the engine thread for `lm`.
    pub fn spawn(lm: LoadedModel, cfg: EngineConfig) -> Self {
        // Unbounded as a channel: `queued` bounds what may be in it and in the waiting queue.
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(M::default());
        let stopping = Arc::new(Shutdown::default());
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
        let gauges = metrics.clone();
        // The handle is returned (and the server lists the model) once the engine has timed
        // its steps: a request that came in before would wait unstarted, and be refused by a
        // shutdown as if the server were busy.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name(format!("engine-{name}"))
            .spawn(move || {
                // A panic unwinds the engine (dropping every request's sender, so each client
                // sees its request end unfinished) and the receiver (so `is_running` is false).
                let run = std::panic::AssertUnwindSafe(|| {
                    pool.install(move || {
                        let mut engine = Engine::new(lm, cfg, rx, queued, metrics, kv, stopping);
                        engine.calibrate();
                        drop(ready_tx);
                        engine.run()
                    })
                });
                if let Err(p) = std::panic::catch_unwind(run) {
                    let why = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!("the engine of {name} stopped: it panicked: {why}");
                    // Again, now that the receiver is gone: a request sent between the
                    // zeroing in `Engine::run` and then counted itself waiting.
                    M::set(&gauges.waiting, 0);
                }
            })
            .expect("spawn engine thread");
        // Err once the sender is dropped: ready, or the engine panicked (`is_running` says).
        let _ = ready_rx.recv();
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
        self.stopping.refuse_new.store(true, Ordering::SeqCst);
    }

    /// For the end of a shutdown's grace period: [`Self::stop_admitting`], and every request
    /// still in the engine, running or not, ends with [`Event::Refused`] at the next step.
    pub fn end_all(&self) {
        self.stop_admitting();
        self.stopping.end_all.store(true, Ordering::SeqCst);
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
        if self.stopping.refuse_new.load(Ordering::SeqCst) {
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
        let group_started = Arc::new(AtomicBool::new(false));
        // Counted before the engine can see them: it sets the gauge from its own queue after
        // each step, and a count added after the send could land after the engine's last
        // set (the request already done) and stay, an idle engine showing a waiting request.
        self.metrics.waiting.fetch_add(k as u64, Ordering::Relaxed);
        for (i, mut req) in reqs.into_iter().enumerate() {
            if self.lora.is_some() {
                req.lora = self.lora.clone();
            }
            let (etx, erx) = mpsc::unbounded_channel();
            let s = Submitted {
                req,
                events: etx,
                continuing,
                group_started: group_started.clone(),
            };
            if self.tx.send(s).is_err() {
                // Those not sent never reach the engine: give their room back.
                self.queued.fetch_sub(k - i, Ordering::AcqRel);
                let unsent = (k - i) as u64;
                let _ =
                    self.metrics
                        .waiting
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                            Some(w.saturating_sub(unsent))
                        });
                return Err(SubmitError::Stopped);
            }
            rxs.push(erx);
        }
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
