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
    /// YaRN (Qwen2.5's long context): frequencies blended between interpolated and
    /// extrapolated by a ramp over the dimensions, cos and sin scaled by `attention_factor`.
    /// Static, as HF and vLLM apply it: the same table below and above the original context.
    Yarn {
        factor: f32,
        original_max_position_embeddings: usize,
        beta_fast: f32,
        beta_slow: f32,
        /// Multiplies cos and sin (HF's `attention_scaling`).
        attention_factor: f32,
    },
    /// Each frequency divided by a factor of its own at every position: llama.cpp's
    /// `rope_freqs` tensor, which is how its converter stores Llama 3.1's `llama3` scaling
    /// (the GGUF has no scaling keys for it).
    Frequencies {
        factors: Vec<f32>,
    },
    /// LongRoPE (Phi-3 `longrope`, formerly `su`): each frequency divided by a factor of its
    /// own, the long factors once a forward reaches past the original context (HF picks by
    /// the forward's last position, so does camelid: per chunk), cos and sin scaled by
    /// `attention_factor`.
    LongRope {
        short_factor: Vec<f32>,
        long_factor: Vec<f32>,
        original_max_position_embeddings: usize,
        attention_factor: f32,
    },
}

impl RopeScaling {
    /// The context a model with this scaling serves, given its `max_position_embeddings`:
    /// linear, dynamic and YaRN configs keep the trained length there and stretch it by
    /// `factor` (vicuna-7b-v1.5-16k: 4096 × 4; Qwen2.5 with YaRN: 32768 × 4), as vLLM's
    /// `_get_and_verify_max_len` derives it; Llama 3.1's and LongRoPE's configs already
    /// give the stretched length (and Gemma 3's: see [`ModelConfig::served_context`]).
    pub fn served_context(&self, max_position_embeddings: usize) -> usize {
        let stretched = match self {
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } => {
                (max_position_embeddings as f64 * f64::from(*factor)) as usize
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                ..
            } => (*original_max_position_embeddings as f64 * f64::from(*factor)) as usize,
            _ => max_position_embeddings,
        };
        // A factor past any published one (they are at most 64) stretches no further.
        stretched.clamp(
            max_position_embeddings,
            max_position_embeddings.saturating_mul(64),
        )
    }
}

/// What sets an architecture's layers apart from LLaMA's, as data the runtimes' layer loops
/// read (one loop per runtime, never one per architecture). `Default` is plain LLaMA.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ArchFeatures {
    /// Biases on the Q, K and V projections (Qwen2).
    pub qkv_bias: bool,
    /// RMSNorm over each head of Q and K, before rope (Qwen3); weights of `head_dim`.
    pub qk_norm: bool,
    /// A query at position `p` attends keys `p - w + 1 ..= p` only (Mistral v0.1: 4096), as
    /// HF transformers and llama.cpp count the window; `None`: every earlier key.
    pub sliding_window: Option<usize>,
    /// With a window, every `n`-th layer (`(layer + 1) % n == 0`) is global and attends every
    /// key (Gemma 2: 2, Gemma 3: 6); `None`: the window is every layer's.
    pub global_every: Option<usize>,
    /// The rope base of the windowed (local) layers, unscaled (Gemma 3's
    /// `rope_local_base_freq`); `None`: the model's one rope.
    pub local_rope_theta: Option<f32>,
    /// RMSNorms on the attention's and the MLP's outputs before each residual add (Gemma 2/3:
    /// `post_attention_layernorm`, `post_feedforward_layernorm`; the MLP's input norm is then
    /// `pre_feedforward_layernorm`).
    pub post_norms: bool,
    /// The MLP's gate activation.
    pub activation: Activation,
    /// Embeddings multiplied by this (Gemma: `sqrt(hidden_size)`).
    pub embed_scale: Option<f32>,
    /// `q · k` multiplied by this rather than `1 / sqrt(head_dim)` (Gemma:
    /// `query_pre_attn_scalar^-1/2`).
    pub attn_scale: Option<f32>,
    /// Attention scores soft-capped to `cap · tanh(s / cap)` before the softmax (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Logits soft-capped the same way (Gemma 2).
    pub final_softcap: Option<f32>,
}

