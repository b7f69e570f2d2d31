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

/// A `(rows, cols)` weight matrix: GGUF's row-major blocks, or (where the AVX2 kernel runs)
/// interleaved by groups of eight rows, see [`Layout`].
#[derive(Debug, Clone)]
pub struct QWeight {
    pub kind: QKind,
    pub rows: usize,
    pub cols: usize,
    layout: Layout,
}

/// How a [`QWeight`]'s blocks are laid out in memory.
///
/// `Interleaved` is GGML's "repack" idea: rows `G·i..G·i+G` (G = 8 for AVX2, 16 for AVX-512's
/// wider registers) are stored together, block by block, so that one 4G-byte load holds four
/// consecutive values of each of the G rows. A broadcast of four activation bytes then
/// multiplies all G rows at once and the G sums land in the lanes of one register, with the
/// G row scales in one vector: no horizontal sums, one scale multiply per block for G rows.
/// Per group and 32-value block:
/// - Q4_0 / Q4_1: `d[G]` f16, `m[G]` f16 (Q4_0: `m = −8d`), then 4 × 4G bytes: bytes
///   `4r..4r+4` of vector `g` are row `r`'s `qs[4g..4g+4]` (low nibbles: values `4g..4g+4`,
///   high nibbles: values `16+4g..16+4g+4`) — 20G bytes, as many as G GGUF blocks;
/// - Q8_0: `d[G]` f16, then 8 × 4G bytes: row `r`'s values `4g..4g+4` at `4r` of vector `g`
///   — 34G bytes.
#[derive(Debug, Clone)]
enum Layout {
    Rows(Vec<u8>),
    Interleaved { group: usize, data: Vec<u8> },
}

impl QKind {
    /// Bytes of one 32-value block of an interleaved group of `g` rows.
    fn group_block_bytes(self, g: usize) -> usize {
        match self {
            QKind::Q4_0 | QKind::Q4_1 => 20 * g,
            QKind::Q8_0 => 34 * g,
        }
    }
}

/// Rows per interleaved group on this CPU (16 where AVX-512BW runs the kernels, else 8).
fn group_rows() -> usize {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        return 16;
    }
    8
}

impl QWeight {
    /// Weights in GGUF's layout (`data`: `rows` rows of `cols / 32` blocks). The matrix is
    /// interleaved for the SIMD kernel when this CPU has it and the shape allows.
    pub fn new(kind: QKind, rows: usize, cols: usize, data: Vec<u8>) -> Option<Self> {
        let w = Self::new_rows(kind, rows, cols, data)?;
        Some(if simd_available() { w.interleaved() } else { w })
    }

    /// Weights kept in GGUF's row-major layout (the scalar reference reads this one).
    pub fn new_rows(kind: QKind, rows: usize, cols: usize, data: Vec<u8>) -> Option<Self> {
        let ok =
            cols.is_multiple_of(BLOCK) && data.len() == rows * (cols / BLOCK) * kind.block_bytes();
        ok.then_some(Self {
            kind,
            rows,
            cols,
            layout: Layout::Rows(data),
        })
    }

    /// The same matrix interleaved by groups of [`group_rows`] (or of 8, if that does not
    /// divide `rows`), when `rows` is a multiple of eight (and, for Q4_0, every `−8d` fits an
    /// f16); otherwise unchanged.
    fn interleaved(self) -> Self {
        let mut g = group_rows();
        if !self.rows.is_multiple_of(g) {
            g = 8;
        }
        self.interleaved_by(g)
    }

