//! AMX tiles for the K formats' prompt matmuls (Q4_K, Q5_K, Q6_K × Q8_K activations), on the
//! 16-row groups the AVX-512 kernels read (`quant::krepack`).
//!
//! One `tdpbsud`/`tdpbssd` multiplies a 16 × 64 tile of i8 activations by a tile of 16 weight
//! rows × 64 values (four values of each row per 64-byte tile row) into 16 × 16 i32 sums:
//! 16 384 products, ~7.5× what `vpdpbusd` peaks at per cycle (benches/README, Session 28).
//! A K format scales every sub-block (32 values; Q6_K 16), which would cost a tile store and
//! a vector pass per sub-block; instead each group is unpacked once per call with its
//! sub-block scales folded into the weight bytes, and whole super-blocks sum in the tile
//! registers. `q·sc` does not fit a byte, so each weight is two bytes in two tiles whose sums
//! are combined afterwards:
//! - Q4_K/Q5_K (`q` 0..15 / 0..31, `sc` 0..63): the scale splits into two digits,
//!   `sc = c0 + 2^s·c1` (`s` 4 / 3, [`Q4_SPLIT`], [`Q5_SPLIT`]), so `q·c0` and `q·c1` each fit an unsigned
//!   byte (`tdpbsud` for both) and one `vpmullw` makes 64 of them. The mins' sum
//!   `Σ_j m_j·Σa_j` is not a tile product: the vector epilogue takes it from the activations'
//!   paired sub-block sums (`QActs::pairs`), as the VNNI kernels do.
//! - Q6_K (`q − 32` in −32..31, `sc` −128..127): `w = q·sc − 32·sc`, |w| ≤ 4 096, as
//!   `lo + 256·hi` with `lo` 0..255 unsigned and `hi` −16..16 signed (`tdpbsud` then
//!   `tdpbssd`), from `vpmaddubsw`'s even and odd products (quants unsigned times the scale in
//!   every other byte).
//!
//! Two tiles a quarter leave room for 32 activation rows in the eight tile registers (two
//! activation tiles, two weight tiles, four sums), so each weight tile loaded feeds two
//! products.
//!
//! These are exact integer identities: the super-block sums equal the VNNI kernels' (which sum
//! each sub-block exactly too), and the f32 steps after them are the same operations in the
//! same order, so a row's outputs do not depend on which kernel ran (batched prompts, chunked
//! prompts and single decodes agree to the bit).
//!
//! The AMX instructions are written as `asm!`: Rust's AMX intrinsics are unstable.

use crate::quant::QK_K;
use std::arch::asm;
use std::arch::x86_64::*;

/// Weight rows per group (the AVX-512 kernels' groups) and activation rows per tile.
pub(crate) const G: usize = 16;
/// Bytes of one tile: 16 rows of 64.
const TILE: usize = 1024;

/// Weight tiles per 64 values (a product's two bytes).
const TILES: usize = 2;

/// Bytes of one unpacked super-block of one group: four 64-value quarters of [`TILES`] tiles.
pub(crate) const UNPACKED_SB_BYTES: usize = 4 * TILES * TILE;

/// Shapes tmm0–7 as the one tile every kernel here uses: 16 rows × 64 bytes.
///
/// # Safety
/// The CPU has AMX and the process holds its state (`cpu_features::amx`).
pub(crate) unsafe fn configure() {
    crate::tiles::configure([16; 8]);
}

pub(crate) use crate::tiles::release;

/// Each row's byte at `p` (16 rows) in bytes 0 and 2 of its lane, zeros between: in both
/// 16-bit halves of the row's four values.
#[inline(always)]
unsafe fn even_bytes(p: *const u8) -> __m512i {
    let lanes = _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i));
    _mm512_or_si512(lanes, _mm512_slli_epi32::<16>(lanes))
}

/// The tiles' bytes of 64 i16 products: `e` holds the even bytes' products in its i16 lanes,
/// `o` the odd bytes'; returns (the low bytes, the high bytes), each in its byte's place.
#[inline(always)]
unsafe fn product_bytes(e: __m512i, o: __m512i) -> (__m512i, __m512i) {
    let odd: __mmask64 = 0xAAAA_AAAA_AAAA_AAAA;
    (
        _mm512_mask_blend_epi8(odd, e, _mm512_slli_epi16::<8>(o)),
        _mm512_mask_blend_epi8(odd, _mm512_srli_epi16::<8>(e), o),
    )
}

