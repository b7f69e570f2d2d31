//! `y = x · Wᵀ` for 16-bit weights (IEEE f16 or bfloat16) and f32 activations: what an HF
//! safetensors download (or an F16 GGUF) holds, kept at 2 bytes a value in memory.
//!
//! Why not candle: its CPU matmul wants both sides in one dtype, so 16-bit weights were widened
//! to f32 at load (twice the memory, twice the bytes read per token). Here the weights stay
//! 16-bit and are widened in registers (F16C's `vcvtph2ps`, or a 16-bit shift for bf16) right
//! before an f32 FMA; the activations stay f32 (ggml rounds them to f16 instead; we keep their
//! precision, the kernels are bound by the weights' bytes anyway).
//!
//! Where the CPU has AMX-BF16, the [`Flavour::Amx`] kernels (`amx`) run every call on tiles
//! instead, operands split into bf16 parts (products within ~2⁻¹⁶ of exact): 16 rows run
//! 1.6× (F16) to 2.2× (bf16) the FMA kernels' speed, 256 rows 2.6–3.8×, a lone decode row
//! about the same from DRAM (0.8× from L3: F16 weights must still be split, benches/README
//! Session 31). One flavour serves every row count, so a row's bits never depend on its batch.
//!
//! Layout: rows are interleaved in groups of `G` (16 for AVX-512 and AMX, 8 for AVX2): for
//! each column `j`, the `G` rows' values are adjacent, so one load widens to one vector holding
//! column `j` of all `G` rows; a broadcast activation value multiplies it, and the `G` dot
//! products build up in the lanes of one register (no horizontal sums). (AMX: pairs of
//! columns, `amx`.) Rows are padded with zeros to whole units of [`UNIT_GROUPS`] groups; a
//! thread takes whole units.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::{Line, OutPtr};
use half::{bf16, f16};
use rayon::prelude::*;

/// Which 16-bit float the weights are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfKind {
    /// IEEE 754 binary16.
    F16,
    /// bfloat16: an f32's upper 16 bits.
    Bf16,
}

impl HalfKind {
    /// The value of the 16 bits `b`.
    pub fn to_f32(self, b: u16) -> f32 {
        match self {
            HalfKind::F16 => f16::from_bits(b).to_f32(),
            HalfKind::Bf16 => bf16::from_bits(b).to_f32(),
        }
    }
}

/// Which kernels run a 16-bit matmul (and so how its weights are laid out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Plain Rust on row-major weights.
    Scalar,
    /// Groups of 8 rows, 256-bit FMA.
    Avx2,
    /// Groups of 16 rows, 512-bit FMA.
    Avx512,
    /// Groups of 16 rows in column pairs, AMX-BF16 tiles on split operands (`amx`).
    Amx,
}

impl Flavour {
    /// Rows per interleaved group (0: row-major).
    fn group(self) -> usize {
        match self {
            Flavour::Scalar => 0,
            Flavour::Avx2 => 8,
            Flavour::Avx512 | Flavour::Amx => 16,
        }
    }

