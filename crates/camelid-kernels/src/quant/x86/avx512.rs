//! The 16-row kernels (AVX-512BW: twice the lanes of AVX2 per instruction).

use super::k512::{bcast_row, dpbusd_rows, RowAddrs};
use super::prefetch_ahead;
use crate::quant::{ActRow, BLOCK};
use std::arch::x86_64::*;

/// See [`crate::quant::gemm_group`]; Q4_0 and Q4_1, 16-row groups (320 bytes per block).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
pub unsafe fn gemm_q4_16x8_q8<const R: usize>(
    w: *const u8,
    nb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    let mask = _mm512_set1_epi8(0x0F);
    let ones = _mm512_set1_epi16(1);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let blk = w.add(b * 320);
        prefetch_ahead::<R>(blk, 320);
        // Eight nibble×byte products summed in i16: at most 8 · 2 · 15 · 127 = 30 480.
        let mut isum = [_mm512_setzero_si512(); R];
        for g in 0..4 {
            let p = _mm512_loadu_si512(blk.add(64 + 64 * g) as *const _);
            let lo = _mm512_and_si512(p, mask);
            let hi = _mm512_and_si512(_mm512_srli_epi16(p, 4), mask);
            for i in 0..R {
                let a = acts.get_unchecked(i).qs.as_ptr().add(b * BLOCK) as *const i32;
                let alo = _mm512_set1_epi32(a.add(g).read_unaligned());
                let ahi = _mm512_set1_epi32(a.add(4 + g).read_unaligned());
                isum[i] = _mm512_add_epi16(isum[i], _mm512_maddubs_epi16(lo, alo));
                isum[i] = _mm512_add_epi16(isum[i], _mm512_maddubs_epi16(hi, ahi));
            }
        }
        let d16 = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
        let m16 = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32) as *const __m256i));
        for i in 0..R {
            let a = acts.get_unchecked(i);
            let p = _mm512_cvtepi32_ps(_mm512_madd_epi16(isum[i], ones));
            let da = _mm512_set1_ps(*a.d.get_unchecked(b));
            acc[i] = _mm512_fmadd_ps(p, _mm512_mul_ps(d16, da), acc[i]);
            acc[i] = _mm512_fmadd_ps(m16, _mm512_set1_ps(*a.s.get_unchecked(b)), acc[i]);
        }
    }
    for (i, v) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add(i * ld), *v);
    }
}

/// [`gemm_q4_16x8_q8`] with AVX-512 VNNI: each nibble vector's products go into each row's
/// i32 sums by one `vpdpbusd` (the activations read as embedded broadcasts, `dpbusd_rows`)
/// instead of `vpmaddubsw`, `vpaddw` and, per block, `vpmaddwd`: per block and row 8
/// instructions where those were 17. The low and high nibbles (values 0–15 and 16–31 of
/// the block) keep separate sums, two independent chains a row. The same integer block
/// sums, then the same f32 steps, so the same bits.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_q4_16x8_q8_vnni<const R: usize>(
    w: *const u8,
    nb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    q45_block_vnni::<R, false>(w, nb, acts, out, ld)
}

/// [`gemm_q5_16x8_q8`] with AVX-512 VNNI, as [`gemm_q4_16x8_q8_vnni`] is Q4's.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_q5_16x8_q8_vnni<const R: usize>(
    w: *const u8,
    nb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    q45_block_vnni::<R, true>(w, nb, acts, out, ld)
}

