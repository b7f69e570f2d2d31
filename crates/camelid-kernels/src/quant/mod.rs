//! camelid's own CPU matmul for the GGML block formats LLaMA GGUF files mostly use (Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0, and the K formats Q4_K, Q5_K, Q6_K in [`kgemm`]): `y = x · Wᵀ` with `W` kept in its
//! GGUF blocks (repacked).
//!
//! Why not candle's `QMatMul`: in candle 0.11 it is a per-row GEMV (a batch of `m` rows reads
//! every weight `m` times) and `Q4_1 · Q8_1` has no SIMD path at all. Here the activations are
//! quantized once per call to 8-bit blocks (GGML's Q8_1 idea: scale `d`, `s = d·Σq`), and each
//! weight row, once decoded into registers, is multiplied with up to four activation rows while it
//! sits in L1. Output rows are split between rayon's threads.
//!
//! [`dot_rows_scalar`] is the plain reference; the AVX2 kernels must agree with it to float
//! rounding (tests below), and both are checked against candle's dequantized f32 matmul.

mod gemm32_amx;
mod kgemm;
mod krepack;
mod reference;
mod weight;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::OutPtr;
use rayon::prelude::*;
pub(crate) use reference::QK_K;
use reference::{dot_rows_scalar, quantize_blocks_scalar, quantize_q8k_scalar};
use weight::Layout;
pub use weight::QWeight;

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
    /// `{d: f16, qh: u32, qs: [u8; 16]}`: value = d·(q − 16), q a nibble plus bit `j` of qh.
    Q5_0,
    /// `{d: f16, m: f16, qh: u32, qs: [u8; 16]}`: value = d·q + m, q 5 bits as in Q5_0.
    Q5_1,
    /// 256-value super-block `{d, dmin: f16, scales: [u8; 12], qs: [u8; 128]}`: eight
    /// sub-blocks of 32 with 6-bit scale `sc` and min `m`; value = d·sc·q − dmin·m.
    Q4K,
    /// Q4_K plus `qh: [u8; 32]` (one fifth bit per value) before `qs`: q is 0..31.
    Q5K,
    /// 256-value super-block `{ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16}`:
    /// sixteen sub-blocks of 16; value = d·sc·(q − 32), q 6 bits.
    Q6K,
}

impl QKind {
    pub fn block_bytes(self) -> usize {
        match self {
            QKind::Q4_0 => 18,
            QKind::Q4_1 => 20,
            QKind::Q8_0 => 34,
            QKind::Q5_0 => 22,
            QKind::Q5_1 => 24,
            QKind::Q4K => 144,
            QKind::Q5K => 176,
            QKind::Q6K => 210,
        }
    }

    /// Values per block: 32, or a K format's 256-value super-block.
    pub fn block_values(self) -> usize {
        if self.is_k() {
            QK_K
        } else {
            BLOCK
        }
    }

    /// Whether this is Q5_0 or Q5_1 (a fifth bit per value beside the nibbles).
    pub fn is_5bit(self) -> bool {
        matches!(self, QKind::Q5_0 | QKind::Q5_1)
    }

    /// Whether this is a K format (Q8_K activations, 256-value super-blocks).
    pub fn is_k(self) -> bool {
        matches!(self, QKind::Q4K | QKind::Q5K | QKind::Q6K)
    }

    pub fn from_ggml(t: candle_core::quantized::GgmlDType) -> Option<Self> {
        use candle_core::quantized::GgmlDType as G;
        match t {
            G::Q4_0 => Some(QKind::Q4_0),
            G::Q4_1 => Some(QKind::Q4_1),
            G::Q8_0 => Some(QKind::Q8_0),
            G::Q5_0 => Some(QKind::Q5_0),
            G::Q5_1 => Some(QKind::Q5_1),
            G::Q4K => Some(QKind::Q4K),
            G::Q5K => Some(QKind::Q5K),
            G::Q6K => Some(QKind::Q6K),
            _ => None,
        }
    }
}

/// How activations are quantized for a weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActFormat {
    /// Per 32 values: `x ≈ d·q`, `s = d·Σq` (the 32-value formats).
    #[default]
    Q8,
    /// Per 256 values: `x ≈ d·q` and the integer sum of each 16 (GGML's Q8_K; the K formats).
    Q8K,
}

impl QKind {
    /// The activation quantization this format's kernels take.
    pub fn act_format(self) -> ActFormat {
        if self.is_k() {
            ActFormat::Q8K
        } else {
            ActFormat::Q8
        }
    }
}

