//! The K formats' 8-row kernels (AVX2), with `vpdpbusd` where AVX-VNNI is present.
//! Group layouts: `quant::krepack`. Each kernel writes `out[i · ld + 0..8]` for activation
//! row `i` (at most 4 rows: with their sums and accumulators, 12 of the 16 registers).

use super::{prefetch_ahead_k, KPrefetch};
use crate::quant::{ActRow, QK_K};
use std::arch::x86_64::*;

const G: usize = 8;

/// Four activation bytes at `at`, in every 32-bit lane.
#[inline(always)]
unsafe fn bcast4(a: &ActRow, at: usize) -> __m256i {
    _mm256_set1_epi32((a.qs.as_ptr().add(at) as *const i32).read_unaligned())
}

/// u8 × i8 products, four per 32-bit lane, added to `acc`: one i32 sum per lane with VNNI,
/// else two i16 sums per lane (the caller bounds how many it adds up).
#[inline(always)]
unsafe fn dot4<const VNNI: bool>(acc: __m256i, q: __m256i, a: __m256i) -> __m256i {
    if VNNI {
        _mm256_dpbusd_avx_epi32(acc, q, a)
    } else {
        _mm256_add_epi16(acc, _mm256_maddubs_epi16(q, a))
    }
}

/// Per-row scales (i32 lanes) in the form [`scaled`] takes: as they are for VNNI, else in
/// both i16 halves of the lane.
#[inline(always)]
unsafe fn prep<const VNNI: bool>(sc: __m256i) -> __m256i {
    if VNNI {
        sc
    } else {
        _mm256_or_si256(
            _mm256_and_si256(sc, _mm256_set1_epi32(0xFFFF)),
            _mm256_slli_epi32::<16>(sc),
        )
    }
}

/// A [`dot4`] sum times its row's scale, as i32 lanes.
#[inline(always)]
unsafe fn scaled<const VNNI: bool>(t: __m256i, sc: __m256i) -> __m256i {
    if VNNI {
        _mm256_mullo_epi32(t, sc)
    } else {
        _mm256_madd_epi16(t, sc)
    }
}

/// 8 bytes at `p` as i32 lanes, zero- or sign-extended.
#[inline(always)]
unsafe fn u8x8(p: *const u8) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
}
#[inline(always)]
unsafe fn i8x8(p: *const u8) -> __m256i {
    _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))
}
#[inline(always)]
unsafe fn f16x8(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// Q5_K's value: the nibbles `q` with 16 added where `qh` has the sub-block's `bit` set.
#[inline(always)]
unsafe fn with_fifth_bit(q: __m256i, qh: __m256i, bit: __m256i) -> __m256i {
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
    _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(16)))
}

/// Q4_K (`FIFTH = false`) and Q5_K: Σ_j sc_j·Σ q·a per row in i32, then
/// `d·da·that − dmin·da·Σ_j m_j·Σa_j`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
unsafe fn q45_k<const R: usize, const VNNI: bool, const FIFTH: bool>(
    w: *const u8,
    nsb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    let sb = if FIFTH { 180 * G } else { 148 * G };
    let qs_at = if FIFTH { 52 * G } else { 20 * G };
    let mask = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); R];
    let pf = KPrefetch::for_rows::<R>();
    for b in 0..nsb {
        let blk = w.add(b * sb);
        prefetch_ahead_k(pf, blk, sb, 0, 1);
        let mut isum = [_mm256_setzero_si256(); R];
        for j in 0..8 {
            let c = j / 2;
            let sc = prep::<VNNI>(u8x8(blk.add(4 * G + G * j)));
            let bit = _mm256_set1_epi8(1 << j);
            // Without VNNI, eight maddubs sums per i16: at most 8 · 2 · 31 · 127 = 62 992 for
            // Q5_K, so Q5_K folds its i16 sums every four vectors (31 496).
            let fold = if FIFTH && !VNNI { 4 } else { 8 };
            let mut t = [_mm256_setzero_si256(); R];
            for g in 0..8 {
                let p = _mm256_loadu_si256(blk.add(qs_at + (8 * c + g) * 4 * G) as *const _);
                let mut q = if j % 2 == 1 {
                    _mm256_and_si256(_mm256_srli_epi16::<4>(p), mask)
                } else {
                    _mm256_and_si256(p, mask)
                };
                if FIFTH {
                    let qh = _mm256_loadu_si256(blk.add(20 * G + g * 4 * G) as *const _);
                    q = with_fifth_bit(q, qh, bit);
                }
                for i in 0..R {
                    let a = bcast4(acts.get_unchecked(i), b * QK_K + 32 * j + 4 * g);
                    t[i] = dot4::<VNNI>(t[i], q, a);
                }
                if (g + 1) % fold == 0 {
                    for i in 0..R {
                        isum[i] = _mm256_add_epi32(isum[i], scaled::<VNNI>(t[i], sc));
                        t[i] = _mm256_setzero_si256();
                    }
                }
            }
        }
        q45_epilogue(blk, b, acts, &isum, &mut acc);
    }
    for (i, v) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(i * ld), *v);
    }
}

