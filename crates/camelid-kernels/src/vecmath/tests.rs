use super::*;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp_avx2(r: &mut [f32]) -> f32 {
    Avx2::exp_shifted_sum(r, 0.0)
}

#[test]
#[cfg(target_arch = "x86_64")]
fn avx2_exp_matches_libm() {
    if !crate::cpu_features::avx2() {
        eprintln!("no AVX2 here; nothing to compare");
        return;
    }
    // Softmax's range (0 down to below the clamp) and SiLU's (e^−x up to the clamp).
    let xs: Vec<f32> = (0..37_600).map(|i| 88.0 - i as f32 * 0.005).collect();
    let mut ours = xs.clone();
    unsafe { exp_avx2(&mut ours) };
    let mut worst = 0f64;
    for (x, e) in xs.iter().zip(&ours) {
        let want = (*x as f64).exp();
        if want > 1e-37 {
            worst = worst.max(((*e as f64) - want).abs() / want);
        } else {
            assert!(*e >= 0.0 && (*e as f64) < 2e-37, "exp({x}) = {e}");
        }
    }
    assert!(worst < 1e-6, "max relative error {worst}");
    // The sum over softmax's range (x ≤ 0), accumulated in f32 lanes.
    let mut xs: Vec<f32> = (0..20_000).map(|i| -(i as f32) * 0.005).collect();
    let want_sum: f64 = xs.iter().map(|x| (*x as f64).exp()).sum();
    let sum = unsafe { exp_avx2(&mut xs) };
    assert!((sum as f64 - want_sum).abs() / want_sum < 1e-6);
}

/// A NaN stays a NaN through the vector `exp` (8 and 16 lanes), as through libm: clamped
/// first, it came out ~1e-38, and a softmax over NaN scores gave a finite average of the
/// values (only where the keys filled whole vectors; the scalar tail kept the NaN).
#[test]
#[cfg(target_arch = "x86_64")]
fn the_vector_exp_keeps_a_nan() {
    if !crate::cpu_features::avx2() {
        eprintln!("no AVX2 here; nothing to compare");
        return;
    }
    let mut xs = [f32::NAN, 0.0, -1.0, 1.0, -200.0, 200.0, f32::NAN, 0.5];
    let sum = unsafe { exp_avx2(&mut xs) };
    assert!(sum.is_nan(), "{xs:?}");
    assert!(xs[0].is_nan() && xs[6].is_nan(), "{xs:?}");
    assert_eq!(xs[1], 1.0);
    if crate::cpu_features::avx512() {
        #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
        unsafe fn exp16(x: &[f32; 16]) -> [f32; 16] {
            use std::arch::x86_64::*;
            let mut out = [0f32; 16];
            _mm512_storeu_ps(
                out.as_mut_ptr(),
                super::x86::avx512::exp(_mm512_loadu_ps(x.as_ptr())),
            );
            out
        }
        let mut x = [0.25f32; 16];
        x[3] = f32::NAN;
        let e = unsafe { exp16(&x) };
        assert!(e[3].is_nan(), "{e:?}");
        assert!((e[0] - 0.25f32.exp()).abs() < 1e-6, "{e:?}");
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn avx2_dots_and_weighted_sums_agree_with_scalar() {
    if !crate::cpu_features::avx2() {
        return;
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run(q: &[f32], kv: &[f32], s: &mut [f32], o: &mut [f32]) {
        Avx2::dots(q, kv, 0.125, s);
        Avx2::weighted_sum(s, kv, o);
    }
    // Head sizes: 64 and 128 (LLaMA), 40 (a 32 + 8 chunk), 12 (the scalar fallback);
    // 11 keys: a pass of eight and a remainder.
    for d in [64usize, 128, 40, 12] {
        let n = 11;
        let q: Vec<f32> = (0..d).map(|i| (i as f32 * 0.7).sin()).collect();
        let kv: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.13).cos()).collect();
        let (mut s1, mut o1) = (vec![0f32; n], vec![0f32; d]);
        let (mut s2, mut o2) = (vec![0f32; n], vec![0f32; d]);
        unsafe { run(&q, &kv, &mut s1, &mut o1) };
        Scalar::dots(&q, &kv, 0.125, &mut s2);
        Scalar::weighted_sum(&s2, &kv, &mut o2);
        for (a, b) in s1.iter().zip(&s2).chain(o1.iter().zip(&o2)) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "d={d}: {a} vs {b}");
        }
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn avx2_flavour_agrees_with_scalar() {
    if !crate::cpu_features::avx2() {
        return;
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run(a: &[f32], b: &[f32], h: &[f16], y: &mut [f32]) -> f32 {
        let mut s = vec![0f32; a.len()];
        Avx2::silu_mul(a, b, &mut s);
        Avx2::axpy(y, 1.0, &s);
        Avx2::axpy(y, 0.75, a);
        Avx2::scale(y, -1.5);
        let mut w = vec![0f32; h.len()];
        Avx2::widen_f16(h, &mut w);
        Avx2::axpy(y, -0.25, &w);
        Avx2::dot(a, b)
    }
    // 67: the vector body and a scalar tail.
    let a: Vec<f32> = (0..67).map(|i| (i as f32 * 0.37).sin()).collect();
    let b: Vec<f32> = (0..67).map(|i| (i as f32 * 0.11).cos()).collect();
    let h: Vec<f16> = a.iter().map(|v| f16::from_f32(v * 3.0)).collect();
    let (mut y1, mut y2) = (b.clone(), b.clone());
    let d1 = unsafe { run(&a, &b, &h, &mut y1) };
    let mut s = vec![0f32; a.len()];
    Scalar::silu_mul(&a, &b, &mut s);
    Scalar::axpy(&mut y2, 1.0, &s);
    Scalar::axpy(&mut y2, 0.75, &a);
    Scalar::scale(&mut y2, -1.5);
    let w: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
    Scalar::axpy(&mut y2, -0.25, &w);
    let d2 = Scalar::dot(&a, &b);
    assert!((d1 - d2).abs() < 1e-5, "{d1} vs {d2}");
    for (p, q) in y1.iter().zip(&y2) {
        assert!((p - q).abs() < 1e-6);
    }
}

/// The AVX-512 SiLU·up gives the AVX2 one's bits (a prompt's MLP runs the one its CPU has):
/// 16-lane body, an 8-lane step and a scalar tail, over SiLU's whole range (the exp clamps).
#[test]
#[cfg(target_arch = "x86_64")]
fn avx512_silu_mul_gives_the_avx2_bits() {
    if crate::cpu_features::skip_without_avx512(
        "avx512_silu_mul_gives_the_avx2_bits",
        crate::cpu_features::avx512(),
    ) {
        return;
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn avx2(g: &[f32], u: &[f32], out: &mut [f32]) {
        Avx2::silu_mul(g, u, out)
    }
    let n = 16 * 700 + 8 + 5;
    let gate: Vec<f32> = (0..n)
        .map(|i| (i as f32 - n as f32 / 2.0) * 0.0173)
        .collect();
    let up: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let (mut ours, mut theirs) = (vec![0f32; n], vec![0f32; n]);
    silu_mul(&gate, &up, &mut ours);
    unsafe { avx2(&gate, &up, &mut theirs) };
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "value {i}: {a} vs {b}");
    }
}
