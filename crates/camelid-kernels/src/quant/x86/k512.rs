//! The K formats' 16-row kernels (AVX-512BW), with `vpdpbusd` where AVX-512 VNNI is present.
//! Group layouts: `quant::krepack`. Each kernel writes `out[i · ld + 0..16]` for activation
//! row `i` (Q4_K/Q5_K: at most 8 rows; with VNNI two integer sums and two f32 ones a row,
//! 32 registers at 8 rows, the f32 totals kept in `out` between super-blocks; Q6_K 4, or 8
//! with VNNI one sub-block at a time: with their sums and accumulators, 24 of the 32
//! registers). With VNNI, prompts' Q6_K passes run
//! on groups unpacked to a byte a value (`unpack_q6`; 8 rows), and Q5_K's where the CPU tests
//! its fifth bits with a mask (`unpack_q45`; not on AMD, see `kgemm::unpack_min_rows`).

use super::{prefetch_ahead_k, KPrefetch};
use crate::quant::{ActRow, QK_K};
use std::arch::x86_64::*;

const G: usize = 16;

/// Four activation bytes at `at`, in every 32-bit lane.
#[inline(always)]
unsafe fn bcast4(a: &ActRow, at: usize) -> __m512i {
    _mm512_set1_epi32((a.qs.as_ptr().add(at) as *const i32).read_unaligned())
}

/// u8 × i8 products, four per 32-bit lane, added to `acc`: one i32 sum per lane with VNNI,
/// else two i16 sums per lane (the caller bounds how many it adds up).
#[inline(always)]
unsafe fn dot4<const VNNI: bool>(acc: __m512i, q: __m512i, a: __m512i) -> __m512i {
    if VNNI {
        _mm512_dpbusd_epi32(acc, q, a)
    } else {
        _mm512_add_epi16(acc, _mm512_maddubs_epi16(q, a))
    }
}

/// Where a pass's activation rows start, for [`dpbusd_row_at`] and [`bcast_row`]: rows of one
/// `QActs` lie `s` bytes apart (each row's `q6_bias8` at the same offset `bias8` from its
/// values), so rows 0–3 are `p0 + {0, s, 2s, 3s}` and 4–7 `p4 + ..`, four registers in all.
/// With one pointer a row the compiler ran out of registers in the 8-row passes and reloaded
/// them from the stack for every vector.
#[derive(Clone, Copy)]
pub(super) struct RowAddrs {
    p0: *const i8,
    p4: *const i8,
    s: usize,
    s3: usize,
    /// Where a row's [`ActRow::q6_bias8`](crate::quant::ActRow) starts, from its values.
    bias8: usize,
    /// Where a row's [`ActRow::q6_bias`](crate::quant::ActRow) starts, from its values.
    bias: usize,
}

impl RowAddrs {
    /// The same rows `at` bytes further on.
    #[inline(always)]
    fn offset(self, at: usize) -> RowAddrs {
        RowAddrs {
            p0: self.p0.wrapping_add(at),
            p4: self.p4.wrapping_add(at),
            ..self
        }
    }

    /// # Panics
    /// If the rows are not evenly spaced (they are when they come from one `QActs`); in debug
    /// builds, if a row's `q6_bias` or `q6_bias8` is not where the first row's is from its
    /// values (Q8_K rows; the 32-value formats' rows have none).
    #[inline(always)]
    pub(super) fn new(acts: &[ActRow]) -> RowAddrs {
        let p0 = acts[0].qs.as_ptr();
        let s = if acts.len() > 1 {
            (acts[1].qs.as_ptr() as usize).wrapping_sub(p0 as usize)
        } else {
            0
        };
        assert!(
            acts.iter()
                .enumerate()
                .all(|(i, a)| a.qs.as_ptr() as usize
                    == (p0 as usize).wrapping_add(i.wrapping_mul(s))),
            "activation rows evenly spaced"
        );
        let p4 = acts.get(4).map_or(p0, |a| a.qs.as_ptr());
        let bias8 = (acts[0].q6_bias8.as_ptr() as usize).wrapping_sub(p0 as usize);
        let bias = (acts[0].q6_bias.as_ptr() as usize).wrapping_sub(p0 as usize);
        debug_assert!(acts.iter().all(|a| a.q6_bias8.is_empty()
            || a.q6_bias8.as_ptr() as usize == (a.qs.as_ptr() as usize).wrapping_add(bias8)));
        debug_assert!(acts.iter().all(|a| a.q6_bias.is_empty()
            || a.q6_bias.as_ptr() as usize == (a.qs.as_ptr() as usize).wrapping_add(bias)));
        RowAddrs {
            p0,
            p4,
            s,
            s3: s.wrapping_mul(3),
            bias8,
            bias,
        }
    }
}

/// Runs `$op!(address, registers..)` with row `$i`'s address plus `$at` as a memory operand
/// over [`RowAddrs`]' four registers (`[p + s·k]`, `k` ≤ 2, or `[p + s3]`).
macro_rules! row_operand {
    ($op:ident, $r:expr, $i:expr, $at:expr) => {{
        let (r, at): (RowAddrs, usize) = ($r, $at);
        let p = r.p0.add(at);
        let p4 = r.p4.add(at);
        match $i {
            0 => $op!("[{p}]", p = p),
            1 => $op!("[{p} + {s}]", p = p, s = r.s),
            2 => $op!("[{p} + {s} * 2]", p = p, s = r.s),
            3 => $op!("[{p} + {s3}]", p = p, s3 = r.s3),
            4 => $op!("[{p4}]", p4 = p4),
            5 => $op!("[{p4} + {s}]", p4 = p4, s = r.s),
            6 => $op!("[{p4} + {s} * 2]", p4 = p4, s = r.s),
            _ => $op!("[{p4} + {s3}]", p4 = p4, s3 = r.s3),
        }
    }};
}

/// `vpdpbusd acc, q, [row i + K·STRIDE + D]{1to16}` for `i < 8`, the row's address from
/// [`RowAddrs`]: the four activation bytes read as an embedded broadcast. From
/// `_mm512_set1_epi32` the compiler built the 8-row passes' broadcasts into full vectors on
/// the stack and read those back (a store and a 64-byte load per product), making Q4_K's
/// 8-row passes ~2× slower (benches/README, Session 34). Its own `target_feature` function
/// (inlined into the VNNI entry points, which have these features) because `asm!`'s zmm
/// operands need them. The constant offset is the instruction's displacement: in passes
/// unrolled over a super-block's steps the rows' four registers then address every step,
/// with no `lea` a step. (It is computed in the `asm!`, where a const expression may use the
/// generic `K`.)
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn dpbusd_row_at<const K: usize, const STRIDE: usize, const D: usize>(
    acc: __m512i,
    q: __m512i,
    r: RowAddrs,
    i: usize,
) -> __m512i {
    let mut acc = acc;
    macro_rules! dp {
        ($addr:literal $(, $name:ident = $val:expr)*) => {
            std::arch::asm!(
                concat!("vpdpbusd {acc}, {q}, dword ptr ", $addr, "{{1to16}}"),
                acc = inout(zmm_reg) acc,
                q = in(zmm_reg) q,
                d = const K * STRIDE + D,
                $($name = in(reg) $val,)*
                options(pure, readonly, nostack, preserves_flags),
            )
        };
    }
    let (p, p4) = (r.p0, r.p4);
    match i {
        0 => dp!("[{p} + {d}]", p = p),
        1 => dp!("[{p} + {s} + {d}]", p = p, s = r.s),
        2 => dp!("[{p} + {s} * 2 + {d}]", p = p, s = r.s),
        3 => dp!("[{p} + {s3} + {d}]", p = p, s3 = r.s3),
        4 => dp!("[{p4} + {d}]", p4 = p4),
        5 => dp!("[{p4} + {s} + {d}]", p4 = p4, s = r.s),
        6 => dp!("[{p4} + {s} * 2 + {d}]", p4 = p4, s = r.s),
        _ => dp!("[{p4} + {s3} + {d}]", p4 = p4, s3 = r.s3),
    }
    acc
}

