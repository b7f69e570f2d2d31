//! One linear-layer type for dense (safetensors, f32/bf16/f16) and quantized (GGUF) weights.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};
use std::sync::Arc;

/// `y = x · Wᵀ` with `W` of shape `(out_features, in_features)`.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: QMatMul,
    out_features: usize,
    in_features: usize,
}

impl Linear {
    pub fn from_dense(w: Tensor) -> Result<Self> {
        let (out_features, in_features) = w.dims2()?;
        Ok(Self {
            inner: QMatMul::Tensor(w),
            out_features,
            in_features,
        })
    }

    /// Quantized weights stay quantized (candle's CPU/CUDA quantized matmul); F32/F16/BF16
    /// GGUF tensors are dequantized by candle into a dense matmul.
    pub fn from_qtensor(w: QTensor) -> Result<Self> {
        let (out_features, in_features) = w.shape().dims2()?;
        Ok(Self {
            inner: QMatMul::from_arc(Arc::new(w))?,
            out_features,
            in_features,
        })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }
}
