//! One linear-layer type for dense (safetensors, f32/bf16/f16) and quantized (GGUF) weights.
//!
//! On the CPU, Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 and Q4_K / Q5_K / Q6_K weights run through
//! camelid's own batched kernels ([`camelid_kernels::quant`]), f16 / bf16 weights through
//! [`camelid_kernels::f16gemm`] (kept 16-bit); every other case goes through candle's
//! `QMatMul` (f32 matmul, other formats, CUDA).

use camelid_kernels::f16gemm::{self, HalfKind, HalfWeight};
use camelid_kernels::quant::{self, QActs, QKind, QWeight};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Result, Shape, Tensor};
use rayon::prelude::*;
use std::cell::Cell;
use std::sync::Arc;

/// Rows from which [`Projections::Separate`] copies its parts' outputs on rayon's threads.
const PARALLEL_COPY_ROWS: usize = 16;

/// [`Projections::Separate`]'s parts side by side in `out (m, Σ widths)`, each part's output
/// first in `buf`: kept between calls, where a fresh zeroed buffer per part (4 MiB of a 1B
/// model's 512-token step) cost its zeroing and page faults again.
fn forward_parts(
    parts: &[Linear],
    x: &[f32],
    m: usize,
    acts: &mut QActs,
    out: &mut [f32],
    buf: &mut Vec<f32>,
) -> Result<()> {
    let total: usize = parts.iter().map(|p| p.out_features).sum();
    let mut off = 0;
    for p in parts {
        let w = p.out_features;
        if buf.len() < m * w {
            buf.resize(m * w, 0.0);
        }
        let part = &mut buf[..m * w];
        p.forward_cpu_into(x, m, acts, part)?;
        let copy = |(dst, src): (&mut [f32], &[f32])| dst[off..off + w].copy_from_slice(src);
        if m >= PARALLEL_COPY_ROWS {
            out.par_chunks_exact_mut(total)
                .zip(part.par_chunks_exact(w))
                .for_each(copy);
        } else {
            out.chunks_exact_mut(total)
                .zip(part.chunks_exact(w))
                .for_each(copy);
        }
        off += w;
    }
    Ok(())
}

thread_local! {
    /// [`forward_parts`]' buffer.
    static PART: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

#[derive(Debug, Clone)]
enum Inner {
    Candle(QMatMul),
    Own(Arc<QWeight>),
    Half(Arc<HalfWeight>),
}

/// `y = x · Wᵀ` with `W` of shape `(out_features, in_features)`.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: Inner,
    out_features: usize,
    in_features: usize,
}

impl Linear {
    pub fn from_dense(w: Tensor) -> Result<Self> {
        let (out_features, in_features) = w.dims2()?;
        Ok(Self {
            inner: Inner::Candle(QMatMul::Tensor(w)),
            out_features,
            in_features,
        })
    }

    /// The dense matrix of one made by [`Self::from_dense`] (tests: whether it is another's).
    #[cfg(test)]
    pub(crate) fn dense_weight(&self) -> Option<&Tensor> {
        match &self.inner {
            Inner::Candle(QMatMul::Tensor(t)) => Some(t),
            _ => None,
        }
    }

    /// A 16-bit (f16 or bf16) CPU matrix kept 16-bit, on camelid's own kernels; any other
    /// tensor as [`Self::from_dense`].
    pub fn from_dense_16bit(w: Tensor) -> Result<Self> {
        let kind = match w.dtype() {
            DType::F16 => HalfKind::F16,
            DType::BF16 => HalfKind::Bf16,
            _ => return Self::from_dense(w),
        };
        if !w.device().is_cpu() {
            return Self::from_dense(w);
        }
        let (out_features, in_features) = w.dims2()?;
        // The raw bits, whichever 16-bit type: a u16 view of the same values (no copy).
        use half::slice::HalfFloatSliceExt;
        let w = w.flatten_all()?;
        Ok(match kind {
            HalfKind::F16 => {
                let v = w.to_vec1::<half::f16>()?;
                Self::half(kind, out_features, in_features, v.reinterpret_cast())
            }
            HalfKind::Bf16 => {
                let v = w.to_vec1::<half::bf16>()?;
                Self::half(kind, out_features, in_features, v.reinterpret_cast())
            }
        })
    }