/// How Q4_K's and Q5_K's sub-block scales `sc` (0..63) split into two digits,
/// `sc = c0 + 2^SPLIT·c1`, such that `q·c0` and `q·c1` each fit a byte (Q4_K: `q` ≤ 15, digits
/// ≤ 15 and 3; Q5_K: `q` ≤ 31, digits ≤ 7).
const Q4_SPLIT: u32 = 4;
/// Q5_K's: see [`Q4_SPLIT`].
const Q5_SPLIT: u32 = 3;

/// Unpacks one super-block of a Q4_K (`FIFTH = false`) or Q5_K group at `blk` into `out`:
/// per 64-value quarter `p` (sub-blocks `2p`, `2p + 1`), the tiles of `q·c0` and `q·c1`
/// ([`Q4_SPLIT`], [`Q5_SPLIT`]). Tile row `g` holds values `4g..4g + 4` of the quarter for each of the 16
/// weight rows.
///
/// One `vpmullw` makes 64 of those bytes: a 16-bit lane holds two quants (`q_e + 256·q_o`),
/// and times a digit it is `q_e·c + 256·q_o·c`, both products under 256, so neither carries
/// into the other's byte. (Building `q·sc`'s two bytes from `vpmaddubsw`'s even and odd
/// products took two multiplies and four byte moves per 64 values.)
///
/// # Safety
/// The CPU has AVX-512BW; `blk` holds the packed super-block, `out` [`UNPACKED_SB_BYTES`].
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn unpack_q45<const FIFTH: bool>(blk: *const u8, out: *mut u8) {
    let qs_at = if FIFTH { 52 * G } else { 20 * G };
    let low = _mm512_set1_epi8(0x0F);
    let digit = _mm512_set1_epi16((1 << if FIFTH { Q5_SPLIT } else { Q4_SPLIT }) - 1);
    for p in 0..4 {
        // Each row's two sub-block scales in both 16-bit halves of its lane, as two digits.
        let sc = [
            even_bytes(blk.add(4 * G + G * 2 * p)),
            even_bytes(blk.add(4 * G + G * (2 * p + 1))),
        ];
        let c0 = [
            _mm512_and_si512(sc[0], digit),
            _mm512_and_si512(sc[1], digit),
        ];
        let c1 = if FIFTH {
            [
                _mm512_srli_epi16::<Q5_SPLIT>(sc[0]),
                _mm512_srli_epi16::<Q5_SPLIT>(sc[1]),
            ]
        } else {
            [
                _mm512_srli_epi16::<Q4_SPLIT>(sc[0]),
                _mm512_srli_epi16::<Q4_SPLIT>(sc[1]),
            ]
        };
        let lo_tile = out.add(TILES * p * TILE);
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
                let lo = _mm512_mullo_epi16(q[h], c0[h]);
                let hi = _mm512_mullo_epi16(q[h], c1[h]);
                _mm512_storeu_si512(lo_tile.add(row) as *mut _, lo);
                _mm512_storeu_si512(hi_tile.add(row) as *mut _, hi);
            }
        }
    }
}