/// The VNNI passes over Q4 (`FIVE = false`: 320 bytes a 16-row block, the nibbles at 64) and
/// Q5 groups (384 bytes, the fifth bits at 64, the nibbles at 128): two i32 sums a row, then
/// `acc += d·da·Σ + m·s` as the `vpmaddubsw` passes do.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
unsafe fn q45_block_vnni<const R: usize, const FIVE: bool>(
    w: *const u8,
    nb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    let (block, values) = if FIVE { (384, 128) } else { (320, 64) };
    let mask = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); R];
    let rows = RowAddrs::new(acts);
    for b in 0..nb {
        let blk = w.add(b * block);
        prefetch_ahead::<R>(blk, block);
        let hb = if FIVE {
            _mm512_loadu_si512(blk.add(64) as *const _)
        } else {
            _mm512_setzero_si512()
        };
        let (mut lo, mut hi) = ([_mm512_setzero_si512(); R], [_mm512_setzero_si512(); R]);
        for g in 0..4 {
            let p = _mm512_loadu_si512(blk.add(values + 64 * g) as *const _);
            let (low, high) = if FIVE {
                q5_values(p, hb, g)
            } else {
                (
                    _mm512_and_si512(p, mask),
                    _mm512_and_si512(_mm512_srli_epi16(p, 4), mask),
                )
            };
            let at = b * BLOCK + 4 * g;
            dpbusd_rows(&mut lo, low, rows, at);
            dpbusd_rows(&mut hi, high, rows, at + 16);
        }
        let d16 = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
        let m16 = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32) as *const __m256i));
        for i in 0..R {
            let a = acts.get_unchecked(i);
            let p = _mm512_cvtepi32_ps(_mm512_add_epi32(lo[i], hi[i]));
            let da = _mm512_set1_ps(*a.d.get_unchecked(b));
            acc[i] = _mm512_fmadd_ps(p, _mm512_mul_ps(d16, da), acc[i]);
            acc[i] = _mm512_fmadd_ps(m16, _mm512_set1_ps(*a.s.get_unchecked(b)), acc[i]);
        }
    }
    for (i, v) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add(i * ld), *v);
    }
}

/// See [`crate::quant::gemm_group`]; Q8_0, 16-row groups (544 bytes per block).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub unsafe fn gemm_q8_0_16x8_q8<const R: usize>(
    w: *const u8,
    nb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    q8_0_block::<R, false>(w, nb, acts, out, ld)
}

/// [`gemm_q8_0_16x8_q8`] with AVX-512 VNNI: each row's `|q| × ±a` products go into its i32
/// sums by one `vpdpbusd` instead of `vpmaddubsw`, `vpmaddwd` and `vpaddd`. The same
/// integer block sums and f32 steps, so the same bits.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_q8_0_16x8_q8_vnni<const R: usize>(
    w: *const u8,
    nb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    q8_0_block::<R, true>(w, nb, acts, out, ld)
}

/// The Q8_0 passes, with `vpdpbusd` (`VNNI`) or `vpmaddubsw`: per block each row's
/// `Σ q·a` in i32, then `acc += d·da·Σ`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
unsafe fn q8_0_block<const R: usize, const VNNI: bool>(
    w: *const u8,
    nb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    let ones = _mm512_set1_epi16(1);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); R];
    // The VNNI passes' row addresses (the maddubs ones read each row's own slice).
    let rows = VNNI.then(|| RowAddrs::new(acts));
    for b in 0..nb {
        let blk = w.add(b * 544);
        prefetch_ahead::<R>(blk, 544);
        let mut isum = [_mm512_setzero_si512(); R];
        for g in 0..8 {
            let q = _mm512_loadu_si512(blk.add(32 + 64 * g) as *const _);
            // maddubs and vpdpbusd want unsigned × signed: |q| × (a negated where q < 0);
            // AVX-512 has no vpsignb, so the negation is a subtraction under q's sign mask.
            let q_abs = _mm512_abs_epi8(q);
            let neg = _mm512_movepi8_mask(q);
            let at = b * BLOCK + 4 * g;
            if VNNI {
                // Spelled out: as a loop over 0..R the compiler kept it a loop (a jump
                // table, the sums in memory), as k512's `dpbusd_rows` says.
                macro_rules! row {
                    ($($i:literal)*) => {$(
                        if $i < R {
                            let a4 = bcast_row(rows.unwrap_unchecked(), $i, at);
                            let a4 = _mm512_mask_sub_epi8(a4, neg, zero, a4);
                            isum[$i] = _mm512_dpbusd_epi32(isum[$i], q_abs, a4);
                        }
                    )*};
                }
                row!(0 1 2 3 4 5 6 7);
            } else {
                for i in 0..R {
                    let a = acts.get_unchecked(i).qs.as_ptr().add(at) as *const i32;
                    let a4 = _mm512_set1_epi32(a.read_unaligned());
                    let a4 = _mm512_mask_sub_epi8(a4, neg, zero, a4);
                    // Two products per i16 lane: at most 2 · 127 · 127 = 32 258, then i32.
                    let p = _mm512_madd_epi16(_mm512_maddubs_epi16(q_abs, a4), ones);
                    isum[i] = _mm512_add_epi32(isum[i], p);
                }
            }
        }
        let d16 = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
        for i in 0..R {
            let da = _mm512_set1_ps(*acts.get_unchecked(i).d.get_unchecked(b));
            let p = _mm512_cvtepi32_ps(isum[i]);
            acc[i] = _mm512_fmadd_ps(p, _mm512_mul_ps(d16, da), acc[i]);
        }
    }
    for (i, v) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add(i * ld), *v);
    }
}

