use super::*;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

/// The 32-value block formats.
const BLOCK_TYPES: [GgmlDType; 5] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
];

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Quantizes random weights with candle (GGML's own quantizer) and returns ours and the
/// dequantized f32 matrix.
fn weight(t: GgmlDType, rows: usize, cols: usize) -> (QWeight, Vec<f32>) {
    let dev = Device::Cpu;
    let w = Tensor::from_vec(random(rows * cols, 7), (rows, cols), &dev).unwrap();
    let q = QTensor::quantize(&w, t).unwrap();
    let deq = q
        .dequantize(&dev)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let ours = QWeight::new(
        QKind::from_ggml(t).unwrap(),
        rows,
        cols,
        q.data().unwrap().into_owned(),
    )
    .unwrap();
    (ours, deq)
}

/// The GGUF bytes [`weight`] quantizes from the same seed.
fn rows_of(t: GgmlDType, rows: usize, cols: usize) -> Vec<u8> {
    let w = Tensor::from_vec(random(rows * cols, 7), (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, t).unwrap();
    q.data().unwrap().into_owned()
}

fn dense(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for r in 0..n {
            out[i * n + r] = (0..k)
                .map(|j| x[i * k + j] as f64 * w[r * k + j] as f64)
                .sum::<f64>() as f32;
        }
    }
    out
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn every_format_matches_the_dequantized_matmul() {
    // m = 7 exercises groups of 4 and a remainder of 3, m = 1 the single-row paths;
    // n = 71 stays row-major (uneven thread chunks, an odd row left after the pairs),
    // n = 72 is interleaved where the CPU has AVX2.
    for (t, m, n) in BLOCK_TYPES
        .into_iter()
        .flat_map(|t| [(t, 7, 71), (t, 1, 71), (t, 7, 72), (t, 1, 72)])
    {
        let k = 256;
        let (w, deq) = weight(t, n, k);
        assert_eq!(
            matches!(w.layout, Layout::Interleaved { .. }),
            n % 8 == 0 && simd_available()
        );
        let x = random(m * k, 3);
        let mut out = vec![0f32; m * n];
        matmul(&w, &x, m, &mut out);
        let want = dense(&x, &deq, m, n, k);
        // The only extra error is the activations' 8-bit quantization (~0.4 % per value).
        let err = max_rel(&out, &want);
        assert!(err < 1e-2, "{t:?}: max relative error {err}");
    }
}

#[test]
fn simd_quantize_gives_the_scalar_bytes() {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_features::avx2() {
        let mut x: Vec<f32> = random(40 * BLOCK, 9).iter().map(|v| v * 3.0).collect();
        x[BLOCK..2 * BLOCK].fill(0.0); // a zero block: scale 0
                                       // A block of exact ties (scale 1): rounding must go to even in both paths.
        for (i, v) in x[2 * BLOCK..3 * BLOCK].iter_mut().enumerate() {
            *v = i as f32 - 15.5;
        }
        x[2 * BLOCK] = -127.0;
        let nb = x.len() / BLOCK;
        let (mut q1, mut d1, mut s1) = (vec![0i8; x.len()], vec![0f32; nb], vec![0f32; nb]);
        let (mut q2, mut d2, mut s2) = (vec![0i8; x.len()], vec![0f32; nb], vec![0f32; nb]);
        quantize_blocks_scalar(&x, &mut q1, &mut d1, &mut s1);
        // Safety: AVX2 is available.
        unsafe { x86::avx2::quantize_blocks(&x, &mut q2, &mut d2, &mut s2) };
        assert_eq!(q1, q2);
        assert_eq!(d1, d2);
        assert_eq!(s1, s2);
        assert_eq!(&q1[2 * BLOCK + 1..2 * BLOCK + 5], &[-14, -14, -12, -12]);
        // The threaded split gives the same result as one pass.
        let rows = 40 * BLOCK / 64;
        let a = QActs::quantize(&x, rows, 64);
        let qs: Vec<i8> = (0..rows).flat_map(|i| a.row(i).qs.to_vec()).collect();
        assert_eq!((qs, a.d, a.s), (q1, d1, s1));
    }
}

#[test]
fn simd_kernel_agrees_with_the_scalar_reference() {
    if !simd_available() {
        eprintln!("no SIMD kernel on this CPU; nothing to compare");
        return;
    }
    for t in BLOCK_TYPES {
        // Enough rows and blocks to take the parallel path and several row tiles (both
        // layouts); one row over an odd number of weight rows (the paired decode kernel)
        // and over an interleaved matrix.
        // Every pass width (1–8 rows) too.
        let few = (2..=9).map(|m| (m, 96));
        for (m, n) in [(133, 96), (133, 97), (1, 1537), (1, 1536)]
            .into_iter()
            .chain(few)
        {
            let k = 576;
            let (w, _) = weight(t, n, k);
            let reference = QWeight::new_rows(w.kind, n, k, rows_of(t, n, k)).unwrap();
            let x = random(m * k, 11);
            let (mut fast, mut slow) = (vec![0f32; m * n], vec![0f32; m * n]);
            matmul(&w, &x, m, &mut fast);
            matmul_with(
                &reference,
                &QActs::quantize(&x, m, reference.cols),
                &mut slow,
                dot_rows_scalar,
                None,
            );
            let err = max_rel(&fast, &slow);
            assert!(err < 1e-5, "{t:?} m={m}: SIMD vs scalar {err}");
        }
    }
}

#[test]
fn concatenated_rows_give_the_stacked_outputs() {
    // 16 + 32 rows: interleaved parts (groups of 16 or 8, per CPU); 8 + 24: groups of 8;
    // 3 + 5 rows: row-major parts.
    for (ra, rb) in [(16, 32), (8, 24), (3, 5)] {
        let (a, _) = weight(GgmlDType::Q4_1, ra, 64);
        let (b, _) = weight(GgmlDType::Q4_1, rb, 64);
        let ab = QWeight::concat_rows(&[&a, &b]).unwrap();
        let x = random(3 * 64, 5);
        let (mut ya, mut yb) = (vec![0f32; 3 * ra], vec![0f32; 3 * rb]);
        let mut yab = vec![0f32; 3 * (ra + rb)];
        matmul(&a, &x, 3, &mut ya);
        matmul(&b, &x, 3, &mut yb);
        matmul(&ab, &x, 3, &mut yab);
        let n = ra + rb;
        for i in 0..3 {
            assert_eq!(&yab[i * n..i * n + ra], &ya[i * ra..(i + 1) * ra]);
            assert_eq!(&yab[i * n + ra..(i + 1) * n], &yb[i * rb..(i + 1) * rb]);
        }
    }
    let (a, _) = weight(GgmlDType::Q4_1, 8, 64);
    let (c, _) = weight(GgmlDType::Q8_0, 8, 64);
    assert!(QWeight::concat_rows(&[&a, &c]).is_none(), "formats differ");
    if simd_available() {
        let rows = QWeight::new_rows(QKind::Q4_1, 8, 64, rows_of(GgmlDType::Q4_1, 8, 64));
        assert!(
            QWeight::concat_rows(&[&a, &rows.unwrap()]).is_none(),
            "layouts differ"
        );
    }
}

/// The 5-bit formats in each layout this CPU runs (row-major, 8-row AVX2 groups, 16-row
/// AVX-512 groups) against the scalar reference, every pass width, and at their extremes
/// (every value 31 times activations of ±127: the i16 sums at their largest).
#[test]
fn five_bit_kernels_agree_with_the_scalar_reference_in_every_layout() {
    let mut groups = vec![0];
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu_features::avx2() {
            groups.push(8);
        }
        if crate::cpu_features::avx512() {
            groups.push(16);
        }
    }
    let (n, k) = (48, 320);
    for t in [GgmlDType::Q5_0, GgmlDType::Q5_1] {
        let kind = QKind::from_ggml(t).unwrap();
        // Extreme rows: d = 1, m = 0, every fifth bit and nibble set (q = 31).
        let mut block = half::f16::from_f32(1.0).to_le_bytes().to_vec();
        if kind == QKind::Q5_1 {
            block.extend([0, 0]);
        }
        block.extend([0xFF; 20]);
        let extreme: Vec<u8> = block.repeat(n * k / BLOCK);
        for (data, x_scale) in [(rows_of(t, n, k), 1.0f32), (extreme, 0.0)] {
            let reference = QWeight::new_rows(kind, n, k, data.clone()).unwrap();
            for &g in &groups {
                let w = QWeight::new_rows(kind, n, k, data.clone()).unwrap();
                let w = if g == 0 { w } else { w.interleaved_by(g) };
                assert_eq!(
                    matches!(w.layout, Layout::Interleaved { .. }),
                    g != 0,
                    "{t:?} group {g}"
                );
                for m in 1..=9 {
                    // x_scale 0: every activation ±1 (quantized to ±127), one sign per row.
                    let x: Vec<f32> = if x_scale == 0.0 {
                        (0..m * k)
                            .map(|i| if (i / k) % 2 == 0 { 1.0 } else { -1.0 })
                            .collect()
                    } else {
                        random(m * k, 30 + m as u64)
                    };
                    let acts = QActs::quantize(&x, m, k);
                    let (mut fast, mut slow) = (vec![0f32; m * n], vec![0f32; m * n]);
                    matmul_quantized(&w, &acts, &mut fast);
                    matmul_with(&reference, &acts, &mut slow, dot_rows_scalar, None);
                    let err = max_rel(&fast, &slow);
                    assert!(err < 1e-5, "{t:?} group {g} m={m}: vs scalar {err}");
                }
            }
        }
    }
}

// ---- The K formats (Q4_K, Q5_K, Q6_K) × Q8_K activations. ----

const K_TYPES: [GgmlDType; 3] = [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K];

/// `w` laid out for `flavour`: row-major for the scalar reference, else interleaved by its group.
fn laid_out(
    kind: QKind,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
    flavour: kgemm::Flavour,
) -> QWeight {
    let w = QWeight::new_rows(kind, rows, cols, data).unwrap();
    match flavour.group() {
        0 => w,
        g => w.interleaved_by(g),
    }
}

fn q8k(x: &[f32], m: usize, k: usize) -> QActs {
    let mut a = QActs::default();
    a.quantize_q8k_into(x, m, k);
    a
}

#[test]
fn k_formats_match_the_dequantized_matmul_in_every_flavour() {
    // n = 16: whole groups; 72: a padded last group of 16 (whole groups of 8); 37: a padded
    // last group in both; m = 1 (decode), 7 and 9 (passes of 4 or 8 and their remainders).
    for t in K_TYPES {
        for (m, n) in [(1, 16), (7, 72), (9, 37), (1, 37)] {
            let k = 512;
            let (data, deq) = weight_rows(t, n, k);
            let x = random(m * k, 3);
            let want = dense(&x, &deq, m, n, k);
            let acts = q8k(&x, m, k);
            for flavour in kgemm::Flavour::available() {
                let w = laid_out(QKind::from_ggml(t).unwrap(), n, k, data.clone(), flavour);
                let mut out = vec![f32::NAN; m * n];
                kgemm::matmul_k_with(&w, &acts, &mut out, flavour);
                // The only extra error is the activations' 8-bit quantization: per 256
                // values, at most 1/254 of the largest (~0.4 %).
                let err = max_rel(&out, &want);
                assert!(
                    err < 1e-2,
                    "{t:?} {flavour:?} m={m} n={n}: max relative error {err}"
                );
            }
        }
    }
}

/// GGUF bytes and candle's dequantization of random weights in format `t`.
fn weight_rows(t: GgmlDType, rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let dev = Device::Cpu;
    let w = Tensor::from_vec(random(rows * cols, 7), (rows, cols), &dev).unwrap();
    let q = QTensor::quantize(&w, t).unwrap();
    let deq = q
        .dequantize(&dev)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    (q.data().unwrap().into_owned(), deq)
}

/// Every SIMD flavour against the scalar reference on the same Q8_K activations: random
/// GGUF weights, and weights at the formats' extremes (all nibbles and high bits set, the
/// largest scales, ±127 activations) where an i16 sum would overflow if it ran too long.
#[test]
fn k_kernels_agree_with_the_scalar_reference() {
    let flavours = kgemm::Flavour::available();
    if flavours.len() == 1 {
        eprintln!("no SIMD K kernel on this CPU; nothing to compare");
        return;
    }
    for t in K_TYPES {
        let kind = QKind::from_ggml(t).unwrap();
        // Every pass width (1–9 rows), several row tiles and the parallel path (133 rows),
        // whole and padded groups; tiles long enough for the AVX2 and AVX-512 VNNI kernels to
        // run on unpacked groups (AVX2: Q5_K and Q6_K from 16 rows, Q4_K 64; AVX-512 VNNI:
        // Q6_K from 24, its whole groups in pairs (passes of 6 or 4 rows), Q5_K from 48 where it tests
        // its fifth bits with a mask, as on Intel or with `CAMELID_Q5_SHIFTS=0`: 25–35 and
        // 49–55 rows end on passes of every width), one of them with a padded group, one
        // unpacked AVX-512 tile of up to 320 rows (257, 300) and three of 234 (700).
        let shapes = (1..=9).map(|m| (m, 48)).chain([
            (133, 96),
            (133, 40),
            (1, 1037),
            (20, 37),
            (70, 37),
            (300, 24),
            (257, 24),
            (700, 24),
            (25, 37),
            (26, 37),
            (27, 37),
            (31, 37),
            (33, 37),
            (35, 37),
            (49, 37),
            (50, 37),
            (51, 37),
            (52, 37),
            (53, 37),
            (55, 37),
        ]);
        for (m, n) in shapes {
            let k = 768;
            for acts_kind in KActs::ALL {
                let (data, acts) = k_case(t, m, n, k, acts_kind, (7, 11));
                let mut want = vec![0f32; m * n];
                let reference = laid_out(kind, n, k, data.clone(), kgemm::Flavour::Scalar);
                kgemm::matmul_k_with(&reference, &acts, &mut want, kgemm::Flavour::Scalar);
                for &flavour in &flavours[1..] {
                    let w = laid_out(kind, n, k, data.clone(), flavour);
                    let mut got = vec![f32::NAN; m * n];
                    kgemm::matmul_k_with(&w, &acts, &mut got, flavour);
                    let err = max_rel(&got, &want);
                    assert!(
                        err < 1e-5,
                        "{t:?} {flavour:?} m={m} n={n} {acts_kind:?}: SIMD vs scalar {err}"
                    );
                }
            }
        }
    }
}

/// The activations of a K-format case.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KActs {
    /// Uniform in [−1, 1): most 16-value blocks' `Σ|q|` near 1 000, so the kernels that
    /// may sum 16 values in an i16 mostly sum 8.
    Random,
    /// ±1 (quantized to ±127), with weights at their extremes: the largest sums.
    Extreme,
    /// One value of each 256 at 1, the rest uniform in [−0.15, 0.15) (as a model's hidden
    /// states with an outlier): every block's `Σ|q|` at most 16 · 19, so those kernels sum 16.
    Small,
    /// `Random` rows 8–15 of every 32, the others `Small`: some passes get rows of both, and
    /// the paired passes take 4 rows where a block of rows has some `Random`.
    Mixed,
}