    fn interleaved_by(self, group: usize) -> Self {
        let Layout::Rows(data) = &self.layout else {
            return self;
        };
        if !self.rows.is_multiple_of(group) {
            return self;
        }
        let (kind, nb, bb) = (self.kind, self.cols / BLOCK, self.kind.block_bytes());
        let gbb = kind.group_block_bytes(group);
        let row_bytes = nb * bb;
        // Offsets inside one group block: scales d, offsets m (Q4), the quant vectors.
        let (m_at, qs_at) = (2 * group, if kind == QKind::Q8_0 { 2 } else { 4 } * group);
        let mut out = vec![0u8; self.rows / group * nb * gbb];
        for (gi, dst_group) in out.chunks_exact_mut(nb * gbb).enumerate() {
            for (b, dst) in dst_group.chunks_exact_mut(gbb).enumerate() {
                for r in 0..group {
                    let src = &data[(gi * group + r) * row_bytes + b * bb..][..bb];
                    dst[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
                    let qs = match kind {
                        QKind::Q4_1 => {
                            dst[m_at + 2 * r..m_at + 2 * r + 2].copy_from_slice(&src[2..4]);
                            &src[4..20]
                        }
                        QKind::Q4_0 => {
                            let m = f16::from_f32(-8.0 * f16_at(src, 0));
                            if !m.is_finite() {
                                return self;
                            }
                            dst[m_at + 2 * r..m_at + 2 * r + 2].copy_from_slice(&m.to_le_bytes());
                            &src[2..18]
                        }
                        QKind::Q8_0 => &src[2..34],
                    };
                    for (g, four) in qs.chunks_exact(4).enumerate() {
                        let at = qs_at + 4 * group * g + 4 * r;
                        dst[at..at + 4].copy_from_slice(four);
                    }
                }
            }
        }
        Self {
            layout: Layout::Interleaved { group, data: out },
            ..self
        }
    }

    fn row_bytes(&self) -> usize {
        self.cols / BLOCK * self.kind.block_bytes()
    }

    /// Row `r` in GGUF's layout (row-major matrices only).
    fn row(&self, r: usize) -> &[u8] {
        let Layout::Rows(data) = &self.layout else {
            unreachable!("row access on an interleaved matrix")
        };
        let n = self.row_bytes();
        &data[r * n..(r + 1) * n]
    }

    fn bytes(&self) -> &[u8] {
        match &self.layout {
            Layout::Rows(d) | Layout::Interleaved { data: d, .. } => d,
        }
    }

    /// Stacks weights with the same format, width and layout (fused QKV, gate+up): one
    /// matmul, one activation quantization, instead of several. Both layouts stack by plain
    /// concatenation (interleaved groups never straddle two parts). `None` when formats or
    /// layouts differ (the caller then keeps separate matmuls).
    pub fn concat_rows(parts: &[&QWeight]) -> Option<QWeight> {
        let first = parts.first()?;
        let same_layout = |p: &&QWeight| match (&p.layout, &first.layout) {
            (Layout::Rows(_), Layout::Rows(_)) => true,
            (Layout::Interleaved { group: a, .. }, Layout::Interleaved { group: b, .. }) => a == b,
            _ => false,
        };
        if parts
            .iter()
            .any(|p| p.kind != first.kind || p.cols != first.cols || !same_layout(p))
        {
            return None;
        }
        let data: Vec<u8> = parts
            .iter()
            .flat_map(|p| p.bytes().iter().copied())
            .collect();
        let layout = match first.layout {
            Layout::Rows(_) => Layout::Rows(data),
            Layout::Interleaved { group, .. } => Layout::Interleaved { group, data },
        };
        Some(QWeight {
            kind: first.kind,
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            layout,
        })
    }
}

/// Activations quantized per 32-value block: `x ≈ d·q`, `s = d·Σq`. Buffers are kept, so a
/// caller that quantizes every step into the same `QActs` allocates nothing after the first.
#[derive(Default)]
pub struct QActs {
    cols: usize,
    rows: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

/// Rows at or above which quantizing is split over threads.
const QUANTIZE_PARALLEL_ROWS: usize = 16;

impl QActs {
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Self {
        let mut a = Self::default();
        a.quantize_into(x, rows, cols);
        a
    }