/// Activations quantized per block (see [`ActFormat`]). Buffers are kept, so a caller that
/// quantizes every step into the same `QActs` allocates nothing after the first.
#[derive(Default)]
pub struct QActs {
    format: ActFormat,
    cols: usize,
    rows: usize,
    /// Row `i`'s bytes start at `qs[i · stride]`: `cols` (Q8K: then [`ActRow::q6_bias`] and
    /// [`ActRow::q6_bias8`]), then [`ROW_PAD`].
    stride: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    bsums: Vec<i16>,
    /// Q8K: per super-block the four pairs (Σq of values 64c..64c+32, of 64c+32..64c+64) as
    /// i16 halves of an i32, the form the Q4_K/Q5_K kernels' epilogues multiply the paired
    /// mins by (summed here once per row rather than in every kernel pass).
    pairs: Vec<i32>,
    /// Q8K: [`ActRow::abs_sum16`], one per super-block.
    abs_sum16: Vec<u16>,
    /// Q8K: [`ActRow::sign_sum32`], one per super-block.
    sign_sum32: Vec<u16>,
}

/// Bytes between one quantized activation row's end (Q8K: its `q6_bias8`) and the next one's
/// start. A kernel pass
/// reads 8 rows side by side; `cols` apart, at 2048 or 8192 columns (a 1B model's widths),
/// their bytes at the same column fall into the same L1 sets (4 KiB apart), and 8 rows plus
/// the weights' lines overflow a set's 8 ways: a pass of 32 `vpdpbusd` per sub-block ran at
/// 75 cycles instead of 40 (benches/README, Session 35).
const ROW_PAD: usize = 64;

/// The first `len` elements of `buf`, grown to hold them but never shrunk: a buffer that
/// serves matrices of several widths (a layer's 2048 and 8192 columns) would otherwise zero
/// its regrown tail at every switch; the quantizers overwrite every element they use.
fn grown<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    &mut buf[..len]
}

/// Rows at or above which quantizing is split over threads.
const QUANTIZE_PARALLEL_ROWS: usize = 16;

impl QActs {
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Self {
        let mut a = Self::default();
        a.quantize_into(x, rows, cols);
        a
    }

    /// Quantizes `x (rows, cols)` for weights of `kind` into this buffer.
    pub fn quantize_for(&mut self, kind: QKind, x: &[f32], rows: usize, cols: usize) {
        match kind.act_format() {
            ActFormat::Q8 => self.quantize_into(x, rows, cols),
            ActFormat::Q8K => self.quantize_q8k_into(x, rows, cols),
        }
    }

    /// The activation format this buffer holds now.
    pub fn format(&self) -> ActFormat {
        self.format
    }