/// `vpdpwssd acc, a, b` as written: from `_mm512_dpwssd_epi32` twice into one sum, LLVM
/// made the second a `vpmaddwd` and a `vpaddd` (three µops where two do).
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn dpwssd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    let mut acc = acc;
    std::arch::asm!(
        "vpdpwssd {acc}, {a}, {b}",
        acc = inout(zmm_reg) acc,
        a = in(zmm_reg) a,
        b = in(zmm_reg) b,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// Sixteen values a row as two sums of 8 (`lo` from vectors 0–1 of `v`, `hi` from 2–3, four
/// values a row each, at `rows`' displacements 0..16), each scaled by `sc` (in the low i16 of
/// each lane, the high one zero) into `isum` by one `vpdpwssd`, so each sum must stay below
/// 2¹⁵. `lo` and `hi` start as given (Q6_K's from the rows' `−32·Σa`, [`q6_bias8_rows`]).
/// The bounds take `|a| ≤ 127`, as `quantize_q8k` scales by the block's largest `|x|`
/// (only a NaN or infinite input, or a block whose largest `|x|` is below ~4·10⁻³⁷, where
/// the inverse scale overflows, becomes −128: outputs lost anyway).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // three arrays indexed by the same row
unsafe fn halves_scaled<const R: usize>(
    v: impl Fn(usize) -> __m512i,
    rows: RowAddrs,
    (mut lo, mut hi): ([__m512i; R], [__m512i; R]),
    sc: __m512i,
    isum: &mut [__m512i; R],
) {
    dpbusd_rows_at::<R, 0, 0, 0>(&mut lo, v(0), rows);
    dpbusd_rows_at::<R, 0, 0, 4>(&mut lo, v(1), rows);
    dpbusd_rows_at::<R, 0, 0, 8>(&mut hi, v(2), rows);
    dpbusd_rows_at::<R, 0, 0, 12>(&mut hi, v(3), rows);
    for i in 0..R {
        isum[i] = dpwssd(isum[i], lo[i], sc);
        isum[i] = dpwssd(isum[i], hi[i], sc);
    }
}

/// [`dpbusd_rows`] at the constant offset `K · STRIDE + D` ([`dpbusd_row_at`]).
#[inline(always)]
unsafe fn dpbusd_rows_at<const R: usize, const K: usize, const STRIDE: usize, const D: usize>(
    t: &mut [__m512i; R],
    q: __m512i,
    rows: RowAddrs,
) {
    const { assert!(R <= 8, "RowAddrs addresses 8 rows") };
    macro_rules! row {
        ($($i:literal)*) => {$(
            if $i < R {
                t[$i] = dpbusd_row_at::<K, STRIDE, D>(t[$i], q, rows, $i);
            }
        )*};
    }
    row!(0 1 2 3 4 5 6 7);
}

/// The four bytes at `row i + at` ([`RowAddrs`]) in every i32 lane: `vpbroadcastd` from
/// the row's address, as [`dpbusd_row_at`] reads it (by the compiler, the address of rows 3 and
/// 7 took registers the passes do not have).
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn bcast_row(r: RowAddrs, i: usize, at: usize) -> __m512i {
    let out: __m512i;
    macro_rules! bc {
        ($addr:literal $(, $name:ident = $val:expr)*) => {
            std::arch::asm!(
                concat!("vpbroadcastd {out}, dword ptr ", $addr),
                out = out(zmm_reg) out,
                $($name = in(reg) $val,)*
                options(pure, readonly, nostack, preserves_flags),
            )
        };
    }
    row_operand!(bc, r, i, at);
    out
}

/// `t[i] = vpdpbusd(t[i], q, row i + at)` for every row of a pass, spelled out: as a loop
/// over `0..R` the compiler kept it a loop (a jump table, the sums in memory).
#[inline(always)]
pub(super) unsafe fn dpbusd_rows<const R: usize>(
    t: &mut [__m512i; R],
    q: __m512i,
    rows: RowAddrs,
    at: usize,
) {
    dpbusd_rows_at::<R, 0, 0, 0>(t, q, rows.offset(at))
}

/// The four bytes at `row i + at` ([`bcast_row`]) of every row of a pass, spelled out.
#[inline(always)]
unsafe fn bcast_rows<const R: usize>(rows: RowAddrs, at: usize) -> [__m512i; R] {
    const { assert!(R <= 8, "RowAddrs addresses 8 rows") };
    let mut t = [_mm512_setzero_si512(); R];
    macro_rules! row {
        ($($i:literal)*) => {$(
            if $i < R {
                t[$i] = bcast_row(rows, $i, at);
            }
        )*};
    }
    row!(0 1 2 3 4 5 6 7);
    t
}

/// Each row's `−32·Σa` of the 8 values `8h..8h + 8` of super-block `b` in every lane
/// ([`ActRow::q6_bias8`](crate::quant::ActRow)): the sums a Q6_K half sub-block's
/// `vpdpbusd` start from, so they add up `Σ (q − 32)·a` with `q` unsigned (0..63), and the
/// −32 costs the passes no vector operation.
#[inline(always)]
unsafe fn q6_bias8_rows<const R: usize>(rows: RowAddrs, b: usize, h: usize) -> [__m512i; R] {
    bcast_rows::<R>(rows, rows.bias8 + 4 * (32 * b + h))
}

/// Each row's `−32·Σa` of Q6_K sub-block `s` of super-block `b` in every lane
/// ([`ActRow::q6_bias`](crate::quant::ActRow)): the sums the paired passes over whole
/// sub-blocks ([`gemm_k_32x6_unpacked_i16_vnni`]) start from.
#[inline(always)]
unsafe fn q6_bias_rows<const R: usize>(rows: RowAddrs, b: usize, s: usize) -> [__m512i; R] {
    bcast_rows::<R>(rows, rows.bias + 4 * (16 * b + s))
}

/// A row's `−32·Σa` of Q6_K sub-block `s` of super-block `b` in every lane
/// ([`ActRow::q6_bias`](crate::quant::ActRow)), read by the compiler: the starting sums of
/// the 2–4-row passes ([`q6_k`]), whose sums cover whole sub-blocks.
#[inline(always)]
unsafe fn q6_bias(a: &ActRow, b: usize, s: usize) -> __m512i {
    _mm512_set1_epi32((a.q6_bias.as_ptr().add(4 * (16 * b + s)) as *const i32).read_unaligned())
}

/// Per-row scales (i32 lanes) in the form [`scaled`] takes: as they are for VNNI, else in
/// both i16 halves of the lane.
#[inline(always)]
unsafe fn prep<const VNNI: bool>(sc: __m512i) -> __m512i {
    if VNNI {
        sc
    } else {
        _mm512_or_si512(
            _mm512_and_si512(sc, _mm512_set1_epi32(0xFFFF)),
            _mm512_slli_epi32::<16>(sc),
        )
    }
}

/// A [`dot4`] sum times its row's scale, as i32 lanes.
#[inline(always)]
unsafe fn scaled<const VNNI: bool>(t: __m512i, sc: __m512i) -> __m512i {
    if VNNI {
        _mm512_mullo_epi32(t, sc)
    } else {
        _mm512_madd_epi16(t, sc)
    }
}

/// 16 bytes at `p` as i32 lanes, zero- or sign-extended.
#[inline(always)]
unsafe fn u8x16(p: *const u8) -> __m512i {
    _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i))
}
#[inline(always)]
unsafe fn i8x16(p: *const u8) -> __m512i {
    _mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i))
}
#[inline(always)]
unsafe fn f16x16(p: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
}

