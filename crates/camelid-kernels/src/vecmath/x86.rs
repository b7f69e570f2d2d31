//! The AVX2 flavour of [`super::VecOps`], the vector `exp` (AVX2 and AVX-512 lanes) and
//! SiLU·up in AVX-512 lanes.

use super::{Scalar, VecOps};
use half::f16;

/// AVX2 + FMA + F16C. Only call its methods from code compiled with those features (inside a
/// `#[target_feature(enable = "avx2,fma,f16c")]` function) after [`crate::cpu_features::avx2`] said yes.
pub struct Avx2;

/// Cephes' `expf` (see [`avx2::exp`]): the clamp, ln2 in two parts, the polynomial for e^r.
mod exp_consts {
    pub const LO: f32 = -87.3;
    pub const HI: f32 = 88.3;
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    pub const POLY: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];
}

/// [`avx2::exp`] and `Avx2::silu_mul` in 16 lanes.
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// `e^x` as [`super::avx2::exp`] computes it, in 16 lanes.
    ///
    /// # Safety
    /// The CPU has AVX-512F (the caller enables it).
    #[inline(always)]
    pub unsafe fn exp(x: __m512) -> __m512 {
        use super::exp_consts::*;
        // The bound first: `vmaxps`/`vminps` return their second operand where either is a
        // NaN, so a NaN stays one (put second, the bound made it ~1e-38 and hid it).
        let x = _mm512_max_ps(_mm512_set1_ps(LO), x);
        let x = _mm512_min_ps(_mm512_set1_ps(HI), x);
        let n_i = _mm512_cvtps_epi32(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
        let n = _mm512_cvtepi32_ps(n_i);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(POLY[0]);
        for c in &POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let er = _mm512_fmadd_ps(
            _mm512_mul_ps(r, r),
            p,
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            n_i,
            _mm512_set1_epi32(127),
        )));
        _mm512_mul_ps(er, two_n)
    }

    /// [`super::Avx2`]'s `silu_mul` in 16 lanes: the same operations on each value (its
    /// `exp`, an IEEE division), so the same bits; a last 8 through the AVX2 one, the rest
    /// as it takes them.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX2, FMA and F16C (the caller enables them).
    #[inline(always)]
    pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        use super::{Avx2, VecOps};
        let n = out.len().min(gate.len()).min(up.len());
        let (gp, up_, op) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr());
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i + 16 <= n {
            let g = _mm512_loadu_ps(gp.add(i));
            let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
            _mm512_storeu_ps(op.add(i), _mm512_mul_ps(silu, _mm512_loadu_ps(up_.add(i))));
            i += 16;
        }
        Avx2::silu_mul(&gate[i..n], &up[i..n], &mut out[i..n]);
    }
}

pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    #[inline(always)]
    pub unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// `exp(x)` to a few ulp (Cephes' `expf`: x = n·ln2 + r, a degree-5 polynomial for e^r,
    /// 2^n through the exponent bits). Inputs are clamped to [−87.3, 88.3]: below, results
    /// are ~1e-38 instead of smaller (softmax weights that small vanish in the sum; SiLU of
    /// such x is −0 either way); above, ~2e38 instead of infinity.
    #[inline(always)]
    pub unsafe fn exp(x: __m256) -> __m256 {
        use super::exp_consts::*;
        // The bound first: a NaN stays one (see `avx512::exp`).
        let x = _mm256_max_ps(_mm256_set1_ps(LO), x);
        let x = _mm256_min_ps(_mm256_set1_ps(HI), x);
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        // r = x − n·ln2, ln2 split in two so n·ln2_hi is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(POLY[0]);
        for c in &POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        // e^r ≈ 1 + r + r²·p(r)
        let er = _mm256_fmadd_ps(
            _mm256_mul_ps(r, r),
            p,
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let two_n = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        ));
        _mm256_mul_ps(er, two_n)
    }

    /// `out[c..c + 8R] = Σ_p w[p] · v[p·d + c ..][..8R]`, in R registers.
    #[inline(always)]
    pub unsafe fn weighted_chunk<const R: usize>(
        w: &[f32],
        v: *const f32,
        d: usize,
        c: usize,
        out: *mut f32,
    ) {
        let mut acc = [_mm256_setzero_ps(); R];
        for (p, &wp) in w.iter().enumerate() {
            let wv = _mm256_set1_ps(wp);
            let row = v.add(p * d + c);
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(row.add(8 * r)), *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(c + 8 * r), *a);
        }
    }
}

