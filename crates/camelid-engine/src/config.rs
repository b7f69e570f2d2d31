//! The engine's settings: [`EngineConfig`], and the defaults each device gets
//! ([`EngineConfig::for_device`]) under the user's [`EngineOverrides`].

use crate::paged::uses_host_memory;
use crate::speculate::NgramSpec;
use camelid_model::KvDtype;
use camelid_model::LoadedModel;
use candle_core::Device;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences (each choice of a request is one) that may wait for a batch slot before
    /// `submit` says the queue is full; preempted sequences come back on top of these.
    pub max_waiting: usize,
    /// Sequences in one batch.
    pub max_running: usize,
    /// Tokens in one forward (prefill is chunked to fit).
    pub max_batch_tokens: usize,
    /// Prefill tokens in a step that also carries decodes: running streams wait for the whole
    /// step, so a small cap keeps their inter-token latency down while new prompts prefill in
    /// more, smaller chunks (Sarathi-style). Steps without decodes use all of
    /// `max_batch_tokens`.
    pub max_prefill_tokens_while_decoding: usize,
    /// A step without decodes whose prompt would leave at most this many of its tokens for a
    /// step of their own takes them now, past `max_batch_tokens`: that step would read every
    /// weight again for a few rows (on the CPU a 1B model's 513-token prompt spent ~3 % of
    /// its first token's time on the last one). 0: `max_batch_tokens` is a hard cap.
    pub finish_prompt_within: usize,
    /// Bounds a step that also decodes by time as well: with its prefill chunk it may take at
    /// most `stretch ×` a decode step of every running sequence (predicted from the steps
    /// already run, see [`crate::step_cost`]); at least one prompt token goes in, so that
    /// prompts always progress. 1 keeps every gap near the decode step of the current load
    /// (first tokens wait longer), larger lets prompts through sooner. `None`: the token cap
    /// alone.
    pub max_step_stretch: Option<f64>,
    /// With `max_step_stretch`, a step may always take this multiple of a lone stream's
    /// decode step (once one ran), however cheap a decode step of the running batch is: on a
    /// model whose decode steps are bound by reading the weights, stretch 1 alone would hold
    /// a prompt beside busy streams to a token or two a step. 0: the stretch alone.
    pub lone_stream_gaps: f64,
    /// When a request reaches an idle engine, the others of a burst that arrive right after it
    /// (each within `burst_quiet` of the one before) join its first step, for at most this
    /// long. On the CPU a step takes every core, so requests still being parsed when it
    /// starts wait out the whole step and then enter a few prompt tokens a step beside the
    /// streams it started (8 simultaneous clients: 3 in the first step, the other five's
    /// first tokens 1–2 s later). Zero: the first step starts at once.
    pub burst_window: Duration,
    /// See `burst_window`: the gap after which no more of a burst is expected.
    pub burst_quiet: Duration,
    /// Positions per KV block.
    pub block_size: usize,
    /// KV memory for this model, in MiB (keys and values of every layer).
    pub kv_cache_mb: usize,
    /// Reuse cached KV blocks of identical prompt prefixes.
    pub prefix_caching: bool,
    /// Exact number of KV blocks (overrides `kv_cache_mb`; tests use tiny pools).
    pub num_blocks: Option<usize>,
    /// Element type of a host-memory KV cache (f32 models on the CPU); other storages use the
    /// model's dtype.
    pub host_kv_dtype: KvDtype,
    /// Speculative decoding by prompt lookup: decodes also verify draft tokens found in the
    /// sequence itself (see [`crate::speculate`]). `None`: one token a step.
    pub speculative: Option<NgramSpec>,
    /// Fault injection for tests: the engine thread panics before running this step (the
    /// first is 1), as a bug in a kernel or the model would make it; the server's
    /// `tests/faults.rs` checks what clients then see. Never set in serving.
    #[doc(hidden)]
    pub panic_at_step: Option<u64>,
    /// Fault injection for tests: from this step on the forward's logits rows are dropped
    /// after it ran, as a device whose rows could not be read back; the step's members must
    /// end with an error, not break the engine. Never set in serving.
    #[doc(hidden)]
    pub lose_logits_from_step: Option<u64>,
}

/// The CPU's default for [`EngineConfig::lone_stream_gaps`]: the streams' gaps stay within 3×
/// a lone stream's (issue 4's bound, with room for noise), and where a decode step is bound by
/// reading the weights (eight rows of a 1B model cost ~1.7× one on the CPU) a prompt beside
/// busy streams still advances a chunk a step.
pub const LONE_STREAM_GAPS: f64 = 2.5;

/// The CPU's default for [`EngineConfig::burst_window`]: a burst of clients' requests reaches
/// the engine within ~2 ms on 2 cores (8 at once: 1.6–2.0 ms), and a lone request waits only
/// [`BURST_QUIET`] for company.
pub const CPU_BURST_WINDOW: Duration = Duration::from_millis(10);

