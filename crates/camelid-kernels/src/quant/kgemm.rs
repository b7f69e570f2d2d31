//! `y = x · Wᵀ` for the K formats (Q4_K, Q5_K, Q6_K) × Q8_K activations: row-group tiling
//! over rayon (as for the 32-value formats) and the kernel flavour, chosen by the weight's
//! group size and the CPU: AVX2 or AVX-512, each with or without VNNI's `vpdpbusd`, and AMX
//! tiles over the AVX-512 groups for prompts.

use super::reference::dot_rows_k_scalar;
use super::weight::Layout;
use super::{
    krepack, rows_per_pass, run_split, ActFormat, ActRow, QActs, QKind, QWeight, BLOCK, QK_K,
    ROW_TILE,
};
use crate::{Line, OutPtr};

/// Activation rows from which a K matmul runs on AMX tiles where the CPU has them (below,
/// the AVX-512 VNNI passes): a call packs its activations and unpacks its weights once, which
/// a few rows do not repay. Measured with 700 MB of weights from DRAM (`qgemm_bench 2`, 2048
/// columns, ms a pass VNNI / AMX, two runs each, session 48 after the scale-digit unpacking):
/// 8 rows Q4_K 10.6–11.7 / 11.4–13.5, Q5_K 15.0–15.4 / 17.2–18.4, Q6_K 16.5–17.3 / 21.0–21.7;
/// 10 rows about even; 12 rows Q4_K 13.9–14.1 / 10.3–13.5, Q5_K 19.0–21.2 / 15.5–17.5, Q6_K
/// 22.4–22.9 / 21.6–22.2; 14 rows 1.1–1.4× on tiles. (Before it, from 16: session 44.)
/// Again on model 167 in session 60, after the pair passes and the L2 prefetch (ms a pass
/// VNNI / AMX, `ACTS=normal COPIES=400`, two rounds): 8 rows Q4_K 60–62 / 66–67, Q5_K 68–69
/// / 73–74, Q6_K 77–80 / 92–94; 10 rows Q4_K 67–69 / 61–63, Q5_K 77–80 / 72, Q6_K 95–96 /
/// 92–96; 12 rows Q4_K 77 / 67, Q5_K 89–90 / 74, Q6_K 98–104 / 93–97: tiles from 10 (Q6_K
/// about even there).
const AMX_MIN_ROWS: usize = 10;

/// Rows a row tile needs before its passes over a group run on the group unpacked to a byte
/// a value, or `None` where `flavour` has no unpacked kernels for `kind`.
/// - AVX2 without VNNI (`k256::unpack_q45`, `k256::unpack_q6`): unpacking costs about two
///   passes of bit selection. Measured (`qgemm_bench`, alternating in one process): Q5_K gains
///   from 16 rows (1.1×; 1.3× at 32 and more), Q6_K from 16 (1.0–1.4×; 1.3–1.8× at 32 and
///   more; mixed at 8), Q4_K only from a whole 64-row tile (1.0–1.25×; 0.85× at 16).
/// - AVX-512 VNNI without AMX (`k512::unpack_q6`, `k512::unpack_q45`): a Q6_K pass over
///   packed weights spends vector operations on joining the 6-bit values of every vector, a
///   Q5_K pass three on each vector's fifth bits where it tests them with a mask. Measured on
///   Zen 4 (`qgemm_bench 1`, 2048 columns, alternating): Q6_K 1.0× at 16 rows, 1.1–1.2× from
///   24 (Session 37, after its packed passes' own gain: 1.02–1.04× at 24–32 rows, 1.1× at
///   64, 1.2× at 256); Q5_K with the mask test 1.03× at 32, 1.1× at 64, 1.15× at 256. Moved by shifts instead
///   ([`crate::cpu_features::q5_fifth_bits_by_shifts`]), Q5_K's fifth bits cost no
///   `vpdpbusd` slot there and its packed passes were as fast or faster (unpacked 0.89–0.93×
///   at 32 rows, 0.96–0.98× at 64, 1.0× at 256: Session 37), so they stay packed; so do
///   Q4_K's, whose nibbles cost one or two operations a vector (unpacked 0.93× at 24–32 rows,
///   even from 64). Since the packed Q4_K/Q5_K passes take two sub-blocks at once
///   (`k512::q45_k_pairs_vnni`, session 53), Q5_K's with the mask test are the faster up to
///   64 rows on Intel (model 207, `qgemm_bench 1 q5_k`, alternating: unpacked 0.81× at 32
///   rows, 0.94× at 64, 1.05× at 96, 1.07× at 128, 1.11× at 192–256). Since the unpacked
///   passes scale 8-value sums by `vpdpwssd` (session 54: 1.1× at 128–256 rows), they are
///   the faster from 48 rows (1.15–1.3× at 64, 1.1–1.25× at 80, mixed at 32), so Q5_K
///   unpacks from 48. Q6_K's stay at 24 (from 8 they were 0.6–0.9× at 8–20 rows).
///
/// Decode steps keep the packed kernels.
fn unpack_min_rows(flavour: Flavour, kind: QKind) -> Option<usize> {
    match (flavour, kind) {
        (Flavour::Avx2, QKind::Q5K | QKind::Q6K) => Some(16),
        (Flavour::Avx2, _) => Some(ROW_TILE),
        (Flavour::Avx512Vnni, QKind::Q6K) => Some(24),
        (Flavour::Avx512Vnni, QKind::Q5K) if !crate::cpu_features::q5_fifth_bits_by_shifts() => {
            Some(48)
        }
        _ => None,
    }
}

