//! Model architectures, one file each: what each is called in HF configs and GGUF files, and
//! what sets its layers apart from LLaMA's as data ([`ArchFeatures`]: biases, norms, attention
//! window). The weights live in [`llama::Llama`] whatever the architecture; the runtimes'
//! layer loops read the features, never a layer loop per architecture.

pub mod gemma2;
pub mod gemma3;
pub mod llama;
pub mod mistral;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;

pub use llama::Llama;

use crate::config::{ArchFeatures, HfConfig, ModelConfig, RopeStyle};
use crate::error::{Error, Result};

/// One architecture's names and the reading of its HF config.
pub struct Architecture {
    /// The name in `ModelConfig::architecture` and GGUF's `general.architecture`; also the
    /// prefix of its GGUF metadata keys (`qwen2.attention.head_count`).
    pub name: &'static str,
    /// HF `architectures` entries and `model_type` values that name it.
    pub hf_architectures: &'static [&'static str],
    pub model_types: &'static [&'static str],
    /// GGUF's rotary layout: llama.cpp's converter permutes LLaMA's Q/K rows so rotary pairs
    /// are adjacent; Qwen's it leaves as HF has them (halves, llama.cpp's NEOX rope).
    pub gguf_rope: RopeStyle,
    /// Whether a GGUF of this architecture may carry `<name>.attention.sliding_window`.
    pub gguf_window: bool,
    /// The features an HF `config.json` of this architecture implies.
    pub hf_features: fn(&HfConfig, &str) -> Result<ArchFeatures>,
    /// Whether embeddings are tied where `config.json` does not say (HF's config classes'
    /// default: Gemma's `True`).
    pub tied_by_default: bool,
    /// [`ModelConfig::norm_weight_offset`] for its HF checkpoints (Gemma: 1).
    pub hf_norm_offset: f32,
    /// What its transformers config class does to a `config.json` before camelid reads it:
    /// the class's defaults for the keys a config leaves out where they differ from
    /// LLaMA's (Mistral's 4096-key window, Qwen3's 128-wide heads, Phi-3's eps), and the
    /// class's renames of older values. Without them a config that leaves a key out would
    /// load with LLaMA's value and answer differently from the same checkpoint in HF.
    pub hf_class: fn(&mut JsonObject),
}

/// A `config.json`'s top-level object.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// Puts each key of `defaults` (a JSON object) into `obj` where `obj` lacks it. A key present
/// as null stays null: HF's classes take an explicit null as given (Mistral's
/// `sliding_window: null` is no window).
pub(crate) fn fill_absent(obj: &mut JsonObject, defaults: serde_json::Value) {
    if let serde_json::Value::Object(d) = defaults {
        for (k, v) in d {
            obj.entry(k).or_insert(v);
        }
    }
}

/// For architectures whose config class agrees with LLaMA's on every key camelid reads.
pub(crate) fn as_llama(_: &mut JsonObject) {}

/// Every architecture camelid serves (a GGUF name is looked up in this order).
pub const ARCHITECTURES: &[&Architecture] = &[
    &llama::ARCH,
    &mistral::ARCH,
    &qwen2::ARCH,
    &qwen3::ARCH,
    &phi3::ARCH,
    &gemma2::ARCH,
    &gemma3::ARCH,
];

/// A multimodal HF checkpoint whose language model camelid serves alone: its config nests the
/// language model's as `text_config`, its weights carry a prefix.
pub struct NestedLanguageModel {
    /// The checkpoint's `architectures` entry.
    pub hf_architecture: &'static str,
    /// The language model's own class, given to the unnested config.
    pub text_architecture: &'static str,
    /// What `text_config` leaves out (the config class's defaults).
    pub text_defaults: fn() -> serde_json::Value,
    /// Stored weight-name prefixes and the language model's own (`model.`, `lm_head.`).
    pub prefixes: Renames,
}

/// `(stored prefix, the name's own prefix)` pairs.
pub type Renames = &'static [(&'static str, &'static str)];

/// Multimodal checkpoints whose language model is served.
pub const NESTED: &[&NestedLanguageModel] = &[&gemma3::MULTIMODAL];

