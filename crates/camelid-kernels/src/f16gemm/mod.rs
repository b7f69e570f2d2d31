//! `y = x · Wᵀ` for 16-bit weights (IEEE f16 or bfloat16) and f32 activations: what an HF
//! safetensors download (or an F16 GGUF) holds, kept at 2 bytes a value in memory.
//!
//! Why not candle: its CPU matmul wants both sides in one dtype, so 16-bit weights were widened
//! to f32 at load (twice the memory, twice the bytes read per token). Here the weights stay
//! 16-bit and are widened in registers (F16C's `vcvtph2ps`, or a 16-bit shift for bf16) right
//! before an f32 FMA; the activations stay f32 (ggml rounds them to f16 instead; we keep their
//! precision, the kernels are bound by the weights' bytes anyway).
//!
//! Layout: rows are interleaved in groups of `G` (16 for AVX-512, 8 for AVX2): for each column
//! `j`, the `G` rows' values are adjacent, so one load widens to one vector holding column `j`
//! of all `G` rows; a broadcast activation value multiplies it, and the `G` dot products build
//! up in the lanes of one register (no horizontal sums). Rows are padded with zeros to whole
//! units of [`UNIT_GROUPS`] groups; a thread takes whole units.

#[cfg(target_arch = "x86_64")]
mod x86;

use crate::OutPtr;
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
}

impl Flavour {
    /// Rows per interleaved group (0: row-major).
    fn group(self) -> usize {
        match self {
            Flavour::Scalar => 0,
            Flavour::Avx2 => 8,
            Flavour::Avx512 => 16,
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
    /// with zero rows to whole units.
    data: Vec<u16>,
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
            bits.to_vec()
        } else {
            let padded = rows.div_ceil(g * UNIT_GROUPS) * g * UNIT_GROUPS;
            let mut data = vec![0u16; padded * cols];
            for (r, row) in bits.chunks_exact(cols).enumerate() {
                let (gi, lane) = (r / g, r % g);
                let base = gi * g * cols + lane;
                for (j, &v) in row.iter().enumerate() {
                    data[base + j * g] = v;
                }
            }
            data
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
        let g = self.flavour.group();
        if g == 0 {
            return self.data.clone();
        }
        let cols = self.cols;
        let mut out = vec![0u16; self.rows * cols];
        for (r, row) in out.chunks_exact_mut(cols).enumerate() {
            let base = (r / g) * g * cols + r % g;
            for (j, v) in row.iter_mut().enumerate() {
                *v = self.data[base + j * g];
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
        let bits: Vec<u16> = parts.iter().flat_map(|p| p.to_row_major()).collect();
        Self::with_flavour(first.kind, rows, first.cols, &bits, first.flavour)
    }

    /// Bytes held (padding included).
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
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
    let ptr = OutPtr(out.as_mut_ptr());
    let g = w.flavour.group();
    if g == 0 {
        let work = |r0: usize, r1: usize| {
            for r in r0..r1 {
                let wr = &w.data[r * k..(r + 1) * k];
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
                                    w.data.as_ptr().add(gi * g * k),
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
