//! camelid's own CPU matmul for the GGML block formats LLaMA GGUF files mostly use (Q4_0, Q4_1,
//! Q8_0): `y = x · Wᵀ` with `W` kept in its GGUF blocks.
//!
//! Why not candle's `QMatMul`: in candle 0.11 it is a per-row GEMV (a batch of `m` rows reads
//! every weight `m` times) and `Q4_1 · Q8_1` has no SIMD path at all. Here the activations are
//! quantized once per call to 8-bit blocks (GGML's Q8_1 idea: scale `d`, `s = d·Σq`), and each
//! weight row, once decoded into registers, is multiplied with up to four activation rows while it
//! sits in L1. Output rows are split between rayon's threads.
//!
//! [`dot_rows_scalar`] is the plain reference; the AVX2 kernels must agree with it to float
//! rounding (tests below), and both are checked against candle's dequantized f32 matmul.

use half::f16;
use rayon::prelude::*;

/// Values per quantization block (all formats here).
pub const BLOCK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QKind {
    /// `{d: f16, qs: [u8; 16]}`: value = d·(q − 8), q a nibble.
    Q4_0,
    /// `{d: f16, m: f16, qs: [u8; 16]}`: value = d·q + m.
    Q4_1,
    /// `{d: f16, qs: [i8; 32]}`: value = d·q.
    Q8_0,
}

impl QKind {
    pub fn block_bytes(self) -> usize {
        match self {
            QKind::Q4_0 => 18,
            QKind::Q4_1 => 20,
            QKind::Q8_0 => 34,
        }
    }

    pub fn from_ggml(t: candle_core::quantized::GgmlDType) -> Option<Self> {
        use candle_core::quantized::GgmlDType as G;
        match t {
            G::Q4_0 => Some(QKind::Q4_0),
            G::Q4_1 => Some(QKind::Q4_1),
            G::Q8_0 => Some(QKind::Q8_0),
            _ => None,
        }
    }
}

/// A `(rows, cols)` weight matrix as GGUF stores it: each row is `cols / 32` blocks.
#[derive(Debug, Clone)]
pub struct QWeight {
    pub kind: QKind,
    pub rows: usize,
    pub cols: usize,
    data: Vec<u8>,
}

impl QWeight {
    pub fn new(kind: QKind, rows: usize, cols: usize, data: Vec<u8>) -> Option<Self> {
        let ok =
            cols.is_multiple_of(BLOCK) && data.len() == rows * (cols / BLOCK) * kind.block_bytes();
        ok.then_some(Self {
            kind,
            rows,
            cols,
            data,
        })
    }

    fn row_bytes(&self) -> usize {
        self.cols / BLOCK * self.kind.block_bytes()
    }

    fn row(&self, r: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// Stacks weights with the same format and width (fused QKV, gate+up): one matmul, one
    /// activation quantization, instead of several.
    pub fn concat_rows(parts: &[&QWeight]) -> Option<QWeight> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.kind != first.kind || p.cols != first.cols)
        {
            return None;
        }
        let data = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
        QWeight::new(
            first.kind,
            parts.iter().map(|p| p.rows).sum(),
            first.cols,
            data,
        )
    }
}

/// Activations quantized per 32-value block: `x ≈ d·q`, `s = d·Σq`.
pub struct QActs {
    cols: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl QActs {
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(x.len(), rows * cols);
        assert_eq!(cols % BLOCK, 0);
        let nb = rows * cols / BLOCK;
        let mut qs = vec![0i8; rows * cols];
        let mut d = vec![0f32; nb];
        let mut s = vec![0f32; nb];
        for (b, (xb, qb)) in x
            .chunks_exact(BLOCK)
            .zip(qs.chunks_exact_mut(BLOCK))
            .enumerate()
        {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let db = amax / 127.0;
            let id = if db > 0.0 { 1.0 / db } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in qb.iter_mut().zip(xb) {
                // Ties to even: one instruction, no libm call (ties are rare, either is fine).
                *q = (v * id).round_ties_even() as i8;
                sum += *q as i32;
            }
            d[b] = db;
            s[b] = db * sum as f32;
        }
        Self { cols, qs, d, s }
    }

