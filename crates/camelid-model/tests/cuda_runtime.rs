//! The CUDA serving runtime (camelid's kernels over a paged device cache) against the tensor
//! runtime (candle's ops over a contiguous cache) on the same GPU, dtype and weights: tiny
//! random models of every architecture — Qwen2's biases (and YaRN), Qwen3's Q/K norms,
//! Mistral's window, Phi-3's fused matrices and LongRoPE, Gemma 2 (scale, both soft-cappings,
//! local and global layers, post norms, GeGLU) and Gemma 3 (local rope, 5 local : 1 global).
//! The paged store has no `write_and_read`: a model the kernel runtime declined would fail
//! here rather than pass through the tensor runtime.
//!
//! Built with `--features cuda`; without a GPU each test says SKIPPED and returns (a failure
//! where `CAMELID_REQUIRE_GPU=1`). kernels/build-cuda.sh builds it as a binary for the GPU
//! machine, which runs it from the repository's root (the tokenizer fixture's path).
#![cfg(feature = "cuda")]

mod common;
use camelid_model::kv::{DevicePaged, KvStore};
use camelid_model::{ForwardBatch, LoadOptions, LoadedModel, LogitsWanted};
use candle_core::{DType, Device, Tensor};
use common::max_abs_diff;
use common::random_model::{self, Shape, TINY};

/// A random-weight HF folder of `arch` in the architecture tests' sizes.
fn write_model(arch: &str, s: Shape, extra: serde_json::Value, seed: u64) -> tempfile::TempDir {
    random_model::write_hf(arch, s, &TINY, extra, seed)
}

fn prompt(n: usize, seed: u64) -> Vec<u32> {
    random_model::prompt_in(TINY.vocab, n, seed)
}
use std::collections::HashMap;
use std::path::Path;

/// The GPU, or `None` (the test then prints SKIPPED and returns) on a machine without one.
/// Made as `camelid serve` makes it (a stream of its own, no cudarc events), so decode steps
/// run as CUDA graphs here as they do there.
fn cuda() -> Option<Device> {
    let made = Device::new_cuda_with_stream(0).and_then(|d| {
        // SAFETY: every test's work runs on this device's one stream.
        unsafe { d.as_cuda_device()?.disable_event_tracking() };
        Ok(d)
    });
    match made {
        Ok(d) => Some(d),
        Err(e) if std::env::var("CAMELID_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("CAMELID_REQUIRE_GPU=1 but no CUDA device: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: no CUDA device ({e})");
            None
        }
    }
}

fn load(dir: &Path, dev: &Device, dtype: DType) -> LoadedModel {
    let opts = LoadOptions {
        device: dev.clone(),
        dtype: Some(dtype),
        ..Default::default()
    };
    camelid_model::load(Some(dir.to_str().unwrap()), &opts).expect("load")
}

/// The engine's paged device cache in small: per layer slot-major `(slots, kv_heads,
/// head_dim)` K and V tensors, blocks of `bs` positions handed out in reverse (tables that are
/// not runs of slots).
struct DeviceStore {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    bs: usize,
    tables: HashMap<u64, Vec<u32>>,
    next_free: Vec<u32>,
}

impl DeviceStore {
    fn new(lm: &LoadedModel, blocks: usize, bs: usize) -> Self {
        let c = lm.model.config();
        let shape = (blocks * bs, c.num_kv_heads, c.head_dim);
        let (dt, dev) = (lm.model.dtype(), lm.model.device());
        let zeros = || Tensor::zeros(shape, dt, dev).unwrap();
        Self {
            k: (0..c.num_layers).map(|_| zeros()).collect(),
            v: (0..c.num_layers).map(|_| zeros()).collect(),
            bs,
            tables: HashMap::new(),
            next_free: (0..blocks as u32).collect(),
        }
    }

    /// Blocks for `seq` up to `len` positions.
    fn reserve(&mut self, seq: u64, len: usize) {
        let t = self.tables.entry(seq).or_default();
        while t.len() * self.bs < len {
            t.push(self.next_free.pop().expect("pool exhausted"));
        }
    }
}

