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
//! camelid-model's tensor path (candle ops over a contiguous cache) is the independent
//! reference this kernel is tested against; the unit tests here compare with naive attention.

mod cache;

use crate::vecmath::{self, Scalar, VecOps};
use crate::OutPtr;
pub use cache::{
    check_block_tables, q8_group, q8_scale, HostKvCache, HostPaged, KvDtype, FREED_BLOCK,
};
use cache::{CacheElem, Planes, Q8Plane, Q8};
use half::f16;
use rayon::prelude::*;

/// How rotary embeddings pair the channels of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// HF layout: channel i pairs with i + d/2 (`rotate_half`).
    Half,
    /// GGUF/Meta layout: channel 2i pairs with 2i+1 (Q/K rows are permuted by the converter).
    Interleaved,
}

/// A run of consecutive tokens of one sequence in a batch: what attention needs of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSpan {
    /// The sequence (named in error messages).
    pub seq: u64,
    /// Position of the span's first token.
    pub start_pos: usize,
    pub len: usize,
    /// Positions from here on are generated tokens, earlier ones the prompt. Each generated
    /// position attends as a query of its own through the decode kernel, the way it did when
    /// it was decoded, even inside a longer chunk (a preempted sequence recomputing its
    /// tokens); prompt positions go through the prompt kernel, however few there are. The
    /// kernels round differently, and a position's output must depend on its role alone, not
    /// on how the load cut the batch: prompt log-probabilities and greedy tokens are the
    /// same bits alone, batched, chunked or preempted.
    pub generated_from: usize,
}

impl SeqSpan {
    /// A span whose lone token, if it has one, is a decode, and whose longer runs are prompt.
    pub fn new(seq: u64, start_pos: usize, len: usize) -> Self {
        Self {
            seq,
            start_pos,
            len,
            generated_from: if len == 1 { start_pos } else { usize::MAX },
        }
    }
}

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
    pub dim: usize,
    pub rope: RopeStyle,
    /// Sliding window: the query at position `p` attends keys `p + 1 - w ..= p` only, and
    /// never reads the blocks of a table before its task's first such key (the engine may
    /// have freed them); `None`: every earlier key.
    pub window: Option<usize>,
    /// Multiplies `q · k` (`None`: `1 / sqrt(dim)`; Gemma's `query_pre_attn_scalar^-1/2`).
    pub scale: Option<f32>,
    /// Soft-capping of the scaled scores, `cap · tanh(s / cap)`, before the softmax (Gemma 2).
    pub softcap: Option<f32>,
}