/// Activation rows a row tile takes where its AVX-512 VNNI passes run on unpacked groups: each
/// group is unpacked once a tile, and more rows repay it better (the single-group passes read
/// the rows' activations sequentially, a pass's few rows at a time, so they need not stay in
/// L2; the paired passes keep [`PAIR_ROW_BLOCK`] rows there instead). Measured
/// (`qgemm_bench 1 q6_k`, 2048 columns, 256 and 512 rows, alternating): 256-row tiles
/// 1.03–1.07× 64-row ones. (AVX2's keep [`ROW_TILE`]: its Q6_K gained 1.03–1.1×, Q5_K
/// nothing, Q4_K was not measured.)
const UNPACKED_ROW_TILE: usize = 256;

/// Which kernels run a K-format matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavour {
    /// The scalar reference, on row-major weights.
    Scalar,
    /// 8-row groups, `maddubs` (i16 sums).
    Avx2,
    /// 8-row groups, AVX-VNNI `vpdpbusd` (i32 sums).
    AvxVnni,
    /// 16-row groups, `maddubs`.
    Avx512,
    /// 16-row groups, AVX-512 VNNI `vpdpbusd`.
    Avx512Vnni,
    /// 16-row groups, AMX tiles (`quant::x86::amx`).
    Amx,
}

impl Flavour {
    /// The rows per group this flavour's kernels take (0: row-major).
    pub(crate) fn group(self) -> usize {
        match self {
            Flavour::Scalar => 0,
            Flavour::Avx2 | Flavour::AvxVnni => 8,
            Flavour::Avx512 | Flavour::Avx512Vnni | Flavour::Amx => 16,
        }
    }

    /// The flavours this CPU can run (the scalar one always).
    pub(crate) fn available() -> Vec<Flavour> {
        #[allow(unused_mut)]
        let mut v = vec![Flavour::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            use crate::cpu_features as f;
            let runs = [
                (Flavour::Avx2, f::avx2()),
                (Flavour::AvxVnni, f::avx_vnni()),
                (Flavour::Avx512, f::avx512()),
                (Flavour::Avx512Vnni, f::avx512_vnni()),
                (Flavour::Amx, f::amx()),
            ];
            v.extend(runs.iter().filter(|(_, ok)| *ok).map(|(fl, _)| *fl));
        }
        v
    }

    /// The fastest flavour this CPU has for a matrix laid out as `w` and `m` activation rows.
    fn best_for(w: &QWeight, m: usize) -> Flavour {
        let group = match w.layout {
            Layout::Rows(_) => 0,
            Layout::Interleaved { group, .. } => group,
        };
        Flavour::available()
            .into_iter()
            .rev()
            .find(|f| f.group() == group && (*f != Flavour::Amx || m >= AMX_MIN_ROWS))
            .expect("an interleaved K matrix only where its kernels run")
    }
}

/// `out (acts.rows(), w.rows) = acts · Wᵀ` with the best kernels for `w`'s layout.
pub(super) fn matmul_k(w: &QWeight, acts: &QActs, out: &mut [f32]) {
    matmul_k_with(w, acts, out, Flavour::best_for(w, acts.rows()))
}

pub(super) fn matmul_k_with(w: &QWeight, acts: &QActs, out: &mut [f32], flavour: Flavour) {
    let (n, m) = (w.rows, acts.rows());
    assert_eq!(
        acts.format(),
        ActFormat::Q8K,
        "K weights take Q8_K activations"
    );
    assert_eq!(out.len(), m * n);
    let rows: Vec<ActRow> = (0..m).map(|i| acts.row(i)).collect();
    let ptr = OutPtr(out.as_mut_ptr());
    let nsb = w.cols / QK_K;
    let blocks = m * n * (w.cols / BLOCK);
    match &w.layout {
        Layout::Rows(_) => {
            assert_eq!(flavour, Flavour::Scalar, "row-major K weights: scalar only");
            let work = |r0: usize, r1: usize| {
                for r in r0..r1 {
                    for (i, a) in rows.iter().enumerate() {
                        let mut v = [0f32];
                        dot_rows_k_scalar(w.kind, w.row(r), std::slice::from_ref(a), &mut v);
                        // Safety: i < m, r < n, and each task owns columns r0..r1.
                        unsafe { *ptr.at(i * n + r) = v[0] };
                    }
                }
            };
            run_split(n, blocks, work);
        }
        Layout::Interleaved { data, .. } if flavour == Flavour::Amx => {
            matmul_k_amx(w, &rows, data, out)
        }
        Layout::Interleaved { group, data } => {
            let g = *group;
            assert_eq!(flavour.group(), g, "{flavour:?} kernels on groups of {g}");
            let group_bytes = nsb * krepack::group_superblock_bytes(w.kind, g);
            let pass = rows_per_pass(g);
            let unpack_from = unpack_min_rows(flavour, w.kind).unwrap_or(usize::MAX);
            let most = if flavour == Flavour::Avx512Vnni && m >= unpack_from {
                UNPACKED_ROW_TILE
            } else {
                ROW_TILE
            };
            // Unpacked tiles of even size, up to a quarter past `most`: 513 rows as 257 +
            // 256, not 512 + a lone row whose packed passes read every weight again (a 1B
            // model's 513-token prompt spent a decode step's time on its last row), nor three
            // tiles that each unpack every group. (The packed passes' 64-row tiles stay.)
            let tile = if most == UNPACKED_ROW_TILE {
                m.div_ceil(m.div_ceil(most + most / 4))
            } else {
                most
            };
            let work = |g0: usize, g1: usize| {
                // The padded last group's outputs, of which the real rows are copied out.
                let mut tail = [0f32; 8 * 16];
                let group = |gi: usize| &data[gi * group_bytes..(gi + 1) * group_bytes];
                let mut scratch = UNPACK_SCRATCH.take();
                let UnpackScratch {
                    unpacked,
                    unpacked2,
                    sums,
                } = &mut scratch;
                for (t, tile_rows) in rows.chunks(tile).enumerate() {
                    let unpack = tile_rows.len() >= unpack_from;
                    let pairs = unpack && flavour == Flavour::Avx512Vnni;
                    if pairs {
                        pair_block_sums(w.kind, tile_rows, nsb, sums);
                    }
                    let mut gi = g0;
                    while gi < g1 {
                        // AVX-512 VNNI's unpacked groups (Q6_K, Q5_K) run in pairs where both
                        // are whole (`gemm_group_pair`).
                        if pairs && gi + 1 < g1 && (gi + 2) * g <= n {
                            let wg = [group(gi), group(gi + 1)];
                            let u = [
                                unpack_group(flavour, w.kind, wg[0], nsb, unpacked),
                                unpack_group(flavour, w.kind, wg[1], nsb, unpacked2),
                            ];
                            // The next pair's packed bytes (the next tile's first where
                            // this is the last), asked for while this pair's passes run:
                            // unpacking them would otherwise wait on memory.
                            let next = if gi + 2 < g1 {
                                gi + 2..(gi + 4).min(g1)
                            } else if (t + 1) * tile < m {
                                g0..(g0 + 2).min(g1)
                            } else {
                                g1..g1
                            };
                            let next = &data[next.start * group_bytes..next.end * group_bytes];
                            // Safety: both groups whole and of `nsb` super-blocks, each
                            // unpacked into its own buffer, the activation rows `nsb · 256`
                            // wide, the flavour this CPU's (`available`), and the writes in
                            // rows t·tile.. < m and the 2g columns of groups gi, gi + 1
                            // (owned by this task).
                            unsafe {
                                let out = ptr.at(t * tile * n + gi * g);
                                pair_passes(w.kind, wg, u, nsb, tile_rows, sums, next, out, n);
                            }
                            gi += 2;
                            continue;
                        }
                        let wg = group(gi);
                        let real = g.min(n - gi * g);
                        let u = if unpack {
                            Some(unpack_group(flavour, w.kind, wg, nsb, unpacked))
                        } else {
                            None
                        };
                        for (q, few) in tile_rows.chunks(pass).enumerate() {
                            let i0 = t * tile + q * pass;
                            // Safety: `wg` is one whole group of `nsb` super-blocks, the
                            // activation rows are `nsb · 256` wide, `flavour` runs on this CPU
                            // (`available`), and the writes stay in rows i0.. < m and in
                            // columns of group gi (owned by this task) or in `tail`.
                            unsafe {
                                if real == g {
                                    let out = ptr.at(i0 * n + gi * g);
                                    gemm_group(flavour, w.kind, wg, u, nsb, few, out, n);
                                } else {
                                    let out = tail.as_mut_ptr();
                                    gemm_group(flavour, w.kind, wg, u, nsb, few, out, g);
                                    for (i, row) in tail.chunks(g).take(few.len()).enumerate() {
                                        let out = ptr.at((i0 + i) * n + gi * g);
                                        std::ptr::copy_nonoverlapping(row.as_ptr(), out, real);
                                    }
                                }
                            }
                        }
                        gi += 1;
                    }
                }
                UNPACK_SCRATCH.set(scratch);
            };
            run_split(n.div_ceil(g), blocks, work);
        }
    }
}

