//! Fused element-wise ops of the tensor runtime: one pass over memory and one output
//! allocation where candle would run several ops, each allocating and (for views) copying
//! (CPU f32: `camelid_kernels::vecmath`; CUDA: camelid's kernel unless turned off).

use camelid_kernels::vecmath;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `silu(gate) · up` from the gate/up projection's joined output `(.., 2 · inter)` (gate
/// first), giving `(.., inter)`.
pub fn silu_mul_joined(gate_up: &Tensor) -> Result<Tensor> {
    if gate_up.device().is_cpu() && gate_up.dtype() == DType::F32 {
        return gate_up.contiguous()?.apply_op1_no_bwd(&SiluMul);
    }
    #[cfg(feature = "cuda")]
    if gate_up.device().is_cuda()
        && camelid_kernels::cuda::enabled()
        && matches!(gate_up.dtype(), DType::F32 | DType::F16 | DType::BF16)
    {
        return camelid_kernels::cuda::silu_mul(&gate_up.contiguous()?);
    }
    let last = gate_up.rank() - 1;
    let inter = gate_up.dim(last)? / 2;
    let g = candle_nn::ops::silu(&gate_up.narrow(last, 0, inter)?)?;
    g * gate_up.narrow(last, inter, inter)?
}

struct SiluMul;

/// Elements below which one thread does the whole op (fork/join costs more).
const PARALLEL_MIN: usize = 1 << 16;

impl CustomOp1 for SiluMul {
    fn name(&self) -> &'static str {
        "camelid-silu-mul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        let width = *dims.last().unwrap_or(&0);
        let (Some((start, end)), CpuStorage::F32(x), true) = (
            layout.contiguous_offsets(),
            storage,
            width.is_multiple_of(2) && width > 0,
        ) else {
            candle_core::bail!("silu_mul: needs contiguous f32 rows of even width");
        };
        let x = &x[start..end];
        let inter = width / 2;
        let mut out = vec![0f32; x.len() / 2];
        let row = |(o, r): (&mut [f32], &[f32])| vecmath::silu_mul(&r[..inter], &r[inter..], o);
        if out.len() < PARALLEL_MIN {
            out.chunks_mut(inter).zip(x.chunks(width)).for_each(row);
        } else {
            out.par_chunks_mut(inter)
                .zip(x.par_chunks(width))
                .for_each(row);
        }
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = inter;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_silu_mul_matches_candle_ops() {
        let dev = Device::Cpu;
        // 3 × 2 × (2 · 40): a batch dimension, and a row width with a scalar tail.
        let x = Tensor::randn(0f32, 3.0, (3, 2, 80), &dev).unwrap();
        let fused = silu_mul_joined(&x).unwrap();
        let g = candle_nn::ops::silu(&x.narrow(2, 0, 40).unwrap()).unwrap();
        let want = (g * x.narrow(2, 40, 40).unwrap()).unwrap();
        assert_eq!(fused.dims(), want.dims());
        let diff = (fused - want)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "max difference {diff}");
    }
}
