//! Attention on the CPU straight over a paged KV cache in host memory: rotary embedding, the
//! K/V write into each sequence's slots, and causal attention for a whole varlen batch, in one
//! call per layer. No per-sequence tensor ops, no gather of the cache: keys and values are read in
//! place through the block tables.
//!
//! Cache layout (per layer, keys and values alike): block-major, then KV head, then slot in
//! the block — `[block][kv_head][slot % block_size][head_dim]` (vLLM's layout). One attention
//! task (one sequence, one KV head) thus reads `block_size · head_dim` contiguous values per
//! block, which the hardware prefetcher streams; a slot-major row layout made it read 1/kv_heads
//! of every row and waited on memory. Sequence position `p` lives in slot
//! `table[p / block_size] · block_size + p % block_size`.
//!
//! The tensor path in [`crate::model`] (used with [`crate::kv::ContiguousKv`], on CUDA and for
//! non-f32 CPU runs) is the independent reference this kernel is tested against.

use crate::config::RopeStyle;
use crate::model::SeqChunk;
use crate::qgemm::OutPtr;
use crate::vecmath::{self, KvElem, Scalar, VecOps};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Element type of a [`HostKvCache`]. F16 halves the bytes batched decode streams (and
/// doubles the positions a given `--kv-cache-mb` holds) at ~3 significant digits per key and
/// value, as llama.cpp's default cache; F32 is exact (the reference). Q8_0 halves them again:
/// 8-bit values with one f32 scale per 32 (GGML's Q8_0 idea, llama.cpp's `-ctk/-ctv q8_0`),
/// for long contexts, where decode attention is bound by reading the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    F16,
    Q8_0,
}

impl KvDtype {
    /// Bytes one cached value takes, its share of a scale included.
    pub fn bytes_per_value(self) -> f64 {
        match self {
            KvDtype::F32 => 4.0,
            KvDtype::F16 => 2.0,
            KvDtype::Q8_0 => 1.0 + 4.0 / 32.0,
        }
    }
}

/// Values per Q8_0 scale: 32, or a whole head where the head size is not a multiple of 32
/// (a group must never straddle two heads: they are written at different times).
pub fn q8_group(head_dim: usize) -> usize {
    if head_dim.is_multiple_of(32) {
        32
    } else {
        head_dim
    }
}

/// One layer's keys (or values) as 8-bit integers, `x ≈ q · scale`, one scale per group of
/// [`q8_group`] values.
struct Q8Plane {
    qs: Vec<i8>,
    scales: Vec<f32>,
}

impl Q8Plane {
    fn new(n: usize, group: usize) -> Self {
        Self {
            qs: vec![0; n],
            scales: vec![0.0; n / group],
        }
    }

    /// Quantizes `x` (whole groups) into values `at..at + x.len()`.
    fn write(&mut self, at: usize, x: &[f32], group: usize) {
        for (i, xg) in x.chunks_exact(group).enumerate() {
            let (d, inv) = q8_scale(xg);
            self.scales[at / group + i] = d;
            for (q, &v) in self.qs[at + i * group..][..group].iter_mut().zip(xg) {
                *q = (v * inv).round() as i8;
            }
        }
    }

    fn read(&self, at: usize, out: &mut [f32], group: usize) {
        for (i, og) in out.chunks_exact_mut(group).enumerate() {
            let d = self.scales[at / group + i];
            for (o, &q) in og.iter_mut().zip(&self.qs[at + i * group..]) {
                *o = q as f32 * d;
            }
        }
    }
}

/// A group's scale `max|x| / 127` and the factor that maps it onto −127..=127.
pub fn q8_scale(x: &[f32]) -> (f32, f32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    (d, if d > 0.0 { 1.0 / d } else { 0.0 })
}

/// One layer's keys and values in one element type.
enum Planes {
    F32(Vec<Vec<f32>>, Vec<Vec<f32>>),
    F16(Vec<Vec<f16>>, Vec<Vec<f16>>),
    Q8(Vec<Q8Plane>, Vec<Q8Plane>),
}

/// Keys and values of every layer in host memory.
pub struct HostKvCache {
    pub kv_heads: usize,
    pub head_dim: usize,
    pub slots: usize,
    pub block_size: usize,
    planes: Planes,
}