/// [`EngineConfig::burst_quiet`]'s default.
pub const BURST_QUIET: Duration = Duration::from_millis(1);

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_waiting: 1024,
            max_running: 32,
            max_batch_tokens: 512,
            max_prefill_tokens_while_decoding: 512,
            finish_prompt_within: 0,
            max_step_stretch: None,
            lone_stream_gaps: 0.0,
            burst_window: Duration::ZERO,
            burst_quiet: BURST_QUIET,
            block_size: 16,
            kv_cache_mb: 512,
            prefix_caching: true,
            num_blocks: None,
            host_kv_dtype: KvDtype::F16,
            speculative: None,
            panic_at_step: None,
            lose_logits_from_step: None,
        }
    }
}

/// Positions the KV cache holds by default, where the model's context is longer and the
/// cache is not sized by hand: llama.cpp's and Ollama's default context.
pub const DEFAULT_KV_POSITIONS: usize = 4096;

impl EngineConfig {
    /// Blocks that fit in `kv_cache_mb` for this model.
    pub fn num_blocks(&self, lm: &LoadedModel) -> usize {
        if let Some(n) = self.num_blocks {
            return n.max(1);
        }
        let bytes_per_block = self.bytes_per_block(lm);
        ((self.kv_cache_mb as f64 * (1u64 << 20) as f64 / bytes_per_block) as usize).max(1)
    }

    fn bytes_per_block(&self, lm: &LoadedModel) -> f64 {
        let c = lm.model.config();
        let element = if uses_host_memory(lm.model.dtype(), lm.model.device()) {
            self.host_kv_dtype.bytes_per_value()
        } else {
            lm.model.dtype().size_in_bytes() as f64
        };
        let values_per_block = c.num_layers * 2 * c.num_kv_heads * c.head_dim * self.block_size;
        (values_per_block as f64 * element).max(1.0)
    }

    /// What the KV cache of [`Self::num_blocks`] takes.
    pub fn kv_cache_bytes(&self, lm: &LoadedModel) -> u64 {
        (self.num_blocks(lm) as f64 * self.bytes_per_block(lm)) as u64
    }

    /// The MiB of KV cache that hold `positions` of this model (whole blocks).
    pub fn kv_cache_mb_holding(&self, lm: &LoadedModel, positions: usize) -> usize {
        let blocks = positions.div_ceil(self.block_size.max(1));
        (blocks as f64 * self.bytes_per_block(lm) / (1u64 << 20) as f64).ceil() as usize
    }

    /// The cache a CPU model gets where the user did not size it: `kv_cache_mb`, or more
    /// where that holds less than its context (`context` positions) up to
    /// [`DEFAULT_KV_POSITIONS`]. (A GPU's is sized to the card by hand.)
    /// A 7B model's f16 cache takes 512 KiB a position: the default 512 MiB held 1 024,
    /// a quarter of Vicuna's context, and an MT-bench answer of 1 024 tokens never fit.
    pub fn default_kv_cache_mb(&self, lm: &LoadedModel, context: usize) -> usize {
        let want = self.kv_cache_mb_holding(lm, context.min(DEFAULT_KV_POSITIONS));
        self.kv_cache_mb.max(want)
    }
}

/// The settings a user chose for [`EngineConfig::for_device`]; `None` keeps the device's
/// default.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineOverrides {
    /// Sequences in the waiting queue (default 1024).
    pub max_waiting: Option<usize>,
    pub max_running: Option<usize>,
    /// Default: 512 on the CPU, 2048 on CUDA.
    pub max_batch_tokens: Option<usize>,
    /// Default: 64 on the CPU, the step budget (`max_batch_tokens`) on CUDA.
    pub max_prefill_tokens_while_decoding: Option<usize>,
    /// Default: 1 on the CPU, off on CUDA; 0 (or less) turns it off, values below 1 count
    /// as 1.
    pub max_step_stretch: Option<f64>,
    /// Default: [`LONE_STREAM_GAPS`] on the CPU, 0 (off) on CUDA; negative counts as 0.
    pub lone_stream_gaps: Option<f64>,
    /// Default: [`CPU_BURST_WINDOW`] on the CPU, none on CUDA.
    pub burst_window: Option<Duration>,
    pub block_size: Option<usize>,
    pub kv_cache_mb: Option<usize>,
    pub prefix_caching: Option<bool>,
    pub host_kv_dtype: Option<KvDtype>,
    /// Default: off.
    pub speculative: Option<NgramSpec>,
}