impl KActs {
    const ALL: [KActs; 4] = [KActs::Random, KActs::Extreme, KActs::Small, KActs::Mixed];
}

/// `m` rows of `k` activations, `Small` (see [`KActs`]) where `small(row)`, else uniform in
/// [−1, 1); seed `seed`.
fn small_acts(m: usize, k: usize, seed: u64, small: impl Fn(usize) -> bool) -> Vec<f32> {
    let mut x = random(m * k, seed);
    for (i, v) in x.iter_mut().enumerate() {
        if small(i / k) {
            *v = if i % QK_K == 0 { 1.0 } else { 0.15 * *v };
        }
    }
    x
}

/// One K-format case: `n × k` GGUF weights of type `t` and `m` rows of Q8_K activations
/// (see [`KActs`]): random weights (seed 7) and activations (seed `pattern.1`), or at the
/// extremes (`extreme_k_rows`, ±1 activations in runs of `pattern.0`).
fn k_case(
    t: GgmlDType,
    m: usize,
    n: usize,
    k: usize,
    acts: KActs,
    pattern: (usize, u64),
) -> (Vec<u8>, QActs) {
    let kind = QKind::from_ggml(t).unwrap();
    let x: Vec<f32> = match acts {
        KActs::Extreme => {
            let x: Vec<f32> = (0..m * k)
                .map(|i| {
                    if (i / pattern.0).is_multiple_of(3) {
                        -1.0
                    } else {
                        1.0
                    }
                })
                .collect();
            return (extreme_k_rows(kind, n, k), q8k(&x, m, k));
        }
        KActs::Random => random(m * k, pattern.1),
        KActs::Small => small_acts(m, k, pattern.1, |_| true),
        KActs::Mixed => small_acts(m, k, pattern.1, |r| (r / 8) % 4 != 1),
    };
    (rows_of(t, n, k), q8k(&x, m, k))
}