/// Q4_K/Q5_K's per-super-block end for `R` rows: `acc += d·da·isum − dmin·da·Σ_j m_j·Σa_j`.
#[inline(always)]
unsafe fn q45_epilogue<const R: usize>(
    blk: *const u8,
    b: usize,
    acts: &[ActRow],
    isum: &[__m256i; R],
    acc: &mut [__m256; R],
) {
    let d = f16x8(blk);
    let dmin = f16x8(blk.add(2 * G));
    // Mins of sub-blocks 2c and 2c + 1 in the i16 halves of each lane (no array `map`:
    // it is not inlined into a `target_feature` function).
    let mut mins = [_mm256_setzero_si256(); 4];
    for (c, m) in mins.iter_mut().enumerate() {
        let m0 = u8x8(blk.add(12 * G + G * 2 * c));
        let m1 = u8x8(blk.add(12 * G + G * (2 * c + 1)));
        *m = _mm256_or_si256(m0, _mm256_slli_epi32::<16>(m1));
    }
    for (i, (acc_i, isum_i)) in acc.iter_mut().zip(isum).enumerate() {
        let a = acts.get_unchecked(i);
        let ps = a.pairs.as_ptr().add(b * 4);
        let mut msum = _mm256_setzero_si256();
        for (c, m) in mins.iter().enumerate() {
            let s = _mm256_set1_epi32(*ps.add(c));
            msum = _mm256_add_epi32(msum, _mm256_madd_epi16(*m, s));
        }
        let da = _mm256_set1_ps(*a.d.get_unchecked(b));
        *acc_i = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*isum_i), _mm256_mul_ps(d, da), *acc_i);
        *acc_i = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dmin, da), *acc_i);
    }
}

/// Bytes of one Q4_K/Q5_K super-block of a group unpacked by [`unpack_q45`]: the eight
/// sub-blocks' scales in the form [`scaled`] takes (8 × 32), then their values a byte each,
/// sub-block by sub-block (8 × 8 vectors of 32: four values of each of the 8 rows).
pub const Q45_UNPACKED_SB: usize = 8 * 32 + 64 * 32;

