//! The x86 kernels: `M` activation rows × `G` interleaved groups of 16 (AVX-512) or 8 (AVX2)
//! weight rows, the whole width `k` in one call, sums in `M · G` vector accumulators.

use super::{Flavour, HalfKind};
use std::arch::x86_64::*;

/// How far ahead of the column being multiplied each group's weights are prefetched: each
/// group is its own stream, more than the hardware prefetcher follows at once.
const PREFETCH_BYTES: usize = 1024;

/// Sums of `rows` activation rows (stride `k`) × `groups` groups (stride `group · k` values)
/// into `res[i · groups + g]` (lanes past the group size untouched).
///
/// # Safety
/// `flavour` runs on this CPU; `w` points at `groups` whole interleaved groups of `k` columns
/// for it; `x` at `rows` rows of `k` f32; `rows` ≤ 8 (AVX-512) or 6 (AVX2) and `groups` 2 or 4
/// (4 only for ≤ 2 rows).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    flavour: Flavour,
    kind: HalfKind,
    w: *const u16,
    k: usize,
    x: *const f32,
    rows: usize,
    groups: usize,
    res: &mut [[f32; 16]],
) {
    macro_rules! go {
        ($f:ident, $bf:expr, $($m:literal),*) => {
            match (rows, groups) {
                $(($m, 2) => $f::<2, $m, $bf>(w, k, x, res),)*
                (1, 4) => $f::<4, 1, $bf>(w, k, x, res),
                (2, 4) => $f::<4, 2, $bf>(w, k, x, res),
                _ => unreachable!("{rows} rows × {groups} groups"),
            }
        };
    }
    match (flavour, kind) {
        (Flavour::Avx512, HalfKind::F16) => go!(gemm512, false, 1, 2, 3, 4, 5, 6, 7, 8),
        (Flavour::Avx512, HalfKind::Bf16) => go!(gemm512, true, 1, 2, 3, 4, 5, 6, 7, 8),
        (Flavour::Avx2, HalfKind::F16) => go!(gemm256, false, 1, 2, 3, 4, 5, 6),
        (Flavour::Avx2, HalfKind::Bf16) => go!(gemm256, true, 1, 2, 3, 4, 5, 6),
        (Flavour::Scalar | Flavour::Amx, _) => unreachable!("{flavour:?} runs elsewhere"),
    }
}

/// 16 weights of one column widened to f32 (`BF`: bfloat16, a shift; else F16C).
#[inline(always)]
unsafe fn widen16<const BF: bool>(p: *const u16) -> __m512 {
    let h = _mm256_loadu_si256(p as *const __m256i);
    if BF {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    } else {
        _mm512_cvtph_ps(h)
    }
}

/// 8 weights of one column widened to f32.
#[inline(always)]
unsafe fn widen8<const BF: bool>(p: *const u16) -> __m256 {
    let h = _mm_loadu_si128(p as *const __m128i);
    if BF {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    } else {
        _mm256_cvtph_ps(h)
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // accumulators and weights indexed by the same group
unsafe fn gemm512<const G: usize, const M: usize, const BF: bool>(
    w: *const u16,
    k: usize,
    x: *const f32,
    res: &mut [[f32; 16]],
) {
    let gstride = 16 * k;
    let mut acc = [[_mm512_setzero_ps(); G]; M];
    for j in 0..k {
        if j % 2 == 0 {
            // One 64-byte line per group every two columns.
            for g in 0..G {
                let at = w.add(g * gstride + j * 16) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_BYTES));
            }
        }
        let mut wv = [_mm512_setzero_ps(); G];
        for (g, v) in wv.iter_mut().enumerate() {
            *v = widen16::<BF>(w.add(g * gstride + j * 16));
        }
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let xb = _mm512_set1_ps(*x.add(i * k + j));
            for g in 0..G {
                acc_i[g] = _mm512_fmadd_ps(wv[g], xb, acc_i[g]);
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        for (g, a) in acc_i.iter().enumerate() {
            _mm512_storeu_ps(res[i * G + g].as_mut_ptr(), *a);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // accumulators and weights indexed by the same group
unsafe fn gemm256<const G: usize, const M: usize, const BF: bool>(
    w: *const u16,
    k: usize,
    x: *const f32,
    res: &mut [[f32; 16]],
) {
    let gstride = 8 * k;
    let mut acc = [[_mm256_setzero_ps(); G]; M];
    for j in 0..k {
        if j % 4 == 0 {
            // One 64-byte line per group every four columns.
            for g in 0..G {
                let at = w.add(g * gstride + j * 8) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_BYTES));
            }
        }
        let mut wv = [_mm256_setzero_ps(); G];
        for (g, v) in wv.iter_mut().enumerate() {
            *v = widen8::<BF>(w.add(g * gstride + j * 8));
        }
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let xb = _mm256_set1_ps(*x.add(i * k + j));
            for g in 0..G {
                acc_i[g] = _mm256_fmadd_ps(wv[g], xb, acc_i[g]);
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        for (g, a) in acc_i.iter().enumerate() {
            _mm256_storeu_ps(res[i * G + g].as_mut_ptr(), *a);
        }
    }
}
