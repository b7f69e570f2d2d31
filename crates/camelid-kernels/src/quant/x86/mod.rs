//! x86 kernels of the quantized matmul: the AVX2 8-row and the AVX-512 16-row groups, and AMX
//! tiles over the latter for the K formats' prompts.

pub(crate) mod amx;
pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod k256;
pub(crate) mod k512;

/// How far ahead of the block being multiplied the interleaved kernels prefetch weights.
/// The hardware prefetcher alone left the kernels waiting on memory: with a software
/// prefetch ~2 KiB ahead, 8 activation rows over Q4_1 weights ran ~1.4× faster (qgemm_bench,
/// alternated A/B runs on this 2-core VM).
const PREFETCH_BYTES: usize = 2048;

/// Asks for the cache lines of the block `PREFETCH_BYTES` past `blk` (a block is `bytes`
/// long). Prefetches never fault, so running past the matrix's end is harmless.
#[inline(always)]
unsafe fn prefetch_ahead(blk: *const u8, bytes: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let at = blk.wrapping_add(PREFETCH_BYTES);
    for line in (0..bytes + 63).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line) as *const i8);
    }
}
