//! One query (a decode) against one KV head of an f16 or Q8_0 cache with AVX-512, straight
//! from the cache: no widened copy. [`attend`] widens a task's keys and values into f32 scratch and
//! passes over it once per query head; for a decode that is most of its time (the scratch
//! outgrows L1, and every head re-reads it from L2). Here each key, converted once, serves every
//! head of the group (16-lane products, one horizontal sum per key and head), and each value
//! row is converted once and added into the group's sums, held in registers.

use super::{q8_group, Planes, Q8Plane, Task, TaskInput, SCRATCH};
use crate::vecmath::{Avx2, VecOps};
use crate::OutPtr;
use half::f16;
use std::arch::x86_64::*;

/// One layer's keys or values as this path reads them: 16 values at a time, as f32.
trait Rows: Copy {
    /// Bytes of one value (what a prefetch of a run of rows covers).
    const BYTES: usize;
    /// Values `at..at + 16` (`at` a multiple of 16).
    unsafe fn load16(self, at: usize) -> __m512;
    fn addr(self, at: usize) -> *const i8;
}

impl Rows for &[f16] {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load16(self, at: usize) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(self.as_ptr().add(at) as *const __m256i))
    }
    #[inline(always)]
    fn addr(self, at: usize) -> *const i8 {
        self.as_ptr().wrapping_add(at) as *const i8
    }
}

/// A Q8_0 plane with groups of 32 (head sizes 64 and 128).
impl Rows for &Q8Plane {
    const BYTES: usize = 1;
    #[inline(always)]
    unsafe fn load16(self, at: usize) -> __m512 {
        let q = _mm512_cvtepi8_epi32(_mm_loadu_si128(self.qs.as_ptr().add(at) as *const _));
        let d = _mm512_set1_ps(*self.scales.get_unchecked(at / 32));
        _mm512_mul_ps(_mm512_cvtepi32_ps(q), d)
    }
    #[inline(always)]
    fn addr(self, at: usize) -> *const i8 {
        self.qs.as_ptr().wrapping_add(at)
    }
}

/// Runs the task if this path covers it (AVX-512, an f16 or Q8_0 cache, head size 64 or
/// 128, at most 24 registers of sums); false leaves it to [`super::attend`].
pub fn run(input: &TaskInput, task: &Task, out: OutPtr) -> bool {
    let h = input.h;
    if !matches!(h.dim, 64 | 128) || !crate::cpu_features::avx512() {
        return false;
    }
    debug_assert_eq!(q8_group(h.dim), 32);
    // Safety (every call): AVX-512F/BW, AVX2, FMA and F16C are available (checked above).
    unsafe {
        match &input.kv.cache.planes {
            Planes::F16(k, v) => {
                let (k, v) = (&k[input.layer][..], &v[input.layer][..]);
                by_shape(input, task, out, k, v)
            }
            Planes::Q8(k, v) => by_shape(input, task, out, &k[input.layer], &v[input.layer]),
            Planes::F32(..) => return false,
        }
    }
    true
}

/// Heads are taken a few at a time so their sums fit in registers.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn by_shape<R: Rows>(input: &TaskInput, task: &Task, out: OutPtr, k: R, v: R) {
    match (input.h.dim, input.h.q / input.h.kv) {
        (64, g) if g % 3 == 0 => heads::<4, 3, R>(input, task, out, k, v),
        (64, g) if g % 4 == 0 => heads::<4, 4, R>(input, task, out, k, v),
        (64, g) if g % 2 == 0 => heads::<4, 2, R>(input, task, out, k, v),
        (64, _) => heads::<4, 1, R>(input, task, out, k, v),
        (128, g) if g % 2 == 0 => heads::<8, 2, R>(input, task, out, k, v),
        _ => heads::<8, 1, R>(input, task, out, k, v),
    }
}

/// The sums of the lanes of four vectors, in that order.
#[inline(always)]
unsafe fn sum4(v: [__m512; 4]) -> __m128 {
    // 128-bit chunks: [a0+a2, a1+a3, b0+b2, b1+b3], then chunk u holds four partial sums
    // of vector u; two in-chunk swaps finish them.
    let ab = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x44>(v[0], v[1]),
        _mm512_shuffle_f32x4::<0xEE>(v[0], v[1]),
    );
    let cd = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x44>(v[2], v[3]),
        _mm512_shuffle_f32x4::<0xEE>(v[2], v[3]),
    );
    let abcd = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x88>(ab, cd),
        _mm512_shuffle_f32x4::<0xDD>(ab, cd),
    );
    let t = _mm512_add_ps(abcd, _mm512_permute_ps::<0b10_11_00_01>(abcd));
    let t = _mm512_add_ps(t, _mm512_permute_ps::<0b01_00_11_10>(t));
    let lane0 = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_castps512_ps128(_mm512_permutexvar_ps(lane0, t))
}

