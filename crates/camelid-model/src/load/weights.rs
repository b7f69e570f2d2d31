//! Builds a [`Llama`] from any source of named tensors. Sources speak HF tensor names
//! (`model.layers.0.self_attn.q_proj.weight`); the GGUF source translates them.

use crate::config::ModelConfig;
use crate::embedding::Embeddings;
use crate::error::{Error, Result};
use crate::linear::{Linear, Projections};
use crate::models::llama::{Layer, Llama};
use crate::rope::Rope;
use candle_core::{DType, Device, Tensor};

/// A store of named weights in HF naming.
pub trait TensorSource {
    /// Where the tensors come from, for error messages.
    fn origin(&self) -> String;
    fn contains(&self, name: &str) -> bool;
    /// Shape `(out, in)` as stored.
    fn shape(&self, name: &str) -> Result<Vec<usize>>;
    /// A weight matrix for a linear layer: quantized where the source is, else in `dtype`.
    fn linear(&mut self, name: &str, dtype: DType) -> Result<Linear>;
    /// A dense tensor in `dtype`.
    fn dense(&mut self, name: &str, dtype: DType) -> Result<Tensor>;
    /// The token embedding table: dense in `dtype` unless the source keeps it quantized.
    fn embeddings(&mut self, name: &str, dtype: DType) -> Result<Embeddings> {
        Ok(Embeddings::Dense(self.dense(name, dtype)?))
    }
    /// The output projection of a model whose embedding table `embed` (read from `name`)
    /// doubles as it: by default read again as a linear layer (quantized where the source
    /// is); a source whose linear would be the same dense matrix shares the table instead.
    fn tied_head(&mut self, name: &str, dtype: DType, _embed: &Embeddings) -> Result<Linear> {
        self.linear(name, dtype)
    }
}

fn check_shape(src: &dyn TensorSource, name: &str, want: &[usize]) -> Result<()> {
    let have = src.shape(name)?;
    if have != want {
        return Err(Error::BadWeights(format!(
            "{}: tensor {name} has shape {have:?}, the config implies {want:?}",
            src.origin()
        )));
    }
    Ok(())
}

fn linear(
    src: &mut dyn TensorSource,
    name: &str,
    out: usize,
    inp: usize,
    dtype: DType,
) -> Result<Linear> {
    check_shape(src, name, &[out, inp])?;
    src.linear(name, dtype)
}

fn vector(src: &mut dyn TensorSource, name: &str, n: usize, dtype: DType) -> Result<Tensor> {
    check_shape(src, name, &[n])?;
    src.dense(name, dtype)
}

/// An RMSNorm weight plus `offset` (Gemma's HF `1 + w`), added in f32 as HF computes it.
fn norm(
    src: &mut dyn TensorSource,
    name: &str,
    n: usize,
    offset: f32,
    dtype: DType,
) -> Result<Tensor> {
    let w = vector(src, name, n, DType::F32)?;
    let w = if offset != 0.0 {
        (w + offset as f64)?
    } else {
        w
    };
    Ok(w.to_dtype(dtype)?)
}

