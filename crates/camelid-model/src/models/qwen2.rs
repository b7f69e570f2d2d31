//! Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`, GGUF `qwen2`): LLaMA's layers with biases on Q, K
//! and V; YaRN rope scaling for long contexts (`rope_scaling.type = "yarn"`, see
//! [`crate::rope`]); tied embeddings in the small sizes.

use super::{refuse_qwen_window, Architecture};
use crate::config::{ArchFeatures, HfConfig, RopeStyle};
use crate::error::Result;

pub const ARCH: Architecture = Architecture {
    name: "qwen2",
    hf_architectures: &["Qwen2ForCausalLM"],
    model_types: &["qwen2"],
    gguf_rope: RopeStyle::Half,
    gguf_window: false,
    hf_features,
    tied_by_default: false,
    hf_norm_offset: 0.0,
    hf_class,
};

fn hf_features(hf: &HfConfig, origin: &str) -> Result<ArchFeatures> {
    refuse_qwen_window(hf, origin)?;
    // HF's Qwen2Attention always has Q/K/V biases (and none on O), whatever the config says.
    Ok(ArchFeatures {
        qkv_bias: true,
        ..Default::default()
    })
}

/// `Qwen2Config`'s defaults that differ from LLaMA's.
fn hf_class(obj: &mut super::JsonObject) {
    super::fill_absent(
        obj,
        serde_json::json!({"num_key_value_heads": 32, "max_position_embeddings": 32_768}),
    );
}