/// The 4-bit (`FIFTH = false`) or 5-bit values of one 64-byte step of a Q4_K/Q5_K
/// super-block for sub-block `j`: the low (even `j`, `odd = false`) or high nibbles of `p`,
/// plus 16 where bit `j` of the step's `qh` is set (`bit`: `1 << j` in every byte; `j16`: `j`
/// in every 16-bit lane). `SHIFTS` ([`crate::cpu_features::q5_fifth_bits_by_shifts`]) moves
/// the bit to bit 4 by shifts (`(qh >> j) << 4` in 16-bit lanes, then `& 0x10` a byte), else
/// a mask test picks the bytes that get 16.
#[inline(always)]
unsafe fn q45_value<const FIFTH: bool, const SHIFTS: bool>(
    p: __m512i,
    qh: *const u8,
    bit: __m512i,
    j16: __m512i,
    odd: bool,
) -> __m512i {
    let mask = _mm512_set1_epi8(0x0F);
    let q = if odd {
        _mm512_and_si512(_mm512_srli_epi16::<4>(p), mask)
    } else {
        _mm512_and_si512(p, mask)
    };
    if !FIFTH {
        return q;
    }
    let qh = _mm512_loadu_si512(qh as *const _);
    if SHIFTS {
        // `j16` is a constant where this is inlined, so these are shifts by an immediate:
        // by an `xmm` count (`vpsrlw`) the shift too took a `vpdpbusd` slot on Zen 4.
        let h = _mm512_srlv_epi16(qh, j16);
        let h = _mm512_and_si512(_mm512_slli_epi16::<4>(h), _mm512_set1_epi8(0x10));
        // An add, not an or: `(p & 0x0F) | h` became a `vpternlog`, which shares those slots.
        _mm512_add_epi8(q, h)
    } else {
        let set = _mm512_test_epi8_mask(qh, bit);
        _mm512_mask_add_epi8(q, set, q, _mm512_set1_epi8(16))
    }
}

/// Sub-block `J` of a Q4_K/Q5_K super-block `b` (packed at `blk`): each row's Σ q·a times
/// the sub-block's scale, added to `isum`. `J` a constant, so the nibble and the fifth bit
/// are picked by immediate shifts and masks, without a branch in the loop.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
unsafe fn q45_sub_block<const R: usize, const FIFTH: bool, const SHIFTS: bool, const J: usize>(
    blk: *const u8,
    b: usize,
    acts: &[ActRow],
    isum: &mut [__m512i; R],
) {
    let (j, c) = (J, J / 2);
    let qs_at = if FIFTH { 52 * G } else { 20 * G };
    let sc = prep::<false>(u8x16(blk.add(4 * G + G * j)));
    let j16 = _mm512_set1_epi16(j as i16);
    let bit = _mm512_set1_epi8(1 << j);
    // Eight maddubs sums per i16: at most 8 · 2 · 31 · 127 = 62 992 for Q5_K, so Q5_K
    // folds its i16 sums every four vectors (31 496).
    let fold = if FIFTH { 4 } else { 8 };
    let mut t = [_mm512_setzero_si512(); R];
    for g in 0..8 {
        let p = _mm512_loadu_si512(blk.add(qs_at + (8 * c + g) * 4 * G) as *const _);
        let qh = blk.add(20 * G + g * 4 * G);
        let q = q45_value::<FIFTH, SHIFTS>(p, qh, bit, j16, J % 2 == 1);
        let at = b * QK_K + 32 * j + 4 * g;
        for i in 0..R {
            t[i] = dot4::<false>(t[i], q, bcast4(acts.get_unchecked(i), at));
        }
        if (g + 1) % fold == 0 {
            for i in 0..R {
                isum[i] = _mm512_add_epi32(isum[i], scaled::<false>(t[i], sc));
                t[i] = _mm512_setzero_si512();
            }
        }
    }
}

/// Q4_K (`FIFTH = false`) and Q5_K without VNNI: Σ_j sc_j·Σ q·a per row in i32, then
/// `d·da·that − dmin·da·Σ_j m_j·Σa_j`. (With VNNI: [`q45_k_pairs_vnni`].)
#[inline(always)]
unsafe fn q45_k<const R: usize, const FIFTH: bool>(
    w: *const u8,
    nsb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    let sb = if FIFTH { 180 * G } else { 148 * G };
    let mut acc = [_mm512_setzero_ps(); R];
    let pf = KPrefetch::for_rows::<R>();
    let shifts = FIFTH && crate::cpu_features::q5_fifth_bits_by_shifts();
    for b in 0..nsb {
        let blk = w.add(b * sb);
        let mut isum = [_mm512_setzero_si512(); R];
        macro_rules! sub_blocks {
            ($shifts:literal; $($j:literal)*) => {$(
                prefetch_ahead_k(pf, blk, sb, $j, 8);
                q45_sub_block::<R, FIFTH, $shifts, $j>(blk, b, acts, &mut isum);
            )*};
        }
        if shifts {
            sub_blocks!(true; 0 1 2 3 4 5 6 7);
        } else {
            sub_blocks!(false; 0 1 2 3 4 5 6 7);
        }
        q45_epilogue::<R, false>(&Q45Header::packed(blk), b, acts, &isum, &mut acc);
    }
    for (i, v) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add(i * ld), *v);
    }
}

/// Pair `C` of a Q4_K/Q5_K super-block (packed at `blk`, its values at `qs_at`) for
/// [`q45_k_pairs_vnni`]: each row's Σq·a of sub-block `2C` into `lo`, of `2C + 1` into `hi`.
/// `rows` addresses the super-block's activations; the eight steps are spelled out, so each
/// `vpdpbusd` reads its row at a constant displacement.
#[inline(always)]
unsafe fn q45_pair<const R: usize, const FIFTH: bool, const SHIFTS: bool, const C: usize>(
    blk: *const u8,
    qs_at: usize,
    rows: RowAddrs,
    lo: &mut [__m512i; R],
    hi: &mut [__m512i; R],
) {
    let (j0, j1) = (2 * C, 2 * C + 1);
    macro_rules! steps {
        ($($g:literal)*) => {$(
            let p = _mm512_loadu_si512(blk.add(qs_at + (8 * C + $g) * 4 * G) as *const _);
            let qh = blk.add(20 * G + $g * 4 * G);
            let q0 = q45_value::<FIFTH, SHIFTS>(
                p, qh, _mm512_set1_epi8(1 << j0), _mm512_set1_epi16(j0 as i16), false,
            );
            let q1 = q45_value::<FIFTH, SHIFTS>(
                p, qh, _mm512_set1_epi8(1 << j1), _mm512_set1_epi16(j1 as i16), true,
            );
            dpbusd_rows_at::<R, C, 64, { 4 * $g }>(lo, q0, rows);
            dpbusd_rows_at::<R, C, 64, { 4 * $g + 32 }>(hi, q1, rows);
        )*};
    }
    steps!(0 1 2 3 4 5 6 7);
}

