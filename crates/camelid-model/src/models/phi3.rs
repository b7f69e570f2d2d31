//! Phi-3 / Phi-3.5 (`Phi3ForCausalLM`, GGUF `phi3`): LLaMA's layers with Q, K and V in one
//! fused `qkv_proj` and gate and up in one `gate_up_proj` (read as fused projections, see
//! `load/weights.rs`), LongRoPE for long contexts (see [`crate::rope`]) and a sliding window
//! in some sizes (`sliding_window`).

use super::{refuse_output_bias, Architecture};
use crate::config::{ArchFeatures, HfConfig, RopeStyle};
use crate::error::{Error, Result};

pub const ARCH: Architecture = Architecture {
    name: "phi3",
    hf_architectures: &["Phi3ForCausalLM"],
    model_types: &["phi3"],
    gguf_rope: RopeStyle::Half,
    gguf_window: true,
    hf_features,
    tied_by_default: false,
    hf_norm_offset: 0.0,
};

fn hf_features(hf: &HfConfig, origin: &str) -> Result<ArchFeatures> {
    refuse_output_bias(hf, origin)?;
    if hf.partial_rotary_factor.is_some_and(|f| f != 1.0) {
        return Err(Error::Unsupported(format!(
            "{origin}: partial_rotary_factor (rope on part of each head)"
        )));
    }
    Ok(ArchFeatures {
        sliding_window: hf.sliding_window,
        ..Default::default()
    })
}