    /// Quantizes `x (rows, cols)` into this buffer (rounding ties to even, as the scalar
    /// reference and `cvtps2dq` do: the SIMD and scalar paths give identical bytes).
    pub fn quantize_into(&mut self, x: &[f32], rows: usize, cols: usize) {
        assert_eq!(x.len(), rows * cols);
        assert!(cols > 0 && cols.is_multiple_of(BLOCK), "{cols} columns");
        let nb = rows * cols / BLOCK;
        self.format = ActFormat::Q8;
        self.rows = rows;
        self.cols = cols;
        let stride = cols + ROW_PAD;
        self.stride = stride;
        let (qs, d, s) = (
            grown(&mut self.qs, rows * stride),
            grown(&mut self.d, nb),
            grown(&mut self.s, nb),
        );
        let nbr = cols / BLOCK;
        let quantize_rows = |x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]| {
            let rows = x.chunks(cols).zip(qs.chunks_mut(stride));
            for ((x, qs), (d, s)) in rows.zip(d.chunks_mut(nbr).zip(s.chunks_mut(nbr))) {
                let qs = &mut qs[..cols];
                #[cfg(target_arch = "x86_64")]
                if crate::cpu_features::avx2() {
                    // Safety: the CPU has AVX2 (and FMA, F16C).
                    unsafe { x86::avx2::quantize_blocks(x, qs, d, s) };
                    continue;
                }
                quantize_blocks_scalar(x, qs, d, s);
            }
        };
        if rows >= QUANTIZE_PARALLEL_ROWS && rayon::current_num_threads() > 1 {
            let per = rows.div_ceil(rayon::current_num_threads());
            x.par_chunks(per * cols)
                .zip(qs.par_chunks_mut(per * stride))
                .zip(d.par_chunks_mut(per * nbr))
                .zip(s.par_chunks_mut(per * nbr))
                .for_each(|(((x, qs), d), s)| quantize_rows(x, qs, d, s));
        } else {
            quantize_rows(x, qs, d, s);
        }
    }

    /// [`Self::quantize_into`] for the K formats: Q8_K blocks of 256 (`cols` a multiple).
    pub fn quantize_q8k_into(&mut self, x: &[f32], rows: usize, cols: usize) {
        assert_eq!(x.len(), rows * cols);
        self.quantize_q8k_rows(rows, cols, |r, quantize| quantize(&x[r * cols..][..cols]));
    }

    /// [`Self::quantize_q8k_into`] of rows `fill(r, row)` writes, one at a time into a
    /// buffer of `cols` that stays in L1/L2: the whole matrix is never stored (a gated MLP's
    /// activations, 16 MiB a layer for a 1B model's 512-token prompt, written and read back
    /// from L3). The same bytes as quantizing the stored rows.
    pub fn quantize_q8k_rows_with(
        &mut self,
        rows: usize,
        cols: usize,
        fill: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        thread_local! {
            static ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        self.quantize_q8k_rows(rows, cols, |r, quantize| {
            ROW.with_borrow_mut(|row| {
                row.resize(cols, 0.0);
                fill(r, row);
                quantize(row)
            })
        });
    }

    /// The Q8_K quantizer over rows that `with_row(r, quantize)` hands to `quantize`.
    fn quantize_q8k_rows(
        &mut self,
        rows: usize,
        cols: usize,
        with_row: impl Fn(usize, &mut dyn FnMut(&[f32])) + Sync,
    ) {
        assert!(cols > 0 && cols.is_multiple_of(QK_K), "{cols} columns");
        let nb = rows * cols / QK_K;
        self.format = ActFormat::Q8K;
        self.rows = rows;
        self.cols = cols;
        // Each row: its values, then `ActRow::q6_bias` and `q6_bias8`, then the pad.
        let stride = cols + q6_bias_bytes(cols) + q6_bias8_bytes(cols) + ROW_PAD;
        self.stride = stride;
        let (qs, d) = (grown(&mut self.qs, rows * stride), grown(&mut self.d, nb));
        let bsums = grown(&mut self.bsums, nb * 16);
        let (abs_sum16, sign_sum32) = (
            grown(&mut self.abs_sum16, nb),
            grown(&mut self.sign_sum32, nb),
        );
        let nbr = cols / QK_K;
        // Rows r0.. of the matrix, into their parts of the buffers.
        let quantize_rows =
            |r0: usize, qs: &mut [i8], d: &mut [f32], bs: &mut [i16], bounds: SumBoundsMut| {
                let mut sums8 = vec![0i16; cols / 8];
                let rows = qs.chunks_mut(stride);
                let sums = d
                    .chunks_mut(nbr)
                    .zip(bs.chunks_mut(nbr * 16))
                    .zip(bounds.abs16.chunks_mut(nbr))
                    .zip(bounds.sign32.chunks_mut(nbr));
                for (i, (row, (((d, bs), abs16), sign32))) in rows.zip(sums).enumerate() {
                    let (qs, rest) = row.split_at_mut(cols);
                    let (bias, rest) = rest.split_at_mut(q6_bias_bytes(cols));
                    let bias8 = &mut rest[..q6_bias8_bytes(cols)];
                    with_row(r0 + i, &mut |x: &[f32]| {
                        let bounds = SumBoundsMut {
                            abs16: &mut *abs16,
                            sign32: &mut *sign32,
                        };
                        quantize_q8k_row(x, qs, d, bs, &mut sums8, bounds);
                        let to_bias = |b: &mut [i8], s: &i16| {
                            b.copy_from_slice(&(-32 * i32::from(*s)).to_le_bytes().map(|v| v as i8))
                        };
                        bias.chunks_exact_mut(4)
                            .zip(bs.iter())
                            .for_each(|(b, s)| to_bias(b, s));
                        bias8
                            .chunks_exact_mut(4)
                            .zip(&sums8)
                            .for_each(|(b, s)| to_bias(b, s));
                    });
                }
            };
        if rows >= QUANTIZE_PARALLEL_ROWS && rayon::current_num_threads() > 1 {
            let per = rows.div_ceil(rayon::current_num_threads());
            qs.par_chunks_mut(per * stride)
                .zip(d.par_chunks_mut(per * nbr))
                .zip(bsums.par_chunks_mut(per * nbr * 16))
                .zip(abs_sum16.par_chunks_mut(per * nbr))
                .zip(sign_sum32.par_chunks_mut(per * nbr))
                .enumerate()
                .for_each(|(p, ((((qs, d), bs), abs16), sign32))| {
                    quantize_rows(p * per, qs, d, bs, SumBoundsMut { abs16, sign32 })
                });
        } else {
            let bounds = SumBoundsMut {
                abs16: abs_sum16,
                sign32: sign_sum32,
            };
            quantize_rows(0, qs, d, bsums, bounds);
        }
        self.pairs.clear();
        self.pairs.extend(bsums.chunks_exact(4).map(|b| {
            let lo = (b[0] as i32 + b[1] as i32) & 0xFFFF;
            let hi = b[2] as i32 + b[3] as i32;
            lo | (hi << 16)
        }));
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    fn row(&self, i: usize) -> ActRow<'_> {
        let qs = &self.qs[i * self.stride..][..self.cols];
        match self.format {
            ActFormat::Q8 => {
                let nb = self.cols / BLOCK;
                ActRow {
                    qs,
                    d: &self.d[i * nb..(i + 1) * nb],
                    s: &self.s[i * nb..(i + 1) * nb],
                    bsums: &[],
                    pairs: &[],
                    q6_bias: &[],
                    q6_bias8: &[],
                    abs_sum16: &[],
                    sign_sum32: &[],
                }
            }
            ActFormat::Q8K => {
                let nb = self.cols / QK_K;
                let bias = &self.qs[i * self.stride + self.cols..];
                let (q6_bias, bias8) = bias.split_at(q6_bias_bytes(self.cols));
                ActRow {
                    qs,
                    q6_bias,
                    q6_bias8: &bias8[..q6_bias8_bytes(self.cols)],
                    d: &self.d[i * nb..(i + 1) * nb],
                    s: &[],
                    bsums: &self.bsums[i * nb * 16..(i + 1) * nb * 16],
                    pairs: &self.pairs[i * nb * 4..(i + 1) * nb * 4],
                    abs_sum16: &self.abs_sum16[i * nb..(i + 1) * nb],
                    sign_sum32: &self.sign_sum32[i * nb..(i + 1) * nb],
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub(crate) qs: &'a [i8],
    /// Q8: one scale per 32 values; Q8K: per 256.
    pub(crate) d: &'a [f32],
    /// Q8 only: `d·Σq` per 32 values.
    pub(crate) s: &'a [f32],
    /// Q8K only: `Σq` per 16 values.
    pub(crate) bsums: &'a [i16],
    /// Q8K only: [`QActs::pairs`], four per 256 values.
    pub(crate) pairs: &'a [i32],
    /// Q8K only: `−32·Σq` per 16 values, little-endian i32s right after `qs` in the same
    /// buffer (so a kernel reaches them from a row's address): the −32 of Q6_K's values,
    /// which its 2–4-row VNNI passes and its paired passes over whole sub-blocks take as
    /// each sub-block's starting sum.
    pub(crate) q6_bias: &'a [i8],
    /// Q8K only: `−32·Σq` per 8 values, right after [`Self::q6_bias`]: the starting sums
    /// of Q6_K's other VNNI passes (1 and 5–8 rows, unpacked, and paired where
    /// [`Self::abs_sum16`] is too large), which sum half sub-blocks (so each sum fits an
    /// i16).
    pub(crate) q6_bias8: &'a [i8],
    /// Q8K only: per super-block the largest `Σ|q|` of its sixteen 16-value blocks. Where it
    /// is small enough, a kernel may sum 16 values' products in an i16 (`|Σ q·a| ≤
    /// max|q| · Σ|a|`) and scale each sum by one `vpdpwssd`; else it sums 8 at a time. Each
    /// pass checks its rows, so the result does not depend on which sums ran.
    pub(crate) abs_sum16: &'a [u16],
    /// Q8K only: per super-block the largest, over its eight 32-value blocks, of the larger
    /// of `Σq` over the positive values and `Σ|q|` over the negative ones. Where it is small
    /// enough, a kernel whose weights are unsigned (Q5_K's q, 0..31) may sum a whole
    /// 32-value sub-block's products in an i16: `Σ q·a` lies between `−max q · Σ|a⁻|` and
    /// `max q · Σa⁺`.
    pub(crate) sign_sum32: &'a [u16],
}

/// One row of Q8_K blocks (`x` a multiple of 256 values) with the widest quantizer this CPU
/// runs: all give the scalar reference's bytes, sums and bounds.
fn quantize_q8k_row(
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    bs: &mut [i16],
    sums8: &mut [i16],
    bounds: SumBoundsMut,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_features::avx512() {
        // Safety: the CPU has AVX-512F/BW (and AVX2, FMA, F16C).
        unsafe { x86::avx512::quantize_q8k(x, qs, d, bs, sums8, bounds) };
        return;
    } else if crate::cpu_features::avx2() {
        // Safety: the CPU has AVX2 (and FMA, F16C).
        unsafe { x86::avx2::quantize_q8k(x, qs, d, bs, sums8, bounds) };
        return;
    }
    quantize_q8k_scalar(x, qs, d, bs, sums8, bounds);
}

/// Where a Q8_K quantizer writes its rows' sum bounds, one each per super-block:
/// [`ActRow::abs_sum16`] and [`ActRow::sign_sum32`].
pub(crate) struct SumBoundsMut<'a> {
    pub(crate) abs16: &'a mut [u16],
    pub(crate) sign32: &'a mut [u16],
}

/// Bytes of [`ActRow::q6_bias`] for a row of `cols` values.
fn q6_bias_bytes(cols: usize) -> usize {
    cols / 16 * 4
}

/// Bytes of [`ActRow::q6_bias8`] for a row of `cols` values.
fn q6_bias8_bytes(cols: usize) -> usize {
    cols / 8 * 4
}

/// Whether [`matmul`] runs a SIMD kernel on this CPU.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu_features::avx2()
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
        if crate::cpu_features::avx2() {
            return Some(x86::avx2::dot_pair);
        }
    }
    None
}

fn kernel() -> DotRows {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu_features::avx2() {
            return x86::avx2::dot_rows;
        }
    }
    dot_rows_scalar
}