/// Loads every layer, checking each tensor's shape against `cfg`.
pub fn build_llama(
    cfg: ModelConfig,
    src: &mut dyn TensorSource,
    dtype: DType,
    device: &Device,
) -> Result<Llama> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let q_out = cfg.num_heads * cfg.head_dim;
    let kv_out = cfg.num_kv_heads * cfg.head_dim;
    let off = cfg.norm_weight_offset;
    let embed_name = "model.embed_tokens.weight";
    check_shape(src, embed_name, &[cfg.vocab_size, h])?;
    let embed = src.embeddings(embed_name, dtype)?;
    // Not reserved from the count: a file's count is untrusted (u32::MAX layers would abort
    // the process); the first missing layer's tensor ends the load with an error.
    let mut layers = Vec::new();
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        let qkv_bias = if cfg.features.qkv_bias {
            let parts = [("q", q_out), ("k", kv_out), ("v", kv_out)]
                .into_iter()
                .map(|(n, w)| vector(src, &format!("{p}.self_attn.{n}_proj.bias"), w, dtype))
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&parts, 0)?)
        } else {
            None
        };
        let qk_norm = if cfg.features.qk_norm {
            let hd = cfg.head_dim;
            Some((
                norm(src, &format!("{p}.self_attn.q_norm.weight"), hd, off, dtype)?,
                norm(src, &format!("{p}.self_attn.k_norm.weight"), hd, off, dtype)?,
            ))
        } else {
            None
        };
        // Gemma: `post_attention_layernorm` norms the attention's output, the MLP's input
        // norm is `pre_feedforward_layernorm`.
        let (post_norms, mlp_norm_name) = if cfg.features.post_norms {
            let post = (
                norm(
                    src,
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                    off,
                    dtype,
                )?,
                norm(
                    src,
                    &format!("{p}.post_feedforward_layernorm.weight"),
                    h,
                    off,
                    dtype,
                )?,
            );
            (Some(post), format!("{p}.pre_feedforward_layernorm.weight"))
        } else {
            (None, format!("{p}.post_attention_layernorm.weight"))
        };
        layers.push(Layer {
            qkv_bias,
            qk_norm,
            post_norms,
            attn_norm: norm(src, &format!("{p}.input_layernorm.weight"), h, off, dtype)?,
            // Fused only where the separate matrices are absent: in GGUF, Phi-3's fused gate
            // and up share LLaMA's up name (`ffn_up`).
            qkv: if src.contains(&format!("{p}.self_attn.qkv_proj.weight"))
                && !src.contains(&format!("{p}.self_attn.q_proj.weight"))
            {
                // One matrix for all three (Phi-3), rows Q then K then V.
                let name = format!("{p}.self_attn.qkv_proj.weight");
                Projections::Fused {
                    linear: linear(src, &name, q_out + 2 * kv_out, h, dtype)?,
                    widths: vec![q_out, kv_out, kv_out],
                }
            } else {
                Projections::new(vec![
                    linear(
                        src,
                        &format!("{p}.self_attn.q_proj.weight"),
                        q_out,
                        h,
                        dtype,
                    )?,
                    linear(
                        src,
                        &format!("{p}.self_attn.k_proj.weight"),
                        kv_out,
                        h,
                        dtype,
                    )?,
                    linear(
                        src,
                        &format!("{p}.self_attn.v_proj.weight"),
                        kv_out,
                        h,
                        dtype,
                    )?,
                ])
            },
            o: linear(
                src,
                &format!("{p}.self_attn.o_proj.weight"),
                h,
                q_out,
                dtype,
            )?,
            mlp_norm: norm(src, &mlp_norm_name, h, off, dtype)?,
            gate_up: if src.contains(&format!("{p}.mlp.gate_up_proj.weight"))
                && !src.contains(&format!("{p}.mlp.gate_proj.weight"))
            {
                // One matrix for both (Phi-3), gate rows first.
                let name = format!("{p}.mlp.gate_up_proj.weight");
                Projections::Fused {
                    linear: linear(src, &name, 2 * i, h, dtype)?,
                    widths: vec![i, i],
                }
            } else {
                Projections::new(vec![
                    linear(src, &format!("{p}.mlp.gate_proj.weight"), i, h, dtype)?,
                    linear(src, &format!("{p}.mlp.up_proj.weight"), i, h, dtype)?,
                ])
            },
            down: linear(src, &format!("{p}.mlp.down_proj.weight"), h, i, dtype)?,
        });
    }
    let final_norm = norm(src, "model.norm.weight", h, off, dtype)?;
    let lm_head = if !cfg.tie_word_embeddings && src.contains("lm_head.weight") {
        linear(src, "lm_head.weight", cfg.vocab_size, h, dtype)?
    } else {
        if !cfg.tie_word_embeddings {
            // An embedding model's checkpoint may have no head (only its hidden states are
            // read); a chat model's missing head would answer garbage: said, not silent.
            tracing::warn!(
                "{}: lm_head.weight is missing and the embeddings are not tied: the embedding \
                 matrix stands in for it, so generated text will be meaningless (embeddings, \
                 which read the hidden states, are unaffected)",
                src.origin()
            );
        }
        // Tied: the embedding matrix doubles as the output projection, quantized if the
        // source stores it quantized (a stray lm_head is not read, as in transformers).
        src.tied_head(embed_name, dtype, &embed)?
    };
    let rope = Rope::new(&cfg);
    // Gemma 3's local layers: their own base, no scaling.
    let rope_local = cfg.features.local_rope_theta.map(|theta| {
        let mut local = cfg.clone();
        local.rope_theta = theta;
        local.rope_scaling = crate::config::RopeScaling::None;
        Rope::new(&local)
    });
    Ok(Llama {
        cfg,
        dtype,
        device: device.clone(),
        embed,
        layers,
        norm: final_norm,
        lm_head,
        rope,
        rope_local,
        host_norms: Default::default(),
        #[cfg(feature = "cuda")]
        cuda_graphs: Default::default(),
    })
}