    fn row(&self, i: usize) -> ActRow<'_> {
        let nb = self.cols / BLOCK;
        ActRow {
            qs: &self.qs[i * self.cols..(i + 1) * self.cols],
            d: &self.d[i * nb..(i + 1) * nb],
            s: &self.s[i * nb..(i + 1) * nb],
        }
    }
}

#[derive(Clone, Copy)]
struct ActRow<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Reference dot products of one weight row with `acts.len()` activation rows.
fn dot_rows_scalar(kind: QKind, wrow: &[u8], acts: &[ActRow], out: &mut [f32]) {
    let bb = kind.block_bytes();
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        let mut sum = 0f32;
        for (b, blk) in wrow.chunks_exact(bb).enumerate() {
            let aq = &a.qs[b * BLOCK..(b + 1) * BLOCK];
            let nibble_dot = |qs: &[u8]| -> i32 {
                (0..16)
                    .map(|j| {
                        (qs[j] & 0xF) as i32 * aq[j] as i32
                            + (qs[j] >> 4) as i32 * aq[j + 16] as i32
                    })
                    .sum()
            };
            sum += match kind {
                QKind::Q4_0 => {
                    f16_at(blk, 0) * (a.d[b] * nibble_dot(&blk[2..18]) as f32 - 8.0 * a.s[b])
                }
                QKind::Q4_1 => {
                    f16_at(blk, 0) * a.d[b] * nibble_dot(&blk[4..20]) as f32
                        + f16_at(blk, 2) * a.s[b]
                }
                QKind::Q8_0 => {
                    let isum: i32 = (0..BLOCK)
                        .map(|j| blk[2 + j] as i8 as i32 * aq[j] as i32)
                        .sum();
                    f16_at(blk, 0) * a.d[b] * isum as f32
                }
            };
        }
        *o = sum;
    }
}

/// Whether [`matmul`] runs a SIMD kernel on this CPU.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

type DotRows = fn(QKind, &[u8], &[ActRow], &mut [f32]);
type DotPair = fn(QKind, &[u8], &[u8], &ActRow) -> (f32, f32);

fn pair_kernel() -> Option<DotPair> {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2::available() {
            return Some(avx2::dot_pair);
        }
    }
    None
}

fn kernel() -> DotRows {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2::available() {
            return avx2::dot_rows;
        }
    }
    dot_rows_scalar
}

/// Raw output pointer shared by threads that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Through a method, so closures capture the Send wrapper and not the raw field.
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        // Safety: callers stay inside the buffer the pointer came from.
        unsafe { self.0.add(i) }
    }
}

/// Activation rows handled per pass over a weight row range (keeps them in L2).
const ROW_TILE: usize = 64;
/// Below this many block products a call runs on the calling thread (fork/join costs more).
const PARALLEL_MIN_BLOCKS: usize = 8192;

/// `out (m, w.rows) = x (m, w.cols) · Wᵀ`.
pub fn matmul(w: &QWeight, x: &[f32], m: usize, out: &mut [f32]) {
    matmul_with(w, x, m, out, kernel(), pair_kernel())
}