/// K-format rows at the extremes: every quant bit set (Q4_K 15, Q5_K 31, Q6_K 63), the
/// largest scales and mins (Q6_K's alternating 127 / −128), scale `d` small and finite.
fn extreme_k_rows(kind: QKind, rows: usize, cols: usize) -> Vec<u8> {
    let nsb = rows * cols / QK_K;
    let d = half::f16::from_f32(1e-4).to_le_bytes();
    let mut out = Vec::with_capacity(nsb * kind.block_bytes());
    for b in 0..nsb {
        let mut blk = vec![0xFFu8; kind.block_bytes()];
        match kind {
            QKind::Q4K | QKind::Q5K => {
                // Scale bytes all 0xFF: every sub-block's scale and min is 63.
                blk[0..2].copy_from_slice(&d);
                blk[2..4].copy_from_slice(&d);
            }
            QKind::Q6K => {
                // Odd super-blocks: every q 0 (q − 32 = −32), so with a scale of −128 the
                // product is 4 096, the largest (the AMX tiles' high byte at 16).
                if b % 2 == 1 {
                    blk[..192].fill(0);
                }
                for s in 0..16 {
                    blk[192 + s] = if (s + b) % 2 == 0 { 127 } else { 0x80 };
                }
                blk[208..210].copy_from_slice(&d);
            }
            _ => unreachable!(),
        }
        out.extend_from_slice(&blk);
    }
    out
}

