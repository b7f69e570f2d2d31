//! Decode steps as CUDA graphs. A step whose every chunk is one token wanting its logits
//! (the steady state of serving) is padded to a bucket of rows and of context, and replayed
//! from a graph captured the first time that bucket is seen: a layer's ~15 kernels go in one
//! launch with the rest of the step instead of one launch each (`camelid_kernels::cuda_graph`).
//!
//! A graph reads its inputs from tensors it owns (token ids and the kernels' metadata,
//! [`HostMeta`] padded), written before each launch, and writes logits into one `(rows,
//! vocab)` buffer that every graph shares; the step's rows are copied out of it. Padding rows
//! write no key and their logits are never read. The KV cache's tensors are baked into the
//! graphs, which hold clones of them: graphs for another cache replace them.
//! `CAMELID_CUDA_GRAPHS=0` (or [`Llama::set_cuda_graphs`]) turns graphs off; a failed
//! capture turns them off for the model (logged; until `set_cuda_graphs(true)`) and the step
//! runs eagerly. Past 64 graphs the least recently replayed is dropped.

use super::cuda::{DeviceBatch, HostMeta};
use super::tensor;
use crate::batch::{ForwardBatch, ForwardOutput, LogitsWanted};
use crate::error::Result;
use crate::kv::DevicePaged;
use crate::models::llama::Llama;
use camelid_kernels::cuda::PARTITION;
use camelid_kernels::cuda_graph::{self, write_host, Graph};
use candle_core::{DType, Tensor, TensorId};
use std::collections::HashMap;

/// The most rows a decode graph takes; larger steps run eagerly (vLLM captures up to 512).
pub const MAX_ROWS: usize = 256;
/// The most attention splits (of `PARTITION` positions each) a graph is captured for:
/// decodes past 32 768 positions run eagerly.
const MAX_SPLITS: usize = 64;
/// Graphs a model keeps; past this the least recently replayed one is dropped.
const MAX_GRAPHS: usize = 64;
/// Rows of the shared logits buffer when it is first made (it grows to [`MAX_ROWS`]; each
/// growth drops the graphs, which write into the old one).
const FIRST_LOGITS_ROWS: usize = 64;

/// A model's decode graphs and what they share.
pub(crate) struct DecodeGraphs {
    on: bool,
    /// Why a capture failed, if one did: graphs are off from then on.
    failed: Option<String>,
    graphs: HashMap<Key, DecodeGraph>,
    /// `(rows, vocab)` f32, every graph's logits.
    logits: Option<Tensor>,
    /// Whether the model has candle-quantized matmuls (no graphs then), once looked at.
    quantized: Option<bool>,
    /// Steps run as graphs; also each graph's last use, for eviction.
    launches: u64,
}

/// A graph's shape: rows, attention splits (its context bucket), and the KV cache it writes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    rows: usize,
    splits: usize,
    cache: TensorId,
}

struct DecodeGraph {
    graph: Graph,
    batch: DeviceBatch,
    tokens: Tensor,
    /// `launches` at its last replay.
    last_used: u64,
}

/// What a model's decode graphs have done.
#[derive(Debug, Clone, Default)]
pub struct CudaGraphStats {
    /// Graphs held now.
    pub captured: usize,
    /// Steps run as graphs.
    pub launches: u64,
    /// Why capturing failed (graphs are then off).
    pub failed: Option<String>,
}

impl Default for DecodeGraphs {
    fn default() -> Self {
        Self {
            on: std::env::var("CAMELID_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            failed: None,
            graphs: HashMap::new(),
            logits: None,
            quantized: None,
            launches: 0,
        }
    }
}

impl DecodeGraphs {
    /// Drops every graph (and the buffers they write), after the stream has run them.
    fn clear(&mut self, dev: &candle_core::Device) -> Result<()> {
        if !self.graphs.is_empty() {
            dev.synchronize()?;
        }
        self.graphs.clear();
        self.logits = None;
        Ok(())
    }
}

impl Llama {
    /// Turns decode graphs on or off for this model (on unless `CAMELID_CUDA_GRAPHS=0`);
    /// off drops the graphs held.
    pub fn set_cuda_graphs(&self, on: bool) -> Result<()> {
        with_graphs(self, |g| {
            g.on = on;
            // On again: a capture that failed before may be tried again.
            g.failed = None;
            if !on {
                g.clear(&self.device)?;
            }
            Ok(())
        })
    }