impl ArchFeatures {
    /// The window of layer `layer` (`None` on a global layer or without a window).
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        match self.global_every {
            Some(n) if (layer + 1).is_multiple_of(n) => None,
            _ => self.sliding_window,
        }
    }

    /// Whether layer `layer` is a local one, with the window (and its own rope base).
    pub fn is_local(&self, layer: usize) -> bool {
        self.layer_window(layer).is_some()
    }

    /// The window every layer keeps to, which bounds the keys a sequence still needs (`None`
    /// when some layer attends every key: no block may be given back).
    pub fn kv_window(&self) -> Option<usize> {
        match self.global_every {
            Some(_) => None,
            None => self.sliding_window,
        }
    }
}

/// The MLP's gate activation: `act(gate) · up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// LLaMA's SwiGLU.
    #[default]
    Silu,
    /// GELU, tanh approximation (Gemma's GeGLU, `gelu_pytorch_tanh`).
    GeluTanh,
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
    /// The architecture's name as GGUF writes it (`llama`, `qwen2`, …), for messages.
    pub architecture: String,
    pub features: ArchFeatures,
    /// Added to every RMSNorm weight at load: Gemma's HF checkpoints store `w` of a
    /// `(1 + w)` scale; llama.cpp's converter adds the 1 before writing a GGUF (0 there).
    pub norm_weight_offset: f32,
}

/// The largest size of one dimension or heads × head_dim a configuration may give (2^24;
/// released models stay below 2^18), so that no product of sizes the kernels compute wraps.
pub const MAX_SIZE: usize = 1 << 24;

impl ModelConfig {
    /// The context this model serves: [`RopeScaling::served_context`], but for Gemma 3,
    /// whose `max_position_embeddings` (131072) already counts its global layers' linear
    /// factor of 8 (vLLM leaves it unstretched too; llama.cpp never stretches).
    pub fn served_context(&self) -> usize {
        if self.architecture == "gemma3" {
            self.max_position_embeddings
        } else {
            self.rope_scaling
                .served_context(self.max_position_embeddings)
        }
    }

