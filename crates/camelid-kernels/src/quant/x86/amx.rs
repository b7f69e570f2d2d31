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
//! - Q4_K/Q5_K (`q` 0..31, `sc` 0..63): `sc = sl + 8·sh` (0..7 each), two unsigned tiles,
//!   and a third of each sub-block's min `m` (0..63) in every value's place, whose product
//!   with the activations is `Σ_j m_j·Σa_j`, the sum the mins are scaled by.
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

/// Weight tiles per 64 values: Q4_K/Q5_K two scale digits and the mins, Q6_K three digits.
const QUARTER_TILES: usize = 3;

/// Bytes of one unpacked super-block of one group: four 64-value quarters of
/// [`QUARTER_TILES`] tiles.
pub(crate) const UNPACKED_SB_BYTES: usize = 4 * QUARTER_TILES * TILE;

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
/// per 64-value quarter `p` (sub-blocks `2p`, `2p + 1`), the tiles of `q·sl`, of `q·sh` and
/// of the sub-block's min.
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
        let lo_tile = out.add(QUARTER_TILES * p * TILE);
        let (hi_tile, min_tile) = (lo_tile.add(TILE), lo_tile.add(2 * TILE));
        let mins = [
            spread(blk.add(12 * G + G * 2 * p)),
            spread(blk.add(12 * G + G * (2 * p + 1))),
        ];
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
                _mm512_storeu_si512(min_tile.add(row) as *mut _, mins[h]);
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
                    let tile = out.add((quarter * QUARTER_TILES + d) * TILE);
                    _mm512_storeu_si512(
                        tile.add(64 * row) as *mut _,
                        mul_bytes_signed(centred, *digit),
                    );
                }
            }
        }
    }
}

/// The i32 sums of one super-block for 16 activation rows: one tile per weight tile of a
/// quarter (sums over the four quarters).
#[repr(C, align(64))]
struct SbSums([[[i32; G]; G]; QUARTER_TILES]);

/// Starts the tile products of one super-block of one group for 16 activation rows, whose
/// sums [`sb_store`] reads out; AMX runs them while the vector code after this call goes on.
/// The activation tile alternates between tmm0 and tmm7 (a load need not wait for the
/// previous quarter's products), the weight tiles take tmm1–3, the sums tmm4–6.
///
/// # Safety
/// [`configure`] ran on this thread; `a` is readable for 16 rows of the super-block's 256
/// bytes, one after another, `u` is the unpacked super-block.
#[inline(always)]
unsafe fn sb_products<const SIX: bool>(u: *const u8, a: *const i8) {
    let s64 = 64usize;
    asm!(
        "tilezero tmm4",
        "tilezero tmm5",
        "tilezero tmm6",
        options(nostack, nomem)
    );
    macro_rules! quarter {
        ($p:expr, $op:literal, $a:literal) => {
            asm!(
                concat!("tileloadd ", $a, ", [{a} + {lda}*1]"),
                "tileloadd tmm1, [{b} + {s}*1]",
                concat!($op, " tmm4, ", $a, ", tmm1"),
                "tileloadd tmm2, [{b} + {s}*1 + 1024]",
                concat!($op, " tmm5, ", $a, ", tmm2"),
                "tileloadd tmm3, [{b} + {s}*1 + 2048]",
                concat!($op, " tmm6, ", $a, ", tmm3"),
                a = in(reg) a.add(64 * $p), lda = in(reg) QK_K,
                b = in(reg) u.add($p * QUARTER_TILES * TILE), s = in(reg) s64,
                options(nostack, readonly)
            )
        };
    }
    if SIX {
        quarter!(0, "tdpbssd", "tmm0");
        quarter!(1, "tdpbssd", "tmm7");
        quarter!(2, "tdpbssd", "tmm0");
        quarter!(3, "tdpbssd", "tmm7");
    } else {
        quarter!(0, "tdpbsud", "tmm0");
        quarter!(1, "tdpbsud", "tmm7");
        quarter!(2, "tdpbsud", "tmm0");
        quarter!(3, "tdpbsud", "tmm7");
    }
}