/// Activation rows handled per pass over a weight row range (keeps them in L2).
const ROW_TILE: usize = 64;
/// Below this many block products a call runs on the calling thread (fork/join costs more).
const PARALLEL_MIN_BLOCKS: usize = 8192;

/// `out (m, w.rows) = x (m, w.cols) · Wᵀ`.
pub fn matmul(w: &QWeight, x: &[f32], m: usize, out: &mut [f32]) {
    let mut acts = QActs::default();
    acts.quantize_for(w.kind, x, m, w.cols);
    matmul_quantized(w, &acts, out)
}

/// `out (acts.rows(), w.rows) = acts · Wᵀ` for activations already quantized (one
/// quantization can feed several weights; the buffers can be reused across calls).
pub fn matmul_quantized(w: &QWeight, acts: &QActs, out: &mut [f32]) {
    assert_eq!(acts.cols, w.cols, "activation width vs weight columns");
    assert_eq!(
        acts.format,
        w.kind.act_format(),
        "activations quantized for another format"
    );
    if w.kind.is_k() {
        return kgemm::matmul_k(w, acts, out);
    }
    if w.kind.is_5bit() && matches!(w.layout, Layout::Rows(_)) {
        // Row-major 5-bit matrices (rows not a multiple of 8): no row-major SIMD kernel.
        return matmul_with(w, acts, out, dot_rows_scalar, None);
    }
    if gemm32_amx::takes(w, acts.rows) {
        let rows: Vec<ActRow> = (0..acts.rows).map(|i| acts.row(i)).collect();
        return gemm32_amx::matmul_amx(w, &rows, out);
    }
    matmul_with(w, acts, out, kernel(), pair_kernel())
}