    /// The parameters of its matrices (embedding, attention, MLP, an untied output): what
    /// its weights take in memory, times the bytes of the format they are kept in, less the
    /// norms' few and any biases. Saturating: a config's sizes are not trusted.
    pub fn matrix_parameters(&self) -> u64 {
        let n = |x: usize| x as u64;
        let mul = |a: u64, b: u64| a.saturating_mul(b);
        let (h, v, f) = (
            n(self.hidden_size),
            n(self.vocab_size),
            n(self.intermediate_size),
        );
        let q = mul(n(self.num_heads), n(self.head_dim));
        let kv = mul(n(self.num_kv_heads), n(self.head_dim));
        let layer = mul(mul(2, h), q)
            .saturating_add(mul(mul(2, h), kv))
            .saturating_add(mul(mul(3, h), f));
        let heads = if self.tie_word_embeddings { 1 } else { 2 };
        mul(mul(heads, v), h).saturating_add(mul(n(self.num_layers), layer))
    }

    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |m: String| Err(Error::BadConfig(format!("{origin}: {m}")));
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_layers == 0 {
            return bad(
                "num_attention_heads, num_key_value_heads and num_hidden_layers must be > 0".into(),
            );
        }
        // Every size the kernels index by is positive and its products fit: a file's
        // `num_attention_heads` of 2^57 + 1 times a head_dim of 128 wraps to 128 and would
        // pass every shape check (overlapping outputs, reads past the query buffer).
        let sizes = [
            ("hidden_size", Some(self.hidden_size)),
            ("intermediate_size", Some(self.intermediate_size)),
            ("vocab_size", Some(self.vocab_size)),
            ("head_dim", Some(self.head_dim)),
            (
                "num_attention_heads × head_dim",
                self.num_heads.checked_mul(self.head_dim),
            ),
            (
                "num_key_value_heads × head_dim",
                self.num_kv_heads.checked_mul(self.head_dim),
            ),
        ];
        for (name, size) in sizes {
            match size {
                Some(0) => return bad(format!("{name} must be > 0")),
                Some(s) if s <= MAX_SIZE => {}
                _ => return bad(format!("{name} is larger than {MAX_SIZE}")),
            }
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
        if self.features.sliding_window == Some(0) {
            return bad("sliding_window must be > 0".into());
        }
        if self.features.global_every == Some(0) {
            return bad("sliding_window_pattern must be > 0".into());
        }
        let positive = |x: Option<f32>| x.is_none_or(|v| v.is_finite() && v > 0.0);
        if !positive(self.features.attn_softcap) || !positive(self.features.final_softcap) {
            return bad("soft-capping values must be finite and > 0".into());
        }
        if !positive(self.features.attn_scale) {
            return bad("query_pre_attn_scalar must be > 0".into());
        }
        // Numbers the forward pass divides by or takes logs of: NaN, 0 or a negative one would
        // load and then give NaN logits on every request.
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!(
                "rope_theta {} must be finite and > 0",
                self.rope_theta
            ));
        }
        if !positive(self.features.local_rope_theta) {
            return bad("the local layers' rope_theta must be finite and > 0".into());
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(format!(
                "rms_norm_eps {} must be finite and > 0",
                self.rms_norm_eps
            ));
        }
        if self.max_position_embeddings == 0 {
            return bad("max_position_embeddings (the context length) must be > 0".into());
        }
        let factor = match &self.rope_scaling {
            RopeScaling::Linear { factor }
            | RopeScaling::Dynamic { factor }
            | RopeScaling::Llama3 { factor, .. }
            | RopeScaling::Yarn { factor, .. } => Some(*factor),
            _ => None,
        };
        if !positive(factor) {
            return bad("rope_scaling: factor must be finite and > 0".into());
        }
        if let RopeScaling::Yarn {
            beta_fast,
            beta_slow,
            attention_factor,
            ..
        } = &self.rope_scaling
        {
            if ![*beta_fast, *beta_slow, *attention_factor]
                .iter()
                .all(|v| v.is_finite())
            {
                return bad(
                    "rope_scaling: YaRN's betas and attention factor must be finite".into(),
                );
            }
        }
        if let RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings,
            attention_factor,
        } = &self.rope_scaling
        {
            let half = self.head_dim / 2;
            if short_factor.len() != half || long_factor.len() != half {
                return bad(format!(
                    "rope_scaling: {} short and {} long factors, head_dim / 2 is {half}",
                    short_factor.len(),
                    long_factor.len()
                ));
            }
            if !short_factor
                .iter()
                .chain(long_factor)
                .all(|f| f.is_finite() && *f > 0.0)
            {
                return bad("rope_scaling: every LongRoPE factor must be finite and > 0".into());
            }
            // Its attention factor is a log over the original context.
            if *original_max_position_embeddings < 2 || !positive(Some(*attention_factor)) {
                return bad(
                    "rope_scaling: LongRoPE needs an original context of 2 or more and a \
                     finite attention factor > 0"
                        .into(),
                );
            }
        }
        if let RopeScaling::Frequencies { factors } = &self.rope_scaling {
            let half = self.head_dim / 2;
            if factors.len() != half {
                return bad(format!(
                    "rope_freqs: {} factors, head_dim / 2 is {half}",
                    factors.len()
                ));
            }
            if !factors.iter().all(|f| f.is_finite() && *f > 0.0) {
                return bad("rope_freqs: every factor must be finite and > 0".into());
            }
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
    /// `None`: the architecture's default (tied for Gemma, untied otherwise).
    pub tie_word_embeddings: Option<bool>,
    pub bos_token_id: Option<serde_json::Value>,
    pub eos_token_id: Option<serde_json::Value>,
    pub torch_dtype: Option<String>,
    /// LLaMA's biases on the MLP projections (refused: no runtime applies them).
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    /// Biases on the attention projections (LLaMA, Qwen3: O too when set; Qwen2 has Q/K/V
    /// biases whatever it says).
    pub attention_bias: Option<bool>,
    pub sliding_window: Option<usize>,
    /// Qwen2/Qwen3: the window applies only when this is set.
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Phi-3: the context LongRoPE's short factors cover.
    pub original_max_position_embeddings: Option<usize>,
    /// Rotary embedding on this share of each head only (Phi-4-mini): not served.
    pub partial_rotary_factor: Option<f64>,
    /// Gemma: the MLP's activation (`hidden_activation`, older configs `hidden_act`).
    pub hidden_activation: Option<String>,
    pub hidden_act: Option<String>,
    /// Gemma: scores scaled by `query_pre_attn_scalar^-1/2`.
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 2: soft-capping of attention scores and of the logits. `None`: the key is
    /// absent (filled by Gemma 2's class defaults before this is read); `Some(None)`: null, off.
    #[serde(default, deserialize_with = "present")]
    pub attn_logit_softcapping: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub final_logit_softcapping: Option<Option<f64>>,
    /// Gemma 3: the local layers' rope base, and every how many layers one is global
    /// (newer configs list `layer_types` instead).
    pub rope_local_base_freq: Option<f32>,
    pub sliding_window_pattern: Option<usize>,
    pub layer_types: Option<Vec<String>>,
}

