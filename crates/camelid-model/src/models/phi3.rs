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
    hf_class,
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

/// `Phi3Config`'s defaults that differ from LLaMA's, and its rename of the older LongRoPE
/// names: a `rope_scaling` of type `su` or `yarn` is LongRoPE (short and long factors), not
/// YaRN.
fn hf_class(obj: &mut super::JsonObject) {
    super::fill_absent(
        obj,
        serde_json::json!({"rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
            "original_max_position_embeddings": 4096}),
    );
    if let Some(serde_json::Value::Object(scaling)) = obj.get_mut("rope_scaling") {
        for key in ["rope_type", "type"] {
            if let Some(kind) = scaling.get_mut(key) {
                if matches!(kind.as_str(), Some("su" | "yarn")) {
                    *kind = "longrope".into();
                }
            }
        }
    }
}
