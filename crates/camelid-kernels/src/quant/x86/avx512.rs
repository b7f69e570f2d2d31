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
