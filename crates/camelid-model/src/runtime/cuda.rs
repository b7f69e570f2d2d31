//! The CUDA serving runtime: camelid's own kernels (`camelid_kernels::cuda`) over the engine's
//! paged device cache — rotary embedding in place, the K/V write through a slot mapping, paged
//! attention reading K/V through the block tables (no per-sequence ops, no gathers), SiLU·mul
//! or GELU·mul, and each residual add fused with the RMSNorm after it.
//!
//! Every architecture's [`ArchFeatures`](crate::config::ArchFeatures) are data of the one
//! layer loop, as on the CPU: Q/K/V biases and per-head Q/K norms (candle ops), each layer's
//! window, the score scale and soft-capping (the attention kernel), the local layers' rope,
//! post norms (candle's RMSNorm), GeGLU, the embedding scale and the logits' soft-capping.
//! Every rope scaling too: a chunk's frequencies are a row of their own (dynamic NTK and
//! LongRoPE choose by the chunk's length, as the other runtimes do), YaRN's and LongRoPE's
//! attention factor scales cos and sin in the kernel.
//!
//! Chosen by [`Llama::forward`] on CUDA when the KV store offers [`KvStore::device_paged`],
//! the dtype is a float one and the head fits the attention kernel; `CAMELID_CUDA_KERNELS=0`
//! turns it off (the tensor runtime: candle's ops and the gathering cache, the reference).

use super::tensor;
use crate::batch::{ForwardBatch, ForwardOutput};
use crate::config::{Activation, RopeStyle};
use crate::error::{Error, Result};
use crate::kv::{DevicePaged, KvStore};
use crate::models::llama::{Layer, Llama};
use crate::rope::Rope;
use camelid_kernels::cuda::{self as cuda_ops, AttentionParams, AttentionRows, RopeFreqs};
use candle_core::{DType, Device, Tensor};

/// The forward pass on this runtime, or `None` when it does not apply (then the tensor
/// runtime runs).
pub(crate) fn forward(
    model: &Llama,
    batch: &ForwardBatch,
    kv: &mut dyn KvStore,
) -> Result<Option<ForwardOutput>> {
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
    tensor::outputs(model, batch, &normed, true).map(Some)
}

/// Per-forward metadata on the device, shared by every layer.
struct DeviceBatch {
    cache: DevicePaged,
    /// `rows.row_seq` is each token's chunk: the row of its block table and of its rope
    /// frequencies.
    rows: AttentionRows,
    /// Slot of every token (i64).
    slot_mapping: Tensor,
    /// Position of every token (u32).
    positions: Tensor,
    rope: DeviceRope,
    /// The local layers' rope where it is not `rope` (Gemma 3).
    rope_local: Option<DeviceRope>,
}

/// One rope's frequencies on the device: a row per chunk, [`Rope::inv_freq_for`] the chunk's
/// end (the tensor runtime's and the CPU's tables are made per chunk the same way).
struct DeviceRope {
    inv_freq: Tensor,
    mscale: f32,
}

impl DeviceRope {
    fn new(rope: &Rope, batch: &ForwardBatch, half: usize, dev: &Device) -> Result<Self> {
        let mut freqs = Vec::with_capacity(batch.chunks.len() * half);
        for c in &batch.chunks {
            freqs.extend_from_slice(&rope.inv_freq_for(c.start_pos + c.len));
        }
        Ok(Self {
            inv_freq: Tensor::from_vec(freqs, (batch.chunks.len(), half), dev)?,
            mscale: rope.attention_factor(),
        })
    }
}

impl DeviceBatch {
    /// `None` when this model/store/device does not take the kernel path.
    fn new(model: &Llama, batch: &ForwardBatch, kv: &mut dyn KvStore) -> Result<Option<Self>> {
        let dev = model.device();
        if !dev.is_cuda() || !cuda_ops::enabled() || model.cfg.head_dim > cuda_ops::MAX_HEAD_DIM {
            return Ok(None);
        }
        let seqs: Vec<u64> = batch.chunks.iter().map(|c| c.seq).collect();
        let Some(cache) = kv.device_paged(&seqs)? else {
            return Ok(None);
        };
        let bs = cache.block_size;
        // Every block id the kernels will index by, checked here: they do not.
        let spans: Vec<_> = batch.chunks.iter().map(|c| c.span()).collect();
        let window = model.cfg.features.kv_window();
        cache
            .check(&spans, |p| window.map_or(0, |w| (p + 1).saturating_sub(w)))
            .map_err(Error::Invalid)?;
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
        let half = model.cfg.head_dim / 2;
        Ok(Some(Self {
            rows,
            slot_mapping: Tensor::new(slots.as_slice(), dev)?,
            positions: Tensor::new(positions.as_slice(), dev)?,
            rope: DeviceRope::new(&model.rope, batch, half, dev)?,
            rope_local: model
                .rope_local
                .as_ref()
                .map(|r| DeviceRope::new(r, batch, half, dev))
                .transpose()?,
            cache,
        }))
    }

