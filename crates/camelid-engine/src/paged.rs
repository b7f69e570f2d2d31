//! Paged KV memory: one `(kv_heads, num_blocks * block_size, head_dim)` tensor per layer for
//! keys and one for values; each sequence owns a block table mapping its positions to slots.
//! Implements the model's [`KvStore`]: writes go to the sequence's slots, reads gather them.

use crate::blocks::{chain_hash, BlockId, BlockPool};
use camelid_model::kv::KvStore;
use candle_core::{DType, Device, Result, Tensor};
use std::collections::HashMap;

#[derive(Debug, Default, Clone)]
pub struct SeqBlocks {
    pub table: Vec<BlockId>,
    /// Chain hashes of the leading full blocks already registered in the prefix cache.
    pub hashes: Vec<u64>,
}

pub struct PagedKv {
    pub pool: BlockPool,
    pub seqs: HashMap<u64, SeqBlocks>,
    k: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl PagedKv {
    pub fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (kv_heads, num_blocks * block_size, head_dim);
        let mut k = Vec::with_capacity(layers);
        let mut v = Vec::with_capacity(layers);
        for _ in 0..layers {
            k.push(Tensor::zeros(shape, dtype, device)?);
            v.push(Tensor::zeros(shape, dtype, device)?);
        }
        Ok(Self {
            pool: BlockPool::new(num_blocks, block_size),
            seqs: HashMap::new(),
            k,
            v,
        })
    }

    pub fn block_size(&self) -> usize {
        self.pool.block_size
    }

    /// Starts a sequence from the longest cached prefix of `tokens`; returns how many
    /// tokens are already computed.
    pub fn start(&mut self, seq: u64, tokens: &[u32]) -> usize {
        let (table, hashes) = self.pool.lookup_prefix(tokens);
        let cached = table.len() * self.block_size();
        self.seqs.insert(seq, SeqBlocks { table, hashes });
        cached
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
        while s.hashes.len() < full {
            let i = s.hashes.len();
            let h = chain_hash(s.hashes.last().copied(), &tokens[i * bs..(i + 1) * bs]);
            self.pool.register(s.table[i], h);
            s.hashes.push(h);
        }
    }

    /// Returns the sequence's blocks to the pool (cached ones stay reusable until evicted).
    pub fn free(&mut self, seq: u64) {
        if let Some(s) = self.seqs.remove(&seq) {
            for b in s.table {
                self.pool.release(b);
            }
        }
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
        for (pos, slot, n) in self.slots(seq, start_pos, start_pos + len)? {
            let i = pos - start_pos;
            self.k[layer].slice_set(&k.narrow(1, i, n)?.contiguous()?, 1, slot)?;
            self.v[layer].slice_set(&v.narrow(1, i, n)?.contiguous()?, 1, slot)?;
        }
        let total = start_pos + len;
        let idx: Vec<u32> = self
            .slots(seq, 0, total)?
            .into_iter()
            .flat_map(|(_, slot, n)| (slot as u32)..(slot + n) as u32)
            .collect();
        let idx = Tensor::new(idx.as_slice(), self.k[layer].device())?;
        Ok((
            self.k[layer].index_select(&idx, 1)?,
            self.v[layer].index_select(&idx, 1)?,
        ))
    }
}