/// Rows handed over one at a time (`quantize_q8k_rows_with`, the fused SiLU·up) give the
/// bytes, scales, sums and bounds of the stored matrix quantized whole, on the parallel
/// path (40 rows) and the serial one (3).
#[test]
fn q8k_rows_as_they_come_give_the_stored_rows_bytes() {
    for rows in [40, 3] {
        let cols = 2 * QK_K;
        let x = random(rows * cols, 21);
        let (mut whole, mut each) = (QActs::default(), QActs::default());
        whole.quantize_q8k_into(&x, rows, cols);
        each.quantize_q8k_rows_with(rows, cols, |r, row| {
            row.copy_from_slice(&x[r * cols..(r + 1) * cols])
        });
        let nb = rows * cols / QK_K;
        assert_eq!(whole.stride, each.stride);
        assert_eq!(
            whole.qs[..rows * whole.stride],
            each.qs[..rows * each.stride],
            "{rows} rows: bytes and biases"
        );
        assert_eq!(whole.d[..nb], each.d[..nb], "{rows} rows: scales");
        assert_eq!(whole.bsums[..nb * 16], each.bsums[..nb * 16]);
        assert_eq!(whole.abs_sum16[..nb], each.abs_sum16[..nb]);
        assert_eq!(whole.sign_sum32[..nb], each.sign_sum32[..nb]);
        assert_eq!(whole.pairs, each.pairs);
        // And not trivially: other rows give other bytes.
        let mut shifted = QActs::default();
        shifted.quantize_q8k_rows_with(rows, cols, |r, row| {
            row.copy_from_slice(&x[(r + 1) % rows * cols..][..cols])
        });
        assert_ne!(
            whole.qs[..rows * whole.stride],
            shifted.qs[..rows * shifted.stride]
        );
    }
}

#[test]
fn simd_q8k_quantize_gives_the_scalar_bytes() {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_features::avx2() {
        let mut x: Vec<f32> = random(6 * QK_K, 9).iter().map(|v| v * 3.0).collect();
        x[QK_K..2 * QK_K].fill(0.0); // a zero block: scale 0
                                     // A block of exact ties (scale 1): rounding must go to even in both paths.
        for (i, v) in x[2 * QK_K..3 * QK_K].iter_mut().enumerate() {
            *v = (i % 64) as f32 - 31.5;
        }
        x[2 * QK_K] = -127.0;
        let nb = x.len() / QK_K;
        let (mut q1, mut d1, mut s1) = (vec![0i8; x.len()], vec![0f32; nb], vec![0i16; nb * 16]);
        let (mut q2, mut d2, mut s2) = (vec![0i8; x.len()], vec![0f32; nb], vec![0i16; nb * 16]);
        let (mut e1, mut e2) = (vec![0i16; nb * 32], vec![0i16; nb * 32]);
        let (mut a1, mut a2) = (vec![0u16; nb], vec![0u16; nb]);
        let (mut g1, mut g2) = (vec![0u16; nb], vec![0u16; nb]);
        let b1 = SumBoundsMut {
            abs16: &mut a1,
            sign32: &mut g1,
        };
        quantize_q8k_scalar(&x, &mut q1, &mut d1, &mut s1, &mut e1, b1);
        let b2 = SumBoundsMut {
            abs16: &mut a2,
            sign32: &mut g2,
        };
        // Safety: AVX2 is available.
        unsafe { x86::avx2::quantize_q8k(&x, &mut q2, &mut d2, &mut s2, &mut e2, b2) };
        assert_eq!(q1, q2);
        assert_eq!(d1, d2);
        assert_eq!(s1, s2);
        assert_eq!(e1, e2);
        assert_eq!(a1, a2);
        assert_eq!(g1, g2);
        if crate::cpu_features::avx512() {
            let (mut q3, mut d3, mut s3) =
                (vec![0i8; x.len()], vec![0f32; nb], vec![0i16; nb * 16]);
            let (mut e3, mut a3, mut g3) = (vec![0i16; nb * 32], vec![0u16; nb], vec![0u16; nb]);
            let b3 = SumBoundsMut {
                abs16: &mut a3,
                sign32: &mut g3,
            };
            // Safety: AVX-512 is available.
            unsafe { x86::avx512::quantize_q8k(&x, &mut q3, &mut d3, &mut s3, &mut e3, b3) };
            assert_eq!(q1, q3, "AVX-512 bytes");
            assert_eq!(d1, d3, "AVX-512 scales");
            assert_eq!(s1, s3, "AVX-512 sums of 16");
            assert_eq!(e1, e3, "AVX-512 sums of 8");
            assert_eq!(a1, a3, "AVX-512 Σ|q| bounds");
            assert_eq!(g1, g3, "AVX-512 one-sign bounds");
        }
        for (j, e) in e1.iter().enumerate() {
            assert_eq!(
                *e,
                q1[8 * j..8 * j + 8].iter().map(|&q| q as i16).sum::<i16>()
            );
        }
        assert_eq!(&q1[2 * QK_K + 1..2 * QK_K + 5], &[-30, -30, -28, -28]);
    }
}

/// A Q8_K quantizer's signature: values, bytes, scales, sums of 16 and of 8, bounds.
type Quantizer = dyn Fn(&[f32], &mut [i8], &mut [f32], &mut [i16], &mut [i16], SumBoundsMut);

/// A NaN in a block's last vector is skipped by the AVX2 Q8_K quantizer's running maximum as
/// anywhere else and as by the scalar and AVX-512 ones: it became the block's maximum there
/// (scale NaN: the whole row's products NaN) and was skipped elsewhere, so a result depended
/// on where the NaN sat and on the CPU.
#[test]
fn a_nan_anywhere_in_a_block_scales_it_alike() {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_features::avx2() {
        for at in [0, 100, QK_K - 1] {
            let mut x = vec![1.0f32; QK_K];
            x[at] = f32::NAN;
            let scale = |f: &Quantizer| {
                let (mut q, mut d, mut s) = (vec![0i8; QK_K], vec![0f32; 1], vec![0i16; 16]);
                let (mut e, mut a, mut g) = (vec![0i16; 32], vec![0u16; 1], vec![0u16; 1]);
                f(
                    &x,
                    &mut q,
                    &mut d,
                    &mut s,
                    &mut e,
                    SumBoundsMut {
                        abs16: &mut a,
                        sign32: &mut g,
                    },
                );
                d[0]
            };
            let scalar = scale(&|x, q, d, s, e, b| quantize_q8k_scalar(x, q, d, s, e, b));
            // Safety: AVX2 is available.
            let avx2 =
                scale(&|x, q, d, s, e, b| unsafe { x86::avx2::quantize_q8k(x, q, d, s, e, b) });
            assert_eq!(scalar, 1.0 / 127.0, "NaN at {at}");
            assert_eq!(avx2, scalar, "AVX2, NaN at {at}");
            if crate::cpu_features::avx512() {
                // Safety: AVX-512 is available.
                let avx512 = scale(&|x, q, d, s, e, b| unsafe {
                    x86::avx512::quantize_q8k(x, q, d, s, e, b)
                });
                assert_eq!(avx512, scalar, "AVX-512, NaN at {at}");
            }
        }
    }
}

