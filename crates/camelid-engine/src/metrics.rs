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
    /// The most KV blocks held at once during a step since the engine started (read at
    /// the forward, when the step's blocks are all reserved): `kv_blocks_used` is read
    /// between steps, after finished sequences gave theirs back.
    pub kv_blocks_peak: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    pub prefix_cache_hits: AtomicU64,
    pub prefix_cache_lookups: AtomicU64,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_prompt_tokens: AtomicU64,
    /// The largest prefill chunk (tokens) that rode in a step with decodes: what the
    /// prefill caps and the time bound let through.
    pub max_prefill_tokens_with_decodes: AtomicU64,
    /// Speculative decoding: draft tokens verified, and those the model's sampling agreed
    /// with (each saved a step).
    pub spec_draft_tokens: AtomicU64,
    pub spec_accepted_tokens: AtomicU64,
    /// Duration of the engine's steps (every running stream waits for a whole step).
    pub step_seconds: StepHistogram,
}

/// Upper bounds (seconds) of [`StepHistogram`]'s buckets.
pub const STEP_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A Prometheus-style histogram the engine thread writes and `/metrics` reads, lock-free.
/// Each step adds to one bucket of its own (the last: past every bound), and a read adds
/// them up: a scrape in the middle of a step sees it in every bucket or in none, so the
/// buckets it reports are cumulative and the last one is the count (bucket by bucket
/// cumulative counters read while a step added to them could give a lower bound more steps
/// than a higher one, or than the count).
#[derive(Debug, Default)]
pub struct StepHistogram {
    /// `own[i]`: steps of more than `STEP_BUCKETS[i − 1]` and at most `STEP_BUCKETS[i]`
    /// seconds; `own[STEP_BUCKETS.len()]`: longer ones.
    own: [AtomicU64; STEP_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl StepHistogram {
    pub(crate) fn observe(&self, secs: f64) {
        let i = STEP_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(STEP_BUCKETS.len());
        self.own[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((secs * 1e6).round() as u64, Ordering::Relaxed);
    }

    /// `(cumulative bucket counts, count, sum in seconds)`.
    pub fn snapshot(&self) -> ([u64; STEP_BUCKETS.len()], u64, f64) {
        let mut total = 0;
        let cumulative = self.own.each_ref().map(|c| {
            total += c.load(Ordering::Relaxed);
            total
        });
        let mut buckets = [0; STEP_BUCKETS.len()];
        buckets.copy_from_slice(&cumulative[..STEP_BUCKETS.len()]);
        (
            buckets,
            total,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
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
    pub(crate) fn max(v: &AtomicU64, n: u64) {
        v.fetch_max(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_histogram_counts_cumulatively() {
        let h = StepHistogram::default();
        for secs in [0.004, 0.02, 0.02, 0.3, 20.0] {
            h.observe(secs);
        }
        let (buckets, count, sum) = h.snapshot();
        assert_eq!(buckets, [1, 1, 3, 3, 3, 3, 4, 4, 4, 4]);
        assert_eq!(count, 5);
        assert!((sum - 20.344).abs() < 1e-9);
    }

    /// A scrape while steps are observed reads cumulative buckets, the count the last of
    /// them: each bucket and the count were counters of their own, and a read between one
    /// step's additions could see a lower bound ahead of a higher one.
    #[test]
    fn a_snapshot_during_observations_stays_cumulative() {
        let h = std::sync::Arc::new(StepHistogram::default());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (h, stop) = (h.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Within every bound: each step adds to every cumulative bucket.
                    h.observe(0.001);
                }
            })
        };
        let start = std::time::Instant::now();
        let mut reads = 0;
        while start.elapsed() < std::time::Duration::from_millis(500) {
            let (buckets, count, _) = h.snapshot();
            reads += 1;
            assert!(
                buckets.windows(2).all(|w| w[0] <= w[1]) && buckets[buckets.len() - 1] <= count,
                "read {reads}: {buckets:?}, count {count}"
            );
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        let (buckets, count, _) = h.snapshot();
        assert!(count > 0 && buckets[0] == count, "{buckets:?} {count}");
    }
}
