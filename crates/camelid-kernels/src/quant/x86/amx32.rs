//! AMX tiles for the 32-value formats' prompt matmuls (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 × Q8
//! activations), on the 16-row groups the AVX-512 kernels read (`quant::weight::Layout`).
//!
//! Every 32-value block has its own f16 scale, which does not fold into integer digits as the
//! K formats' sub-block scales do (`amx.rs`), so each block is its own tile product: 16
//! activation rows × 32 bytes by the block's 16 weight rows × 32 values as bytes (a 16 × 16
//! tile of exact i32 block sums), stored and scaled by the vector units while the tiles run
//! the next block. Q4/Q5 values are unpacked to unsigned bytes (`tdpbsud`), Q8_0's are read
//! as they lie (`tdpbssd`: its groups already hold four values of each row a 64-byte row).
//! The f32 steps are the AVX-512 kernels' (`gemm_q4_16x8_q8`, `gemm_q5_16x8_q8`,
//! `gemm_q8_0_16x8_q8`), in their order, on the same integer sums, so a prompt row gets the
//! bits a decode row gets.
//!
//! The AMX instructions are written as `asm!`: Rust's AMX intrinsics are unstable.

use crate::quant::{ActRow, BLOCK};
use std::arch::asm;
use std::arch::x86_64::*;

/// Weight rows per group (the AVX-512 kernels' groups) and activation rows per tile.
pub(crate) const G: usize = 16;

/// Bytes of one block's weight tile: 8 rows (four values of each weight row a row) of 64.
pub(crate) const B_TILE: usize = 512;

/// The formats' kernels: Q4_0/Q4_1 and Q5_0/Q5_1 (unpacked, with the `m·Σa` term), Q8_0.
pub(crate) const Q4: u8 = 4;
pub(crate) const Q5: u8 = 5;
pub(crate) const Q8: u8 = 8;

/// Bytes of one block of a 16-row group of format `kind`.
pub(crate) const fn block_bytes(kind: u8) -> usize {
    match kind {
        Q4 => 20 * G,
        Q5 => 24 * G,
        _ => 34 * G,
    }
}

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

/// Unpacks `nb` blocks of one 16-row Q4_0/Q4_1 (`FIFTH = false`, 320 bytes a block) or
/// Q5_0/Q5_1 group (384) to their weight tiles at `out` ([`B_TILE`] a block): tile row `k`
/// holds values `4k..4k + 4` of each weight row, the low nibbles of the group's vector `k` for
/// `k < 4`, the high ones of vector `k − 4` (Q5: plus 16 where the value's fifth bit is set).
///
/// # Safety
/// The CPU has AVX-512BW; `w` holds the `nb` blocks, `out` `nb ·` [`B_TILE`] bytes.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn unpack<const FIFTH: bool>(w: *const u8, nb: usize, out: *mut u8) {
    let low = _mm512_set1_epi8(0x0F);
    let (bytes, nibbles) = if FIFTH { (24 * G, 128) } else { (20 * G, 64) };
    for b in 0..nb {
        let (blk, t) = (w.add(b * bytes), out.add(b * B_TILE));
        for g in 0..4 {
            let v = _mm512_loadu_si512(blk.add(nibbles + 64 * g) as *const _);
            // Q5's values as the AVX-512 passes read them.
            let (lo, hi) = if FIFTH {
                let hb = _mm512_loadu_si512(blk.add(64) as *const _);
                super::avx512::q5_values(v, hb, g)
            } else {
                (
                    _mm512_and_si512(v, low),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(v), low),
                )
            };
            _mm512_storeu_si512(t.add(64 * g) as *mut _, lo);
            _mm512_storeu_si512(t.add(64 * (4 + g)) as *mut _, hi);
        }
    }
}

