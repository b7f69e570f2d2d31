//! The host KV cache: its element types (f32, f16, Q8_0), its layout
//! `[block][kv_head][slot][head_dim]` per layer, and the view a forward pass gets of it.

use super::SeqSpan;
use crate::vecmath::{KvElem, VecOps};
use half::f16;
use half::slice::HalfFloatSliceExt;

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
pub(super) struct Q8Plane {
    pub(super) qs: Vec<i8>,
    pub(super) scales: Vec<f32>,
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
pub(super) enum Planes {
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
    pub(super) planes: Planes,
}

/// An element type a [`HostKvCache`] can hold (`i8`: the Q8_0 planes): reads a span of a
/// layer's keys and values, widened to f32.
pub(super) trait CacheElem {
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
pub(super) struct Q8;

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

/// A block-table entry whose block was given back: every key in it is outside the sliding
/// window of every position the sequence still computes, so no kernel reads it.
pub const FREED_BLOCK: u32 = u32::MAX;

/// What the forward pass needs of a paged store: its cache and, per chunk of the batch (in
/// chunk order), the sequence's block table.
pub struct HostPaged<'a> {
    pub cache: &'a mut HostKvCache,
    pub block_size: usize,
    pub tables: Vec<Vec<u32>>,
}

impl HostPaged<'_> {
    /// Every chunk's block table must cover the positions it writes; a [`FREED_BLOCK`] may
    /// stand only for keys before the first that the chunk's first query attends
    /// (`first_key`: the window's start of a position, see `Heads::first_key`).
    pub fn check(
        &self,
        chunks: &[SeqSpan],
        first_key: impl Fn(usize) -> usize,
    ) -> Result<(), String> {
        if self.block_size != self.cache.block_size {
            return Err(format!(
                "block tables of {} positions per block over a cache laid out in blocks of {}",
                self.block_size, self.cache.block_size
            ));
        }
        check_block_tables(
            &self.tables,
            self.block_size,
            self.cache.slots,
            chunks,
            first_key,
        )
    }

    pub(super) fn slot(&self, chunk: usize, pos: usize) -> usize {
        self.tables[chunk][pos / self.block_size] as usize * self.block_size + pos % self.block_size
    }
}

/// Block tables against the batch they serve (one per chunk, in order) and a cache of
/// `slots` positions: each covers the positions its chunk writes, names only blocks inside
/// the cache, and has a [`FREED_BLOCK`] only for keys before the first that the chunk's
/// first query attends (`first_key`: the window's start of a position, see
/// `Heads::first_key`). The attention kernels index the cache by these ids unchecked.
pub fn check_block_tables(
    tables: &[Vec<u32>],
    block_size: usize,
    slots: usize,
    chunks: &[SeqSpan],
    first_key: impl Fn(usize) -> usize,
) -> Result<(), String> {
    if tables.len() != chunks.len() {
        return Err(format!(
            "{} block tables for {} chunks",
            tables.len(),
            chunks.len()
        ));
    }
    for (c, t) in chunks.iter().zip(tables) {
        let end = c.start_pos + c.len;
        if t.len() * block_size < end {
            return Err(format!(
                "sequence {}: blocks cover {} positions, batch needs {end}",
                c.seq,
                t.len() * block_size
            ));
        }
        let first_live = first_key(c.start_pos) / block_size;
        if let Some(i) = t[first_live..].iter().position(|&b| b == FREED_BLOCK) {
            return Err(format!(
                "sequence {}: block {} of its table was freed, position {} attends it",
                c.seq,
                first_live + i,
                c.start_pos
            ));
        }
        if let Some(b) = t
            .iter()
            .filter(|&&b| b != FREED_BLOCK)
            .find(|&&b| (b as usize + 1) * block_size > slots)
        {
            return Err(format!(
                "sequence {}: block {b} is outside the cache",
                c.seq
            ));
        }
    }
    Ok(())
}
