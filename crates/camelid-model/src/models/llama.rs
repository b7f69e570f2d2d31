//! The LLaMA architecture (Llama 1/2/3, Vicuna, SmolLM2, TinyLlama), and [`Llama`], the
//! weights of every architecture (the features of the others are optional parts of a
//! [`Layer`]) and what the layer loops of the runtimes (runtime/) read of them. The forward
//! pass itself lives in the runtime (one layer loop per runtime, not one per architecture).

use super::{refuse_output_bias, Architecture};
use crate::config::{ArchFeatures, HfConfig, ModelConfig, RopeStyle};
use crate::embedding::Embeddings;
use crate::error::Result;
use crate::linear::{Linear, Projections};
use crate::rope::Rope;
use candle_core::{DType, Device, Tensor};
use std::sync::OnceLock;

pub const ARCH: Architecture = Architecture {
    name: "llama",
    hf_architectures: &["LlamaForCausalLM"],
    model_types: &["llama"],
    gguf_rope: RopeStyle::Interleaved,
    gguf_window: true,
    hf_features,
    tied_by_default: false,
    hf_norm_offset: 0.0,
    hf_class: super::as_llama,
};

fn hf_features(hf: &HfConfig, origin: &str) -> Result<ArchFeatures> {
    refuse_output_bias(hf, origin)?;
    Ok(ArchFeatures::default())
}

pub(crate) struct Layer {
    pub attn_norm: Tensor,
    /// Q, K and V projections (fused when the weights allow it).
    pub qkv: Projections,
    /// Q, K and V biases side by side, `(q_heads + 2 · kv_heads) · head_dim` (Qwen2).
    pub qkv_bias: Option<Tensor>,
    /// Per-head RMSNorm weights of Q and K, `head_dim` each (Qwen3).
    pub qk_norm: Option<(Tensor, Tensor)>,
    pub o: Linear,
    /// Norms of the attention's and the MLP's outputs (Gemma).
    pub post_norms: Option<(Tensor, Tensor)>,
    pub mlp_norm: Tensor,
    /// Gate and up projections.
    pub gate_up: Projections,
    pub down: Linear,
}

pub struct Llama {
    pub(crate) cfg: ModelConfig,
    /// dtype of activations and of the KV cache.
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    pub(crate) embed: Embeddings,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: Linear,
    pub(crate) rope: Rope,
    /// The local (windowed) layers' rope where it is not `rope` (Gemma 3).
    pub(crate) rope_local: Option<Rope>,
    /// The norm weights as host f32 slices, made on first use by the CPU serving path.
    pub(crate) host_norms: OnceLock<HostNorms>,
    /// The CUDA runtime's decode graphs, typed where they are made (`runtime::cuda_graph`):
    /// a model does not name a runtime's types, which import the model's.
    #[cfg(feature = "cuda")]
    pub(crate) cuda_graphs: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

/// Per-layer vectors as plain slices, then the final norm.
pub(crate) struct HostNorms {
    pub layers: Vec<HostLayer>,
    pub last: Vec<f32>,
}

/// One layer's norm weights and biases as plain slices.
pub(crate) struct HostLayer {
    pub attn_norm: Vec<f32>,
    pub mlp_norm: Vec<f32>,
    pub qkv_bias: Option<Vec<f32>>,
    pub qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    pub post_norms: Option<(Vec<f32>, Vec<f32>)>,
}

impl Llama {
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// How many of the model's matmuls (fused projections count once) run on camelid's own
    /// quantized kernels, and how many there are: which kernels a file's formats got.
    pub fn own_kernel_matmuls(&self) -> (usize, usize) {
        let all = self.matmuls();
        (all.iter().filter(|l| l.own_kernel()).count(), all.len())
    }

    /// Each matmul's 16-bit weight type where it keeps 16-bit weights (tests: an F16 file's
    /// stay F16, a bf16 one's bf16).
    pub fn half_kinds(&self) -> Vec<Option<camelid_kernels::f16gemm::HalfKind>> {
        self.matmuls().iter().map(|l| l.half_kind()).collect()
    }

    /// Every weight matmul: the head, then each layer's.
    fn matmuls(&self) -> Vec<&Linear> {
        let mut all: Vec<&Linear> = vec![&self.lm_head];
        for l in &self.layers {
            all.extend(l.qkv.linears());
            all.extend([&l.o, &l.down]);
            all.extend(l.gate_up.linears());
        }
        all
    }

    /// The norm weights as host f32 slices (copied from the tensors once).
    pub(crate) fn host_norms(&self) -> Result<&HostNorms> {
        if let Some(n) = self.host_norms.get() {
            return Ok(n);
        }
        let host = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
        };
        let norms = HostNorms {
            layers: self
                .layers
                .iter()
                .map(|l| {
                    Ok(HostLayer {
                        attn_norm: host(&l.attn_norm)?,
                        mlp_norm: host(&l.mlp_norm)?,
                        qkv_bias: l.qkv_bias.as_ref().map(host).transpose()?,
                        qk_norm: match &l.qk_norm {
                            Some((q, k)) => Some((host(q)?, host(k)?)),
                            None => None,
                        },
                        post_norms: match &l.post_norms {
                            Some((a, m)) => Some((host(a)?, host(m)?)),
                            None => None,
                        },
                    })
                })
                .collect::<Result<_>>()?,
            last: host(&self.norm)?,
        };
        Ok(self.host_norms.get_or_init(|| norms))
    }
}
