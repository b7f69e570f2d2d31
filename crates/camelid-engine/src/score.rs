//! Scoring through the serving path: every position's logits of one token sequence, computed
//! with the engine's paged KV cache (a check of its kernels against the contiguous path).

use crate::paged::PagedKv;
use camelid_model::KvDtype;
use camelid_model::{ForwardBatch, Llama, LogitsWanted, Result};
use candle_core::Tensor;

fn fail(msg: &str) -> camelid_model::Error {
    candle_core::Error::Msg(msg.to_string()).into()
}

/// The logits of every position of `ids` (`(ids.len(), vocab)`), run as one sequence through a
/// [`PagedKv`] of `block_size`-position blocks (an f32 host cache on the CPU: the CPU attention
/// kernel; on CUDA camelid's paged kernels), in up to `chunks` prefill chunks of equal size so
/// that later chunks read the blocks earlier ones wrote.
pub fn paged_logits_all(
    model: &Llama,
    ids: &[u32],
    block_size: usize,
    chunks: usize,
) -> Result<Tensor> {
    if ids.is_empty() {
        return Err(fail("no tokens to score"));
    }
    let c = model.config();
    let bs = block_size.max(1);
    let mut kv = PagedKv::new(
        c.num_layers,
        c.num_kv_heads,
        c.head_dim,
        ids.len().div_ceil(bs),
        bs,
        model.dtype(),
        KvDtype::F32,
        model.device(),
    )?;
    kv.start(0, &[], None, ids.len());
    if !kv.reserve(0, ids.len()) {
        return Err(fail("KV pool too small"));
    }
    let chunk_len = ids.len().div_ceil(chunks.max(1));
    let mut parts = vec![];
    for (i, chunk) in ids.chunks(chunk_len).enumerate() {
        let mut batch = ForwardBatch::default();
        // Every position is prompt, a lone last one too.
        batch.push_with_prompt(0, i * chunk_len, chunk, LogitsWanted::All, ids.len());
        parts.push(model.forward(&batch, &mut kv)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}
