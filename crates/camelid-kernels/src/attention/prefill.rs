//! A block of prompt queries against one KV head as two small matrix products, in 16-lane
//! (AVX-512) or 8-lane (AVX2) vectors.
//!
//! [`super::attend`] takes one query row and head at a time: it streams every visible key and
//! value once per row, from L2 when the context is long, at a few multiply-adds per cycle
//! (a 1 500-token prompt spent over half its time there). Here the task's rows — its queries
//! times the query heads sharing the KV head, at most 64 — sit transposed in the lanes of a few
//! vectors (`qt[dim][row]`), a group of vectors at a time, so that:
//! - scores are `s[key][row] = Σ_d k[key][d] · qt[d][row]`: one broadcast key value times one
//!   vector of rows per multiply-add, four keys at a time, no horizontal sums;
//! - the softmax runs down the keys for all rows at once (per-lane max, exp and sum);
//! - outputs are `ot[d][row] = Σ_key v[key][d] · s[key][row]`, four dimensions at a time, over
//!   tiles of keys small enough that their scores and values stay in L1.
//!
//! Sliding windows (each row's first key) and Gemma 2's soft-capping of the scores are taken
//! here too. Masked (future, or before the window) keys get exactly zero weight. Keys and
//! values are read as f32 rows: widened once for all of a chunk's tasks of a KV head
//! (`super::widen_shared`), else by the task for all its rows as in [`super::attend`].

use super::{widen_span, widen_task_kv, CacheElem, Heads, HostPaged, KvSpan, Task, TaskInput, Q8};
use crate::vecmath::{self, Avx2};
use crate::OutPtr;
use half::f16;
use std::arch::x86_64::*;
use std::sync::atomic::{AtomicU8, Ordering};

/// Keys whose scores and values one pass of the output product keeps in L1 (64 keys: 16 KiB
/// of scores for 64 rows, 16 KiB of values for a head of 64).
const KEY_TILE: usize = 64;

/// Most rows a task may have (the tasks' query blocks are sized to it).
const MAX_ROWS: usize = 64;

thread_local! {
    /// Widened keys, values, transposed queries, scores, transposed outputs: reused.
    static BUFS: std::cell::RefCell<[Vec<f32>; 5]> = const {
        std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()])
    };
}

/// Which vectors prompt tasks use: the widest this CPU has, unless told otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillPath {
    /// AVX-512 where the CPU has it, else AVX2 (`CAMELID_NO_AVX512=1` says it has not).
    Widest,
    /// AVX2 even where AVX-512 runs (tests compare the two on one machine).
    Avx2,
    /// Neither: every prompt task takes [`super::attend`] (`CAMELID_NO_PREFILL_TILES=1`).
    Off,
}

static OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// Chooses the path for prompt tasks from now on, for every thread (tests and benchmarks).
pub fn set_path(p: PrefillPath) {
    let v = match p {
        PrefillPath::Widest => 1,
        PrefillPath::Avx2 => 2,
        PrefillPath::Off => 3,
    };
    OVERRIDE.store(v, Ordering::Relaxed);
}

fn path() -> PrefillPath {
    match OVERRIDE.load(Ordering::Relaxed) {
        1 => PrefillPath::Widest,
        2 => PrefillPath::Avx2,
        3 => PrefillPath::Off,
        _ => {
            static ENV: std::sync::OnceLock<PrefillPath> = std::sync::OnceLock::new();
            *ENV.get_or_init(|| {
                if std::env::var_os("CAMELID_NO_PREFILL_TILES").is_some() {
                    PrefillPath::Off
                } else {
                    PrefillPath::Widest
                }
            })
        }
    }
}

/// Whether this path takes the prompt tasks of heads `h` (AVX2 at least, a head size that is
/// a multiple of 4, at most [`MAX_ROWS`] rows a task: `super::query_block`'s).
pub(super) fn takes(h: Heads) -> bool {
    h.dim.is_multiple_of(4)
        && h.q / h.kv <= MAX_ROWS
        && path() != PrefillPath::Off
        && crate::cpu_features::avx2()
}

