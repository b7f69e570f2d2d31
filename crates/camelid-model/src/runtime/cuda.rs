//! The CUDA serving runtime: camelid's own kernels (`camelid_kernels::cuda`) over the engine's
//! paged device cache — rotary embedding in place, the K/V write through a slot mapping, paged
//! attention reading K/V through the block tables (no per-sequence ops, no gathers), SiLU·mul
//! or GELU·mul, and each residual add fused with the RMSNorm after it.
//!
//! Every architecture's [`ArchFeatures`](crate::config::ArchFeatures) are data of the one
//! layer loop, as on the CPU: Q/K/V biases and per-head Q/K norms (candle ops), each layer's
//! window, the score scale and soft-capping (the attention kernel), the local layers' rope,
//! post norms (candle's RMSNorm), GeGLU, the embedding scale and the logits' soft-capping.
//! Every rope scaling too: a chunk's frequencies are a row of their own (the one table of
//! [`Rope::inv_freq`](crate::rope::Rope::inv_freq), as the other runtimes take it), YaRN's and
//! LongRoPE's attention factor scales cos and sin in the kernel.
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

/// The paged device cache this runtime runs over, or `None` when the runtime does not apply
/// (then the tensor runtime runs): not CUDA, `CAMELID_CUDA_KERNELS=0`, a dtype or a head
/// the kernels do not take, or a store without a paged device cache.
pub(crate) fn paged_cache(
    model: &Llama,
    batch: &ForwardBatch,
    kv: &mut dyn KvStore,
) -> Result<Option<DevicePaged>> {
    let dev = model.device();
    if !matches!(model.dtype, DType::F32 | DType::F16 | DType::BF16)
        || !dev.is_cuda()
        || !cuda_ops::enabled()
        || model.cfg.head_dim > cuda_ops::MAX_HEAD_DIM
    {
        return Ok(None);
    }
    let seqs: Vec<u64> = batch.chunks.iter().map(|c| c.seq).collect();
    Ok(kv.device_paged(&seqs)?)
}

/// The forward pass on this runtime over `cache` ([`paged_cache`]), kernel by kernel.
pub(crate) fn forward(
    model: &Llama,
    batch: &ForwardBatch,
    cache: DevicePaged,
) -> Result<ForwardOutput> {
    let meta = HostMeta::new(model, batch, &cache, None)?;
    let device = DeviceBatch::upload(model, cache, &meta)?;
    let x = tensor::embed(model, batch)?;
    let normed = device.run(model, x)?;
    tensor::outputs(model, batch, &normed, true)
}

/// A batch's metadata as the kernels read it, on the host: per token row its slot,
/// position, row of the block tables and of the rope frequencies (its chunk), and context;
/// the block tables, `width` ids a row; each chunk's rope frequencies.
pub(super) struct HostMeta {
    pub slots: Vec<i64>,
    pub positions: Vec<u32>,
    pub row_seq: Vec<u32>,
    pub row_ctx: Vec<u32>,
    pub tables: Vec<u32>,
    pub width: usize,
    pub max_ctx: usize,
    pub freqs: Vec<f32>,
    pub freqs_local: Option<Vec<f32>>,
}