impl Heads {
    /// The first key the query at position `pos` attends.
    #[inline]
    pub fn first_key(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }
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
    chunks: &[SeqSpan],
    qkv: &QkvRows,
    cos: &[f32],
    sin: &[f32],
    h: Heads,
    kv: &mut HostPaged,
    out: &mut [f32],
) {
    let n_tok: usize = chunks.iter().map(|c| c.len).sum();
    let half = h.dim / 2;
    // The kernels below read and write through raw pointers sized by these: a product that
    // wrapped, a group that does not divide, or a table naming a freed or absent block
    // would take them outside their buffers.
    let width = |heads: usize| heads.checked_mul(h.dim).expect("attention width overflows");
    let (qw, kw) = (width(h.q), width(h.kv));
    assert!(
        h.kv > 0 && h.dim > 0 && h.q.is_multiple_of(h.kv),
        "attention heads: {} query heads over {} KV heads of {}",
        h.q,
        h.kv,
        h.dim
    );
    if let Err(e) = kv.check(chunks, |p| h.first_key(p)) {
        panic!("paged_attention: {e}");
    }
    assert_eq!(out.len(), n_tok * qw);
    assert_eq!(cos.len(), n_tok * half);
    assert_eq!((kv.cache.kv_heads, kv.cache.head_dim), (h.kv, h.dim));

    // Token t's heads in `x`, rotated in place.
    let rotate = |x: &mut [f32], t: usize| {
        let (cs, sn) = (
            &cos[t * half..(t + 1) * half],
            &sin[t * half..(t + 1) * half],
        );
        for head in x.chunks_exact_mut(h.dim) {
            rope(head, cs, sn, h.rope);
        }
    };
    // Rotated keys + values written to their slots, token by token (one cache).
    let mut k_rot = vec![0f32; kw];
    let mut t = 0;
    for (ci, c) in chunks.iter().enumerate() {
        for i in 0..c.len {
            k_rot.copy_from_slice(row(&qkv.k, t, kw));
            rotate(&mut k_rot, t);
            let slot = kv.slot(ci, c.start_pos + i);
            kv.cache.write_slot(layer, slot, &k_rot, row(&qkv.v, t, kw));
            t += 1;
        }
    }
    // Rotated queries, a prompt's rows on rayon's threads, into a buffer kept between calls
    // (a fresh one was zeroed, and its pages faulted in and unmapped, every layer).
    let mut q = ROTATED_Q.take();
    if q.len() < n_tok * qw {
        q.resize(n_tok * qw, 0.0);
    }
    let rotate_query = |(t, qt): (usize, &mut [f32])| {
        qt.copy_from_slice(row(&qkv.q, t, qw));
        rotate(qt, t);
    };
    if n_tok >= PARALLEL_ROPE_TOKENS {
        q[..n_tok * qw]
            .par_chunks_exact_mut(qw)
            .enumerate()
            .for_each(rotate_query);
    } else {
        q[..n_tok * qw]
            .chunks_exact_mut(qw)
            .enumerate()
            .for_each(rotate_query);
    }

    // Tasks: (chunk, kv head, block of prompt queries or one generated query); each writes
    // its own output rows and heads.
    let qblock = query_block(h.q / h.kv);
    let mut tasks = vec![];
    let mut first_tok = 0;
    for (ci, c) in chunks.iter().enumerate() {
        let prompt = c.generated_from.saturating_sub(c.start_pos).min(c.len);
        for g in 0..h.kv {
            let task = |q0, q1, decode| Task {
                chunk: ci,
                first_tok,
                g,
                q0,
                q1,
                decode,
            };
            for qb in (0..prompt).step_by(qblock) {
                tasks.push(task(qb, (qb + qblock).min(prompt), false));
            }
            tasks.extend((prompt..c.len).map(|q| task(q, q + 1, true)));
        }
        first_tok += c.len;
    }
    let kv = &*kv;
    let mut shared_buf = SHARED_KV.take();
    let spans = shared_spans(chunks, h, kv, qblock);
    let shared = widen_shared(layer, kv, h, &spans, &mut shared_buf);
    let input = TaskInput {
        layer,
        chunks,
        q: &q[..n_tok * qw],
        h,
        kv,
        scale: h.scale.unwrap_or(1.0 / (h.dim as f32).sqrt()),
        shared: &shared,
    };
    let out_ptr = OutPtr(out.as_mut_ptr());
    let run = |t: &Task| run_task(&input, t, out_ptr);
    if tasks.len() == 1 {
        run(&tasks[0]);
    } else {
        tasks.par_iter().for_each(run);
    }
    drop(shared);
    SHARED_KV.set(shared_buf);
    ROTATED_Q.set(q);
}

/// Most values [`widen_shared`] holds (keys and values of every chunk and head: 256 MiB);
/// past it each task widens its own.
const SHARED_KV_MAX: usize = 64 << 20;

/// Per chunk, the positions its prompt tasks read (`from..end`, `from` a multiple of the
/// block size) where the prompt kernel takes its tasks and there are several (one task
/// gains nothing from widening ahead); `None` elsewhere, and for the chunks past
/// [`SHARED_KV_MAX`] (their tasks widen their own).
fn shared_spans(
    chunks: &[SeqSpan],
    h: Heads,
    kv: &HostPaged,
    qblock: usize,
) -> Vec<Option<(usize, usize)>> {
    let bs = kv.block_size;
    #[cfg(target_arch = "x86_64")]
    let kernel = prefill::takes(h);
    #[cfg(not(target_arch = "x86_64"))]
    let kernel = false;
    let mut values = 0;
    chunks
        .iter()
        .map(|c| {
            let prompt = c.generated_from.saturating_sub(c.start_pos).min(c.len);
            if !kernel || prompt <= qblock {
                return None;
            }
            let (from, end) = (h.first_key(c.start_pos) / bs * bs, c.start_pos + prompt);
            values += 2 * (end - from) * h.kv * h.dim;
            (values <= SHARED_KV_MAX).then_some((from, end))
        })
        .collect()
}