    /// Columns a row holds in the layout: the tiles take whole 32-value chunks.
    fn stride(self, cols: usize) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Flavour::Amx => cols.div_ceil(amx::CHUNK) * amx::CHUNK,
            _ => cols,
        }
    }

    /// Where row `r`'s value of column `j` lies in the layout (`stride` columns a row).
    fn at(self, r: usize, j: usize, stride: usize) -> usize {
        let g = self.group();
        match self {
            Flavour::Scalar => r * stride + j,
            Flavour::Amx => (r / g) * g * stride + (j / 2) * 2 * g + (r % g) * 2 + j % 2,
            _ => (r / g) * g * stride + j * g + r % g,
        }
    }

    /// Lays out one group's rows (`rows_in`: up to `group()` rows of `cols` values, row-major)
    /// into `group` (`group() · stride(cols)` zeros): as [`Self::at`] places them, in loops
    /// without its divisions (a 7B model has ~6.5 G values to lay out).
    fn lay_out_group(self, cols: usize, rows_in: &[u16], group: &mut [u16]) {
        let g = self.group();
        match self {
            Flavour::Scalar => group[..rows_in.len()].copy_from_slice(rows_in),
            // Column pairs: (j/2)·2g + 2r + j%2.
            Flavour::Amx => {
                for (r, row) in rows_in.chunks_exact(cols).enumerate() {
                    for (p, pair) in row.chunks(2).enumerate() {
                        let at = p * 2 * g + 2 * r;
                        group[at..at + pair.len()].copy_from_slice(pair);
                    }
                }
            }
            // Column j's g values side by side (j·g + r), written in order.
            Flavour::Avx2 | Flavour::Avx512 => {
                let n = rows_in.len() / cols;
                for (j, out) in group.chunks_exact_mut(g).enumerate().take(cols) {
                    for (r, o) in out[..n].iter_mut().enumerate() {
                        *o = rows_in[r * cols + j];
                    }
                }
            }
        }
    }

    /// The flavours this CPU can run, the scalar one first and the fastest last.
    pub fn available() -> Vec<Flavour> {
        #[allow(unused_mut)]
        let mut v = vec![Flavour::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if crate::cpu_features::avx2() {
                v.push(Flavour::Avx2);
            }
            if crate::cpu_features::avx512() {
                v.push(Flavour::Avx512);
            }
            if crate::cpu_features::amx_bf16() {
                v.push(Flavour::Amx);
            }
        }
        v
    }

    fn best() -> Flavour {
        *Flavour::available().last().expect("scalar is always there")
    }
}

/// Groups a thread takes together: a kernel call spans 4 (one or two activation rows) or 2
/// groups, so whole units of 4 never leave a group over.
const UNIT_GROUPS: usize = 4;

/// A `(rows, cols)` matrix of 16-bit weights, laid out for one [`Flavour`]'s kernels.
#[derive(Debug, Clone)]
pub struct HalfWeight {
    pub kind: HalfKind,
    /// Private with `data`: the kernels read `data` by raw pointers sized by them.
    rows: usize,
    cols: usize,
    flavour: Flavour,
    /// Row-major (scalar), or groups of `flavour.group()` rows interleaved by column, padded
    /// with zero rows to whole units; in whole cache lines (the tiles load them).
    data: Vec<Line>,
}

impl HalfWeight {
    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Row-major 16-bit values (`rows · cols` of them), laid out for this CPU's fastest kernels.
    pub fn new(kind: HalfKind, rows: usize, cols: usize, bits: &[u16]) -> Option<Self> {
        Self::with_flavour(kind, rows, cols, bits, Flavour::best())
    }

    /// As [`Self::new`], for the kernels of `flavour` (tests run each flavour on one CPU).
    /// `None` where the shape does not match the values or this CPU lacks the flavour.
    pub fn with_flavour(
        kind: HalfKind,
        rows: usize,
        cols: usize,
        bits: &[u16],
        flavour: Flavour,
    ) -> Option<Self> {
        if bits.len() != rows.checked_mul(cols)? || !Flavour::available().contains(&flavour) {
            return None;
        }
        let g = flavour.group();
        let data = if g == 0 {
            const CHUNK: usize = 1 << 16;
            Line::u16s_on_huge_pages(bits.len(), CHUNK, |i, c| {
                let from = (i * CHUNK).min(bits.len());
                let n = c.len().min(bits.len() - from);
                c[..n].copy_from_slice(&bits[from..from + n]);
            })
        } else {
            let padded = rows.div_ceil(g * UNIT_GROUPS) * g * UNIT_GROUPS;
            let stride = flavour.stride(cols);
            // Group by group (padding groups and rows stay 0).
            Line::u16s_on_huge_pages(padded * stride, g * stride, |i, group| {
                let from = (i * g * cols).min(bits.len());
                let to = (from + g * cols).min(bits.len());
                flavour.lay_out_group(cols, &bits[from..to], group);
            })
        };
        Some(Self {
            kind,
            rows,
            cols,
            flavour,
            data,
        })
    }

