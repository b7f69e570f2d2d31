use super::*;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

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
    for (t, m, n) in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0]
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
        assert_eq!((a.qs, a.d, a.s), (q1, d1, s1));
    }
}

#[test]
fn simd_kernel_agrees_with_the_scalar_reference() {
    if !simd_available() {
        eprintln!("no SIMD kernel on this CPU; nothing to compare");
        return;
    }
    for t in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
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