/// `config.json` as text → the language model's [`HfConfig`], and for a multimodal checkpoint
/// of [`NESTED`] the weight-name prefixes to read its language model under.
pub fn parse_hf_config(text: &str, origin: &str) -> Result<(HfConfig, Option<Renames>)> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::BadConfig(format!("{origin}: {e}")))?;
    // A checkpoint quantized by its publisher (FP8 with block scales, GPTQ, AWQ,
    // bitsandbytes): its weights mean nothing without the scales camelid does not read, so
    // loaded as plain tensors it would answer garbage. Refused by name instead.
    if let Some(q) = v.get("quantization_config").filter(|q| !q.is_null()) {
        let method = q
            .get("quant_method")
            .and_then(|m| m.as_str())
            .unwrap_or("unnamed");
        return Err(Error::BadConfig(format!(
            "{origin}: quantization_config: checkpoints quantized with {method:?} are not \
             supported; load the unquantized weights (quantize them at load with --quantize) \
             or a GGUF file"
        )));
    }
    let nested = NESTED.iter().find(|n| {
        v.get("architectures")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.iter().any(|c| c.as_str() == Some(n.hf_architecture)))
    });
    let (Some(n), Some(text_config)) = (nested, v.get("text_config")) else {
        return Ok((as_its_class(v, origin)?, None));
    };
    let mut merged = (n.text_defaults)();
    for (k, x) in text_config.as_object().into_iter().flatten() {
        merged[k] = x.clone();
    }
    // Token ids and the dtype are said at the top level of the published configs.
    for k in ["bos_token_id", "eos_token_id", "torch_dtype"] {
        if let Some(x) = v.get(k) {
            if text_config.get(k).is_none() {
                merged[k] = x.clone();
            }
        }
    }
    merged["architectures"] = serde_json::json!([n.text_architecture]);
    Ok((as_its_class(merged, origin)?, Some(n.prefixes)))
}

/// A config read as its architecture's transformers class reads it ([`Architecture::hf_class`]).
/// A config naming no served architecture is parsed as it is (`config_from_hf` refuses it).
fn as_its_class(mut v: serde_json::Value, origin: &str) -> Result<HfConfig> {
    let hf = HfConfig::parse(&v.to_string(), origin)?;
    let (Ok(arch), Some(obj)) = (for_hf(&hf, origin), v.as_object_mut()) else {
        return Ok(hf);
    };
    (arch.hf_class)(obj);
    HfConfig::parse(&v.to_string(), origin)
}

/// The architecture of an HF config (its `architectures`, else its `model_type`).
pub fn for_hf(hf: &HfConfig, origin: &str) -> Result<&'static Architecture> {
    // A classifier's or reward model's checkpoint (its head scores, it does not predict
    // tokens) of a served architecture: its model_type would pass.
    const HEADS: [&str; 4] = [
        "ForSequenceClassification",
        "ForTokenClassification",
        "ForQuestionAnswering",
        "RewardModel",
    ];
    if let Some(c) = hf
        .architectures
        .iter()
        .find(|c| HEADS.iter().any(|h| c.contains(h)))
    {
        return Err(Error::Unsupported(format!(
            "{origin}: {c} is a classification or reward head, not a language model camelid \
             can serve ({})",
            supported()
        )));
    }
    let by_class = ARCHITECTURES.iter().find(|a| {
        hf.architectures
            .iter()
            .any(|c| a.hf_architectures.contains(&c.as_str()))
    });
    let by_type = || {
        ARCHITECTURES.iter().find(|a| {
            hf.model_type
                .as_deref()
                .is_some_and(|t| a.model_types.contains(&t))
        })
    };
    by_class.or_else(by_type).copied().ok_or_else(|| {
        Error::Unsupported(format!(
            "{origin}: architecture {:?} (model_type {:?}) is not one camelid serves ({})",
            hf.architectures,
            hf.model_type,
            supported()
        ))
    })
}

/// The architecture GGUF's `general.architecture` names.
pub fn for_gguf(name: &str, origin: &str) -> Result<&'static Architecture> {
    ARCHITECTURES
        .iter()
        .find(|a| a.name == name)
        .copied()
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "{origin}: general.architecture is {name:?}; camelid serves {}",
                supported()
            ))
        })
}

fn supported() -> String {
    let mut names: Vec<&str> = ARCHITECTURES.iter().map(|a| a.name).collect();
    names.dedup();
    names.join(", ")
}