/// An element type a [`HostKvCache`] can hold (`i8`: the Q8_0 planes): reads a span of a
/// layer's keys and values, widened to f32.
trait CacheElem {
    /// Keys and values `at..at + keys.len()` of `layer` into `keys` and `values`.
    fn widen<V: VecOps>(
        cache: &HostKvCache,
        layer: usize,
        at: usize,
        keys: &mut [f32],
        values: &mut [f32],
    );
}

impl CacheElem for f32 {
    #[inline(always)]
    fn widen<V: VecOps>(
        cache: &HostKvCache,
        layer: usize,
        at: usize,
        keys: &mut [f32],
        values: &mut [f32],
    ) {
        let Planes::F32(k, v) = &cache.planes else {
            unreachable!("dispatched on the cache's dtype")
        };
        widen_float::<V, f32>(&k[layer], &v[layer], at, keys, values)
    }
}

impl CacheElem for f16 {
    #[inline(always)]
    fn widen<V: VecOps>(
        cache: &HostKvCache,
        layer: usize,
        at: usize,
        keys: &mut [f32],
        values: &mut [f32],
    ) {
        let Planes::F16(k, v) = &cache.planes else {
            unreachable!("dispatched on the cache's dtype")
        };
        widen_float::<V, f16>(&k[layer], &v[layer], at, keys, values)
    }
}

#[inline(always)]
fn widen_float<V: VecOps, E: KvElem>(
    k: &[E],
    v: &[E],
    at: usize,
    keys: &mut [f32],
    values: &mut [f32],
) {
    let len = keys.len();
    E::widen_into::<V>(&k[at..at + len], keys);
    E::widen_into::<V>(&v[at..at + len], values);
}

/// The Q8_0 cache (marker type: its planes are `i8` values plus scales).
struct Q8;

impl CacheElem for Q8 {
    #[inline(always)]
    fn widen<V: VecOps>(
        cache: &HostKvCache,
        layer: usize,
        at: usize,
        keys: &mut [f32],
        values: &mut [f32],
    ) {
        let Planes::Q8(k, v) = &cache.planes else {
            unreachable!("dispatched on the cache's dtype")
        };
        let (group, len) = (q8_group(cache.head_dim), keys.len());
        for (plane, out) in [(&k[layer], keys), (&v[layer], values)] {
            let scales = &plane.scales[at / group..(at + len) / group];
            V::widen_q8(&plane.qs[at..at + len], scales, group, out);
        }
    }
}

impl HostKvCache {
    /// `blocks · block_size` slots.
    pub fn new(
        layers: usize,
        blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: KvDtype,
    ) -> Self {
        let slots = blocks * block_size;
        let n = slots * kv_heads * head_dim;
        let planes = match dtype {
            KvDtype::F32 => Planes::F32(
                (0..layers).map(|_| vec![0f32; n]).collect(),
                (0..layers).map(|_| vec![0f32; n]).collect(),
            ),
            KvDtype::F16 => Planes::F16(
                (0..layers).map(|_| vec![f16::ZERO; n]).collect(),
                (0..layers).map(|_| vec![f16::ZERO; n]).collect(),
            ),
            KvDtype::Q8_0 => {
                let g = q8_group(head_dim);
                Planes::Q8(
                    (0..layers).map(|_| Q8Plane::new(n, g)).collect(),
                    (0..layers).map(|_| Q8Plane::new(n, g)).collect(),
                )
            }
        };
        Self {
            kv_heads,
            head_dim,
            slots,
            block_size,
            planes,
        }
    }

    /// Where head `head` of slot `slot` starts in a layer's plane.
    #[inline]
    pub fn head_offset(&self, slot: usize, head: usize) -> usize {
        let (block, at) = (slot / self.block_size, slot % self.block_size);
        ((block * self.kv_heads + head) * self.block_size + at) * self.head_dim
    }

    pub fn dtype(&self) -> KvDtype {
        match self.planes {
            Planes::F32(..) => KvDtype::F32,
            Planes::F16(..) => KvDtype::F16,
            Planes::Q8(..) => KvDtype::Q8_0,
        }
    }

