//! Gemma 2 (`Gemma2ForCausalLM`, GGUF `gemma2`): RMSNorms scaling by `1 + w` (HF stores `w`),
//! GeGLU (tanh GELU), embeddings times `sqrt(hidden)`, norms on the attention's and the MLP's
//! outputs too, scores scaled by `query_pre_attn_scalar^-1/2` and soft-capped, logits
//! soft-capped, and every other layer local: layers 0, 2, … attend a sliding window, 1, 3, …
//! every key. Embeddings tied.

use super::{refuse_output_bias, Architecture};
use crate::config::{Activation, ArchFeatures, HfConfig, RopeStyle};
use crate::error::{Error, Result};

pub const ARCH: Architecture = Architecture {
    name: "gemma2",
    hf_architectures: &["Gemma2ForCausalLM"],
    model_types: &["gemma2"],
    gguf_rope: RopeStyle::Half,
    gguf_window: true,
    hf_features,
    tied_by_default: true,
    hf_norm_offset: 1.0,
    hf_class,
};

/// Gemma 2's soft-capping of attention scores and of logits where its config has no key
/// (`Gemma2Config`'s defaults; llama.cpp's too where a GGUF has none). An explicit null is off.
pub const GEMMA2_ATTN_SOFTCAP: f32 = 50.0;
pub const GEMMA2_FINAL_SOFTCAP: f32 = 30.0;

fn hf_features(hf: &HfConfig, origin: &str) -> Result<ArchFeatures> {
    let mut f = gemma_features(hf, origin)?;
    f.global_every = Some(2);
    Ok(f)
}

/// What Gemma 2 and Gemma 3 share, read from an HF config (the layer pattern is each one's).
pub(super) fn gemma_features(hf: &HfConfig, origin: &str) -> Result<ArchFeatures> {
    refuse_output_bias(hf, origin)?;
    let act = hf
        .hidden_activation
        .as_deref()
        .or(hf.hidden_act.as_deref())
        .unwrap_or("gelu_pytorch_tanh");
    if !matches!(act, "gelu_pytorch_tanh" | "gelu_new" | "gelu_tanh") {
        return Err(Error::Unsupported(format!(
            "{origin}: hidden_activation {act:?} (Gemma is served with gelu_pytorch_tanh)"
        )));
    }
    // HF's config classes' default.
    let scalar = hf.query_pre_attn_scalar.unwrap_or(256.0);
    Ok(ArchFeatures {
        sliding_window: hf.sliding_window,
        post_norms: true,
        activation: Activation::GeluTanh,
        embed_scale: Some((hf.hidden_size as f64).sqrt() as f32),
        attn_scale: (scalar > 0.0).then(|| scalar.powf(-0.5) as f32),
        attn_softcap: hf.attn_logit_softcapping.flatten().map(|x| x as f32),
        final_softcap: hf.final_logit_softcapping.flatten().map(|x| x as f32),
        ..Default::default()
    })
}

/// `query_pre_attn_scalar` as llama.cpp sets it for a GGUF (which does not store it): the
/// head size, but `hidden / heads` for the 27B models (46 layers for Gemma 2, 62 for
/// Gemma 3), as HF's configs of those have it.
pub(crate) fn gguf_attn_scale(
    arch: &str,
    layers: usize,
    hidden: usize,
    heads: usize,
    head_dim: usize,
) -> f32 {
    let big = matches!((arch, layers), ("gemma2", 46) | ("gemma3", 62));
    let scalar = if big { hidden / heads.max(1) } else { head_dim };
    1.0 / (scalar as f32).sqrt()
}

/// `Gemma2Config`'s defaults that differ from LLaMA's (soft-capping at 50 and 30 where the
/// keys are absent; an explicit null is off).
fn hf_class(obj: &mut super::JsonObject) {
    super::fill_absent(
        obj,
        serde_json::json!({"head_dim": 256, "num_key_value_heads": 4,
            "max_position_embeddings": 8192, "query_pre_attn_scalar": 256,
            "sliding_window": 4096, "attn_logit_softcapping": GEMMA2_ATTN_SOFTCAP,
            "final_logit_softcapping": GEMMA2_FINAL_SOFTCAP}),
    );
}