/// `config.json` → [`ModelConfig`]: the shared hyperparameters plus the architecture's
/// features.
pub fn config_from_hf(hf: &HfConfig, origin: &str) -> Result<ModelConfig> {
    let arch = for_hf(hf, origin)?;
    // The SiLU-gated architectures run SiLU whatever the config says: another activation
    // would load and answer wrongly (Gemma's is checked by its own features).
    if !arch.name.starts_with("gemma") {
        if let Some(act) = hf
            .hidden_act
            .as_deref()
            .filter(|a| !matches!(*a, "silu" | "swish"))
        {
            return Err(Error::Unsupported(format!(
                "{origin}: hidden_act {act:?} ({} is served with silu)",
                arch.name
            )));
        }
    }
    let mut cfg = hf.base_config(origin)?;
    cfg.architecture = arch.name.to_string();
    cfg.features = (arch.hf_features)(hf, origin)?;
    cfg.tie_word_embeddings = hf.tie_word_embeddings.unwrap_or(arch.tied_by_default);
    cfg.norm_weight_offset = arch.hf_norm_offset;
    cfg.validate(origin)?;
    Ok(cfg)
}

/// HF's Qwen2/Qwen3 window applies to some layers only (`max_window_layers`), and no
/// released checkpoint turns it on: refused rather than half applied.
fn refuse_qwen_window(hf: &HfConfig, origin: &str) -> Result<()> {
    if hf.use_sliding_window {
        return Err(Error::Unsupported(format!(
            "{origin}: use_sliding_window (a window on the layers past max_window_layers)"
        )));
    }
    Ok(())
}

