//! The 32-value formats' (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) prompt matmuls on AMX tiles
//! (`x86::amx32`): when they run, and the driver that packs the activations, unpacks the
//! weight groups and splits the groups over the threads.

use super::{run_split, ActRow, QKind, QWeight, BLOCK};
use crate::{Line, OutPtr};

/// Activation rows from which a 32-value format's matmul runs on AMX tiles where the CPU has them
/// (below, the AVX-512 passes): a call packs its activations and unpacks its weights once,
/// and a tile of fewer rows multiplies zeros. Measured (`qgemm_bench 2 q4_0`, 2048 columns,
/// 700 MB of weights from DRAM, GMAC/s AVX-512 / AMX, two runs): 8 rows 143 / 111, 12 rows
/// 140–177 / 145–163, 16 rows 141–151 / 198–210; with the weights in L3, 64–256 rows
/// 106–174 / 226–382.
pub(super) const AMX_MIN_ROWS: usize = 16;

/// Groups a task unpacks together and runs each activation tile over before the next tile:
/// their unpacked weights (4 × 512 bytes a block) stay in L2 and the tile's activations in L1.
const RUN_GROUPS: usize = 4;

/// Whether `w × m` rows goes to [`matmul_amx`].
pub(super) fn takes(w: &QWeight, m: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use super::weight::Layout;
        matches!(w.layout, Layout::Interleaved { group: 16, .. })
            && m >= AMX_MIN_ROWS
            && !w.kind.is_k()
            && crate::cpu_features::amx()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, m);
        false
    }
}

/// The packed activations, kept between calls (a prompt's are megabytes: not allocated and
/// faulted in again for every matmul).
static PACKED: std::sync::Mutex<Vec<Line>> = std::sync::Mutex::new(Vec::new());

thread_local! {
    /// A task's unpacked weight groups.
    static UNPACKED: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out (rows.len(), w.rows) = rows · Wᵀ` for a 32-value format's matrix in 16-row groups,
/// on AMX tiles.
///
/// # Panics
/// Where [`takes`] is false for `w` (the layout or the CPU).
pub(super) fn matmul_amx(w: &QWeight, rows: &[ActRow], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::weight::Layout;
        use super::x86::amx32::{self, A_BLOCK, B_TILE, G, Q4, Q5, Q8};
        assert!(
            crate::cpu_features::amx(),
            "AMX tiles on a CPU without them"
        );
        let Layout::Interleaved { group: 16, data } = &w.layout else {
            panic!("AMX tiles read 16-row groups");
        };
        let kind = match w.kind {
            QKind::Q4_0 | QKind::Q4_1 => Q4,
            QKind::Q5_0 | QKind::Q5_1 => Q5,
            QKind::Q8_0 => Q8,
            k => panic!("{k:?}: the K formats' tiles are kgemm's"),
        };
        let (n, m, nb) = (w.rows, rows.len(), w.cols / BLOCK);
        assert_eq!(out.len(), m * n);
        let group_bytes = nb * amx32::block_bytes(kind);
        assert_eq!(group_bytes, nb * w.kind.group_block_bytes(G));
        let tiles = m.div_ceil(G);
        let tile_bytes = nb * A_BLOCK;
        let mut packed = std::mem::take(&mut *PACKED.lock().unwrap());
        packed.clear();
        packed.resize((tiles * tile_bytes).div_ceil(64), Line([0; 64]));
        let base = packed.as_mut_ptr() as *mut u8;
        for (t, tile_rows) in rows.chunks(G).enumerate() {
            // Safety: tile t's bytes lie within `packed` (sized for every tile above, and
            // zeroed by the resize: the padding rows stay zero), and
            // each row holds `nb` blocks (`QActs` of `w.cols`).
            unsafe { amx32::pack_rows(tile_rows, nb, base.add(t * tile_bytes)) };
        }
        let packed_ref = &packed;
        let ptr = OutPtr(out.as_mut_ptr());
        let work = |g0: usize, g1: usize| {
            UNPACKED.with(|u| {
                let u = &mut *u.borrow_mut();
                u.resize((RUN_GROUPS * nb * B_TILE).div_ceil(64), Line([0; 64]));
                let u = u.as_mut_ptr() as *mut u8;
                let a = packed_ref.as_ptr() as *const u8;
                // Safety: this CPU has AMX (asserted); the groups read lie in `data`, their
                // unpacked tiles in `u` (RUN_GROUPS of them), each activation tile in `packed`;
                // the writes stay in rows < m and in the columns of this task's groups.
                unsafe {
                    amx32::configure();
                    for h0 in (g0..g1).step_by(RUN_GROUPS) {
                        let h1 = (h0 + RUN_GROUPS).min(g1);
                        for gi in h0..h1 {
                            let wg = data.as_ptr().add(gi * group_bytes);
                            let ug = u.add((gi - h0) * nb * B_TILE);
                            match kind {
                                Q4 => amx32::unpack::<false>(wg, nb, ug),
                                Q5 => amx32::unpack::<true>(wg, nb, ug),
                                _ => {} // Q8_0's tiles are read where they lie
                            }
                        }
                        for t in 0..tiles {
                            let at = a.add(t * tile_bytes);
                            let real = G.min(m - t * G);
                            for gi in h0..h1 {
                                let wg = data.as_ptr().add(gi * group_bytes);
                                let o = ptr.at(t * G * n + gi * G);
                                match kind {
                                    Q4 | Q5 => {
                                        let ug = u.add((gi - h0) * nb * B_TILE);
                                        if kind == Q4 {
                                            amx32::gemm_tile::<Q4>(wg, ug, nb, at, real, o, n)
                                        } else {
                                            amx32::gemm_tile::<Q5>(wg, ug, nb, at, real, o, n)
                                        }
                                    }
                                    _ => amx32::gemm_tile::<Q8>(wg, wg.add(32), nb, at, real, o, n),
                                }
                            }
                        }
                    }
                    amx32::release();
                }
            })
        };
        run_split(n / G, m * n * nb, work);
        *PACKED.lock().unwrap() = packed;
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, rows, out);
        unreachable!("AMX kernels are x86 only")
    }
}