/// One `QActs` quantizing matrices of several widths and formats in turn (a layer's 2048 and
/// 8192 columns, Q8 for the 32-value formats): each time every row reads as a fresh buffer's
/// (its buffers grow and are reused, never shrunk, so nothing of a wider matrix may show).
#[test]
fn reused_activations_read_as_fresh_ones() {
    let mut reused = QActs::default();
    for (i, (fmt, rows, cols)) in [
        (ActFormat::Q8K, 40, 2048),
        (ActFormat::Q8K, 3, 512),
        (ActFormat::Q8, 20, 1024),
        (ActFormat::Q8K, 17, 1024),
        (ActFormat::Q8, 2, 64),
    ]
    .into_iter()
    .enumerate()
    {
        let x = random(rows * cols, 30 + i as u64);
        let fresh = match fmt {
            ActFormat::Q8 => {
                reused.quantize_into(&x, rows, cols);
                QActs::quantize(&x, rows, cols)
            }
            ActFormat::Q8K => {
                reused.quantize_q8k_into(&x, rows, cols);
                q8k(&x, rows, cols)
            }
        };
        assert_eq!((reused.rows(), reused.format()), (rows, fmt));
        for r in 0..rows {
            let (a, b) = (reused.row(r), fresh.row(r));
            assert!(
                a.qs == b.qs
                    && a.d == b.d
                    && a.s == b.s
                    && a.bsums == b.bsums
                    && a.pairs == b.pairs
                    && a.q6_bias == b.q6_bias
                    && a.q6_bias8 == b.q6_bias8
                    && a.abs_sum16 == b.abs_sum16
                    && a.sign_sum32 == b.sign_sum32,
                "{fmt:?} {rows}×{cols}, row {r}"
            );
        }
    }
}

#[test]
fn q8k_activations_hold_block_sums() {
    // 40 rows: quantized on the threads too, each writing its rows' sums and biases.
    let (m, k) = (40, 512);
    let x = random(m * k, 4);
    let a = q8k(&x, m, k);
    for i in 0..m {
        let r = a.row(i);
        assert_eq!(r.q6_bias.len(), 4 * r.bsums.len());
        for (j, (s, bias)) in r.bsums.iter().zip(r.q6_bias.chunks_exact(4)).enumerate() {
            let want: i32 = r.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            assert_eq!(*s as i32, want);
            let bias = i32::from_le_bytes([bias[0], bias[1], bias[2], bias[3]].map(|b| b as u8));
            assert_eq!(bias, -32 * want);
        }
        assert_eq!(r.q6_bias8.len(), 2 * r.q6_bias.len());
        for (j, bias) in r.q6_bias8.chunks_exact(4).enumerate() {
            let want: i32 = r.qs[8 * j..8 * j + 8].iter().map(|&q| q as i32).sum();
            let bias = i32::from_le_bytes([bias[0], bias[1], bias[2], bias[3]].map(|b| b as u8));
            assert_eq!(bias, -32 * want);
        }
        for (b, xb) in x[i * k..(i + 1) * k].chunks(QK_K).enumerate() {
            let abs16 = |j: usize| -> u16 {
                let qs = &r.qs[b * QK_K + 16 * j..][..16];
                qs.iter().map(|&q| (q as i16).unsigned_abs()).sum()
            };
            assert_eq!(r.abs_sum16[b], (0..16).map(abs16).max().unwrap());
            let sign32 = |j: usize| -> u16 {
                let qs = &r.qs[b * QK_K + 32 * j..][..32];
                let pos: i32 = qs.iter().filter(|&&q| q > 0).map(|&q| q as i32).sum();
                let neg: i32 = qs.iter().filter(|&&q| q < 0).map(|&q| -(q as i32)).sum();
                pos.max(neg) as u16
            };
            assert_eq!(r.sign_sum32[b], (0..8).map(sign32).max().unwrap());
            for (v, q) in xb.iter().zip(&r.qs[b * QK_K..]) {
                assert!((v - r.d[b] * *q as f32).abs() <= r.d[b] * 0.5 + 1e-6);
            }
        }
    }
}

#[test]
fn k_weights_use_the_k_kernels_and_fuse_when_unpadded() {
    let t = GgmlDType::Q4K;
    let (a, _) = weight(t, 32, 256);
    let (b, _) = weight(t, 48, 256);
    assert_eq!(
        matches!(a.layout, Layout::Interleaved { .. }),
        simd_available(),
        "K weights are interleaved wherever SIMD runs"
    );
    let ab = QWeight::concat_rows(&[&a, &b]).unwrap();
    let x = random(5 * 256, 5);
    let (mut ya, mut yb, mut yab) = (vec![0f32; 5 * 32], vec![0f32; 5 * 48], vec![0f32; 5 * 80]);
    matmul(&a, &x, 5, &mut ya);
    matmul(&b, &x, 5, &mut yb);
    matmul(&ab, &x, 5, &mut yab);
    for i in 0..5 {
        assert_eq!(&yab[i * 80..i * 80 + 32], &ya[i * 32..(i + 1) * 32]);
        assert_eq!(&yab[i * 80 + 32..(i + 1) * 80], &yb[i * 48..(i + 1) * 48]);
    }
    if simd_available() {
        let (odd, _) = weight(t, 36, 256);
        assert!(
            QWeight::concat_rows(&[&odd, &a]).is_none(),
            "a padded group cannot stack"
        );
    }
}

