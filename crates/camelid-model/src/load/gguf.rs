//! GGUF files: hyperparameters, tokenizer, chat template and (quantized) tensors.

use crate::config::{Activation, ArchFeatures, ModelConfig, RopeScaling};
use crate::embedding::Embeddings;
use crate::error::{Error, Result};
use crate::linear::Linear;
use crate::load::gguf_check;
use crate::load::weights::TensorSource;
use crate::models::gemma2::{GEMMA2_ATTN_SOFTCAP, GEMMA2_FINAL_SOFTCAP};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    reader: BufReader<File>,
    device: Device,
    /// 16-bit weights are read here, one tensor at a time, then laid out for the kernels:
    /// one buffer for the whole load instead of fresh memory for each tensor.
    half_scratch: Vec<u16>,
    /// Q4_0/Q4_1/Q8_0 and Q4_K/Q5_K/Q6_K matmuls on the CPU through
    /// [`camelid_kernels::quant`] (default) or candle.
    pub own_kernels: bool,
}

impl GgufFile {
    pub fn open(path: &Path, device: &Device) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut reader = BufReader::new(file);
        let header = gguf_check::check_header(&mut reader, path)?;
        let content = Content::read(&mut reader).map_err(|e| {
            Error::BadWeights(format!("{}: not a readable GGUF file: {e}", path.display()))
        })?;
        gguf_check::check_tensors(&content, &header, file_size, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
            device: device.clone(),
            half_scratch: Vec::new(),
            own_kernels: true,
        })
    }

    fn origin_field(&self, key: &str) -> String {
        format!("{}: metadata field {key}", self.path.display())
    }

    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn meta_u32(&self, key: &str) -> Result<u32> {
        let v = self
            .meta(key)
            .ok_or_else(|| Error::BadConfig(format!("{} is missing", self.origin_field(key))))?;
        let x = value_u64(v).ok_or_else(|| {
            Error::BadConfig(format!("{} is not an integer", self.origin_field(key)))
        })?;
        // Not cut to 32 bits: a context of 2^40 must not become 0.
        u32::try_from(x).map_err(|_| {
            Error::BadConfig(format!(
                "{} is {x}, past the 32-bit values it holds",
                self.origin_field(key)
            ))
        })
    }

    pub fn meta_f32(&self, key: &str) -> Option<f32> {
        self.meta(key).and_then(|v| match v {
            Value::F32(x) => Some(*x),
            Value::F64(x) => Some(*x as f32),
            other => value_u64(other).map(|x| x as f32),
        })
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        match self.meta(key) {
            Some(Value::String(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    pub fn meta_bool(&self, key: &str) -> Option<bool> {
        match self.meta(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub fn meta_strings(&self, key: &str) -> Option<Vec<String>> {
        match self.meta(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    if let Value::String(s) = v {
                        Some(s.clone())
                    } else {
                        None
                    }
                })
                .collect(),
            _ => None,
        }
    }

    pub fn meta_f32s(&self, key: &str) -> Option<Vec<f32>> {
        match self.meta(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    if let Value::F32(x) = v {
                        Some(*x)
                    } else {
                        None
                    }
                })
                .collect(),
            _ => None,
        }
    }

    pub fn meta_i32s(&self, key: &str) -> Option<Vec<i32>> {
        match self.meta(key) {
            Some(Value::Array(a)) => a.iter().map(|v| value_u64(v).map(|x| x as i32)).collect(),
            _ => None,
        }
    }

    /// Hyperparameters from `<architecture>.*` metadata (llama.cpp's keys), the features
    /// from the tensors the file has.
    pub fn model_config(&mut self) -> Result<ModelConfig> {
        let origin = self.path.display().to_string();
        let arch_name = self.meta_str("general.architecture").unwrap_or("");
        let arch = crate::models::for_gguf(arch_name, &origin)?;
        let key = |k: &str| format!("{}.{k}", arch.name);
        let heads = self.meta_u32(&key("attention.head_count"))? as usize;
        let hidden = self.meta_u32(&key("embedding_length"))? as usize;
        let head_dim = match self.meta_u32(&key("attention.key_length")) {
            Ok(k) => k as usize,
            Err(_) => hidden / heads.max(1),
        };
        // Partial rotary (Phi-4-mini, StableLM): refused by name as the HF path does, not run
        // with every dimension rotated.
        if let Ok(rot) = self.meta_u32(&key("rope.dimension_count")) {
            if rot as usize != head_dim {
                return Err(Error::Unsupported(format!(
                    "{origin}: partial rotary embeddings ({} rope.dimension_count {rot} of head \
                     size {head_dim})",
                    arch.name
                )));
            }
        }
        let vocab = match self.meta_u32(&key("vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => self
                .meta_strings("tokenizer.ggml.tokens")
                .map(|t| t.len())
                .unwrap_or(0),
        };
        let context = self.meta_u32(&key("context_length")).unwrap_or(4096) as usize;
        // As llama.cpp reads them: the factor under its old key name (2023 converters wrote
        // only `rope.scale_linear`: SuperHOT, LongChat, vicuna-v1.5-16k files), and a factor
        // without a type is linear.
        let factor = self
            .meta_f32(&key("rope.scaling.factor"))
            .or_else(|| self.meta_f32(&key("rope.scale_linear")))
            .unwrap_or(1.0);
        let rope_scaling = match self.meta_str(&key("rope.scaling.type")) {
            Some("linear") => RopeScaling::Linear { factor },
            None if factor != 1.0 && factor > 0.0 => RopeScaling::Linear { factor },
            Some("yarn") => {
                let orig = self
                    .meta_u32(&key("rope.scaling.original_context_length"))
                    .map_or(context, |x| x as usize);
                let mscale = if factor <= 1.0 {
                    1.0
                } else {
                    0.1 * factor.ln() + 1.0
                };
                RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: orig,
                    beta_fast: self
                        .meta_f32(&key("rope.scaling.yarn_beta_fast"))
                        .unwrap_or(32.0),
                    beta_slow: self
                        .meta_f32(&key("rope.scaling.yarn_beta_slow"))
                        .unwrap_or(1.0),
                    attention_factor: mscale,
                }
            }
            Some("none") | None => RopeScaling::None,
            Some(other) => {
                return Err(Error::Unsupported(format!(
                    "{}: {} {other:?}",
                    origin,
                    key("rope.scaling.type")
                )))
            }
        };
        let rope_scaling = self.longrope_factors(rope_scaling, context, &origin)?;
        let rope_scaling = self.frequency_factors(rope_scaling, &origin)?;
        let has = |t: &str| self.content.tensor_infos.contains_key(t);
        if has("blk.0.attn_output.bias") {
            return Err(Error::Unsupported(format!(
                "{origin}: tensor blk.0.attn_output.bias (biases on the attention's output)"
            )));
        }
        // As llama.cpp reads the key: 0 is no window (the converter writes 0 for Phi-4 on
        // purpose), and a Gemma 2 file without it has Gemma 2's 4096.
        let sliding_window = if arch.gguf_window {
            match self.meta_u32(&key("attention.sliding_window")) {
                Ok(0) => None,
                Ok(w) => Some(w as usize),
                Err(_) => (arch.name == "gemma2").then_some(4096),
            }
        } else {
            None
        };
        let num_layers = self.meta_u32(&key("block_count"))? as usize;
        let mut features = ArchFeatures {
            qkv_bias: has("blk.0.attn_q.bias"),
            qk_norm: has("blk.0.attn_q_norm.weight"),
            sliding_window,
            post_norms: has("blk.0.post_attention_norm.weight"),
            ..Default::default()
        };
        if arch.name.starts_with("gemma") {
            // What llama.cpp's gemma2/gemma3 graphs do (the file stores norms as `1 + w`
            // already, the soft-capping values; the layer pattern and the local rope base
            // are llama.cpp's fixed ones).
            let meta_f = |k: &str| self.meta_f32(&key(k));
            features.activation = Activation::GeluTanh;
            features.embed_scale = Some((hidden as f64).sqrt() as f32);
            features.attn_scale = Some(crate::models::gemma2::gguf_attn_scale(
                arch.name, num_layers, hidden, heads, head_dim,
            ));
            // Without the keys llama.cpp's gemma2 caps at HF's `Gemma2Config` defaults.
            let gemma2 = arch.name == "gemma2";
            features.attn_softcap =
                meta_f("attn_logit_softcapping").or(gemma2.then_some(GEMMA2_ATTN_SOFTCAP));
            features.final_softcap =
                meta_f("final_logit_softcapping").or(gemma2.then_some(GEMMA2_FINAL_SOFTCAP));
            if sliding_window.is_some() {
                features.global_every = Some(if arch.name == "gemma2" {
                    2
                } else {
                    crate::models::gemma3::DEFAULT_PATTERN
                });
            }
            if arch.name == "gemma3" {
                features.local_rope_theta = Some(
                    meta_f("rope.freq_base_swa")
                        .unwrap_or(crate::models::gemma3::DEFAULT_LOCAL_THETA),
                );
            }
        }
        let cfg = ModelConfig {
            hidden_size: hidden,
            intermediate_size: self.meta_u32(&key("feed_forward_length"))? as usize,
            vocab_size: vocab,
            num_layers,
            num_heads: heads,
            num_kv_heads: self
                .meta_u32(&key("attention.head_count_kv"))
                .map(|x| x as usize)
                .unwrap_or(heads),
            head_dim,
            rms_norm_eps: self
                .meta_f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5) as f64,
            rope_theta: self.meta_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            rope_scaling,
            rope_style: arch.gguf_rope,
            max_position_embeddings: context,
            tie_word_embeddings: !has("output.weight"),
            architecture: arch.name.to_string(),
            features,
            norm_weight_offset: 0.0,
        };
        cfg.validate(&origin)?;
        Ok(cfg)
    }

    /// LongRoPE (Phi-3's long-context models): llama.cpp's converter stores the factors as
    /// the tensors `rope_factors_long` / `rope_factors_short`, the original context as
    /// `rope.scaling.original_context_length` and HF's attention factor as
    /// `rope.scaling.attn_factor`. Without those tensors, `scaling` as it is.
    fn longrope_factors(
        &mut self,
        scaling: RopeScaling,
        context: usize,
        origin: &str,
    ) -> Result<RopeScaling> {
        let infos = &self.content.tensor_infos;
        let (long, short) = ("rope_factors_long.weight", "rope_factors_short.weight");
        match (infos.contains_key(long), infos.contains_key(short)) {
            (false, false) => return Ok(scaling),
            (true, true) if scaling == RopeScaling::None => {}
            _ => {
                return Err(Error::Unsupported(format!(
                    "{origin}: LongRoPE needs both rope_factors_long and rope_factors_short, \
                     and no other rope scaling"
                )))
            }
        }
        let arch = self
            .meta_str("general.architecture")
            .unwrap_or("")
            .to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let orig = self
            .meta_u32(&key("rope.scaling.original_context_length"))
            .map_or(context, |x| x as usize);
        // convert_hf_to_gguf.py's Phi3MiniModel: sqrt(1 + ln(scale) / ln(original)).
        let scale = context as f64 / orig as f64;
        let attention_factor =
            self.meta_f32(&key("rope.scaling.attn_factor"))
                .unwrap_or(if scale <= 1.0 {
                    1.0
                } else {
                    (1.0 + scale.ln() / (orig as f64).ln()).sqrt() as f32
                });
        let mut factors = |name: &str| self.rope_factors(name, origin);
        Ok(RopeScaling::LongRope {
            long_factor: factors(long)?,
            short_factor: factors(short)?,
            original_max_position_embeddings: orig,
            attention_factor,
        })
    }

    /// llama.cpp's `rope_freqs` tensor (per-frequency divisors, `get_rope_factors`): its
    /// converter writes Llama 3.1/3.2/3.3's `llama3` scaling this way and no scaling keys,
    /// so without it those files would run unscaled.
    fn frequency_factors(&mut self, scaling: RopeScaling, origin: &str) -> Result<RopeScaling> {
        let name = "rope_freqs.weight";
        if !self.content.tensor_infos.contains_key(name) {
            return Ok(scaling);
        }
        if scaling != RopeScaling::None {
            return Err(Error::Unsupported(format!(
                "{origin}: tensor rope_freqs beside another rope scaling"
            )));
        }
        Ok(RopeScaling::Frequencies {
            factors: self.rope_factors(name, origin)?,
        })
    }

    /// A tensor of per-frequency rope factors (`head_dim / 2` of them, checked by
    /// `ModelConfig::validate`), as f32. Its size is checked before it is read: a file could
    /// declare one of gigabytes, which dequantizing would blow up twelvefold.
    fn rope_factors(&mut self, name: &str, origin: &str) -> Result<Vec<f32>> {
        const MAX_FACTORS: usize = 1 << 16;
        let n = self.content.tensor_infos[name].shape.elem_count();
        if n > MAX_FACTORS {
            return Err(Error::BadConfig(format!(
                "{origin}: tensor {name} has {n} rope factors; head_dim / 2 is far fewer"
            )));
        }
        let t = self.read_qtensor(name)?.dequantize(&Device::Cpu)?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?)
    }

    /// The tensor of a canonical (HF) name, as stored.
    fn read_named(&mut self, name: &str) -> Result<QTensor> {
        let g = self
            .name_of(name)
            .ok_or_else(|| Error::BadWeights(format!("no GGUF name for {name}")))?;
        self.read_qtensor(&g)
    }

    /// An F16/BF16 matrix for the CPU's own kernels, read straight into the scratch buffer
    /// (candle's reader would give each tensor fresh zeroed memory first); `None` for other
    /// types, devices or shapes.
    fn half_linear(&mut self, name: &str) -> Result<Option<Linear>> {
        use camelid_kernels::f16gemm::HalfKind;
        use std::io::{Read, Seek, SeekFrom};
        let Some(info) = self
            .name_of(name)
            .and_then(|g| self.content.tensor_infos.get(&g))
        else {
            return Ok(None);
        };
        let kind = match info.ggml_dtype {
            GgmlDType::F16 => HalfKind::F16,
            GgmlDType::BF16 => HalfKind::Bf16,
            _ => return Ok(None),
        };
        let (rows, cols) = match info.shape.dims() {
            &[rows, cols] => (rows, cols),
            _ => return Ok(None),
        };
        if !self.own_kernels || !self.device.is_cpu() || cfg!(target_endian = "big") {
            return Ok(None);
        }
        // The offsets and sizes were checked against the file at open (`check_tensors`).
        let n = rows * cols;
        self.half_scratch.resize(n, 0);
        let bytes = bytemuck_u8s(&mut self.half_scratch[..n]);
        let at = self.content.tensor_data_offset + info.offset;
        self.reader
            .seek(SeekFrom::Start(at))
            .and_then(|_| self.reader.read_exact(bytes))
            .map_err(|e| {
                Error::BadWeights(format!("{}: tensor {name}: {e}", self.path.display()))
            })?;
        Ok(Some(Linear::half(
            kind,
            rows,
            cols,
            &self.half_scratch[..n],
        )))
    }

    pub fn read_qtensor(&mut self, gguf_name: &str) -> Result<QTensor> {
        let info = self.content.tensor_infos.get(gguf_name).ok_or_else(|| {
            Error::BadWeights(format!(
                "{}: tensor {gguf_name} is missing",
                self.path.display()
            ))
        })?;
        info.read(
            &mut self.reader,
            self.content.tensor_data_offset,
            &self.device,
        )
        .map_err(|e| Error::BadWeights(format!("{}: tensor {gguf_name}: {e}", self.path.display())))
    }
}

