//! The LLaMA forward pass over a *varlen batch*: tokens of several sequences, each at its own
//! positions, flattened into one `(tokens, hidden)` matrix. Matmuls run once over all tokens;
//! attention runs per sequence against keys/values held by a caller-owned [`KvStore`].

use crate::config::{ModelConfig, RopeStyle};
use crate::error::{Error, Result};
use crate::kv::KvStore;
use crate::linear::{Linear, Projections};
use crate::rope::Rope;
use candle_core::{DType, Device, Tensor};

/// Which logits a chunk wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// None (a prefill chunk that does not end the prompt).
    None,
    /// The last position only (the next-token distribution).
    Last,
    /// Every position of the chunk (prompt scoring, tests).
    All,
}

/// A run of consecutive tokens of one sequence inside a batch.
#[derive(Debug, Clone)]
pub struct SeqChunk {
    /// The sequence's key in the [`KvStore`].
    pub seq: u64,
    /// Position of the chunk's first token (= tokens of this sequence already cached).
    pub start_pos: usize,
    pub len: usize,
    pub logits: LogitsWanted,
}

/// Tokens of every chunk, concatenated in chunk order.
#[derive(Debug, Clone, Default)]
pub struct ForwardBatch {
    pub tokens: Vec<u32>,
    pub chunks: Vec<SeqChunk>,
}

impl ForwardBatch {
    pub fn single(seq: u64, start_pos: usize, tokens: &[u32], logits: LogitsWanted) -> Self {
        Self {
            tokens: tokens.to_vec(),
            chunks: vec![SeqChunk {
                seq,
                start_pos,
                len: tokens.len(),
                logits,
            }],
        }
    }

    pub fn push(&mut self, seq: u64, start_pos: usize, tokens: &[u32], logits: LogitsWanted) {
        self.tokens.extend_from_slice(tokens);
        self.chunks.push(SeqChunk {
            seq,
            start_pos,
            len: tokens.len(),
            logits,
        });
    }

    /// Number of logit rows [`Llama::forward`] returns for this batch.
    pub fn logit_rows(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| match c.logits {
                LogitsWanted::None => 0,
                LogitsWanted::Last => 1,
                LogitsWanted::All => c.len,
            })
            .sum()
    }
}

/// One layer's attention (the host-kernel or the tensor path), chosen once per forward.
pub(crate) type AttentionFn<'a> = dyn FnMut(usize, &Layer, &Tensor) -> Result<Tensor> + 'a;

pub(crate) struct Layer {
    pub attn_norm: Tensor,
    /// Q, K and V projections (fused when the weights allow it).
    pub qkv: Projections,
    pub o: Linear,
    pub mlp_norm: Tensor,
    /// Gate and up projections.
    pub gate_up: Projections,
    pub down: Linear,
}

pub struct Llama {
    pub(crate) cfg: ModelConfig,
    /// dtype of activations and of the KV cache.
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    pub(crate) embed: Tensor,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: Linear,
    pub(crate) rope: Rope,
    /// Buffers of the CPU serving path ([`crate::cpu_forward`]), kept between steps.
    pub(crate) cpu_workspace: std::sync::Mutex<crate::cpu_forward::Workspace>,
}