fn matmul_with(
    w: &QWeight,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    dot: DotRows,
    pair: Option<DotPair>,
) {
    let n = w.rows;
    assert_eq!(out.len(), m * n);
    let acts = QActs::quantize(x, m, w.cols);
    let rows: Vec<ActRow> = (0..m).map(|i| acts.row(i)).collect();
    let ptr = OutPtr(out.as_mut_ptr());
    let work = |r0: usize, r1: usize| {
        let mut tmp = [0f32; 4];
        if let (1, Some(pair)) = (m, pair) {
            // One activation row (single-stream decode): two weight rows at a time keep two
            // independent load streams and accumulator chains in flight.
            let mut r = r0;
            while r + 2 <= r1 {
                let (a, b) = pair(w.kind, w.row(r), w.row(r + 1), &rows[0]);
                // Safety: r + 1 < n and this task owns columns r0..r1.
                unsafe {
                    *ptr.at(r) = a;
                    *ptr.at(r + 1) = b;
                }
                r += 2;
            }
            if r < r1 {
                dot(w.kind, w.row(r), &rows[..1], &mut tmp[..1]);
                unsafe { *ptr.at(r) = tmp[0] };
            }
            return;
        }
        for tile in rows.chunks(ROW_TILE).enumerate() {
            let (t, tile_rows) = tile;
            for r in r0..r1 {
                let wrow = w.row(r);
                for (g, group) in tile_rows.chunks(4).enumerate() {
                    dot(w.kind, wrow, group, &mut tmp[..group.len()]);
                    for (j, v) in tmp[..group.len()].iter().enumerate() {
                        let i = t * ROW_TILE + g * 4 + j;
                        // Safety: i < m, r < n, and each task owns columns r0..r1.
                        unsafe { *ptr.at(i * n + r) = *v };
                    }
                }
            }
        }
    };
    let blocks = m * n * (w.cols / BLOCK);
    let threads = rayon::current_num_threads();
    if blocks < PARALLEL_MIN_BLOCKS || threads == 1 {
        work(0, n);
        return;
    }
    // A few tasks per thread so an uneven core (the machine is shared) does not stall the rest.
    let chunk = n.div_ceil(threads * 4).max(16);
    (0..n.div_ceil(chunk))
        .into_par_iter()
        .for_each(|c| work(c * chunk, ((c + 1) * chunk).min(n)));
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{ActRow, QKind, BLOCK};
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    pub fn available() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }

    pub fn dot_rows(kind: QKind, wrow: &[u8], acts: &[ActRow], out: &mut [f32]) {
        let nb = wrow.len() / kind.block_bytes();
        for a in acts {
            assert!(a.qs.len() >= nb * BLOCK && a.d.len() >= nb && a.s.len() >= nb);
        }
        // Safety: `available()` was true when this kernel was chosen; lengths checked above.
        unsafe {
            match acts.len() {
                4 => dot_n::<4>(kind, wrow, nb, acts, out),
                3 => dot_n::<3>(kind, wrow, nb, acts, out),
                2 => dot_n::<2>(kind, wrow, nb, acts, out),
                1 => dot_n::<1>(kind, wrow, nb, acts, out),
                _ => unreachable!("groups of at most 4 rows"),
            }
        }
    }

    pub fn dot_pair(kind: QKind, w0: &[u8], w1: &[u8], a: &ActRow) -> (f32, f32) {
        let nb = w0.len() / kind.block_bytes();
        assert!(
            w1.len() == w0.len() && a.qs.len() >= nb * BLOCK && a.d.len() >= nb && a.s.len() >= nb
        );
        // Safety: `available()` was true when this kernel was chosen; lengths checked above.
        unsafe { dot_pair_avx2(kind, [w0.as_ptr(), w1.as_ptr()], nb, a) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_pair_avx2(kind: QKind, w: [*const u8; 2], nb: usize, a: &ActRow) -> (f32, f32) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut offs = [0f32; 2];
        let bb = kind.block_bytes();
        for b in 0..nb {
            let av = _mm256_loadu_si256(a.qs.as_ptr().add(b * BLOCK) as *const __m256i);
            let (da, sa) = (*a.d.get_unchecked(b), *a.s.get_unchecked(b));
            for j in 0..2 {
                let blk = w[j].add(b * bb);
                let (dw, mw) = f16x2(blk);
                let p = match kind {
                    QKind::Q8_0 => {
                        let q = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                        _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(av, q))
                    }
                    QKind::Q4_1 => _mm256_maddubs_epi16(nibbles(blk.add(4)), av),
                    QKind::Q4_0 => _mm256_maddubs_epi16(nibbles(blk.add(2)), av),
                };
                let p = _mm256_madd_epi16(p, ones);
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * da), acc[j]);
                offs[j] += match kind {
                    QKind::Q4_1 => mw * sa,
                    QKind::Q4_0 => -8.0 * dw * sa,
                    QKind::Q8_0 => 0.0,
                };
            }
        }
        (hsum(acc[0]) + offs[0], hsum(acc[1]) + offs[1])
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// The two f16 values at `p` as f32 (lanes 0 and 1).
    #[inline(always)]
    unsafe fn f16x2(p: *const u8) -> (f32, f32) {
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1)))
    }

    /// 32 nibbles of a 4-bit block as bytes 0..15 in order: low nibbles, then high nibbles.
    #[inline(always)]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        let x = _mm_loadu_si128(p as *const __m128i);
        _mm256_and_si256(
            _mm256_set_m128i(_mm_srli_epi16(x, 4), x),
            _mm256_set1_epi8(0x0F),
        )
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_n<const R: usize>(
        kind: QKind,
        wrow: &[u8],
        nb: usize,
        acts: &[ActRow],
        out: &mut [f32],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut offs = [0f32; R];
        let w = wrow.as_ptr();
        let bb = kind.block_bytes();
        for b in 0..nb {
            let blk = w.add(b * bb);
            match kind {
                QKind::Q4_1 | QKind::Q4_0 => {
                    let (dw, m) = f16x2(blk);
                    // Q4_1 adds m per value; Q4_0 stores q + 8.
                    let (q, mw) = if kind == QKind::Q4_1 {
                        (nibbles(blk.add(4)), m)
                    } else {
                        (nibbles(blk.add(2)), -8.0 * dw)
                    };
                    for i in 0..R {
                        let a = _mm256_loadu_si256(
                            acts[i].qs.as_ptr().add(b * BLOCK) as *const __m256i
                        );
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), ones);
                        let scale = _mm256_set1_ps(dw * *acts[i].d.get_unchecked(b));
                        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[i]);
                        offs[i] += mw * *acts[i].s.get_unchecked(b);
                    }
                }
                QKind::Q8_0 => {
                    let (dw, _) = f16x2(blk);
                    let q = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                    // maddubs wants unsigned × signed: |q| × (a with q's sign).
                    let q_abs = _mm256_sign_epi8(q, q);
                    for i in 0..R {
                        let a = _mm256_loadu_si256(
                            acts[i].qs.as_ptr().add(b * BLOCK) as *const __m256i
                        );
                        let a_signed = _mm256_sign_epi8(a, q);
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q_abs, a_signed), ones);
                        let scale = _mm256_set1_ps(dw * *acts[i].d.get_unchecked(b));
                        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[i]);
                    }
                }
            }
        }
        for i in 0..R {
            out[i] = hsum(acc[i]) + offs[i];
        }
    }
}