/// [`q45_k`] with VNNI, the two sub-blocks of each packed byte (`2c` in the low nibbles,
/// `2c + 1` in the high) at once: two independent `vpdpbusd` sums a row per vector loaded
/// (16 in an 8-row pass), and each sub-block's sum scaled by a `vcvtdq2ps` and a `vfmadd`
/// into f32 instead of `vpmulld` (two µops on one port, ten cycles' latency) and `vpaddd`.
/// Measured on model 207 without AMX (`qgemm_bench 1 q4_k`, 2048 columns, weights in L2/L3,
/// alternating, best of 3–5, session 53): 1.05–1.15× the one-sub-block passes at 64–256
/// rows, 1.1× at 4–8, even for a lone row from DRAM; Q5_K 1.05–1.2× at 4–16 rows.
///
/// The f32 sums are exact, so the result has [`q45_k`]'s bits (and the AMX tiles'): with
/// |a| ≤ 127 a Q4_K sub-block's `sc·Σq·a` is at most 63 · 32 · 15 · 127 = 3 840 480, and the
/// even and the odd sub-blocks each add four of them, under 2²⁴ (16 777 216), where every
/// integer is an f32 and `vfmadd` rounds nothing. Q5_K's values reach 31 (7 936 992 a
/// sub-block): its two sums go back to i32 after every two pairs. The i32 total is then
/// [`q45_epilogue`]'s as before.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
unsafe fn q45_k_pairs_vnni<const R: usize, const FIFTH: bool, const SHIFTS: bool>(
    w: *const u8,
    nsb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    let sb = if FIFTH { 180 * G } else { 148 * G };
    let qs_at = if FIFTH { 52 * G } else { 20 * G };
    let pf = KPrefetch::for_rows::<R>();
    let rows = RowAddrs::new(acts);
    for b in 0..nsb {
        let blk = w.add(b * sb);
        let rb = rows.offset(b * QK_K);
        let mut isum = [_mm512_setzero_si512(); R];
        let (mut even, mut odd) = ([_mm512_setzero_ps(); R], [_mm512_setzero_ps(); R]);
        macro_rules! pairs {
            ($($c:literal)*) => {$(
                prefetch_ahead_k(pf, blk, sb, $c, 4);
                let (mut lo, mut hi) = ([_mm512_setzero_si512(); R], [_mm512_setzero_si512(); R]);
                let (j0, j1) = (2 * $c, 2 * $c + 1);
                q45_pair::<R, FIFTH, SHIFTS, $c>(blk, qs_at, rb, &mut lo, &mut hi);
                let s0 = _mm512_cvtepi32_ps(u8x16(blk.add(4 * G + G * j0)));
                let s1 = _mm512_cvtepi32_ps(u8x16(blk.add(4 * G + G * j1)));
                for i in 0..R {
                    even[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo[i]), s0, even[i]);
                    odd[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi[i]), s1, odd[i]);
                }
                if FIFTH && $c % 2 == 1 {
                    for i in 0..R {
                        let s = _mm512_add_epi32(
                            _mm512_cvtps_epi32(even[i]),
                            _mm512_cvtps_epi32(odd[i]),
                        );
                        isum[i] = _mm512_add_epi32(isum[i], s);
                        even[i] = _mm512_setzero_ps();
                        odd[i] = _mm512_setzero_ps();
                    }
                }
            )*};
        }
        pairs!(0 1 2 3);
        if !FIFTH {
            for i in 0..R {
                isum[i] = _mm512_add_epi32(_mm512_cvtps_epi32(even[i]), _mm512_cvtps_epi32(odd[i]));
            }
        }
        // The f32 totals in `out` (the registers hold the sums): written at the first
        // super-block, added to after.
        let mut acc = [_mm512_setzero_ps(); R];
        if b > 0 {
            for i in 0..R {
                acc[i] = _mm512_loadu_ps(out.add(i * ld));
            }
        }
        q45_epilogue::<R, true>(&Q45Header::packed(blk), b, acts, &isum, &mut acc);
        for i in 0..R {
            _mm512_storeu_ps(out.add(i * ld), acc[i]);
        }
    }
}

/// A Q4_K/Q5_K super-block's header as its epilogue ([`q45_epilogue`]) takes it: `d` and
/// `dmin` as f32 lanes, the mins of sub-blocks 2c and 2c + 1 in the i16 halves of each lane.
struct Q45Header {
    d: __m512,
    dmin: __m512,
    mins: [__m512i; 4],
}

impl Q45Header {
    /// From the packed super-block at `blk`.
    #[inline(always)]
    unsafe fn packed(blk: *const u8) -> Q45Header {
        // No array `map`: it is not inlined into a `target_feature` function.
        let mut mins = [_mm512_setzero_si512(); 4];
        for (c, m) in mins.iter_mut().enumerate() {
            let m0 = u8x16(blk.add(12 * G + G * 2 * c));
            let m1 = u8x16(blk.add(12 * G + G * (2 * c + 1)));
            *m = _mm512_or_si512(m0, _mm512_slli_epi32::<16>(m1));
        }
        Q45Header {
            d: f16x16(blk),
            dmin: f16x16(blk.add(2 * G)),
            mins,
        }
    }

    /// As [`unpack_q45`] wrote it for the unpacked super-block at `ub`.
    #[inline(always)]
    unsafe fn unpacked(ub: *const u8) -> Q45Header {
        let v = |k: usize| _mm512_loadu_si512(ub.add(Q45_HEADER_AT + 64 * k) as *const _);
        Q45Header {
            d: _mm512_castsi512_ps(v(0)),
            dmin: _mm512_castsi512_ps(v(1)),
            mins: [v(2), v(3), v(4), v(5)],
        }
    }

    /// Writes it where [`Self::unpacked`] reads it.
    #[inline(always)]
    unsafe fn store(&self, ub: *mut u8) {
        let at = |k: usize| ub.add(Q45_HEADER_AT + 64 * k) as *mut __m512i;
        _mm512_storeu_si512(at(0), _mm512_castps_si512(self.d));
        _mm512_storeu_si512(at(1), _mm512_castps_si512(self.dmin));
        for (k, m) in self.mins.iter().enumerate() {
            _mm512_storeu_si512(at(2 + k), *m);
        }
    }
}

/// The end of a Q4_K/Q5_K super-block `b` (its header `h`) for each activation row:
/// `acc += d·da·isum − dmin·da·Σ_j m_j·Σa_j`.
#[inline(always)]
unsafe fn q45_epilogue<const R: usize, const VNNI: bool>(
    h: &Q45Header,
    b: usize,
    acts: &[ActRow],
    isum: &[__m512i; R],
    acc: &mut [__m512; R],
) {
    for (i, (acc, isum)) in acc.iter_mut().zip(isum).enumerate() {
        let a = acts.get_unchecked(i);
        // The row's Σa of sub-blocks 2c and 2c + 1, paired when the activations are quantized
        // (`QActs::pairs`): summed here from the 16-value sums, the scalar work took ~15 % of
        // an 8-row pass.
        let ps = a.pairs.as_ptr().add(b * 4);
        let mut msum = _mm512_setzero_si512();
        for (c, m) in h.mins.iter().enumerate() {
            let s = _mm512_set1_epi32(*ps.add(c));
            msum = if VNNI {
                dpwssd(msum, *m, s)
            } else {
                _mm512_add_epi32(msum, _mm512_madd_epi16(*m, s))
            };
        }
        let da = _mm512_set1_ps(*a.d.get_unchecked(b));
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*isum), _mm512_mul_ps(h.d, da), *acc);
        *acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(h.dmin, da), *acc);
    }
}

/// The largest [`ActRow::abs_sum16`](crate::quant::ActRow) of a row for which 16 of Q5_K's
/// values' `Σ q·a` fits an i16: q is 0..31, and 31 · 1057 = 32 767.
pub const Q45_ABS_SUM16_MAX: u16 = 1057;

/// Bytes of one Q4_K/Q5_K super-block of a 16-row group unpacked by [`unpack_q45`]: the 8
/// sub-blocks' scales as i32 lanes (8 × 64), the header as the epilogue takes it
/// ([`Q45Header`], 6 × 64), then the values a byte each in activation order (64 vectors of
/// 64: four values of each row).
pub const Q45_UNPACKED_SB: usize = Q45_VALUES_AT + 64 * 64;
/// Where [`unpack_q45`]'s [`Q45Header`] starts in an unpacked super-block (after the scales).
const Q45_HEADER_AT: usize = 8 * 64;
/// Where [`unpack_q45`]'s values start in an unpacked super-block (after the header).
const Q45_VALUES_AT: usize = Q45_HEADER_AT + 6 * 64;