    /// Quantizes `x (rows, cols)` into this buffer (rounding ties to even, as the scalar
    /// reference and `cvtps2dq` do: the SIMD and scalar paths give identical bytes).
    pub fn quantize_into(&mut self, x: &[f32], rows: usize, cols: usize) {
        assert_eq!(x.len(), rows * cols);
        assert_eq!(cols % BLOCK, 0);
        let nb = rows * cols / BLOCK;
        self.rows = rows;
        self.cols = cols;
        self.qs.resize(rows * cols, 0);
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0.0);
        let quantize_rows = |x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]| {
            #[cfg(target_arch = "x86_64")]
            if crate::vecmath::avx2_available() {
                // Safety: the CPU has AVX2 (and FMA, F16C).
                unsafe { avx2::quantize_blocks(x, qs, d, s) };
                return;
            }
            quantize_blocks_scalar(x, qs, d, s);
        };
        if rows >= QUANTIZE_PARALLEL_ROWS && rayon::current_num_threads() > 1 {
            let nbr = cols / BLOCK;
            let per = rows.div_ceil(rayon::current_num_threads());
            x.par_chunks(per * cols)
                .zip(self.qs.par_chunks_mut(per * cols))
                .zip(self.d.par_chunks_mut(per * nbr))
                .zip(self.s.par_chunks_mut(per * nbr))
                .for_each(|(((x, qs), d), s)| quantize_rows(x, qs, d, s));
        } else {
            quantize_rows(x, &mut self.qs, &mut self.d, &mut self.s);
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
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

fn quantize_blocks_scalar(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
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
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        d[b] = db;
        s[b] = db * sum as f32;
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
    let acts = QActs::quantize(x, m, w.cols);
    matmul_with(w, &acts, out, kernel(), pair_kernel())
}

/// `out (acts.rows(), w.rows) = acts · Wᵀ` for activations already quantized (one
/// quantization can feed several weights; the buffers can be reused across calls).
pub fn matmul_quantized(w: &QWeight, acts: &QActs, out: &mut [f32]) {
    assert_eq!(acts.cols, w.cols, "activation width vs weight columns");
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
fn rows_per_pass(group: usize) -> usize {
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
        match (group, kind, acts.len()) {
            (16, QKind::Q8_0, 8) => avx512::gemm16_q8::<8>(w, nb, acts, out, ld),
            (16, QKind::Q8_0, 7) => avx512::gemm16_q8::<7>(w, nb, acts, out, ld),
            (16, QKind::Q8_0, 6) => avx512::gemm16_q8::<6>(w, nb, acts, out, ld),
            (16, QKind::Q8_0, 5) => avx512::gemm16_q8::<5>(w, nb, acts, out, ld),
            (16, QKind::Q8_0, 4) => avx512::gemm16_q8::<4>(w, nb, acts, out, ld),
            (16, QKind::Q8_0, 3) => avx512::gemm16_q8::<3>(w, nb, acts, out, ld),
            (16, QKind::Q8_0, 2) => avx512::gemm16_q8::<2>(w, nb, acts, out, ld),
            (16, QKind::Q8_0, 1) => avx512::gemm16_q8::<1>(w, nb, acts, out, ld),
            (16, _, 8) => avx512::gemm16_q4::<8>(w, nb, acts, out, ld),
            (16, _, 7) => avx512::gemm16_q4::<7>(w, nb, acts, out, ld),
            (16, _, 6) => avx512::gemm16_q4::<6>(w, nb, acts, out, ld),
            (16, _, 5) => avx512::gemm16_q4::<5>(w, nb, acts, out, ld),
            (16, _, 4) => avx512::gemm16_q4::<4>(w, nb, acts, out, ld),
            (16, _, 3) => avx512::gemm16_q4::<3>(w, nb, acts, out, ld),
            (16, _, 2) => avx512::gemm16_q4::<2>(w, nb, acts, out, ld),
            (16, _, 1) => avx512::gemm16_q4::<1>(w, nb, acts, out, ld),
            (8, QKind::Q8_0, 4) => avx2::gemm8_q8::<4>(w, nb, acts, out, ld),
            (8, QKind::Q8_0, 3) => avx2::gemm8_q8::<3>(w, nb, acts, out, ld),
            (8, QKind::Q8_0, 2) => avx2::gemm8_q8::<2>(w, nb, acts, out, ld),
            (8, QKind::Q8_0, 1) => avx2::gemm8_q8::<1>(w, nb, acts, out, ld),
            (8, _, 4) => avx2::gemm8_q4::<4>(w, nb, acts, out, ld),
            (8, _, 3) => avx2::gemm8_q4::<3>(w, nb, acts, out, ld),
            (8, _, 2) => avx2::gemm8_q4::<2>(w, nb, acts, out, ld),
            (8, _, 1) => avx2::gemm8_q4::<1>(w, nb, acts, out, ld),
            _ => unreachable!("groups of 8 (≤ 4 activation rows) or 16 (≤ 8) rows"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("matrices are interleaved only where the AVX2 kernel runs")
}

/// How far ahead of the block being multiplied the interleaved kernels prefetch weights.
/// The hardware prefetcher alone left the kernels waiting on memory: with a software
/// prefetch ~2 KiB ahead, 8 activation rows over Q4_1 weights ran ~1.4× faster (qgemm_bench,
/// alternated A/B runs on this 2-core VM).
#[cfg(target_arch = "x86_64")]
const PREFETCH_BYTES: usize = 2048;

/// Asks for the cache lines of the block `PREFETCH_BYTES` past `blk` (a block is `bytes`
/// long). Prefetches never fault, so running past the matrix's end is harmless.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch_ahead(blk: *const u8, bytes: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let at = blk.wrapping_add(PREFETCH_BYTES);
    for line in (0..bytes + 63).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line) as *const i8);
    }
}

/// The 16-row kernels (AVX-512BW: twice the lanes of AVX2 per instruction).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{prefetch_ahead, ActRow, BLOCK};
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        // CAMELID_NO_AVX512=1 keeps the AVX2 kernels (to compare them on one machine).
        super::avx2::available() && crate::vecmath::avx512_available()
    }

