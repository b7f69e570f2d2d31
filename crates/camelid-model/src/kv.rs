//! Where the forward pass keeps keys and values. The model owns no KV memory: the caller
//! passes a [`KvStore`], so a simple per-sequence cache (tests, CLI) and the engine's paged
//! block pool plug into the same forward pass.

/// The host cache types are part of this interface: a store that owns one lends it out as
/// [`HostPaged`] (the engine builds its pool on [`HostKvCache`]).
pub use camelid_kernels::attention::{HostKvCache, HostPaged, KvDtype, FREED_BLOCK};
use candle_core::{Result, Tensor};
use std::collections::HashMap;

pub trait KvStore {
    /// Stores `k` and `v` (shape `(kv_heads, len, head_dim)`) of sequence `seq` at `layer`
    /// for positions `start_pos..start_pos + len`, and returns keys and values for
    /// positions `0..start_pos + len`, shaped `(kv_heads, start_pos + len, head_dim)`.
    fn write_and_read(
        &mut self,
        layer: usize,
        seq: u64,
        start_pos: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)>;

    /// The store's host-memory paged cache with the block tables of `seqs` (one per chunk of
    /// the batch), when it has one: the CPU forward pass then runs
    /// [`camelid_kernels::attention::paged_attention`] in place instead of `write_and_read`.
    fn host_paged(&mut self, _seqs: &[u64]) -> Result<Option<HostPaged<'_>>> {
        Ok(None)
    }

    /// The paged cache as device tensors, for the CUDA kernels (`None`: use
    /// `write_and_read`). `seqs` lists the batch's chunks in order.
    fn device_paged(&mut self, _seqs: &[u64]) -> Result<Option<DevicePaged>> {
        Ok(None)
    }
}

/// A paged KV cache in device memory: per layer one slot-major `(slots, kv_heads, head_dim)`
/// tensor for keys and one for values (clones share the storage the kernels write in place),
/// and each chunk's block table, in batch order.
#[derive(Clone)]
pub struct DevicePaged {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub block_size: usize,
    pub tables: Vec<Vec<u32>>,
}

impl DevicePaged {
    /// The tables against the batch and the cache's slots, as the host cache's are: the CUDA
    /// kernels index device memory by these block ids unchecked.
    pub fn check(
        &self,
        chunks: &[camelid_kernels::attention::SeqSpan],
        first_key: impl Fn(usize) -> usize,
    ) -> std::result::Result<(), String> {
        let slots = self
            .k
            .first()
            .map_or(0, |t| t.dims().first().copied().unwrap_or(0));
        camelid_kernels::attention::check_block_tables(
            &self.tables,
            self.block_size,
            slots,
            chunks,
            first_key,
        )
    }
}

/// One growing contiguous K/V tensor pair per (sequence, layer). Writing at a position
/// before the end rewinds the sequence first, so re-feeding a prompt is always safe.
#[derive(Default)]
pub struct ContiguousKv {
    seqs: HashMap<u64, Vec<Option<(Tensor, Tensor)>>>,
}

impl ContiguousKv {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn remove(&mut self, seq: u64) {
        self.seqs.remove(&seq);
    }

    /// Number of cached positions of `seq` (layer 0).
    pub fn len(&self, seq: u64) -> usize {
        self.seqs
            .get(&seq)
            .and_then(|l| l.first().cloned().flatten())
            .map(|(k, _)| k.dims()[1])
            .unwrap_or(0)
    }
}

impl KvStore for ContiguousKv {
    fn write_and_read(
        &mut self,
        layer: usize,
        seq: u64,
        start_pos: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let layers = self.seqs.entry(seq).or_default();
        if layers.len() <= layer {
            layers.resize(layer + 1, None);
        }
        let (k_all, v_all) = match layers[layer].take() {
            Some((pk, pv)) if start_pos > 0 => {
                let have = pk.dims()[1];
                if have < start_pos {
                    candle_core::bail!("kv cache of sequence {seq} holds {have} positions, write starts at {start_pos}");
                }
                let pk = pk.narrow(1, 0, start_pos)?;
                let pv = pv.narrow(1, 0, start_pos)?;
                (Tensor::cat(&[&pk, k], 1)?, Tensor::cat(&[&pv, v], 1)?)
            }
            None if start_pos > 0 => {
                candle_core::bail!(
                    "kv cache of sequence {seq} is empty, write starts at {start_pos}"
                )
            }
            _ => (k.contiguous()?, v.contiguous()?),
        };
        layers[layer] = Some((k_all.clone(), v_all.clone()));
        Ok((k_all, v_all))
    }
}

#[cfg(test)]
mod device_paged_tests {
    use super::*;
    use camelid_kernels::attention::SeqSpan;

    /// Tables naming a freed block where keys are attended, or a block past the cache, are
    /// refused before any kernel indexes by them.
    #[test]
    fn tables_outside_the_cache_or_freed_are_refused() {
        let dev = candle_core::Device::Cpu;
        let k = Tensor::zeros((8, 1, 4), candle_core::DType::F32, &dev).unwrap();
        let paged = |table: Vec<u32>| DevicePaged {
            k: vec![k.clone()],
            v: vec![k.clone()],
            block_size: 4,
            tables: vec![table],
        };
        let chunks = [SeqSpan::new(1, 4, 1)];
        let all = |_| 0;
        assert!(paged(vec![0, 1]).check(&chunks, all).is_ok());
        let e = paged(vec![FREED_BLOCK, 1]).check(&chunks, all).unwrap_err();
        assert!(e.contains("freed"), "{e}");
        // With a window of 1 the freed block holds no attended key.
        assert!(paged(vec![FREED_BLOCK, 1]).check(&chunks, |p| p).is_ok());
        let e = paged(vec![0, 2]).check(&chunks, all).unwrap_err();
        assert!(e.contains("outside the cache"), "{e}");
        let e = paged(vec![0]).check(&chunks, all).unwrap_err();
        assert!(e.contains("cover"), "{e}");
    }
}
