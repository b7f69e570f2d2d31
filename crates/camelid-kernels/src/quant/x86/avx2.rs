//! The 8-row kernels and the row-major (odd-shape) kernels with AVX2, FMA and F16C.

use super::prefetch_ahead;
use crate::quant::{ActRow, QKind, SumBoundsMut, BLOCK, QK_K};
use std::arch::x86_64::*;

/// [`crate::quant::reference::quantize_blocks_scalar`] with AVX2: the same bytes and scales (the maximum and
/// the integer sum are exact, the scale is computed by the same scalar expression and
/// `cvtps2dq` rounds ties to even).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_blocks(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    assert!(qs.len() >= x.len() && d.len() * BLOCK >= x.len() && s.len() * BLOCK >= x.len());
    let sign = _mm256_set1_ps(-0.0);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
        let p = xb.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        // Each value first: `vmaxps` returns its second operand where either is a NaN, so
        // the running maximum (never a NaN) skips them, as the scalar one and AVX-512's do.
        let mut m = _mm256_setzero_ps();
        for v in v {
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v), m);
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let db = amax / 127.0;
        let id = _mm256_set1_ps(if db > 0.0 { 1.0 / db } else { 0.0 });
        let q = v.map(|vi| _mm256_cvtps_epi32(_mm256_mul_ps(vi, id)));
        let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let s4 = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256(sum, 1),
        );
        let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
        let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0b10_11_00_01));
        // packs work per 128-bit lane; the permute restores element order.
        let w01 = _mm256_packs_epi32(q[0], q[1]);
        let w23 = _mm256_packs_epi32(q[2], q[3]);
        let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), order);
        _mm256_storeu_si256(qs.as_mut_ptr().add(b * BLOCK) as *mut __m256i, bytes);
        *d.get_unchecked_mut(b) = db;
        *s.get_unchecked_mut(b) = db * _mm_cvtsi128_si32(s1) as f32;
    }
}

/// [`crate::quant::reference::quantize_q8k_scalar`] with AVX2: the same bytes, scales and
/// sums of 16 and of 8 and the sum bounds (largest `Σ|q|` of 16, largest one-sign sum of 32;
/// as for [`quantize_blocks`]: an exact
/// maximum, the same scalar scale expression, `cvtps2dq` rounding ties to even, exact integer
/// sums).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8k(
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    bsums: &mut [i16],
    sums8: &mut [i16],
    bounds: SumBoundsMut,
) {
    assert!(qs.len() >= x.len() && d.len() * QK_K >= x.len() && bsums.len() * 16 >= x.len());
    assert!(sums8.len() * 8 >= x.len() && bounds.abs16.len() * QK_K >= x.len());
    assert!(bounds.sign32.len() * QK_K >= x.len());
    // The four u64 lanes of a `vpsadbw` added up.
    let lanes = |v: __m256i| {
        let t = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        _mm_cvtsi128_si64(_mm_add_epi64(t, _mm_unpackhi_epi64(t, t))) as i32
    };
    let flip = _mm256_set1_epi8(-128);
    let sign = _mm256_set1_ps(-0.0);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (b, xb) in x.chunks_exact(QK_K).enumerate() {
        let p = xb.as_ptr();
        let mut m = _mm256_setzero_ps();
        for i in 0..QK_K / 8 {
            // The value first: a NaN is skipped (see `quantize_blocks`).
            m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * i))), m);
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let db = amax / 127.0;
        let id = _mm256_set1_ps(if db > 0.0 { 1.0 / db } else { 0.0 });
        // The largest Σ|q| of 16 so far, in the low i32 of each 128-bit half.
        let mut abs_max = _mm256_setzero_si256();
        let mut sign_max = 0;
        for c in 0..QK_K / 32 {
            // Not `array::from_fn`: it is not inlined into a `target_feature` function.
            let at = |j: usize| _mm256_loadu_ps(p.add(32 * c + 8 * j));
            let q = [
                _mm256_cvtps_epi32(_mm256_mul_ps(at(0), id)),
                _mm256_cvtps_epi32(_mm256_mul_ps(at(1), id)),
                _mm256_cvtps_epi32(_mm256_mul_ps(at(2), id)),
                _mm256_cvtps_epi32(_mm256_mul_ps(at(3), id)),
            ];
            // The sums of each 8 of this 32 (one vector each), then of each 16.
            let h = _mm256_hadd_epi32(_mm256_hadd_epi32(q[0], q[1]), _mm256_hadd_epi32(q[2], q[3]));
            let s8 = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            let s16 = _mm_hadd_epi32(s8, s8);
            let at8 = sums8.as_mut_ptr().add(b * 32 + 4 * c);
            _mm_storel_epi64(at8 as *mut __m128i, _mm_packs_epi32(s8, s8));
            let at16 = bsums.as_mut_ptr().add(b * 16 + 2 * c);
            (at16 as *mut i32).write_unaligned(_mm_cvtsi128_si32(_mm_packs_epi32(s16, s16)));
            let w01 = _mm256_packs_epi32(q[0], q[1]);
            let w23 = _mm256_packs_epi32(q[2], q[3]);
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), order);
            _mm256_storeu_si256(
                qs.as_mut_ptr().add(b * QK_K + 32 * c) as *mut __m256i,
                bytes,
            );
            // Σ|q| of each 8 of the stored bytes (a −128, from a NaN or infinite product,
            // counts 128, as in the scalar reference), then of each 16: in the low i32 of
            // each 128-bit half.
            let a8 = _mm256_sad_epu8(_mm256_abs_epi8(bytes), _mm256_setzero_si256());
            let a16 = _mm256_add_epi64(a8, _mm256_srli_si256::<8>(a8));
            abs_max = _mm256_max_epu32(abs_max, a16);
            // Of the 32 stored bytes: Σ|q| and Σq (from Σ(q + 128)); the larger of Σq⁺ and
            // Σ|q⁻| is (Σ|q| + |Σq|) / 2, exactly (the two sums have the same parity).
            let abs32 = lanes(a8);
            let sum32 = lanes(_mm256_sad_epu8(
                _mm256_xor_si256(bytes, flip),
                _mm256_setzero_si256(),
            )) - 32 * 128;
            sign_max = sign_max.max((abs32 + sum32.abs()) / 2);
        }
        *d.get_unchecked_mut(b) = db;
        let m = _mm_max_epu32(
            _mm256_castsi256_si128(abs_max),
            _mm256_extracti128_si256(abs_max, 1),
        );
        *bounds.abs16.get_unchecked_mut(b) = _mm_cvtsi128_si32(m) as u16;
        *bounds.sign32.get_unchecked_mut(b) = sign_max as u16;
    }
}