/// Q6_K's counterpart of [`unpack_q45`]: per quarter `p` (sub-blocks `4p..4p + 4`, 16 values
/// each), the tiles of the low (unsigned) and high (signed) bytes of `w = (q − 32)·sc`.
///
/// # Safety
/// As [`unpack_q45`].
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn unpack_q6(blk: *const u8, out: *mut u8) {
    // Per sub-block: its signed scale in the even bytes (the odd ones zero), the same in the
    // odd bytes, and `32·sc` in both i16 halves of each row's lane. `vpmaddubsw` of `q`
    // (0..63, unsigned) by a scale gives `q·sc` as i16; less `32·sc` it is `w` (exact:
    // |q·sc| ≤ 8 064). Made four sub-blocks at a time, for the values that fall in them (all
    // sixteen at once, 48 vectors, spilled: 1.06–1.15× this unpacking alone, session 48).
    for n in 0..2 {
        for gq in 0..2 {
            // The four sub-blocks 8n + 2k + gq (k = 0..4) these values fall in.
            let mut even = [_mm512_setzero_si512(); 4];
            let mut odd = [_mm512_setzero_si512(); 4];
            let mut bias = [_mm512_setzero_si512(); 4];
            for k in 0..4 {
                let s = 8 * n + 2 * k + gq;
                let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(blk.add(2 * G + G * s) as *const _));
                let both = _mm512_or_si512(
                    _mm512_and_si512(sc, _mm512_set1_epi32(0xFFFF)),
                    _mm512_slli_epi32::<16>(sc),
                );
                even[k] = _mm512_and_si512(both, _mm512_set1_epi16(0xFF));
                odd[k] = _mm512_slli_epi16::<8>(even[k]);
                bias[k] = _mm512_slli_epi16::<5>(both);
            }
            for g in 4 * gq..4 * gq + 4 {
                // Values 128n + 32k + 4g.. for k = 0..4 (as the VNNI kernel reads them).
                let vals = super::k512::q6_values(blk.add(18 * G + (8 * n + g) * 12 * G));
                for (k, val) in vals.iter().enumerate() {
                    // Value 128n + 32k + 4g: quarter 2n + k/2, tile row 8(k % 2) + g.
                    let (quarter, row) = (2 * n + k / 2, 8 * (k % 2) + g);
                    let e = _mm512_sub_epi16(_mm512_maddubs_epi16(*val, even[k]), bias[k]);
                    let o = _mm512_sub_epi16(_mm512_maddubs_epi16(*val, odd[k]), bias[k]);
                    let (lo, hi) = product_bytes(e, o);
                    let tile = out.add(quarter * TILES * TILE + 64 * row);
                    _mm512_storeu_si512(tile as *mut _, lo);
                    _mm512_storeu_si512(tile.add(TILE) as *mut _, hi);
                }
            }
        }
    }
}

/// The i32 sums of one step: four 16 × 16 tiles (the two bytes' sums of two 16-row
/// activation tiles).
#[repr(C, align(64))]
struct StepSums([[[i32; G]; G]; 4]);

/// Issues quarter `p` (values `64p..64p + 64`) of the tile products of one super-block of one
/// group for 32 activation rows (`TWO`) or 16 (quarter 0 first zeroes the sums); [`store_sums`]
/// reads the sums out after quarter 3. AMX runs them while the vector code after this call
/// goes on. tmm0/tmm1 hold the two activation tiles of the quarter, tmm2/tmm3 its two weight
/// tiles (part 0, unsigned: Q4_K/Q5_K `q·sl`, Q6_K the low bytes; part 1, `q·sh` unsigned or,
/// with `SIGNED_HI`, Q6_K's signed high bytes), tmm4–7 the sums (part `t` of row tile `r` in
/// tmm(4 + 2r + t)): each loaded weight tile feeds both row tiles.
///
/// # Safety
/// [`configure`] ran on this thread; `a` is the packed activations of the step's first row
/// tile (`kgemm::matmul_k_amx`: per 16-row tile its four quarters of 16 rows × 64 bytes), the
/// second's right after with `TWO`; `u` is the super-block unpacked by [`unpack_q45`] (or,
/// with `SIGNED_HI`, [`unpack_q6`]).
#[inline(always)]
unsafe fn quarter_products<const TWO: bool, const SIGNED_HI: bool>(
    p: usize,
    u: *const u8,
    a: *const i8,
) {
    if p == 0 {
        asm!(
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            "tilezero tmm7",
            options(nostack, nomem)
        );
    }
    let (a0, b) = (a.add(TILE * p), u.add(p * TILES * TILE));
    macro_rules! products {
        ($hi:literal) => {
            if TWO {
                asm!(
                    "tileloadd tmm2, [{b} + {s}*1]",
                    "tileloadd tmm0, [{a0} + {s}*1]",
                    "tdpbsud tmm4, tmm0, tmm2",
                    "tileloadd tmm1, [{a1} + {s}*1]",
                    "tdpbsud tmm6, tmm1, tmm2",
                    "tileloadd tmm3, [{b} + {s}*1 + 1024]",
                    concat!($hi, " tmm5, tmm0, tmm3"),
                    concat!($hi, " tmm7, tmm1, tmm3"),
                    a0 = in(reg) a0, a1 = in(reg) a0.add(G * QK_K), b = in(reg) b,
                    s = in(reg) 64usize,
                    options(nostack, readonly)
                );
            } else {
                asm!(
                    "tileloadd tmm0, [{a0} + {s}*1]",
                    "tileloadd tmm2, [{b} + {s}*1]",
                    "tdpbsud tmm4, tmm0, tmm2",
                    "tileloadd tmm3, [{b} + {s}*1 + 1024]",
                    concat!($hi, " tmm5, tmm0, tmm3"),
                    a0 = in(reg) a0, b = in(reg) b, s = in(reg) 64usize,
                    options(nostack, readonly)
                );
            }
        };
    }
    if SIGNED_HI {
        products!("tdpbssd");
    } else {
        products!("tdpbsud");
    }
}