/// A GGUF file's quantization as llama.cpp and Ollama name it (`Q4_K_M`, `F16`), from its
/// `general.file_type` (llama.cpp's `llama_ftype`); `None` when the file does not say or is
/// not readable.
pub fn quantization_name(path: &Path) -> Option<&'static str> {
    let g = GgufFile::open(path, &Device::Cpu).ok()?;
    file_type_name(value_u64(g.meta("general.file_type")?)?)
}

/// llama.cpp's `llama_ftype` numbers (include/llama.h) by name.
fn file_type_name(ftype: u64) -> Option<&'static str> {
    Some(match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

fn value_u64(v: &Value) -> Option<u64> {
    Some(match v {
        Value::U8(x) => *x as u64,
        Value::I8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::I16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::I32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I64(x) => *x as u64,
        _ => return None,
    })
}

/// HF tensor name → GGUF tensor name. `post_norms`: Gemma's layout, where HF's
/// `post_attention_layernorm` is a norm on the attention's output (`post_attention_norm`) and
/// the MLP's input norm is `pre_feedforward_layernorm` (`ffn_norm`).
pub fn gguf_name(hf: &str, post_norms: bool) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, tail) = rest.split_once('.')?;
    let suffix = match tail {
        "post_attention_layernorm.weight" if post_norms => "post_attention_norm.weight",
        "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
        "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        // Phi-3's fused projections (llama.cpp's `ffn_up` holds gate and up there).
        "self_attn.qkv_proj.weight" => "attn_qkv.weight",
        "mlp.gate_up_proj.weight" => "ffn_up.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        _ => return None,
    };
    Some(format!("blk.{idx}.{suffix}"))
}

