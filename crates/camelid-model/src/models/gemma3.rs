//! Gemma 3, text (`Gemma3ForCausalLM`, `model_type` `gemma3_text`; GGUF `gemma3`): Gemma 2's
//! layers (see [`super::gemma2`]) with an RMSNorm over each head of Q and K before rope
//! (`1 + w` too), no soft-capping, and five local layers to a global one
//! (`sliding_window_pattern` 6, or `layer_types`): the local ones with a rope base of their
//! own (`rope_local_base_freq`, unscaled), the global ones with `rope_theta` and any
//! `rope_scaling`.

use super::gemma2::gemma_features;
use super::{Architecture, NestedLanguageModel};
use crate::config::{ArchFeatures, HfConfig, RopeStyle};
use crate::error::{Error, Result};

pub const ARCH: Architecture = Architecture {
    name: "gemma3",
    hf_architectures: &["Gemma3ForCausalLM"],
    model_types: &["gemma3_text"],
    gguf_rope: RopeStyle::Half,
    gguf_window: true,
    hf_features,
    tied_by_default: true,
    hf_norm_offset: 1.0,
    hf_class,
};

/// Gemma 3 4B, 12B and 27B are published as `Gemma3ForConditionalGeneration` (a vision tower
/// beside the language model): the language model is served alone, its config taken from
/// `text_config` over the defaults of transformers' `Gemma3TextConfig` (the published
/// `text_config`s list only what differs from them), its weights from under
/// `language_model.model.` (or `model.language_model.`, as newer transformers save them).
pub const MULTIMODAL: NestedLanguageModel = NestedLanguageModel {
    hf_architecture: "Gemma3ForConditionalGeneration",
    text_architecture: "Gemma3ForCausalLM",
    text_defaults,
    prefixes: &[
        ("language_model.model.", "model."),
        ("language_model.lm_head.", "lm_head."),
        ("model.language_model.", "model."),
    ],
};

/// transformers' `Gemma3TextConfig` defaults (v4.50), the ones camelid reads.
fn text_defaults() -> serde_json::Value {
    serde_json::json!({
        "model_type": "gemma3_text", "vocab_size": 262_208, "hidden_size": 2304,
        "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 8,
        "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6, "bos_token_id": 2,
        "eos_token_id": 1, "tie_word_embeddings": true, "rope_theta": 1_000_000.0,
        "attention_bias": false, "query_pre_attn_scalar": 256, "sliding_window": 4096,
        "final_logit_softcapping": null, "attn_logit_softcapping": null, "rope_scaling": null,
        "rope_local_base_freq": 10_000.0, "sliding_window_pattern": 6
    })
}

/// Gemma 3's layer pattern and local rope base where a GGUF does not say (llama.cpp's).
pub const DEFAULT_PATTERN: usize = 6;
pub const DEFAULT_LOCAL_THETA: f32 = 10_000.0;

fn hf_features(hf: &HfConfig, origin: &str) -> Result<ArchFeatures> {
    let mut f = gemma_features(hf, origin)?;
    f.qk_norm = true;
    f.local_rope_theta = Some(hf.rope_local_base_freq.unwrap_or(DEFAULT_LOCAL_THETA));
    f.global_every = Some(match &hf.layer_types {
        Some(types) => pattern_of(types, origin)?,
        None => hf.sliding_window_pattern.unwrap_or(DEFAULT_PATTERN),
    });
    Ok(f)
}

/// The `n` of a `layer_types` list in which every `n`-th layer is `full_attention` and the
/// others `sliding_attention`; any other arrangement is refused.
fn pattern_of(types: &[String], origin: &str) -> Result<usize> {
    let n = types
        .iter()
        .position(|t| t == "full_attention")
        .map_or(types.len() + 1, |i| i + 1);
    let fits = types.iter().enumerate().all(|(i, t)| {
        let global = (i + 1).is_multiple_of(n);
        t == if global {
            "full_attention"
        } else {
            "sliding_attention"
        }
    });
    if !fits {
        return Err(Error::Unsupported(format!(
            "{origin}: layer_types {types:?} (served: every n-th layer full_attention, the \
             others sliding_attention)"
        )));
    }
    Ok(n)
}

/// `Gemma3TextConfig`'s defaults where a `Gemma3ForCausalLM` config leaves keys out.
fn hf_class(obj: &mut super::JsonObject) {
    super::fill_absent(obj, text_defaults());
}
