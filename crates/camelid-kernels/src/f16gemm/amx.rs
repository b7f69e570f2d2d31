//! 16-bit weights on AMX-BF16 tiles: one `tdpbf16ps` multiplies 16 activation rows × 32
//! values by 32 values of 16 weight rows (16 × 16 × 32 products) where an f32 FMA does 16.
//!
//! The tiles multiply bfloat16 (8 significant bits) exactly into f32 sums, so each operand
//! is split into bf16 parts whose sum is (nearly) the operand:
//! - an f32 activation `x = xh + xl` (each rounded to nearest: `|x − xh − xl| ≤ 2⁻¹⁸·|x|`),
//!   split once per call;
//! - an F16 weight `w = wh + wl` exactly (`wh` its top 8 significant bits, `wl` the other 3),
//!   split per 16 × 32 tile in registers right before it is used, so the weights stay 2 bytes
//!   a value in memory; bf16 weights need no split.
//!
//! A row's sums take `xh·wh + xl·wh + xh·wl` (F16) or `xh·w + xl·w` (bf16) per 32-value
//! chunk, in that order, chunk after chunk: `xl·wl` (< 2⁻¹⁶ of the product: `wl < 2⁻⁷·|w|`,
//! `|xl| ≤ 2⁻⁹·|x|`) is left out. Each product is off by less than `(2⁻¹⁶ + 2⁻¹⁸)·|x·w|` (ggml
//! rounds activations to f16, 2⁻¹¹), and the f32 sums round as an FMA chain's do. A row's
//! arithmetic does not depend on how many rows the call has or where the row sits, so a
//! decode, a batch and a chunked prompt give the same bits
//! (`amx_rows_do_not_depend_on_the_batch`).
//!
//! Layout: groups of 16 weight rows; per group, per pair of columns `(2p, 2p + 1)`, the 16
//! rows' two values side by side (32 values, one 64-byte tile row: `tdpbf16ps`'s pairs), the
//! width padded with zeros to whole 32-value chunks. A chunk of a group is one 1 KiB tile.

use std::arch::asm;
use std::arch::x86_64::*;

/// Weight rows per group; activation rows per tile.
pub(super) const G: usize = 16;
/// Values of one tile row: the width is padded to whole chunks.
pub(super) const CHUNK: usize = 32;
/// Weight values in one tile: a chunk of a group.
const TILE_VALUES: usize = G * CHUNK;

/// Tile registers: tmm0–3 sums, tmm4/5 the activations' high/low parts, tmm6/7 the weights'.
/// `rows` activation rows a block (1..=16).
///
/// # Safety
/// `cpu_features::amx_bf16()`.
pub(super) unsafe fn configure(rows: usize) {
    let r = rows as u8;
    crate::tiles::configure([r, r, r, r, r, r, 16, 16]);
}

pub(super) use crate::tiles::release;

/// `row` (k f32) into its bf16 parts `hi`, `lo` (zeros past `k` up to `kp`), 32-value chunk
/// `c` at `c · chunk_stride`: a tile's rows then lie side by side (rows `2·kp` bytes apart
/// would all fall in one L1 set).
///
/// # Safety
/// AVX-512 BF16; `row` readable for `k`, `hi` and `lo` writable for `kp / 32` chunks.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn split_row(
    row: *const f32,
    k: usize,
    (hi, lo): (*mut u16, *mut u16),
    kp: usize,
    chunk_stride: usize,
) {
    for j in (0..kp).step_by(16) {
        let at = j / CHUNK * chunk_stride + j % CHUNK;
        let live = k.saturating_sub(j).min(16);
        let mask: __mmask16 = ((1u32 << live) - 1) as u16;
        // Past the row (its last chunk, `k % 32` of 1 to 16) the mask loads nothing: the
        // address is only formed, with `wrapping_add` (`add` past the allocation's end is UB).
        let v = _mm512_maskz_loadu_ps(mask, row.wrapping_add(j));
        let h = _mm512_cvtneps_pbh(v);
        let l = _mm512_cvtneps_pbh(_mm512_sub_ps(v, _mm512_cvtpbh_ps(h)));
        _mm256_storeu_si256(
            hi.add(at) as *mut _,
            std::mem::transmute::<__m256bh, __m256i>(h),
        );
        _mm256_storeu_si256(
            lo.add(at) as *mut _,
            std::mem::transmute::<__m256bh, __m256i>(l),
        );
    }
}

/// One F16 weight tile at `src` into its exact bf16 parts: `wh` the top 8 significant bits
/// (a mask: no rounding), `wl = w − wh` (3 bits, exact in bf16).
#[inline(always)]
unsafe fn split_f16_tile(src: *const u16, hi: *mut u16, lo: *mut u16) {
    let top = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    // The upper 16 bits of each f32 lane of two vectors: a bf16 exactly where the value fits.
    let odd = _mm512_set_epi16(
        63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25, 23, 21, 19,
        17, 15, 13, 11, 9, 7, 5, 3, 1,
    );
    for r in 0..G {
        let p = src.add(r * CHUNK);
        let a = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const _));
        let b = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(16) as *const _));
        let ah = _mm512_and_si512(_mm512_castps_si512(a), top);
        let bh = _mm512_and_si512(_mm512_castps_si512(b), top);
        let al = _mm512_sub_ps(a, _mm512_castsi512_ps(ah));
        let bl = _mm512_sub_ps(b, _mm512_castsi512_ps(bh));
        let wh = _mm512_permutex2var_epi16(ah, odd, bh);
        let wl = _mm512_permutex2var_epi16(_mm512_castps_si512(al), odd, _mm512_castps_si512(bl));
        _mm512_store_si512(hi.add(r * CHUNK) as *mut _, wh);
        _mm512_store_si512(lo.add(r * CHUNK) as *mut _, wl);
    }
}