impl HostMeta {
    /// Checks the tables against the batch and the cache (the kernels index by them
    /// unchecked). `pad`: `(rows, width)` for a decode graph, where every chunk is one token:
    /// rows past the batch's write no key (slot -1) and see position 0 of block 0, their
    /// frequencies are zero, and tables are zero-filled (or cut) to `width` ids, which must
    /// cover the longest context. `None`: as the batch needs, one table row per chunk.
    pub fn new(
        model: &Llama,
        batch: &ForwardBatch,
        cache: &DevicePaged,
        pad: Option<(usize, usize)>,
    ) -> Result<Self> {
        let bs = cache.block_size;
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
        let needed = cache.tables.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let (rows, width) = pad.unwrap_or((cache.tables.len(), needed));
        if pad.is_some() && (rows < slots.len() || slots.len() != cache.tables.len()) {
            return Err(Error::Invalid(format!(
                "a decode graph of {rows} rows for {} tokens of {} sequences",
                slots.len(),
                cache.tables.len()
            )));
        }
        if width * bs < max_ctx {
            return Err(Error::Invalid(format!(
                "tables of {width} blocks for a context of {max_ctx}"
            )));
        }
        for r in slots.len()..rows.max(slots.len()) {
            slots.push(-1);
            positions.push(0);
            row_seq.push(r as u32);
            row_ctx.push(1);
        }
        let mut tables = vec![0u32; rows * width];
        // A padded table may hold fewer blocks than the sequence has (blocks reserved past its
        // context): the kernels read none past `width * bs` positions.
        for (row, t) in tables.chunks_mut(width).zip(&cache.tables) {
            let n = t.len().min(width);
            row[..n].copy_from_slice(&t[..n]);
        }
        let half = model.cfg.head_dim / 2;
        let freqs_of = |rope: &Rope| {
            let mut freqs = Vec::with_capacity(rows * half);
            for _ in &batch.chunks {
                freqs.extend_from_slice(rope.inv_freq());
            }
            freqs.resize(rows * half, 0.0);
            freqs
        };
        Ok(Self {
            slots,
            positions,
            row_seq,
            row_ctx,
            tables,
            width,
            max_ctx,
            freqs: freqs_of(&model.rope),
            freqs_local: model.rope_local.as_ref().map(freqs_of),
        })
    }
}

/// Per-forward metadata on the device, shared by every layer.
pub(super) struct DeviceBatch {
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

/// One rope's frequencies on the device: a row per chunk, each [`Rope::inv_freq`].
struct DeviceRope {
    inv_freq: Tensor,
    mscale: f32,
}

impl DeviceRope {
    fn new(rope: &Rope, freqs: &[f32], half: usize, dev: &Device) -> Result<Self> {
        Ok(Self {
            inv_freq: Tensor::from_slice(freqs, (freqs.len() / half, half), dev)?,
            mscale: rope.attention_factor(),
        })
    }
}

impl DeviceBatch {
    /// `meta` in new device tensors.
    pub fn upload(model: &Llama, cache: DevicePaged, meta: &HostMeta) -> Result<Self> {
        let dev = model.device();
        let rows = AttentionRows {
            row_seq: Tensor::new(meta.row_seq.as_slice(), dev)?,
            row_ctx: Tensor::new(meta.row_ctx.as_slice(), dev)?,
            block_tables: Tensor::from_slice(
                &meta.tables,
                (meta.tables.len() / meta.width, meta.width),
                dev,
            )?,
            max_ctx: meta.max_ctx,
            block_size: cache.block_size,
        };
        let half = model.cfg.head_dim / 2;
        Ok(Self {
            rows,
            slot_mapping: Tensor::new(meta.slots.as_slice(), dev)?,
            positions: Tensor::new(meta.positions.as_slice(), dev)?,
            rope: DeviceRope::new(&model.rope, &meta.freqs, half, dev)?,
            rope_local: match (&model.rope_local, &meta.freqs_local) {
                (Some(r), Some(f)) => Some(DeviceRope::new(r, f, half, dev)?),
                _ => None,
            },
            cache,
        })
    }

    /// Writes `meta` (padded as this batch was) into this batch's tensors, and takes
    /// `max_ctx` as the longest context the kernels are launched for (a graph's bucket).
    pub fn write(&mut self, meta: &HostMeta, max_ctx: usize) -> Result<()> {
        use camelid_kernels::cuda_graph::write_host;
        write_host(&self.rows.row_seq, &meta.row_seq)?;
        write_host(&self.rows.row_ctx, &meta.row_ctx)?;
        write_host(&self.rows.block_tables, &meta.tables)?;
        write_host(&self.slot_mapping, &meta.slots)?;
        write_host(&self.positions, &meta.positions)?;
        write_host(&self.rope.inv_freq, &meta.freqs)?;
        if let (Some(r), Some(f)) = (&self.rope_local, &meta.freqs_local) {
            write_host(&r.inv_freq, f)?;
        }
        self.set_max_ctx(max_ctx);
        Ok(())
    }

    /// The longest context the kernels are launched for (a graph's bucket).
    pub fn set_max_ctx(&mut self, max_ctx: usize) {
        self.rows.max_ctx = max_ctx;
    }

    /// Every layer over the embedded rows `x`: the final-normed rows.
    pub fn run(&self, model: &Llama, x: Tensor) -> Result<Tensor> {
        run_layers(model, x, |li, layer, h| self.attention(model, li, layer, h))
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