/// Runs the task if this path covers it ([`takes`], and the task within [`MAX_ROWS`]);
/// false leaves it to [`super::attend`]. A lone prompt query comes here too, so that a
/// prompt position's rounding never depends on its chunk.
pub(super) fn run(input: &TaskInput, task: &Task, out: OutPtr) -> bool {
    let h = input.h;
    let rows = (task.q1 - task.q0) * (h.q / h.kv);
    if !takes(h) || rows > MAX_ROWS {
        return false;
    }
    // `Off` was refused by `takes`.
    let wide = path() == PrefillPath::Widest && crate::cpu_features::avx512();
    use super::KvDtype as D;
    // Safety (every call): the CPU has the features each entry point enables (checked above).
    unsafe {
        match (wide, input.kv.cache.dtype()) {
            (true, D::F32) => task512::<f32>(input, task, out),
            (true, D::F16) => task512::<f16>(input, task, out),
            (true, D::Q8_0) => task512::<Q8>(input, task, out),
            (false, D::F32) => task256::<f32>(input, task, out),
            (false, D::F16) => task256::<f16>(input, task, out),
            (false, D::Q8_0) => task256::<Q8>(input, task, out),
        }
    }
    true
}

/// The vector operations the products need, in `W` lanes.
trait Lanes: Copy {
    const W: usize;
    /// Vectors of rows one pass keeps (with four keys' sums each, in registers).
    const GROUP: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// `self · b + c`.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    unsafe fn max(self, b: Self) -> Self;
    unsafe fn add(self, b: Self) -> Self;
    /// −∞ in the lanes whose row sees no further than `last[lane]` when `key` is later.
    unsafe fn hide_after(self, key: usize, last: *const i32) -> Self;
    /// −∞ in the lanes whose row's window starts at `first[lane]` when `key` is earlier.
    unsafe fn hide_before(self, key: usize, first: *const i32) -> Self;
    /// `cap · tanh(self / cap)` (Gemma 2's soft-capping), as `1 − 2 / (e^2x + 1)` with the
    /// sign put back: within a few f32 roundings of `tanh` times `cap`.
    unsafe fn softcap(self, cap: f32) -> Self;
    /// `e^(self − max)`, exactly 0 where `self` is −∞.
    unsafe fn exp_from(self, max: Self) -> Self;
}

#[derive(Clone, Copy)]
struct V512(__m512);