/// Unpacks `nsb` super-blocks of one 8-row Q4_K (`FIFTH = false`) or Q5_K group into `dst`
/// (`nsb ·` [`Q45_UNPACKED_SB`] bytes): done once per group and row tile, so the many passes
/// of a prompt over that group no longer select nibbles, fifth bits and scales themselves.
#[target_feature(enable = "avx2")]
pub unsafe fn unpack_q45<const FIFTH: bool>(w: *const u8, nsb: usize, dst: *mut u8) {
    let sb = if FIFTH { 180 * G } else { 148 * G };
    let qs_at = if FIFTH { 52 * G } else { 20 * G };
    let mask = _mm256_set1_epi8(0x0F);
    for b in 0..nsb {
        let blk = w.add(b * sb);
        let d = dst.add(b * Q45_UNPACKED_SB);
        for j in 0..8 {
            let sc = prep::<false>(u8x8(blk.add(4 * G + G * j)));
            _mm256_storeu_si256(d.add(32 * j) as *mut __m256i, sc);
        }
        let vals = d.add(8 * 32);
        for c in 0..4 {
            let bit_lo = _mm256_set1_epi8(1 << (2 * c));
            let bit_hi = _mm256_set1_epi8((1u8 << (2 * c + 1)) as i8);
            for g in 0..8 {
                let p = _mm256_loadu_si256(blk.add(qs_at + (8 * c + g) * 4 * G) as *const _);
                let mut lo = _mm256_and_si256(p, mask);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(p), mask);
                if FIFTH {
                    let qh = _mm256_loadu_si256(blk.add(20 * G + g * 4 * G) as *const _);
                    lo = with_fifth_bit(lo, qh, bit_lo);
                    hi = with_fifth_bit(hi, qh, bit_hi);
                }
                _mm256_storeu_si256(vals.add((16 * c + g) * 32) as *mut __m256i, lo);
                _mm256_storeu_si256(vals.add((16 * c + 8 + g) * 32) as *mut __m256i, hi);
            }
        }
    }
}

/// [`q45_k`] over a group unpacked by [`unpack_q45`] (`u`), its headers still read from the
/// packed group `w`: per vector only the `maddubs` and sums of each row. AVX2 without VNNI.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
unsafe fn q45_k_unpacked<const R: usize, const FIFTH: bool>(
    w: *const u8,
    u: *const u8,
    nsb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    let sb = if FIFTH { 180 * G } else { 148 * G };
    // i16 sums folded every 8 vectors (Q4_K) or 4 (Q5_K): see `q45_k`.
    let fold = if FIFTH { 4 } else { 8 };
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nsb {
        let ub = u.add(b * Q45_UNPACKED_SB);
        let mut isum = [_mm256_setzero_si256(); R];
        for j in 0..8 {
            let sc = _mm256_loadu_si256(ub.add(32 * j) as *const __m256i);
            let mut t = [_mm256_setzero_si256(); R];
            for g in 0..8 {
                let q = _mm256_loadu_si256(ub.add(8 * 32 + (8 * j + g) * 32) as *const __m256i);
                let at = b * QK_K + 32 * j + 4 * g;
                for i in 0..R {
                    t[i] = dot4::<false>(t[i], q, bcast4(acts.get_unchecked(i), at));
                }
                if (g + 1) % fold == 0 {
                    for i in 0..R {
                        isum[i] = _mm256_add_epi32(isum[i], scaled::<false>(t[i], sc));
                        t[i] = _mm256_setzero_si256();
                    }
                }
            }
        }
        q45_epilogue(w.add(b * sb), b, acts, &isum, &mut acc);
    }
    for (i, v) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(i * ld), *v);
    }
}

/// See `quant::kgemm`: one unpacked Q4_K (`FIFTH = false`) or Q5_K group of 8 rows × `R`
/// activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_q45_k_8x4_unpacked<const R: usize, const FIFTH: bool>(
    w: *const u8,
    u: *const u8,
    nsb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    q45_k_unpacked::<R, FIFTH>(w, u, nsb, acts, out, ld)
}

