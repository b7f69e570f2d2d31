//! A block of prompt queries against one KV head with AVX-512, as two small matrix products.
//!
//! [`super::attend`] takes one query row and head at a time: it streams every visible key and
//! value once per row, from L2 when the context is long, at a few multiply-adds per cycle
//! (a 1 500-token prompt spent over half its time there). Here the task's rows — its queries
//! times the query heads sharing the KV head, at most 64 — sit in the lanes of up to four
//! vectors, transposed (`qt[dim][row]`), so that:
//! - scores are `s[key][row] = Σ_d k[key][d] · qt[d][row]`: one broadcast key value times one
//!   vector of rows per multiply-add, four keys at a time, no horizontal sums;
//! - the softmax runs down the keys for all rows at once (per-lane max, exp and sum);
//! - outputs are `ot[d][row] = Σ_key v[key][d] · s[key][row]`, four dimensions at a time, over
//!   tiles of keys small enough that their scores and values stay in L1.
//! Masked (future) keys get exactly zero weight. Keys and values are first widened to f32 rows
//! as in [`super::attend`].

use super::{CacheElem, OutPtr, Task, TaskInput, Q8};
use crate::vecmath::{self, Avx2};
use half::f16;
use std::arch::x86_64::*;

/// Keys whose scores and values one pass of the output product keeps in L1 (64 keys: 12 KiB
/// of scores for 48 rows, 16 KiB of values for a head of 64).
const KEY_TILE: usize = 64;

thread_local! {
    /// Widened keys, values, transposed queries, scores, transposed outputs: reused.
    static BUFS: std::cell::RefCell<[Vec<f32>; 5]> = const {
        std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()])
    };
}

/// Whether prompt tasks take this path where it applies (`CAMELID_NO_PREFILL512=1` keeps
/// [`super::attend`], to compare them on one machine).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("CAMELID_NO_PREFILL512").is_none())
}

/// Runs the task if this path covers it (AVX-512, at least two queries, head size a multiple
/// of 4, at most 64 rows); false leaves it to [`super::attend`].
pub fn run(input: &TaskInput, task: &Task, out: OutPtr) -> bool {
    let h = input.h;
    let rows = (task.q1 - task.q0) * (h.q / h.kv);
    if task.q1 - task.q0 < 2
        || !h.dim.is_multiple_of(4)
        || rows > 64
        || !vecmath::avx512_available()
    {
        return false;
    }
    use super::KvDtype as D;
    // Safety (every call): AVX-512F/BW, AVX2, FMA and F16C are available (checked above).
    unsafe {
        match (rows.div_ceil(16), input.kv.cache.dtype()) {
            (1, D::F32) => task_rows::<1, f32>(input, task, out),
            (2, D::F32) => task_rows::<2, f32>(input, task, out),
            (3, D::F32) => task_rows::<3, f32>(input, task, out),
            (_, D::F32) => task_rows::<4, f32>(input, task, out),
            (1, D::F16) => task_rows::<1, f16>(input, task, out),
            (2, D::F16) => task_rows::<2, f16>(input, task, out),
            (3, D::F16) => task_rows::<3, f16>(input, task, out),
            (_, D::F16) => task_rows::<4, f16>(input, task, out),
            (1, D::Q8_0) => task_rows::<1, Q8>(input, task, out),
            (2, D::Q8_0) => task_rows::<2, Q8>(input, task, out),
            (3, D::Q8_0) => task_rows::<3, Q8>(input, task, out),
            (_, D::Q8_0) => task_rows::<4, Q8>(input, task, out),
        }
    }
    true
}

/// `e^x` in 16 lanes: [`vecmath::avx2::exp`]'s range reduction and polynomial.
#[inline(always)]
unsafe fn exp512(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.3));
    let x = _mm512_min_ps(x, _mm512_set1_ps(88.3));
    let n_i = _mm512_cvtps_epi32(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
    let n = _mm512_cvtepi32_ps(n_i);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let er = _mm512_fmadd_ps(
        _mm512_mul_ps(r, r),
        p,
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
        n_i,
        _mm512_set1_epi32(127),
    )));
    _mm512_mul_ps(er, two_n)
}