fn matmul_with(w: &QWeight, acts: &QActs, out: &mut [f32], dot: DotRows, pair: Option<DotPair>) {
    let (n, m) = (w.rows, acts.rows);
    assert_eq!(out.len(), m * n);
    let rows: Vec<ActRow> = (0..m).map(|i| acts.row(i)).collect();
    let ptr = OutPtr(out.as_mut_ptr());
    let blocks = m * n * (w.cols / BLOCK);
    if let Layout::Interleaved { group, data } = &w.layout {
        let group = *group;
        let group_bytes = w.cols / BLOCK * w.kind.group_block_bytes(group);
        let pass = rows_per_pass(group);
        let work = |g0: usize, g1: usize| {
            for (t, tile_rows) in rows.chunks(ROW_TILE).enumerate() {
                for gi in g0..g1 {
                    let wg = &data[gi * group_bytes..(gi + 1) * group_bytes];
                    for (q, few) in tile_rows.chunks(pass).enumerate() {
                        let i0 = t * ROW_TILE + q * pass;
                        // Safety: rows i0..i0 + few.len() < m, columns of group gi < n, and
                        // each task owns groups g0..g1.
                        let out = ptr.at(i0 * n + gi * group);
                        unsafe { gemm_group(w.kind, group, wg, few, out, n) };
                    }
                }
            }
        };
        run_split(n / group, blocks, work);
        return;
    }
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
    run_split(n, blocks, work);
}