impl VecOps for Avx2 {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = a.len().min(b.len());
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        // Safety: AVX2+FMA enabled by the caller (type contract); loads stay below n.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i + 8 <= n {
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i)), _mm256_loadu_ps(bp.add(i)), acc);
                i += 8;
            }
            let mut s = avx2::hsum(acc);
            while i < n {
                s += *ap.add(i) * *bp.add(i);
                i += 1;
            }
            s
        }
    }

    #[inline(always)]
    fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        use std::arch::x86_64::*;
        let n = y.len().min(x.len());
        let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
        // Safety: as in `dot`.
        unsafe {
            let av = _mm256_set1_ps(a);
            let mut i = 0;
            while i + 8 <= n {
                let v = _mm256_fmadd_ps(av, _mm256_loadu_ps(xp.add(i)), _mm256_loadu_ps(yp.add(i)));
                _mm256_storeu_ps(yp.add(i), v);
                i += 8;
            }
            while i < n {
                *yp.add(i) += a * *xp.add(i);
                i += 1;
            }
        }
    }

    #[inline(always)]
    fn scale(y: &mut [f32], a: f32) {
        use std::arch::x86_64::*;
        let n = y.len();
        let yp = y.as_mut_ptr();
        // Safety: as in `dot`.
        unsafe {
            let av = _mm256_set1_ps(a);
            let mut i = 0;
            while i + 8 <= n {
                _mm256_storeu_ps(yp.add(i), _mm256_mul_ps(av, _mm256_loadu_ps(yp.add(i))));
                i += 8;
            }
            while i < n {
                *yp.add(i) *= a;
                i += 1;
            }
        }
    }

    #[inline(always)]
    fn exp_shifted_sum(r: &mut [f32], max: f32) -> f32 {
        use std::arch::x86_64::*;
        let n = r.len();
        let rp = r.as_mut_ptr();
        // Safety: as in `dot`.
        unsafe {
            let mv = _mm256_set1_ps(max);
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i + 8 <= n {
                let e = avx2::exp(_mm256_sub_ps(_mm256_loadu_ps(rp.add(i)), mv));
                _mm256_storeu_ps(rp.add(i), e);
                acc = _mm256_add_ps(acc, e);
                i += 8;
            }
            let mut s = avx2::hsum(acc);
            while i < n {
                let e = (*rp.add(i) - max).exp();
                *rp.add(i) = e;
                s += e;
                i += 1;
            }
            s
        }
    }

    #[inline(always)]
    fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        use std::arch::x86_64::*;
        let n = out.len().min(gate.len()).min(up.len());
        let (gp, up_, op) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr());
        // Safety: as in `dot`.
        unsafe {
            let one = _mm256_set1_ps(1.0);
            let mut i = 0;
            while i + 8 <= n {
                let g = _mm256_loadu_ps(gp.add(i));
                let e = avx2::exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
                let silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
                _mm256_storeu_ps(op.add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(up_.add(i))));
                i += 8;
            }
            while i < n {
                let g = *gp.add(i);
                *op.add(i) = g / (1.0 + (-g).exp()) * *up_.add(i);
                i += 1;
            }
        }
    }

    #[inline(always)]
    fn widen_q8(q: &[i8], scales: &[f32], group: usize, out: &mut [f32]) {
        use std::arch::x86_64::*;
        if !group.is_multiple_of(8) {
            return Scalar::widen_q8(q, scales, group, out);
        }
        let groups = (out.len().min(q.len()) / group).min(scales.len());
        let (qp, op) = (q.as_ptr(), out.as_mut_ptr());
        // Safety: AVX2 enabled by the caller (type contract); every access is below
        // `groups · group`, within all three slices.
        unsafe {
            for (gi, &d) in scales[..groups].iter().enumerate() {
                let d = _mm256_set1_ps(d);
                for i in (gi * group..(gi + 1) * group).step_by(8) {
                    let b = _mm_loadl_epi64(qp.add(i) as *const __m128i);
                    let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
                    _mm256_storeu_ps(op.add(i), _mm256_mul_ps(v, d));
                }
            }
        }
    }

    #[inline(always)]
    fn widen_f16(x: &[f16], out: &mut [f32]) {
        use std::arch::x86_64::*;
        let n = out.len().min(x.len());
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        // Safety: as in `dot`.
        unsafe {
            let mut i = 0;
            while i + 8 <= n {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(xp.add(i) as *const __m128i));
                _mm256_storeu_ps(op.add(i), v);
                i += 8;
            }
            while i < n {
                *op.add(i) = (*xp.add(i)).to_f32();
                i += 1;
            }
        }
    }

    /// Eight keys per pass: the query chunk is loaded once for eight accumulators (eight
    /// independent FMA chains), and one horizontal reduction gives eight scores.
    #[inline(always)]
    fn dots(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let d = q.len();
        let n = out.len();
        assert!(keys.len() >= n * d);
        if !d.is_multiple_of(8) {
            for (p, o) in out.iter_mut().enumerate() {
                *o = scale * Self::dot(q, &keys[p * d..(p + 1) * d]);
            }
            return;
        }
        let (qp, kp) = (q.as_ptr(), keys.as_ptr());
        // Safety: AVX2+FMA enabled by the caller (type contract); reads stay below n·d.
        unsafe {
            let mut p = 0;
            while p + 8 <= n {
                let k = kp.add(p * d);
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut i = 0;
                while i < d {
                    let qv = _mm256_loadu_ps(qp.add(i));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.add(j * d + i)), *a);
                    }
                    i += 8;
                }
                // Eight accumulators → eight sums: pairwise hadds leave, per 128-bit half,
                // partial sums of keys 0–3 and 4–7; adding the halves finishes them.
                let h0 = _mm256_hadd_ps(
                    _mm256_hadd_ps(acc[0], acc[1]),
                    _mm256_hadd_ps(acc[2], acc[3]),
                );
                let h1 = _mm256_hadd_ps(
                    _mm256_hadd_ps(acc[4], acc[5]),
                    _mm256_hadd_ps(acc[6], acc[7]),
                );
                let sums = _mm256_add_ps(
                    _mm256_permute2f128_ps(h0, h1, 0x20),
                    _mm256_permute2f128_ps(h0, h1, 0x31),
                );
                _mm256_storeu_ps(
                    out.as_mut_ptr().add(p),
                    _mm256_mul_ps(sums, _mm256_set1_ps(scale)),
                );
                p += 8;
            }
            while p < n {
                out[p] = scale * Self::dot(q, &keys[p * d..(p + 1) * d]);
                p += 1;
            }
        }
    }

    /// The output chunk (64 values where the head allows) stays in eight registers across all
    /// the weights: eight independent FMA chains per weight.
    #[inline(always)]
    fn weighted_sum(w: &[f32], values: &[f32], out: &mut [f32]) {
        let d = out.len();
        assert!(values.len() >= w.len() * d);
        if !d.is_multiple_of(8) {
            out.fill(0.0);
            for (p, &wp) in w.iter().enumerate() {
                Self::axpy(out, wp, &values[p * d..(p + 1) * d]);
            }
            return;
        }
        let mut c = 0;
        // Safety (all three): AVX2+FMA enabled by the caller; chunk c..c + 8R lies within d.
        while c + 64 <= d {
            unsafe { avx2::weighted_chunk::<8>(w, values.as_ptr(), d, c, out.as_mut_ptr()) };
            c += 64;
        }
        while c + 32 <= d {
            unsafe { avx2::weighted_chunk::<4>(w, values.as_ptr(), d, c, out.as_mut_ptr()) };
            c += 32;
        }
        while c < d {
            unsafe { avx2::weighted_chunk::<1>(w, values.as_ptr(), d, c, out.as_mut_ptr()) };
            c += 8;
        }
    }
}
