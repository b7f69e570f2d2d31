//! Paged KV memory: `num_blocks * block_size` token slots per layer; each sequence owns a block
//! table mapping its positions to slots. Two storages:
//! - f32 models on the CPU: a [`HostKvCache`] (block-major, `[block][kv_head][slot][head_dim]`;
//!   f16, f32 or Q8_0 values), read and written in place by the model's CPU attention kernel
//!   through [`KvStore::host_paged`];
//! - otherwise (CUDA, bf16/f16) one slot-major `(slots, kv_heads, head_dim)` tensor per layer
//!   for keys and one for values: the CUDA runtime writes and reads them in place through
//!   [`KvStore::device_paged`]; the tensor runtime's [`KvStore::write_and_read`] writes with
//!   `slice_set` and gathers per sequence.

use crate::blocks::{BlockId, BlockPool, PrefixLink};
use camelid_model::kv::{DevicePaged, KvStore};
use camelid_model::kv::{HostKvCache, HostPaged, KvDtype, FREED_BLOCK};
use candle_core::{DType, Device, Result, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Default, Clone)]
pub struct SeqBlocks {
    pub table: Vec<BlockId>,
    /// The prefix-cache links of the leading full blocks already registered.
    pub links: Vec<PrefixLink>,
    /// The request's cache salt: its blocks are found only under the same salt.
    pub salt: Option<Arc<str>>,
    /// Its prompt's length: the positions before are cached as prompt, those after as
    /// generated (`blocks::prompt_part`).
    pub prompt_len: usize,
}

enum Storage {
    Host(HostKvCache),
    Tensors { k: Vec<Tensor>, v: Vec<Tensor> },
}

/// Whether a model of this dtype on this device keeps K/V in a [`HostKvCache`] (the CPU
/// attention kernel computes in f32; other dtypes take the tensor path).
pub fn uses_host_memory(dtype: DType, device: &Device) -> bool {
    device.is_cpu() && dtype == DType::F32
}

pub struct PagedKv {
    pub pool: BlockPool,
    pub seqs: HashMap<u64, SeqBlocks>,
    storage: Storage,
}