impl KvStore for DeviceStore {
    fn write_and_read(
        &mut self,
        _: usize,
        _: u64,
        _: usize,
        _: &Tensor,
        _: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        candle_core::bail!("the CUDA kernel runtime declined the model (tensor runtime called)")
    }

    fn device_paged(&mut self, seqs: &[u64]) -> candle_core::Result<Option<DevicePaged>> {
        Ok(Some(DevicePaged {
            k: self.k.clone(),
            v: self.v.clone(),
            block_size: self.bs,
            tables: seqs.iter().map(|s| self.tables[s].clone()).collect(),
        }))
    }
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2().unwrap()
}

/// The kernel runtime's logits of every position of `a` and `b`, batched as the engine
/// batches them: `a` prefilled in two chunks (the first next to `b`'s whole prompt, the
/// second next to `b`'s first decode), then both decoded a token at a time in one batch.
fn kernel_logits(lm: &LoadedModel, a: &[u32], b: &[u32]) -> [Vec<Vec<f32>>; 2] {
    let bs = 4;
    let mut store = DeviceStore::new(lm, (a.len() + b.len()).div_ceil(bs) + 4, bs);
    let (pa, pb) = (a.len() - 6, b.len() - 3);
    let split = pa / 3;
    let (mut got_a, mut got_b): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (vec![], vec![]);
    store.reserve(1, split);
    store.reserve(2, pb);
    let mut batch = ForwardBatch::default();
    batch.push(1, 0, &a[..split], LogitsWanted::All);
    batch.push(2, 0, &b[..pb], LogitsWanted::All);
    let out = rows(&lm.model.forward(&batch, &mut store).unwrap());
    got_a.extend_from_slice(&out[..split]);
    got_b.extend_from_slice(&out[split..]);
    store.reserve(1, pa);
    store.reserve(2, pb + 1);
    let mut batch = ForwardBatch::default();
    batch.push(2, pb, &b[pb..pb + 1], LogitsWanted::Last);
    batch.push(1, split, &a[split..pa], LogitsWanted::All);
    let out = rows(&lm.model.forward(&batch, &mut store).unwrap());
    got_b.push(out[0].clone());
    got_a.extend_from_slice(&out[1..]);
    let (mut na, mut nb) = (pa, pb + 1);
    while na < a.len() || nb < b.len() {
        let mut batch = ForwardBatch::default();
        if na < a.len() {
            store.reserve(1, na + 1);
            batch.push(1, na, &a[na..na + 1], LogitsWanted::Last);
        }
        if nb < b.len() {
            store.reserve(2, nb + 1);
            batch.push(2, nb, &b[nb..nb + 1], LogitsWanted::Last);
        }
        let mut it = rows(&lm.model.forward(&batch, &mut store).unwrap()).into_iter();
        if na < a.len() {
            got_a.push(it.next().unwrap());
            na += 1;
        }
        if nb < b.len() {
            got_b.push(it.next().unwrap());
            nb += 1;
        }
    }
    [got_a, got_b]
}

/// The tensor runtime's logits of every position of `a` and `b` (each sequence in one
/// forward over a contiguous cache).
fn tensor_logits(lm: &LoadedModel, a: &[u32], b: &[u32]) -> [Vec<Vec<f32>>; 2] {
    [a, b].map(|ids| rows(&lm.model.logits_all(ids).unwrap()))
}

/// The largest |Δ| of any logit at any position.
fn max_diff(got: &[Vec<Vec<f32>>; 2], want: &[Vec<Vec<f32>>; 2]) -> f32 {
    got.iter()
        .zip(want)
        .flat_map(|(g, w)| {
            assert_eq!(g.len(), w.len());
            g.iter().zip(w).map(|(x, y)| max_abs_diff(x, y))
        })
        .fold(0f32, f32::max)
}

const GQA: Shape = Shape {
    heads: 4,
    kv_heads: 2,
    head_dim: None,
    tied: false,
};