/// Groups the AMX path runs together over each super-block: their sums for every activation
/// row stay in L2 (8 × 64 B a row) between super-blocks.
const AMX_GROUPS: usize = 8;

/// From this many activation rows on, an AMX call prefetches the next group's super-block;
/// below, the one after (a short call ends before the next one's would arrive from DRAM).
/// Measured in one process alternating on the 1B files' steps: spread over the rows, the
/// next group's at 512 rows 1.03–1.29× the whole block asked for at once (Q6_K, Q4_K_M,
/// Q5_K_M) and 1.18× at 48 rows (Q5_K_M); two groups on against the next group's asked for
/// at once, 16 rows 1.09–1.24×, 24 rows 1.05–1.09×, 32 rows 0.99–1.09×, 48 rows 1.0×.
const AMX_NEAR_PREFETCH_ROWS: usize = 64;

/// The AMX path's packed activations, kept between calls (a prompt's are megabytes: not
/// allocated and faulted in again for every matmul), in whole cache lines: a tile row that
/// straddles two lines loads several times slower.
#[cfg(target_arch = "x86_64")]
static AMX_PACKED: std::sync::Mutex<(Vec<Line>, Vec<super::x86::amx::SbRow>)> =
    std::sync::Mutex::new((Vec::new(), Vec::new()));

/// The same bytes, read as unsigned.
fn i8_as_u8(s: &[i8]) -> &[u8] {
    // Safety: i8 and u8 have the same size and alignment, and every bit pattern is both.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, s.len()) }
}

/// A task's unpacked groups (a pair where two whole groups run together) and how the paired
/// passes sum over each block of a tile's rows. Kept per thread between tasks: allocated and
/// zeroed for every task (`threads × 4` a matmul, up to 640 KiB each at 8192 columns), they
/// showed as `memset` and page faults in the prompt's profile.
#[derive(Default)]
struct UnpackScratch {
    unpacked: Vec<u8>,
    unpacked2: Vec<u8>,
    sums: Vec<PairSums>,
}

