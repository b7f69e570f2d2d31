//! Where a forward pass runs. [`Llama::forward`] picks one runtime per forward, once:
//! - [`cpu`]: f32 on the CPU over a paged host cache (the CPU serving path): the layer loop on
//!   plain buffers, attention in place by `camelid_kernels::attention`;
//! - [`cuda`]: on CUDA over a paged device cache: camelid's kernels for rope, the cache write,
//!   paged attention (windows, scale, soft-capping), SiLU·mul or GELU·mul and add+RMSNorm,
//!   in its own layer loop; [`cuda_graph`] replays its decode steps as CUDA graphs;
//! - [`tensor`]: candle ops over `KvStore::write_and_read` (contiguous caches, other dtypes,
//!   `CAMELID_CUDA_KERNELS=0`): the reference the other two are tested against.
//!
//! One layer loop per runtime, never one per architecture × runtime.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod cuda_graph;
pub mod ops;
pub mod tensor;

use crate::batch::{ForwardBatch, ForwardOutput, LogitsWanted};
use crate::error::{Error, Result};
use crate::kv::{ContiguousKv, KvStore};
use crate::models::Llama;
use candle_core::{DType, Tensor};

impl Llama {
    /// Runs the batch and returns f32 logits of shape `(batch.logit_rows(), vocab)`, rows in
    /// chunk order. Keys and values of every token are written to `kv`.
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut dyn KvStore) -> Result<Tensor> {
        Ok(self.forward_output(batch, kv)?.logits)
    }

    /// [`Self::forward`], with the hidden-state rows of the chunks that want them
    /// ([`crate::SeqChunk::hidden`]).
    pub fn forward_output(
        &self,
        batch: &ForwardBatch,
        kv: &mut dyn KvStore,
    ) -> Result<ForwardOutput> {
        check_batch(self, batch)?;
        // f32 on the CPU with a paged host cache: the CPU serving runtime.
        if self.device.is_cpu() && self.dtype == DType::F32 {
            let seqs: Vec<u64> = batch.chunks.iter().map(|c| c.seq).collect();
            if let Some(host) = kv.host_paged(&seqs)? {
                return cpu::forward(self, batch, host);
            }
        }
        // CUDA with a paged device cache and our kernels: the CUDA serving runtime. It has no
        // LoRA path yet: a batch with adapted rows runs as candle ops.
        // A decode step replays a CUDA graph where one applies.
        #[cfg(feature = "cuda")]
        if batch.chunks.iter().all(|c| c.lora.is_none()) {
            if let Some(cache) = cuda::paged_cache(self, batch, kv)? {
                if let Some(out) = cuda_graph::decode(self, batch, &cache)? {
                    return Ok(out);
                }
                return cuda::forward(self, batch, cache);
            }
        }
        tensor::forward(self, batch, kv)
    }

    /// Logits for every position of `tokens` fed as one fresh sequence (scoring, tests).
    pub fn logits_all(&self, tokens: &[u32]) -> Result<Tensor> {
        self.logits_all_adapted(tokens, None)
    }

    /// [`Self::logits_all`] under the LoRA adapter `lora` (`None`: the base model).
    pub fn logits_all_adapted(
        &self,
        tokens: &[u32],
        lora: Option<crate::lora::SharedLora>,
    ) -> Result<Tensor> {
        let mut kv = ContiguousKv::new();
        let mut batch = ForwardBatch::single(0, 0, tokens, LogitsWanted::All);
        batch.adapt_last(lora);
        self.forward(&batch, &mut kv)
    }
}

fn check_batch(model: &Llama, batch: &ForwardBatch) -> Result<()> {
    let n_tokens = batch.tokens.len();
    let covered: usize = batch.chunks.iter().map(|c| c.len).sum();
    if n_tokens == 0 || covered != n_tokens || batch.chunks.iter().any(|c| c.len == 0) {
        return Err(Error::Invalid(format!(
            "forward batch: {n_tokens} tokens, chunks cover {covered} (every chunk needs >= 1 token)"
        )));
    }
    if let Some(a) = batch
        .chunks
        .iter()
        .find_map(|c| c.lora.as_ref().filter(|a| !a.fits(&model.cfg)))
    {
        return Err(Error::Invalid(format!(
            "LoRA adapter {} was read for a model of another shape",
            a.name
        )));
    }
    let vocab = model.cfg.vocab_size as u32;
    if let Some(bad) = batch.tokens.iter().find(|&&t| t >= vocab) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the vocabulary ({vocab})"
        )));
    }
    Ok(())
}
