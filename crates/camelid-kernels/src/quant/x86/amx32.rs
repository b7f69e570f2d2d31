//! AMX tiles for the 4-bit 32-value formats' prompt matmuls (Q4_0, Q4_1 × Q8 activations), on
//! the 16-row groups the AVX-512 kernels read (`quant::weight::Layout`).
//!
//! Every 32-value block has its own f16 scale, which does not fold into integer digits as the
//! K formats' sub-block scales do (`amx.rs`), so each block is its own tile product: a
//! `tdpbsud` of 16 activation rows × 32 bytes by the block's 16 weight rows × 32 nibbles
//! unpacked to bytes (a 16 × 16 tile of exact i32 block sums), stored and scaled by the
//! vector units while the tiles run the next block. The f32 steps are the AVX-512 kernel's
//! (`gemm_q4_16x8_q8`), in its order, on the same integer sums, so a prompt row gets the bits
//! a decode row gets.
//!
//! The AMX instructions are written as `asm!`: Rust's AMX intrinsics are unstable.

use crate::quant::{ActRow, BLOCK};
use std::arch::asm;
use std::arch::x86_64::*;

/// Weight rows per group (the AVX-512 kernels' groups) and activation rows per tile.
pub(crate) const G: usize = 16;

/// Bytes of one block's weight tile: 8 rows (four values of each weight row a row) of 64.
pub(crate) const B_TILE: usize = 512;

/// Bytes of one block of one 16-row activation tile as [`pack_rows`] lays it out: the rows'
/// 32 values (16 × 32), then their scales `d` and `d·Σq` (16 f32 each).
pub(crate) const A_BLOCK: usize = G * BLOCK + 2 * 4 * G;

/// Shapes the tiles: tmm0/tmm1 activations (16 rows × 32 bytes), tmm2/tmm3 weights (8 rows ×
/// 64 bytes), tmm4/tmm5 sums (16 × 16 i32); the two of each alternate between blocks.
///
/// # Safety
/// The CPU has AMX and the process holds its state (`cpu_features::amx`).
pub(crate) unsafe fn configure() {
    crate::tiles::configure_shapes(
        [16, 16, 8, 8, 16, 16, 16, 16],
        [32, 32, 64, 64, 64, 64, 64, 64],
    );
}

pub(crate) use crate::tiles::release;

/// Unpacks `nb` blocks of one 16-row Q4_0/Q4_1 group (320 bytes a block) to their weight
/// tiles at `out` ([`B_TILE`] a block): tile row `k` holds values `4k..4k + 4` of each weight
/// row, the low nibbles of the group's vector `k` for `k < 4`, the high ones of vector `k − 4`.
///
/// # Safety
/// The CPU has AVX-512BW; `w` holds the `nb` blocks, `out` `nb ·` [`B_TILE`] bytes.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn unpack_q4(w: *const u8, nb: usize, out: *mut u8) {
    let low = _mm512_set1_epi8(0x0F);
    for b in 0..nb {
        let (blk, t) = (w.add(b * 20 * G), out.add(b * B_TILE));
        for g in 0..4 {
            let v = _mm512_loadu_si512(blk.add(64 + 64 * g) as *const _);
            _mm512_storeu_si512(t.add(64 * g) as *mut _, _mm512_and_si512(v, low));
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
            _mm512_storeu_si512(t.add(64 * (4 + g)) as *mut _, hi);
        }
    }
}

/// Packs activation rows `rows` (at most 16: one tile; the rest zeros) for [`gemm_q4_tile`]:
/// per block, [`A_BLOCK`] bytes at `out + b·A_BLOCK`.
///
/// # Safety
/// `out` is writable for `nb ·` [`A_BLOCK`] bytes; each row holds `nb` blocks.
pub(crate) unsafe fn pack_rows(rows: &[ActRow], nb: usize, out: *mut u8) {
    std::ptr::write_bytes(out, 0, nb * A_BLOCK);
    for (r, row) in rows.iter().enumerate().take(G) {
        for b in 0..nb {
            let at = out.add(b * A_BLOCK);
            std::ptr::copy_nonoverlapping(
                row.qs.as_ptr().add(b * BLOCK) as *const u8,
                at.add(r * BLOCK),
                BLOCK,
            );
            let scales = at.add(G * BLOCK) as *mut f32;
            *scales.add(r) = *row.d.get_unchecked(b);
            *scales.add(G + r) = *row.s.get_unchecked(b);
        }
    }
}

