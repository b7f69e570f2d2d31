//! Counters the engine keeps for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct EngineMetrics {
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub steps: AtomicU64,
    /// Sum over steps of the sequences in the batch (divide by `steps` for the mean).
    pub batched_sequences: AtomicU64,
    pub batched_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub cancelled: AtomicU64,
    pub preemptions: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    pub prefix_cache_hits: AtomicU64,
    pub prefix_cache_lookups: AtomicU64,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_prompt_tokens: AtomicU64,
}

impl EngineMetrics {
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }
    pub(crate) fn add(v: &AtomicU64, n: u64) {
        v.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn set(v: &AtomicU64, n: u64) {
        v.store(n, Ordering::Relaxed);
    }
}
