//! The CUDA serving runtime: camelid's own kernels (`camelid_kernels::cuda`) over the engine's
//! paged device cache — rotary embedding in place, the K/V write through a slot mapping, paged
//! attention reading K/V through the block tables (no per-sequence ops, no gathers), SiLU·mul,
//! and each residual add fused with the RMSNorm after it.
//!
//! Chosen by [`Llama::forward`] on CUDA when the KV store offers [`KvStore::device_paged`], the
//! rotary frequencies are fixed, the architecture has no [`ArchFeatures`] beyond LLaMA's and
//! the dtype is a float one; `CAMELID_CUDA_KERNELS=0` turns it
//! off (the tensor runtime: candle's ops and the gathering cache, the reference).

use super::tensor;
use crate::batch::ForwardBatch;
use crate::config::{ArchFeatures, RopeStyle};
use crate::error::{Error, Result};
use crate::kv::{DevicePaged, KvStore};
use crate::models::llama::{Layer, Llama};
use camelid_kernels::cuda::{self as cuda_ops, AttentionRows};
use candle_core::{DType, Tensor};

/// The forward pass on this runtime, or `None` when it does not apply (then the tensor
/// runtime runs).
pub(crate) fn forward(
    model: &Llama,
    batch: &ForwardBatch,
    kv: &mut dyn KvStore,
) -> Result<Option<Tensor>> {
    if !matches!(model.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Ok(None);
    }
    let Some(device) = DeviceBatch::new(model, batch, kv)? else {
        return Ok(None);
    };
    let x = tensor::embed(model, batch)?;
    let normed = run_layers(model, x, |li, layer, h| {
        device.attention(model, li, layer, h)
    })?;
    let Some(rows) = tensor::wanted_rows(model, batch)? else {
        return tensor::empty_logits(model).map(Some);
    };
    let h = normed.index_select(&rows, 0)?;
    Ok(Some(model.lm_head.forward(&h)?.to_dtype(DType::F32)?))
}

/// Per-forward metadata on the device, shared by every layer.
struct DeviceBatch {
    cache: DevicePaged,
    rows: AttentionRows,
    /// Slot of every token (i64).
    slot_mapping: Tensor,
    /// Position of every token (u32).
    positions: Tensor,
    inv_freq: Tensor,
}

impl DeviceBatch {
    /// `None` when this model/store/device does not take the kernel path.
    fn new(model: &Llama, batch: &ForwardBatch, kv: &mut dyn KvStore) -> Result<Option<Self>> {
        let dev = model.device();
        if !dev.is_cuda() || !cuda_ops::enabled() {
            return Ok(None);
        }
        // Q/K/V biases, per-head Q/K norms and sliding windows are not in these kernels yet:
        // such models take the tensor runtime (candle's ops), which applies them all.
        if model.cfg.features != ArchFeatures::default() {
            return Ok(None);
        }
        let Some(inv_freq) = model.rope.fixed_inv_freq() else {
            return Ok(None);
        };
        let seqs: Vec<u64> = batch.chunks.iter().map(|c| c.seq).collect();
        let Some(cache) = kv.device_paged(&seqs)? else {
            return Ok(None);
        };
        let bs = cache.block_size;
        let (mut slots, mut positions, mut row_seq, mut row_ctx) = (vec![], vec![], vec![], vec![]);
        let mut max_ctx = 0;
        for (ci, (c, table)) in batch.chunks.iter().zip(&cache.tables).enumerate() {
            let end = c.start_pos + c.len;
            if table.len() * bs < end {
                return Err(Error::Invalid(format!(
                    "sequence {}: blocks cover {} positions, batch needs {end}",
                    c.seq,
                    table.len() * bs
                )));
            }
            for p in c.start_pos..end {
                slots.push(table[p / bs] as i64 * bs as i64 + (p % bs) as i64);
                positions.push(p as u32);
                row_seq.push(ci as u32);
                row_ctx.push(p as u32 + 1);
            }
            max_ctx = max_ctx.max(end);
        }
        let max_blocks = cache.tables.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut tables = vec![0u32; cache.tables.len() * max_blocks];
        for (row, t) in tables.chunks_mut(max_blocks).zip(&cache.tables) {
            row[..t.len()].copy_from_slice(t);
        }
        let rows = AttentionRows {
            row_seq: Tensor::new(row_seq.as_slice(), dev)?,
            row_ctx: Tensor::new(row_ctx.as_slice(), dev)?,
            block_tables: Tensor::from_vec(tables, (cache.tables.len(), max_blocks), dev)?,
            max_ctx,
            block_size: bs,
        };
        Ok(Some(Self {
            rows,
            slot_mapping: Tensor::new(slots.as_slice(), dev)?,
            positions: Tensor::new(positions.as_slice(), dev)?,
            inv_freq: Tensor::new(inv_freq, dev)?,
            cache,
        }))
    }