impl Lanes for V512 {
    const W: usize = 16;
    const GROUP: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> Self {
        V512(_mm512_setzero_ps())
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        V512(_mm512_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        V512(_mm512_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        V512(_mm512_fmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        V512(_mm512_max_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        V512(_mm512_add_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn hide_after(self, key: usize, last: *const i32) -> Self {
        let last = _mm512_loadu_si512(last as *const _);
        let hidden = _mm512_cmpgt_epi32_mask(_mm512_set1_epi32(key as i32), last);
        V512(_mm512_mask_mov_ps(
            self.0,
            hidden,
            _mm512_set1_ps(f32::NEG_INFINITY),
        ))
    }
    #[inline(always)]
    unsafe fn hide_before(self, key: usize, first: *const i32) -> Self {
        let first = _mm512_loadu_si512(first as *const _);
        let hidden = _mm512_cmpgt_epi32_mask(first, _mm512_set1_epi32(key as i32));
        V512(_mm512_mask_mov_ps(
            self.0,
            hidden,
            _mm512_set1_ps(f32::NEG_INFINITY),
        ))
    }
    #[inline(always)]
    unsafe fn softcap(self, cap: f32) -> Self {
        // The sign bit moved as integers: the `_ps` logic ops are AVX-512DQ, not enabled here.
        let sign = _mm512_set1_epi32(i32::MIN);
        let x = _mm512_mul_ps(self.0, _mm512_set1_ps(1.0 / cap));
        let xi = _mm512_castps_si512(x);
        let ax = _mm512_castsi512_ps(_mm512_andnot_si512(sign, xi));
        let e = vecmath::avx512::exp(_mm512_add_ps(ax, ax));
        let t = _mm512_sub_ps(
            _mm512_set1_ps(1.0),
            _mm512_div_ps(_mm512_set1_ps(2.0), _mm512_add_ps(e, _mm512_set1_ps(1.0))),
        );
        let t = _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_castps_si512(t),
            _mm512_and_si512(sign, xi),
        ));
        V512(_mm512_mul_ps(t, _mm512_set1_ps(cap)))
    }
    #[inline(always)]
    unsafe fn exp_from(self, max: Self) -> Self {
        let hidden = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(self.0, _mm512_set1_ps(f32::NEG_INFINITY));
        V512(_mm512_maskz_mov_ps(
            !hidden,
            vecmath::avx512::exp(_mm512_sub_ps(self.0, max.0)),
        ))
    }
}

#[derive(Clone, Copy)]
struct V256(__m256);

impl Lanes for V256 {
    const W: usize = 8;
    // 16 registers: eight sums, two row vectors, a key.
    const GROUP: usize = 2;
    #[inline(always)]
    unsafe fn zero() -> Self {
        V256(_mm256_setzero_ps())
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        V256(_mm256_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        V256(_mm256_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        V256(_mm256_fmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        V256(_mm256_max_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        V256(_mm256_add_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn hide_after(self, key: usize, last: *const i32) -> Self {
        let last = _mm256_loadu_si256(last as *const __m256i);
        let hidden = _mm256_cmpgt_epi32(_mm256_set1_epi32(key as i32), last);
        V256(_mm256_blendv_ps(
            self.0,
            _mm256_set1_ps(f32::NEG_INFINITY),
            _mm256_castsi256_ps(hidden),
        ))
    }
    #[inline(always)]
    unsafe fn hide_before(self, key: usize, first: *const i32) -> Self {
        let first = _mm256_loadu_si256(first as *const __m256i);
        let hidden = _mm256_cmpgt_epi32(first, _mm256_set1_epi32(key as i32));
        V256(_mm256_blendv_ps(
            self.0,
            _mm256_set1_ps(f32::NEG_INFINITY),
            _mm256_castsi256_ps(hidden),
        ))
    }
    #[inline(always)]
    unsafe fn softcap(self, cap: f32) -> Self {
        let sign = _mm256_set1_ps(-0.0);
        let x = _mm256_mul_ps(self.0, _mm256_set1_ps(1.0 / cap));
        let ax = _mm256_andnot_ps(sign, x);
        let e = vecmath::avx2::exp(_mm256_add_ps(ax, ax));
        let t = _mm256_sub_ps(
            _mm256_set1_ps(1.0),
            _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, _mm256_set1_ps(1.0))),
        );
        let t = _mm256_or_ps(t, _mm256_and_ps(sign, x));
        V256(_mm256_mul_ps(t, _mm256_set1_ps(cap)))
    }
    #[inline(always)]
    unsafe fn exp_from(self, max: Self) -> Self {
        let hidden = _mm256_cmp_ps::<_CMP_EQ_OQ>(self.0, _mm256_set1_ps(f32::NEG_INFINITY));
        let e = vecmath::avx2::exp(_mm256_sub_ps(self.0, max.0));
        V256(_mm256_andnot_ps(hidden, e))
    }
}

/// [`super::widen_span`] with AVX2 where [`takes`] said this path runs (so the CPU has it).
pub(super) fn widen(
    kv: &HostPaged,
    layer: usize,
    span: KvSpan,
    keys: &mut [f32],
    values: &mut [f32],
) {
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn avx2<E: CacheElem>(
        kv: &HostPaged,
        layer: usize,
        span: KvSpan,
        keys: &mut [f32],
        values: &mut [f32],
    ) {
        widen_span::<Avx2, E>(kv, layer, span, keys, values)
    }
    assert!(crate::cpu_features::avx2(), "shared widening without AVX2");
    use super::KvDtype as D;
    // Safety: the CPU has AVX2, FMA and F16C (asserted).
    unsafe {
        match kv.cache.dtype() {
            D::F32 => avx2::<f32>(kv, layer, span, keys, values),
            D::F16 => avx2::<f16>(kv, layer, span, keys, values),
            D::Q8_0 => avx2::<Q8>(kv, layer, span, keys, values),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn task512<E: CacheElem>(input: &TaskInput, task: &Task, out: OutPtr) {
    task_rows::<V512, E>(input, task, out)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn task256<E: CacheElem>(input: &TaskInput, task: &Task, out: OutPtr) {
    task_rows::<V256, E>(input, task, out)
}

/// What one group of row vectors reads and writes.
struct Group<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    /// `qt[dd · rp + r]`: row `r`'s scaled query, transposed (`rp` lanes per dimension).
    qt: &'a [f32],
    s: &'a mut [f32],
    ot: &'a mut [f32],
    last: &'a [i32; MAX_ROWS],
    /// The first key each row sees (its window's start).
    first: &'a [i32; MAX_ROWS],
    d: usize,
    rp: usize,
    n_keys: usize,
    /// Keys from here on are hidden from some rows (causal).
    first_masked: usize,
    /// Keys before this are hidden from some rows (their windows'; 0 without a window).
    windowed_until: usize,
    softcap: Option<f32>,
}

/// One task: its keys and values as f32 rows (from the block of the earliest window's first
/// key; the chunk's shared ones, else widened here), then its rows (row `i · group + j`: query `q0 + i`, head `j` of the group) in groups
/// of [`Lanes::GROUP`] vectors. Keys are numbered from that block on.
#[inline(always)]
unsafe fn task_rows<L: Lanes, E: CacheElem>(input: &TaskInput, task: &Task, out: OutPtr) {
    let h = input.h;
    let Task {
        chunk: ci,
        first_tok,
        g,
        q0,
        q1,
        ..
    } = *task;
    let c = &input.chunks[ci];
    let (d, qw, group) = (h.dim, h.q * h.dim, h.q / h.kv);
    let nq = q1 - q0;
    let rows = nq * group;
    let vectors = rows.div_ceil(L::W);
    let rp = vectors * L::W;
    let bs = input.kv.block_size;
    let from = h.first_key(c.start_pos + q0) / bs * bs;
    let n_keys = c.start_pos + q1 - from;
    BUFS.with_borrow_mut(|[keys, values, qt, s, ot]| {
        // The chunk's keys and values widened once for its tasks, else this task's own.
        let (keys, values): (&[f32], &[f32]) = match input.shared(task) {
            Some(w) => {
                let rows = (from - w.from) * d..(from - w.from + n_keys) * d;
                (&w.keys[rows.clone()], &w.values[rows])
            }
            None => {
                widen_task_kv::<Avx2, E>(input, task, from, from + n_keys, keys, values);
                (keys, values)
            }
        };
        // Scaled queries, transposed; padding rows stay zero (their lanes are never written
        // out). Row r's query and output: query q0 + r / group, head g·group + r % group.
        qt.clear();
        qt.resize(d * rp, 0.0);
        let row_at = |r: usize| (first_tok + q0 + r / group) * qw + (g * group + r % group) * d;
        // Whole blocks of 16 rows × 16 dimensions move as vectors (one scalar store a value
        // took ~10 % of a prompt's attention each way). Only with 16 lanes, i.e. in
        // `task512`, where the CPU has AVX-512F (`run` checked).
        let blocks = if L::W == 16 && d.is_multiple_of(16) {
            rows / 16 * 16
        } else {
            0
        };
        for r0 in (0..blocks).step_by(16) {
            let src: [*const f32; 16] = std::array::from_fn(|k| input.q[row_at(r0 + k)..].as_ptr());
            for dd0 in (0..d).step_by(16) {
                queries_in16(src, dd0, input.scale, qt[dd0 * rp + r0..].as_mut_ptr(), rp);
            }
        }
        for r in blocks..rows {
            let q = &input.q[row_at(r)..][..d];
            for (dd, &v) in q.iter().enumerate() {
                qt[dd * rp + r] = v * input.scale;
            }
        }
        // The first and last key each row sees (window, causal); padding rows see every key.
        let (mut first, mut last) = ([0i32; MAX_ROWS], [n_keys as i32 - 1; MAX_ROWS]);
        for r in 0..rows {
            let pos = c.start_pos + q0 + r / group;
            first[r] = (h.first_key(pos) - from) as i32;
            last[r] = (pos - from) as i32;
        }
        s.resize(n_keys * rp, 0.0);
        ot.clear();
        ot.resize(d * rp, 0.0);
        let mut sums = [0f32; MAX_ROWS];
        let mut gr = Group {
            keys,
            values,
            qt,
            s,
            ot,
            last: &last,
            first: &first,
            d,
            rp,
            n_keys,
            first_masked: c.start_pos + q0 + 1 - from,
            windowed_until: first[rows - 1] as usize,
            softcap: h.softcap,
        };
        let mut v0 = 0;
        while v0 < vectors {
            let n = (vectors - v0).min(L::GROUP);
            let sum = &mut sums[v0 * L::W..];
            match n {
                1 => group_rows::<L, 1>(&mut gr, v0, sum),
                2 => group_rows::<L, 2>(&mut gr, v0, sum),
                3 => group_rows::<L, 3>(&mut gr, v0, sum),
                _ => group_rows::<L, 4>(&mut gr, v0, sum),
            }
            v0 += n;
        }
        // Normalised rows into the output, transposed back. Safety: task (chunk, g, q-block)
        // alone writes these rows' heads of group g.
        for r0 in (0..blocks).step_by(16) {
            let dst: [*mut f32; 16] = std::array::from_fn(|k| out.at(row_at(r0 + k)));
            let scale: [f32; 16] = std::array::from_fn(|k| 1.0 / sums[r0 + k]);
            for dd0 in (0..d).step_by(16) {
                outputs_out16(gr.ot[dd0 * rp + r0..].as_ptr(), rp, scale, dst, dd0);
            }
        }
        #[allow(clippy::needless_range_loop)] // `r` also addresses the row's output
        for r in blocks..rows {
            let scale = 1.0 / sums[r];
            let dst = out.at(row_at(r));
            for dd in 0..d {
                *dst.add(dd) = gr.ot[dd * rp + r] * scale;
            }
        }
    });
}

/// `v[c]` = lane c of every `v[k]` in lane k (a 16 × 16 transpose): interleaved by 32, 64 and
/// 128 bits in turn, 64 shuffles.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(v: [__m512; 16]) -> [__m512; 16] {
    let (lo, hi) = (_mm512_unpacklo_ps, _mm512_unpackhi_ps);
    // t[2i], t[2i + 1]: rows 2i and 2i + 1 interleaved value by value.
    let t: [__m512; 16] = std::array::from_fn(|x| {
        let (a, b) = (v[x & !1], v[x | 1]);
        if x % 2 == 0 {
            lo(a, b)
        } else {
            hi(a, b)
        }
    });
    // u[4i + c]: rows 4i..4i + 4 of columns c, c + 4, c + 8, c + 12 (one per 128-bit lane).
    let u: [__m512; 16] = std::array::from_fn(|x| {
        let (i, c) = (x / 4, x % 4);
        let (a, b) = (
            _mm512_castps_pd(t[4 * i + c / 2]),
            _mm512_castps_pd(t[4 * i + 2 + c / 2]),
        );
        _mm512_castpd_ps(if c % 2 == 0 {
            _mm512_unpacklo_pd(a, b)
        } else {
            _mm512_unpackhi_pd(a, b)
        })
    });
    // Column c + 4L from lane L of u[c], u[4 + c], u[8 + c], u[12 + c].
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let even01 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let odd01 = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
        let even23 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let odd23 = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(even01, even23);
        out[c + 8] = _mm512_shuffle_f32x4::<0xdd>(even01, even23);
        out[c + 4] = _mm512_shuffle_f32x4::<0x88>(odd01, odd23);
        out[c + 12] = _mm512_shuffle_f32x4::<0xdd>(odd01, odd23);
    }
    out
}

/// Dimensions `dd0..dd0 + 16` of 16 query rows (`src[k]`, row k's query), times `scale`, into
/// `qt[c · rp + k]` for dimension `dd0 + c`.
///
/// # Safety
/// The CPU has AVX-512F; `src[k] + dd0 ..+ 16` readable and `qt + c · rp ..+ 16` writable for
/// every `k, c < 16`.
#[target_feature(enable = "avx512f")]
unsafe fn queries_in16(src: [*const f32; 16], dd0: usize, scale: f32, qt: *mut f32, rp: usize) {
    let s = _mm512_set1_ps(scale);
    let rows = std::array::from_fn(|k| _mm512_mul_ps(_mm512_loadu_ps(src[k].add(dd0)), s));
    for (c, v) in transpose16(rows).into_iter().enumerate() {
        _mm512_storeu_ps(qt.add(c * rp), v);
    }
}

/// `ot[c · rp + k]` (dimension `dd0 + c` of row k) times `scale[k]` into `dst[k][dd0 + c]`.
///
/// # Safety
/// The CPU has AVX-512F; `ot + c · rp ..+ 16` readable and `dst[k] + dd0 ..+ 16` writable for
/// every `k, c < 16`.
#[target_feature(enable = "avx512f")]
unsafe fn outputs_out16(
    ot: *const f32,
    rp: usize,
    scale: [f32; 16],
    dst: [*mut f32; 16],
    dd0: usize,
) {
    let dims = std::array::from_fn(|c| _mm512_loadu_ps(ot.add(c * rp)));
    for (k, v) in transpose16(dims).into_iter().enumerate() {
        _mm512_storeu_ps(dst[k].add(dd0), _mm512_mul_ps(v, _mm512_set1_ps(scale[k])));
    }
}

/// Scores, softmax and outputs of the rows in vectors `v0 .. v0 + RZ` (lanes
/// `v0·W .. (v0 + RZ)·W`); their softmax denominators go to `sum[.. RZ·W]`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // register arrays indexed by key and vector
unsafe fn group_rows<L: Lanes, const RZ: usize>(gr: &mut Group, v0: usize, sum: &mut [f32]) {
    let (d, rp, n_keys) = (gr.d, gr.rp, gr.n_keys);
    let lane0 = v0 * L::W;
    let (kp, qp, sp) = (gr.keys.as_ptr(), gr.qt.as_ptr(), gr.s.as_mut_ptr());
    let (lastp, firstp) = (gr.last.as_ptr().add(lane0), gr.first.as_ptr().add(lane0));
    let (first_masked, windowed_until, softcap) = (gr.first_masked, gr.windowed_until, gr.softcap);
    let store = |k: usize, z: usize, v: L| {
        let v = match softcap {
            Some(cap) => v.softcap(cap),
            None => v,
        };
        let v = if k >= first_masked {
            v.hide_after(k, lastp.add(z * L::W))
        } else {
            v
        };
        let v = if k < windowed_until {
            v.hide_before(k, firstp.add(z * L::W))
        } else {
            v
        };
        v.store(sp.add(k * rp + lane0 + z * L::W));
    };
    // Scores, four keys at a time.
    let mut k = 0;
    while k + 4 <= n_keys {
        let mut acc = [[L::zero(); RZ]; 4];
        for dd in 0..d {
            let q: [L; RZ] = std::array::from_fn(|z| L::load(qp.add(dd * rp + lane0 + z * L::W)));
            for u in 0..4 {
                let kv = L::splat(*kp.add((k + u) * d + dd));
                for z in 0..RZ {
                    acc[u][z] = kv.mul_add(q[z], acc[u][z]);
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
        let mut acc = [L::zero(); RZ];
        for dd in 0..d {
            let kv = L::splat(*kp.add(k * d + dd));
            for z in 0..RZ {
                acc[z] = kv.mul_add(L::load(qp.add(dd * rp + lane0 + z * L::W)), acc[z]);
            }
        }
        for z in 0..RZ {
            store(k, z, acc[z]);
        }
    }
    // Softmax down the keys, every row at once; hidden keys weigh exactly zero.
    let mut max = [L::splat(f32::NEG_INFINITY); RZ];
    for k in 0..n_keys {
        for z in 0..RZ {
            max[z] = max[z].max(L::load(sp.add(k * rp + lane0 + z * L::W)));
        }
    }
    let mut total = [L::zero(); RZ];
    for k in 0..n_keys {
        for z in 0..RZ {
            let at = sp.add(k * rp + lane0 + z * L::W);
            let e = L::load(at).exp_from(max[z]);
            e.store(at);
            total[z] = total[z].add(e);
        }
    }
    for z in 0..RZ {
        total[z].store(sum.as_mut_ptr().add(z * L::W));
    }
    // Outputs, four dimensions at a time over tiles of keys.
    let (vp, op) = (gr.values.as_ptr(), gr.ot.as_mut_ptr());
    for k0 in (0..n_keys).step_by(KEY_TILE) {
        let k1 = (k0 + KEY_TILE).min(n_keys);
        for d0 in (0..d).step_by(4) {
            let mut acc: [[L; RZ]; 4] = std::array::from_fn(|u| {
                std::array::from_fn(|z| L::load(op.add((d0 + u) * rp + lane0 + z * L::W)))
            });
            for k in k0..k1 {
                let w: [L; RZ] =
                    std::array::from_fn(|z| L::load(sp.add(k * rp + lane0 + z * L::W)));
                for u in 0..4 {
                    let v = L::splat(*vp.add(k * d + d0 + u));
                    for z in 0..RZ {
                        acc[u][z] = v.mul_add(w[z], acc[u][z]);
                    }
                }
            }
            for u in 0..4 {
                for z in 0..RZ {
                    acc[u][z].store(op.add((d0 + u) * rp + lane0 + z * L::W));
                }
            }
        }
    }
}