/// Stores the sums [`sb_products`] started: tmm4–6 to `sums[0..3]`.
///
/// # Safety
/// [`sb_products`] ran.
#[inline(always)]
unsafe fn sb_store(sums: &mut SbSums) {
    asm!(
        "tilestored [{c} + {s}*1], tmm4",
        "tilestored [{c} + {s}*1 + 1024], tmm5",
        "tilestored [{c} + {s}*1 + 2048], tmm6",
        c = in(reg) sums.0.as_mut_ptr(), s = in(reg) 64usize, options(nostack)
    );
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
/// into `acc[r][n]` for row `r` and weight row `n` (`first`: `acc` starts from zero). After the
/// `last` super-block the sums go to `out[r·ldo + n]` for `n < real` instead (the scattered
/// stores interleaved with the arithmetic). Row `r`'s 256 bytes of the super-block are at
/// `a + 256·r` (the caller packs them so: a tile's 16 rows then lie in 4 KiB, not in 16 pages
/// a row apart), and rows `m..` up to the next multiple of 16 are readable (zeros). The caller
/// runs several groups over one super-block before the next, so those bytes stay in L2 and
/// the unpacked super-block in L1.
///
/// # Safety
/// [`configure`] ran on this thread; `KIND` 4, 5 or 6 names the format `blk` holds; `a` and
/// `rows` as above (`rows` more than `b` super-blocks wide); `acc.len() ≥ m`; `out`
/// writable at `r·ldo + 0..real` for every row, `real ≤ 16`.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_k_sb<const KIND: u8>(
    blk: *const u8,
    u: *const u8,
    b: usize,
    (first, last): (bool, bool),
    a: *const i8,
    rows: &[ActRow],
    acc: &mut [[f32; G]],
    (out, ldo, real): (*mut f32, usize, usize),
) {
    let six = KIND == 6;
    let m = rows.len();
    let real_mask: __mmask16 = ((1u32 << real) - 1) as u16;
    let step = G;
    // Starts the products of rows i..i + 16 (and stores nothing yet).
    let products = |i: usize| {
        if six {
            sb_products::<true>(u, a.add(i * QK_K));
        } else {
            sb_products::<false>(u, a.add(i * QK_K));
        }
    };
    // Two buffers: the next step's tile products run while this step's sums are scaled.
    let mut sums = [
        SbSums([[[0; G]; G]; QUARTER_TILES]),
        SbSums([[[0; G]; G]; QUARTER_TILES]),
    ];
    let steps = m.div_ceil(step);
    let d = f16x16(blk);
    let dmin = f16x16(blk.add(2 * G));
    products(0);
    sb_store(&mut sums[0]);
    for s in 0..steps {
        let i0 = s * step;
        if s + 1 < steps {
            products(i0 + step);
        }
        let t = &sums[s % 2].0;
        for r in i0..(i0 + step).min(m) {
            let ar = rows.get_unchecked(r);
            let k = r - i0;
            let da = _mm512_set1_ps(*ar.d.get_unchecked(b));
            let o = acc.get_unchecked_mut(r).as_mut_ptr();
            let prev = if first {
                _mm512_setzero_ps()
            } else {
                _mm512_loadu_ps(o)
            };
            let put = |v: __m512| {
                if last {
                    _mm512_mask_storeu_ps(out.add(r * ldo), real_mask, v)
                } else {
                    _mm512_storeu_ps(o, v)
                }
            };
            if six {
                // t0 + 7·(t1 + 7·t2), with 7x = 8x − x.
                let seven = |x: __m512i| _mm512_sub_epi32(_mm512_slli_epi32::<3>(x), x);
                let hi = _mm512_add_epi32(lanes(&t[1][k]), seven(lanes(&t[2][k])));
                let isum = _mm512_add_epi32(lanes(&t[0][k]), seven(hi));
                put(_mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(isum),
                    _mm512_mul_ps(d, da),
                    prev,
                ));
                continue;
            }
            let isum = _mm512_add_epi32(lanes(&t[0][k]), _mm512_slli_epi32::<3>(lanes(&t[1][k])));
            let msum = lanes(&t[2][k]);
            let v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, da), prev);
            put(_mm512_fnmadd_ps(
                _mm512_cvtepi32_ps(msum),
                _mm512_mul_ps(dmin, da),
                v,
            ));
        }
        if s + 1 < steps {
            sb_store(&mut sums[(s + 1) % 2]);
        }
    }
}