impl PagedKv {
    /// `dtype` is the model's; `host_dtype` the element type when K/V live in host memory
    /// (see [`uses_host_memory`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
        host_dtype: KvDtype,
        device: &Device,
    ) -> Result<Self> {
        let slots = num_blocks * block_size;
        let storage = if uses_host_memory(dtype, device) {
            Storage::Host(HostKvCache::new(
                layers, num_blocks, block_size, kv_heads, head_dim, host_dtype,
            ))
        } else {
            let shape = (slots, kv_heads, head_dim);
            let mut k = Vec::with_capacity(layers);
            let mut v = Vec::with_capacity(layers);
            for _ in 0..layers {
                k.push(Tensor::zeros(shape, dtype, device)?);
                v.push(Tensor::zeros(shape, dtype, device)?);
            }
            Storage::Tensors { k, v }
        };
        Ok(Self {
            pool: BlockPool::new(num_blocks, block_size),
            seqs: HashMap::new(),
            storage,
        })
    }

    /// Whether K/V live in a [`HostKvCache`] (the CPU attention kernel's path).
    pub fn in_host_memory(&self) -> bool {
        matches!(self.storage, Storage::Host(_))
    }

    pub fn block_size(&self) -> usize {
        self.pool.block_size
    }

    /// Starts a sequence from the longest cached prefix of `tokens` (the first `prompt_len`
    /// of them its prompt) under cache salt `salt` (`tokens` empty: no reuse); returns how
    /// many tokens are already computed.
    pub fn start(
        &mut self,
        seq: u64,
        tokens: &[u32],
        salt: Option<Arc<str>>,
        prompt_len: usize,
    ) -> usize {
        // No tokens, no lookup (nor one counted in the hit rate).
        let (table, links) = if tokens.is_empty() {
            (vec![], vec![])
        } else {
            self.pool.lookup_prefix(tokens, salt.as_ref(), prompt_len)
        };
        let cached = table.len() * self.block_size();
        self.seqs.insert(
            seq,
            SeqBlocks {
                table,
                links,
                salt,
                prompt_len,
            },
        );
        cached
    }

    /// Extends a sequence that holds only cached full blocks (`computed` of its tokens, no
    /// block of its own yet) with blocks of `tokens` cached since; returns how many tokens are
    /// computed now. Anything else about the sequence leaves it as it is.
    pub fn extend_prefix(&mut self, seq: u64, tokens: &[u32], computed: usize) -> usize {
        let bs = self.block_size();
        let Some(s) = self.seqs.get_mut(&seq) else {
            return computed;
        };
        let n = s.table.len();
        if n * bs != computed || s.links.len() != n {
            return computed;
        }
        let (ids, links) = self
            .pool
            .extend_prefix(tokens, s.salt.as_ref(), &s.links, s.prompt_len);
        if n == 0 && !ids.is_empty() {
            self.pool.hits += 1;
        }
        s.table.extend(ids);
        s.links.extend(links);
        s.table.len() * bs
    }

    /// Blocks the pool has free (unused or only cached).
    pub fn free_blocks(&self) -> usize {
        self.pool.available()
    }

    /// Blocks the sequence would have to take to hold `len` positions.
    pub fn blocks_wanted(&self, seq: u64, len: usize) -> usize {
        let have = self.seqs.get(&seq).map(|s| s.table.len()).unwrap_or(0);
        len.div_ceil(self.block_size()).saturating_sub(have)
    }

    /// Gives back the sequence's blocks past the first that hold `len` positions (taken for
    /// positions computed and then not kept: rejected draft tokens). They were never
    /// registered, as only computed positions are.
    pub fn truncate(&mut self, seq: u64, len: usize) {
        let bs = self.block_size();
        let Some(s) = self.seqs.get_mut(&seq) else {
            return;
        };
        let keep = len.div_ceil(bs).max(s.links.len());
        while s.table.len() > keep {
            let b = s.table.pop().expect("longer than keep");
            if b != FREED_BLOCK {
                self.pool.release(b);
            }
        }
    }

    /// Makes room for `len` positions; false (and nothing allocated) if the pool is short.
    pub fn reserve(&mut self, seq: u64, len: usize) -> bool {
        let bs = self.block_size();
        let have = self.seqs.get(&seq).map(|s| s.table.len()).unwrap_or(0);
        let need = len.div_ceil(bs).saturating_sub(have);
        if need > self.pool.available() {
            return false;
        }
        let s = self.seqs.entry(seq).or_default();
        for _ in 0..need {
            s.table
                .push(self.pool.allocate().expect("available was checked"));
        }
        true
    }

    /// Registers the sequence's newly full blocks (of `tokens[..computed]`) in the prefix cache.
    pub fn commit(&mut self, seq: u64, tokens: &[u32], computed: usize) {
        let bs = self.block_size();
        let Some(s) = self.seqs.get_mut(&seq) else {
            return;
        };
        let full = (computed / bs).min(s.table.len());
        while s.links.len() < full {
            let i = s.links.len();
            if s.table[i] == FREED_BLOCK {
                break; // given back before it was registered: the chain ends here
            }
            let link = self.pool.register(
                s.table[i],
                s.links.last(),
                s.salt.as_ref(),
                &tokens[i * bs..(i + 1) * bs],
                crate::blocks::prompt_part(bs, s.prompt_len, i),
            );
            s.links.push(link);
        }
    }

    /// Returns the sequence's blocks to the pool (cached ones stay reusable until evicted).
    /// Last block first, so that a prefix's tail is evicted before its head (a lost head
    /// strands every cached block after it).
    pub fn free(&mut self, seq: u64) {
        if let Some(s) = self.seqs.remove(&seq) {
            for b in s.table.into_iter().rev().filter(|&b| b != FREED_BLOCK) {
                self.pool.release(b);
            }
        }
    }

    /// Sliding-window attention: gives back the sequence's blocks wholly before position
    /// `first`, the first key its next query attends (registered ones stay in the prefix
    /// cache until evicted); their table entries become [`FREED_BLOCK`], which the attention
    /// kernel never reads. Only the host cache, read in place through the tables, allows it
    /// (the tensor storage gathers every position). Returns how many blocks it gave back.
    pub fn release_before(&mut self, seq: u64, first: usize) -> usize {
        if !self.in_host_memory() {
            return 0;
        }
        let bs = self.block_size();
        let Some(s) = self.seqs.get_mut(&seq) else {
            return 0;
        };
        let mut n = 0;
        for b in s.table.iter_mut().take(first / bs) {
            if *b != FREED_BLOCK {
                self.pool.release(*b);
                *b = FREED_BLOCK;
                n += 1;
            }
        }
        n
    }

    /// The block tables of `seqs`, in order.
    fn tables(&self, seqs: &[u64]) -> Result<Vec<Vec<u32>>> {
        Self::tables_of(&self.seqs, seqs)
    }

    fn tables_of(all: &HashMap<u64, SeqBlocks>, seqs: &[u64]) -> Result<Vec<Vec<u32>>> {
        seqs.iter()
            .map(|s| {
                all.get(s)
                    .map(|b| b.table.clone())
                    .ok_or_else(|| candle_core::Error::Msg(format!("sequence {s} has no blocks")))
            })
            .collect()
    }

    fn slots(&self, seq: u64, from: usize, to: usize) -> Result<Vec<(usize, usize, usize)>> {
        // (position, slot, run length) runs of consecutive slots.
        let bs = self.block_size();
        let s = self
            .seqs
            .get(&seq)
            .ok_or_else(|| candle_core::Error::Msg(format!("sequence {seq} has no blocks")))?;
        let mut runs = vec![];
        let mut p = from;
        while p < to {
            let b = *s.table.get(p / bs).ok_or_else(|| {
                candle_core::Error::Msg(format!("sequence {seq}: position {p} has no block"))
            })?;
            if b == FREED_BLOCK {
                candle_core::bail!(
                    "sequence {seq}: position {p}'s block was given back (outside the window)"
                );
            }
            let off = p % bs;
            let n = (bs - off).min(to - p);
            runs.push((p, b as usize * bs + off, n));
            p += n;
        }
        Ok(runs)
    }
}

