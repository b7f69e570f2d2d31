//! Qwen3 (`Qwen3ForCausalLM`, GGUF `qwen3`): LLaMA's layers with an RMSNorm over each head of
//! Q and K before rope (`q_norm`, `k_norm`: weights of `head_dim`), no biases, and a head
//! size of its own (`head_dim`, not `hidden / heads`).

use super::{refuse_output_bias, refuse_qwen_window, Architecture};
use crate::config::{ArchFeatures, HfConfig, RopeStyle};
use crate::error::Result;

pub const ARCH: Architecture = Architecture {
    name: "qwen3",
    hf_architectures: &["Qwen3ForCausalLM"],
    model_types: &["qwen3"],
    gguf_rope: RopeStyle::Half,
    gguf_window: false,
    hf_features,
    tied_by_default: false,
    hf_norm_offset: 0.0,
    hf_class,
};

fn hf_features(hf: &HfConfig, origin: &str) -> Result<ArchFeatures> {
    refuse_qwen_window(hf, origin)?;
    refuse_output_bias(hf, origin)?;
    Ok(ArchFeatures {
        qk_norm: true,
        ..Default::default()
    })
}

/// `Qwen3Config`'s defaults that differ from LLaMA's: heads of 128 whatever
/// `hidden_size / num_attention_heads` is.
fn hf_class(obj: &mut super::JsonObject) {
    super::fill_absent(
        obj,
        serde_json::json!({"head_dim": 128, "num_key_value_heads": 32,
            "max_position_embeddings": 32_768}),
    );
}