    /// The kernels this matrix is laid out for.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// The weights back in row-major order (`rows · cols` values).
    pub fn to_row_major(&self) -> Vec<u16> {
        if self.flavour.group() == 0 {
            return self.values()[..self.rows * self.cols].to_vec();
        }
        let cols = self.cols;
        let stride = self.flavour.stride(cols);
        let mut out = vec![0u16; self.rows * cols];
        for (r, row) in out.chunks_exact_mut(cols).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = self.values()[self.flavour.at(r, j, stride)];
            }
        }
        out
    }

    /// One matrix of `parts` stacked by rows (outputs side by side): same kind, width and
    /// layout, else `None`.
    pub fn concat_rows(parts: &[&HalfWeight]) -> Option<HalfWeight> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.kind != first.kind || p.cols != first.cols || p.flavour != first.flavour)
        {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        // Parts of whole units (every part but the last; its padding ends the matrix) are the
        // laid-out matrix already, one after another: their lines are copied as they are.
        let unit = first.flavour.group() * UNIT_GROUPS;
        if unit > 0 && parts[..parts.len() - 1].iter().all(|p| p.rows % unit == 0) {
            const CHUNK_LINES: usize = 2048;
            let lines: usize = parts.iter().map(|p| p.data.len()).sum();
            let data = Line::u16s_on_huge_pages(lines * 32, CHUNK_LINES * 32, |i, c| {
                // Lines [first, first + c's lines) of the parts taken one after another.
                let (mut first, mut out) = (i * CHUNK_LINES, c);
                for p in parts {
                    if out.is_empty() {
                        break;
                    }
                    if first >= p.data.len() {
                        first -= p.data.len();
                        continue;
                    }
                    let take = (p.data.len() - first).min(out.len() / 32);
                    let (head, rest) = out.split_at_mut(take * 32);
                    head.copy_from_slice(Line::u16s(&p.data[first..first + take]));
                    (first, out) = (0, rest);
                }
            });
            return Some(Self {
                kind: first.kind,
                rows,
                cols: first.cols,
                flavour: first.flavour,
                data,
            });
        }
        let bits: Vec<u16> = parts.iter().flat_map(|p| p.to_row_major()).collect();
        Self::with_flavour(first.kind, rows, first.cols, &bits, first.flavour)
    }

    /// Bytes held (padding included).
    pub fn bytes(&self) -> usize {
        self.data.len() * 64
    }

    fn values(&self) -> &[u16] {
        Line::u16s(&self.data)
    }
}

/// Multiply-adds below which a call runs on the calling thread (fork/join costs more).
const PARALLEL_MIN_MACS: usize = 1 << 18;
/// Bytes of activations one tile keeps in L2 while a unit of weights is multiplied with it.
const ACT_TILE_BYTES: usize = 256 << 10;