/// Q6_K: Σ_s sc_s·Σ q·a per row in i32 (q = 0..63), less `32·Σ_s sc_s·Σa_s`, times `d·da`.
/// Sub-blocks through [`q6_sub`], whose bit selection is a constant: with it chosen at run
/// time inside one loop (as before) the prompt kernel ran 1.2–1.6× slower.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
unsafe fn q6_k<const R: usize, const VNNI: bool>(
    w: *const u8,
    nsb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    const SB: usize = 210 * G;
    let mut acc = [_mm256_setzero_ps(); R];
    let pf = KPrefetch::for_rows::<R>();
    for b in 0..nsb {
        let blk = w.add(b * SB);
        prefetch_ahead_k(pf, blk, SB, 0, 1);
        let mut isum = [_mm256_setzero_si256(); R];
        for n in 0..2 {
            for h in 0..2 {
                q6_sub::<R, VNNI, 0>(blk, b, n, h, acts, &mut isum);
                q6_sub::<R, VNNI, 1>(blk, b, n, h, acts, &mut isum);
                q6_sub::<R, VNNI, 2>(blk, b, n, h, acts, &mut isum);
                q6_sub::<R, VNNI, 3>(blk, b, n, h, acts, &mut isum);
            }
        }
        // Without VNNI the −32 comes apart: Σ_s sc_s·Σa_s, sub-blocks in pairs.
        let mut off = [_mm256_setzero_si256(); R];
        for p in 0..if VNNI { 0 } else { 8 } {
            q6_offset(q6_scale_pair(blk, p), b, p, acts, &mut off);
        }
        q6_epilogue(f16x8(blk), b, acts, &isum, &off, &mut acc);
    }
    for (i, v) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(i * ld), *v);
    }
}

/// The scales of Q6_K sub-blocks `2p` and `2p + 1` in the i16 halves of each lane.
#[inline(always)]
unsafe fn q6_scale_pair(blk: *const u8, p: usize) -> __m256i {
    let s0 = _mm256_and_si256(i8x8(blk.add(2 * G + G * 2 * p)), _mm256_set1_epi32(0xFFFF));
    let s1 = _mm256_slli_epi32::<16>(i8x8(blk.add(2 * G + G * (2 * p + 1))));
    _mm256_or_si256(s0, s1)
}

/// Adds sub-blocks `2p` and `2p + 1`'s share of the −32 offset, `Σ_s sc_s·Σa_s` with `pair`
/// from [`q6_scale_pair`], to each row's `off`.
#[inline(always)]
unsafe fn q6_offset<const R: usize>(
    pair: __m256i,
    b: usize,
    p: usize,
    acts: &[ActRow],
    off: &mut [__m256i; R],
) {
    for (i, o) in off.iter_mut().enumerate() {
        // Σa of sub-blocks 2p and 2p + 1: two adjacent i16, read as one i32 lane.
        let bs = acts.get_unchecked(i).bsums.as_ptr().add(b * 16 + 2 * p);
        let two = _mm256_set1_epi32((bs as *const i32).read_unaligned());
        *o = _mm256_add_epi32(*o, _mm256_madd_epi16(pair, two));
    }
}

/// Q6_K's per-super-block end for `R` rows: `acc += d·da·(isum − 32·off)`.
#[inline(always)]
unsafe fn q6_epilogue<const R: usize>(
    d: __m256,
    b: usize,
    acts: &[ActRow],
    isum: &[__m256i; R],
    off: &[__m256i; R],
    acc: &mut [__m256; R],
) {
    for (i, acc_i) in acc.iter_mut().enumerate() {
        let total = _mm256_sub_epi32(isum[i], _mm256_slli_epi32::<5>(off[i]));
        let da = _mm256_set1_ps(*acts.get_unchecked(i).d.get_unchecked(b));
        *acc_i = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(d, da), *acc_i);
    }
}

/// Q6_K's values 0..63 of bits `K` of a vector: the low nibble (K = 0, 1) or high nibble
/// (K = 2, 3) of `ql` (the vector's first 32 bytes of low bits for K = 0, 2, its second for
/// K = 1, 3) joined with bit pair `K` of `qh`.
#[inline(always)]
unsafe fn q6_join<const K: usize>(ql: __m256i, qh: __m256i) -> __m256i {
    let m4 = _mm256_set1_epi8(0x0F);
    let low = if K < 2 {
        _mm256_and_si256(ql, m4)
    } else {
        _mm256_and_si256(_mm256_srli_epi16::<4>(ql), m4)
    };
    let high = match K {
        0 => _mm256_slli_epi16::<4>(_mm256_and_si256(qh, _mm256_set1_epi8(0x03))),
        1 => _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0x0C))),
        2 => _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
        _ => _mm256_srli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0xC0u8 as i8))),
    };
    _mm256_or_si256(low, high)
}