pub fn dot_rows(kind: QKind, wrow: &[u8], acts: &[ActRow], out: &mut [f32]) {
    let nb = wrow.len() / kind.block_bytes();
    for a in acts {
        assert!(a.qs.len() >= nb * BLOCK && a.d.len() >= nb && a.s.len() >= nb);
    }
    // Safety: `cpu_features::avx2()` was true when this kernel was chosen; lengths checked above.
    unsafe {
        match acts.len() {
            4 => dot_n::<4>(kind, wrow, nb, acts, out),
            3 => dot_n::<3>(kind, wrow, nb, acts, out),
            2 => dot_n::<2>(kind, wrow, nb, acts, out),
            1 => dot_n::<1>(kind, wrow, nb, acts, out),
            _ => unreachable!("groups of at most 4 rows"),
        }
    }
}

pub fn dot_pair(kind: QKind, w0: &[u8], w1: &[u8], a: &ActRow) -> (f32, f32) {
    let nb = w0.len() / kind.block_bytes();
    assert!(w1.len() == w0.len() && a.qs.len() >= nb * BLOCK && a.d.len() >= nb && a.s.len() >= nb);
    // Safety: `cpu_features::avx2()` was true when this kernel was chosen; lengths checked above.
    unsafe { dot_pair_avx2(kind, [w0.as_ptr(), w1.as_ptr()], nb, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_pair_avx2(kind: QKind, w: [*const u8; 2], nb: usize, a: &ActRow) -> (f32, f32) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut offs = [0f32; 2];
    let bb = kind.block_bytes();
    for b in 0..nb {
        let av = _mm256_loadu_si256(a.qs.as_ptr().add(b * BLOCK) as *const __m256i);
        let (da, sa) = (*a.d.get_unchecked(b), *a.s.get_unchecked(b));
        for j in 0..2 {
            let blk = w[j].add(b * bb);
            let (dw, mw) = f16x2(blk);
            let p = match kind {
                QKind::Q8_0 => {
                    let q = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                    _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(av, q))
                }
                QKind::Q4_1 => _mm256_maddubs_epi16(nibbles(blk.add(4)), av),
                QKind::Q4_0 => _mm256_maddubs_epi16(nibbles(blk.add(2)), av),
                _ => unreachable!("K formats: kgemm"),
            };
            let p = _mm256_madd_epi16(p, ones);
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * da), acc[j]);
            offs[j] += match kind {
                QKind::Q4_1 => mw * sa,
                QKind::Q4_0 => -8.0 * dw * sa,
                QKind::Q8_0 => 0.0,
                _ => unreachable!("K formats: kgemm"),
            };
        }
    }
    (hsum(acc[0]) + offs[0], hsum(acc[1]) + offs[1])
}