/// The 5-bit values of nibble vector `g` (0..4) of a 16-row Q5 block: `p` its nibbles, `hb`
/// the block's fifth bits. Byte t of a row's 4-byte lane is value 4g + t (the low nibble and
/// bit t of the row's hb byte g) in `.0`, value 16 + 4g + t (the high nibble, bit 4 + t) in
/// `.1`. Shared with the AMX unpacking (`amx32::unpack`), which must read the same values.
#[inline(always)]
pub(crate) unsafe fn q5_values(p: __m512i, hb: __m512i, g: usize) -> (__m512i, __m512i) {
    let low = _mm512_set1_epi8(0x0F);
    let fifth = _mm512_set1_epi8(0x10);
    let bit_lo = _mm512_set1_epi32(0x0804_0201);
    let bit_hi = _mm512_set1_epi32(0x8040_2010_u32 as i32);
    // Each row's 4-byte lane starts at byte 4·(r mod 4) of its 128-bit lane; hb byte g of
    // each row goes to all four bytes of the row's lane.
    let lane_base = _mm512_set4_epi32(0x0C0C_0C0C, 0x0808_0808, 0x0404_0404, 0);
    let h = _mm512_shuffle_epi8(hb, _mm512_add_epi8(lane_base, _mm512_set1_epi8(g as i8)));
    let lo = _mm512_and_si512(p, low);
    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(p), low);
    (
        _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(h, bit_lo), lo, fifth),
        _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(h, bit_hi), hi, fifth),
    )
}

/// See [`crate::quant::gemm_group`]; Q5_0 and Q5_1, 16-row groups (384 bytes per block:
/// `d`, `m`, the fifth bits `hb`, the nibbles as for Q4).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
pub unsafe fn gemm_q5_16x8_q8<const R: usize>(
    w: *const u8,
    nb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    let ones = _mm512_set1_epi16(1);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let blk = w.add(b * 384);
        prefetch_ahead::<R>(blk, 384);
        let hb = _mm512_loadu_si512(blk.add(64) as *const _);
        let mut isum = [_mm512_setzero_si512(); R];
        for g in 0..4 {
            let p = _mm512_loadu_si512(blk.add(128 + 64 * g) as *const _);
            let (lo, hi) = q5_values(p, hb, g);
            for i in 0..R {
                let a = acts.get_unchecked(i).qs.as_ptr().add(b * BLOCK) as *const i32;
                let alo = _mm512_set1_epi32(a.add(g).read_unaligned());
                let ahi = _mm512_set1_epi32(a.add(4 + g).read_unaligned());
                // Four 5-bit×byte products in i16: at most 4 · 31 · 127 = 15 748; then i32.
                let s =
                    _mm512_add_epi16(_mm512_maddubs_epi16(lo, alo), _mm512_maddubs_epi16(hi, ahi));
                isum[i] = _mm512_add_epi32(isum[i], _mm512_madd_epi16(s, ones));
            }
        }
        let d16 = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
        let m16 = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32) as *const __m256i));
        for i in 0..R {
            let a = acts.get_unchecked(i);
            let p = _mm512_cvtepi32_ps(isum[i]);
            let da = _mm512_set1_ps(*a.d.get_unchecked(b));
            acc[i] = _mm512_fmadd_ps(p, _mm512_mul_ps(d16, da), acc[i]);
            acc[i] = _mm512_fmadd_ps(m16, _mm512_set1_ps(*a.s.get_unchecked(b)), acc[i]);
        }
    }
    for (i, v) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add(i * ld), *v);
    }
}

