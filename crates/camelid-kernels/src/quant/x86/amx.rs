//! AMX tiles for the K formats' prompt matmuls (Q4_K, Q5_K, Q6_K × Q8_K activations), on the
//! 16-row groups the AVX-512 kernels read (`quant::krepack`).
//!
//! One `tdpbsud`/`tdpbssd` multiplies a 16 × 64 tile of i8 activations by a tile of 16 weight
//! rows × 64 values (four values of each row per 64-byte tile row) into 16 × 16 i32 sums:
//! 16 384 products, ~7.5× what `vpdpbusd` peaks at per cycle (benches/README, Session 28).
//! A K format scales every sub-block (32 values; Q6_K 16), which would cost a tile store and
//! a vector pass per sub-block; instead each group is unpacked once per call with its
//! sub-block scales folded into the weight bytes, and whole super-blocks sum in the tile
//! registers. `q·sc` does not fit a byte, so the scale is split into digits, each product with
//! a digit fits, and the digits' tiles are summed with their weights afterwards:
//! - Q4_K/Q5_K (`q` 0..31, `sc` 0..63): `sc = sl + 8·sh` (0..7 each), two unsigned tiles.
//!   The mins' sum `Σ_j m_j·Σa_j` is not a tile product: the vector epilogue takes it from the
//!   activations' paired sub-block sums (`QActs::pairs`), as the VNNI kernels do. With two
//!   tiles a quarter, 32 activation rows fit the eight tile registers (two activation tiles,
//!   two weight tiles, four sums), so each weight tile loaded feeds two products.
//! - Q6_K (`q − 32` in −32..31, `sc` −128..127): balanced base 7,
//!   `sc = e0 + 7·e1 + 49·e2` (each −3..3), three signed tiles.
//!
//! These are exact integer identities: the super-block sums equal the VNNI kernels' (which sum
//! each sub-block exactly too), and the f32 steps after them are the same operations in the
//! same order, so a row's outputs do not depend on which kernel ran (batched prompts, chunked
//! prompts and single decodes agree to the bit).
//!
//! The AMX instructions are written as `asm!`: Rust's AMX intrinsics are unstable.

use crate::quant::{ActRow, QK_K};
use std::arch::asm;
use std::arch::x86_64::*;

/// Weight rows per group (the AVX-512 kernels' groups) and activation rows per tile.
pub(crate) const G: usize = 16;
/// Bytes of one tile: 16 rows of 64.
const TILE: usize = 1024;

/// Weight tiles per 64 values: Q4_K/Q5_K two scale digits, Q6_K three.
const Q45_TILES: usize = 2;
const Q6_TILES: usize = 3;

/// Bytes of one unpacked super-block of one group (the larger kind's): four 64-value
/// quarters of [`Q6_TILES`] tiles.
pub(crate) const UNPACKED_SB_BYTES: usize = 4 * Q6_TILES * TILE;

/// Shapes tmm0–7 as the one tile every kernel here uses: 16 rows × 64 bytes.
///
/// # Safety
/// The CPU has AMX and the process holds its state (`cpu_features::amx`).
pub(crate) unsafe fn configure() {
    crate::tiles::configure([16; 8]);
}

pub(crate) use crate::tiles::release;

/// `q · s` per byte, for products below 256.
#[inline(always)]
unsafe fn mul_bytes(q: __m512i, s: __m512i) -> __m512i {
    let even = _mm512_mullo_epi16(q, s);
    let odd = _mm512_mullo_epi16(_mm512_srli_epi16::<8>(q), _mm512_srli_epi16::<8>(s));
    _mm512_mask_blend_epi8(0xAAAA_AAAA_AAAA_AAAA, even, _mm512_slli_epi16::<8>(odd))
}

/// `q · s` per signed byte, for products in −128..127.
#[inline(always)]
unsafe fn mul_bytes_signed(q: __m512i, s: __m512i) -> __m512i {
    // The low byte of a 16-bit product is the low byte of the signed product, for either
    // operand's high byte; the odd bytes come down by an arithmetic shift first.
    let even = _mm512_mullo_epi16(q, s);
    let odd = _mm512_mullo_epi16(_mm512_srai_epi16::<8>(q), _mm512_srai_epi16::<8>(s));
    _mm512_mask_blend_epi8(0xAAAA_AAAA_AAAA_AAAA, even, _mm512_slli_epi16::<8>(odd))
}