impl KvStore for PagedKv {
    fn write_and_read(
        &mut self,
        layer: usize,
        seq: u64,
        start_pos: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let len = k.dims()[1];
        let total = start_pos + len;
        let write = self.slots(seq, start_pos, total)?;
        let read = self.slots(seq, 0, total)?;
        match &mut self.storage {
            Storage::Tensors { k: ks, v: vs } => {
                // (kv_heads, len, hd) -> (len, kv_heads, hd): rows of the slot-major cache.
                let (k_rows, v_rows) = (k.transpose(0, 1)?, v.transpose(0, 1)?);
                for (pos, slot, n) in write {
                    let i = pos - start_pos;
                    ks[layer].slice_set(&k_rows.narrow(0, i, n)?.contiguous()?, 0, slot)?;
                    vs[layer].slice_set(&v_rows.narrow(0, i, n)?.contiguous()?, 0, slot)?;
                }
                let idx: Vec<u32> = read
                    .into_iter()
                    .flat_map(|(_, slot, n)| (slot as u32)..(slot + n) as u32)
                    .collect();
                let idx = Tensor::new(idx.as_slice(), ks[layer].device())?;
                let gather = |c: &Tensor| -> Result<Tensor> {
                    c.index_select(&idx, 0)?.transpose(0, 1)?.contiguous()
                };
                Ok((gather(&ks[layer])?, gather(&vs[layer])?))
            }
            // The model uses `host_paged` for this storage; this path serves other callers.
            Storage::Host(cache) => {
                let (kh, hd) = (cache.kv_heads, cache.head_dim);
                // (kv_heads, len, hd) -> (len, kv_heads, hd): the slot-major row layout.
                let k_rows = k.transpose(0, 1)?.flatten_all()?.to_vec1::<f32>()?;
                let v_rows = v.transpose(0, 1)?.flatten_all()?.to_vec1::<f32>()?;
                let row = kh * hd;
                for (pos, slot, n) in write {
                    for j in 0..n {
                        let i = pos - start_pos + j;
                        let at = i * row..(i + 1) * row;
                        cache.write_slot(layer, slot + j, &k_rows[at.clone()], &v_rows[at]);
                    }
                }
                let (mut k_all, mut v_all) = (vec![0f32; total * row], vec![0f32; total * row]);
                let mut i = 0;
                for (_, slot, n) in read {
                    for j in 0..n {
                        let at = i * row..(i + 1) * row;
                        cache.read_slot(layer, slot + j, &mut k_all[at.clone()], &mut v_all[at]);
                        i += 1;
                    }
                }
                let dev = k.device();
                Ok((
                    Tensor::from_vec(k_all, (total, kh, hd), dev)?
                        .transpose(0, 1)?
                        .contiguous()?,
                    Tensor::from_vec(v_all, (total, kh, hd), dev)?
                        .transpose(0, 1)?
                        .contiguous()?,
                ))
            }
        }
    }

    fn device_paged(&mut self, seqs: &[u64]) -> Result<Option<DevicePaged>> {
        let Storage::Tensors { k, v } = &self.storage else {
            return Ok(None);
        };
        if !k.first().is_some_and(|t| t.device().is_cuda()) {
            return Ok(None);
        }
        Ok(Some(DevicePaged {
            k: k.clone(),
            v: v.clone(),
            block_size: self.pool.block_size,
            tables: self.tables(seqs)?,
        }))
    }

    fn host_paged(&mut self, seqs: &[u64]) -> Result<Option<HostPaged<'_>>> {
        let Storage::Host(cache) = &mut self.storage else {
            return Ok(None);
        };
        let tables = Self::tables_of(&self.seqs, seqs)?;
        Ok(Some(HostPaged {
            cache,
            block_size: self.pool.block_size,
            tables,
        }))
    }
}