impl EngineConfig {
    /// The serving defaults for a model on `device`, with the user's overrides applied (counts
    /// below 1 count as 1). The CPU gets smaller steps (a prefill stalls running streams for
    /// about 1.5–2 ms per token there), a small prefill cap while decoding and a step stretch
    /// of 1; CUDA gets 2048-token steps, prefill uncapped within them and no stretch bound.
    pub fn for_device(device: &Device, o: &EngineOverrides) -> Self {
        let d = Self::default();
        let cpu = device.is_cpu();
        let max_running = o.max_running.unwrap_or(d.max_running).max(1);
        // A step holds every running decode and still a prompt token (vLLM refuses a budget
        // below its sequence count; here it is raised): waiting prompts always progress.
        let max_batch_tokens = o
            .max_batch_tokens
            .unwrap_or(if cpu { 512 } else { 2048 })
            .max(max_running + 1);
        Self {
            max_waiting: o.max_waiting.unwrap_or(d.max_waiting).max(1),
            max_running,
            max_batch_tokens,
            max_prefill_tokens_while_decoding: o
                .max_prefill_tokens_while_decoding
                .unwrap_or(if cpu { 64 } else { max_batch_tokens })
                .max(1),
            // CPU: a quarter of the budget, at most that much longer a step (a step of their
            // own reads every weight again); CUDA's steps are cheap to add.
            finish_prompt_within: if cpu { max_batch_tokens / 4 } else { 0 },
            max_step_stretch: match o.max_step_stretch {
                Some(s) if s > 0.0 => Some(s.max(1.0)),
                Some(_) => None,
                None => cpu.then_some(1.0),
            },
            lone_stream_gaps: o
                .lone_stream_gaps
                .unwrap_or(if cpu { LONE_STREAM_GAPS } else { 0.0 })
                .max(0.0),
            burst_window: o.burst_window.unwrap_or(if cpu {
                CPU_BURST_WINDOW
            } else {
                Duration::ZERO
            }),
            burst_quiet: d.burst_quiet,
            block_size: o.block_size.unwrap_or(d.block_size).max(1),
            kv_cache_mb: o.kv_cache_mb.unwrap_or(d.kv_cache_mb).max(1),
            prefix_caching: o.prefix_caching.unwrap_or(d.prefix_caching),
            num_blocks: None,
            host_kv_dtype: o.host_kv_dtype.unwrap_or(d.host_kv_dtype),
            speculative: o.speculative,
            panic_at_step: None,
            lose_logits_from_step: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_defaults() {
        let c = EngineConfig::for_device(&Device::Cpu, &EngineOverrides::default());
        assert_eq!(c.max_batch_tokens, 512);
        assert_eq!(c.finish_prompt_within, 128);
        assert_eq!(c.max_prefill_tokens_while_decoding, 64);
        assert_eq!(c.max_step_stretch, Some(1.0));
        assert_eq!(c.lone_stream_gaps, LONE_STREAM_GAPS);
        assert_eq!(
            (c.burst_window, c.burst_quiet),
            (CPU_BURST_WINDOW, BURST_QUIET)
        );
        assert_eq!(
            (c.max_waiting, c.max_running, c.block_size, c.kv_cache_mb),
            (1024, 32, 16, 512)
        );
        assert!(c.prefix_caching && c.num_blocks.is_none());
        assert_eq!(c.host_kv_dtype, KvDtype::F16);
    }

    #[test]
    fn overrides_apply_and_clamp() {
        let o = EngineOverrides {
            max_waiting: Some(0),
            max_running: Some(0),
            max_batch_tokens: Some(0),
            max_prefill_tokens_while_decoding: Some(0),
            max_step_stretch: Some(0.5),
            lone_stream_gaps: Some(-1.0),
            burst_window: Some(Duration::ZERO),
            block_size: Some(0),
            kv_cache_mb: Some(0),
            prefix_caching: Some(false),
            host_kv_dtype: Some(KvDtype::Q8_0),
            speculative: None,
        };
        let c = EngineConfig::for_device(&Device::Cpu, &o);
        assert_eq!(
            (c.max_waiting, c.max_running, c.max_batch_tokens),
            (1, 1, 2)
        );
        assert_eq!(c.max_prefill_tokens_while_decoding, 1);
        assert_eq!(c.max_step_stretch, Some(1.0));
        assert_eq!(c.lone_stream_gaps, 0.0);
        assert_eq!(c.burst_window, Duration::ZERO);
        assert_eq!((c.block_size, c.kv_cache_mb), (1, 1));
        assert!(!c.prefix_caching);
        assert_eq!(c.host_kv_dtype, KvDtype::Q8_0);
        let off = EngineOverrides {
            max_step_stretch: Some(0.0),
            max_batch_tokens: Some(100),
            ..Default::default()
        };
        let c = EngineConfig::for_device(&Device::Cpu, &off);
        assert_eq!(c.max_step_stretch, None);
        assert_eq!(c.finish_prompt_within, 25, "a quarter of the budget given");
        assert_eq!(c.max_prefill_tokens_while_decoding, 64);
        // A step budget that the running decodes would fill is raised past them.
        let tight = EngineOverrides {
            max_running: Some(32),
            max_batch_tokens: Some(16),
            ..Default::default()
        };
        let c = EngineConfig::for_device(&Device::Cpu, &tight);
        assert_eq!((c.max_running, c.max_batch_tokens), (32, 33));
    }
}