/// 16 scale bytes at `p` (one per row), each row's in all four of its bytes.
#[inline(always)]
unsafe fn spread(p: *const u8) -> __m512i {
    let lanes = _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i));
    _mm512_mullo_epi32(lanes, _mm512_set1_epi32(0x0101_0101))
}

/// Unpacks one super-block of a Q4_K (`FIFTH = false`) or Q5_K group at `blk` into `out`:
/// per 64-value quarter `p` (sub-blocks `2p`, `2p + 1`), the tiles of `q·sl` and of `q·sh`.
/// Tile row `g` holds values `4g..4g + 4` of the quarter for each of the 16 weight rows.
///
/// # Safety
/// The CPU has AVX-512BW; `blk` holds the packed super-block, `out` [`UNPACKED_SB_BYTES`].
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn unpack_q45<const FIFTH: bool>(blk: *const u8, out: *mut u8) {
    let qs_at = if FIFTH { 52 * G } else { 20 * G };
    let low = _mm512_set1_epi8(0x0F);
    let seven = _mm512_set1_epi8(7);
    for p in 0..4 {
        let s = [
            spread(blk.add(4 * G + G * 2 * p)),
            spread(blk.add(4 * G + G * (2 * p + 1))),
        ];
        let sl = [_mm512_and_si512(s[0], seven), _mm512_and_si512(s[1], seven)];
        let sh = [
            _mm512_and_si512(_mm512_srli_epi16::<3>(s[0]), seven),
            _mm512_and_si512(_mm512_srli_epi16::<3>(s[1]), seven),
        ];
        let lo_tile = out.add(Q45_TILES * p * TILE);
        let hi_tile = lo_tile.add(TILE);
        for g in 0..8 {
            let v = _mm512_loadu_si512(blk.add(qs_at + (8 * p + g) * 4 * G) as *const _);
            let mut q = [
                _mm512_and_si512(v, low),
                _mm512_and_si512(_mm512_srli_epi16::<4>(v), low),
            ];
            if FIFTH {
                let qh = _mm512_loadu_si512(blk.add(20 * G + g * 4 * G) as *const _);
                for (h, qv) in q.iter_mut().enumerate() {
                    let bit = _mm512_set1_epi8((1u8 << (2 * p + h)) as i8);
                    let set = _mm512_test_epi8_mask(qh, bit);
                    *qv = _mm512_mask_add_epi8(*qv, set, *qv, _mm512_set1_epi8(16));
                }
            }
            for h in 0..2 {
                let row = 64 * (g + 8 * h);
                _mm512_storeu_si512(lo_tile.add(row) as *mut _, mul_bytes(q[h], sl[h]));
                _mm512_storeu_si512(hi_tile.add(row) as *mut _, mul_bytes(q[h], sh[h]));
            }
        }
    }
}

/// Q6_K's counterpart of [`unpack_q45`]: per quarter `p` (sub-blocks `4p..4p + 4`, 16 values
/// each), the tiles of `(q − 32)·e0`, `·e1`, `·e2`.
///
/// # Safety
/// As [`unpack_q45`].
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn unpack_q6(blk: *const u8, out: *mut u8) {
    let thirty_two = _mm512_set1_epi8(32);
    // Balanced base-7 digits of each sub-block's scale, each row's in its four bytes.
    let mut e = [[_mm512_setzero_si512(); 3]; 16];
    for (s, es) in e.iter_mut().enumerate() {
        let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(blk.add(2 * G + G * s) as *const __m128i));
        // sc + 171 is 0..342: its base-7 digits less 3.
        let mut u = _mm512_add_epi32(sc, _mm512_set1_epi32(171));
        for d in es.iter_mut() {
            // u / 7 for u < 343, as (u · 9363) >> 16.
            let div = _mm512_srli_epi32::<16>(_mm512_mullo_epi32(u, _mm512_set1_epi32(9363)));
            let digit = _mm512_sub_epi32(
                _mm512_sub_epi32(u, _mm512_mullo_epi32(div, _mm512_set1_epi32(7))),
                _mm512_set1_epi32(3),
            );
            *d = _mm512_mullo_epi32(
                _mm512_and_si512(digit, _mm512_set1_epi32(0xFF)),
                _mm512_set1_epi32(0x0101_0101),
            );
            u = div;
        }
    }
    for n in 0..2 {
        for g in 0..8 {
            // Values 128n + 32k + 4g.. for k = 0..4 (as the VNNI kernel reads them).
            let vals = super::k512::q6_values(blk.add(18 * G + (8 * n + g) * 12 * G));
            for (k, val) in vals.iter().enumerate() {
                // Value 128n + 32k + 4g: quarter 2n + k/2, tile row 8(k % 2) + g, sub-
                // block 8n + 2k + g/4.
                let centred = _mm512_sub_epi8(*val, thirty_two);
                let (quarter, row) = (2 * n + k / 2, 8 * (k % 2) + g);
                let s = 8 * n + 2 * k + g / 4;
                for (d, digit) in e[s].iter().enumerate() {
                    let tile = out.add((quarter * Q6_TILES + d) * TILE);
                    _mm512_storeu_si512(
                        tile.add(64 * row) as *mut _,
                        mul_bytes_signed(centred, *digit),
                    );
                }
            }
        }
    }
}