/// Each architecture with the features it brings, on prompts several windows long.
fn cases() -> Vec<(&'static str, Shape, serde_json::Value)> {
    let tied = Shape { tied: true, ..GQA };
    let half = 32 / GQA.heads / 2;
    let longrope = serde_json::json!({"rope_scaling": {"type": "longrope",
        "short_factor": (0..half).map(|i| 1.0 + 0.1 * i as f32).collect::<Vec<_>>(),
        "long_factor": (0..half).map(|i| 1.0 + i as f32).collect::<Vec<_>>()},
        "original_max_position_embeddings": 8, "max_position_embeddings": 256});
    vec![
        ("qwen2", GQA, serde_json::json!({})),
        (
            "qwen2",
            GQA,
            serde_json::json!({"rope_scaling": {"type": "yarn", "factor": 4.0,
                "original_max_position_embeddings": 16}, "rope_theta": 1000.0}),
        ),
        (
            "qwen3",
            Shape {
                head_dim: Some(16),
                ..GQA
            },
            serde_json::json!({}),
        ),
        ("mistral", GQA, serde_json::json!({"sliding_window": 5})),
        ("phi3", GQA, serde_json::json!({})),
        ("phi3", GQA, longrope),
        (
            "gemma2",
            tied,
            serde_json::json!({"query_pre_attn_scalar": 24, "attn_logit_softcapping": 4.0,
                "final_logit_softcapping": 3.0, "sliding_window": 6, "num_hidden_layers": 4}),
        ),
        (
            "gemma3",
            Shape {
                head_dim: Some(16),
                ..tied
            },
            serde_json::json!({"sliding_window": 5, "num_hidden_layers": 6,
                "sliding_window_pattern": 6, "rope_local_base_freq": 100.0,
                "rope_theta": 100000.0}),
        ),
    ]
}

/// f32: the two runtimes differ only in the order of their sums (attention, the fused
/// norms): every logit within 1e-4, and the same top token wherever the reference's first two
/// are further apart than twice that.
#[test]
fn every_architecture_matches_the_tensor_runtime_in_f32() {
    let Some(dev) = cuda() else { return };
    for (i, (arch, shape, extra)) in cases().into_iter().enumerate() {
        let g = write_model(arch, shape, extra.clone(), 500 + i as u64);
        let lm = load(g.path(), &dev, DType::F32);
        let (a, b) = (prompt(40, i as u64), prompt(23, 50 + i as u64));
        let got = kernel_logits(&lm, &a, &b);
        let want = tensor_logits(&lm, &a, &b);
        let d = max_diff(&got, &want);
        assert!(d < 1e-4, "{arch} {extra}: kernels vs tensor runtime {d}");
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            let top = common::top_k(w, 2);
            if w[top[0]] - w[top[1]] > 2e-4 {
                assert_eq!(common::top_k(g, 1)[0], top[0], "{arch} {extra}: top token");
            }
        }
    }
}

/// bf16, the CUDA default: the runtimes round to bf16 at different points (the attention
/// kernel accumulates in f32, candle's ops round between ops), so neither equals the other;
/// each is measured against the f32 tensor runtime on the same weights, and the kernel
/// runtime must be no more than twice as far from it as candle's ops are.
#[test]
fn every_architecture_matches_the_tensor_runtime_in_bf16() {
    let Some(dev) = cuda() else { return };
    for (i, (arch, shape, extra)) in cases().into_iter().enumerate() {
        let g = write_model(arch, shape, extra.clone(), 600 + i as u64);
        let (a, b) = (prompt(40, i as u64), prompt(23, 60 + i as u64));
        let exact = tensor_logits(&load(g.path(), &dev, DType::F32), &a, &b);
        let lm = load(g.path(), &dev, DType::BF16);
        let kernels = max_diff(&kernel_logits(&lm, &a, &b), &exact);
        let candle = max_diff(&tensor_logits(&lm, &a, &b), &exact);
        eprintln!("{arch} {extra}: bf16 vs f32: kernels {kernels}, candle's ops {candle}");
        assert!(
            kernels <= 2.0 * candle,
            "{arch} {extra}: bf16 kernels {kernels} from f32, candle's ops {candle}"
        );
    }
}