/// Runs `work(i0, i1)` over `0..units` (weight rows or row groups): on the calling thread when
/// the call is small, else in a few chunks per rayon thread so an uneven core (the machine is
/// shared) does not stall the rest.
fn run_split(units: usize, blocks: usize, work: impl Fn(usize, usize) + Sync) {
    let threads = rayon::current_num_threads();
    if blocks < PARALLEL_MIN_BLOCKS || threads == 1 {
        work(0, units);
        return;
    }
    let chunk = units.div_ceil(threads * 4).max(2);
    (0..units.div_ceil(chunk))
        .into_par_iter()
        .for_each(|c| work(c * chunk, ((c + 1) * chunk).min(units)));
}

/// Activation rows one pass of the interleaved kernel takes: the AVX-512 kernel (32 vector
/// registers) keeps eight rows' sums in registers, the AVX2 ones (16 registers) four.
pub(crate) fn rows_per_pass(group: usize) -> usize {
    if group == 16 {
        8
    } else {
        4
    }
}

/// One interleaved group of `group` weight rows times up to [`rows_per_pass`] activation rows: writes
/// `out[i · ld + 0..group]` for activation row `i`.
///
/// # Safety
/// `wg` is one whole group of `w.cols / 32` interleaved blocks of `kind`, the activation rows
/// are that wide, `out` is valid for those writes, and the group size is one this CPU's
/// kernels were chosen for ([`group_rows`]).
unsafe fn gemm_group(
    kind: QKind,
    group: usize,
    wg: &[u8],
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    let nb = wg.len() / kind.group_block_bytes(group);
    debug_assert!(acts
        .iter()
        .all(|a| a.qs.len() >= nb * BLOCK && a.d.len() >= nb));
    #[cfg(target_arch = "x86_64")]
    {
        let w = wg.as_ptr();
        let vnni = crate::cpu_features::avx512_vnni();
        // The kernel for the group and format, built for the pass's row count.
        macro_rules! by_rows {
            ($m:ident::$f:ident; $($r:literal)*) => {
                match acts.len() {
                    $($r => x86::$m::$f::<$r>(w, nb, acts, out, ld),)*
                    r => unreachable!("{r} activation rows in one pass of a {group}-row group"),
                }
            };
        }
        use QKind::{Q5_0, Q5_1, Q8_0};
        match (group, kind) {
            (16, Q5_0 | Q5_1) if vnni => by_rows!(avx512::gemm_q5_16x8_q8_vnni; 1 2 3 4 5 6 7 8),
            (16, Q5_0 | Q5_1) => by_rows!(avx512::gemm_q5_16x8_q8; 1 2 3 4 5 6 7 8),
            (8, Q5_0 | Q5_1) => by_rows!(avx2::gemm_q5_8x4_q8; 1 2 3 4),
            (16, Q8_0) if vnni => by_rows!(avx512::gemm_q8_0_16x8_q8_vnni; 1 2 3 4 5 6 7 8),
            (16, Q8_0) => by_rows!(avx512::gemm_q8_0_16x8_q8; 1 2 3 4 5 6 7 8),
            (8, Q8_0) => by_rows!(avx2::gemm_q8_0_8x4_q8; 1 2 3 4),
            (16, _) if vnni => by_rows!(avx512::gemm_q4_16x8_q8_vnni; 1 2 3 4 5 6 7 8),
            (16, _) => by_rows!(avx512::gemm_q4_16x8_q8; 1 2 3 4 5 6 7 8),
            (8, _) => by_rows!(avx2::gemm_q4_8x4_q8; 1 2 3 4),
            _ => unreachable!("groups of 8 or 16 rows, not {group}"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("matrices are interleaved only where the AVX2 kernel runs")
}

#[cfg(test)]
mod tests;