/// Stores the sums the products left in tmm4–7 to `sums` (`TWO`: both row tiles; else only
/// the first's, tmm4–5: a step of 16 rows or fewer leaves nothing in tmm6–7, and the two
/// stores it skips measured 1.00–1.08× on 16- and 48-row calls, `qgemm_bench`, alternating
/// in one process).
///
/// # Safety
/// The four quarters of [`quarter_products`] ran (with the same `TWO`); `sums` is writable.
#[inline(always)]
unsafe fn store_sums<const TWO: bool>(sums: *mut StepSums) {
    asm!(
        "tilestored [{c} + {s}*1], tmm4",
        "tilestored [{c} + {s}*1 + 1024], tmm5",
        c = in(reg) sums as *mut i32, s = in(reg) 64usize, options(nostack)
    );
    if TWO {
        asm!(
            "tilestored [{c} + {s}*1 + 2048], tmm6",
            "tilestored [{c} + {s}*1 + 3072], tmm7",
            c = in(reg) sums as *mut i32, s = in(reg) 64usize, options(nostack)
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

/// One activation row's scale and paired sub-block sums for one super-block (`ActRow::d`,
/// `ActRow::pairs`), gathered from the rows once per call: the epilogue of every group then
/// reads them from one small array instead of each row's own buffers (at 256 rows those lay
/// 128 bytes apart, past L1 beside the tiles' activations).
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
pub(crate) struct SbRow {
    pub(crate) pairs: [i32; 4],
    pub(crate) d: f32,
}

/// All `m = rows.len()` activation rows (`rows`: their scales and pairs for this super-block)
/// times one super-block of one Q4_K/Q5_K/Q6_K group (`blk` its packed bytes, `u` the same
/// unpacked by [`unpack_q45`] or [`unpack_q6`]), added into `acc[r][n]` for row `r` and
/// weight row `n` (`FIRST`: `acc` starts from zero). After the
/// `LAST` super-block the sums go to `out[r·ldo + n]` for `n < real` instead (the scattered
/// stores interleaved with the arithmetic). The caller packs the super-block's activations as
/// [`quarter_products`] reads them, rows `m..` up to the next multiple of 16 readable (any
/// bytes: their sums are never read). The caller runs several groups over one super-block
/// before the next, so those bytes stay in L2 and the unpacked super-block in L1; `pf` is the
/// next group's super-block and how many of its bytes to prefetch here (0: none).
///
/// A step is 32 rows. Its tile products are issued a quarter at a time between
/// quarters of the previous step's f32 pass (from the other of two sums buffers): issued all
/// at once, the products filled the reorder buffer with the f32 pass waiting behind them,
/// and the tiles and the vector units took turns.
///
/// # Safety
/// [`configure`] ran on this thread; `KIND` 4, 5 or 6 names the format `blk` holds; `a` as
/// above; `acc.len() ≥ m`; `out` writable at `r·ldo + 0..real` for every row, `real ≤ 16`
/// (`pf` may point anywhere: a prefetch does not fault).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn gemm_k_sb<const KIND: u8, const FIRST: bool, const LAST: bool>(
    blk: *const u8,
    u: *const u8,
    a: *const i8,
    rows: &[SbRow],
    acc: &mut [[f32; G]],
    (out, ldo, real): (*mut f32, usize, usize),
    (pf, pf_bytes): (*const u8, usize),
) {
    // Prefetched lines of `pf`, a few after each row's epilogue (`prefetch` asks for them all
    // at once, which stalls on the line fill buffers).
    let mut pf_at = 0;
    let pf_per_row = (pf_bytes / 64).div_ceil(rows.len().max(1));
    let six = KIND == 6;
    let m = rows.len();
    let real_mask: __mmask16 = ((1u32 << real) - 1) as u16;
    let step = 2 * G;
    // Issues quarter p of the products of rows i.. (a whole step, or the 16 rows left).
    let quarter = |p: usize, i: usize| {
        let at = a.add(i * QK_K);
        match (six, m - i > G) {
            (true, true) => quarter_products::<true, true>(p, u, at),
            (true, false) => quarter_products::<false, true>(p, u, at),
            (false, true) => quarter_products::<true, false>(p, u, at),
            (false, false) => quarter_products::<false, false>(p, u, at),
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
    // tile. Row tile k / 16 has its two bytes' sums in tiles 2(k / 16) and 2(k / 16) + 1.
    let mut finish = |r: usize, k: usize, t: *const [[i32; G]; G]| {
        let row = |tile: usize| &(*t.add(tile))[k % G];
        let ar = rows.get_unchecked(r);
        let da = _mm512_set1_ps(ar.d);
        let o = acc.get_unchecked_mut(r).as_mut_ptr();
        let prev = if FIRST {
            _mm512_setzero_ps()
        } else {
            _mm512_loadu_ps(o)
        };
        let (lo, hi) = (lanes(row(2 * (k / G))), lanes(row(2 * (k / G) + 1)));
        // The two tiles' weights are digits: Q4_K `c0 + 16·c1`, Q5_K `c0 + 8·c1`
        // ([`Q4_SPLIT`], [`Q5_SPLIT`]), Q6_K `lo + 256·hi`.
        let isum = match KIND {
            4 => _mm512_add_epi32(lo, _mm512_slli_epi32::<Q4_SPLIT>(hi)),
            5 => _mm512_add_epi32(lo, _mm512_slli_epi32::<Q5_SPLIT>(hi)),
            _ => _mm512_add_epi32(lo, _mm512_slli_epi32::<8>(hi)),
        };
        let v = if six {
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, da), prev)
        } else {
            let mut msum = _mm512_setzero_si512();
            for (c, mv) in mins.iter().enumerate() {
                msum = _mm512_dpwssd_epi32(msum, *mv, _mm512_set1_epi32(ar.pairs[c]));
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
    // Stores the sums of the step from row i (a whole step, or the 16 rows left).
    let store = |sums: *mut StepSums, i: usize| {
        if m - i > G {
            store_sums::<true>(sums)
        } else {
            store_sums::<false>(sums)
        }
    };
    for p in 0..4 {
        quarter(p, 0);
    }
    store(sums, 0);
    let part = step / 4;
    for s in 0..steps {
        let i0 = s * step;
        let i1 = (i0 + step).min(m);
        let next = s + 1 < steps;
        let t = sums.add(s % 2) as *const [[i32; G]; G];
        for p in 0..4 {
            if next {
                quarter(p, i0 + step);
                if p == 3 {
                    // Issued before this step's last rows, not after: the store waits for
                    // the products while those rows run (1.03–1.05× at 256 rows).
                    store(sums.add((s + 1) % 2), i0 + step);
                }
            }
            for r in (i0 + p * part)..(i0 + (p + 1) * part).min(i1) {
                finish(r, r - i0, t);
                for _ in 0..pf_per_row {
                    if pf_at < pf_bytes {
                        _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(pf_at) as *const i8);
                        pf_at += 64;
                    }
                }
            }
        }
    }
    // The lines the rows did not reach (fewer rows than lines at a few per row).
    prefetch(pf.wrapping_add(pf_at), pf_bytes.saturating_sub(pf_at));
}