thread_local! {
    /// This thread's [`UnpackScratch`], taken by a task while it runs.
    static UNPACK_SCRATCH: std::cell::Cell<UnpackScratch> = const {
        std::cell::Cell::new(UnpackScratch {
            unpacked: Vec::new(),
            unpacked2: Vec::new(),
            sums: Vec::new(),
        })
    };
    /// The AMX path's per-thread buffers: one unpacked super-block, and the sums of a run of
    /// groups for every activation row.
    #[allow(clippy::type_complexity)]
    static AMX_SCRATCH: std::cell::RefCell<(Vec<Line>, Vec<[f32; 16]>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// [`matmul_k_with`] on AMX tiles: tasks over 16-row groups. The activations are packed
/// super-block by super-block, each 16-row tile as its four quarters of 1 KiB (a tile load
/// then reads 1 KiB in a row; rows 256 bytes apart measured ~1.1× slower in `qgemm_bench`);
/// a task runs each super-block over [`AMX_GROUPS`] of its groups before the next (those
/// bytes stay in L2), unpacking one group's super-block at a time (`amx::unpack_*`, in L1
/// while every activation row runs over it).
fn matmul_k_amx(w: &QWeight, rows: &[ActRow], data: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::x86::amx::{self, G};
        let (n, m, cols) = (w.rows, rows.len(), w.cols);
        let nsb = cols / QK_K;
        let kind = match w.kind {
            QKind::Q4K => 4,
            QKind::Q5K => 5,
            QKind::Q6K => 6,
            k => unreachable!("{k:?} is not a K format"),
        };
        let sb_bytes = amx::packed_sb_bytes(kind);
        let group_bytes = nsb * sb_bytes;
        assert_eq!(sb_bytes, krepack::group_superblock_bytes(w.kind, G));
        let ptr = OutPtr(out.as_mut_ptr());
        let m_pad = m.next_multiple_of(G);
        let (mut packed_buf, mut sb_rows) = std::mem::take(&mut *AMX_PACKED.lock().unwrap());
        // Every line of the rows below m is written next; the padding rows' sums are never
        // read (rows are independent in a tile product), so what an earlier call left there
        // may stay: clearing the whole buffer each call cost a memset as large as the copy.
        let lines = nsb * m_pad * QK_K / 64;
        packed_buf.truncate(lines);
        packed_buf.resize(lines, Line([0; 64]));
        for (b, dst) in packed_buf.chunks_exact_mut(m_pad * QK_K / 64).enumerate() {
            // Per 16-row tile, its four 64-value quarters, each 16 rows of 64 bytes: one tile
            // load reads 1 KiB in a row.
            for (r, row) in rows.iter().enumerate() {
                let tile = &mut dst[(r / G) * G * QK_K / 64..][..G * QK_K / 64];
                for (l, line) in tile.chunks_exact_mut(G).enumerate() {
                    let src = &row.qs[b * QK_K + 64 * l..][..64];
                    // i8 → u8 bit for bit: the tiles read them as signed bytes.
                    line[r % G].0.copy_from_slice(i8_as_u8(src));
                }
            }
        }
        // Per super-block, each row's scale and pairs (`amx::SbRow`), row after row.
        sb_rows.clear();
        for b in 0..nsb {
            sb_rows.extend(rows.iter().map(|row| amx::SbRow {
                pairs: row.pairs[b * 4..b * 4 + 4].try_into().unwrap(),
                d: row.d[b],
            }));
        }
        let packed = &packed_buf;
        let sb_rows_ref = &sb_rows;
        let work = |g0: usize, g1: usize| {
            AMX_SCRATCH.with(|scratch| {
                let (lines, acc) = &mut *scratch.borrow_mut();
                lines.resize(amx::UNPACKED_SB_BYTES / 64, Line([0; 64]));
                let u = lines.as_mut_ptr() as *mut u8;
                acc.resize(AMX_GROUPS.min(g1 - g0) * m, [0.0; G]);
                // Safety: the AMX flavour runs only where `cpu_features::amx` said yes; the
                // super-blocks read are in `data` (the last group padded to 16 rows), `lines`
                // holds one unpacked super-block, `packed` every row of every super-block
                // (padding rows to a multiple of 16, initialized), each group has its own `m`
                // rows of `acc`, and the writes stay in rows < m and in the columns < n of
                // this task's groups.
                unsafe {
                    amx::configure();
                    for h0 in (g0..g1).step_by(AMX_GROUPS) {
                        let h1 = (h0 + AMX_GROUPS).min(g1);
                        for b in 0..nsb {
                            for gi in h0..h1 {
                                let blk = data.as_ptr().add(gi * group_bytes + b * sb_bytes);
                                // The same super-block of a group further on (a whole
                                // group's bytes away: too far for the hardware prefetcher),
                                // prefetched by this call spread over its rows' epilogue
                                // (asked for at once, 37–53 lines waited on the line fill
                                // buffers: ~4 % of a 512-token step). A short call ends
                                // before the next group's would arrive, so it asks for the
                                // one after (the batch's first call also for its next).
                                let ahead = if m < AMX_NEAR_PREFETCH_ROWS { 2 } else { 1 };
                                if ahead == 2 && gi == h0 && gi + 1 < h1 {
                                    amx::prefetch(blk.add(group_bytes), sb_bytes);
                                }
                                let pf = if gi + ahead < h1 {
                                    (blk.add(ahead * group_bytes), sb_bytes)
                                } else {
                                    (blk, 0)
                                };
                                let acc = &mut acc[(gi - h0) * m..(gi - h0 + 1) * m];
                                let o = (ptr.at(gi * G), n, (n - gi * G).min(G));
                                let act = (packed.as_ptr() as *const i8).add(b * m_pad * QK_K);
                                let sbr = &sb_rows_ref[b * m..(b + 1) * m];
                                match kind {
                                    4 => amx::unpack_q45::<false>(blk, u),
                                    5 => amx::unpack_q45::<true>(blk, u),
                                    _ => amx::unpack_q6(blk, u),
                                }
                                macro_rules! sb {
                                    ($($k:literal)*) => {
                                        match (kind, b == 0, b + 1 == nsb) {
                                            $(($k, true, true) => amx::gemm_k_sb::<$k, true, true>(blk, u, act, sbr, acc, o, pf),
                                            ($k, true, false) => amx::gemm_k_sb::<$k, true, false>(blk, u, act, sbr, acc, o, pf),
                                            ($k, false, true) => amx::gemm_k_sb::<$k, false, true>(blk, u, act, sbr, acc, o, pf),
                                            ($k, false, false) => amx::gemm_k_sb::<$k, false, false>(blk, u, act, sbr, acc, o, pf),)*
                                            _ => unreachable!("K kind {kind}"),
                                        }
                                    };
                                }
                                sb!(4 5 6);
                            }
                        }
                    }
                    amx::release();
                }
            })
        };
        run_split(n.div_ceil(G), m * n * (cols / BLOCK), work);
        *AMX_PACKED.lock().unwrap() = (packed_buf, sb_rows);
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, rows, data, out);
        unreachable!("AMX kernels are x86 only")
    }
}