/// The AMX tiles give a row the same bits as the AVX-512 VNNI passes (the same integer sums,
/// the same f32 steps), so a prompt row's logits do not depend on how many rows shared the
/// call (prompts run on AMX, single decodes on VNNI). Every tile remainder (1–15 rows past a
/// whole tile), padded groups, an odd group count, tasks longer than one run of groups (65
/// groups over the threads), extreme and random weights.
#[test]
fn amx_tiles_give_the_vnni_passes_bits() {
    let flavours = kgemm::Flavour::available();
    let present = flavours.contains(&kgemm::Flavour::Amx);
    if crate::cpu_features::skip_without_amx("AMX-INT8 tiles", present) {
        return;
    }
    for t in K_TYPES {
        let kind = QKind::from_ggml(t).unwrap();
        for (m, n) in [
            (16, 32),
            (20, 16),
            (33, 48),
            (47, 37),
            (1, 16),
            (130, 96),
            (20, 1040),
        ] {
            // One super-block (the first is the last) and three; the default pool and one
            // thread (a task then runs every group: runs of AMX_GROUPS after the first).
            for (k, threads) in [(768, 0), (256, 0), (768, 1)] {
                for acts_kind in KActs::ALL {
                    let (data, acts) = k_case(t, m, n, k, acts_kind, (5, 13));
                    let run = |flavour| {
                        let w = laid_out(kind, n, k, data.clone(), flavour);
                        let mut out = vec![f32::NAN; m * n];
                        in_pool(threads, || {
                            kgemm::matmul_k_with(&w, &acts, &mut out, flavour)
                        });
                        out
                    };
                    let (vnni, amx) = (run(kgemm::Flavour::Avx512Vnni), run(kgemm::Flavour::Amx));
                    for (i, (v, a)) in vnni.iter().zip(&amx).enumerate() {
                        assert_eq!(
                            v.to_bits(),
                            a.to_bits(),
                            "{t:?} m={m} n={n} k={k} {acts_kind:?}: row {} column {}: {v} vs {a}",
                            i / n,
                            i % n
                        );
                    }
                }
            }
        }
    }
}

/// Runs `f` in a pool of `threads` rayon threads (0: the global pool).
fn in_pool(threads: usize, f: impl FnOnce() + Send) {
    if threads == 0 {
        return f();
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(f)
}

/// A row's outputs have the same bits alone as in any batch, in every flavour: a decode row
/// and a prompt or batched row run different pass widths (a lone Q6_K row takes the one-sub-
/// block kernel, 2–4 rows the four-sum one), and the engine's results must not depend on
/// which other requests shared the step.
#[test]
fn k_rows_give_the_same_bits_alone_and_batched() {
    for t in K_TYPES {
        let kind = QKind::from_ggml(t).unwrap();
        // Batches split into passes of every width: 3, 8 + 3, 8 + 5 (and AVX2's fours).
        // 20, 70 and 100 rows: the unpacked prompt tiles too (AVX2's from 16 rows, AVX-512
        // VNNI's Q6_K from 24, Q5_K with the mask test from 48).
        for (m, extreme) in [
            (3, false),
            (11, true),
            (13, false),
            (13, true),
            (20, false),
            (70, true),
            (40, false),
            (100, true),
        ] {
            let (n, k) = (37, 512);
            // As `k_case`, with the activations kept to quantize each row alone too.
            let (data, x) = if extreme {
                let x = (0..m * k).map(|i| if (i / 3) % 3 == 0 { -1.0 } else { 1.0 });
                (extreme_k_rows(kind, n, k), x.collect::<Vec<f32>>())
            } else {
                (rows_of(t, n, k), random(m * k, 17))
            };
            let acts = q8k(&x, m, k);
            for flavour in kgemm::Flavour::available() {
                let w = laid_out(kind, n, k, data.clone(), flavour);
                let mut batched = vec![f32::NAN; m * n];
                kgemm::matmul_k_with(&w, &acts, &mut batched, flavour);
                for i in 0..m {
                    let mut alone = vec![f32::NAN; n];
                    kgemm::matmul_k_with(&w, &q8k(&x[i * k..][..k], 1, k), &mut alone, flavour);
                    for (c, (a, b)) in alone.iter().zip(&batched[i * n..][..n]).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{t:?} {flavour:?} extreme={extreme}: row {i} column {c}: alone {a}, \
                             batched {b}"
                        );
                    }
                }
            }
        }
    }
}

/// The 32-value formats' prompts on AMX tiles give a row the AVX-512 passes' bits (the same
/// exact block sums, the same f32 steps in the same order), so a prompt row's logits do not
/// depend on how many rows shared the call. A whole tile, tiles with 1–15 rows left over,
/// groups in runs and past them (RUN_GROUPS 4: 5 and 9 groups; in one thread, whose task runs
/// every group), one block, an odd count and many.
#[test]
fn amx_block_tiles_give_the_avx512_passes_bits() {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu_features::skip_without_amx("block AMX tiles", crate::cpu_features::amx()) {
            return;
        }
        for t in BLOCK_TYPES {
            for (m, n, k, threads) in [
                (16, 16, 32, 0),
                (17, 80, 576, 0),
                (33, 144, 256, 0),
                (47, 32, 2048, 0),
                (130, 96, 576, 0),
                (20, 144, 96, 1),
                (33, 80, 576, 1),
            ] {
                let (w, _) = weight(t, n, k);
                assert!(
                    gemm32_amx::takes(&w, m),
                    "{t:?}: 16-row groups on an AMX CPU"
                );
                let x: Vec<f32> = random(m * k, 17).iter().map(|v| v * 4.0).collect();
                let acts = QActs::quantize(&x, m, k);
                let (mut tiles, mut passes) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                in_pool(threads, || matmul_quantized(&w, &acts, &mut tiles));
                matmul_with(&w, &acts, &mut passes, kernel(), pair_kernel());
                for (i, (a, v)) in tiles.iter().zip(&passes).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        v.to_bits(),
                        "{t:?} m={m} n={n} k={k}: row {} column {}: {a} vs {v}",
                        i / n,
                        i % n
                    );
                }
            }
        }
    }
}