/// `out (m, w.rows) = x (m, w.cols) · Wᵀ`.
pub fn matmul(w: &HalfWeight, x: &[f32], m: usize, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "activations: {m} rows of {k}");
    assert_eq!(out.len(), m * n, "output: {m} rows of {n}");
    if m == 0 {
        return; // no rows (and the tiles cannot be shaped with none)
    }
    let ptr = OutPtr(out.as_mut_ptr());
    let g = w.flavour.group();
    if g == 0 {
        let work = |r0: usize, r1: usize| {
            for r in r0..r1 {
                let wr = &w.values()[r * k..(r + 1) * k];
                for i in 0..m {
                    let xr = &x[i * k..(i + 1) * k];
                    let v: f32 = wr.iter().zip(xr).map(|(&b, &a)| w.kind.to_f32(b) * a).sum();
                    // Safety: i < m, r < n, and each task owns columns r0..r1.
                    unsafe { *ptr.at(i * n + r) = v };
                }
            }
        };
        return run_split(n, m * n * k, work);
    }
    #[cfg(target_arch = "x86_64")]
    if w.flavour == Flavour::Amx {
        return matmul_tiles(w, x, m, out);
    }
    #[cfg(target_arch = "x86_64")]
    {
        let unit_rows = g * UNIT_GROUPS;
        let units = n.div_ceil(unit_rows);
        // AVX2: 6 rows × 2 groups, twelve sums in flight (FMA's latency of 4–5 cycles at two
        // a cycle wants ten independent chains; 4 rows × 2 held the CPU at ~60 % of its FMA
        // rate), two weight vectors and a broadcast: 15 of the 16 registers.
        let pass = if g == 16 { 8 } else { 6 };
        let tile = (ACT_TILE_BYTES / (4 * k.max(1))).max(pass) / pass * pass;
        let work = |u0: usize, u1: usize| {
            // One kernel call's sums: `pass` rows × 4 groups × 16 lanes at most.
            let mut res = [[0f32; 16]; 8 * UNIT_GROUPS];
            for t0 in (0..m).step_by(tile) {
                let t1 = (t0 + tile).min(m);
                for u in u0..u1 {
                    for i0 in (t0..t1).step_by(pass) {
                        let rows = pass.min(t1 - i0);
                        let per_call = if rows <= 2 { 4 } else { 2 };
                        for gc in (0..UNIT_GROUPS).step_by(per_call) {
                            let gi = u * UNIT_GROUPS + gc;
                            // Safety: groups gi..gi + per_call exist (padded to whole units),
                            // activation rows i0..i0 + rows < m, each `k` wide, and this CPU
                            // runs `w.flavour` (checked when the matrix was laid out).
                            unsafe {
                                x86::gemm(
                                    w.flavour,
                                    w.kind,
                                    w.values().as_ptr().add(gi * g * k),
                                    k,
                                    x.as_ptr().add(i0 * k),
                                    rows,
                                    per_call,
                                    &mut res,
                                )
                            };
                            for i in 0..rows {
                                for c in 0..per_call {
                                    let r0 = (gi + c) * g;
                                    let real = g.min(n.saturating_sub(r0));
                                    if real == 0 {
                                        continue; // a padding group
                                    }
                                    let sums = &res[i * per_call + c][..real];
                                    // Safety: row i0 + i < m, columns r0..r0 + real < n in
                                    // this task's units.
                                    let dst = ptr.at((i0 + i) * n + r0);
                                    unsafe {
                                        std::ptr::copy_nonoverlapping(sums.as_ptr(), dst, real)
                                    };
                                }
                            }
                        }
                    }
                }
            }
        };
        run_split(units, m * n * k, work);
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("interleaved layouts only where the x86 kernels run")
}