/// Unpacks `nsb` super-blocks of one 16-row Q4_K (`FIFTH = false`) or Q5_K group into `dst`
/// (`nsb ·` [`Q45_UNPACKED_SB`] bytes): once per group and row tile, so a prompt's passes no
/// longer select nibbles and fifth bits or widen the scales themselves. (`kgemm` unpacks
/// Q5_K only, and only where the packed passes test its fifth bits with a mask: Q4_K's
/// packed passes were as fast, and so were Q5_K's with the bits moved by shifts.)
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn unpack_q45<const FIFTH: bool>(w: *const u8, nsb: usize, dst: *mut u8) {
    let sb = if FIFTH { 180 * G } else { 148 * G };
    let qs_at = if FIFTH { 52 * G } else { 20 * G };
    let mask = _mm512_set1_epi8(0x0F);
    let sixteen = _mm512_set1_epi8(16);
    for b in 0..nsb {
        let blk = w.add(b * sb);
        let d = dst.add(b * Q45_UNPACKED_SB);
        for j in 0..8 {
            _mm512_storeu_si512(d.add(64 * j) as *mut _, u8x16(blk.add(4 * G + G * j)));
        }
        Q45Header::packed(blk).store(d);
        let vals = d.add(Q45_VALUES_AT);
        for c in 0..4 {
            for g in 0..8 {
                let p = _mm512_loadu_si512(blk.add(qs_at + (8 * c + g) * 4 * G) as *const _);
                let mut lo = _mm512_and_si512(p, mask);
                let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(p), mask);
                if FIFTH {
                    let qh = _mm512_loadu_si512(blk.add(20 * G + g * 4 * G) as *const _);
                    let set_lo = _mm512_test_epi8_mask(qh, _mm512_set1_epi8(1 << (2 * c)));
                    let set_hi =
                        _mm512_test_epi8_mask(qh, _mm512_set1_epi8((1u8 << (2 * c + 1)) as i8));
                    lo = _mm512_mask_add_epi8(lo, set_lo, lo, sixteen);
                    hi = _mm512_mask_add_epi8(hi, set_hi, hi, sixteen);
                }
                // Sub-blocks 2c (low nibbles) and 2c + 1 (high).
                _mm512_storeu_si512(vals.add((16 * c + g) * 64) as *mut _, lo);
                _mm512_storeu_si512(vals.add((16 * c + 8 + g) * 64) as *mut _, hi);
            }
        }
    }
}

/// [`q45_k`]'s sums with VNNI over a group unpacked by [`unpack_q45`] (`u`, headers
/// included), over super-blocks `sbs` (where they do not start at
/// 0, `out` holds the totals of those before: added to in the same steps, so the same bits
/// as one call over all): per vector only the `vpdpbusd` of each row. Each sum covers 8
/// values (two vectors), at most 8 · 31 · 127 = 31 496, so it fits the low i16 of its lane
/// and one `vpdpwssd` by the sub-block's scale (0..63, high i16 zero) adds it to the row's
/// i32 total, as in [`q6_k_unpacked_vnni`]: chains of two `vpdpbusd` (16 independent sums
/// in an 8-row pass) where one sum a row ran through a sub-block's eight. Where every row's
/// [`ActRow::abs_sum16`](crate::quant::ActRow) is at most [`Q45_ABS_SUM16_MAX`], a
/// super-block's sums cover 16 values (one `vpdpwssd` per 16; session 55, `qgemm_bench 1
/// q5_k` with normal activations: 1.04× at 64 rows, 1.07–1.15× at 256). The same i32 sums
/// as [`q45_k`], so the same bits.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
unsafe fn q45_k_unpacked_vnni<const R: usize>(
    u: *const u8,
    sbs: std::ops::Range<usize>,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    let mut acc = [_mm512_setzero_ps(); R];
    if sbs.start > 0 {
        for (i, v) in acc.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(out.add(i * ld));
        }
    }
    let rows = RowAddrs::new(acts);
    for b in sbs {
        let ub = u.add(b * Q45_UNPACKED_SB);
        let mut isum = [_mm512_setzero_si512(); R];
        let sixteen =
            (0..R).all(|i| *acts.get_unchecked(i).abs_sum16.get_unchecked(b) <= Q45_ABS_SUM16_MAX);
        for h in 0..16 {
            // Values 16h..16h + 16 (half of sub-block h / 2): four vectors of four a row.
            let rs = rows.offset(b * QK_K + 16 * h);
            let v =
                |k: usize| _mm512_loadu_si512(ub.add(Q45_VALUES_AT + 64 * (4 * h + k)) as *const _);
            let sc = _mm512_loadu_si512(ub.add(64 * (h / 2)) as *const _);
            let zero = [_mm512_setzero_si512(); R];
            if sixteen {
                let mut t = zero;
                for k in 0..4 {
                    dpbusd_rows(&mut t, v(k), rs, 4 * k);
                }
                for i in 0..R {
                    isum[i] = dpwssd(isum[i], t[i], sc);
                }
            } else {
                halves_scaled(v, rs, (zero, zero), sc, &mut isum);
            }
        }
        q45_epilogue::<R, true>(&Q45Header::unpacked(ub), b, acts, &isum, &mut acc);
    }
    for (i, v) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add(i * ld), *v);
    }
}

/// See `quant::kgemm`: one unpacked Q4_K or Q5_K group of 16 rows × `R` activation rows
/// over super-blocks `sbs`, VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_q45_k_16x8_unpacked_vnni<const R: usize>(
    u: *const u8,
    sbs: std::ops::Range<usize>,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    q45_k_unpacked_vnni::<R>(u, sbs, acts, out, ld)
}

/// The 6-bit values of one Q6_K four-value step of a 16-row group (`krepack`'s three vectors
/// at `v`: low nibbles of two, the high pairs of the third): values `128n + 32k + 4g..` of
/// each row for k = 0..4, one byte each (0..63).
#[inline(always)]
pub(crate) unsafe fn q6_values(v: *const u8) -> [__m512i; 4] {
    let m4 = _mm512_set1_epi8(0x0F);
    // (low & 0x0F) | high, in one ternary-logic op (0xEA: A·B + C).
    let or_low = |low: __m512i, high: __m512i| _mm512_ternarylogic_epi64::<0xEA>(low, m4, high);
    let qa = _mm512_loadu_si512(v as *const _);
    let qb = _mm512_loadu_si512(v.add(4 * G) as *const _);
    let qh = _mm512_loadu_si512(v.add(8 * G) as *const _);
    let bits = |m: u8| _mm512_and_si512(qh, _mm512_set1_epi8(m as i8));
    [
        or_low(qa, _mm512_slli_epi16::<4>(bits(0x03))),
        or_low(qb, _mm512_slli_epi16::<2>(bits(0x0C))),
        or_low(_mm512_srli_epi16::<4>(qa), bits(0x30)),
        or_low(
            _mm512_srli_epi16::<4>(qb),
            _mm512_srli_epi16::<2>(bits(0xC0)),
        ),
    ]
}

/// Q6_K: Σ_s sc_s·Σ (q − 32)·a per row in i32 (q = 0..63), times `d·da`; with VNNI each
/// sub-block's sums start from its `−32·Σa` ([`q6_bias`]), without it the −32 comes off as
/// `32·Σ_s sc_s·Σa_s` once a super-block.
/// The three vectors of a four-value step hold all four 32-value sets of a half, so each is
/// loaded and unpacked once, into four sub-block sums per row: at most 4 rows (24 registers).
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
    // Without VNNI, two steps per i16 sum: at most 4 · 63 · 127 = 32 004.
    let fold = if VNNI { 4 } else { 2 };
    let mut acc = [_mm512_setzero_ps(); R];
    let pf = KPrefetch::for_rows::<R>();
    for b in 0..nsb {
        let blk = w.add(b * SB);
        let mut isum = [_mm512_setzero_si512(); R];
        for n in 0..2 {
            for h in 0..2 {
                prefetch_ahead_k(pf, blk, SB, 2 * n + h, 4);
                // t[k][i]: sub-block 8n + 2k + h of row i; with VNNI from its −32·Σa.
                let mut t = [[_mm512_setzero_si512(); R]; 4];
                if VNNI {
                    for k in 0..4 {
                        for i in 0..R {
                            t[k][i] = q6_bias(acts.get_unchecked(i), b, 8 * n + 2 * k + h);
                        }
                    }
                }
                for g in 4 * h..4 * h + 4 {
                    let q = q6_values(blk.add(18 * G + (8 * n + g) * 12 * G));
                    for k in 0..4 {
                        for i in 0..R {
                            let at = b * QK_K + 128 * n + 32 * k + 4 * g;
                            t[k][i] =
                                dot4::<VNNI>(t[k][i], q[k], bcast4(acts.get_unchecked(i), at));
                        }
                    }
                    if (g + 1) % fold == 0 {
                        for k in 0..4 {
                            let s = 8 * n + 2 * k + h;
                            let sc = prep::<VNNI>(i8x16(blk.add(2 * G + G * s)));
                            for i in 0..R {
                                isum[i] = _mm512_add_epi32(isum[i], scaled::<VNNI>(t[k][i], sc));
                                t[k][i] = _mm512_setzero_si512();
                            }
                        }
                    }
                }
            }
        }
        // Without VNNI the −32 comes apart: Σ_s sc_s·Σa_s, sub-blocks in pairs (i16 halves
        // of each lane).
        let mut off = [_mm512_setzero_si512(); R];
        if !VNNI {
            for p in 0..8 {
                q6_scaled_bsums(q6_scale_pair(blk, p), b, p, acts, &mut off);
            }
        }
        let d = f16x16(blk);
        for i in 0..R {
            let a = acts.get_unchecked(i);
            let total = _mm512_sub_epi32(isum[i], _mm512_slli_epi32::<5>(off[i]));
            let da = _mm512_set1_ps(*a.d.get_unchecked(b));
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_mul_ps(d, da), acc[i]);
        }
    }
    for (i, v) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add(i * ld), *v);
    }
}