/// A key that is present, its value null or not (absent is the field's default, `None`).
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
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

/// transformers 5 writes `rope_parameters` (`{"rope_theta", "rope_type", …the scaling's
/// fields}`, or one such object per layer type for models with local and global layers)
/// instead of `rope_theta` and `rope_scaling`, and `dtype` instead of `torch_dtype`: they
/// are read as the older keys (which win where both are present). Read as before, such a
/// config ran on the default rope base (10 000 where a SmolLM2 has 100 000).
fn older_keys(v: &mut serde_json::Value) {
    use serde_json::Value;
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    let absent =
        |obj: &serde_json::Map<String, Value>, k: &str| obj.get(k).is_none_or(Value::is_null);
    if let Some(d) = obj.get("dtype").cloned() {
        if absent(obj, "torch_dtype") {
            obj.insert("torch_dtype".into(), d);
        }
    }
    let Some(Value::Object(rp)) = obj.get("rope_parameters").cloned() else {
        return;
    };
    let by_layer = rp.contains_key("full_attention") || rp.contains_key("sliding_attention");
    let (global, local) = if by_layer {
        (
            rp.get("full_attention").cloned(),
            rp.get("sliding_attention").cloned(),
        )
    } else {
        (Some(Value::Object(rp)), None)
    };
    if let Some(Value::Object(mut g)) = global {
        if let Some(theta) = g.remove("rope_theta") {
            if absent(obj, "rope_theta") {
                obj.insert("rope_theta".into(), theta);
            }
        }
        let kind = g
            .get("rope_type")
            .and_then(Value::as_str)
            .unwrap_or("default");
        if kind != "default" && absent(obj, "rope_scaling") {
            obj.insert("rope_scaling".into(), Value::Object(g));
        }
    }
    if let Some(theta) = local.as_ref().and_then(|l| l.get("rope_theta")) {
        if absent(obj, "rope_local_base_freq") {
            obj.insert("rope_local_base_freq".into(), theta.clone());
        }
    }
}

impl HfConfig {
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let parsed = serde_json::from_str::<serde_json::Value>(text).and_then(|mut v| {
            older_keys(&mut v);
            serde_json::from_value(v)
        });
        parsed.map_err(|e| {
            // A multimodal model (Gemma3ForConditionalGeneration) nests its language model's
            // config, and its weights under other names: said as such.
            let nested = serde_json::from_str::<serde_json::Value>(text)
                .is_ok_and(|v| v.get("text_config").is_some());
            if nested {
                Error::Unsupported(format!(
                    "{origin}: a multimodal model (its config nests `text_config`); camelid \
                     serves text-only checkpoints (e.g. Gemma3ForCausalLM)"
                ))
            } else {
                Error::BadConfig(format!("{origin}: {e}"))
            }
        })
    }

    /// The hyperparameters every architecture shares, as LLaMA reads them: no features yet
    /// (the architecture's file in `models/` adds them), `architecture` left empty.
    pub fn base_config(&self, origin: &str) -> Result<ModelConfig> {
        let rope_scaling = parse_rope_scaling(
            self.rope_scaling.as_ref(),
            self.max_position_embeddings,
            self.original_max_position_embeddings,
            origin,
        )?;
        Ok(ModelConfig {
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
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            architecture: String::new(),
            features: ArchFeatures::default(),
            norm_weight_offset: 0.0,
        })
    }
}