    /// One layer's attention block: QKV projection (+ biases), per-head Q/K norms, rope,
    /// cache write, paged attention (the layer's window, the scale, soft-capping), output
    /// projection.
    fn attention(&self, model: &Llama, li: usize, layer: &Layer, h: &Tensor) -> Result<Tensor> {
        let cfg = model.config();
        let f = &cfg.features;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let (qw, kw) = (nh * hd, nkv * hd);
        let eps = cfg.rms_norm_eps as f32;
        let n_tok = h.dims2()?.0;
        let qkv = layer.qkv.forward_joined(h)?;
        let qkv = match &layer.qkv_bias {
            Some(b) => qkv.broadcast_add(b)?,
            None => qkv,
        };
        let q = qkv
            .narrow(1, 0, qw)?
            .contiguous()?
            .reshape((n_tok, nh, hd))?;
        let k = qkv
            .narrow(1, qw, kw)?
            .contiguous()?
            .reshape((n_tok, nkv, hd))?;
        let v = qkv.narrow(1, qw + kw, kw)?.contiguous()?;
        // Each head of Q and K normed over its own channels, before rope (Qwen3, Gemma 3).
        let (q, k) = match &layer.qk_norm {
            Some((qn, kn)) => (
                candle_nn::ops::rms_norm(&q, qn, eps)?,
                candle_nn::ops::rms_norm(&k, kn, eps)?,
            ),
            None => (q, k),
        };
        let rope = match &self.rope_local {
            Some(local) if f.is_local(li) => local,
            _ => &self.rope,
        };
        let freqs = RopeFreqs {
            inv_freq: &rope.inv_freq,
            freq_row: &self.rows.row_seq,
            mscale: rope.mscale,
        };
        let interleaved = cfg.rope_style == RopeStyle::Interleaved;
        cuda_ops::rope_inplace(&q, &self.positions, &freqs, interleaved)?;
        cuda_ops::rope_inplace(&k, &self.positions, &freqs, interleaved)?;
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
        let params = AttentionParams {
            scale: f.attn_scale.unwrap_or(1.0 / (hd as f32).sqrt()),
            window: f.layer_window(li),
            softcap: f.attn_softcap,
        };
        let o = cuda_ops::paged_attention(&q, kc, vc, &self.rows, params)?;
        Ok(layer.o.forward(&o.reshape((n_tok, qw))?)?)
    }
}

/// Every layer with the residual adds fused into the following norms:
/// `h = norm(x)`, then per layer `(x, h) = add_norm(attn(h), x)` and
/// `(x, h) = add_norm(mlp(h), x)` with the next norm's weight (the next layer's attention norm,
/// after the last layer the final norm); a layer's post norms (Gemma) norm `attn(h)` and
/// `mlp(h)` before their adds. Returns the final-normed rows, all of them.
fn run_layers(
    model: &Llama,
    x: Tensor,
    mut attn: impl FnMut(usize, &Layer, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let eps = model.config().rms_norm_eps as f32;
    let activation = model.config().features.activation;
    let layers = &model.layers;
    let Some(first) = layers.first() else {
        return Ok(candle_nn::ops::rms_norm(&x, &model.norm, eps)?);
    };
    let post_norm = |t: Tensor, w: Option<&Tensor>| -> Result<Tensor> {
        Ok(match w {
            Some(w) => candle_nn::ops::rms_norm(&t, w, eps)?,
            None => t,
        })
    };
    let mut h = candle_nn::ops::rms_norm(&x, &first.attn_norm, eps)?;
    let mut x = x;
    for (li, layer) in layers.iter().enumerate() {
        let post = layer.post_norms.as_ref();
        let a = post_norm(attn(li, layer, &h)?, post.map(|p| &p.0))?;
        (x, h) = cuda_ops::add_rms_norm(&a, &x, &layer.mlp_norm, eps)?;
        let gate_up = layer.gate_up.forward_joined(&h)?.contiguous()?;
        let act = match activation {
            Activation::Silu => cuda_ops::silu_mul(&gate_up)?,
            Activation::GeluTanh => cuda_ops::gelu_tanh_mul(&gate_up)?,
        };
        let d = post_norm(layer.down.forward(&act)?, post.map(|p| &p.1))?;
        let next = layers.get(li + 1).map_or(&model.norm, |l| &l.attn_norm);
        (x, h) = cuda_ops::add_rms_norm(&d, &x, next, eps)?;
    }
    Ok(h)
}