/// The i32 sums of one step: four 16 × 16 tiles (Q4_K/Q5_K: the two digits' sums of two
/// 16-row activation tiles; Q6_K: the three digits' of one).
#[repr(C, align(64))]
struct StepSums([[[i32; G]; G]; 4]);

/// Issues quarter `p` (values `64p..64p + 64`) of the Q4_K/Q5_K tile products of one
/// super-block of one group for 32 activation rows (`TWO`) or 16 (quarter 0 first zeroes the
/// sums); [`store_sums`] reads the sums out after quarter 3. AMX runs them while the vector
/// code after this call goes on. tmm0/tmm1 hold the two activation tiles of the quarter,
/// tmm2/tmm3 its two weight tiles, tmm4–7 the sums (digit `t` of row tile `r` in
/// tmm(4 + 2r + t)): each loaded weight tile feeds both row tiles.
///
/// # Safety
/// [`configure`] ran on this thread; `a` is the packed activations of the step's first row
/// tile (`kgemm::matmul_k_amx`: per 16-row tile its four quarters of 16 rows × 64 bytes), the
/// second's right after with `TWO`; `u` is the super-block unpacked by [`unpack_q45`].
#[inline(always)]
unsafe fn q45_quarter<const TWO: bool>(p: usize, u: *const u8, a: *const i8) {
    if p == 0 {
        asm!(
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            "tilezero tmm7",
            options(nostack, nomem)
        );
    }
    let (a0, b) = (a.add(TILE * p), u.add(p * Q45_TILES * TILE));
    if TWO {
        asm!(
            "tileloadd tmm2, [{b} + {s}*1]",
            "tileloadd tmm0, [{a0} + {s}*1]",
            "tdpbsud tmm4, tmm0, tmm2",
            "tileloadd tmm1, [{a1} + {s}*1]",
            "tdpbsud tmm6, tmm1, tmm2",
            "tileloadd tmm3, [{b} + {s}*1 + 1024]",
            "tdpbsud tmm5, tmm0, tmm3",
            "tdpbsud tmm7, tmm1, tmm3",
            a0 = in(reg) a0, a1 = in(reg) a0.add(G * QK_K), b = in(reg) b, s = in(reg) 64usize,
            options(nostack, readonly)
        );
    } else {
        asm!(
            "tileloadd tmm0, [{a0} + {s}*1]",
            "tileloadd tmm2, [{b} + {s}*1]",
            "tdpbsud tmm4, tmm0, tmm2",
            "tileloadd tmm3, [{b} + {s}*1 + 1024]",
            "tdpbsud tmm5, tmm0, tmm3",
            a0 = in(reg) a0, b = in(reg) b, s = in(reg) 64usize,
            options(nostack, readonly)
        );
    }
}

