//! The f32 vector primitives of CPU attention (dot, axpy, softmax's exponentials), in two
//! flavours behind one trait: plain Rust (the reference, and any CPU) and AVX2+FMA.
//!
//! Why a trait: a kernel written once as `fn kernel<V: VecOps>(..)` (`#[inline(always)]`) is
//! compiled with AVX2 enabled inside a `#[target_feature]` wrapper, so the helpers inline into
//! it instead of costing a call per 64-value head. Why own `exp`: libm's `expf` is a call per
//! score and was 8 % of a batched decode step.

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
}

/// Whether [`Avx2`] may be used on this CPU.
pub fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AVX2 + FMA. Only call its methods from code compiled with those features (inside a
/// `#[target_feature(enable = "avx2,fma")]` function) after [`avx2_available`] said yes.
#[cfg(target_arch = "x86_64")]
pub struct Avx2;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline(always)]
    pub unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// `exp(x)` to ~2 ulp for x ≤ 0 (Cephes' `expf`: x = n·ln2 + r, a degree-5 polynomial for
    /// e^r, 2^n through the exponent bits). Inputs below −87.3 give 0 (the flush matters not:
    /// softmax weights that small vanish in the sum).
    #[inline(always)]
    pub unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.3));
        let x = _mm256_min_ps(x, _mm256_set1_ps(88.3));
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        // r = x − n·ln2, ln2 split in two so n·ln2_hi is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
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
}

#[cfg(target_arch = "x86_64")]
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp_avx2(r: &mut [f32]) -> f32 {
        Avx2::exp_shifted_sum(r, 0.0)
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_exp_matches_libm() {
        if !avx2_available() {
            eprintln!("no AVX2 here; nothing to compare");
            return;
        }
        // Softmax's range: 0 down to far below the flush point, and a little above 0.
        let xs: Vec<f32> = (0..20_000).map(|i| 2.0 - i as f32 * 0.005).collect();
        let mut ours = xs.clone();
        let sum = unsafe { exp_avx2(&mut ours) };
        let mut worst = 0f64;
        for (x, e) in xs.iter().zip(&ours) {
            let want = (*x as f64).exp();
            if want > 1e-37 {
                worst = worst.max(((*e as f64) - want).abs() / want);
            } else {
                assert!(*e >= 0.0 && (*e as f64) < 1e-37, "exp({x}) = {e}");
            }
        }
        assert!(worst < 1e-6, "max relative error {worst}");
        let want_sum: f64 = xs.iter().map(|x| (*x as f64).exp()).sum();
        assert!((sum as f64 - want_sum).abs() / want_sum < 1e-6);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_flavour_agrees_with_scalar() {
        if !avx2_available() {
            return;
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run(a: &[f32], b: &[f32], y: &mut [f32]) -> f32 {
            Avx2::axpy(y, 0.75, a);
            Avx2::scale(y, -1.5);
            Avx2::dot(a, b)
        }
        // 67: the vector body and a scalar tail.
        let a: Vec<f32> = (0..67).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..67).map(|i| (i as f32 * 0.11).cos()).collect();
        let (mut y1, mut y2) = (b.clone(), b.clone());
        let d1 = unsafe { run(&a, &b, &mut y1) };
        Scalar::axpy(&mut y2, 0.75, &a);
        Scalar::scale(&mut y2, -1.5);
        let d2 = Scalar::dot(&a, &b);
        assert!((d1 - d2).abs() < 1e-5, "{d1} vs {d2}");
        for (p, q) in y1.iter().zip(&y2) {
            assert!((p - q).abs() < 1e-6);
        }
    }
}