/// LLaMA-style `attention_bias` puts a bias on the output projection too, which no runtime
/// applies: refused.
fn refuse_output_bias(hf: &HfConfig, origin: &str) -> Result<()> {
    if hf.attention_bias == Some(true) {
        return Err(Error::Unsupported(format!(
            "{origin}: attention_bias (biases on the attention's output projection)"
        )));
    }
    // LLaMA's `mlp_bias`: biases on gate, up and down, which no runtime applies either.
    if hf.mlp_bias == Some(true) {
        return Err(Error::Unsupported(format!(
            "{origin}: mlp_bias (biases on the MLP's projections)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RopeScaling;

    fn parse(j: &serde_json::Value, origin: &str) -> Result<ModelConfig> {
        config_from_hf(&parse_hf_config(&j.to_string(), origin)?.0, origin)
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "vocab_size": 100, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 256
        })
    }

    /// A SiLU-gated architecture with another activation is refused by name, not run as SiLU.
    #[test]
    fn an_activation_the_architecture_does_not_run_is_refused() {
        for act in ["silu", "swish"] {
            let mut c = base();
            c["hidden_act"] = serde_json::json!(act);
            assert!(parse(&c, "t").is_ok(), "{act}");
        }
        let mut c = base();
        c["hidden_act"] = serde_json::json!("bogus");
        let e = parse(&c, "t").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    /// A publisher-quantized checkpoint (FP8 block scales, GPTQ, …) is refused by its method:
    /// read as plain tensors without its scales it answered garbage.
    #[test]
    fn quantized_checkpoints_are_refused_by_method() {
        for method in ["fp8", "gptq", "awq"] {
            let mut c = base();
            c["quantization_config"] =
                serde_json::json!({"quant_method": method, "weight_block_size": [128, 128]});
            let err = parse_hf_config(&c.to_string(), "config.json")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("quantization_config") && err.contains(method),
                "{err}"
            );
        }
        let mut c = base();
        c["quantization_config"] = serde_json::Value::Null;
        assert!(parse_hf_config(&c.to_string(), "config.json").is_ok());
    }

    #[test]
    fn parses_gqa_and_defaults() {
        let c = parse(&base(), "t").unwrap();
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (4, 2, 16));
        assert_eq!(c.rope_theta, 10_000.0);
        assert_eq!(c.rope_scaling, RopeScaling::None);
    }

    #[test]
    fn parses_rope_scaling_kinds() {
        let mut j = base();
        j["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 4.0});
        let c = parse(&j, "t").unwrap();
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 4.0 });
        j["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = parse(&j, "t").unwrap();
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { .. }));
        j["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 32768});
        let c = parse(&j, "t").unwrap();
        let RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
        } = c.rope_scaling
        else {
            panic!("{:?}", c.rope_scaling)
        };
        assert_eq!((factor, original_max_position_embeddings), (4.0, 32768));
        assert_eq!((beta_fast, beta_slow), (32.0, 1.0));
        assert!((attention_factor - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
        // Without its own original context, the model's is YaRN's.
        j["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 2.0});
        let c = parse(&j, "t").unwrap();
        assert!(matches!(
            c.rope_scaling,
            RopeScaling::Yarn {
                original_max_position_embeddings: 256,
                ..
            }
        ));
        j["rope_scaling"] = serde_json::json!({"type": "mrope", "factor": 4.0});
        let e = parse(&j, "t").unwrap_err();
        assert!(e.to_string().contains("mrope"), "{e}");
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
        let e = parse(&j, "t").unwrap_err();
        assert!(e.to_string().contains("GPT2LMHeadModel"));
        // A served model_type under a head that does not predict tokens.
        for head in [
            "LlamaForSequenceClassification",
            "Qwen2ForRewardModel",
            "LlamaForTokenClassification",
        ] {
            j["architectures"] = serde_json::json!([head]);
            let e = parse(&j, "t").unwrap_err().to_string();
            assert!(e.contains(head), "{e}");
        }
        j["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        j["mlp_bias"] = serde_json::json!(true);
        let e = parse(&j, "t").unwrap_err().to_string();
        assert!(e.contains("mlp_bias"), "{e}");
        j["mlp_bias"] = serde_json::json!(false);
        assert!(parse(&j, "t").is_ok());
    }

    #[test]
    fn each_architecture_brings_its_features() {
        let mut j = base();
        let c = parse(&j, "t").unwrap();
        assert_eq!(
            (c.architecture.as_str(), &c.features),
            ("llama", &ArchFeatures::default())
        );
        j["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
        j["sliding_window"] = serde_json::json!(32768);
        j["use_sliding_window"] = serde_json::json!(false);
        let c = parse(&j, "t").unwrap();
        assert_eq!(c.architecture, "qwen2");
        assert!(c.features.qkv_bias && !c.features.qk_norm);
        assert_eq!(
            c.features.sliding_window, None,
            "Qwen2's window is off unless used"
        );
        j["use_sliding_window"] = serde_json::json!(true);
        let e = parse(&j, "t").unwrap_err().to_string();
        assert!(e.contains("use_sliding_window"), "{e}");
        j["use_sliding_window"] = serde_json::json!(false);
        j["architectures"] = serde_json::json!(["Qwen3ForCausalLM"]);
        j["head_dim"] = serde_json::json!(32);
        j["attention_bias"] = serde_json::json!(false);
        let c = parse(&j, "t").unwrap();
        assert_eq!((c.architecture.as_str(), c.head_dim), ("qwen3", 32));
        assert!(c.features.qk_norm && !c.features.qkv_bias);
        j["attention_bias"] = serde_json::json!(true);
        let e = parse(&j, "t").unwrap_err().to_string();
        assert!(e.contains("attention_bias"), "{e}");
        let mut j = base();
        j["architectures"] = serde_json::json!(["MistralForCausalLM"]);
        j["sliding_window"] = serde_json::json!(4096);
        let c = parse(&j, "t").unwrap();
        assert_eq!(
            (c.architecture.as_str(), c.features.sliding_window),
            ("mistral", Some(4096))
        );
        j["sliding_window"] = serde_json::Value::Null;
        assert_eq!(parse(&j, "t").unwrap().features.sliding_window, None);
        let mut j = base();
        j["architectures"] = serde_json::json!(["Phi3ForCausalLM"]);
        j["sliding_window"] = serde_json::json!(2047);
        let c = parse(&j, "t").unwrap();
        assert_eq!(
            (c.architecture.as_str(), c.features.sliding_window),
            ("phi3", Some(2047))
        );
        j["partial_rotary_factor"] = serde_json::json!(0.75);
        let e = parse(&j, "t").unwrap_err().to_string();
        assert!(e.contains("partial_rotary_factor"), "{e}");
        // model_type alone names it too.
        let mut j = base();
        j.as_object_mut().unwrap().remove("architectures");
        j["model_type"] = serde_json::json!("qwen2");
        assert_eq!(parse(&j, "t").unwrap().architecture, "qwen2");
    }

    /// A config that leaves a key out reads as its transformers class reads it: that class's
    /// default, not LLaMA's; an explicit null stays null.
    #[test]
    fn absent_keys_take_the_architectures_class_defaults() {
        let with = |arch: &str, drop: &[&str], set: serde_json::Value| {
            let mut j = base();
            j["architectures"] = serde_json::json!([arch]);
            j["hidden_size"] = serde_json::json!(1024);
            j["num_attention_heads"] = serde_json::json!(32);
            let obj = j.as_object_mut().unwrap();
            for k in drop {
                obj.remove(*k);
            }
            for (k, v) in set.as_object().unwrap() {
                obj.insert(k.clone(), v.clone());
            }
            parse(&j, "t").unwrap()
        };
        let none = serde_json::json!({});
        let all = [
            "rms_norm_eps",
            "max_position_embeddings",
            "num_key_value_heads",
        ];
        // LLaMA: serde's defaults are LlamaConfig's.
        let c = with("LlamaForCausalLM", &all, none.clone());
        assert_eq!((c.rms_norm_eps, c.max_position_embeddings), (1e-6, 2048));
        assert_eq!((c.num_kv_heads, c.head_dim), (32, 32));
        let c = with("MistralForCausalLM", &all, none.clone());
        assert_eq!(c.features.sliding_window, Some(4096));
        assert_eq!((c.num_kv_heads, c.max_position_embeddings), (8, 131_072));
        let c = with(
            "MistralForCausalLM",
            &[],
            serde_json::json!({"sliding_window": null}),
        );
        assert_eq!(c.features.sliding_window, None);
        let c = with("Qwen3ForCausalLM", &all, none.clone());
        assert_eq!((c.head_dim, c.num_kv_heads), (128, 32));
        assert_eq!(c.max_position_embeddings, 32_768);
        let c = with("Qwen2ForCausalLM", &all, none.clone());
        assert_eq!((c.head_dim, c.num_kv_heads), (32, 32));
        let c = with("Phi3ForCausalLM", &all, none.clone());
        assert_eq!((c.rms_norm_eps, c.max_position_embeddings), (1e-5, 4096));
        assert_eq!(c.num_kv_heads, 32);
        // Phi3Config reads an older `yarn` or `su` type as LongRoPE.
        let short: Vec<f32> = (0..16).map(|i| 1.0 + i as f32 / 8.0).collect();
        let long: Vec<f32> = short.iter().map(|x| 2.0 * x).collect();
        for kind in ["yarn", "su", "longrope"] {
            let scaling = serde_json::json!({"rope_scaling": {"type": kind,
                "short_factor": short, "long_factor": long},
                "max_position_embeddings": 16_384, "original_max_position_embeddings": 4096});
            let c = with("Phi3ForCausalLM", &[], scaling);
            match &c.rope_scaling {
                RopeScaling::LongRope {
                    short_factor,
                    original_max_position_embeddings,
                    ..
                } => assert_eq!(
                    (short_factor, *original_max_position_embeddings),
                    (&short, 4096)
                ),
                other => panic!("{kind}: {other:?}"),
            }
        }
        let g = serde_json::json!({"hidden_act": "gelu_pytorch_tanh"});
        let c = with("Gemma2ForCausalLM", &all, g.clone());
        assert_eq!(
            (c.head_dim, c.num_kv_heads, c.max_position_embeddings),
            (256, 4, 8192)
        );
        assert_eq!(c.features.attn_scale, Some(1.0 / 16.0));
        assert_eq!(c.features.layer_window(0), Some(4096));
        let c = with("Gemma3ForCausalLM", &all, g);
        assert_eq!((c.head_dim, c.rope_theta), (256, 1_000_000.0));
        assert_eq!(c.max_position_embeddings, 131_072);
    }

    #[test]
    fn gemma_configs_bring_their_features() {
        let mut j = base();
        j["architectures"] = serde_json::json!(["Gemma2ForCausalLM"]);
        j["hidden_act"] = serde_json::json!("gelu_pytorch_tanh");
        j["query_pre_attn_scalar"] = serde_json::json!(144);
        j["sliding_window"] = serde_json::json!(4096);
        j["attn_logit_softcapping"] = serde_json::json!(50.0);
        j["final_logit_softcapping"] = serde_json::json!(30.0);
        let c = parse(&j, "t").unwrap();
        let f = &c.features;
        assert_eq!(c.architecture, "gemma2");
        assert!(c.tie_word_embeddings, "Gemma ties unless told otherwise");
        assert_eq!(c.norm_weight_offset, 1.0);
        assert!(f.post_norms && !f.qk_norm);
        assert_eq!(f.activation, crate::config::Activation::GeluTanh);
        assert_eq!(f.embed_scale, Some(8.0));
        assert_eq!(f.attn_scale, Some(1.0 / 12.0));
        assert_eq!((f.attn_softcap, f.final_softcap), (Some(50.0), Some(30.0)));
        assert_eq!(
            (0..4).map(|l| f.layer_window(l)).collect::<Vec<_>>(),
            [Some(4096), None, Some(4096), None]
        );
        assert_eq!(f.kv_window(), None);
        // Without the keys, Gemma2Config's defaults; a null is off, as in transformers.
        let (mut absent, mut null) = (j.clone(), j.clone());
        for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
            absent.as_object_mut().unwrap().remove(k);
            null[k] = serde_json::Value::Null;
        }
        let caps = |j: &serde_json::Value| {
            let f = parse(j, "t").unwrap().features;
            (f.attn_softcap, f.final_softcap)
        };
        assert_eq!(caps(&absent), (Some(50.0), Some(30.0)));
        assert_eq!(caps(&null), (None, None));
        j["tie_word_embeddings"] = serde_json::json!(false);
        assert!(!parse(&j, "t").unwrap().tie_word_embeddings);
        j["hidden_activation"] = serde_json::json!("relu");
        let e = parse(&j, "t").unwrap_err().to_string();
        assert!(e.contains("relu"), "{e}");
        // Gemma 3 by its model_type: Q/K norms, five local layers to a global one, a local
        // rope base, no soft-capping.
        let mut j = base();
        j.as_object_mut().unwrap().remove("architectures");
        j["model_type"] = serde_json::json!("gemma3_text");
        j["head_dim"] = serde_json::json!(16);
        j["num_hidden_layers"] = serde_json::json!(12);
        j["sliding_window"] = serde_json::json!(512);
        j["rope_local_base_freq"] = serde_json::json!(10000.0);
        j["rope_theta"] = serde_json::json!(1000000.0);
        let c = parse(&j, "t").unwrap();
        let f = &c.features;
        assert_eq!(c.architecture, "gemma3");
        assert!(f.qk_norm && f.post_norms);
        assert_eq!((f.attn_softcap, f.final_softcap), (None, None));
        assert_eq!(f.local_rope_theta, Some(10000.0));
        let locals: Vec<usize> = (0..12).filter(|&l| f.is_local(l)).collect();
        assert_eq!(locals, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]);
        // The multimodal checkpoint: its language model, from `text_config` over
        // Gemma3TextConfig's defaults (as google/gemma-3-4b-it's config.json lists it).
        let mm = serde_json::json!({"architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3", "eos_token_id": [1, 106], "torch_dtype": "bfloat16",
            "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
                "model_type": "gemma3_text", "num_hidden_layers": 34,
                "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
            "vision_config": {"hidden_size": 1152}});
        let (hf, prefixes) = parse_hf_config(&mm.to_string(), "t").unwrap();
        assert!(prefixes
            .unwrap()
            .contains(&("language_model.model.", "model.")));
        assert_eq!(hf.eos_token_id, Some(serde_json::json!([1, 106])));
        let c = config_from_hf(&hf, "t").unwrap();
        assert_eq!(c.architecture, "gemma3");
        assert_eq!(
            (
                c.hidden_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim
            ),
            (2560, 34, 8, 4, 256)
        );
        assert_eq!((c.vocab_size, c.tie_word_embeddings), (262_208, true));
        assert_eq!(c.features.sliding_window, Some(1024));
        assert_eq!(c.features.local_rope_theta, Some(10000.0));
        assert!(matches!(c.rope_scaling, RopeScaling::Linear { factor } if factor == 8.0));
        // Another model's nested config is still refused by name.
        let other = serde_json::json!({"architectures": ["LlavaForConditionalGeneration"],
            "text_config": j});
        let e = parse_hf_config(&other.to_string(), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("multimodal") && e.contains("text_config"), "{e}");
    }
}
