//! The tensor runtime: the forward pass as candle ops, attention per chunk over
//! `KvStore::write_and_read`. Any device and dtype; the independent reference the CPU and CUDA
//! serving runtimes are tested against.

use super::ops;
use crate::batch::{ForwardBatch, ForwardOutput};
use crate::config::{Activation, RopeStyle};
use crate::error::Result;
use crate::kv::KvStore;
use crate::lora::Proj;
use crate::models::llama::{Layer, Llama};
use candle_core::{DType, Tensor};

/// The layer loop of the tensor runtime.
pub(crate) fn forward(
    model: &Llama,
    batch: &ForwardBatch,
    kv: &mut dyn KvStore,
) -> Result<ForwardOutput> {
    let (eps, f) = (model.cfg.rms_norm_eps, &model.cfg.features);
    let mut x = embed(model, batch)?;
    let spans: Vec<_> = batch.chunks.iter().map(|c| (c.start_pos, c.len)).collect();
    let tables = |rope: &crate::rope::Rope| -> Result<(Tensor, Tensor)> {
        let (cos, sin) = rope.cos_sin(&spans, &model.device)?;
        Ok((cos.to_dtype(model.dtype)?, sin.to_dtype(model.dtype)?))
    };
    let global_rope = tables(&model.rope)?;
    let local_rope = model.rope_local.as_ref().map(tables).transpose()?;
    // Masks for the windowed layers and, where some layer attends every key, for those.
    let local_masks = causal_masks(model, batch, f.sliding_window)?;
    let global_masks = match f.global_every {
        Some(_) => causal_masks(model, batch, None)?,
        None => vec![],
    };
    for (li, layer) in model.layers.iter().enumerate() {
        let local = f.is_local(li);
        let masks = if local || f.global_every.is_none() {
            &local_masks
        } else {
            &global_masks
        };
        let (cos, sin) = match &local_rope {
            Some(r) if local => r,
            _ => &global_rope,
        };
        let h = rms_norm(&x, &layer.attn_norm, eps)?;
        let a = attention(model, li, layer, &h, batch, cos, sin, masks, kv)?;
        let a = match &layer.post_norms {
            Some((post_attn, _)) => rms_norm(&a, post_attn, eps)?,
            None => a,
        };
        x = (x + a)?;
        let h = rms_norm(&x, &layer.mlp_norm, eps)?;
        let joined = layer.gate_up.forward_joined(&h)?;
        let joined = add_lora(batch, li, Proj::GateUp, &h, joined)?;
        let act = match f.activation {
            Activation::Silu => ops::silu_mul_joined(&joined)?,
            Activation::GeluTanh => {
                let inter = joined.dim(1)? / 2;
                (joined.narrow(1, 0, inter)?.gelu()? * joined.narrow(1, inter, inter)?)?
            }
        };
        let m = layer.down.forward(&act)?;
        let m = add_lora(batch, li, Proj::Down, &act, m)?;
        let m = match &layer.post_norms {
            Some((_, post_mlp)) => rms_norm(&m, post_mlp, eps)?,
            None => m,
        };
        x = (x + m)?;
    }
    outputs(model, batch, &x, false)
}