/// Parses HF's `rope_scaling` object (`type` or `rope_type` key).
/// `max_position_embeddings` is YaRN's original context where `rope_scaling` names none;
/// `original_max` the config's top-level `original_max_position_embeddings` (LongRoPE's).
pub fn parse_rope_scaling(
    v: Option<&serde_json::Value>,
    max_position_embeddings: usize,
    original_max: Option<usize>,
    origin: &str,
) -> Result<RopeScaling> {
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
        "yarn" => {
            if v.get("truncate").and_then(|t| t.as_bool()) == Some(false) {
                return Err(Error::Unsupported(format!(
                    "{origin}: rope_scaling.truncate false (YaRN without rounded correction dims)"
                )));
            }
            let factor = need("factor")?;
            // HF's `_compute_yarn_parameters`: an explicit `attention_factor`, else from
            // `mscale` / `mscale_all_dim`, else 0.1 · ln(factor) + 1.
            let mscale = |scale: f32, m: f32| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention_factor = match (f("attention_factor"), f("mscale"), f("mscale_all_dim")) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                    mscale(factor, m) / mscale(factor, all)
                }
                _ => mscale(factor, 1.0),
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: f("original_max_position_embeddings")
                    .map_or(max_position_embeddings, |x| x as usize),
                beta_fast: f("beta_fast").unwrap_or(32.0),
                beta_slow: f("beta_slow").unwrap_or(1.0),
                attention_factor,
            }
        }
        "longrope" | "su" => {
            let factors = |key: &str| -> Result<Vec<f32>> {
                v.get(key)
                    .and_then(|a| a.as_array())
                    .and_then(|a| a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect())
                    .ok_or_else(|| {
                        Error::BadConfig(format!("{origin}: rope_scaling.{key} is not a list"))
                    })
            };
            // HF's `_compute_longrope_parameters`: the factor is the context's growth over
            // the original, the attention factor sqrt(1 + ln(factor) / ln(original)).
            let orig = original_max.unwrap_or(max_position_embeddings);
            let factor = match original_max {
                Some(o) => max_position_embeddings as f32 / o as f32,
                None => f("factor").unwrap_or(1.0),
            };
            // In f64, as HF's Python computes it (then f32, as it multiplies cos and sin).
            let attention_factor = match f("attention_factor") {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => {
                    let factor = match original_max {
                        Some(o) => max_position_embeddings as f64 / o as f64,
                        None => factor as f64,
                    };
                    (1.0 + factor.ln() / (orig as f64).ln()).sqrt() as f32
                }
            };
            RopeScaling::LongRope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                original_max_position_embeddings: orig,
                attention_factor,
            }
        }
        other => {
            return Err(Error::Unsupported(format!(
                "{origin}: rope_scaling type {other:?} (supported: linear, dynamic, llama3, \
                 yarn, longrope)"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v5(extra: serde_json::Value) -> HfConfig {
        let mut c = serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 576,
            "intermediate_size": 1536, "vocab_size": 49152, "num_hidden_layers": 2,
            "num_attention_heads": 9, "num_key_value_heads": 3, "dtype": "bfloat16",
            "max_position_embeddings": 8192});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        HfConfig::parse(&c.to_string(), "config.json").unwrap()
    }

    #[test]
    fn transformers_5_rope_parameters_read_as_rope_theta_and_rope_scaling() {
        // As transformers 5.17 saves a SmolLM2-shaped LlamaConfig.
        let c = v5(serde_json::json!({"rope_parameters":
            {"rope_theta": 100000.0, "rope_type": "default"}}));
        assert_eq!(c.rope_theta, 100000.0);
        assert!(c.rope_scaling.is_none());
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
        assert!(matches!(
            c.base_config("t").unwrap().rope_scaling,
            RopeScaling::None
        ));
        // Llama 3.1's scaling inside them.
        let c = v5(
            serde_json::json!({"rope_parameters": {"rope_theta": 500000.0,
            "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}),
        );
        assert_eq!(c.rope_theta, 500000.0);
        match c.base_config("t").unwrap().rope_scaling {
            RopeScaling::Llama3 { factor, .. } => assert_eq!(factor, 32.0),
            other => panic!("{other:?}"),
        }
        // One per layer type (Gemma 3): the global rope, and the local layers' base.
        let c = v5(serde_json::json!({"rope_parameters": {
            "full_attention": {"rope_theta": 1000000.0, "rope_type": "linear", "factor": 8.0},
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}}));
        assert_eq!(
            (c.rope_theta, c.rope_local_base_freq),
            (1000000.0, Some(10000.0))
        );
        assert!(matches!(
            c.base_config("t").unwrap().rope_scaling,
            RopeScaling::Linear { factor } if factor == 8.0
        ));
        // The older keys win where both are written; without either, the default base.
        let c = v5(serde_json::json!({"rope_theta": 10000.0,
            "rope_parameters": {"rope_theta": 20000.0, "rope_type": "default"}}));
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(v5(serde_json::json!({})).rope_theta, 10000.0);
    }

    /// Sizes whose products wrap, or that are zero, are refused by name.
    #[test]
    fn sizes_that_wrap_or_vanish_are_refused() {
        let err = |extra| {
            v5(extra)
                .base_config("t")
                .and_then(|c| c.validate("t"))
                .unwrap_err()
                .to_string()
        };
        let wrap = err(
            serde_json::json!({"num_attention_heads": (1usize << 57) + 1,
            "num_key_value_heads": 1, "head_dim": 128, "hidden_size": 128}),
        );
        assert!(wrap.contains("num_attention_heads × head_dim"), "{wrap}");
        assert!(err(serde_json::json!({"hidden_size": 0})).contains("hidden_size"));
        assert!(err(serde_json::json!({"intermediate_size": 0})).contains("intermediate_size"));
        // Numbers the forward pass divides by or takes logs of: NaN logits on every request.
        for (extra, names) in [
            (serde_json::json!({"rope_theta": 0.0}), "rope_theta"),
            (serde_json::json!({"rope_theta": -5.0}), "rope_theta"),
            (serde_json::json!({"rms_norm_eps": 0.0}), "rms_norm_eps"),
            (serde_json::json!({"rms_norm_eps": -1e-5}), "rms_norm_eps"),
            (
                serde_json::json!({"max_position_embeddings": 0}),
                "max_position_embeddings",
            ),
            (
                serde_json::json!({"rope_scaling": {"type": "linear", "factor": 0.0}}),
                "factor",
            ),
        ] {
            let e = err(extra.clone());
            assert!(e.contains(names), "{extra}: {e}");
        }
        assert!(v5(serde_json::json!({}))
            .base_config("t")
            .unwrap()
            .validate("t")
            .is_ok());
    }

    /// The rope numbers that only some architectures read are checked as the others:
    /// Gemma 3's local layers' base, LongRoPE's factors, original context and attention
    /// factor (each 0, negative or NaN loaded and gave NaN logits on every request).
    #[test]
    fn rope_numbers_of_local_layers_and_longrope_are_refused_when_unusable() {
        let base = v5(serde_json::json!({})).base_config("t").unwrap();
        let half = base.head_dim / 2;
        let longrope = |short: Vec<f32>, orig: usize, attention_factor: f32| {
            let mut c = base.clone();
            c.rope_scaling = RopeScaling::LongRope {
                short_factor: short,
                long_factor: vec![4.0; half],
                original_max_position_embeddings: orig,
                attention_factor,
            };
            c.validate("t")
        };
        assert!(longrope(vec![1.0; half], 4096, 1.2).is_ok());
        let mut zero = vec![1.0; half];
        zero[3] = 0.0;
        let mut nan = vec![1.0; half];
        nan[0] = f32::NAN;
        for bad in [
            longrope(zero, 4096, 1.2),
            longrope(nan, 4096, 1.2),
            longrope(vec![1.0; half], 1, 1.2),
            longrope(vec![1.0; half], 4096, f32::NAN),
            longrope(vec![1.0; half], 4096, 0.0),
        ] {
            assert!(bad.unwrap_err().to_string().contains("LongRoPE"));
        }
        for theta in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let mut c = base.clone();
            c.features.local_rope_theta = Some(theta);
            let e = c.validate("t").unwrap_err().to_string();
            assert!(e.contains("local layers' rope_theta"), "{theta}: {e}");
        }
        let mut c = base.clone();
        c.features.local_rope_theta = Some(10_000.0);
        assert!(c.validate("t").is_ok());
    }
}