    /// Stores the keys and values of `slot` at `layer` (each `kv_heads · head_dim` values,
    /// head after head).
    pub fn write_slot(&mut self, layer: usize, slot: usize, k: &[f32], v: &[f32]) {
        let hd = self.head_dim;
        for h in 0..self.kv_heads {
            let at = self.head_offset(slot, h);
            let (src_k, src_v) = (&k[h * hd..(h + 1) * hd], &v[h * hd..(h + 1) * hd]);
            match &mut self.planes {
                Planes::F32(ks, vs) => {
                    ks[layer][at..at + hd].copy_from_slice(src_k);
                    vs[layer][at..at + hd].copy_from_slice(src_v);
                }
                Planes::F16(ks, vs) => {
                    ks[layer][at..at + hd].convert_from_f32_slice(src_k);
                    vs[layer][at..at + hd].convert_from_f32_slice(src_v);
                }
                Planes::Q8(ks, vs) => {
                    let g = q8_group(hd);
                    ks[layer].write(at, src_k, g);
                    vs[layer].write(at, src_v, g);
                }
            }
        }
    }

    /// Reads the keys and values of `slot` at `layer` back as f32.
    pub fn read_slot(&self, layer: usize, slot: usize, k: &mut [f32], v: &mut [f32]) {
        let hd = self.head_dim;
        for h in 0..self.kv_heads {
            let at = self.head_offset(slot, h);
            let (dst_k, dst_v) = (&mut k[h * hd..(h + 1) * hd], &mut v[h * hd..(h + 1) * hd]);
            match &self.planes {
                Planes::F32(ks, vs) => {
                    dst_k.copy_from_slice(&ks[layer][at..at + hd]);
                    dst_v.copy_from_slice(&vs[layer][at..at + hd]);
                }
                Planes::F16(ks, vs) => {
                    ks[layer][at..at + hd].convert_to_f32_slice(dst_k);
                    vs[layer][at..at + hd].convert_to_f32_slice(dst_v);
                }
                Planes::Q8(ks, vs) => {
                    let g = q8_group(hd);
                    ks[layer].read(at, dst_k, g);
                    vs[layer].read(at, dst_v, g);
                }
            }
        }
    }
}

/// What the forward pass needs of a paged store: its cache and, per chunk of the batch (in
/// chunk order), the sequence's block table.
pub struct HostPaged<'a> {
    pub cache: &'a mut HostKvCache,
    pub block_size: usize,
    pub tables: Vec<Vec<u32>>,
}

impl HostPaged<'_> {
    /// Every chunk's block table must cover the positions it writes.
    pub fn check(&self, chunks: &[SeqChunk]) -> Result<(), String> {
        if self.block_size != self.cache.block_size {
            return Err(format!(
                "block tables of {} positions per block over a cache laid out in blocks of {}",
                self.block_size, self.cache.block_size
            ));
        }
        if self.tables.len() != chunks.len() {
            return Err(format!(
                "{} block tables for {} chunks",
                self.tables.len(),
                chunks.len()
            ));
        }
        for (c, t) in chunks.iter().zip(&self.tables) {
            let end = c.start_pos + c.len;
            if t.len() * self.block_size < end {
                return Err(format!(
                    "sequence {}: blocks cover {} positions, batch needs {end}",
                    c.seq,
                    t.len() * self.block_size
                ));
            }
            if let Some(b) = t
                .iter()
                .find(|&&b| (b as usize + 1) * self.block_size > self.cache.slots)
            {
                return Err(format!(
                    "sequence {}: block {b} is outside the cache",
                    c.seq
                ));
            }
        }
        Ok(())
    }

    fn slot(&self, chunk: usize, pos: usize) -> usize {
        self.tables[chunk][pos / self.block_size] as usize * self.block_size + pos % self.block_size
    }
}

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
    pub dim: usize,
    pub rope: RopeStyle,
}

/// Projected rows: token `t`'s query heads are at `data[t·stride + q_off ..]`, its key heads at
/// `k_off`, its value heads at `v_off` (one fused QKV matmul, or three separate buffers).
pub struct QkvRows<'a> {
    pub q: (&'a [f32], usize, usize),
    pub k: (&'a [f32], usize, usize),
    pub v: (&'a [f32], usize, usize),
}

fn row<'a>(m: &(&'a [f32], usize, usize), t: usize, width: usize) -> &'a [f32] {
    let (data, stride, off) = *m;
    &data[t * stride + off..t * stride + off + width]
}