    /// [`Self::half`] from the weights' little-endian bytes as a file stores them (read in
    /// place where they sit on a 2-byte boundary).
    pub fn half_from_le_bytes(kind: HalfKind, rows: usize, cols: usize, bytes: &[u8]) -> Self {
        // Safety: any two bytes are a valid u16.
        let (head, aligned, tail) = unsafe { bytes.align_to::<u16>() };
        if head.is_empty() && tail.is_empty() && cfg!(target_endian = "little") {
            return Self::half(kind, rows, cols, aligned);
        }
        let copied: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        Self::half(kind, rows, cols, &copied)
    }

    /// A `rows × cols` matrix of 16-bit weights from their row-major bits, on the own kernels
    /// (the CPU's).
    pub fn half(kind: HalfKind, out_features: usize, in_features: usize, bits: &[u16]) -> Self {
        let w = HalfWeight::new(kind, out_features, in_features, bits)
            .expect("the shape is the tensor's own, the best flavour runs here");
        Self {
            inner: Inner::Half(Arc::new(w)),
            out_features,
            in_features,
        }
    }

    /// Quantized weights stay quantized; F16/BF16 GGUF tensors stay 16-bit on the CPU (own
    /// kernels); F32 ones, and 16-bit ones elsewhere, are dequantized by candle into a dense
    /// matmul.
    pub fn from_qtensor(w: QTensor) -> Result<Self> {
        use candle_core::quantized::GgmlDType;
        let (out_features, in_features) = w.shape().dims2()?;
        let half = match w.dtype() {
            GgmlDType::F16 => Some(HalfKind::F16),
            GgmlDType::BF16 => Some(HalfKind::Bf16),
            _ => None,
        };
        if let (Some(kind), true) = (half, w.device().is_cpu()) {
            return Ok(Self::half_from_le_bytes(
                kind,
                out_features,
                in_features,
                &w.data()?,
            ));
        }
        let own = match (QKind::from_ggml(w.dtype()), w.device().is_cpu()) {
            (Some(kind), true) => {
                QWeight::new(kind, out_features, in_features, w.data()?.into_owned())
            }
            _ => None,
        };
        let inner = match own {
            Some(q) => Inner::Own(Arc::new(q)),
            None => Inner::Candle(QMatMul::from_arc(Arc::new(w))?),
        };
        Ok(Self {
            inner,
            out_features,
            in_features,
        })
    }

    /// A `rows × cols` matrix from its bytes in GGML's `dtype` layout (a quantized format): the
    /// own kernels take the bytes themselves, other formats or devices go through candle.
    pub fn from_ggml_bytes(
        dtype: candle_core::quantized::GgmlDType,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
        device: &candle_core::Device,
    ) -> Result<Self> {
        if let (Some(kind), true) = (QKind::from_ggml(dtype), device.is_cpu()) {
            let q = QWeight::new(kind, rows, cols, bytes).ok_or_else(|| {
                candle_core::Error::Msg(format!("{dtype:?} bytes do not make {rows} × {cols}"))
            })?;
            return Ok(Self {
                inner: Inner::Own(Arc::new(q)),
                out_features: rows,
                in_features: cols,
            });
        }
        let w = candle_core::quantized::ggml_file::qtensor_from_ggml(
            dtype,
            &bytes,
            vec![rows, cols],
            device,
        )?;
        Self::from_qtensor(w)
    }

    /// Always candle's `QMatMul` (the reference for the own kernels).
    pub fn from_qtensor_candle(w: QTensor) -> Result<Self> {
        let (out_features, in_features) = w.shape().dims2()?;
        Ok(Self {
            inner: Inner::Candle(QMatMul::from_arc(Arc::new(w))?),
            out_features,
            in_features,
        })
    }

    /// One linear layer computing `parts` side by side (their outputs concatenated on the last
    /// axis), when all use our own kernel with the same format; `None` otherwise.
    pub fn fuse(parts: &[&Linear]) -> Option<Linear> {
        let halves: Option<Vec<&HalfWeight>> = parts
            .iter()
            .map(|p| match &p.inner {
                Inner::Half(w) => Some(w.as_ref()),
                _ => None,
            })
            .collect();
        if let Some(hs) = halves {
            let w = HalfWeight::concat_rows(&hs)?;
            let (out_features, in_features) = w.shape();
            return Some(Linear {
                out_features,
                in_features,
                inner: Inner::Half(Arc::new(w)),
            });
        }
        let ws: Option<Vec<&QWeight>> = parts
            .iter()
            .map(|p| match &p.inner {
                Inner::Own(w) => Some(w.as_ref()),
                _ => None,
            })
            .collect();
        let w = QWeight::concat_rows(&ws?)?;
        Some(Linear {
            out_features: w.rows,
            in_features: w.cols,
            inner: Inner::Own(Arc::new(w)),
        })
    }