/// One Q6_K sub-block `s = 8n + 2K + h` (16 values: vectors `g = 4h..4h + 4` of half `n`,
/// bits `K` of each) times `R` activation rows, added to `isum` as `sc_s · Σ q·a` (less the
/// −32 offset's share with VNNI). `K` is a constant so that each of the four bit selections
/// compiles to its own straight code.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
unsafe fn q6_sub<const R: usize, const VNNI: bool, const K: usize>(
    blk: *const u8,
    b: usize,
    n: usize,
    h: usize,
    acts: &[ActRow],
    isum: &mut [__m256i; R],
) {
    let s = 8 * n + 2 * K + h;
    let sc = prep::<VNNI>(i8x8(blk.add(2 * G + G * s)));
    // Without VNNI, two vectors per i16 sum: at most 4 · 63 · 127 = 32 004.
    let fold = if VNNI { 4 } else { 2 };
    let mut t = [_mm256_setzero_si256(); R];
    for g in 4 * h..4 * h + 4 {
        let v = blk.add(18 * G + (8 * n + g) * 12 * G);
        let ql = _mm256_loadu_si256(v.add(if K.is_multiple_of(2) { 0 } else { 4 * G }) as *const _);
        let qh = _mm256_loadu_si256(v.add(8 * G) as *const _);
        let q = q6_join::<K>(ql, qh);
        let at = b * QK_K + 128 * n + 32 * K + 4 * g;
        for i in 0..R {
            t[i] = dot4::<VNNI>(t[i], q, bcast4(acts.get_unchecked(i), at));
        }
        if (g + 1) % fold == 0 {
            for i in 0..R {
                let mut ti = t[i];
                if VNNI {
                    // The −32 of the whole sub-block, in its i32 sum.
                    let bs = *acts.get_unchecked(i).bsums.get_unchecked(b * 16 + s);
                    ti = _mm256_sub_epi32(ti, _mm256_set1_epi32(32 * bs as i32));
                }
                isum[i] = _mm256_add_epi32(isum[i], scaled::<VNNI>(ti, sc));
                t[i] = _mm256_setzero_si256();
            }
        }
    }
}

/// Bytes of one Q6_K super-block of a group unpacked by [`unpack_q6`]: the 16 sub-blocks'
/// scales in the form [`scaled`] takes (16 × 32), the scales of sub-blocks `2p, 2p + 1` in the
/// i16 halves of each lane for the −32 offset (8 × 32), then the values 0..63 a byte each in
/// activation order (64 vectors of 32: four values of each of the 8 rows).
pub const Q6_UNPACKED_SB: usize = 16 * 32 + 8 * 32 + 64 * 32;

/// Unpacks `nsb` super-blocks of one 8-row Q6_K group into `dst` (`nsb ·` [`Q6_UNPACKED_SB`]
/// bytes): once per group and row tile, so a prompt's passes no longer join the low and high
/// bits or widen the scales themselves.
#[target_feature(enable = "avx2")]
pub unsafe fn unpack_q6(w: *const u8, nsb: usize, dst: *mut u8) {
    const SB: usize = 210 * G;
    for b in 0..nsb {
        let blk = w.add(b * SB);
        let d = dst.add(b * Q6_UNPACKED_SB);
        for s in 0..16 {
            let sc = prep::<false>(i8x8(blk.add(2 * G + G * s)));
            _mm256_storeu_si256(d.add(32 * s) as *mut __m256i, sc);
        }
        for p in 0..8 {
            _mm256_storeu_si256(d.add(512 + 32 * p) as *mut __m256i, q6_scale_pair(blk, p));
        }
        let vals = d.add(768);
        for n in 0..2 {
            for g in 0..8 {
                let v = blk.add(18 * G + (8 * n + g) * 12 * G);
                let ql0 = _mm256_loadu_si256(v as *const _);
                let ql1 = _mm256_loadu_si256(v.add(4 * G) as *const _);
                let qh = _mm256_loadu_si256(v.add(8 * G) as *const _);
                // Bits K of the vector: the value at activation 128n + 32K + 4g.
                let q = [
                    q6_join::<0>(ql0, qh),
                    q6_join::<1>(ql1, qh),
                    q6_join::<2>(ql0, qh),
                    q6_join::<3>(ql1, qh),
                ];
                for (k, qk) in q.iter().enumerate() {
                    let at = vals.add((32 * n + 8 * k + g) * 32);
                    _mm256_storeu_si256(at as *mut __m256i, *qk);
                }
            }
        }
    }
}

