use super::*;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Random 16-bit weights of `kind`: mostly ±1, some large, some subnormal (f16) or tiny.
fn weight_bits(kind: HalfKind, n: usize, seed: u64) -> Vec<u16> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let v: f32 = rng.random_range(-1.0f32..1.0);
            let v = match i % 13 {
                0 => v * 300.0,
                1 => v * 1e-6, // f16 subnormal
                _ => v,
            };
            match kind {
                HalfKind::F16 => f16::from_f32(v).to_bits(),
                HalfKind::Bf16 => bf16::from_f32(v).to_bits(),
            }
        })
        .collect()
}

/// `x · Wᵀ` in f64 and, per output, `Σ|x·w|` (the scale of its rounding error).
fn reference(
    kind: HalfKind,
    bits: &[u16],
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> Vec<(f64, f64)> {
    let w: Vec<f64> = bits.iter().map(|&b| kind.to_f32(b) as f64).collect();
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for r in 0..n {
            let (mut s, mut a) = (0f64, 0f64);
            for j in 0..k {
                let p = x[i * k + j] as f64 * w[r * k + j];
                s += p;
                a += p.abs();
            }
            out.push((s, a));
        }
    }
    out
}

/// How far `fl`'s sum of `k` products may be from the exact one, `a` being `Σ|x·w|`: a sum
/// of `k` f32 products in any order is within `k · u · a` (u = 2⁻²⁴; Higham's γₖ bound,
/// every product exact in FMA or rounded once); the tiles' split operands add up to
/// `(2⁻¹⁶ + 2⁻¹⁸)·|x·w|` a product (`amx`: the left-out `xl·wl`, `x`'s parts' rounding).
fn bound(fl: Flavour, k: usize, a: f64) -> f64 {
    let split = if fl == Flavour::Amx {
        2f64.powi(-15)
    } else {
        0.0
    };
    ((k as f64 + 1.0) * 2f64.powi(-24) + split) * a + 1e-30
}

fn check(name: &str, fl: Flavour, got: &[f32], want: &[(f64, f64)], k: usize) {
    for (idx, (&g, &(s, a))) in got.iter().zip(want).enumerate() {
        let bound = bound(fl, k, a);
        assert!(
            (g as f64 - s).abs() <= bound,
            "{name}: output {idx}: {g} vs {s} (bound {bound})"
        );
    }
}

#[test]
fn every_flavour_matches_the_f64_reference() {
    let flavours = Flavour::available();
    eprintln!("f16gemm flavours here: {flavours:?}");
    for kind in [HalfKind::F16, HalfKind::Bf16] {
        // Odd row counts (one unit, a partial group, several units), odd widths.
        for (n, k) in [(37, 96), (133, 257), (16, 31), (1, 8)] {
            let bits = weight_bits(kind, n * k, 5);
            for &fl in &flavours {
                let w = HalfWeight::with_flavour(kind, n, k, &bits, fl).unwrap();
                assert_eq!(w.to_row_major(), bits, "{fl:?}: layout round trip");
                for m in 1..=9 {
                    let x = random(m * k, m as u64);
                    let mut out = vec![f32::NAN; m * n];
                    matmul(&w, &x, m, &mut out);
                    let want = reference(kind, &bits, &x, m, n, k);
                    check(
                        &format!("{kind:?} {fl:?} m={m} n={n} k={k}"),
                        fl,
                        &out,
                        &want,
                        k,
                    );
                }
            }
        }
    }
}

#[test]
fn tiles_and_threads_cover_every_output() {
    // k = 4096: an activation tile of 16 (AVX-512) or 12 (AVX2) rows, so m = 21 takes two
    // tiles; 3 · 2¹⁸ multiply-adds and more split over threads.
    let (m, n, k) = (21, 70, 4096);
    for kind in [HalfKind::F16, HalfKind::Bf16] {
        let bits = weight_bits(kind, n * k, 9);
        let x = random(m * k, 4);
        let want = reference(kind, &bits, &x, m, n, k);
        for fl in Flavour::available() {
            let w = HalfWeight::with_flavour(kind, n, k, &bits, fl).unwrap();
            let mut out = vec![f32::NAN; m * n];
            matmul(&w, &x, m, &mut out);
            check(&format!("{kind:?} {fl:?}"), fl, &out, &want, k);
        }
    }
}