    /// Whether this layer runs on camelid's own kernels, quantized or 16-bit (else candle's
    /// `QMatMul`).
    pub fn own_kernel(&self) -> bool {
        !matches!(self.inner, Inner::Candle(_))
    }

    /// The 16-bit type of weights kept 16-bit on the own kernels, if these are.
    pub fn half_kind(&self) -> Option<HalfKind> {
        match &self.inner {
            Inner::Half(w) => Some(w.kind),
            _ => None,
        }
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.inner {
            Inner::Candle(m) => m.forward(x),
            Inner::Own(_) | Inner::Half(_) => {
                let x = if x.dtype() == DType::F32 {
                    x.contiguous()?
                } else {
                    x.to_dtype(DType::F32)?.contiguous()?
                };
                let y = x.apply_op1_no_bwd(&OwnMatmul(self.inner.clone()))?;
                Ok(y)
            }
        }
    }
}

impl Linear {
    /// Whether this runs as candle's quantized matmul (GGUF blocks on CUDA, formats without
    /// an own kernel): its CUDA kernels keep grow-only scratch buffers per device, so a
    /// captured call's buffer may be freed by a later, larger one (no CUDA graph may hold it).
    pub fn is_candle_quantized(&self) -> bool {
        matches!(self.inner, Inner::Candle(QMatMul::QTensor(_)))
    }

    /// [`Self::forward_cpu_into`] of input rows `fill(r, row)` writes one at a time, where
    /// this layer's kernels take Q8_K activations (the K formats): the rows are quantized as
    /// they come, never stored whole. False (nothing done) elsewhere: the caller then writes
    /// the rows and calls `forward_cpu_into`.
    pub fn forward_cpu_rows_into(
        &self,
        m: usize,
        fill: impl Fn(usize, &mut [f32]) + Sync,
        acts: &mut QActs,
        out: &mut [f32],
    ) -> Result<bool> {
        let Inner::Own(w) = &self.inner else {
            return Ok(false);
        };
        if w.kind.act_format() != quant::ActFormat::Q8K {
            return Ok(false);
        }
        if out.len() != m * self.out_features {
            candle_core::bail!(
                "linear: {} outputs for {m} rows of {}",
                out.len(),
                self.out_features
            );
        }
        acts.quantize_q8k_rows_with(m, w.cols, fill);
        quant::matmul_quantized(w, acts, out);
        Ok(true)
    }

    /// `out (m, out_features) = x (m, in_features) · Wᵀ` on the CPU into a caller's buffer;
    /// `acts` holds the own kernel's quantized activations between calls (no allocation).
    pub fn forward_cpu_into(
        &self,
        x: &[f32],
        m: usize,
        acts: &mut QActs,
        out: &mut [f32],
    ) -> Result<()> {
        if x.len() != m * self.in_features || out.len() != m * self.out_features {
            candle_core::bail!(
                "linear: {} inputs / {} outputs for {m} rows of {} -> {}",
                x.len(),
                out.len(),
                self.in_features,
                self.out_features
            );
        }
        match &self.inner {
            Inner::Own(w) => {
                acts.quantize_for(w.kind, x, m, w.cols);
                quant::matmul_quantized(w, acts, out);
            }
            Inner::Half(w) => f16gemm::matmul(w, x, m, out),
            Inner::Candle(q) => {
                let t = Tensor::from_slice(x, (m, self.in_features), &Device::Cpu)?;
                let y = q.forward(&t)?.to_dtype(DType::F32)?.flatten_all()?;
                out.copy_from_slice(&y.to_vec1::<f32>()?);
            }
        }
        Ok(())
    }
}

/// The own kernels as a candle op (the tensor runtime's path); holds `Inner::Own` or `Half`.
struct OwnMatmul(Inner);