/// See [`crate::quant::gemm_group`]; Q4_0 and Q4_1 (`m = −8d` for Q4_0), 8-row groups.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
pub unsafe fn gemm_q4_8x4_q8<const R: usize>(
    w: *const u8,
    nb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let blk = w.add(b * 160);
        prefetch_ahead::<R>(blk, 160);
        // Eight nibble×byte products summed in i16: at most 8 · 2 · 15 · 127 = 30 480.
        let mut isum = [_mm256_setzero_si256(); R];
        for g in 0..4 {
            let p = _mm256_loadu_si256(blk.add(32 + 32 * g) as *const __m256i);
            let lo = _mm256_and_si256(p, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), mask);
            for i in 0..R {
                let a = acts.get_unchecked(i).qs.as_ptr().add(b * BLOCK) as *const i32;
                let alo = _mm256_set1_epi32(a.add(g).read_unaligned());
                let ahi = _mm256_set1_epi32(a.add(4 + g).read_unaligned());
                isum[i] = _mm256_add_epi16(isum[i], _mm256_maddubs_epi16(lo, alo));
                isum[i] = _mm256_add_epi16(isum[i], _mm256_maddubs_epi16(hi, ahi));
            }
        }
        let d8 = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
        let m8 = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
        for i in 0..R {
            let a = acts.get_unchecked(i);
            let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(isum[i], ones));
            let da = _mm256_set1_ps(*a.d.get_unchecked(b));
            acc[i] = _mm256_fmadd_ps(p, _mm256_mul_ps(d8, da), acc[i]);
            acc[i] = _mm256_fmadd_ps(m8, _mm256_set1_ps(*a.s.get_unchecked(b)), acc[i]);
        }
    }
    for (i, v) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(i * ld), *v);
    }
}

/// See [`crate::quant::gemm_group`]; Q5_0 and Q5_1, 8-row groups (192 bytes per block:
/// `d`, `m`, the fifth bits `hb`, the nibbles as for Q4).
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
pub unsafe fn gemm_q5_8x4_q8<const R: usize>(
    w: *const u8,
    nb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let fifth = _mm256_set1_epi8(0x10);
    // Byte t of a row's lane: value 4g + t (bit t of hb byte g) or 16 + 4g + t (bit 4 + t).
    let bit_lo = _mm256_set1_epi32(0x0804_0201);
    let bit_hi = _mm256_set1_epi32(0x8040_2010_u32 as i32);
    // Each row's 4-byte lane starts at byte 4·(r mod 4) of its 128-bit lane.
    let lane_base = _mm256_setr_epi32(
        0,
        0x0404_0404,
        0x0808_0808,
        0x0C0C_0C0C,
        0,
        0x0404_0404,
        0x0808_0808,
        0x0C0C_0C0C,
    );
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let blk = w.add(b * 192);
        prefetch_ahead::<R>(blk, 192);
        let hb = _mm256_loadu_si256(blk.add(32) as *const __m256i);
        let mut isum = [_mm256_setzero_si256(); R];
        for g in 0..4 {
            let p = _mm256_loadu_si256(blk.add(64 + 32 * g) as *const __m256i);
            // hb byte g of each row, in all four bytes of the row's lane.
            let h = _mm256_shuffle_epi8(hb, _mm256_add_epi8(lane_base, _mm256_set1_epi8(g as i8)));
            let set = |bits: __m256i| {
                let on = _mm256_cmpeq_epi8(_mm256_and_si256(h, bits), bits);
                _mm256_and_si256(on, fifth)
            };
            let lo = _mm256_or_si256(_mm256_and_si256(p, mask), set(bit_lo));
            let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(p, 4), mask), set(bit_hi));
            for i in 0..R {
                let a = acts.get_unchecked(i).qs.as_ptr().add(b * BLOCK) as *const i32;
                let alo = _mm256_set1_epi32(a.add(g).read_unaligned());
                let ahi = _mm256_set1_epi32(a.add(4 + g).read_unaligned());
                // Four 5-bit×byte products in i16: at most 4 · 31 · 127 = 15 748; then i32.
                let s =
                    _mm256_add_epi16(_mm256_maddubs_epi16(lo, alo), _mm256_maddubs_epi16(hi, ahi));
                isum[i] = _mm256_add_epi32(isum[i], _mm256_madd_epi16(s, ones));
            }
        }
        let d8 = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
        let m8 = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
        for i in 0..R {
            let a = acts.get_unchecked(i);
            let p = _mm256_cvtepi32_ps(isum[i]);
            let da = _mm256_set1_ps(*a.d.get_unchecked(b));
            acc[i] = _mm256_fmadd_ps(p, _mm256_mul_ps(d8, da), acc[i]);
            acc[i] = _mm256_fmadd_ps(m8, _mm256_set1_ps(*a.s.get_unchecked(b)), acc[i]);
        }
    }
    for (i, v) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(i * ld), *v);
    }
}

