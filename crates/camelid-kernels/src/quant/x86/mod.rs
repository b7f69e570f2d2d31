//! x86 kernels of the quantized matmul: the AVX2 8-row and the AVX-512 16-row groups, and AMX
//! tiles over the latter for the K formats' and the 32-value formats' prompts.

pub(crate) mod amx;
pub(crate) mod amx32;
pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod k256;
pub(crate) mod k512;

/// How far ahead of the block being multiplied the 32-value formats' passes of 5–8 rows
/// prefetch weights into L1 (narrower passes and the K formats prefetch into L2, further
/// ahead). On Intel's cores the hardware prefetcher alone left the kernels waiting on
/// memory: with a software prefetch ~2 KiB ahead, 8 activation rows over Q4_1 weights ran
/// ~1.4× faster (qgemm_bench, alternated A/B runs on a 2-core VM). Where the hardware
/// prefetcher streams the weights alone ([`lean_on_hardware_prefetch`]: AMD), the prefetches
/// cost more than they bring in some kernels, and those skip them.
///
/// [`lean_on_hardware_prefetch`]: crate::cpu_features::lean_on_hardware_prefetch
const PREFETCH_BYTES: usize = 2048;

/// The 32-value formats' prefetch: asks for the cache lines of the block some way past `blk`
/// (a block is `bytes` long), in a pass of `R` activation rows. Where the hardware prefetcher
/// streams alone a lone row's pass skips it (there it made the pass up to ~2.3× slower),
/// while passes of more rows gained from it (Q4_1 at 8 clients; benches/README, Session 34).
/// Elsewhere passes of up to 4 rows ask for it [`L2_PREFETCH_BYTES`] ahead into L2, wider
/// ones `PREFETCH_BYTES` ahead into L1: on Intel (model 167) a 1B Q4_0 model's decode step
/// took 0.89–0.99× the time at 1 row, 0.83–0.95× at 2, 0.93–1.0× at 4 and 1.02–1.04× at 8
/// with the former (Session 60). Prefetches never fault, so running past the matrix's end
/// is harmless.
#[inline(always)]
unsafe fn prefetch_ahead<const R: usize>(blk: *const u8, bytes: usize) {
    use std::arch::x86_64::{_MM_HINT_T0, _MM_HINT_T1};
    if R == 1 && crate::cpu_features::lean_on_hardware_prefetch() {
        return;
    }
    if R <= 4 {
        prefetch_lines::<_MM_HINT_T1>(blk, L2_PREFETCH_BYTES, bytes)
    } else {
        prefetch_lines::<_MM_HINT_T0>(blk, PREFETCH_BYTES, bytes)
    }
}

/// How far ahead the K formats' passes prefetch into L2, each step asking for its share of
/// the super-block's lines. On AMD, where the hardware prefetcher keeps a lone row fed,
/// passes of several rows, which spend several times as long on each line, still waited on
/// memory. Measured on Zen 4 (`qgemm_bench 2`, 2048 columns, weights from DRAM,
/// alternating): 8 rows Q4_K 1.45–1.5×, Q5_K 1.3×, Q6_K 1.2–1.3×, 4 rows 1.25–1.45×, 2 rows
/// 1.0–1.2×, 16 rows 1.05–1.2× against no prefetch; 2 KiB ahead into L1 was 0.8–0.95×,
/// 4 KiB 1.25×, 16–32 KiB 1.3–1.4×, the `T2` hint as `T1`, `NTA` 0.9×. (Spread over the
/// block as below, 4–16 KiB measured alike.) On Intel (model 167, 2 threads) it replaced
/// the whole block asked for 2 KiB ahead into L1 at its first step: a 1B model's decode
/// step (`step_bench`, alternating) took 0.84–0.99× the time at 1 row, 0.90–1.01× at 2,
/// 0.89–0.98× at 8, 0.91–1.07× at 4 (even); 16 KiB ahead was slower than 8 (benches/README,
/// Session 60).
const L2_PREFETCH_BYTES: usize = 8192;

/// How a K-format pass prefetches its weights: [`KPrefetch::for_rows`] once a call, then
/// [`prefetch_ahead_k`] at each step (asked once, out of the kernels' loops: the check inside
/// them made a lone Q6_K row's pass 1.15× slower).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum KPrefetch {
    /// A lone row where the hardware prefetcher streams alone: it ran 1.25–1.7× faster
    /// without (benches/README, Session 34).
    None,
    /// [`L2_PREFETCH_BYTES`] ahead into L2, each step asking for its share of the block's
    /// lines. Issued all at the block's start (45 lines for Q5_K, 53 for Q6_K) they queued
    /// behind each other; spread, the AVX-512 passes of 2–16 rows ran 1.15–1.4× faster from
    /// DRAM on Zen 4 (Session 36). The AVX2 kernels' 8-row groups (half the lines a block) ran
    /// 0.7× so at 4–8 rows there: they ask for the whole block at its first step (`parts` 1).
    Spread,
}

impl KPrefetch {
    #[inline(always)]
    pub(crate) fn for_rows<const R: usize>() -> Self {
        if R == 1 && crate::cpu_features::lean_on_hardware_prefetch() {
            KPrefetch::None
        } else {
            KPrefetch::Spread
        }
    }
}

/// The K formats' prefetch for step `part` of the `parts` a pass takes over the super-block
/// at `blk` (`bytes` long), as `how` says.
#[inline(always)]
unsafe fn prefetch_ahead_k(
    how: KPrefetch,
    blk: *const u8,
    bytes: usize,
    part: usize,
    parts: usize,
) {
    use std::arch::x86_64::_MM_HINT_T1;
    match how {
        KPrefetch::None => {}
        KPrefetch::Spread => {
            debug_assert!(part < parts, "step {part} of {parts}");
            let lines = bytes.div_ceil(64);
            let (l0, l1) = (lines * part / parts, lines * (part + 1) / parts);
            let at = blk.wrapping_add(L2_PREFETCH_BYTES + 64 * l0);
            for l in 0..l1 - l0 {
                std::arch::x86_64::_mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(64 * l) as *const i8);
            }
        }
    }
}

/// Prefetches (with `HINT`) the `bytes` after `blk + ahead`, one cache line at a time.
#[inline(always)]
unsafe fn prefetch_lines<const HINT: i32>(blk: *const u8, ahead: usize, bytes: usize) {
    let at = blk.wrapping_add(ahead);
    for line in (0..bytes + 63).step_by(64) {
        std::arch::x86_64::_mm_prefetch::<HINT>(at.wrapping_add(line) as *const i8);
    }
}