#[test]
fn matches_candle_on_the_widened_weights() {
    let dev = Device::Cpu;
    let (n, k) = (45, 160);
    for kind in [HalfKind::F16, HalfKind::Bf16] {
        let bits = weight_bits(kind, n * k, 11);
        let wf: Vec<f32> = bits.iter().map(|&b| kind.to_f32(b)).collect();
        let wt = Tensor::from_vec(wf, (n, k), &dev).unwrap();
        for m in 1..=9 {
            let x = random(m * k, 20 + m as u64);
            let xt = Tensor::from_slice(&x, (m, k), &dev).unwrap();
            let want: Vec<f32> = xt
                .matmul(&wt.t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let scale = reference(kind, &bits, &x, m, n, k);
            for fl in Flavour::available() {
                let w = HalfWeight::with_flavour(kind, n, k, &bits, fl).unwrap();
                let mut out = vec![f32::NAN; m * n];
                matmul(&w, &x, m, &mut out);
                // Both are within their bounds of the exact sum, so within the sum of both.
                for (idx, ((&a, &b), &(_, s))) in out.iter().zip(&want).zip(&scale).enumerate() {
                    let bound = bound(fl, k, s) + bound(Flavour::Scalar, k, s);
                    assert!(
                        ((a - b) as f64).abs() <= bound,
                        "{kind:?} {fl:?} m={m}: output {idx}: {a} vs candle {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn concatenated_rows_compute_the_parts_side_by_side() {
    let kind = HalfKind::F16;
    // Parts of whole units (64 rows) are joined line by line; others are laid out again.
    for (ra, rb, k) in [
        (20, 9, 64),
        (64, 9, 64),
        (128, 64, 40),
        (64, 20, 40),
        (192, 100, 1000),
    ] {
        let (a, b) = (weight_bits(kind, ra * k, 1), weight_bits(kind, rb * k, 2));
        let r = ra + rb;
        for fl in Flavour::available() {
            let wa = HalfWeight::with_flavour(kind, ra, k, &a, fl).unwrap();
            let wb = HalfWeight::with_flavour(kind, rb, k, &b, fl).unwrap();
            let both = HalfWeight::concat_rows(&[&wa, &wb]).unwrap();
            assert_eq!(both.shape(), (r, k));
            assert_eq!(both.to_row_major(), [a.clone(), b.clone()].concat());
            let x = random(3 * k, 8);
            let mut joined = vec![0f32; 3 * r];
            matmul(&both, &x, 3, &mut joined);
            let (mut oa, mut ob) = (vec![0f32; 3 * ra], vec![0f32; 3 * rb]);
            matmul(&wa, &x, 3, &mut oa);
            matmul(&wb, &x, 3, &mut ob);
            for i in 0..3 {
                assert_eq!(
                    joined[i * r..i * r + ra],
                    oa[i * ra..(i + 1) * ra],
                    "{fl:?}"
                );
                assert_eq!(joined[i * r + ra..(i + 1) * r], ob[i * rb..(i + 1) * rb]);
            }
        }
    }
    let k = 64;
    let other = HalfWeight::new(HalfKind::Bf16, 2, k, &vec![0; 2 * k]).unwrap();
    let f = HalfWeight::new(kind, 2, k, &vec![0; 2 * k]).unwrap();
    assert!(
        HalfWeight::concat_rows(&[&f, &other]).is_none(),
        "kinds differ"
    );
}

/// Every flavour's layout loop (those this CPU lacks too) puts each value where `at` says.
#[test]
fn groups_are_laid_out_where_at_places_them() {
    for fl in [Flavour::Avx2, Flavour::Avx512, Flavour::Amx] {
        let g = fl.group();
        for (n, cols) in [(g, 64), (g - 3, 40), (1, 33)] {
            let stride = fl.stride(cols);
            let rows_in: Vec<u16> = (1..=(n * cols) as u16).collect();
            let mut group = vec![0u16; g * stride];
            fl.lay_out_group(cols, &rows_in, &mut group);
            let mut want = vec![0u16; g * stride];
            for r in 0..n {
                for j in 0..cols {
                    want[fl.at(r, j, stride)] = rows_in[r * cols + j];
                }
            }
            assert_eq!(group, want, "{fl:?} {n}×{cols}");
        }
    }
}

#[test]
fn a_shape_that_does_not_match_the_values_is_refused() {
    assert!(HalfWeight::new(HalfKind::F16, 3, 4, &[0; 11]).is_none());
    assert!(HalfWeight::new(HalfKind::F16, usize::MAX, 2, &[]).is_none());
}

/// The tiles give a row the same bits alone, in a decode batch, in 16-row blocks and at any
/// place in the call (prompts chunked or batched, preempted and recomputed).
#[test]
fn amx_rows_do_not_depend_on_the_batch() {
    let present = Flavour::available().contains(&Flavour::Amx);
    if crate::cpu_features::skip_without_amx("AMX-BF16 tiles", present) {
        return;
    }
    let (n, k, m) = (133, 2100, 41);
    for kind in [HalfKind::F16, HalfKind::Bf16] {
        let bits = weight_bits(kind, n * k, 3);
        let w = HalfWeight::with_flavour(kind, n, k, &bits, Flavour::Amx).unwrap();
        let x = random(m * k, 6);
        let mut all = vec![f32::NAN; m * n];
        matmul(&w, &x, m, &mut all);
        for (start, len) in [(0, 1), (40, 1), (5, 8), (3, 16), (17, 17), (1, 33)] {
            let mut part = vec![f32::NAN; len * n];
            matmul(&w, &x[start * k..(start + len) * k], len, &mut part);
            assert_eq!(
                part,
                all[start * n..(start + len) * n],
                "{kind:?}: rows {start}..{} alone",
                start + len
            );
        }
    }
}

#[test]
fn no_activation_rows_is_no_work() {
    for fl in Flavour::available() {
        let w = HalfWeight::with_flavour(
            HalfKind::F16,
            20,
            64,
            &weight_bits(HalfKind::F16, 20 * 64, 1),
            fl,
        )
        .unwrap();
        let mut out: Vec<f32> = Vec::new();
        matmul(&w, &[], 0, &mut out);
    }
}