/// Packs activation rows `rows` (at most 16: one tile) for [`gemm_tile`]: per block,
/// [`A_BLOCK`] bytes at `out + b·A_BLOCK`. The rows past `rows.len()` are left as they are:
/// the caller hands zeroed memory.
///
/// # Safety
/// `out` is writable for `nb ·` [`A_BLOCK`] bytes, zeroed; each row holds `nb` blocks.
pub(crate) unsafe fn pack_rows(rows: &[ActRow], nb: usize, out: *mut u8) {
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
/// activation and weight tiles of the same parity, which it loads: the weight tile of block
/// `b` at `u + b·u_stride`; `SIGNED` weights (Q8_0) by `tdpbssd`, else `tdpbsud`.
#[inline(always)]
unsafe fn block_product<const SIGNED: bool>(b: usize, a: *const u8, u: *const u8, u_stride: usize) {
    let (a, u) = (a.add(b * A_BLOCK), u.add(b * u_stride));
    macro_rules! product {
        ($ta:literal, $tb:literal, $tc:literal, $op:literal) => {
            asm!(
                concat!("tileloadd ", $ta, ", [{a} + {sa}*1]"),
                concat!("tileloadd ", $tb, ", [{u} + {su}*1]"),
                concat!("tilezero ", $tc),
                concat!($op, " ", $tc, ", ", $ta, ", ", $tb),
                a = in(reg) a, sa = in(reg) BLOCK, u = in(reg) u, su = in(reg) 64usize,
                options(nostack, readonly)
            )
        };
    }
    match (b.is_multiple_of(2), SIGNED) {
        (true, false) => product!("tmm0", "tmm2", "tmm4", "tdpbsud"),
        (false, false) => product!("tmm1", "tmm3", "tmm5", "tdpbsud"),
        (true, true) => product!("tmm0", "tmm2", "tmm4", "tdpbssd"),
        (false, true) => product!("tmm1", "tmm3", "tmm5", "tdpbssd"),
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

/// One 16-row activation tile (`a`, packed by [`pack_rows`]) times one group of format
/// `KIND` ([`Q4`], [`Q5`], [`Q8`]; `w` its packed blocks, `u` its weight tiles: unpacked by
/// [`unpack`], or Q8_0's `w + 32` as they lie) over `nb` blocks: `out[r·ldo + 0..16]` for the
/// tile's first `rows` rows.
///
/// # Safety
/// [`configure`] ran on this thread; `a`, `w` and `u` hold `nb` blocks; `out` is writable at
/// `r·ldo + 0..16` for `r < rows ≤ 16`.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub(crate) unsafe fn gemm_tile<const KIND: u8>(
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
    let q8 = KIND == Q8;
    let u_stride = if q8 { block_bytes(Q8) } else { B_TILE };
    // Written by the tile store before it is read.
    let mut sums = std::mem::MaybeUninit::<Sums>::uninit();
    let sums = sums.as_mut_ptr() as *mut i32;
    let mut acc = [_mm512_setzero_ps(); G];
    let product = |b: usize| {
        if q8 {
            block_product::<true>(b, a, u, u_stride)
        } else {
            block_product::<false>(b, a, u, u_stride)
        }
    };
    product(0);
    for b in 0..nb {
        if b + 1 < nb {
            product(b + 1);
        }
        store_sums(b, sums);
        let blk = w.add(b * block_bytes(KIND));
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
        let m = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32) as *const __m256i));
        let scales = a.add(b * A_BLOCK + G * BLOCK) as *const f32;
        for (r, acc) in acc.iter_mut().enumerate() {
            let p = _mm512_cvtepi32_ps(_mm512_load_si512(sums.add(G * r) as *const _));
            let da = _mm512_set1_ps(*scales.add(r));
            *acc = _mm512_fmadd_ps(p, _mm512_mul_ps(d, da), *acc);
            if !q8 {
                *acc = _mm512_fmadd_ps(m, _mm512_set1_ps(*scales.add(G + r)), *acc);
            }
        }
    }
    for (r, v) in acc.iter().enumerate().take(rows) {
        _mm512_storeu_ps(out.add(r * ldo), *v);
    }
}