/// Every SIMD flavour gives a K-format row the same bits: they all add up each super-block's
/// exact integer sums and take the same f32 steps from them, so a row's logits do not depend
/// on the CPU's features or on which kernel a batch ran on. Activations of one sign near
/// their largest make the sums largest (a Q4_K super-block's `Σ sc·Σq·a` past 2²⁴, where f32
/// no longer holds every integer: a kernel that added its scaled sums in f32 would round).
#[test]
fn k_flavours_give_the_same_bits() {
    let flavours: Vec<_> = kgemm::Flavour::available()
        .into_iter()
        .filter(|f| *f != kgemm::Flavour::Scalar)
        .collect();
    if crate::cpu_features::skip_without_avx512(
        &format!("k_flavours_give_the_same_bits ({flavours:?})"),
        flavours.len() >= 2,
    ) {
        return;
    }
    for t in K_TYPES {
        let kind = QKind::from_ggml(t).unwrap();
        // Three super-blocks: the paired passes take two a call, then add the third.
        let (n, k) = (37, 768);
        for extreme in [false, true] {
            let data = if extreme {
                extreme_k_rows(kind, n, k)
            } else {
                rows_of(t, n, k)
            };
            // Every pass width (1–8 rows), 8 + 5, and 25–29, 40 and 100 rows (the unpacked
            // prompt tiles: Q6_K's from 24 rows, paired in passes of 6 rows and the rest,
            // Q5_K's with the mask test from 48); activations near their largest (`small`
            // 0), small ones (768: with them the unpacked passes sum 16 values at a time),
            // and small ones in the first two super-blocks only (512: 16 values there, 8 in
            // the third, passes of both kinds adding to the same totals).
            let widths = [1, 2, 3, 4, 6, 7, 13, 25, 26, 27, 29, 40, 100];
            let runs = widths
                .into_iter()
                .flat_map(|m| [(m, 0), (m, 768), (m, 512)]);
            for (m, small) in runs {
                let large: Vec<f32> = random(m * k, 23)
                    .iter()
                    .map(|v| 0.8 + 0.1 * v.abs())
                    .collect();
                let mut x = small_acts(m, k, 23, |_| true);
                for (i, v) in x.iter_mut().enumerate() {
                    if i % k >= small {
                        *v = large[i];
                    }
                }
                let acts = q8k(&x, m, k);
                let run = |flavour| {
                    let w = laid_out(kind, n, k, data.clone(), flavour);
                    let mut out = vec![f32::NAN; m * n];
                    kgemm::matmul_k_with(&w, &acts, &mut out, flavour);
                    out
                };
                let first = run(flavours[0]);
                for &flavour in &flavours[1..] {
                    for (i, (a, b)) in first.iter().zip(&run(flavour)).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{t:?} extreme={extreme} small to {small} m={m}: {:?} {a} vs \
                             {flavour:?} {b} at row {} column {}",
                            flavours[0],
                            i / n,
                            i % n
                        );
                    }
                }
            }
        }
    }
}

/// The unpacked AVX-512 VNNI passes sum 16 values in an i16 only where the rows'
/// activations keep those sums below 2¹⁵ ([`ActRow::abs_sum16`]): at the bound and past it,
/// with weights at their extremes (Q6_K's `q − 32` at −32 and 31, Q5_K's q at 31), they
/// agree with the scalar reference. Each 16 activations are eight 127s, one `B − 1016` and
/// seven 0s (integers, so the block scale is 1 and they quantize to themselves): `Σ|q| = B`;
/// and all of them negated (Q6_K's `(−32)·(−a)` reaches +2¹⁵ one past its bound).
#[test]
fn k_sums_of_sixteen_stop_at_the_i16_bound() {
    #[cfg(target_arch = "x86_64")]
    {
        use x86::k512;
        if crate::cpu_features::skip_without_avx512(
            "k_sums_of_sixteen_stop_at_the_i16_bound",
            crate::cpu_features::avx512_vnni(),
        ) {
            return;
        }
        // 60 rows: Q6_K's paired passes (from 24) and Q5_K's unpacked ones (from 48 where
        // the fifth bits are tested with a mask); 4 groups.
        let (m, n, k) = (60, 64, 768);
        for (t, max) in [
            (GgmlDType::Q6K, k512::Q6_ABS_SUM16_MAX),
            (GgmlDType::Q5K, k512::Q45_ABS_SUM16_MAX),
        ] {
            if t == GgmlDType::Q5K && crate::cpu_features::q5_fifth_bits_by_shifts() {
                eprintln!("Q5_K skipped: its prompt passes stay packed on this CPU");
                continue;
            }
            let kind = QKind::from_ggml(t).unwrap();
            let data = extreme_k_rows(kind, n, k);
            let bounds = [max - 1, max, max + 1, max + 2];
            for (bound, sign) in bounds.into_iter().flat_map(|b| [(b, 1.0), (b, -1.0)]) {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| match i % 16 {
                        0..8 => 127.0 * sign,
                        8 => f32::from(bound - 1016) * sign,
                        _ => 0.0,
                    })
                    .collect();
                let acts = q8k(&x, m, k);
                assert!((0..m).all(|i| acts.row(i).abs_sum16.iter().all(|&s| s == bound)));
                let err = vnni_error(kind, n, k, &data, &acts);
                assert!(
                    err < 1e-5,
                    "{t:?} Σ|q| = {bound} × {sign}: VNNI vs scalar {err}"
                );
            }
        }
    }
}

/// The largest relative difference of the AVX-512 VNNI flavour's `acts · Wᵀ` from the
/// scalar reference's, for `n × k` weights `data` of `kind`.
#[cfg(target_arch = "x86_64")]
fn vnni_error(kind: QKind, n: usize, k: usize, data: &[u8], acts: &QActs) -> f32 {
    let run = |flavour| {
        let w = laid_out(kind, n, k, data.to_vec(), flavour);
        let mut out = vec![f32::NAN; acts.rows() * n];
        kgemm::matmul_k_with(&w, acts, &mut out, flavour);
        out
    };
    max_rel(
        &run(kgemm::Flavour::Avx512Vnni),
        &run(kgemm::Flavour::Scalar),
    )
}