/// The scales of Q6_K sub-blocks `2p` and `2p + 1` of the super-block at `blk`, in the i16
/// halves of each row's lane.
#[inline(always)]
unsafe fn q6_scale_pair(blk: *const u8, p: usize) -> __m512i {
    let s0 = _mm512_and_si512(i8x16(blk.add(2 * G + G * 2 * p)), _mm512_set1_epi32(0xFFFF));
    _mm512_or_si512(
        s0,
        _mm512_slli_epi32::<16>(i8x16(blk.add(2 * G + G * (2 * p + 1)))),
    )
}

/// `off[i] += sc_2p·Σa_2p + sc_2p+1·Σa_2p+1` of super-block `b` for each activation row, from
/// [`q6_scale_pair`]'s `scales`: the sums the −32 of Q6_K's values is scaled by.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `acts` and `off` indexed by the same row
unsafe fn q6_scaled_bsums<const R: usize>(
    scales: __m512i,
    b: usize,
    p: usize,
    acts: &[ActRow],
    off: &mut [__m512i; R],
) {
    for i in 0..R {
        // The two i16 block sums, read as one i32: (low, high) as `madd` pairs them.
        let bs = acts.get_unchecked(i).bsums.as_ptr().add(b * 16 + 2 * p);
        let sums = _mm512_set1_epi32((bs as *const i32).read_unaligned());
        off[i] = _mm512_add_epi32(off[i], _mm512_madd_epi16(scales, sums));
    }
}

/// Bytes of one Q6_K super-block of a 16-row group unpacked by [`unpack_q6`]: the 16
/// sub-blocks' scales in the low i16 of each i32 lane, the high one zero (16 × 64: the form
/// `vpdpwssd` multiplies an i32 sum below 2¹⁵ by), then the values 0..63 a byte each in
/// activation order (64 vectors of 64: four values of each row).
pub const Q6_UNPACKED_SB: usize = Q6_VALUES_AT + 64 * 64;
/// Where [`unpack_q6`]'s values start in an unpacked super-block (after the scales).
const Q6_VALUES_AT: usize = 16 * 64;

/// Unpacks `nsb` super-blocks of one 16-row Q6_K group into `dst` (`nsb ·` [`Q6_UNPACKED_SB`]
/// bytes): once per group and row tile, so a prompt's passes no longer join the low and high
/// bits or widen the scales themselves.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn unpack_q6(w: *const u8, nsb: usize, dst: *mut u8) {
    const SB: usize = 210 * G;
    for b in 0..nsb {
        let blk = w.add(b * SB);
        let d = dst.add(b * Q6_UNPACKED_SB);
        for s in 0..16 {
            let sc = _mm512_and_si512(i8x16(blk.add(2 * G + G * s)), _mm512_set1_epi32(0xFFFF));
            _mm512_storeu_si512(d.add(64 * s) as *mut _, sc);
        }
        let vals = d.add(Q6_VALUES_AT);
        for n in 0..2 {
            for g in 0..8 {
                let q = q6_values(blk.add(18 * G + (8 * n + g) * 12 * G));
                // Vector k: the values at activation 128n + 32k + 4g.
                for (k, qk) in q.iter().enumerate() {
                    _mm512_storeu_si512(vals.add((32 * n + 8 * k + g) * 64) as *mut _, *qk);
                }
            }
        }
    }
}

/// [`q6_k_vnni`] over a group unpacked by [`unpack_q6`] (`u`), its `d` still read from the
/// packed group `w`: per vector only the `vpdpbusd` of each row. Each sub-block's sums run
/// in two halves of 8 values, each from its `−32·Σa` ([`q6_bias8_rows`]), so a half's
/// `Σ (q − 32)·a` is at most 8 · 32 · 127 = 32 512 and fits the low i16 of its lane: one
/// `vpdpwssd` by the unpacked scale (high i16 zero) adds `sc·sum` to the row's i32 total,
/// where `vpmulld` (two µops) and `vpaddd` did, and each `vpdpbusd` chain is two long
/// instead of four (16 independent sums in an 8-row pass). The i32 totals are the same
/// numbers, so the results are the same bits. Session 54, `qgemm_bench 1 q6_k` (2048
/// columns, model 207 without AMX, alternating): 1.09–1.15× at 64–256 rows.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
unsafe fn q6_k_unpacked_vnni<const R: usize>(
    w: *const u8,
    u: *const u8,
    nsb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    const SB: usize = 210 * G;
    let mut acc = [_mm512_setzero_ps(); R];
    let rows = RowAddrs::new(acts);
    for b in 0..nsb {
        let ub = u.add(b * Q6_UNPACKED_SB);
        let mut isum = [_mm512_setzero_si512(); R];
        for s in 0..16 {
            // Sub-block s: values 16s..16s + 16, four vectors of four values a row.
            let rs = rows.offset(b * QK_K + 16 * s);
            let v =
                |k: usize| _mm512_loadu_si512(ub.add(Q6_VALUES_AT + 64 * (4 * s + k)) as *const _);
            let start = (
                q6_bias8_rows::<R>(rows, b, 2 * s),
                q6_bias8_rows::<R>(rows, b, 2 * s + 1),
            );
            let sc = _mm512_loadu_si512(ub.add(64 * s) as *const _);
            halves_scaled(v, rs, start, sc, &mut isum);
        }
        let d = f16x16(w.add(b * SB));
        for i in 0..R {
            let da = _mm512_set1_ps(*acts.get_unchecked(i).d.get_unchecked(b));
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), _mm512_mul_ps(d, da), acc[i]);
        }
    }
    for (i, v) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add(i * ld), *v);
    }
}

/// See `quant::kgemm`: one unpacked Q6_K group of 16 rows × `R` activation rows, VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_q6_k_16x8_unpacked_vnni<const R: usize>(
    w: *const u8,
    u: *const u8,
    nsb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    q6_k_unpacked_vnni::<R>(w, u, nsb, acts, out, ld)
}

/// Rows a pass of [`gemm_q6_k_32x4_unpacked_vnni`] takes.
pub const PAIR_ROWS: usize = 4;