/// Issues quarter `p` of the Q6_K tile products of one super-block of one group for 16
/// activation rows (three digit tiles a quarter leave no room for a second row tile). The
/// activation tile alternates between tmm0 and tmm7 (a load need not wait for the previous
/// quarter's products), the weight tiles take tmm1–3, the sums tmm4–6.
///
/// # Safety
/// As [`q45_quarter`] for 16 rows, `u` unpacked by [`unpack_q6`].
#[inline(always)]
unsafe fn q6_quarter(p: usize, u: *const u8, a: *const i8) {
    if p == 0 {
        asm!(
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            options(nostack, nomem)
        );
    }
    macro_rules! quarter {
        ($a:literal) => {
            asm!(
                concat!("tileloadd ", $a, ", [{a} + {s}*1]"),
                "tileloadd tmm1, [{b} + {s}*1]",
                concat!("tdpbssd tmm4, ", $a, ", tmm1"),
                "tileloadd tmm2, [{b} + {s}*1 + 1024]",
                concat!("tdpbssd tmm5, ", $a, ", tmm2"),
                "tileloadd tmm3, [{b} + {s}*1 + 2048]",
                concat!("tdpbssd tmm6, ", $a, ", tmm3"),
                a = in(reg) a.add(TILE * p), b = in(reg) u.add(p * Q6_TILES * TILE),
                s = in(reg) 64usize,
                options(nostack, readonly)
            )
        };
    }
    if p.is_multiple_of(2) {
        quarter!("tmm0");
    } else {
        quarter!("tmm7");
    }
}

/// Stores the sums the products left in tmm4–7 (`Q6`: tmm4–6) to `sums` (its tiles 0..4 or
/// 0..3).
///
/// # Safety
/// The four quarters of [`q45_quarter`] or (`Q6`) [`q6_quarter`] ran; `sums` is writable.
#[inline(always)]
unsafe fn store_sums<const Q6: bool>(sums: *mut StepSums) {
    let (c, s) = (sums as *mut i32, 64usize);
    if Q6 {
        asm!(
            "tilestored [{c} + {s}*1], tmm4",
            "tilestored [{c} + {s}*1 + 1024], tmm5",
            "tilestored [{c} + {s}*1 + 2048], tmm6",
            c = in(reg) c, s = in(reg) s, options(nostack)
        );
    } else {
        asm!(
            "tilestored [{c} + {s}*1], tmm4",
            "tilestored [{c} + {s}*1 + 1024], tmm5",
            "tilestored [{c} + {s}*1 + 2048], tmm6",
            "tilestored [{c} + {s}*1 + 3072], tmm7",
            c = in(reg) c, s = in(reg) s, options(nostack)
        );
    }
}

#[inline(always)]
unsafe fn f16x16(p: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
}

#[inline(always)]
unsafe fn lanes(row: &[i32; G]) -> __m512i {
    _mm512_load_si512(row.as_ptr() as *const _)
}

/// Asks for the cache lines of the `bytes` at `p`: the next group's super-block, which lies a
/// whole group further on (too far apart for the hardware prefetcher to follow).
#[inline(always)]
pub(crate) unsafe fn prefetch(p: *const u8, bytes: usize) {
    for line in (0..bytes).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line) as *const i8);
    }
}

/// Bytes of one packed super-block of one 16-row group (`quant::krepack`).
pub(crate) const fn packed_sb_bytes(kind: u8) -> usize {
    match kind {
        4 => 148 * G,
        5 => 180 * G,
        _ => 210 * G,
    }
}