/// One task whose rows fill `RZ` vectors of 16 (row `i · group + j`: query `q0 + i`, head
/// `j` of the group).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // register arrays indexed by key and lane group
unsafe fn task_rows<const RZ: usize, E: CacheElem>(input: &TaskInput, task: &Task, out: OutPtr) {
    let (h, kv, layer) = (input.h, input.kv, input.layer);
    let Task {
        chunk: ci,
        first_tok,
        g,
        q0,
        q1,
    } = *task;
    let c = &input.chunks[ci];
    let (d, qw, group) = (h.dim, h.q * h.dim, h.q / h.kv);
    let (nq, rp) = (q1 - q0, RZ * 16);
    let rows = nq * group;
    let n_keys = c.start_pos + q1;
    BUFS.with_borrow_mut(|[keys, values, qt, s, ot]| {
        for buf in [&mut *keys, &mut *values] {
            buf.resize(n_keys * d, 0.0);
        }
        let bs = kv.block_size;
        for (bi, &block) in kv.tables[ci].iter().enumerate().take(n_keys.div_ceil(bs)) {
            let at = kv.cache.head_offset(block as usize * bs, g);
            let len = bs.min(n_keys - bi * bs) * d;
            let dst = bi * bs * d..bi * bs * d + len;
            E::widen::<Avx2>(
                kv.cache,
                layer,
                at,
                &mut keys[dst.clone()],
                &mut values[dst],
            );
        }
        // Scaled queries, transposed; padding rows stay zero (their lanes are never written
        // out).
        qt.clear();
        qt.resize(d * rp, 0.0);
        for i in 0..nq {
            let t = first_tok + q0 + i;
            for j in 0..group {
                let r = i * group + j;
                let q = &input.q[t * qw + (g * group + j) * d..][..d];
                for (dd, &v) in q.iter().enumerate() {
                    qt[dd * rp + r] = v * input.scale;
                }
            }
        }
        // The last key each row sees (causal); padding rows see every key.
        let mut last = [n_keys as i32 - 1; 64];
        for (r, l) in last.iter_mut().enumerate().take(rows) {
            *l = (c.start_pos + q0 + r / group) as i32;
        }
        let last: [__m512i; RZ] =
            std::array::from_fn(|z| _mm512_loadu_si512(last.as_ptr().add(16 * z) as *const _));
        // Keys from here on are hidden from some rows.
        let first_masked = c.start_pos + q0 + 1;
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);

        // Scores, four keys at a time.
        s.resize(n_keys * rp, 0.0);
        let (kp, qp, sp) = (keys.as_ptr(), qt.as_ptr(), s.as_mut_ptr());
        let store = |k: usize, z: usize, v: __m512| {
            let v = if k >= first_masked {
                let hidden = _mm512_cmpgt_epi32_mask(_mm512_set1_epi32(k as i32), last[z]);
                _mm512_mask_mov_ps(v, hidden, neg_inf)
            } else {
                v
            };
            _mm512_storeu_ps(sp.add(k * rp + 16 * z), v);
        };
        let mut k = 0;
        while k + 4 <= n_keys {
            let mut acc = [[_mm512_setzero_ps(); RZ]; 4];
            for dd in 0..d {
                let q: [__m512; RZ] =
                    std::array::from_fn(|z| _mm512_loadu_ps(qp.add(dd * rp + 16 * z)));
                for u in 0..4 {
                    let kv = _mm512_set1_ps(*kp.add((k + u) * d + dd));
                    for z in 0..RZ {
                        acc[u][z] = _mm512_fmadd_ps(kv, q[z], acc[u][z]);
                    }
                }
            }
            for u in 0..4 {
                for z in 0..RZ {
                    store(k + u, z, acc[u][z]);
                }
            }
            k += 4;
        }
        for k in k..n_keys {
            let mut acc = [_mm512_setzero_ps(); RZ];
            for dd in 0..d {
                let kv = _mm512_set1_ps(*kp.add(k * d + dd));
                for z in 0..RZ {
                    acc[z] = _mm512_fmadd_ps(kv, _mm512_loadu_ps(qp.add(dd * rp + 16 * z)), acc[z]);
                }
            }
            for z in 0..RZ {
                store(k, z, acc[z]);
            }
        }

        // Softmax down the keys, every row at once; hidden keys weigh exactly zero.
        let mut max = [neg_inf; RZ];
        for k in 0..n_keys {
            for z in 0..RZ {
                max[z] = _mm512_max_ps(max[z], _mm512_loadu_ps(sp.add(k * rp + 16 * z)));
            }
        }
        let mut sum = [_mm512_setzero_ps(); RZ];
        for k in 0..n_keys {
            for z in 0..RZ {
                let at = sp.add(k * rp + 16 * z);
                let x = _mm512_loadu_ps(at);
                let hidden = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(x, neg_inf);
                let e = _mm512_maskz_mov_ps(!hidden, exp512(_mm512_sub_ps(x, max[z])));
                _mm512_storeu_ps(at, e);
                sum[z] = _mm512_add_ps(sum[z], e);
            }
        }

        // Outputs, four dimensions at a time over tiles of keys.
        ot.clear();
        ot.resize(d * rp, 0.0);
        let (vp, op) = (values.as_ptr(), ot.as_mut_ptr());
        for k0 in (0..n_keys).step_by(KEY_TILE) {
            let k1 = (k0 + KEY_TILE).min(n_keys);
            for d0 in (0..d).step_by(4) {
                let mut acc: [[__m512; RZ]; 4] = std::array::from_fn(|u| {
                    std::array::from_fn(|z| _mm512_loadu_ps(op.add((d0 + u) * rp + 16 * z)))
                });
                for k in k0..k1 {
                    let w: [__m512; RZ] =
                        std::array::from_fn(|z| _mm512_loadu_ps(sp.add(k * rp + 16 * z)));
                    for u in 0..4 {
                        let v = _mm512_set1_ps(*vp.add(k * d + d0 + u));
                        for z in 0..RZ {
                            acc[u][z] = _mm512_fmadd_ps(v, w[z], acc[u][z]);
                        }
                    }
                }
                for u in 0..4 {
                    for z in 0..RZ {
                        _mm512_storeu_ps(op.add((d0 + u) * rp + 16 * z), acc[u][z]);
                    }
                }
            }
        }

        // Normalised rows into the output, transposed back.
        let mut inv = [0f32; 64];
        for z in 0..RZ {
            _mm512_storeu_ps(inv.as_mut_ptr().add(16 * z), sum[z]);
        }
        for i in 0..nq {
            let t = first_tok + q0 + i;
            for j in 0..group {
                let r = i * group + j;
                let scale = 1.0 / inv[r];
                // Safety: task (chunk, g, q-block) alone writes these rows' heads of group g.
                let dst = out.at(t * qw + (g * group + j) * d);
                for dd in 0..d {
                    *dst.add(dd) = ot[dd * rp + r] * scale;
                }
            }
        }
    });
}