/// [`matmul`] on AMX tiles (`amx`): the activations split into bf16 parts once, then per
/// thread whole units of groups, each group's weights read once per tile of activation rows.
#[cfg(target_arch = "x86_64")]
fn matmul_tiles(w: &HalfWeight, x: &[f32], m: usize, out: &mut [f32]) {
    use amx::G;
    let (n, k) = (w.rows, w.cols);
    let kp = w.flavour.stride(k);
    // One block of `m` rows for a decode batch; blocks of 16 (zero rows at the end) above.
    let (rows, blocks) = if m <= G { (m, 1) } else { (G, m.div_ceil(G)) };
    // In whole cache lines: a tile row across two lines loads ~6× slower.
    let (mut xh_lines, mut xl_lines) = (
        Line::for_u16s(blocks * rows * kp),
        Line::for_u16s(blocks * rows * kp),
    );
    let (xh, xl) = (Line::u16s_mut(&mut xh_lines), Line::u16s_mut(&mut xl_lines));
    // A block's parts: per 32-value chunk, its rows side by side (one tile).
    let split = |(b, (h, l)): (usize, (&mut [u16], &mut [u16]))| {
        for i in 0..rows.min(m - b * rows) {
            let at = i * amx::CHUNK;
            let parts = (h[at..].as_mut_ptr(), l[at..].as_mut_ptr());
            // Safety: `amx_bf16` held when the matrix was laid out; row b·rows + i < m is k
            // wide; the block's parts hold kp / 32 chunks of `rows` rows.
            unsafe {
                amx::split_row(
                    x.as_ptr().add((b * rows + i) * k),
                    k,
                    parts,
                    kp,
                    rows * amx::CHUNK,
                )
            }
        }
    };
    let parts = xh
        .chunks_exact_mut(rows * kp)
        .zip(xl.chunks_exact_mut(rows * kp));
    if m * k >= 1 << 16 {
        parts.enumerate().par_bridge().for_each(split);
    } else {
        parts.enumerate().for_each(split);
    }
    let (xh, xl) = (&*xh, &*xl);
    let ptr = OutPtr(out.as_mut_ptr());
    let split = w.kind == HalfKind::F16;
    // Activation blocks a group's weights are split and read once for (the kernel holds 4):
    // their parts within 1 MiB, half an L2 (2048 wide: 4, 8192 wide: 2 measured best).
    let tile_blocks = ((1 << 20) / (4 * kp * G)).clamp(1, 4).min(blocks);
    let work = |u0: usize, u1: usize| {
        let mut res = [[[0f32; G]; G]; 4];
        // Writes sums tile `t` (activation block `b`, weight group `gi`) to the output.
        let put = |res: &[[[f32; G]; G]; 4], t: usize, b: usize, gi: usize| {
            let r0 = gi * G;
            let real = G.min(n.saturating_sub(r0));
            for (i, sums) in res[t].iter().take(m.saturating_sub(b * G)).enumerate() {
                // Safety: row b·16 + i < m, columns r0..r0 + real < n in this task's units.
                unsafe {
                    std::ptr::copy_nonoverlapping(sums.as_ptr(), ptr.at((b * G + i) * n + r0), real)
                };
            }
        };
        // Safety: the AMX flavour exists only where `amx_bf16` said yes; groups are padded to
        // whole units and every activation block is `rows` rows of kp parts.
        unsafe {
            amx::configure(rows);
            if blocks == 1 {
                // A decode batch: one block, the unit's four groups a call.
                let (h, l) = (xh.as_ptr(), xl.as_ptr());
                for g0 in (u0..u1).map(|u| u * UNIT_GROUPS) {
                    let wg = w.values().as_ptr().add(g0 * G * kp);
                    if split {
                        amx::gemm::<true, UNIT_GROUPS, 1>(wg, kp, rows, h, l, &mut res);
                    } else {
                        amx::gemm::<false, UNIT_GROUPS, 1>(wg, kp, rows, h, l, &mut res);
                    }
                    for c in (0..UNIT_GROUPS).take_while(|c| (g0 + c) * G < n) {
                        put(&res, c, 0, g0 + c);
                    }
                }
                amx::release();
                return;
            }
            for b0 in (0..blocks).step_by(tile_blocks) {
                let nb = tile_blocks.min(blocks - b0);
                let (h, l) = (xh.as_ptr().add(b0 * G * kp), xl.as_ptr().add(b0 * G * kp));
                for gi in u0 * UNIT_GROUPS..u1 * UNIT_GROUPS {
                    if gi * G >= n {
                        break; // padding groups
                    }
                    let wg = w.values().as_ptr().add(gi * G * kp);
                    macro_rules! go {
                        ($($nb:literal)*) => {
                            match (split, nb) {
                                $((true, $nb) => amx::gemm::<true, 1, $nb>(wg, kp, G, h, l, &mut res),
                                  (false, $nb) => amx::gemm::<false, 1, $nb>(wg, kp, G, h, l, &mut res),)*
                                _ => unreachable!("{nb} blocks"),
                            }
                        };
                    }
                    go!(1 2 3 4);
                    for b in 0..nb {
                        put(&res, b, b0 + b, gi);
                    }
                }
            }
            amx::release();
        }
    };
    run_split(n.div_ceil(G * UNIT_GROUPS), m * n * k, work);
}

/// Runs `work(i0, i1)` over `0..units` (rows or units of groups): inline when the call is
/// small, else in a few chunks per rayon thread so a slow core (the machine is shared) does
/// not hold up the rest.
fn run_split(units: usize, macs: usize, work: impl Fn(usize, usize) + Sync) {
    let threads = rayon::current_num_threads();
    if macs < PARALLEL_MIN_MACS || threads == 1 || units < 2 {
        work(0, units);
        return;
    }
    let chunk = units.div_ceil(threads * 4).max(1);
    (0..units.div_ceil(chunk))
        .into_par_iter()
        .for_each(|c| work(c * chunk, ((c + 1) * chunk).min(units)));
}

#[cfg(test)]
mod tests;