/// `NV` vectors of 16 per head (head size 16·NV); `G` query heads at a time.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // register arrays indexed by head and lane group
unsafe fn heads<const NV: usize, const G: usize, R: Rows>(
    input: &TaskInput,
    task: &Task,
    out: OutPtr,
    k_plane: R,
    v_plane: R,
) {
    let (h, kv) = (input.h, input.kv);
    let c = &input.chunks[task.chunk];
    let (d, qw, group) = (h.dim, h.q * h.dim, h.q / h.kv);
    let t = task.first_tok + task.q0;
    let visible = c.start_pos + task.q0 + 1;
    let (bs, table) = (kv.block_size, &kv.tables[task.chunk]);
    // Runs of positions (p0, n, plane offset of p0's row): one per block, rows contiguous
    // inside it (positions are walked block by block: a division per position would cost
    // more than its arithmetic).
    let n_blocks = visible.div_ceil(bs);
    let runs = || {
        table[..n_blocks]
            .iter()
            .enumerate()
            .map(move |(b, &block)| {
                let p0 = b * bs;
                (
                    p0,
                    bs.min(visible - p0),
                    kv.cache.head_offset(block as usize * bs, task.g),
                )
            })
    };
    // The blocks are scattered, so the hardware prefetcher restarts at each one: ask for
    // block b + AHEAD's rows while block b is computed.
    const AHEAD: usize = 2;
    let prefetch = |plane: R, b: usize| {
        if let Some(&block) = table[..n_blocks].get(b + AHEAD) {
            let p = plane.addr(kv.cache.head_offset(block as usize * bs, task.g));
            for off in (0..bs * d * R::BYTES).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off));
            }
        }
    };
    let load = |plane: R, at: usize, i: usize| plane.load16(at + 16 * i);
    SCRATCH.with_borrow_mut(|scratch| {
        let scores = &mut scratch[2];
        scores.resize(G * visible, 0.0);
        for j0 in (0..group).step_by(G) {
            let head0 = task.g * group + j0;
            let q = |j: usize, i: usize| {
                _mm512_loadu_ps(input.q.as_ptr().add(t * qw + (head0 + j) * d + 16 * i))
            };
            // Scores: each key converted once for the G heads; four keys at a time share
            // one horizontal reduction per head.
            let scale = _mm_set1_ps(input.scale);
            for (b, (p0, n, at0)) in runs().enumerate() {
                prefetch(k_plane, b);
                let mut r = 0;
                while r + 4 <= n {
                    let mut acc = [[_mm512_setzero_ps(); 4]; G];
                    for u in 0..4 {
                        let at = at0 + (r + u) * d;
                        for i in 0..NV {
                            let k = load(k_plane, at, i);
                            for j in 0..G {
                                acc[j][u] = _mm512_fmadd_ps(k, q(j, i), acc[j][u]);
                            }
                        }
                    }
                    for j in 0..G {
                        let s = _mm_mul_ps(sum4(acc[j]), scale);
                        _mm_storeu_ps(scores.as_mut_ptr().add(j * visible + p0 + r), s);
                    }
                    r += 4;
                }
                for r in r..n {
                    let at = at0 + r * d;
                    let k: [__m512; NV] = std::array::from_fn(|i| load(k_plane, at, i));
                    for j in 0..G {
                        let mut acc = _mm512_mul_ps(k[0], q(j, 0));
                        for i in 1..NV {
                            acc = _mm512_fmadd_ps(k[i], q(j, i), acc);
                        }
                        *scores.get_unchecked_mut(j * visible + p0 + r) =
                            _mm512_reduce_add_ps(acc) * input.scale;
                    }
                }
            }
            let mut inv = [0f32; G];
            for (j, inv) in inv.iter_mut().enumerate() {
                let row = &mut scores[j * visible..(j + 1) * visible];
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                *inv = 1.0 / Avx2::exp_shifted_sum(row, max);
            }
            // Weighted values: each row converted once, added into all G heads' sums.
            let mut acc = [[_mm512_setzero_ps(); NV]; G];
            for (b, (p0, n, at0)) in runs().enumerate() {
                prefetch(v_plane, b);
                for r in 0..n {
                    let at = at0 + r * d;
                    let v: [__m512; NV] = std::array::from_fn(|i| load(v_plane, at, i));
                    for j in 0..G {
                        let w = _mm512_set1_ps(*scores.get_unchecked(j * visible + p0 + r));
                        for i in 0..NV {
                            acc[j][i] = _mm512_fmadd_ps(w, v[i], acc[j][i]);
                        }
                    }
                }
            }
            for j in 0..G {
                // Safety: task (chunk, g, query) alone writes these heads of row t.
                let dst = out.at(t * qw + (head0 + j) * d);
                let s = _mm512_set1_ps(inv[j]);
                for i in 0..NV {
                    _mm512_storeu_ps(dst.add(16 * i), _mm512_mul_ps(acc[j][i], s));
                }
            }
        }
    });
}