/// [`q6_k`] over a group unpacked by [`unpack_q6`] (`u`), its `d` still read from the packed
/// group `w`: per vector only the `maddubs` and sums of each row. AVX2 without VNNI.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
unsafe fn q6_k_unpacked<const R: usize>(
    w: *const u8,
    u: *const u8,
    nsb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    const SB: usize = 210 * G;
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nsb {
        let ub = u.add(b * Q6_UNPACKED_SB);
        let vals = ub.add(768);
        let mut isum = [_mm256_setzero_si256(); R];
        for s in 0..16 {
            let sc = _mm256_loadu_si256(ub.add(32 * s) as *const __m256i);
            // Two vectors per i16 sum: at most 4 · 63 · 128 = 32 256.
            for half in 0..2 {
                let mut t = [_mm256_setzero_si256(); R];
                for v in 4 * s + 2 * half..4 * s + 2 * half + 2 {
                    let q = _mm256_loadu_si256(vals.add(32 * v) as *const __m256i);
                    let at = b * QK_K + 4 * v;
                    for i in 0..R {
                        t[i] = dot4::<false>(t[i], q, bcast4(acts.get_unchecked(i), at));
                    }
                }
                for i in 0..R {
                    isum[i] = _mm256_add_epi32(isum[i], scaled::<false>(t[i], sc));
                }
            }
        }
        let mut off = [_mm256_setzero_si256(); R];
        for p in 0..8 {
            let pair = _mm256_loadu_si256(ub.add(512 + 32 * p) as *const __m256i);
            q6_offset(pair, b, p, acts, &mut off);
        }
        q6_epilogue(f16x8(w.add(b * SB)), b, acts, &isum, &off, &mut acc);
    }
    for (i, v) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(i * ld), *v);
    }
}

/// See `quant::kgemm`: one unpacked Q6_K group of 8 rows × `R` activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_q6_k_8x4_unpacked<const R: usize>(
    w: *const u8,
    u: *const u8,
    nsb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    q6_k_unpacked::<R>(w, u, nsb, acts, out, ld)
}

/// The kernels by format, as `target_feature` entry points: the bodies above are inlined into
/// each, so the VNNI flavour alone may use `vpdpbusd`.
macro_rules! entry {
    ($name:ident, $feat:literal, $body:ident::<$($p:tt),*>) => {
        /// See `quant::kgemm`: one group of 8 rows × `R` activation rows.
        #[target_feature(enable = $feat)]
        pub unsafe fn $name<const R: usize>(
            w: *const u8,
            nsb: usize,
            acts: &[ActRow],
            out: *mut f32,
            ld: usize,
        ) {
            $body::<R, $($p),*>(w, nsb, acts, out, ld)
        }
    };
}

entry!(gemm_q4_k_8x4_q8k, "avx2,fma,f16c", q45_k::<false, false>);
entry!(gemm_q5_k_8x4_q8k, "avx2,fma,f16c", q45_k::<false, true>);
entry!(gemm_q6_k_8x4_q8k, "avx2,fma,f16c", q6_k::<false>);
entry!(
    gemm_q4_k_8x4_q8k_vnni,
    "avx2,avxvnni,fma,f16c",
    q45_k::<true, false>
);
entry!(
    gemm_q5_k_8x4_q8k_vnni,
    "avx2,avxvnni,fma,f16c",
    q45_k::<true, true>
);
entry!(
    gemm_q6_k_8x4_q8k_vnni,
    "avx2,avxvnni,fma,f16c",
    q6_k::<true>
);