/// Q5_K's paired passes sum a whole 32-value sub-block in an i16 only where the rows'
/// activations keep the sum below 2¹⁵ ([`ActRow::sign_sum32`]): with every q at 31, at the
/// bound and past it, of either sign, they agree with the scalar reference. Each 32
/// activations are eight 127s, eight 0s, one `B − 1016` and fifteen 0s (integers, so they
/// quantize to themselves): one sign adds up to `B` over 32 values while no 16 exceed
/// 1016, so past the bound the passes still sum 16 values (not 8). (A wrong scale read by
/// those passes shows in `k_kernels_agree_with_the_scalar_reference`, whose weights' scales
/// differ; here they are all 63.) Where Q5_K's passes stay packed (AMD: the fifth bits by
/// shifts) there is nothing to check. Then one block whose last 6 rows are past the bound and
/// the rest at it: each pass sums what its own rows allow.
#[test]
fn k_sums_of_thirty_two_stop_at_the_i16_bound() {
    #[cfg(target_arch = "x86_64")]
    {
        use x86::k512;
        if crate::cpu_features::skip_without_avx512(
            "k_sums_of_thirty_two_stop_at_the_i16_bound",
            crate::cpu_features::avx512_vnni(),
        ) {
            return;
        }
        // 60 rows: Q5_K's unpacked passes (from 48 where the fifth bits are tested with a
        // mask); 4 groups, so two pairs.
        if crate::cpu_features::q5_fifth_bits_by_shifts() {
            eprintln!("skipped: Q5_K's prompt passes stay packed on this CPU");
            return;
        }
        let (m, n, k) = (60, 64, 768);
        let kind = QKind::Q5K;
        let data = extreme_k_rows(kind, n, k);
        let max = k512::Q5_SIGN_SUM32_MAX;
        // Row i's one-sign sum over each 32 values is `bound(i)`, of sign `sign`.
        let acts_at = |bound: &dyn Fn(usize) -> u16, sign: f32| {
            let x: Vec<f32> = (0..m * k)
                .map(|i| match i % 32 {
                    0..8 => 127.0 * sign,
                    16 => f32::from(bound(i / k) - 1016) * sign,
                    _ => 0.0,
                })
                .collect();
            q8k(&x, m, k)
        };
        for bound in [max - 1, max, max + 1, max + 2] {
            for sign in [1.0, -1.0] {
                let acts = acts_at(&|_| bound, sign);
                assert!((0..m).all(|i| {
                    let r = acts.row(i);
                    r.sign_sum32.iter().all(|&s| s == bound)
                        && r.abs_sum16.iter().all(|&s| s == 1016)
                }));
                let err = vnni_error(kind, n, k, &data, &acts);
                assert!(
                    err < 1e-5,
                    "one-sign Σq = {bound} × {sign} over 32: VNNI vs scalar {err}"
                );
            }
        }
        // One block of rows whose last pass's rows are past the bound and the others' at it:
        // the block sums 16, and each pass then takes what its own rows allow (the last 16,
        // the others 32).
        let last_pass_past = |i: usize| if (30..36).contains(&i) { max + 2 } else { max };
        let acts = acts_at(&last_pass_past, 1.0);
        assert!((0..m).all(|i| {
            let want = last_pass_past(i);
            acts.row(i).sign_sum32.iter().all(|&s| s == want)
        }));
        let err = vnni_error(kind, n, k, &data, &acts);
        assert!(
            err < 1e-5,
            "rows past the bound in one pass: VNNI vs scalar {err}"
        );
    }
}

/// The 32-value formats' AVX-512 VNNI passes (`vpdpbusd`) give every row the bits of the
/// `vpmaddubsw` passes they replace where the CPU has VNNI: the same integer block sums, the
/// same f32 steps. Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; passes of 1–8 rows; random weights and
/// activations, and the largest sums (every value 15, 31 or −128, activations of one sign at
/// 127).
#[test]
fn block_vnni_passes_give_the_maddubs_bits() {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu_features::skip_without_avx512(
            "block_vnni_passes_give_the_maddubs_bits",
            crate::cpu_features::avx512_vnni(),
        ) {
            return;
        }
        let (n, k) = (16, 576);
        for t in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ] {
            let kind = QKind::from_ggml(t).unwrap();
            for extreme in [false, true] {
                let data = if extreme {
                    let mut rows = rows_of(t, n, k);
                    for blk in rows.chunks_mut(kind.block_bytes()) {
                        // Past the f16 scale (and the minimum): every nibble 15, Q5's fifth
                        // bits (the four bytes before the nibbles) set; Q8_0's values −128.
                        if kind == QKind::Q8_0 {
                            blk[2..].fill(0x80);
                            continue;
                        }
                        let fifth = if kind.is_5bit() { 4 } else { 0 };
                        let at = kind.block_bytes() - BLOCK / 2 - fifth;
                        blk[at..].fill(0xFF);
                    }
                    rows
                } else {
                    rows_of(t, n, k)
                };
                let w = QWeight::new(kind, n, k, data).unwrap();
                let Layout::Interleaved { group: 16, data } = &w.layout else {
                    panic!("{t:?}: 16-row groups on an AVX-512 CPU")
                };
                for r in 1..=8 {
                    let x: Vec<f32> = random(r * k, 29)
                        .iter()
                        .map(|v| if extreme { 1.0 } else { 4.0 * v })
                        .collect();
                    let acts = QActs::quantize(&x, r, k);
                    let rows: Vec<ActRow> = (0..r).map(|i| acts.row(i)).collect();
                    let (mut vnni, mut maddubs) = (vec![f32::NAN; r * n], vec![f32::NAN; r * n]);
                    let nb = k / BLOCK;
                    let (wp, v, m) = (data.as_ptr(), vnni.as_mut_ptr(), maddubs.as_mut_ptr());
                    use x86::avx512::*;
                    macro_rules! both {
                        ($($r:literal)*) => {
                            match (r, kind) {
                                $(($r, QKind::Q8_0) => unsafe {
                                    gemm_q8_0_16x8_q8_vnni::<$r>(wp, nb, &rows, v, n);
                                    gemm_q8_0_16x8_q8::<$r>(wp, nb, &rows, m, n);
                                },
                                ($r, QKind::Q5_0 | QKind::Q5_1) => unsafe {
                                    gemm_q5_16x8_q8_vnni::<$r>(wp, nb, &rows, v, n);
                                    gemm_q5_16x8_q8::<$r>(wp, nb, &rows, m, n);
                                },
                                ($r, _) => unsafe {
                                    gemm_q4_16x8_q8_vnni::<$r>(wp, nb, &rows, v, n);
                                    gemm_q4_16x8_q8::<$r>(wp, nb, &rows, m, n);
                                },)*
                                _ => unreachable!(),
                            }
                        };
                    }
                    both!(1 2 3 4 5 6 7 8);
                    for (i, (a, b)) in vnni.iter().zip(&maddubs).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{t:?} extreme={extreme} {r} rows: row {} column {}: VNNI {a}, \
                             maddubs {b}",
                            i / n,
                            i % n
                        );
                    }
                }
            }
        }
    }
}