/// A tile's worth of bf16 values, aligned for the stores above.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Tile([u16; TILE_VALUES]);

/// `tileloadd tmm$t` from `p`, rows `stride` bytes apart.
macro_rules! load {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"),
            p = in(reg) $p, s = in(reg) $stride, options(nostack, readonly))
    };
}

/// The chunk's products into sums tile `c`: `xh·wh + xl·wh (+ xh·wl)`.
#[inline(always)]
unsafe fn products<const SPLIT: bool>(c: usize) {
    macro_rules! go {
        ($c:literal) => {{
            asm!(
                concat!("tdpbf16ps tmm", $c, ", tmm4, tmm6"),
                concat!("tdpbf16ps tmm", $c, ", tmm5, tmm6"),
                options(nostack, nomem)
            );
            if SPLIT {
                asm!(
                    concat!("tdpbf16ps tmm", $c, ", tmm4, tmm7"),
                    options(nostack, nomem)
                );
            }
        }};
    }
    match c {
        0 => go!(0),
        1 => go!(1),
        2 => go!(2),
        _ => go!(3),
    }
}

/// Sums tile `c` to `out` (rows of 16 f32).
#[inline(always)]
unsafe fn store(c: usize, out: *mut [f32; G]) {
    macro_rules! go {
        ($c:literal) => {
            asm!(concat!("tilestored [{p} + {s}*1], tmm", $c),
                p = in(reg) out, s = in(reg) 64usize, options(nostack))
        };
    }
    match c {
        0 => go!(0),
        1 => go!(1),
        2 => go!(2),
        _ => go!(3),
    }
}

/// How far ahead of the chunk being multiplied each group's weights are prefetched.
const PREFETCH_BYTES: usize = 2048;

/// Sums of `BLOCKS` activation blocks × `GROUPS` weight groups (`BLOCKS · GROUPS ≤ 4`, one
/// of them 1) into `res[b · GROUPS + g]` (rows of the block × the group's 16 rows).
/// `w`: the first group (groups `16·kp` values apart); `xh`/`xl`: the first block of the
/// activations' parts as [`split_row`] lays them out (a block's tile for chunk `c` at
/// `c · rows · 32`, blocks `16 · kp` apart).
///
/// # Safety
/// [`configure`] ran on this thread with the blocks' row count; every group and block row
/// the tiles read is there (`kp` wide, a multiple of [`CHUNK`]).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,f16c")]
pub(super) unsafe fn gemm<const SPLIT: bool, const GROUPS: usize, const BLOCKS: usize>(
    w: *const u16,
    kp: usize,
    rows: usize,
    xh: *const u16,
    xl: *const u16,
    res: &mut [[[f32; G]; G]; 4],
) {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
    let gstride = G * kp;
    let tile_rows = if BLOCKS == 1 { rows } else { G };
    // Two stages of split weight tiles: group-chunk i + 1 is split before i's tiles load and
    // multiply, so the split's vector work may overlap the tile unit's (measured the same as
    // splitting right before the loads, benches/README Session 31).
    let mut buf = [Tile([0; TILE_VALUES]); 4];
    let buf = buf.as_mut_ptr();
    // Group-chunk i's high and low tiles.
    let wh = |i: usize| buf.add(2 * (i % 2)) as *mut u16;
    let wl = |i: usize| buf.add(2 * (i % 2) + 1) as *mut u16;
    let items = kp / CHUNK * GROUPS;
    // Group-chunk i = (chunk c, group g) at c · GROUPS + g.
    let src = |i: usize| w.add((i % GROUPS) * gstride + (i / GROUPS) * TILE_VALUES);
    let prepare = |i: usize| {
        let ahead = (src(i) as *const i8).wrapping_add(PREFETCH_BYTES);
        for line in (0..TILE_VALUES * 2).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
        }
        if SPLIT {
            split_f16_tile(src(i), wh(i), wl(i));
        }
    };
    prepare(0);
    for i in 0..items {
        if i + 1 < items {
            prepare(i + 1);
        }
        let (c, g) = (i / GROUPS, i % GROUPS);
        if SPLIT {
            load!(6, wh(i), 64usize);
            load!(7, wl(i), 64usize);
        } else {
            load!(6, src(i), 64usize);
        }
        if BLOCKS == 1 {
            if g == 0 {
                load!(4, xh.add(c * tile_rows * CHUNK), 64usize);
                load!(5, xl.add(c * tile_rows * CHUNK), 64usize);
            }
            products::<SPLIT>(g);
        } else {
            for b in 0..BLOCKS {
                let off = b * G * kp + c * G * CHUNK;
                load!(4, xh.add(off), 64usize);
                load!(5, xl.add(off), 64usize);
                products::<SPLIT>(b);
            }
        }
    }
    for (c, t) in res.iter_mut().enumerate().take(GROUPS * BLOCKS) {
        store(c, t.as_mut_ptr());
    }
}