/// Rotates one head in place: pairs (j, j + d/2) for `Half`, (2j, 2j + 1) for `Interleaved`.
fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = x.len() / 2;
    for j in 0..half {
        let (a, b) = match style {
            RopeStyle::Half => (j, j + half),
            RopeStyle::Interleaved => (2 * j, 2 * j + 1),
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * cos[j] - x1 * sin[j];
        x[b] = x0 * sin[j] + x1 * cos[j];
    }
}

/// Query rows (queries × the query heads of one KV head) per attention task: its keys and
/// values are widened once for all of them, and the AVX-512 prompt path holds them in four
/// vectors of 16 lanes.
const TASK_ROWS: usize = 64;

/// Queries per attention task: as many as fill [`TASK_ROWS`] with this many query heads per
/// KV head (21 for SmolLM2's 3, 64 for Llama 2's 1, 8 for Llama 3 70B's 8).
fn query_block(group: usize) -> usize {
    (TASK_ROWS / group.max(1)).max(1)
}

/// One layer's attention for a varlen batch. `cos`/`sin` are `(tokens, dim / 2)` tables;
/// `out` receives `(tokens, q_heads · dim)`. Keys and values of the batch's tokens are written
/// into the cache first, so every chunk sees its own new tokens (causally).
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    layer: usize,
    chunks: &[SeqChunk],
    qkv: &QkvRows,
    cos: &[f32],
    sin: &[f32],
    h: Heads,
    kv: &mut HostPaged,
    out: &mut [f32],
) {
    let n_tok: usize = chunks.iter().map(|c| c.len).sum();
    let half = h.dim / 2;
    let (qw, kw) = (h.q * h.dim, h.kv * h.dim);
    assert_eq!(out.len(), n_tok * qw);
    assert_eq!(cos.len(), n_tok * half);
    assert_eq!((kv.cache.kv_heads, kv.cache.head_dim), (h.kv, h.dim));

    // Rotated queries, and rotated keys + values written to their slots.
    let mut q = vec![0f32; n_tok * qw];
    let mut k_rot = vec![0f32; kw];
    let mut t = 0;
    for (ci, c) in chunks.iter().enumerate() {
        for i in 0..c.len {
            let (cs, sn) = (
                &cos[t * half..(t + 1) * half],
                &sin[t * half..(t + 1) * half],
            );
            let qt = &mut q[t * qw..(t + 1) * qw];
            qt.copy_from_slice(row(&qkv.q, t, qw));
            for head in qt.chunks_exact_mut(h.dim) {
                rope(head, cs, sn, h.rope);
            }
            k_rot.copy_from_slice(row(&qkv.k, t, kw));
            for head in k_rot.chunks_exact_mut(h.dim) {
                rope(head, cs, sn, h.rope);
            }
            let slot = kv.slot(ci, c.start_pos + i);
            kv.cache.write_slot(layer, slot, &k_rot, row(&qkv.v, t, kw));
            t += 1;
        }
    }

    // Tasks: (chunk, kv head, block of queries); each writes its own output rows and heads.
    let qblock = query_block(h.q / h.kv);
    let mut tasks = vec![];
    let mut first_tok = 0;
    for (ci, c) in chunks.iter().enumerate() {
        for g in 0..h.kv {
            for qb in (0..c.len).step_by(qblock) {
                tasks.push(Task {
                    chunk: ci,
                    first_tok,
                    g,
                    q0: qb,
                    q1: (qb + qblock).min(c.len),
                });
            }
        }
        first_tok += c.len;
    }
    let input = TaskInput {
        layer,
        chunks,
        q: &q,
        h,
        kv: &*kv,
        scale: 1.0 / (h.dim as f32).sqrt(),
    };
    let out_ptr = OutPtr(out.as_mut_ptr());
    let run = |t: &Task| run_task(&input, t, out_ptr);
    if tasks.len() == 1 {
        run(&tasks[0]);
    } else {
        tasks.par_iter().for_each(run);
    }
}

/// What every attention task of one call reads.
struct TaskInput<'a> {
    layer: usize,
    chunks: &'a [SeqChunk],
    /// Rotated queries, `(tokens, q_heads · dim)`.
    q: &'a [f32],
    h: Heads,
    kv: &'a HostPaged<'a>,
    scale: f32,
}

/// Queries `q0..q1` of chunk `chunk` (whose first token is batch row `first_tok`) against KV
/// head `g`.
#[derive(Clone, Copy)]
struct Task {
    chunk: usize,
    first_tok: usize,
    g: usize,
    q0: usize,
    q1: usize,
}