    /// See [`super::gemm_group`]; Q4_0 and Q4_1, 16-row groups (320 bytes per block).
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
    pub unsafe fn gemm16_q4<const R: usize>(
        w: *const u8,
        nb: usize,
        acts: &[ActRow],
        out: *mut f32,
        ld: usize,
    ) {
        let mask = _mm512_set1_epi8(0x0F);
        let ones = _mm512_set1_epi16(1);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let blk = w.add(b * 320);
            prefetch_ahead(blk, 320);
            // Eight nibble×byte products summed in i16: at most 8 · 2 · 15 · 127 = 30 480.
            let mut isum = [_mm512_setzero_si512(); R];
            for g in 0..4 {
                let p = _mm512_loadu_si512(blk.add(64 + 64 * g) as *const _);
                let lo = _mm512_and_si512(p, mask);
                let hi = _mm512_and_si512(_mm512_srli_epi16(p, 4), mask);
                for i in 0..R {
                    let a = acts.get_unchecked(i).qs.as_ptr().add(b * BLOCK) as *const i32;
                    let alo = _mm512_set1_epi32(a.add(g).read_unaligned());
                    let ahi = _mm512_set1_epi32(a.add(4 + g).read_unaligned());
                    isum[i] = _mm512_add_epi16(isum[i], _mm512_maddubs_epi16(lo, alo));
                    isum[i] = _mm512_add_epi16(isum[i], _mm512_maddubs_epi16(hi, ahi));
                }
            }
            let d16 = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
            let m16 = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32) as *const __m256i));
            for i in 0..R {
                let a = acts.get_unchecked(i);
                let p = _mm512_cvtepi32_ps(_mm512_madd_epi16(isum[i], ones));
                let da = _mm512_set1_ps(*a.d.get_unchecked(b));
                acc[i] = _mm512_fmadd_ps(p, _mm512_mul_ps(d16, da), acc[i]);
                acc[i] = _mm512_fmadd_ps(m16, _mm512_set1_ps(*a.s.get_unchecked(b)), acc[i]);
            }
        }
        for (i, v) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(i * ld), *v);
        }
    }

    /// See [`super::gemm_group`]; Q8_0, 16-row groups (544 bytes per block).
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
    pub unsafe fn gemm16_q8<const R: usize>(
        w: *const u8,
        nb: usize,
        acts: &[ActRow],
        out: *mut f32,
        ld: usize,
    ) {
        let ones = _mm512_set1_epi16(1);
        let zero = _mm512_setzero_si512();
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let blk = w.add(b * 544);
            prefetch_ahead(blk, 544);
            let mut isum = [_mm512_setzero_si512(); R];
            for g in 0..8 {
                let q = _mm512_loadu_si512(blk.add(32 + 64 * g) as *const _);
                // maddubs wants unsigned × signed: |q| × (a negated where q < 0); AVX-512
                // has no vpsignb, so the negation is a subtraction under q's sign mask.
                let q_abs = _mm512_abs_epi8(q);
                let neg = _mm512_movepi8_mask(q);
                for i in 0..R {
                    let a = acts.get_unchecked(i).qs.as_ptr().add(b * BLOCK) as *const i32;
                    let a4 = _mm512_set1_epi32(a.add(g).read_unaligned());
                    let a4 = _mm512_mask_sub_epi8(a4, neg, zero, a4);
                    // Two products per i16 lane: at most 2 · 127 · 127 = 32 258, then i32.
                    let p = _mm512_madd_epi16(_mm512_maddubs_epi16(q_abs, a4), ones);
                    isum[i] = _mm512_add_epi32(isum[i], p);
                }
            }
            let d16 = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
            for i in 0..R {
                let da = _mm512_set1_ps(*acts.get_unchecked(i).d.get_unchecked(b));
                let p = _mm512_cvtepi32_ps(isum[i]);
                acc[i] = _mm512_fmadd_ps(p, _mm512_mul_ps(d16, da), acc[i]);
            }
        }
        for (i, v) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(i * ld), *v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{prefetch_ahead, ActRow, QKind, BLOCK};
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

    /// [`super::quantize_blocks_scalar`] with AVX2: the same bytes and scales (the maximum and
    /// the integer sum are exact, the scale is computed by the same scalar expression and
    /// `cvtps2dq` rounds ties to even).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_blocks(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
        assert!(qs.len() >= x.len() && d.len() * BLOCK >= x.len() && s.len() * BLOCK >= x.len());
        let sign = _mm256_set1_ps(-0.0);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
            let p = xb.as_ptr();
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
            );
            let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
            let db = amax / 127.0;
            let id = _mm256_set1_ps(if db > 0.0 { 1.0 / db } else { 0.0 });
            let q = v.map(|vi| _mm256_cvtps_epi32(_mm256_mul_ps(vi, id)));
            let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s4 = _mm_add_epi32(
                _mm256_castsi256_si128(sum),
                _mm256_extracti128_si256(sum, 1),
            );
            let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
            let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0b10_11_00_01));
            // packs work per 128-bit lane; the permute restores element order.
            let w01 = _mm256_packs_epi32(q[0], q[1]);
            let w23 = _mm256_packs_epi32(q[2], q[3]);
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), order);
            _mm256_storeu_si256(qs.as_mut_ptr().add(b * BLOCK) as *mut __m256i, bytes);
            *d.get_unchecked_mut(b) = db;
            *s.get_unchecked_mut(b) = db * _mm_cvtsi128_si32(s1) as f32;
        }
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

    /// See [`super::gemm_group`]; Q4_0 and Q4_1 (`m = −8d` for Q4_0), 8-row groups.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
    pub unsafe fn gemm8_q4<const R: usize>(
        w: *const u8,
        nb: usize,
        acts: &[ActRow],
        out: *mut f32,
        ld: usize,
    ) {
        let mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let blk = w.add(b * 160);
            prefetch_ahead(blk, 160);
            // Eight nibble×byte products summed in i16: at most 8 · 2 · 15 · 127 = 30 480.
            let mut isum = [_mm256_setzero_si256(); R];
            for g in 0..4 {
                let p = _mm256_loadu_si256(blk.add(32 + 32 * g) as *const __m256i);
                let lo = _mm256_and_si256(p, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), mask);
                for i in 0..R {
                    let a = acts.get_unchecked(i).qs.as_ptr().add(b * BLOCK) as *const i32;
                    let alo = _mm256_set1_epi32(a.add(g).read_unaligned());
                    let ahi = _mm256_set1_epi32(a.add(4 + g).read_unaligned());
                    isum[i] = _mm256_add_epi16(isum[i], _mm256_maddubs_epi16(lo, alo));
                    isum[i] = _mm256_add_epi16(isum[i], _mm256_maddubs_epi16(hi, ahi));
                }
            }
            let d8 = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            let m8 = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
            for i in 0..R {
                let a = acts.get_unchecked(i);
                let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(isum[i], ones));
                let da = _mm256_set1_ps(*a.d.get_unchecked(b));
                acc[i] = _mm256_fmadd_ps(p, _mm256_mul_ps(d8, da), acc[i]);
                acc[i] = _mm256_fmadd_ps(m8, _mm256_set1_ps(*a.s.get_unchecked(b)), acc[i]);
            }
        }
        for (i, v) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(i * ld), *v);
        }
    }

    /// See [`super::gemm_group`]; Q8_0, 8-row groups.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
    pub unsafe fn gemm8_q8<const R: usize>(
        w: *const u8,
        nb: usize,
        acts: &[ActRow],
        out: *mut f32,
        ld: usize,
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let blk = w.add(b * 272);
            prefetch_ahead(blk, 272);
            let mut isum = [_mm256_setzero_si256(); R];
            for g in 0..8 {
                let q = _mm256_loadu_si256(blk.add(16 + 32 * g) as *const __m256i);
                // maddubs wants unsigned × signed: |q| × (a with q's sign).
                let q_abs = _mm256_sign_epi8(q, q);
                for i in 0..R {
                    let a = acts.get_unchecked(i).qs.as_ptr().add(b * BLOCK) as *const i32;
                    let a4 = _mm256_sign_epi8(_mm256_set1_epi32(a.add(g).read_unaligned()), q);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q_abs, a4), ones);
                    isum[i] = _mm256_add_epi32(isum[i], p);
                }
            }
            let d8 = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            for i in 0..R {
                let da = _mm256_set1_ps(*acts.get_unchecked(i).d.get_unchecked(b));
                let p = _mm256_cvtepi32_ps(isum[i]);
                acc[i] = _mm256_fmadd_ps(p, _mm256_mul_ps(d8, da), acc[i]);
            }
        }
        for (i, v) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(i * ld), *v);
        }
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
        if crate::vecmath::avx2_available() {
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
            unsafe { avx2::quantize_blocks(&x, &mut q2, &mut d2, &mut s2) };
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
}