/// The shared keys and values of `spans` (per chunk) in `buf`, widened on rayon's threads in
/// pieces of whole blocks (at least two a thread, even for one chunk of one KV head);
/// indexed `ci · kv heads + g`.
fn widen_shared<'a>(
    layer: usize,
    kv: &HostPaged,
    h: Heads,
    spans: &[Option<(usize, usize)>],
    buf: &'a mut Vec<f32>,
) -> Vec<Option<SharedKv<'a>>> {
    let (d, bs) = (h.dim, kv.block_size);
    let total: usize = spans
        .iter()
        .flatten()
        .map(|(from, end)| 2 * (end - from) * d * h.kv)
        .sum();
    // A buffer far larger than this call needs (after one long prompt) is given back.
    if buf.len() > 2 * total && buf.len() > SHARED_KV_KEEP {
        *buf = Vec::new();
    }
    if total == 0 {
        return vec![];
    }
    if buf.len() < total {
        buf.resize(total, 0.0);
    }
    let heads = spans.iter().flatten().count() * h.kv;
    let pieces = (2 * rayon::current_num_threads()).div_ceil(heads).max(1);
    // Each (chunk, head) its own keys and values, cut from the buffer in order, widened in
    // pieces of whole blocks.
    let mut rest = &mut buf[..total];
    let mut jobs = vec![];
    for (ci, span) in spans.iter().enumerate() {
        let Some((from, end)) = *span else { continue };
        let piece = (end - from).div_ceil(bs).div_ceil(pieces) * bs;
        for g in 0..h.kv {
            let len = (end - from) * d;
            let (keys, tail) = rest.split_at_mut(len);
            let (values, tail) = tail.split_at_mut(len);
            rest = tail;
            let parts = keys.chunks_mut(piece * d).zip(values.chunks_mut(piece * d));
            for (p, (k, v)) in parts.enumerate() {
                let at = from + p * piece;
                let span = KvSpan {
                    chunk: ci,
                    g,
                    from: at,
                    end: (at + piece).min(end),
                };
                jobs.push((span, k, v));
            }
        }
    }
    jobs.par_iter_mut().for_each(|(span, keys, values)| {
        #[cfg(target_arch = "x86_64")]
        prefill::widen(kv, layer, *span, keys, values);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (kv, layer, span, keys, values);
    });
    drop(jobs);
    // The same rows again, whole per (chunk, head), in the order they were cut.
    let mut rest = &buf[..total];
    let mut shared: Vec<Option<SharedKv>> = (0..spans.len() * h.kv).map(|_| None).collect();
    for (ci, span) in spans.iter().enumerate() {
        let Some((from, end)) = *span else { continue };
        for g in 0..h.kv {
            let len = (end - from) * d;
            let (keys, tail) = rest.split_at(len);
            let (values, tail) = tail.split_at(len);
            rest = tail;
            shared[ci * h.kv + g] = Some(SharedKv { from, keys, values });
        }
    }
    shared
}

/// Values of [`widen_shared`]'s buffer kept between calls however little the next needs
/// (16 MiB; a 512-token chunk of a 1B model takes 2 MiB).
const SHARED_KV_KEEP: usize = 4 << 20;

/// Tokens from which [`paged_attention`] rotates its queries on rayon's threads.
const PARALLEL_ROPE_TOKENS: usize = 16;

thread_local! {
    /// [`paged_attention`]'s rotated queries, `(tokens, q_heads · dim)`, kept between calls.
    static ROTATED_Q: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    /// [`widen_shared`]'s keys and values, kept between calls.
    static SHARED_KV: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// What every attention task of one call reads.
struct TaskInput<'a> {
    layer: usize,
    chunks: &'a [SeqSpan],
    /// Rotated queries, `(tokens, q_heads · dim)`.
    q: &'a [f32],
    h: Heads,
    kv: &'a HostPaged<'a>,
    scale: f32,
    /// Per chunk and KV head (`ci · kv heads + g`), its prompt's keys and values widened once
    /// for all its prompt tasks, where the prompt kernel runs several of them.
    shared: &'a [Option<SharedKv<'a>>],
}

impl TaskInput<'_> {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn shared(&self, task: &Task) -> Option<&SharedKv<'_>> {
        self.shared.get(task.chunk * self.h.kv + task.g)?.as_ref()
    }
}

/// Keys and values of positions `from..` of one chunk's KV head, widened to f32 rows.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct SharedKv<'a> {
    from: usize,
    keys: &'a [f32],
    values: &'a [f32],
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
    /// One generated position (the decode kernel's), else prompt positions (the prompt
    /// kernel's). Where a kernel does not cover the case, both roles take [`attend`], whose
    /// rows do not depend on their task either.
    decode: bool,
}