/// Two Q6_K groups unpacked by [`unpack_q6`] (`u`) side by side (32 columns) × up to 4
/// activation rows over super-blocks `sbs`, VNNI, their `d` still read from the packed
/// groups `w`; `out[i · ld + 0..32]` holds the totals (with those of the super-blocks before
/// `sbs` when they do not start at 0: added to in the same order, so the same bits as one
/// call over all). The sums are [`q6_k_unpacked_vnni`]'s (8 values from their `−32·Σa`,
/// scaled by `vpdpwssd`), so the results are its bits, but each activation broadcast (a
/// `vpbroadcastd`) and each starting sum serves both groups' `vpdpbusd`: an 8-row pass over
/// one group loads 53 times for 32 `vpdpbusd` (32 embedded broadcasts, 16 starting sums, 5
/// vectors), this one 34. Session 54, `qgemm_bench 1 q6_k` (2048 columns, model 207 without
/// AMX, alternating): 1.1–1.17× at 24–256 rows with the driver's two super-blocks a pass
/// (the two groups' whole rows overflow L1: then no faster). Q5_K's unpacked passes of
/// 8-value sums start from zero, not from loaded sums, and paired they were 0.95–1.0×
/// (with sums of 16, [`gemm_k_32x6_unpacked_i16_vnni`], they run paired).
/// See `quant::kgemm`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
pub unsafe fn gemm_q6_k_32x4_unpacked_vnni<const R: usize>(
    w: [*const u8; 2],
    u: [*const u8; 2],
    sbs: std::ops::Range<usize>,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    const SB: usize = 210 * G;
    const {
        assert!(
            R <= PAIR_ROWS,
            "a row's four half sums, two i32 and two f32 totals in registers"
        )
    };
    // The totals of the super-blocks before `sbs` are in `out`.
    let mut acc = [[_mm512_setzero_ps(); R]; 2];
    if sbs.start > 0 {
        for (c, acc) in acc.iter_mut().enumerate() {
            for (i, v) in acc.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(out.add(i * ld + G * c));
            }
        }
    }
    let rows = RowAddrs::new(acts);
    for b in sbs {
        let ub = [u[0].add(b * Q6_UNPACKED_SB), u[1].add(b * Q6_UNPACKED_SB)];
        let mut isum = [[_mm512_setzero_si512(); R]; 2];
        for s in 0..16 {
            // Sub-block s: values 16s..16s + 16, four vectors of four values a row.
            let rs = rows.offset(b * QK_K + 16 * s);
            let lo = q6_bias8_rows::<R>(rows, b, 2 * s);
            let hi = q6_bias8_rows::<R>(rows, b, 2 * s + 1);
            // t[c][h][i]: group c's half h of row i.
            let mut t = [[lo, hi], [lo, hi]];
            for k in 0..4 {
                let at = Q6_VALUES_AT + 64 * (4 * s + k);
                let q0 = _mm512_loadu_si512(ub[0].add(at) as *const _);
                let q1 = _mm512_loadu_si512(ub[1].add(at) as *const _);
                for i in 0..R {
                    let a = bcast_row(rs, i, 4 * k);
                    t[0][k / 2][i] = _mm512_dpbusd_epi32(t[0][k / 2][i], q0, a);
                    t[1][k / 2][i] = _mm512_dpbusd_epi32(t[1][k / 2][i], q1, a);
                }
            }
            for (c, t) in t.iter().enumerate() {
                let sc = _mm512_loadu_si512(ub[c].add(64 * s) as *const _);
                for i in 0..R {
                    isum[c][i] = dpwssd(isum[c][i], t[0][i], sc);
                    isum[c][i] = dpwssd(isum[c][i], t[1][i], sc);
                }
            }
        }
        for c in 0..2 {
            let d = f16x16(w[c].add(b * SB));
            for i in 0..R {
                let da = _mm512_set1_ps(*acts.get_unchecked(i).d.get_unchecked(b));
                let s = _mm512_cvtepi32_ps(isum[c][i]);
                acc[c][i] = _mm512_fmadd_ps(s, _mm512_mul_ps(d, da), acc[c][i]);
            }
        }
    }
    for (c, acc) in acc.iter().enumerate() {
        for (i, v) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(i * ld + G * c), *v);
        }
    }
}

/// The largest [`ActRow::abs_sum16`](crate::quant::ActRow) of a row for which a Q6_K
/// sub-block's `Σ (q − 32)·a` over all 16 values fits an i16: `|q − 32| ≤ 32`, and
/// 32 · 1023 = 32 736 < 2¹⁵.
pub const Q6_ABS_SUM16_MAX: u16 = 1023;

/// The largest [`ActRow::sign_sum32`](crate::quant::ActRow) of a row for which a whole Q5_K
/// sub-block's `Σ q·a` fits an i16: q is 0..31, so the sum lies within ±31 times the larger
/// one-sign sum of the activations, and 31 · 1057 = 32 767.
pub const Q5_SIGN_SUM32_MAX: u16 = 1057;

/// Rows a pass of [`gemm_k_32x6_unpacked_i16_vnni`] takes.
pub const PAIR_I16_ROWS: usize = 6;

/// Two unpacked groups side by side (32 columns) × up to 6 activation rows over
/// super-blocks `sbs`, VNNI, each `SUM` values' products summed in one i32 lane whose low
/// i16 `vpdpwssd` scales: Q6_K (`Q6`, `SUM` 16; groups from [`unpack_q6`], each
/// sub-block's sums from its `−32·Σa`, [`q6_bias_rows`]) or Q5_K (from [`unpack_q45`], from
/// zero; `SUM` 16, two sums a sub-block, or 32, one). The rows must keep each sum within an
/// i16 over `sbs` (the caller checks): [`ActRow::abs_sum16`](crate::quant::ActRow) at most
/// [`Q6_ABS_SUM16_MAX`] / [`Q45_ABS_SUM16_MAX`] for sums of 16,
/// [`ActRow::sign_sum32`](crate::quant::ActRow) at most [`Q5_SIGN_SUM32_MAX`] for sums of 32.
///
/// Where the 8-value halves ([`gemm_q6_k_32x4_unpacked_vnni`], [`q45_k_unpacked_vnni`]) take
/// two `vpdpwssd` (and for Q6_K two starting sums) per 16 values, this takes one (Q5_K's
/// sums of 32: one per 32), and with half the sums in flight a pass takes 6 rows (each
/// weight vector serves 6, not 4); each activation broadcast serves both groups. The f32
/// totals are kept in `out`: written at super-block 0, added to after in the same steps as
/// the one-group passes, so the same bits. Real activations fit: a Q8_K block's largest
/// value is 127, and 16 values add up to 1023 only where most are near it.
///
/// `w[c]`, the packed group, is read only for Q6_K's `d` (Q5_K's header is unpacked too).
///
/// # Safety
/// `w[c]` one whole 16-row group of Q6_K (`Q6`) or Q5_K and `u[c]` its unpacked
/// super-blocks, `sbs` within them; the activation rows that wide; the CPU has AVX-512 VNNI;
/// `out[i · ld + 0..32]` writable for every row `i` of `acts`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
pub unsafe fn gemm_k_32x6_unpacked_i16_vnni<const R: usize, const Q6: bool, const SUM: usize>(
    w: [*const u8; 2],
    u: [*const u8; 2],
    sbs: std::ops::Range<usize>,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    const {
        assert!(
            R <= PAIR_I16_ROWS,
            "a row's two sums and two i32 totals in registers"
        );
        assert!(
            SUM == 16 || (SUM == 32 && !Q6),
            "Q6_K's sub-blocks are 16 values"
        );
    };
    let (sb, usb, values_at) = if Q6 {
        (210 * G, Q6_UNPACKED_SB, Q6_VALUES_AT)
    } else {
        (180 * G, Q45_UNPACKED_SB, Q45_VALUES_AT)
    };
    debug_assert!(acts.iter().all(|a| sbs.clone().all(|b| match (Q6, SUM) {
        (true, _) => a.abs_sum16[b] <= Q6_ABS_SUM16_MAX,
        (false, 16) => a.abs_sum16[b] <= Q45_ABS_SUM16_MAX,
        _ => a.sign_sum32[b] <= Q5_SIGN_SUM32_MAX,
    })));
    let rows = RowAddrs::new(acts);
    for b in sbs {
        let ub = [u[0].add(b * usb), u[1].add(b * usb)];
        let mut isum = [[_mm512_setzero_si512(); R]; 2];
        for j in 0..QK_K / SUM {
            let start = if Q6 {
                q6_bias_rows::<R>(rows, b, j)
            } else {
                [_mm512_setzero_si512(); R]
            };
            // t[c][i]: group c's sum of row i.
            let mut t = [start, start];
            for h in 0..SUM / 16 {
                // Values 16s..16s + 16, four vectors of four values a row.
                let s = j * (SUM / 16) + h;
                let rs = rows.offset(b * QK_K + 16 * s);
                for k in 0..4 {
                    let at = values_at + 64 * (4 * s + k);
                    let q0 = _mm512_loadu_si512(ub[0].add(at) as *const _);
                    let q1 = _mm512_loadu_si512(ub[1].add(at) as *const _);
                    for i in 0..R {
                        let a = bcast_row(rs, i, 4 * k);
                        t[0][i] = _mm512_dpbusd_epi32(t[0][i], q0, a);
                        t[1][i] = _mm512_dpbusd_epi32(t[1][i], q1, a);
                    }
                }
            }
            // Q6_K's scale of sub-block j; Q5_K's of sub-block j / 2 (of 32 values) for sums
            // of 16, of j for sums of 32.
            let sc_at = if Q6 || SUM == 32 {
                64 * j
            } else {
                64 * (j / 2)
            };
            for (c, t) in t.iter().enumerate() {
                let sc = _mm512_loadu_si512(ub[c].add(sc_at) as *const _);
                for i in 0..R {
                    isum[c][i] = dpwssd(isum[c][i], t[i], sc);
                }
            }
        }
        for c in 0..2 {
            let blk = w[c].add(b * sb);
            let o = out.add(G * c);
            let mut acc = [_mm512_setzero_ps(); R];
            if b > 0 {
                for i in 0..R {
                    acc[i] = _mm512_loadu_ps(o.add(i * ld));
                }
            }
            if Q6 {
                let d = f16x16(blk);
                for i in 0..R {
                    let da = _mm512_set1_ps(*acts.get_unchecked(i).d.get_unchecked(b));
                    let s = _mm512_cvtepi32_ps(isum[c][i]);
                    acc[i] = _mm512_fmadd_ps(s, _mm512_mul_ps(d, da), acc[i]);
                }
            } else {
                q45_epilogue::<R, true>(&Q45Header::unpacked(ub[c]), b, acts, &isum[c], &mut acc);
            }
            for i in 0..R {
                _mm512_storeu_ps(o.add(i * ld), acc[i]);
            }
        }
    }
}