/// [`crate::quant::reference::quantize_q8k_scalar`] in 16 lanes: for finite values (and a
/// block maximum whose inverse scale is finite) the same bytes, scales, sums and bounds,
/// rounding ties to even by `vcvtps2dq`; 64 values a step where the AVX2 one takes 32 (a
/// prompt quantizes every matmul's input: 2.6 % of a 1B Q5_K_M model's 512-token step in
/// AVX2). A NaN is skipped by the block maximum, as `f32::max` skips it; a NaN or
/// out-of-range product becomes −128, as in the AVX2 one (the scalar one casts), and the sums
/// are always those of the stored bytes.
///
/// # Safety
/// The CPU has AVX-512F/BW, AVX2, FMA and F16C; the slices are as the scalar one takes them.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub unsafe fn quantize_q8k(
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    bsums: &mut [i16],
    sums8: &mut [i16],
    bounds: crate::quant::SumBoundsMut,
) {
    use crate::quant::QK_K;
    assert!(qs.len() >= x.len() && d.len() * QK_K >= x.len() && bsums.len() * 16 >= x.len());
    assert!(sums8.len() * 8 >= x.len() && bounds.abs16.len() * QK_K >= x.len());
    assert!(bounds.sign32.len() * QK_K >= x.len());
    // |x| by clearing the sign bit as integers: `_mm512_andnot_ps` is AVX-512DQ, which the
    // enabled features (and `cpu_features::avx512`) do not include.
    let magnitude = _mm512_set1_epi32(i32::MAX);
    let flip = _mm512_set1_epi8(-128);
    let ones = _mm_set1_epi16(1);
    for (b, xb) in x.chunks_exact(QK_K).enumerate() {
        let p = xb.as_ptr();
        // Four running maxima (one chain of 16 waited on each `vmaxps`); `vmaxps` returns its
        // second operand where either is a NaN: the running max.
        let mut m = [_mm512_setzero_ps(); 4];
        for i in 0..QK_K / 16 {
            let v = _mm512_castsi512_ps(_mm512_and_si512(
                _mm512_loadu_si512(p.add(16 * i) as *const _),
                magnitude,
            ));
            m[i % 4] = _mm512_max_ps(v, m[i % 4]);
        }
        let m = _mm512_max_ps(_mm512_max_ps(m[0], m[1]), _mm512_max_ps(m[2], m[3]));
        let amax = _mm512_reduce_max_ps(m);
        let db = amax / 127.0;
        let id = _mm512_set1_ps(if db > 0.0 { 1.0 / db } else { 0.0 });
        // The largest Σ|q| of 16 and one-sign sum of 32 so far (i32 lanes).
        let (mut abs_max, mut sign_max) = (_mm_setzero_si128(), _mm_setzero_si128());
        for c in 0..QK_K / 64 {
            let at = |j: usize| {
                let v = _mm512_mul_ps(_mm512_loadu_ps(p.add(64 * c + 16 * j)), id);
                _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v))
            };
            let bytes = _mm512_inserti32x4::<3>(
                _mm512_inserti32x4::<2>(
                    _mm512_inserti32x4::<1>(_mm512_castsi128_si512(at(0)), at(1)),
                    at(2),
                ),
                at(3),
            );
            _mm512_storeu_si512(qs.as_mut_ptr().add(b * QK_K + 64 * c) as *mut _, bytes);
            // Σq and Σ|q| of each 8 (from Σ(q + 128); a −128 counts 128), as eight i16.
            let s8 = _mm_sub_epi16(
                _mm512_cvtepi64_epi16(_mm512_sad_epu8(
                    _mm512_xor_si512(bytes, flip),
                    _mm512_setzero_si512(),
                )),
                _mm_set1_epi16(8 * 128),
            );
            let a8 = _mm512_cvtepi64_epi16(_mm512_sad_epu8(
                _mm512_abs_epi8(bytes),
                _mm512_setzero_si512(),
            ));
            _mm_storeu_si128(sums8.as_mut_ptr().add(b * 32 + 8 * c) as *mut _, s8);
            // Of each 16 (four i32), stored as i16; then of each 32 (lanes 0 and 1).
            let s16 = _mm_madd_epi16(s8, ones);
            let a16 = _mm_madd_epi16(a8, ones);
            _mm_storel_epi64(
                bsums.as_mut_ptr().add(b * 16 + 4 * c) as *mut _,
                _mm_packs_epi32(s16, s16),
            );
            abs_max = _mm_max_epi32(abs_max, a16);
            // The larger of Σq⁺ and Σ|q⁻| is (Σ|q| + |Σq|) / 2, exactly (same parity).
            let (s32, a32) = (_mm_hadd_epi32(s16, s16), _mm_hadd_epi32(a16, a16));
            let one_sign = _mm_srli_epi32::<1>(_mm_add_epi32(a32, _mm_abs_epi32(s32)));
            sign_max = _mm_max_epi32(sign_max, one_sign);
        }
        let hmax = |v: __m128i| {
            let v = _mm_max_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
            _mm_cvtsi128_si32(_mm_max_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v)))
        };
        *d.get_unchecked_mut(b) = db;
        *bounds.abs16.get_unchecked_mut(b) = hmax(abs_max) as u16;
        *bounds.sign32.get_unchecked_mut(b) = hmax(sign_max) as u16;
    }
}
