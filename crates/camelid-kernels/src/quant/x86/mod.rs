//! x86 kernels of the quantized matmul: the AVX2 8-row and the AVX-512 16-row groups, and AMX
//! tiles over the latter for the K formats' prompts.

pub(crate) mod amx;
pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod k256;
pub(crate) mod k512;

/// How far ahead of the block being multiplied the interleaved kernels prefetch weights.
/// On Intel's cores the hardware prefetcher alone left the kernels waiting on memory: with a
/// software prefetch ~2 KiB ahead, 8 activation rows over Q4_1 weights ran ~1.4× faster
/// (qgemm_bench, alternated A/B runs on a 2-core VM). Where the hardware prefetcher streams
/// the weights alone ([`lean_on_hardware_prefetch`]: AMD), the prefetches cost more than they
/// bring in some kernels, and those skip them.
///
/// [`lean_on_hardware_prefetch`]: crate::cpu_features::lean_on_hardware_prefetch
const PREFETCH_BYTES: usize = 2048;

/// The 32-value formats' prefetch: asks for the cache lines of the block `PREFETCH_BYTES`
/// past `blk` (a block is `bytes` long), in a pass of `R` activation rows. Where the hardware
/// prefetcher streams alone a lone row's pass skips it (there it made the pass up to
/// ~2.3× slower), while passes of more rows gained from it (Q4_1 at 8 clients; benches/README,
/// Session 34). Prefetches never fault, so running past the matrix's end is harmless.
#[inline(always)]
unsafe fn prefetch_ahead<const R: usize>(blk: *const u8, bytes: usize) {
    if R == 1 && crate::cpu_features::lean_on_hardware_prefetch() {
        return;
    }
    prefetch_lines(blk, bytes)
}

/// The K formats' prefetch: as [`prefetch_ahead`], skipped in every pass where the hardware
/// prefetcher streams alone (there a K-format decode ran 1.25–1.7× faster without it at 1 and
/// 8 clients, and prompts no slower; benches/README, Session 34).
#[inline(always)]
unsafe fn prefetch_ahead_k(blk: *const u8, bytes: usize) {
    if crate::cpu_features::lean_on_hardware_prefetch() {
        return;
    }
    prefetch_lines(blk, bytes)
}

#[inline(always)]
unsafe fn prefetch_lines(blk: *const u8, bytes: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let at = blk.wrapping_add(PREFETCH_BYTES);
    for line in (0..bytes + 63).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line) as *const i8);
    }
}