/// One K-format group `wg` unpacked for `flavour`'s unpacked kernels into `buf` (grown to
/// fit); its start.
fn unpack_group(
    flavour: Flavour,
    kind: QKind,
    wg: &[u8],
    nsb: usize,
    buf: &mut Vec<u8>,
) -> *const u8 {
    #[cfg(target_arch = "x86_64")]
    {
        use super::x86::{k256, k512};
        let sb = match (flavour, kind) {
            (Flavour::Avx2, QKind::Q6K) => k256::Q6_UNPACKED_SB,
            (Flavour::Avx2, _) => k256::Q45_UNPACKED_SB,
            (Flavour::Avx512Vnni, QKind::Q6K) => k512::Q6_UNPACKED_SB,
            (Flavour::Avx512Vnni, QKind::Q5K) => k512::Q45_UNPACKED_SB,
            _ => unreachable!("no unpacked {flavour:?} kernels for {kind:?}"),
        };
        // Grown, never shrunk: the thread's buffer serves every width (a shrink and regrowth
        // would zero the difference again).
        if buf.len() < nsb * sb {
            buf.resize(nsb * sb, 0);
        }
        assert!(wg.len() >= nsb * krepack::group_superblock_bytes(kind, flavour.group()));
        // Safety: `wg` holds `nsb` whole super-blocks of `kind` in `flavour`'s groups
        // (asserted), `buf` the unpacked size, and the caller runs `flavour` (so this CPU has
        // its features).
        unsafe {
            match (flavour, kind) {
                (Flavour::Avx2, QKind::Q4K) => {
                    k256::unpack_q45::<false>(wg.as_ptr(), nsb, buf.as_mut_ptr())
                }
                (Flavour::Avx2, QKind::Q5K) => {
                    k256::unpack_q45::<true>(wg.as_ptr(), nsb, buf.as_mut_ptr())
                }
                (Flavour::Avx2, _) => k256::unpack_q6(wg.as_ptr(), nsb, buf.as_mut_ptr()),
                (Flavour::Avx512Vnni, QKind::Q5K) => {
                    k512::unpack_q45::<true>(wg.as_ptr(), nsb, buf.as_mut_ptr())
                }
                (Flavour::Avx512Vnni, QKind::Q6K) => {
                    k512::unpack_q6(wg.as_ptr(), nsb, buf.as_mut_ptr())
                }
                _ => unreachable!("no unpacked {flavour:?} kernels for {kind:?}"),
            }
        }
        buf.as_ptr()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (wg, nsb, buf);
        unreachable!("{flavour:?} {kind:?}: groups unpack only where the x86 kernels run")
    }
}

/// Rows a pass of [`gemm_group_pair`] takes where every row's activations let each sum of 16
/// or 32 values fit an i16 ([`PairSums::Of16`], [`PairSums::Of32`]; half the sums in flight,
/// so each weight vector serves 6 rows), and where they do not ([`PairSums::Halves`]): Q6_K's
/// 8-value halves, paired, 4 rows; Q5_K's one group at a time, 6 rows (which then choose
/// sums of 16 or 8 super-block by super-block).
const PAIR_ROWS_I16: usize = 6;
const PAIR_ROWS_HALVES: usize = 4;

/// Super-blocks a pass of [`gemm_group_pair`] takes before the tile's next rows: two
/// groups' whole unpacked rows (80 KiB at 2048 columns) overflow L1, two of their
/// super-blocks (20 KiB) stay there while every row of the tile runs over them.
const PAIR_SUPERBLOCKS: usize = 2;

/// Activation rows [`gemm_group_pair`]'s passes run over each [`PAIR_SUPERBLOCKS`] before
/// the next ones: their bytes stay in L2 (36 rows of 8192 columns, ~520 KiB with the
/// starting sums), where a whole 256-row tile's (3.7 MiB) were read again, strided, for
/// every two super-blocks. A multiple of the paired pass widths.
const PAIR_ROW_BLOCK: usize = 36;

/// How the paired passes over some rows and super-blocks sum their products before scaling
/// them: the longest sums the rows' activations keep within an i16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PairSums {
    /// Q5_K: a whole sub-block of 32 values a sum ([`ActRow::sign_sum32`] at most
    /// `k512::Q5_SIGN_SUM32_MAX`).
    Of32,
    /// 16 values a sum ([`ActRow::abs_sum16`] at most `k512::Q6_ABS_SUM16_MAX` /
    /// `k512::Q45_ABS_SUM16_MAX`).
    Of16,
    /// 8 values a sum, whatever the activations.
    Halves,
}

/// The longest sums (Q6_K: 16 values, Q5_K: 32) that every row of `acts` keeps within an i16
/// over super-blocks `sbs`.
fn pair_sums(kind: QKind, acts: &[ActRow], sbs: std::ops::Range<usize>) -> PairSums {
    #[cfg(target_arch = "x86_64")]
    {
        use super::x86::k512;
        let every_row_within = |bound: fn(ActRow<'_>) -> &[u16], max: u16| {
            acts.iter()
                .all(|&a| bound(a)[sbs.clone()].iter().all(|&m| m <= max))
        };
        let (q5, max16) = match kind {
            QKind::Q6K => (false, k512::Q6_ABS_SUM16_MAX),
            QKind::Q5K => (true, k512::Q45_ABS_SUM16_MAX),
            _ => unreachable!("{kind:?} groups are not paired"),
        };
        if q5 && every_row_within(|a| a.sign_sum32, k512::Q5_SIGN_SUM32_MAX) {
            PairSums::Of32
        } else if every_row_within(|a| a.abs_sum16, max16) {
            PairSums::Of16
        } else {
            PairSums::Halves
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, acts, sbs);
        PairSums::Halves
    }
}