impl CustomOp1 for OwnMatmul {
    fn name(&self) -> &'static str {
        "camelid-own-gemm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, cols) = match &self.0 {
            Inner::Own(w) => (w.rows, w.cols),
            Inner::Half(w) => w.shape(),
            Inner::Candle(_) => candle_core::bail!("linear: candle weights in the own op"),
        };
        let dims = layout.shape().dims();
        let k = *dims.last().unwrap_or(&0);
        if k != cols {
            candle_core::bail!("linear: input width {k}, weight expects {cols}");
        }
        let (Some((start, end)), CpuStorage::F32(x)) = (layout.contiguous_offsets(), storage)
        else {
            candle_core::bail!("linear: own kernel needs contiguous f32 input");
        };
        let x = &x[start..end];
        let m = x.len() / k;
        let mut out = vec![0f32; m * rows];
        match &self.0 {
            Inner::Own(w) => quant::matmul(w, x, m, &mut out),
            Inner::Half(w) => f16gemm::matmul(w, x, m, &mut out),
            Inner::Candle(_) => unreachable!("refused above"),
        }
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = rows;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

/// Several linear layers over the same input (Q/K/V, gate/up), fused into one matmul when the
/// weights allow it: the input is quantized once and read once.
#[derive(Debug, Clone)]
pub enum Projections {
    Fused { linear: Linear, widths: Vec<usize> },
    Separate(Vec<Linear>),
}

impl Projections {
    pub fn new(parts: Vec<Linear>) -> Self {
        let refs: Vec<&Linear> = parts.iter().collect();
        match Linear::fuse(&refs) {
            Some(linear) => Projections::Fused {
                linear,
                widths: parts.iter().map(|p| p.out_features).collect(),
            },
            None => Projections::Separate(parts),
        }
    }

    /// The matmuls this runs: one when fused, else one per part.
    pub fn linears(&self) -> Vec<&Linear> {
        match self {
            Projections::Fused { linear, .. } => vec![linear],
            Projections::Separate(parts) => parts.iter().collect(),
        }
    }

    /// One output per part (views into one matrix when fused).
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Projections::Fused { linear, widths } => {
                let y = linear.forward(x)?;
                let last = y.rank() - 1;
                let mut off = 0;
                widths
                    .iter()
                    .map(|&w| {
                        let part = y.narrow(last, off, w);
                        off += w;
                        part
                    })
                    .collect()
            }
            Projections::Separate(parts) => parts.iter().map(|p| p.forward(x)).collect(),
        }
    }

    /// [`Self::forward_joined`] on the CPU into a caller's buffer `(m, Σ widths)`.
    pub fn forward_cpu_into(
        &self,
        x: &[f32],
        m: usize,
        acts: &mut QActs,
        out: &mut [f32],
    ) -> Result<()> {
        match self {
            Projections::Fused { linear, .. } => linear.forward_cpu_into(x, m, acts, out),
            Projections::Separate(parts) => {
                // Taken out while the parts run (a job this thread runs meanwhile finds an empty
                // buffer, not a borrowed one).
                let mut buf = PART.take();
                let result = forward_parts(parts, x, m, acts, out, &mut buf);
                PART.set(buf);
                result
            }
        }
    }

    /// All outputs side by side in one contiguous matrix.
    pub fn forward_joined(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Projections::Fused { linear, .. } => linear.forward(x),
            Projections::Separate(parts) => {
                let ys = parts
                    .iter()
                    .map(|p| p.forward(x))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&ys, ys[0].rank() - 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    /// Only candle's quantized matmul says so (the CUDA decode graphs keep off it): not a dense
    /// matrix, not the own kernels' blocks, not candle's dequantized 16-bit matrix.
    #[test]
    fn is_candle_quantized_names_candles_quantized_matmul_alone() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (8, 256), &dev).unwrap();
        let q = |dt| QTensor::quantize(&w, dt).unwrap();
        assert!(!Linear::from_dense(w.clone()).unwrap().is_candle_quantized());
        assert!(!Linear::from_qtensor(q(GgmlDType::Q4_0))
            .unwrap()
            .is_candle_quantized());
        assert!(Linear::from_qtensor_candle(q(GgmlDType::Q4_0))
            .unwrap()
            .is_candle_quantized());
        assert!(!Linear::from_qtensor_candle(q(GgmlDType::F16))
            .unwrap()
            .is_candle_quantized());
    }
}
