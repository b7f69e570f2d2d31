//! Mistral (`MistralForCausalLM`): LLaMA's layers; v0.1 attends a sliding window of 4096
//! keys (`sliding_window`), later versions every key (`sliding_window: null`). Its GGUF
//! files are `llama` ones (see [`super::llama`]).

use super::{refuse_output_bias, Architecture};
use crate::config::{ArchFeatures, HfConfig, RopeStyle};
use crate::error::Result;

pub const ARCH: Architecture = Architecture {
    name: "mistral",
    hf_architectures: &["MistralForCausalLM"],
    model_types: &["mistral"],
    gguf_rope: RopeStyle::Interleaved,
    gguf_window: true,
    hf_features,
    tied_by_default: false,
    hf_norm_offset: 0.0,
    hf_class,
};

fn hf_features(hf: &HfConfig, origin: &str) -> Result<ArchFeatures> {
    refuse_output_bias(hf, origin)?;
    Ok(ArchFeatures {
        sliding_window: hf.sliding_window,
        ..Default::default()
    })
}

/// `MistralConfig`'s defaults that differ from LLaMA's: a config without `sliding_window`
/// attends a window of 4096 keys (v0.1's; later versions say `null`).
fn hf_class(obj: &mut super::JsonObject) {
    super::fill_absent(
        obj,
        serde_json::json!({"sliding_window": 4096, "num_key_value_heads": 8,
            "max_position_embeddings": 131_072}),
    );
}