/// `y` (`x`'s rows through layer `li`'s matmul `proj`) plus each chunk's LoRA update, if its
/// sequence runs under an adapter.
fn add_lora(batch: &ForwardBatch, li: usize, proj: Proj, x: &Tensor, y: Tensor) -> Result<Tensor> {
    if batch.chunks.iter().all(|c| c.lora.is_none()) {
        return Ok(y);
    }
    let xf = x.to_dtype(DType::F32)?;
    let mut parts = Vec::with_capacity(batch.chunks.len());
    let mut off = 0;
    for c in &batch.chunks {
        let yc = y.narrow(0, off, c.len)?;
        parts.push(match &c.lora {
            Some(a) => a
                .add_to_rows(
                    li,
                    proj,
                    &xf.narrow(0, off, c.len)?,
                    yc.to_dtype(DType::F32)?,
                )?
                .to_dtype(y.dtype())?,
            None => yc,
        });
        off += c.len;
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// The wanted rows of `x` (every token's residual stream; with `normed`, already through the
/// final norm): only they go through the final norm, then the LM head for the logit rows.
pub(crate) fn outputs(
    model: &Llama,
    batch: &ForwardBatch,
    x: &Tensor,
    normed: bool,
) -> Result<ForwardOutput> {
    let select = |rows: Vec<usize>| -> Result<Option<Tensor>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let rows: Vec<u32> = rows.into_iter().map(|r| r as u32).collect();
        let h = x.index_select(&Tensor::new(rows.as_slice(), &model.device)?, 0)?;
        Ok(Some(if normed {
            h
        } else {
            rms_norm(&h, &model.norm, model.cfg.rms_norm_eps)?
        }))
    };
    let logits = match select(batch.logit_row_indices())? {
        None => Tensor::zeros((0, model.cfg.vocab_size), DType::F32, &model.device)?,
        Some(h) => logits(model, &h)?,
    };
    let hidden = select(batch.hidden_row_indices())?
        .map(|h| h.to_dtype(DType::F32))
        .transpose()?;
    Ok(ForwardOutput { logits, hidden })
}

/// f32 logits of final-normed rows `h`: the LM head, then the final soft-capping if any.
pub(crate) fn logits(model: &Llama, h: &Tensor) -> Result<Tensor> {
    let logits = model.lm_head.forward(h)?.to_dtype(DType::F32)?;
    Ok(match model.cfg.features.final_softcap {
        Some(cap) => soft_cap(&logits, cap)?,
        None => logits,
    })
}

/// `cap · tanh(x / cap)` (Gemma 2's soft-capping).
pub(crate) fn soft_cap(x: &Tensor, cap: f32) -> Result<Tensor> {
    let cap = cap as f64;
    Ok(((x / cap)?.tanh()? * cap)?)
}

/// The batch's token embeddings, `(tokens, hidden)` in the model's dtype.
pub(crate) fn embed(model: &Llama, batch: &ForwardBatch) -> Result<Tensor> {
    scale_embeddings(model, model.embed.rows(&batch.tokens, &model.device)?)
}

/// Embedding rows in the model's dtype, times the embedding scale if it has one (Gemma).
pub(crate) fn scale_embeddings(model: &Llama, rows: Tensor) -> Result<Tensor> {
    let x = rows.to_dtype(model.dtype)?;
    Ok(match model.cfg.features.embed_scale {
        Some(s) => (x * s as f64)?,
        None => x,
    })
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(x, w, eps as f32)?)
}