/// [`pair_sums`] for each [`PAIR_ROW_BLOCK`] of `tile_rows` (major) and each
/// [`PAIR_SUPERBLOCKS`] of `nsb`, into `sums`, each followed by its passes' own where they
/// look at them ([`passes_own_sums`]): once a tile, not again for every pair of groups (row
/// by row, the checks took 4 % of a Q6_K prompt; the passes' own, 1.8 % of a Q5_K_M one).
fn pair_block_sums(kind: QKind, tile_rows: &[ActRow], nsb: usize, sums: &mut Vec<PairSums>) {
    sums.clear();
    for block in tile_rows.chunks(PAIR_ROW_BLOCK) {
        for b0 in (0..nsb).step_by(PAIR_SUPERBLOCKS) {
            let sbs = b0..(b0 + PAIR_SUPERBLOCKS).min(nsb);
            let block_sums = pair_sums(kind, block, sbs.clone());
            sums.push(block_sums);
            if passes_own_sums(kind, block_sums) {
                for few in block.chunks(pair_pass_rows(kind, block_sums)) {
                    sums.push(pair_sums(kind, few, sbs.clone()));
                }
            }
        }
    }
}

/// Rows a paired pass takes in a block whose rows together allow `block_sums`.
fn pair_pass_rows(kind: QKind, block_sums: PairSums) -> usize {
    match (block_sums, kind) {
        (PairSums::Halves, QKind::Q6K) => PAIR_ROWS_HALVES,
        _ => PAIR_ROWS_I16,
    }
}

/// Whether a block's passes sum as their own rows allow (they may allow longer sums than the
/// block's) rather than as the block's do: where the block's are not already the longest.
fn passes_own_sums(kind: QKind, block_sums: PairSums) -> bool {
    matches!(
        (block_sums, kind),
        (PairSums::Halves, _) | (PairSums::Of16, QKind::Q5K)
    )
}

/// Every row of a tile (`out[i · ld ..]` for row `i`) over two whole unpacked groups of
/// `kind` ([`gemm_group_pair`]): [`PAIR_SUPERBLOCKS`] over [`PAIR_ROW_BLOCK`] rows at a time,
/// 6 rows a pass where the whole block's activations allow sums of 16 or 32 values (`sums`,
/// from [`pair_block_sums`]), else Q6_K's 4 and Q5_K's 6, each pass then summing as many as
/// its own rows allow: a row of large activations (a prompt's first token's, in real
/// models) holds back the passes of its own rows only. Q5_K's passes in a block of sums of
/// 16 also look at their own rows, which allow sums of 32 far more often than 36 rows
/// together (benches/README, Session 57).
///
/// # Safety
/// As [`gemm_group_pair`]'s, for every row of `tile_rows`; `sums` is [`pair_block_sums`]'
/// for `kind`, `tile_rows` and `nsb`.
#[allow(clippy::too_many_arguments)]
unsafe fn pair_passes(
    kind: QKind,
    wg: [&[u8]; 2],
    u: [*const u8; 2],
    nsb: usize,
    tile_rows: &[ActRow],
    sums: &[PairSums],
    next: &[u8],
    out: *mut f32,
    ld: usize,
) {
    // The totals are written by the first super-blocks' passes (none without any).
    debug_assert!(nsb > 0);
    let mut blocks = sums.iter();
    let mut ahead = PrefetchAhead::new(
        next,
        tile_rows.len().div_ceil(PAIR_ROWS_I16) * nsb.div_ceil(PAIR_SUPERBLOCKS),
    );
    for (rb, block) in tile_rows.chunks(PAIR_ROW_BLOCK).enumerate() {
        for b0 in (0..nsb).step_by(PAIR_SUPERBLOCKS) {
            let sbs = b0..(b0 + PAIR_SUPERBLOCKS).min(nsb);
            let block_sums = *blocks.next().expect("sums for every block");
            let width = pair_pass_rows(kind, block_sums);
            let own = passes_own_sums(kind, block_sums);
            for (q, few) in block.chunks(width).enumerate() {
                let out = out.add((rb * PAIR_ROW_BLOCK + q * width) * ld);
                let sums = if own {
                    *blocks.next().expect("sums for every pass")
                } else {
                    block_sums
                };
                ahead.step();
                gemm_group_pair(kind, wg, u, sbs.clone(), few, sums, out, ld);
            }
        }
    }
    debug_assert!(
        blocks.next().is_none(),
        "sums for other rows or super-blocks"
    );
}

/// Bytes a call's passes ask for into L2, a few lines before each pass: the next groups'
/// packed weights, which their unpacking would otherwise wait for from DRAM (the hardware
/// prefetcher does not run a group ahead).
struct PrefetchAhead {
    at: *const u8,
    end: *const u8,
    /// Bytes asked for a step: the whole span over about `steps` steps.
    step: usize,
}

impl PrefetchAhead {
    fn new(bytes: &[u8], steps: usize) -> Self {
        let range = bytes.as_ptr_range();
        // From the first byte's cache line (a group need not start on one).
        let start = range.start.wrapping_sub(range.start as usize % 64);
        Self {
            at: start,
            end: range.end,
            step: bytes.len().div_ceil(steps.max(1)).next_multiple_of(64),
        }
    }

    #[inline(always)]
    fn step(&mut self) {
        let stop = self.at.wrapping_add(self.step).min(self.end);
        while self.at < stop {
            // Safety: a prefetch never faults.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
                _mm_prefetch::<_MM_HINT_T1>(self.at as *const i8)
            };
            self.at = self.at.wrapping_add(64);
        }
    }
}