/// All `m = rows.len()` activation rows times super-block `b` of one Q4_K/Q5_K/Q6_K group
/// (`blk` its packed bytes, `u` the same unpacked by [`unpack_q45`] or [`unpack_q6`]), added
/// into `acc[r][n]` for row `r` and weight row `n` (`FIRST`: `acc` starts from zero). After the
/// `LAST` super-block the sums go to `out[r·ldo + n]` for `n < real` instead (the scattered
/// stores interleaved with the arithmetic). The caller packs the super-block's activations as
/// [`q45_quarter`] reads them, rows `m..` up to the next multiple of 16 readable (zeros). The
/// caller runs several groups over one super-block before the next, so those bytes stay in L2
/// and the unpacked super-block in L1.
///
/// A step is 32 rows (Q6_K 16). Its tile products are issued a quarter at a time between
/// quarters of the previous step's f32 pass (from the other of two sums buffers): issued all
/// at once, the products filled the reorder buffer with the f32 pass waiting behind them,
/// and the tiles and the vector units took turns.
///
/// # Safety
/// [`configure`] ran on this thread; `KIND` 4, 5 or 6 names the format `blk` holds; `a` and
/// `rows` as above (`rows` more than `b` super-blocks wide); `acc.len() ≥ m`; `out`
/// writable at `r·ldo + 0..real` for every row, `real ≤ 16`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_k_sb<const KIND: u8, const FIRST: bool, const LAST: bool>(
    blk: *const u8,
    u: *const u8,
    b: usize,
    a: *const i8,
    rows: &[ActRow],
    acc: &mut [[f32; G]],
    (out, ldo, real): (*mut f32, usize, usize),
) {
    let six = KIND == 6;
    let m = rows.len();
    let real_mask: __mmask16 = ((1u32 << real) - 1) as u16;
    let step = if six { G } else { 2 * G };
    // Issues quarter p of the products of rows i.. (a whole step, or the 16 rows left).
    let quarter = |p: usize, i: usize| {
        let at = a.add(i * QK_K);
        if six {
            q6_quarter(p, u, at);
        } else if m - i > G {
            q45_quarter::<true>(p, u, at);
        } else {
            q45_quarter::<false>(p, u, at);
        }
    };
    let store = |sums: *mut StepSums| {
        if six {
            store_sums::<true>(sums)
        } else {
            store_sums::<false>(sums)
        }
    };
    // Written by the tile stores before they are read (zeroing them cost ~1 % of a prompt).
    let mut sums = std::mem::MaybeUninit::<[StepSums; 2]>::uninit();
    let sums = sums.as_mut_ptr() as *mut StepSums;
    let steps = m.div_ceil(step);
    let d = f16x16(blk);
    let dmin = f16x16(blk.add(2 * G));
    // Q4_K/Q5_K: the mins of sub-blocks 2c and 2c + 1 in the i16 halves of each lane (as the
    // VNNI epilogue pairs them with the activations' `pairs`).
    let mut mins = [_mm512_setzero_si512(); 4];
    if !six {
        for (c, mv) in mins.iter_mut().enumerate() {
            let m0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(blk.add(12 * G + G * 2 * c) as *const _));
            let m1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                blk.add(12 * G + G * (2 * c + 1)) as *const _
            ));
            *mv = _mm512_or_si512(m0, _mm512_slli_epi32::<16>(m1));
        }
    }
    // Row r (the k-th of its step) into `acc` or `out`; `t` points at the step's first sums
    // tile, and only the tiles the step's stores wrote are read (Q6_K's fourth is not).
    let mut finish = |r: usize, k: usize, t: *const [[i32; G]; G]| {
        let row = |tile: usize| &(*t.add(tile))[k % G];
        let ar = rows.get_unchecked(r);
        let da = _mm512_set1_ps(*ar.d.get_unchecked(b));
        let o = acc.get_unchecked_mut(r).as_mut_ptr();
        let prev = if FIRST {
            _mm512_setzero_ps()
        } else {
            _mm512_loadu_ps(o)
        };
        let v = if six {
            // t0 + 7·(t1 + 7·t2), with 7x = 8x − x.
            let seven = |x: __m512i| _mm512_sub_epi32(_mm512_slli_epi32::<3>(x), x);
            let hi = _mm512_add_epi32(lanes(row(1)), seven(lanes(row(2))));
            let isum = _mm512_add_epi32(lanes(row(0)), seven(hi));
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, da), prev)
        } else {
            // Row tile k / 16 has its digits' sums in tiles 2(k / 16) and 2(k / 16) + 1.
            let (lo, hi) = (row(2 * (k / G)), row(2 * (k / G) + 1));
            let isum = _mm512_add_epi32(lanes(lo), _mm512_slli_epi32::<3>(lanes(hi)));
            let ps = ar.pairs.as_ptr().add(b * 4);
            let mut msum = _mm512_setzero_si512();
            for (c, mv) in mins.iter().enumerate() {
                msum = _mm512_dpwssd_epi32(msum, *mv, _mm512_set1_epi32(*ps.add(c)));
            }
            let v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, da), prev);
            _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(dmin, da), v)
        };
        if LAST {
            _mm512_mask_storeu_ps(out.add(r * ldo), real_mask, v)
        } else {
            _mm512_storeu_ps(o, v)
        }
    };
    for p in 0..4 {
        quarter(p, 0);
    }
    store(sums);
    let part = step / 4;
    for s in 0..steps {
        let i0 = s * step;
        let i1 = (i0 + step).min(m);
        let next = s + 1 < steps;
        let t = sums.add(s % 2) as *const [[i32; G]; G];
        for p in 0..4 {
            if next {
                quarter(p, i0 + step);
            }
            for r in (i0 + p * part)..(i0 + (p + 1) * part).min(i1) {
                finish(r, r - i0, t);
            }
        }
        if next {
            store(sums.add((s + 1) % 2));
        }
    }
}