fn run_task(input: &TaskInput, task: &Task, out: OutPtr) {
    #[cfg(target_arch = "x86_64")]
    if task.q1 - task.q0 == 1 && decode512::run(input, task, out) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if prefill::run(input, task, out) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if vecmath::avx2_available() {
        // Safety: the CPU has AVX2, FMA and F16C.
        unsafe { run_task_avx2(input, task, out) };
        return;
    }
    match input.kv.cache.dtype() {
        KvDtype::F32 => attend::<Scalar, f32>(input, task, out),
        KvDtype::F16 => attend::<Scalar, f16>(input, task, out),
        KvDtype::Q8_0 => attend::<Scalar, Q8>(input, task, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_task_avx2(input: &TaskInput, task: &Task, out: OutPtr) {
    match input.kv.cache.dtype() {
        KvDtype::F32 => attend::<vecmath::Avx2, f32>(input, task, out),
        KvDtype::F16 => attend::<vecmath::Avx2, f16>(input, task, out),
        KvDtype::Q8_0 => attend::<vecmath::Avx2, Q8>(input, task, out),
    }
}

/// A task's keys and values (its KV head, positions `0..n_keys`) widened to f32 into
/// contiguous rows of `keys` and `values`.
#[inline(always)]
fn widen_task_kv<V: VecOps, E: CacheElem>(
    input: &TaskInput,
    task: &Task,
    n_keys: usize,
    keys: &mut Vec<f32>,
    values: &mut Vec<f32>,
) {
    let (kv, d) = (input.kv, input.h.dim);
    for buf in [&mut *keys, &mut *values] {
        buf.resize(n_keys * d, 0.0);
    }
    let bs = kv.block_size;
    let table = &kv.tables[task.chunk];
    for (bi, &block) in table.iter().enumerate().take(n_keys.div_ceil(bs)) {
        let at = kv.cache.head_offset(block as usize * bs, task.g);
        let len = bs.min(n_keys - bi * bs) * d;
        let dst = bi * bs * d..bi * bs * d + len;
        E::widen::<V>(
            kv.cache,
            input.layer,
            at,
            &mut keys[dst.clone()],
            &mut values[dst],
        );
    }
}

/// One task: scores against every visible key (each key read once for all the task's query
/// rows), softmax, weighted sum of values; writes the task's own rows and heads of `out`.
#[inline(always)]
fn attend<V: VecOps, E: CacheElem>(input: &TaskInput, task: &Task, out: OutPtr) {
    let h = input.h;
    let Task {
        chunk: ci,
        first_tok,
        g,
        q0,
        q1,
    } = *task;
    let c = &input.chunks[ci];
    let (qw, group) = (h.q * h.dim, h.q / h.kv);
    let n_keys = c.start_pos + q1; // the last query sees positions 0..start_pos + q1
    let d = h.dim;
    SCRATCH.with_borrow_mut(|scratch| {
        // This task's keys and values (head g, positions 0..n_keys), widened to f32 once into
        // contiguous rows: every query row then streams them with register-blocked kernels.
        let [keys, values, scores] = scratch;
        widen_task_kv::<V, E>(input, task, n_keys, keys, values);
        scores.resize(n_keys, 0.0);
        for i in q0..q1 {
            let t = first_tok + i;
            // Causal: query i sees positions 0..=start_pos + i.
            let visible = c.start_pos + i + 1;
            for j in 0..group {
                let head = g * group + j;
                let qv = &input.q[t * qw + head * d..t * qw + (head + 1) * d];
                let row = &mut scores[..visible];
                V::dots(qv, keys, input.scale, row);
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let inv = 1.0 / V::exp_shifted_sum(row, max);
                // Safety: task (chunk, g, q-block) alone writes these rows' heads of group g.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.at(t * qw + head * d), d) };
                V::weighted_sum(row, values, dst);
                V::scale(dst, inv);
            }
        }
    });
}

/// One query (a decode) against one KV head of an f16 or Q8_0 cache with AVX-512, straight
/// from the cache: no widened copy. [`attend`] widens a task's keys and values into f32 scratch and
/// passes over it once per query head; for a decode that is most of its time (the scratch
/// outgrows L1, and every head re-reads it from L2). Here each key, converted once, serves every
/// head of the group (16-lane products, one horizontal sum per key and head), and each value
/// row is converted once and added into the group's sums, held in registers.
#[cfg(target_arch = "x86_64")]
pub mod prefill;

#[cfg(target_arch = "x86_64")]
mod decode512 {
    use super::{f16, q8_group, OutPtr, Planes, Q8Plane, Task, TaskInput, SCRATCH};
    use crate::vecmath::{self, Avx2, VecOps};
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
        if !matches!(h.dim, 64 | 128) || !vecmath::avx512_available() {
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
}

thread_local! {
    /// Per-thread buffers of the attention tasks (widened keys, values, one score row): reused,
    /// so long prompts do not allocate (and page-fault) fresh megabytes per task.
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> = const {
        std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()])
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LogitsWanted;
    use rand::{Rng, SeedableRng};

    /// Plain attention over one sequence's full K/V history (already rotated), as the textbook
    /// writes it.
    fn naive(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], pos: usize, h: Heads) -> Vec<f32> {
        let group = h.q / h.kv;
        let mut out = vec![0f32; h.q * h.dim];
        for head in 0..h.q {
            let g = head / group;
            let qv = &q[head * h.dim..(head + 1) * h.dim];
            let s: Vec<f64> = (0..=pos)
                .map(|p| {
                    let k = &keys[p][g * h.dim..(g + 1) * h.dim];
                    qv.iter().zip(k).map(|(a, b)| (a * b) as f64).sum::<f64>()
                        / (h.dim as f64).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..h.dim {
                out[head * h.dim + d] = (0..=pos)
                    .map(|p| e[p] / z * values[p][g * h.dim + d] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn ragged_batch_over_scattered_blocks_matches_naive_attention() {
        for style in [RopeStyle::Half, RopeStyle::Interleaved] {
            // Small heads (12: not a multiple of the SIMD width), SmolLM2's shape (9 query
            // heads over 3 KV heads of 64), and every head-grouping of the AVX-512 decode path
            // (heads of 64 taken 4, 2 or 1 at a time; heads of 128, 2 or 1).
            let shapes = [
                (6, 2, 8),
                (4, 2, 12),
                (9, 3, 64),
                (8, 2, 64),
                (6, 3, 64),
                (4, 4, 64),
                (4, 2, 128),
                (3, 3, 128),
            ];
            // Prompt tasks in the widest vectors this CPU has, then in AVX2's 8 lanes.
            #[cfg(target_arch = "x86_64")]
            let paths = [prefill::PrefillPath::Widest, prefill::PrefillPath::Avx2];
            #[cfg(not(target_arch = "x86_64"))]
            let paths = [()];
            for path in paths {
                #[cfg(target_arch = "x86_64")]
                prefill::set_path(path);
                let _ = path;
                for (q, kv, dim) in shapes {
                    let rope = style;
                    for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0] {
                        // Small blocks (many boundaries inside every sequence) and larger ones.
                        for bs in [4, 24] {
                            check_ragged_batch(Heads { q, kv, dim, rope }, dtype, bs);
                        }
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            prefill::set_path(prefill::PrefillPath::Widest);
        }
    }

    /// What storing a row of heads (each `dim` long) in the cache keeps of it.
    fn stored(x: &[f32], dtype: KvDtype, dim: usize) -> Vec<f32> {
        match dtype {
            KvDtype::F32 => x.to_vec(),
            KvDtype::F16 => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
            KvDtype::Q8_0 => x
                .chunks(q8_group(dim))
                .flat_map(|g| {
                    let (d, inv) = q8_scale(g);
                    g.iter().map(move |&v| (v * inv).round() * d)
                })
                .collect(),
        }
    }

    /// The kernel against [`naive`] attention over the same stored (for f16: rounded) keys
    /// and values.
    fn check_ragged_batch(h: Heads, dtype: KvDtype, bs: usize) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // Three sequences: one decoding at position 9 (9 tokens cached before), one prefilling
        // 37 tokens from position 70 (several query blocks, over more keys than one tile of
        // the prefill kernel), one decoding at position 150 (many blocks); blocks
        // deliberately out of order.
        let tables = vec![
            vec![5u32, 0, 7],
            [2u32, 6, 1, 3, 4, 8, 9, 10, 11, 12, 13]
                .into_iter()
                .chain(52..68)
                .collect(),
            (14u32..52).rev().collect(),
        ];
        let chunks = [
            SeqChunk {
                seq: 1,
                start_pos: 9,
                len: 1,
                logits: LogitsWanted::Last,
            },
            SeqChunk {
                seq: 2,
                start_pos: 70,
                len: 37,
                logits: LogitsWanted::All,
            },
            SeqChunk {
                seq: 3,
                start_pos: 150,
                len: 1,
                logits: LogitsWanted::Last,
            },
        ];
        let kw = h.kv * h.dim;
        let mut cache = HostKvCache::new(1, 68, bs, h.kv, h.dim, dtype);
        // History (positions before start_pos), stored directly, already "rotated".
        type History = (Vec<Vec<f32>>, Vec<Vec<f32>>);
        let mut hist: Vec<History> = vec![];
        for (ci, c) in chunks.iter().enumerate() {
            let (mut ks, mut vs) = (vec![], vec![]);
            for p in 0..c.start_pos {
                let k: Vec<f32> = (0..kw).map(|_| rng.random_range(-1.0..1.0)).collect();
                let v: Vec<f32> = (0..kw).map(|_| rng.random_range(-1.0..1.0)).collect();
                let slot = tables[ci][p / bs] as usize * bs + p % bs;
                cache.write_slot(0, slot, &k, &v);
                ks.push(stored(&k, dtype, h.dim));
                vs.push(stored(&v, dtype, h.dim));
            }
            hist.push((ks, vs));
        }
        let n_tok = 39;
        let width = (h.q + 2 * h.kv) * h.dim;
        let data: Vec<f32> = (0..n_tok * width)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let positions: Vec<usize> = std::iter::once(9).chain(70..107).chain([150]).collect();
        let half = h.dim / 2;
        let (mut cos, mut sin) = (vec![], vec![]);
        for &p in &positions {
            for j in 0..half {
                let a = p as f32 * 10000f32.powf(-(2.0 * j as f32) / h.dim as f32);
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let qkv = QkvRows {
            q: (&data, width, 0),
            k: (&data, width, h.q * h.dim),
            v: (&data, width, (h.q + h.kv) * h.dim),
        };
        let mut out = vec![0f32; n_tok * h.q * h.dim];
        let mut paged = HostPaged {
            cache: &mut cache,
            block_size: bs,
            tables: tables.clone(),
        };
        paged_attention(0, &chunks, &qkv, &cos, &sin, h, &mut paged, &mut out);

        // Reference: rotate this batch's q and k by hand, append k/v to each history.
        let mut t = 0;
        for (ci, c) in chunks.iter().enumerate() {
            for i in 0..c.len {
                let cs = &cos[t * half..(t + 1) * half];
                let sn = &sin[t * half..(t + 1) * half];
                let mut qv = row(&qkv.q, t, h.q * h.dim).to_vec();
                qv.chunks_exact_mut(h.dim)
                    .for_each(|x| rope(x, cs, sn, h.rope));
                let mut kv_ = row(&qkv.k, t, kw).to_vec();
                kv_.chunks_exact_mut(h.dim)
                    .for_each(|x| rope(x, cs, sn, h.rope));
                hist[ci].0.push(stored(&kv_, dtype, h.dim));
                hist[ci].1.push(stored(row(&qkv.v, t, kw), dtype, h.dim));
                // Causal: this query sees history and the chunk's tokens up to itself only.
                let want = naive(&qv, &hist[ci].0, &hist[ci].1, c.start_pos + i, h);
                let got = &out[t * h.q * h.dim..(t + 1) * h.q * h.dim];
                for (a, b) in got.iter().zip(&want) {
                    let ok = (a - b).abs() < 1e-5;
                    assert!(ok, "{dtype:?} chunk {ci} token {i}: {a} vs {b}");
                }
                t += 1;
            }
        }
        // The new keys landed in the right slots (rotated), e.g. sequence 2 position 96.
        let slot = tables[1][96 / bs] as usize * bs + 96 % bs;
        let (mut k, mut v) = (vec![0f32; kw], vec![0f32; kw]);
        cache.read_slot(0, slot, &mut k, &mut v);
        assert_eq!(k, hist[1].0[96]);
        assert_eq!(v, hist[1].1[96]);
    }
}
