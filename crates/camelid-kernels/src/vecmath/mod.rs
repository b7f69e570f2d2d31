//! The f32 vector primitives of CPU attention (dot, axpy, softmax's exponentials), in two
//! flavours behind one trait: plain Rust (the reference, and any CPU) and AVX2+FMA.
//!
//! Why a trait: a kernel written once as `fn kernel<V: VecOps>(..)` (`#[inline(always)]`) is
//! compiled with AVX2 enabled inside a `#[target_feature]` wrapper, so the helpers inline into
//! it instead of costing a call per 64-value head. Why own `exp`: libm's `expf` is a call per
//! score and was 8 % of a batched decode step.
//!
//! Keys and values may be stored as f16 ([`KvElem`]) or 8-bit with scales ([`VecOps::widen_q8`]):
//! fewer bytes to stream per step, which is what batched decode attention is bound by; they are
//! widened to f32 as they are read.

use half::f16;

/// The primitives; every slice length is the caller's head size (a multiple of 8 for the
/// AVX2 flavour to use its fast path; any length works).
pub trait VecOps {
    fn dot(a: &[f32], b: &[f32]) -> f32;
    /// `y += a · x`.
    fn axpy(y: &mut [f32], a: f32, x: &[f32]);
    /// `y *= a`.
    fn scale(y: &mut [f32], a: f32);
    /// `r[i] = exp(r[i] − max)`; returns the sum.
    fn exp_shifted_sum(r: &mut [f32], max: f32) -> f32;
    /// `out[i] = silu(gate[i]) · up[i]`, `silu(x) = x / (1 + e^−x)` (the LLaMA MLP).
    fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]);
    fn widen_f16(x: &[f16], out: &mut [f32]);
    /// `out[p] = scale · (q · keys[p·d .. p·d + d])` for `p < out.len()`, `d = q.len()`.
    fn dots(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
        let d = q.len();
        for (p, o) in out.iter_mut().enumerate() {
            *o = scale * Self::dot(q, &keys[p * d..(p + 1) * d]);
        }
    }
    /// `out = Σ_p w[p] · values[p·d .. p·d + d]`, `d = out.len()`.
    fn weighted_sum(w: &[f32], values: &[f32], out: &mut [f32]) {
        let d = out.len();
        out.fill(0.0);
        for (p, &wp) in w.iter().enumerate() {
            Self::axpy(out, wp, &values[p * d..(p + 1) * d]);
        }
    }
    /// `out[i] = q[i] · scales[i / group]` (a Q8_0 cache's values, widened).
    fn widen_q8(q: &[i8], scales: &[f32], group: usize, out: &mut [f32]) {
        for ((og, qg), &d) in out.chunks_mut(group).zip(q.chunks(group)).zip(scales) {
            for (o, &v) in og.iter_mut().zip(qg) {
                *o = v as f32 * d;
            }
        }
    }
}

/// A float element type of a KV cache: f32 or f16, computed with in f32 (widened on read).
pub trait KvElem: Copy + Default + Send + Sync + 'static {
    /// Writes `x` as f32 into `out` (same length).
    fn widen_into<V: VecOps>(x: &[Self], out: &mut [f32]);
}

impl KvElem for f32 {
    #[inline(always)]
    fn widen_into<V: VecOps>(x: &[Self], out: &mut [f32]) {
        out.copy_from_slice(x)
    }
}

impl KvElem for f16 {
    #[inline(always)]
    fn widen_into<V: VecOps>(x: &[Self], out: &mut [f32]) {
        V::widen_f16(x, out)
    }
}

pub struct Scalar;

impl VecOps for Scalar {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        // Eight partial sums: the same association as the AVX2 flavour, and vectorizable.
        let mut acc = [0f32; 8];
        let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ac
            .remainder()
            .iter()
            .zip(bc.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in ac.zip(bc) {
            for i in 0..8 {
                acc[i] += x[i] * y[i];
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    #[inline(always)]
    fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y += a * x;
        }
    }

    #[inline(always)]
    fn scale(y: &mut [f32], a: f32) {
        y.iter_mut().for_each(|v| *v *= a);
    }

    #[inline(always)]
    fn exp_shifted_sum(r: &mut [f32], max: f32) -> f32 {
        let mut sum = 0f32;
        for v in r.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        sum
    }

    #[inline(always)]
    fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }

    #[inline(always)]
    fn widen_f16(x: &[f16], out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(x) {
            *o = v.to_f32();
        }
    }
}

/// [`VecOps::exp_shifted_sum`] with the best flavour this CPU runs.
pub fn exp_shifted_sum(r: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_features::avx2() {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn avx2(r: &mut [f32], max: f32) -> f32 {
            Avx2::exp_shifted_sum(r, max)
        }
        // Safety: the CPU has the features.
        return unsafe { avx2(r, max) };
    }
    Scalar::exp_shifted_sum(r, max)
}

/// [`VecOps::silu_mul`] with the best flavour this CPU runs.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_features::avx512() {
        #[target_feature(enable = "avx512f,avx2,fma,f16c")]
        unsafe fn avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
            x86::avx512::silu_mul(gate, up, out)
        }
        // Safety: the CPU has the features (AVX-512 implies AVX2, FMA and F16C here:
        // `cpu_features::avx512` asks for them too).
        return unsafe { avx512(gate, up, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_features::avx2() {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
            Avx2::silu_mul(gate, up, out)
        }
        // Safety: the CPU has the features.
        return unsafe { avx2(gate, up, out) };
    }
    Scalar::silu_mul(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
mod x86;
// Crate-only: its safe `VecOps` methods run AVX2/FMA/F16C instructions, so every caller
// must have checked the CPU first (the crate's kernels do).
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::Avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{avx2, avx512};

#[cfg(test)]
mod tests;
