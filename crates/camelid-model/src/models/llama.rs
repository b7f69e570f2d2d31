//! The LLaMA architecture (Llama 1/2/3, Vicuna, SmolLM2, TinyLlama): its weights per layer
//! and what the layer loops of the runtimes (runtime/) read of them. The forward pass itself lives in
//! the runtime (one layer loop per runtime, not one per architecture).

use crate::config::ModelConfig;
use crate::error::Result;
use crate::linear::{Linear, Projections};
use crate::rope::Rope;
use candle_core::{DType, Device, Tensor};
use std::sync::OnceLock;

pub(crate) struct Layer {
    pub attn_norm: Tensor,
    /// Q, K and V projections (fused when the weights allow it).
    pub qkv: Projections,
    pub o: Linear,
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
    pub(crate) embed: Tensor,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: Linear,
    pub(crate) rope: Rope,
    /// The norm weights as host f32 slices, made on first use by the CPU serving path.
    pub(crate) host_norms: OnceLock<HostNorms>,
}

/// RMSNorm weights as plain slices: (attention, MLP) per layer, then the final norm.
pub(crate) struct HostNorms {
    pub layers: Vec<(Vec<f32>, Vec<f32>)>,
    pub last: Vec<f32>,
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
        let mut all: Vec<&Linear> = vec![&self.lm_head];
        for l in &self.layers {
            all.extend(l.qkv.linears());
            all.extend([&l.o, &l.down]);
            all.extend(l.gate_up.linears());
        }
        (all.iter().filter(|l| l.own_kernel()).count(), all.len())
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
                .map(|l| Ok((host(&l.attn_norm)?, host(&l.mlp_norm)?)))
                .collect::<Result<_>>()?,
            last: host(&self.norm)?,
        };
        Ok(self.host_norms.get_or_init(|| norms))
    }
}