impl GgufFile {
    /// [`gguf_name`] in this file's layout.
    fn name_of(&self, hf: &str) -> Option<String> {
        let post_norms = self
            .content
            .tensor_infos
            .contains_key("blk.0.post_attention_norm.weight");
        gguf_name(hf, post_norms)
    }
}

impl TensorSource for GgufFile {
    fn origin(&self) -> String {
        self.path.display().to_string()
    }
    fn contains(&self, name: &str) -> bool {
        self.name_of(name)
            .is_some_and(|g| self.content.tensor_infos.contains_key(&g))
    }
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let g = self
            .name_of(name)
            .ok_or_else(|| Error::BadWeights(format!("no GGUF name for {name}")))?;
        self.content
            .tensor_infos
            .get(&g)
            .map(|i| i.shape.dims().to_vec())
            .ok_or_else(|| {
                Error::BadWeights(format!(
                    "{}: tensor {g} ({name}) is missing",
                    self.path.display()
                ))
            })
    }
    fn linear(&mut self, name: &str, _dtype: DType) -> Result<Linear> {
        if let Some(l) = self.half_linear(name)? {
            return Ok(l);
        }
        let w = self.read_named(name)?;
        Ok(if self.own_kernels {
            Linear::from_qtensor(w)?
        } else {
            Linear::from_qtensor_candle(w)?
        })
    }
    fn dense(&mut self, name: &str, dtype: DType) -> Result<Tensor> {
        let q = self.read_named(name)?;
        let device = q.device();
        Ok(q.dequantize(&device)?.to_dtype(dtype)?)
    }
    fn embeddings(&mut self, name: &str, dtype: DType) -> Result<Embeddings> {
        let q = self.read_named(name)?;
        let kept = !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        if kept && q.device().is_cpu() && dtype == DType::F32 {
            let (rows, cols) = q.shape().dims2()?;
            return Ok(Embeddings::Quantized {
                dtype: q.dtype(),
                rows,
                cols,
                bytes: q.data()?.into_owned(),
            });
        }
        let device = q.device();
        Ok(Embeddings::Dense(q.dequantize(&device)?.to_dtype(dtype)?))
    }
}

/// The bytes of `v` (read into in place: any bytes are a valid u16).
fn bytemuck_u8s(v: &mut [u16]) -> &mut [u8] {
    // Safety: u16 has no invalid bit patterns and stricter alignment than u8; the length is
    // the same memory's.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 2) }
}

/// A shard of a split GGUF, by llama.cpp's naming: `NAME-00001-of-00003.gguf`.
pub fn is_split_shard(p: &Path) -> bool {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    let b = stem.as_bytes();
    let Some(t) = b.len().checked_sub(15).map(|i| &b[i..]) else {
        return false;
    };
    let digits = |d: &[u8]| d.iter().all(u8::is_ascii_digit);
    t[0] == b'-' && digits(&t[1..6]) && &t[6..10] == b"-of-" && digits(&t[10..])
}