impl Llama {
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the batch and returns f32 logits of shape `(batch.logit_rows(), vocab)`, rows in
    /// chunk order. Keys and values of every token are written to `kv`.
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut dyn KvStore) -> Result<Tensor> {
        let n_tokens = batch.tokens.len();
        let covered: usize = batch.chunks.iter().map(|c| c.len).sum();
        if n_tokens == 0 || covered != n_tokens || batch.chunks.iter().any(|c| c.len == 0) {
            return Err(Error::Invalid(format!(
                "forward batch: {n_tokens} tokens, chunks cover {covered} (every chunk needs >= 1 token)"
            )));
        }
        let vocab = self.cfg.vocab_size as u32;
        if let Some(bad) = batch.tokens.iter().find(|&&t| t >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        // f32 on the CPU with a paged host cache: attention runs in place over the cache and
        // the layers on reused buffers.
        if self.device.is_cpu() && self.dtype == DType::F32 {
            let seqs: Vec<u64> = batch.chunks.iter().map(|c| c.seq).collect();
            if let Some(host) = kv.host_paged(&seqs)? {
                return crate::cpu_forward::forward(self, batch, host);
            }
        }
        let ids = Tensor::new(batch.tokens.as_slice(), &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?.to_dtype(self.dtype)?;
        let spans: Vec<_> = batch
            .chunks
            .iter()
            .map(|c| (c.start_pos, c.len, c.start_pos + c.len))
            .collect();
        // CUDA with a paged device cache: our kernels (rope, cache write, paged attention).
        #[cfg(feature = "cuda")]
        let device = crate::cuda_forward::DeviceBatch::new(self, batch, kv)?;
        #[cfg(not(feature = "cuda"))]
        let device: Option<std::convert::Infallible> = None;
        let mut attn: Box<AttentionFn> = match device {
            #[cfg(feature = "cuda")]
            Some(device) => Box::new(move |li, layer, h| device.attention(self, li, layer, h)),
            #[cfg(not(feature = "cuda"))]
            Some(never) => match never {},
            None => {
                let (cos, sin) = self.rope.cos_sin(&spans, &self.device)?;
                let (cos, sin) = (cos.to_dtype(self.dtype)?, sin.to_dtype(self.dtype)?);
                let masks = self.causal_masks(batch)?;
                Box::new(move |li, layer, h| {
                    self.attention(li, layer, h, batch, &cos, &sin, &masks, kv)
                })
            }
        };
        // On CUDA with our kernels: each residual add fused with the next RMSNorm; the final
        // norm then covers every row (cheap there) and the wanted rows are picked after it.
        #[cfg(feature = "cuda")]
        let fused_norms = crate::cuda_forward::fused_norms(&self.device, self.dtype);
        #[cfg(not(feature = "cuda"))]
        let fused_norms = false;
        #[allow(unused_mut)] // assigned only with the cuda feature
        let mut normed: Option<Tensor> = None;
        if fused_norms {
            #[cfg(feature = "cuda")]
            {
                normed = Some(crate::cuda_forward::run_layers(
                    self,
                    x.clone(),
                    &mut *attn,
                )?);
            }
        } else {
            for (li, layer) in self.layers.iter().enumerate() {
                let h = rms_norm(&x, &layer.attn_norm, self.cfg.rms_norm_eps)?;
                x = (x + attn(li, layer, &h)?)?;
                let h = rms_norm(&x, &layer.mlp_norm, self.cfg.rms_norm_eps)?;
                let act = crate::fused::silu_mul_joined(&layer.gate_up.forward_joined(&h)?)?;
                x = (x + layer.down.forward(&act)?)?;
            }
        }
        drop(attn);
        // Only the rows whose logits are wanted go through the final norm and lm_head.
        let mut rows: Vec<u32> = Vec::with_capacity(batch.logit_rows());
        let mut off = 0u32;
        for c in &batch.chunks {
            match c.logits {
                LogitsWanted::None => {}
                LogitsWanted::Last => rows.push(off + c.len as u32 - 1),
                LogitsWanted::All => rows.extend(off..off + c.len as u32),
            }
            off += c.len as u32;
        }
        if rows.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.cfg.vocab_size),
                DType::F32,
                &self.device,
            )?);
        }
        let rows = Tensor::new(rows.as_slice(), &self.device)?;
        let h = match normed {
            Some(all) => all.index_select(&rows, 0)?,
            None => rms_norm(
                &x.index_select(&rows, 0)?,
                &self.norm,
                self.cfg.rms_norm_eps,
            )?,
        };
        Ok(self.lm_head.forward(&h)?.to_dtype(DType::F32)?)
    }

    /// Additive causal masks (0 / -inf) for each multi-token chunk, in f32.
    fn causal_masks(&self, batch: &ForwardBatch) -> Result<Vec<Option<Tensor>>> {
        batch
            .chunks
            .iter()
            .map(|c| {
                if c.len == 1 {
                    return Ok(None);
                }
                let kv_len = c.start_pos + c.len;
                let mask: Vec<f32> = (0..c.len)
                    .flat_map(|i| {
                        (0..kv_len).map(move |j| {
                            if j > c.start_pos + i {
                                f32::NEG_INFINITY
                            } else {
                                0.
                            }
                        })
                    })
                    .collect();
                Ok(Some(Tensor::from_vec(mask, (c.len, kv_len), &self.device)?))
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        li: usize,
        layer: &Layer,
        h: &Tensor,
        batch: &ForwardBatch,
        cos: &Tensor,
        sin: &Tensor,
        masks: &[Option<Tensor>],
        kv: &mut dyn KvStore,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (n_tok, _) = h.dims2()?;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let group = nh / nkv;
        // (1, heads, tokens, head_dim): the layout candle's rope kernels take.
        let to_heads = |t: Tensor, heads: usize| -> Result<Tensor> {
            Ok(t.reshape((1, n_tok, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let qkv = layer.qkv.forward(h)?;
        let q = to_heads(qkv[0].clone(), nh)?;
        let k = to_heads(qkv[1].clone(), nkv)?;
        let v = to_heads(qkv[2].clone(), nkv)?;
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
        let scale = 1.0 / (hd as f64).sqrt();
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
            outs.push(o.to_dtype(self.dtype)?);
        }
        let o = if outs.len() == 1 {
            outs.pop().unwrap()
        } else {
            Tensor::cat(&outs, 0)?
        };
        Ok(layer.o.forward(&o)?)
    }

    /// Logits for every position of `tokens` fed as one fresh sequence (scoring, tests).
    pub fn logits_all(&self, tokens: &[u32]) -> Result<Tensor> {
        let mut kv = crate::kv::ContiguousKv::new();
        self.forward(
            &ForwardBatch::single(0, 0, tokens, LogitsWanted::All),
            &mut kv,
        )
    }
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(x, w, eps as f32)?)
}