/// Decode steps replayed from CUDA graphs give the logits the same steps give eagerly: rows
/// padded to buckets (5 rows to 8, 3 to 4, then 1), a graph replayed with new inputs step
/// after step, and a context crossing a split (512 positions) into a graph of its own.
/// Gemma 3 too: its local layers' rope and windows are inputs of the graph as well.
#[test]
fn decode_graphs_replay_the_eager_steps() {
    let Some(dev) = cuda() else { return };
    let gemma3 = serde_json::json!({"sliding_window": 5, "num_hidden_layers": 6,
        "sliding_window_pattern": 6, "rope_local_base_freq": 100.0, "rope_theta": 100000.0});
    let local = Shape {
        head_dim: Some(16),
        tied: true,
        ..GQA
    };
    for (i, (arch, shape, extra)) in [
        ("llama", GQA, serde_json::json!({})),
        ("gemma3", local, gemma3),
    ]
    .into_iter()
    .enumerate()
    {
        let g = write_model(arch, shape, extra, 700 + i as u64);
        let graphs = load(g.path(), &dev, DType::F32);
        let eager = load(g.path(), &dev, DType::F32);
        graphs.model.set_cuda_graphs(true).unwrap();
        eager.model.set_cuda_graphs(false).unwrap();
        let lens = [5usize, 17, 508, 3, 9];
        let bs = 16;
        let blocks = lens.iter().map(|l| (l + 16).div_ceil(bs)).sum::<usize>() + 2;
        let mut stores = [
            DeviceStore::new(&graphs, blocks, bs),
            DeviceStore::new(&eager, blocks, bs),
        ];
        let mut seqs: Vec<Vec<u32>> = lens
            .iter()
            .enumerate()
            .map(|(s, &l)| prompt(l, 70 + s as u64))
            .collect();
        // The prompts but their last tokens, in one batch, on both.
        for (lm, store) in [&graphs, &eager].into_iter().zip(&mut stores) {
            let mut batch = ForwardBatch::default();
            for (s, ids) in seqs.iter().enumerate() {
                let head = &ids[..ids.len() - 1];
                store.reserve(s as u64, head.len());
                batch.push(s as u64, 0, head, LogitsWanted::Last);
            }
            lm.model.forward(&batch, store).unwrap();
        }
        let mut steps = 0;
        for step in 0..12 {
            // All five, then three, then one.
            let live: Vec<usize> = match step {
                0..=5 => vec![0, 1, 2, 3, 4],
                6..=8 => vec![1, 2, 4],
                _ => vec![2],
            };
            let mut got = vec![];
            for (lm, store) in [&graphs, &eager].into_iter().zip(&mut stores) {
                let mut batch = ForwardBatch::default();
                for &s in &live {
                    let pos = seqs[s].len() - 1;
                    store.reserve(s as u64, pos + 1);
                    batch.push(s as u64, pos, &seqs[s][pos..], LogitsWanted::Last);
                }
                got.push(rows(&lm.model.forward(&batch, store).unwrap()));
            }
            steps += 1;
            let (from_graph, want) = (&got[0], &got[1]);
            for (r, &s) in live.iter().enumerate() {
                let d = max_abs_diff(&from_graph[r], &want[r]);
                assert!(
                    d < 1e-4,
                    "{arch} step {step}, sequence {s}: graph vs eager {d}"
                );
                // The next token, the same on both: the eager step's choice.
                seqs[s].push(common::top_k(&want[r], 1)[0] as u32);
            }
        }
        let st = graphs.model.cuda_graph_stats();
        assert_eq!(st.failed, None, "{arch}: capture failed");
        assert_eq!(st.launches, steps, "{arch}: every step from a graph");
        // Rows 8 and 4 and 1; the long sequence crossed 512 positions while 5 were live.
        assert!(st.captured >= 4, "{arch}: {st:?}");
        assert_eq!(eager.model.cuda_graph_stats().launches, 0);
    }
}
