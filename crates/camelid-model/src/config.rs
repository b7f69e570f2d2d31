//! Model hyperparameters, read from an HF `config.json` or from GGUF metadata.

use crate::error::{Error, Result};
use serde::Deserialize;

/// How rotary embeddings pair the channels of a head (the kernels apply it; defined there).
pub use camelid_kernels::attention::RopeStyle;

/// Context-extension schemes for rotary embeddings.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions are divided by `factor` (vicuna-7b-v1.5-16k).
    Linear {
        factor: f32,
    },
    /// NTK-aware base rescaling once a sequence outgrows the trained context.
    Dynamic {
        factor: f32,
    },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
}

/// Everything the forward pass needs to know about the architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub rope_style: RopeStyle,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl ModelConfig {
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |m: String| Err(Error::BadConfig(format!("{origin}: {m}")));
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_layers == 0 {
            return bad(
                "num_attention_heads, num_key_value_heads and num_hidden_layers must be > 0".into(),
            );
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim
            ));
        }
        Ok(())
    }
}

/// The subset of HF `config.json` that LLaMA-family models use.
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<serde_json::Value>,
    pub eos_token_id: Option<serde_json::Value>,
    pub torch_dtype: Option<String>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f32 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}

/// Ids from a JSON value that is either a number or a list of numbers.
pub fn ids_from_json(v: &serde_json::Value) -> Vec<u32> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

impl HfConfig {
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::BadConfig(format!("{origin}: {e}")))
    }

    pub fn to_model_config(&self, origin: &str) -> Result<ModelConfig> {
        let known = self
            .architectures
            .iter()
            .any(|a| a == "LlamaForCausalLM" || a == "MistralForCausalLM")
            || matches!(self.model_type.as_deref(), Some("llama") | Some("mistral"));
        if !known {
            return Err(Error::Unsupported(format!(
                "{origin}: architecture {:?} (model_type {:?}) is not LLaMA-family",
                self.architectures, self.model_type
            )));
        }
        let rope_scaling = parse_rope_scaling(self.rope_scaling.as_ref(), origin)?;
        let cfg = ModelConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            vocab_size: self.vocab_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling,
            rope_style: RopeStyle::Half,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }
}

/// Parses HF's `rope_scaling` object (`type` or `rope_type` key).
pub fn parse_rope_scaling(v: Option<&serde_json::Value>, origin: &str) -> Result<RopeScaling> {
    let Some(v) = v else {
        return Ok(RopeScaling::None);
    };
    if v.is_null() {
        return Ok(RopeScaling::None);
    }
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|k| k.as_str())
        .unwrap_or("default");
    let f = |key: &str| v.get(key).and_then(|x| x.as_f64()).map(|x| x as f32);
    let need = |key: &str| {
        f(key).ok_or_else(|| Error::BadConfig(format!("{origin}: rope_scaling.{key} is missing")))
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        "dynamic" => RopeScaling::Dynamic {
            factor: need("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")? as usize,
        },
        other => {
            return Err(Error::Unsupported(format!(
                "{origin}: rope_scaling type {other:?} (supported: linear, dynamic, llama3)"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "vocab_size": 100, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 256
        })
    }

    #[test]
    fn parses_gqa_and_defaults() {
        let c = HfConfig::parse(&base().to_string(), "t")
            .unwrap()
            .to_model_config("t")
            .unwrap();
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (4, 2, 16));
        assert_eq!(c.rope_theta, 10_000.0);
        assert_eq!(c.rope_scaling, RopeScaling::None);
    }

    #[test]
    fn parses_rope_scaling_kinds() {
        let mut j = base();
        j["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 4.0});
        let c = HfConfig::parse(&j.to_string(), "t")
            .unwrap()
            .to_model_config("t")
            .unwrap();
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 4.0 });
        j["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = HfConfig::parse(&j.to_string(), "t")
            .unwrap()
            .to_model_config("t")
            .unwrap();
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { .. }));
        j["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0});
        let e = HfConfig::parse(&j.to_string(), "t")
            .unwrap()
            .to_model_config("t")
            .unwrap_err();
        assert!(e.to_string().contains("yarn"), "{e}");
    }

    #[test]
    fn missing_field_names_it() {
        let mut j = base();
        j.as_object_mut().unwrap().remove("hidden_size");
        let e = HfConfig::parse(&j.to_string(), "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size") && e.contains("cfg.json"), "{e}");
    }

    #[test]
    fn refuses_other_architectures() {
        let mut j = base();
        j["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        let e = HfConfig::parse(&j.to_string(), "t")
            .unwrap()
            .to_model_config("t")
            .unwrap_err();
        assert!(e.to_string().contains("GPT2LMHeadModel"));
    }
}
