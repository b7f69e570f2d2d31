//! Gemma 3, text (`Gemma3ForCausalLM`, `model_type` `gemma3_text`; GGUF `gemma3`): Gemma 2's
//! layers (see [`super::gemma2`]) with an RMSNorm over each head of Q and K before rope
//! (`1 + w` too), no soft-capping, and five local layers to a global one
//! (`sliding_window_pattern` 6, or `layer_types`): the local ones with a rope base of their
//! own (`rope_local_base_freq`, unscaled), the global ones with `rope_theta` and any
//! `rope_scaling`.

use super::gemma2::gemma_features;
use super::Architecture;
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
};

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