/// Additive masks (0 / -inf) for each chunk, in f32: causal, and outside `window` where
/// there is one (`None`: the chunk's lone query sees every key).
fn causal_masks(
    model: &Llama,
    batch: &ForwardBatch,
    window: Option<usize>,
) -> Result<Vec<Option<Tensor>>> {
    batch
        .chunks
        .iter()
        .map(|c| {
            let kv_len = c.start_pos + c.len;
            if c.len == 1 && window.is_none_or(|w| kv_len <= w) {
                return Ok(None);
            }
            let mask: Vec<f32> = (0..c.len)
                .flat_map(|i| {
                    let pos = c.start_pos + i;
                    let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                    (0..kv_len).map(move |j| {
                        if j > pos || j < first {
                            f32::NEG_INFINITY
                        } else {
                            0.
                        }
                    })
                })
                .collect();
            Ok(Some(Tensor::from_vec(
                mask,
                (c.len, kv_len),
                &model.device,
            )?))
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn attention(
    model: &Llama,
    li: usize,
    layer: &Layer,
    h: &Tensor,
    batch: &ForwardBatch,
    cos: &Tensor,
    sin: &Tensor,
    masks: &[Option<Tensor>],
    kv: &mut dyn KvStore,
) -> Result<Tensor> {
    let cfg = &model.cfg;
    let (n_tok, _) = h.dims2()?;
    let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let group = nh / nkv;
    // (1, heads, tokens, head_dim): the layout candle's rope kernels take.
    let to_heads = |t: Tensor, heads: usize| -> Result<Tensor> {
        Ok(t.reshape((1, n_tok, heads, hd))?
            .transpose(1, 2)?
            .contiguous()?)
    };
    let qkv = layer.qkv.forward_joined(h)?;
    let qkv = add_lora(batch, li, Proj::Qkv, h, qkv)?;
    let qkv = match &layer.qkv_bias {
        Some(b) => qkv.broadcast_add(b)?,
        None => qkv,
    };
    let (qw, kw) = (nh * hd, nkv * hd);
    let q = to_heads(qkv.narrow(1, 0, qw)?, nh)?;
    let k = to_heads(qkv.narrow(1, qw, kw)?, nkv)?;
    let v = to_heads(qkv.narrow(1, qw + kw, kw)?, nkv)?;
    // Each head of Q and K normed over its own channels, before rope (Qwen3).
    let (q, k) = match &layer.qk_norm {
        Some((qn, kn)) => (
            rms_norm(&q, qn, cfg.rms_norm_eps)?,
            rms_norm(&k, kn, cfg.rms_norm_eps)?,
        ),
        None => (q, k),
    };
    let (q, k) = match cfg.rope_style {
        RopeStyle::Half => (
            candle_nn::rotary_emb::rope(&q, cos, sin)?,
            candle_nn::rotary_emb::rope(&k, cos, sin)?,
        ),
        RopeStyle::Interleaved => (
            candle_nn::rotary_emb::rope_i(&q, cos, sin)?,
            candle_nn::rotary_emb::rope_i(&k, cos, sin)?,
        ),
    };
    let (q, k, v) = (q.squeeze(0)?, k.squeeze(0)?, v.squeeze(0)?);
    let scale = cfg
        .features
        .attn_scale
        .map_or(1.0 / (hd as f64).sqrt(), |s| s as f64);
    let mut outs = Vec::with_capacity(batch.chunks.len());
    let mut off = 0;
    for (c, mask) in batch.chunks.iter().zip(masks) {
        let qc = q.narrow(1, off, c.len)?;
        let kc = k.narrow(1, off, c.len)?;
        let vc = v.narrow(1, off, c.len)?;
        off += c.len;
        let (k_all, v_all) = kv.write_and_read(li, c.seq, c.start_pos, &kc, &vc)?;
        let kv_len = k_all.dims()[1];
        // GQA without repeating K/V: the `group` query heads sharing one KV head are
        // stacked along the row axis, (nkv, group*len, hd) · (nkv, hd, kv_len).
        let qc = qc.to_dtype(DType::F32)?.reshape((nkv, group * c.len, hd))?;
        let k_all = k_all.to_dtype(DType::F32)?;
        let v_all = v_all.to_dtype(DType::F32)?.contiguous()?;
        let scores = (qc.matmul(&k_all.t()?)? * scale)?;
        let scores = match cfg.features.attn_softcap {
            Some(cap) => soft_cap(&scores, cap)?,
            None => scores,
        };
        let scores = match mask {
            Some(m) => scores
                .reshape((nkv, group, c.len, kv_len))?
                .broadcast_add(m)?
                .reshape((nkv, group * c.len, kv_len))?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let o = probs.matmul(&v_all)?; // (nkv, group*len, hd)
        let o = o
            .reshape((nh, c.len, hd))?
            .transpose(0, 1)?
            .reshape((c.len, nh * hd))?;
        outs.push(o.to_dtype(model.dtype)?);
    }
    let o = if outs.len() == 1 {
        outs.pop().unwrap()
    } else {
        Tensor::cat(&outs, 0)?
    };
    let y = layer.o.forward(&o)?;
    add_lora(batch, li, Proj::O, &o, y)
}