/// One of [`q6_values`]' four vectors alone: the values `128n + 32k + 4g..` of each row.
#[inline(always)]
unsafe fn q6_value<const K: usize>(v: *const u8) -> __m512i {
    let m4 = _mm512_set1_epi8(0x0F);
    let low = _mm512_loadu_si512(v.add(4 * G * (K % 2)) as *const _);
    let qh = _mm512_loadu_si512(v.add(8 * G) as *const _);
    let high = _mm512_and_si512(qh, _mm512_set1_epi8((0x03 << (2 * K)) as i8));
    let (low, high) = match K {
        0 => (low, _mm512_slli_epi16::<4>(high)),
        1 => (low, _mm512_slli_epi16::<2>(high)),
        2 => (_mm512_srli_epi16::<4>(low), high),
        _ => (_mm512_srli_epi16::<4>(low), _mm512_srli_epi16::<2>(high)),
    };
    _mm512_ternarylogic_epi64::<0xEA>(low, m4, high)
}

/// [`q6_k`] with VNNI for up to 8 rows: one sub-block's sums at a time (the four values of a
/// step go to four sub-blocks, so [`q6_k`] keeps four sums a row and takes 4 rows), each
/// step's values joined once for all 8 rows instead of once a pass of 4: 1.05–1.25× at 8–15
/// rows (`qgemm_bench 1 q6_k`, 2048 columns, alternating). As in [`q6_k_unpacked_vnni`],
/// each sub-block runs as two halves of 8 values from their `−32·Σa` ([`q6_bias8_rows`]),
/// each scaled by one `vpdpwssd` (session 54: 1.05–1.1× at 6–16 rows, even at 1). The rows
/// are read through [`RowAddrs`]: with a pointer per row the compiler spilled registers to
/// the stack in every step (5–8 rows 1.15× slower). The i32 sums are the same numbers
/// (exact, added in another order), so the results are the same bits.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // several arrays indexed by the same row
unsafe fn q6_k_vnni<const R: usize>(
    w: *const u8,
    nsb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    const SB: usize = 210 * G;
    let mut acc = [_mm512_setzero_ps(); R];
    let pf = KPrefetch::for_rows::<R>();
    let rows = RowAddrs::new(acts);
    for b in 0..nsb {
        let blk = w.add(b * SB);
        let mut isum = [_mm512_setzero_si512(); R];
        macro_rules! sub_block {
            ($n:expr, $h:expr, $k:literal) => {{
                // Sub-block s: values 16s..16s + 16, from steps 4h..4h + 4 of half n.
                let s = 8 * $n + 2 * $k + $h;
                let rs = rows.offset(b * QK_K + 16 * s);
                let step =
                    |g: usize| q6_value::<$k>(blk.add(18 * G + (8 * $n + 4 * $h + g) * 12 * G));
                let start = (
                    q6_bias8_rows::<R>(rows, b, 2 * s),
                    q6_bias8_rows::<R>(rows, b, 2 * s + 1),
                );
                let sc = _mm512_and_si512(i8x16(blk.add(2 * G + G * s)), _mm512_set1_epi32(0xFFFF));
                halves_scaled(step, rs, start, sc, &mut isum);
            }};
        }
        for n in 0..2 {
            for h in 0..2 {
                prefetch_ahead_k(pf, blk, SB, 2 * n + h, 4);
                sub_block!(n, h, 0);
                sub_block!(n, h, 1);
                sub_block!(n, h, 2);
                sub_block!(n, h, 3);
            }
        }
        let d = f16x16(blk);
        for i in 0..R {
            let da = _mm512_set1_ps(*acts.get_unchecked(i).d.get_unchecked(b));
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), _mm512_mul_ps(d, da), acc[i]);
        }
    }
    for (i, v) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add(i * ld), *v);
    }
}

/// The kernels by format, as `target_feature` entry points: the bodies above are inlined into
/// each, so the VNNI flavour alone may use `vpdpbusd`.
macro_rules! entry {
    ($name:ident, $feat:literal, $body:ident::<$($p:tt),*>) => {
        /// See `quant::kgemm`: one group of 16 rows × `R` activation rows.
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

entry!(
    gemm_q4_k_16x8_q8k,
    "avx512f,avx512bw,avx2,fma,f16c",
    q45_k::<false>
);
entry!(
    gemm_q5_k_16x8_q8k,
    "avx512f,avx512bw,avx2,fma,f16c",
    q45_k::<true>
);
entry!(
    gemm_q6_k_16x4_q8k,
    "avx512f,avx512bw,avx2,fma,f16c",
    q6_k::<false>
);
entry!(
    gemm_q4_k_16x8_q8k_vnni,
    "avx512f,avx512bw,avx512vnni,avx2,fma,f16c",
    q45_k_pairs_vnni::<false, false>
);

/// See `quant::kgemm`: one Q5_K group of 16 rows × `R` activation rows, VNNI, the fifth bits
/// moved by shifts where [`crate::cpu_features::q5_fifth_bits_by_shifts`] says so.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_q5_k_16x8_q8k_vnni<const R: usize>(
    w: *const u8,
    nsb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    if crate::cpu_features::q5_fifth_bits_by_shifts() {
        q45_k_pairs_vnni::<R, true, true>(w, nsb, acts, out, ld)
    } else {
        q45_k_pairs_vnni::<R, true, false>(w, nsb, acts, out, ld)
    }
}

entry!(
    gemm_q6_k_16x4_q8k_vnni,
    "avx512f,avx512bw,avx512vnni,avx2,fma,f16c",
    q6_k::<true>
);

/// See `quant::kgemm`: one Q6_K group of 16 rows × `R` activation rows, VNNI (1 and 5 to 8
/// rows: at 2–4 the 4-row kernel, whose steps load each vector once, was as fast or faster).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_q6_k_16x8_q8k_vnni<const R: usize>(
    w: *const u8,
    nsb: usize,
    acts: &[ActRow],
    out: *mut f32,
    ld: usize,
) {
    q6_k_vnni::<R>(w, nsb, acts, out, ld)
}