    pub fn cuda_graph_stats(&self) -> CudaGraphStats {
        with_graphs(self, |g| CudaGraphStats {
            captured: g.graphs.len(),
            launches: g.launches,
            failed: g.failed.clone(),
        })
    }
}

/// `f` on the model's decode graphs (made on first use), under the model's lock: one step's
/// graph inputs are written and replayed before another's.
fn with_graphs<T>(model: &Llama, f: impl FnOnce(&mut DecodeGraphs) -> T) -> T {
    let mut slot = model.cuda_graphs.lock().unwrap_or_else(|e| e.into_inner());
    let any = slot.get_or_insert_with(|| Box::new(DecodeGraphs::default()));
    f(any
        .downcast_mut::<DecodeGraphs>()
        .expect("only this module fills the slot"))
}

impl Llama {
    /// Whether any matmul is candle's quantized one ([`crate::linear::Linear::is_candle_quantized`]):
    /// such a model decodes without graphs. On an H200 a Q4_K_M 1B served with graphs hit
    /// CUDA_ERROR_ILLEGAL_ADDRESS once a larger batch had grown candle's MMQ/MMVQ scratch
    /// buffers under the graphs captured before (benches/gpu/RESULTS.md, 2026-12-04).
    fn quantized_matmuls(&self) -> bool {
        self.layers.iter().any(|l| {
            l.qkv
                .linears()
                .into_iter()
                .chain(l.gate_up.linears())
                .chain([&l.o, &l.down])
                .any(|m| m.is_candle_quantized())
        }) || self.lm_head.is_candle_quantized()
    }
}

/// Rows a decode of `n` sequences is padded to.
fn rows_bucket(n: usize) -> usize {
    match n {
        0..=2 => n,
        3..=4 => 4,
        _ => n.next_multiple_of(8),
    }
}

/// The step as a graph replay, or `None` where graphs do not take it (then it runs eagerly).
pub(super) fn decode(
    model: &Llama,
    batch: &ForwardBatch,
    cache: &DevicePaged,
) -> Result<Option<ForwardOutput>> {
    let n = batch.chunks.len();
    let decode = batch
        .chunks
        .iter()
        .all(|c| c.len == 1 && c.logits != LogitsWanted::None && !c.hidden);
    if n == 0 || n > MAX_ROWS || !decode {
        return Ok(None);
    }
    let (Some(table), Some(k0)) = (model.embed.dense(), cache.k.first()) else {
        return Ok(None);
    };
    with_graphs(model, |graphs| {
        replay(model, batch, cache, table, k0, graphs)
    })
}

/// [`decode`] once the step is one graphs take, under the graphs' lock.
fn replay(
    model: &Llama,
    batch: &ForwardBatch,
    cache: &DevicePaged,
    table: &Tensor,
    k0: &Tensor,
    graphs: &mut DecodeGraphs,
) -> Result<Option<ForwardOutput>> {
    let n = batch.chunks.len();
    let dev = model.device();
    // The model's matmuls do not change: looked at once, not every step.
    let quantized = *graphs
        .quantized
        .get_or_insert_with(|| model.quantized_matmuls());
    if quantized
        || !graphs.on
        || graphs.failed.is_some()
        || !cuda_graph::capturable(dev.as_cuda_device()?)
    {
        return Ok(None);
    }
    let max_ctx = batch
        .chunks
        .iter()
        .map(|c| c.start_pos + 1)
        .max()
        .unwrap_or(1);
    let splits = max_ctx.div_ceil(PARTITION).next_power_of_two();
    if splits > MAX_SPLITS {
        return Ok(None);
    }
    let key = Key {
        rows: rows_bucket(n),
        splits,
        cache: k0.id(),
    };
    let width = (splits * PARTITION).div_ceil(cache.block_size);
    let meta = HostMeta::new(model, batch, cache, Some((key.rows, width)))?;
    let mut ids = batch.tokens.clone();
    ids.resize(key.rows, 0);
    // Graphs of another cache (a new KvStore) hold the old one's tensors alive.
    if graphs.graphs.keys().any(|k| k.cache != key.cache) {
        graphs.clear(dev)?;
    }
    if !graphs.graphs.contains_key(&key) {
        let t = std::time::Instant::now();
        if let Err(e) = capture(model, graphs, key, cache, &meta, &ids, table) {
            tracing::warn!("CUDA graph capture failed, decoding without graphs: {e}");
            graphs.failed = Some(e.to_string());
            graphs.clear(dev)?;
            return Ok(None);
        }
        tracing::debug!(
            rows = key.rows,
            context = splits * PARTITION,
            ms = t.elapsed().as_secs_f64() * 1e3,
            "captured a decode graph"
        );
    }
    graphs.launches += 1;
    let now = graphs.launches;
    let g = graphs.graphs.get_mut(&key).expect("captured above");
    g.batch.write(&meta, splits * PARTITION)?;
    write_host(&g.tokens, &ids)?;
    g.graph.launch()?;
    g.last_used = now;
    let logits = graphs.logits.as_ref().expect("made with the graphs");
    Ok(Some(ForwardOutput {
        // A copy: the shared buffer is overwritten by the next step.
        logits: logits.narrow(0, 0, n)?.copy()?,
        hidden: None,
    }))
}

/// Captures the graph for `key`, its inputs made from this step's `meta` and `ids` (the
/// capture's eager warm-up run is this step; the caller's replay repeats it).
fn capture(
    model: &Llama,
    graphs: &mut DecodeGraphs,
    key: Key,
    cache: &DevicePaged,
    meta: &HostMeta,
    ids: &[u32],
    table: &Tensor,
) -> Result<()> {
    let dev = model.device();
    let cuda = dev.as_cuda_device()?;
    cuda_graph::set_cublas_workspace(cuda)?;
    if graphs.graphs.len() >= MAX_GRAPHS {
        let oldest = graphs
            .graphs
            .iter()
            .min_by_key(|(_, g)| g.last_used)
            .map(|(k, _)| *k);
        if let Some(k) = oldest {
            // After the stream has run it: a replay may still be queued.
            dev.synchronize()?;
            graphs.graphs.remove(&k);
        }
    }
    let rows = graphs.logits.as_ref().map_or(0, |l| l.dims()[0]);
    if rows < key.rows {
        graphs.clear(dev)?;
        let rows = if rows == 0 {
            key.rows.max(FIRST_LOGITS_ROWS)
        } else {
            MAX_ROWS
        };
        let shape = (rows, model.cfg.vocab_size);
        graphs.logits = Some(Tensor::zeros(shape, DType::F32, dev)?);
    }
    let logits = graphs.logits.clone().expect("made above");
    let mut batch = DeviceBatch::upload(model, cache.clone(), meta)?;
    batch.set_max_ctx(key.splits * PARTITION);
    let tokens = Tensor::new(ids, dev)?;
    let graph = Graph::capture(cuda, || -> Result<()> {
        let x = tensor::scale_embeddings(model, table.index_select(&tokens, 0)?)?;
        let normed = batch.run(model, x)?;
        let l = tensor::logits(model, &normed)?;
        logits.slice_set(&l, 0, 0)?;
        Ok(())
    })?;
    graphs.graphs.insert(
        key,
        DecodeGraph {
            graph,
            batch,
            tokens,
            last_used: graphs.launches,
        },
    );
    Ok(())
}