/// Issues block `b`'s product into the sums tile of parity `b % 2` (tmm4 or tmm5), from the
/// activation and weight tiles of the same parity, which it loads.
#[inline(always)]
unsafe fn block_product(b: usize, a: *const u8, u: *const u8) {
    let (a, u) = (a.add(b * A_BLOCK), u.add(b * B_TILE));
    if b.is_multiple_of(2) {
        asm!(
            "tileloadd tmm0, [{a} + {sa}*1]",
            "tileloadd tmm2, [{u} + {su}*1]",
            "tilezero tmm4",
            "tdpbsud tmm4, tmm0, tmm2",
            a = in(reg) a, sa = in(reg) BLOCK, u = in(reg) u, su = in(reg) 64usize,
            options(nostack, readonly)
        );
    } else {
        asm!(
            "tileloadd tmm1, [{a} + {sa}*1]",
            "tileloadd tmm3, [{u} + {su}*1]",
            "tilezero tmm5",
            "tdpbsud tmm5, tmm1, tmm3",
            a = in(reg) a, sa = in(reg) BLOCK, u = in(reg) u, su = in(reg) 64usize,
            options(nostack, readonly)
        );
    }
}

/// Stores the sums of block `b` (tmm4 or tmm5 by parity) to `sums`.
#[inline(always)]
unsafe fn store_sums(b: usize, sums: *mut i32) {
    if b.is_multiple_of(2) {
        asm!("tilestored [{c} + {s}*1], tmm4", c = in(reg) sums, s = in(reg) 64usize, options(nostack));
    } else {
        asm!("tilestored [{c} + {s}*1], tmm5", c = in(reg) sums, s = in(reg) 64usize, options(nostack));
    }
}

/// One 16-row activation tile (`a`, packed by [`pack_rows`]) times one Q4_0/Q4_1 group (`w`
/// its packed blocks for the scales, `u` the same unpacked by [`unpack_q4`]) over `nb` blocks:
/// `out[r·ldo + 0..16]` for the tile's first `rows` rows.
///
/// # Safety
/// [`configure`] ran on this thread; `a`, `w` and `u` hold `nb` blocks; `out` is writable at
/// `r·ldo + 0..16` for `r < rows ≤ 16`.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub(crate) unsafe fn gemm_q4_tile(
    w: *const u8,
    u: *const u8,
    nb: usize,
    a: *const u8,
    rows: usize,
    out: *mut f32,
    ldo: usize,
) {
    #[repr(C, align(64))]
    struct Sums([i32; G * G]);
    // Written by the tile store before it is read.
    let mut sums = std::mem::MaybeUninit::<Sums>::uninit();
    let sums = sums.as_mut_ptr() as *mut i32;
    let mut acc = [_mm512_setzero_ps(); G];
    block_product(0, a, u);
    for b in 0..nb {
        if b + 1 < nb {
            block_product(b + 1, a, u);
        }
        store_sums(b, sums);
        let blk = w.add(b * 20 * G);
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
        let m = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32) as *const __m256i));
        let scales = a.add(b * A_BLOCK + G * BLOCK) as *const f32;
        for (r, acc) in acc.iter_mut().enumerate() {
            let p = _mm512_cvtepi32_ps(_mm512_load_si512(sums.add(G * r) as *const _));
            let da = _mm512_set1_ps(*scales.add(r));
            *acc = _mm512_fmadd_ps(p, _mm512_mul_ps(d, da), *acc);
            *acc = _mm512_fmadd_ps(m, _mm512_set1_ps(*scales.add(G + r)), *acc);
        }
    }
    for (r, v) in acc.iter().enumerate().take(rows) {
        _mm512_storeu_ps(out.add(r * ldo), *v);
    }
}