#[cfg(test)]
mod tests {
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
        // m = 7 exercises groups of 4 and a remainder of 3, m = 1 the paired-rows decode path;
        // n = 71 exercises uneven thread chunks and an odd row left after the pairs.
        for (t, m) in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0]
            .into_iter()
            .flat_map(|t| [(t, 7), (t, 1)])
        {
            let (n, k) = (71, 256);
            let (w, deq) = weight(t, n, k);
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
    fn simd_kernel_agrees_with_the_scalar_reference() {
        if !simd_available() {
            eprintln!("no SIMD kernel on this CPU; nothing to compare");
            return;
        }
        for t in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            // Enough rows and blocks to take the parallel path and several row tiles; and one
            // row (the paired decode kernel) over an odd number of weight rows.
            for (m, n) in [(133, 96), (1, 1537)] {
                let k = 576;
                let (w, _) = weight(t, n, k);
                let x = random(m * k, 11);
                let (mut fast, mut slow) = (vec![0f32; m * n], vec![0f32; m * n]);
                matmul(&w, &x, m, &mut fast);
                matmul_with(&w, &x, m, &mut slow, dot_rows_scalar, None);
                let err = max_rel(&fast, &slow);
                assert!(err < 1e-5, "{t:?} m={m}: SIMD vs scalar {err}");
            }
        }
    }

    #[test]
    fn concatenated_rows_give_the_stacked_outputs() {
        let (a, _) = weight(GgmlDType::Q4_1, 8, 64);
        let (b, _) = weight(GgmlDType::Q4_1, 5, 64);
        let ab = QWeight::concat_rows(&[&a, &b]).unwrap();
        let x = random(3 * 64, 5);
        let (mut ya, mut yb, mut yab) = (vec![0f32; 24], vec![0f32; 15], vec![0f32; 39]);
        matmul(&a, &x, 3, &mut ya);
        matmul(&b, &x, 3, &mut yb);
        matmul(&ab, &x, 3, &mut yab);
        for i in 0..3 {
            assert_eq!(&yab[i * 13..i * 13 + 8], &ya[i * 8..i * 8 + 8]);
            assert_eq!(&yab[i * 13 + 8..i * 13 + 13], &yb[i * 5..i * 5 + 5]);
        }
        let (c, _) = weight(GgmlDType::Q8_0, 8, 64);
        assert!(QWeight::concat_rows(&[&a, &c]).is_none(), "formats differ");
    }
}