    /// One layer's attention block: QKV projection, rope, cache write, paged attention, output
    /// projection.
    fn attention(&self, model: &Llama, li: usize, layer: &Layer, h: &Tensor) -> Result<Tensor> {
        let cfg = model.config();
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let (qw, kw) = (nh * hd, nkv * hd);
        let n_tok = h.dims2()?.0;
        let qkv = layer.qkv.forward_joined(h)?;
        let q = qkv
            .narrow(1, 0, qw)?
            .contiguous()?
            .reshape((n_tok, nh, hd))?;
        let k = qkv
            .narrow(1, qw, kw)?
            .contiguous()?
            .reshape((n_tok, nkv, hd))?;
        let v = qkv.narrow(1, qw + kw, kw)?.contiguous()?;
        let interleaved = cfg.rope_style == RopeStyle::Interleaved;
        cuda_ops::rope_inplace(&q, &self.positions, &self.inv_freq, interleaved)?;
        cuda_ops::rope_inplace(&k, &self.positions, &self.inv_freq, interleaved)?;
        let (kc, vc) = (&self.cache.k[li], &self.cache.v[li]);
        if kc.dtype() != q.dtype() {
            return Err(Error::Invalid(format!(
                "KV cache is {:?}, activations {:?}",
                kc.dtype(),
                q.dtype()
            )));
        }
        cuda_ops::cache_write(kc, &k.reshape((n_tok, kw))?, &self.slot_mapping)?;
        cuda_ops::cache_write(vc, &v, &self.slot_mapping)?;
        let scale = 1.0 / (hd as f32).sqrt();
        let o = cuda_ops::paged_attention(&q, kc, vc, &self.rows, scale)?;
        Ok(layer.o.forward(&o.reshape((n_tok, qw))?)?)
    }
}

/// Every layer with the residual adds fused into the following norms:
/// `h = norm(x)`, then per layer `(x, h) = add_norm(attn(h), x)` and
/// `(x, h) = add_norm(mlp(h), x)` with the next norm's weight (the next layer's attention norm,
/// after the last layer the final norm). Returns the final-normed rows, all of them.
fn run_layers(
    model: &Llama,
    x: Tensor,
    mut attn: impl FnMut(usize, &Layer, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let eps = model.config().rms_norm_eps as f32;
    let layers = &model.layers;
    let Some(first) = layers.first() else {
        return Ok(candle_nn::ops::rms_norm(&x, &model.norm, eps)?);
    };
    let mut h = candle_nn::ops::rms_norm(&x, &first.attn_norm, eps)?;
    let mut x = x;
    for (li, layer) in layers.iter().enumerate() {
        let a = attn(li, layer, &h)?;
        (x, h) = cuda_ops::add_rms_norm(&a, &x, &layer.mlp_norm, eps)?;
        let act = cuda_ops::silu_mul(&layer.gate_up.forward_joined(&h)?.contiguous()?)?;
        let d = layer.down.forward(&act)?;
        let next = layers.get(li + 1).map_or(&model.norm, |l| &l.attn_norm);
        (x, h) = cuda_ops::add_rms_norm(&d, &x, next, eps)?;
    }
    Ok(h)
}