/// See [`crate::quant::gemm_group`]; Q8_0, 8-row groups.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
pub unsafe fn gemm_q8_0_8x4_q8<const R: usize>(
    w: *const u8,
    nb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let blk = w.add(b * 272);
        prefetch_ahead::<R>(blk, 272);
        let mut isum = [_mm256_setzero_si256(); R];
        for g in 0..8 {
            let q = _mm256_loadu_si256(blk.add(16 + 32 * g) as *const __m256i);
            // maddubs wants unsigned × signed: |q| × (a with q's sign).
            let q_abs = _mm256_sign_epi8(q, q);
            for i in 0..R {
                let a = acts.get_unchecked(i).qs.as_ptr().add(b * BLOCK) as *const i32;
                let a4 = _mm256_sign_epi8(_mm256_set1_epi32(a.add(g).read_unaligned()), q);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q_abs, a4), ones);
                isum[i] = _mm256_add_epi32(isum[i], p);
            }
        }
        let d8 = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
        for i in 0..R {
            let da = _mm256_set1_ps(*acts.get_unchecked(i).d.get_unchecked(b));
            let p = _mm256_cvtepi32_ps(isum[i]);
            acc[i] = _mm256_fmadd_ps(p, _mm256_mul_ps(d8, da), acc[i]);
        }
    }
    for (i, v) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(i * ld), *v);
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// The two f16 values at `p` as f32 (lanes 0 and 1).
#[inline(always)]
unsafe fn f16x2(p: *const u8) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1)))
}

/// 32 nibbles of a 4-bit block as bytes 0..15 in order: low nibbles, then high nibbles.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let x = _mm_loadu_si128(p as *const __m128i);
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16(x, 4), x),
        _mm256_set1_epi8(0x0F),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_n<const R: usize>(
    kind: QKind,
    wrow: &[u8],
    nb: usize,
    acts: &[ActRow],
    out: &mut [f32],
) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut offs = [0f32; R];
    let w = wrow.as_ptr();
    let bb = kind.block_bytes();
    for b in 0..nb {
        let blk = w.add(b * bb);
        match kind {
            QKind::Q4_1 | QKind::Q4_0 => {
                let (dw, m) = f16x2(blk);
                // Q4_1 adds m per value; Q4_0 stores q + 8.
                let (q, mw) = if kind == QKind::Q4_1 {
                    (nibbles(blk.add(4)), m)
                } else {
                    (nibbles(blk.add(2)), -8.0 * dw)
                };
                for i in 0..R {
                    let a =
                        _mm256_loadu_si256(acts[i].qs.as_ptr().add(b * BLOCK) as *const __m256i);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), ones);
                    let scale = _mm256_set1_ps(dw * *acts[i].d.get_unchecked(b));
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[i]);
                    offs[i] += mw * *acts[i].s.get_unchecked(b);
                }
            }
            QKind::Q8_0 => {
                let (dw, _) = f16x2(blk);
                let q = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                // maddubs wants unsigned × signed: |q| × (a with q's sign).
                let q_abs = _mm256_sign_epi8(q, q);
                for i in 0..R {
                    let a =
                        _mm256_loadu_si256(acts[i].qs.as_ptr().add(b * BLOCK) as *const __m256i);
                    let a_signed = _mm256_sign_epi8(a, q);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q_abs, a_signed), ones);
                    let scale = _mm256_set1_ps(dw * *acts[i].d.get_unchecked(b));
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[i]);
                }
            }
            _ => unreachable!("K formats: kgemm"),
        }
    }
    for i in 0..R {
        out[i] = hsum(acc[i]) + offs[i];
    }
}