fn run_task(input: &TaskInput, task: &Task, out: OutPtr) {
    // The decode kernel has no window or cap: such a model's generated positions take
    // [`attend`] (its prompt positions the prompt kernel, which has both).
    #[cfg(target_arch = "x86_64")]
    if task.decode {
        let plain = input.h.window.is_none() && input.h.softcap.is_none();
        if plain && decode512::run(input, task, out) {
            return;
        }
    } else if prefill::run(input, task, out) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_features::avx2() {
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

/// A task's keys and values (its KV head, positions `from..n_keys`, `from` a multiple of
/// the block size) widened to f32 into contiguous rows of `keys` and `values` (row 0:
/// position `from`).
#[inline(always)]
fn widen_task_kv<V: VecOps, E: CacheElem>(
    input: &TaskInput,
    task: &Task,
    from: usize,
    n_keys: usize,
    keys: &mut Vec<f32>,
    values: &mut Vec<f32>,
) {
    let d = input.h.dim;
    for buf in [&mut *keys, &mut *values] {
        buf.resize((n_keys - from) * d, 0.0);
    }
    let span = KvSpan {
        chunk: task.chunk,
        g: task.g,
        from,
        end: n_keys,
    };
    widen_span::<V, E>(input.kv, input.layer, span, keys, values);
}

/// Positions `from..end` (`from` a multiple of the block size) of chunk `chunk`'s KV head
/// `g`.
#[derive(Clone, Copy)]
struct KvSpan {
    chunk: usize,
    g: usize,
    from: usize,
    end: usize,
}

/// `span` of `layer` widened to f32 rows of `keys` and `values` (`(end − from) · head_dim`
/// each).
#[inline(always)]
fn widen_span<V: VecOps, E: CacheElem>(
    kv: &HostPaged,
    layer: usize,
    span: KvSpan,
    keys: &mut [f32],
    values: &mut [f32],
) {
    let KvSpan {
        chunk: ci,
        g,
        from,
        end,
    } = span;
    let (bs, d) = (kv.block_size, kv.cache.head_dim);
    debug_assert!(from.is_multiple_of(bs) && from < end);
    debug_assert!(keys.len() == (end - from) * d && values.len() == keys.len());
    let table = &kv.tables[ci];
    let first_block = from / bs;
    for (bi, &block) in table
        .iter()
        .enumerate()
        .take(end.div_ceil(bs))
        .skip(first_block)
    {
        let at = kv.cache.head_offset(block as usize * bs, g);
        let len = bs.min(end - bi * bs) * d;
        let row0 = (bi - first_block) * bs * d;
        let dst = row0..row0 + len;
        E::widen::<V>(
            kv.cache,
            layer,
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
        ..
    } = *task;
    let c = &input.chunks[ci];
    let (qw, group) = (h.q * h.dim, h.q / h.kv);
    let n_keys = c.start_pos + q1; // the last query sees positions ..start_pos + q1
    let d = h.dim;
    // The first block any of the task's queries attends (the window's start, else 0).
    let bs = input.kv.block_size;
    let from = h.first_key(c.start_pos + q0) / bs * bs;
    SCRATCH.with_borrow_mut(|scratch| {
        // This task's keys and values (head g, positions from..n_keys), widened to f32 once
        // into contiguous rows: every query row then streams them with register-blocked
        // kernels.
        let [keys, values, scores] = scratch;
        widen_task_kv::<V, E>(input, task, from, n_keys, keys, values);
        scores.resize(n_keys - from, 0.0);
        for i in q0..q1 {
            let t = first_tok + i;
            // Causal: query i sees positions first..=start_pos + i (first: 0 or its window's).
            let pos = c.start_pos + i;
            let first = h.first_key(pos) - from;
            let visible = pos + 1 - from - first;
            let (keys, values) = (&keys[first * d..], &values[first * d..]);
            for j in 0..group {
                let head = g * group + j;
                let qv = &input.q[t * qw + head * d..t * qw + (head + 1) * d];
                let row = &mut scores[..visible];
                V::dots(qv, keys, input.scale, row);
                if let Some(cap) = h.softcap {
                    row.iter_mut().for_each(|s| *s = cap * (*s / cap).tanh());
                }
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

#[cfg(target_arch = "x86_64")]
mod decode512;
#[cfg(target_arch = "x86_64")]
pub mod prefill;

thread_local! {
    /// Per-thread buffers of the attention tasks (widened keys, values, one score row): reused,
    /// so long prompts do not allocate (and page-fault) fresh megabytes per task.
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> = const {
        std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()])
    };
}

#[cfg(test)]
mod tests;