/// Two whole AVX-512 VNNI groups of `kind` (`wg`: Q6_K or Q5_K), unpacked by
/// [`unpack_group`] (`u`), side by side times activation rows `acts` over super-blocks
/// `sbs`: `out[i · ld + 0..32]`. With sums of 16 or 32 values (`sums`: the rows allow them,
/// [`pair_sums`]) `k512::gemm_k_32x6_unpacked_i16_vnni`, each activation broadcast (and
/// Q6_K's starting sum) serving both groups, up to [`PAIR_ROWS_I16`] rows. Else Q6_K's
/// sums of 8 values run paired (`k512::gemm_q6_k_32x4_unpacked_vnni`, up to
/// [`PAIR_ROWS_HALVES`] rows), Q5_K's one group at a time
/// (`k512::gemm_q45_k_16x8_unpacked_vnni`, up to [`PAIR_ROWS_I16`]: sums of 16 or 8 per
/// super-block; its sums of 8 paired were no faster, with no starting sums to share). The
/// same i32 sums, so the same bits.
///
/// Where `sbs` does not start at 0, `out` holds the totals of the super-blocks before it
/// (this adds to them).
///
/// # Safety
/// Each `wg[c]` is one whole 16-row group of `nsb` super-blocks and `u[c]` its unpacked
/// bytes (`nsb · k512::Q6_UNPACKED_SB` or `k512::Q45_UNPACKED_SB`), `sbs` within `0..nsb`;
/// the activation rows are `nsb · 256` wide; the CPU has AVX-512 VNNI; `out[i · ld + 0..32]`
/// is writable for every row `i` of `acts` (1 to [`PAIR_ROWS_I16`] with sums of 16 or
/// 32 and Q5_K's, else Q6_K's to [`PAIR_ROWS_HALVES`]); `sums` no longer than
/// [`pair_sums`] allows.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_group_pair(
    kind: QKind,
    wg: [&[u8]; 2],
    u: [*const u8; 2],
    sbs: std::ops::Range<usize>,
    acts: &[ActRow],
    sums: PairSums,
    out: *mut f32,
    ld: usize,
) {
    debug_assert!(acts.iter().all(|a| a.qs.len() >= sbs.end * QK_K
        && a.d.len() >= sbs.end
        && a.q6_bias.len() >= sbs.end * 64
        && a.q6_bias8.len() >= sbs.end * 128
        && a.pairs.len() >= sbs.end * 4
        && a.abs_sum16.len() >= sbs.end
        && a.sign_sum32.len() >= sbs.end));
    #[cfg(target_arch = "x86_64")]
    {
        use super::x86::k512;
        const { assert!(PAIR_ROWS_I16 == k512::PAIR_I16_ROWS && PAIR_ROWS_HALVES == k512::PAIR_ROWS) };
        let w = [wg[0].as_ptr(), wg[1].as_ptr()];
        macro_rules! by_rows {
            ($f:ident; $($r:literal)*) => {
                match acts.len() {
                    $($r => k512::$f::<$r>(w, u, sbs, acts, out, ld),)*
                    r => unreachable!("{r} activation rows in one pass"),
                }
            };
            ($f:ident, $q6:literal, $sum:literal; $($r:literal)*) => {
                match acts.len() {
                    $($r => k512::$f::<$r, $q6, $sum>(w, u, sbs, acts, out, ld),)*
                    r => unreachable!("{r} activation rows in one pass"),
                }
            };
        }
        debug_assert!(match (sums, pair_sums(kind, acts, sbs.clone())) {
            (PairSums::Of32, allowed) => allowed == PairSums::Of32,
            (PairSums::Of16, allowed) => allowed != PairSums::Halves,
            (PairSums::Halves, _) => true,
        });
        match (kind, sums) {
            (QKind::Q6K, PairSums::Of16) => {
                by_rows!(gemm_k_32x6_unpacked_i16_vnni, true, 16; 1 2 3 4 5 6)
            }
            (QKind::Q5K, PairSums::Of32) => {
                by_rows!(gemm_k_32x6_unpacked_i16_vnni, false, 32; 1 2 3 4 5 6)
            }
            (QKind::Q5K, PairSums::Of16) => {
                by_rows!(gemm_k_32x6_unpacked_i16_vnni, false, 16; 1 2 3 4 5 6)
            }
            (QKind::Q6K, PairSums::Halves) => by_rows!(gemm_q6_k_32x4_unpacked_vnni; 1 2 3 4),
            (QKind::Q5K, PairSums::Halves) => {
                for c in 0..2 {
                    let (u, sbs, out) = (u[c], sbs.clone(), out.add(16 * c));
                    macro_rules! one_group {
                        ($($r:literal)*) => {
                            match acts.len() {
                                $($r => k512::gemm_q45_k_16x8_unpacked_vnni::<$r>(
                                    u, sbs, acts, out, ld,
                                ),)*
                                r => unreachable!("{r} activation rows in one pass"),
                            }
                        };
                    }
                    one_group!(1 2 3 4 5 6)
                }
            }
            (QKind::Q6K, PairSums::Of32) => unreachable!("Q6_K's sub-blocks are 16 values"),
            _ => unreachable!("{kind:?} groups are not paired"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, wg, u, sbs, acts, sums, out, ld);
        unreachable!("paired groups run only where the x86 kernels do")
    }
}

/// One interleaved group times up to [`rows_per_pass`] activation rows: `out[i · ld + 0..g]`.
/// With `unpacked` (the group from [`unpack_group`]: AVX2's, or AVX-512 VNNI's Q5_K/Q6_K) the
/// kernels read its values there.
///
/// # Safety
/// See the call in [`matmul_k_with`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_group(
    flavour: Flavour,
    kind: QKind,
    wg: &[u8],
    unpacked: Option<*const u8>,
    nsb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    debug_assert!(acts.iter().all(|a| a.qs.len() >= nsb * QK_K
        && a.d.len() >= nsb
        && a.bsums.len() >= nsb * 16
        && a.q6_bias.len() >= nsb * 64
        && a.q6_bias8.len() >= nsb * 128
        && a.pairs.len() >= nsb * 4
        && a.abs_sum16.len() >= nsb));
    #[cfg(target_arch = "x86_64")]
    {
        use super::x86::{k256, k512};
        let w = wg.as_ptr();
        macro_rules! by_rows {
            ($m:ident::$f:ident; $($r:literal)*) => {
                match acts.len() {
                    $($r => $m::$f::<$r>(w, nsb, acts, out, ld),)*
                    r => unreachable!("{r} activation rows in one pass"),
                }
            };
        }
        // The 16-row Q6_K kernels take 4 rows at a time (four sums per row in registers).
        macro_rules! by_fours {
            ($m:ident::$f:ident) => {
                for (c, four) in acts.chunks(4).enumerate() {
                    let out = out.add(4 * c * ld);
                    match four.len() {
                        4 => $m::$f::<4>(w, nsb, four, out, ld),
                        3 => $m::$f::<3>(w, nsb, four, out, ld),
                        2 => $m::$f::<2>(w, nsb, four, out, ld),
                        _ => $m::$f::<1>(w, nsb, four, out, ld),
                    }
                }
            };
        }
        if let Some(u) = unpacked {
            macro_rules! unpacked_rows {
                ($m:ident::$f:ident; $($r:literal)*) => {
                    match acts.len() {
                        $($r => $m::$f::<$r>(w, u, nsb, acts, out, ld),)*
                        r => unreachable!("{r} activation rows in one pass"),
                    }
                };
                ($m:ident::$f:ident, $p:tt; $($r:literal)*) => {
                    match acts.len() {
                        $($r => $m::$f::<$r, $p>(w, u, nsb, acts, out, ld),)*
                        r => unreachable!("{r} activation rows in one pass"),
                    }
                };
            }
            match (flavour, kind) {
                (Flavour::Avx512Vnni, QKind::Q6K) => {
                    unpacked_rows!(k512::gemm_q6_k_16x8_unpacked_vnni; 1 2 3 4 5 6 7 8)
                }
                (Flavour::Avx512Vnni, QKind::Q5K) => {
                    macro_rules! q5_rows {
                        ($($r:literal)*) => {
                            match acts.len() {
                                $($r => k512::gemm_q45_k_16x8_unpacked_vnni::<$r>(
                                    u, 0..nsb, acts, out, ld,
                                ),)*
                                r => unreachable!("{r} activation rows in one pass"),
                            }
                        };
                    }
                    q5_rows!(1 2 3 4 5 6 7 8)
                }
                (Flavour::Avx2, QKind::Q4K) => {
                    unpacked_rows!(k256::gemm_q45_k_8x4_unpacked, false; 1 2 3 4)
                }
                (Flavour::Avx2, QKind::Q5K) => {
                    unpacked_rows!(k256::gemm_q45_k_8x4_unpacked, true; 1 2 3 4)
                }
                (Flavour::Avx2, QKind::Q6K) => {
                    unpacked_rows!(k256::gemm_q6_k_8x4_unpacked; 1 2 3 4)
                }
                _ => unreachable!("no unpacked {flavour:?} kernels for {kind:?}"),
            }
            return;
        }
        match (flavour, kind) {
            (Flavour::Avx512Vnni, QKind::Q4K) => {
                by_rows!(k512::gemm_q4_k_16x8_q8k_vnni; 1 2 3 4 5 6 7 8)
            }
            (Flavour::Avx512Vnni, QKind::Q5K) => {
                by_rows!(k512::gemm_q5_k_16x8_q8k_vnni; 1 2 3 4 5 6 7 8)
            }
            // A lone row on the one-sub-block kernel: the 4-row kernel's R = 1 build read
            // its weights from DRAM at a third of the bandwidth (benches/README, Session 34).
            (Flavour::Avx512Vnni, QKind::Q6K) if (2..=4).contains(&acts.len()) => {
                by_fours!(k512::gemm_q6_k_16x4_q8k_vnni)
            }
            (Flavour::Avx512Vnni, QKind::Q6K) => {
                by_rows!(k512::gemm_q6_k_16x8_q8k_vnni; 1 5 6 7 8)
            }
            (Flavour::Avx512, QKind::Q4K) => by_rows!(k512::gemm_q4_k_16x8_q8k; 1 2 3 4 5 6 7 8),
            (Flavour::Avx512, QKind::Q5K) => by_rows!(k512::gemm_q5_k_16x8_q8k; 1 2 3 4 5 6 7 8),
            (Flavour::Avx512, QKind::Q6K) => by_fours!(k512::gemm_q6_k_16x4_q8k),
            (Flavour::AvxVnni, QKind::Q4K) => by_rows!(k256::gemm_q4_k_8x4_q8k_vnni; 1 2 3 4),
            (Flavour::AvxVnni, QKind::Q5K) => by_rows!(k256::gemm_q5_k_8x4_q8k_vnni; 1 2 3 4),
            (Flavour::AvxVnni, QKind::Q6K) => by_rows!(k256::gemm_q6_k_8x4_q8k_vnni; 1 2 3 4),
            (Flavour::Avx2, QKind::Q4K) => by_rows!(k256::gemm_q4_k_8x4_q8k; 1 2 3 4),
            (Flavour::Avx2, QKind::Q5K) => by_rows!(k256::gemm_q5_k_8x4_q8k; 1 2 3 4),
            (Flavour::Avx2, QKind::Q6K) => by_rows!(k256::gemm_q6_k_8x4_q8k; 1 2 3 4),
            _ => unreachable!("{flavour:?} kernels for {kind:?}"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("matrices are interleaved only where the x86 kernels run")
}
