//! Architectures beyond LLaMA on tiny random-weight models written here: camelid's logits
//! against candle-transformers' own implementation of each (`qwen2`, `qwen3`, `mistral`,
//! `phi3`, `gemma2`, `gemma3`) in f32, and the CPU serving path (paged host cache, scattered
//! and partly freed blocks) against the tensor path. GQA and MHA, tied and untied embeddings.
//! Also: a GGUF written by gguf-py against the HF folder it came from, GGUF keys read as
//! llama.cpp reads them, a multimodal Gemma 3 checkpoint serving its language model, files
//! camelid cannot serve refused by name, and a tokenizer post-processor's BOS.

mod common;
use camelid_model::config::RopeScaling;
use camelid_model::kv::{HostKvCache, HostPaged, KvDtype, KvStore, FREED_BLOCK};
use camelid_model::{ForwardBatch, LoadedModel, LogitsWanted};
use candle_core::{DType, Device, Tensor};
use common::max_abs_diff;
use common::random_model::{self, Shape, Vocab, TINY};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const VOCAB: usize = TINY.vocab;
const HIDDEN: usize = TINY.hidden;

/// A random-weight HF folder of `arch` ([`random_model::write_hf`]) in the [`TINY`] sizes.
fn write_model(arch: &str, s: Shape, extra: serde_json::Value, seed: u64) -> tempfile::TempDir {
    random_model::write_hf(arch, s, &TINY, extra, seed)
}

/// Deterministic pseudo-random ids in the vocabulary (BOS first).
fn prompt(n: usize, seed: u64) -> Vec<u32> {
    random_model::prompt_in(VOCAB, n, seed)
}

/// candle-transformers' model of the folder's architecture: the last position's logits of
/// each prefix `ids[..n]`, `n` in `lens` (each a fresh forward over the whole prefix).
fn reference_logits(arch: &str, dir: &Path, ids: &[u32], lens: &[usize]) -> Vec<Vec<f32>> {
    use candle_transformers::models::{mistral, phi3, qwen2, qwen3};
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    if arch.starts_with("gemma") {
        return gemma_reference_logits(arch, dir, &text, ids, lens);
    }
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let mut forward: Box<dyn FnMut(&Tensor) -> Tensor> = match arch {
        "qwen2" => {
            let mut j: serde_json::Value = serde_json::from_str(&text).unwrap();
            // candle's qwen2 always applies its window: wider than any prompt here.
            j["sliding_window"] = serde_json::json!(4096);
            let cfg: qwen2::Config = serde_json::from_value(j).unwrap();
            let mut m = qwen2::ModelForCausalLM::new(&cfg, vb).unwrap();
            Box::new(move |x| {
                m.clear_kv_cache();
                m.forward(x, 0).unwrap()
            })
        }
        "qwen3" => {
            let cfg: qwen3::Config = serde_json::from_str(&text).unwrap();
            let mut m = qwen3::ModelForCausalLM::new(&cfg, vb).unwrap();
            Box::new(move |x| {
                m.clear_kv_cache();
                m.forward(x, 0).unwrap()
            })
        }
        "mistral" => {
            let mut cfg: mistral::Config = serde_json::from_str(&text).unwrap();
            // candle's mask (mistral-src's) lets position i see i - w ..= i, w + 1 keys; HF
            // transformers and llama.cpp (and camelid) see w: the same window is w - 1 there.
            cfg.sliding_window = cfg.sliding_window.map(|w| w - 1);
            let mut m = mistral::Model::new(&cfg, vb).unwrap();
            Box::new(move |x| {
                m.clear_kv_cache();
                m.forward(x, 0).unwrap()
            })
        }
        "phi3" => {
            let cfg: phi3::Config = serde_json::from_str(&text).unwrap();
            assert!(cfg.rope_scaling.is_none(), "candle's LongRoPE is not HF's");
            let mut m = phi3::Model::new(&cfg, vb).unwrap();
            Box::new(move |x| {
                m.clear_kv_cache();
                m.forward(x, 0).unwrap()
            })
        }
        other => panic!("{other}"),
    };
    lens.iter()
        .map(|&n| {
            let x = Tensor::new(&ids[..n], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            forward(&x).flatten_all().unwrap().to_vec1().unwrap()
        })
        .collect()
}

/// [`reference_logits`] for Gemma. candle-transformers' gemma2 and gemma3 scale scores by
/// `1 / sqrt(head_dim)` whatever `query_pre_attn_scalar` says: the same model for them has
/// its queries scaled by `sqrt(head_dim / query_pre_attn_scalar)` (Gemma 2: the Q projection;
/// Gemma 3: the `1 + w` of its Q norm, as Q is normed before rope). Their gemma2's prompt
/// mask lets a query see `w + 1` keys (as mistral's): camelid's `w` is their `w - 1`; and it
/// windows every layer, so a Gemma 2 model of several layers is compared without one.
fn gemma_reference_logits(
    arch: &str,
    dir: &Path,
    text: &str,
    ids: &[u32],
    lens: &[usize],
) -> Vec<Vec<f32>> {
    use candle_transformers::models::{gemma2, gemma3};
    let mut j: serde_json::Value = serde_json::from_str(text).unwrap();
    let hd = j["head_dim"].as_f64().unwrap();
    let scalar = j["query_pre_attn_scalar"].as_f64().unwrap();
    let q_scale = (hd / scalar).sqrt();
    let mut t =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, w) in t.iter_mut() {
        if arch == "gemma2" && name.ends_with("q_proj.weight") {
            *w = (&*w * q_scale).unwrap();
        }
        if arch == "gemma3" && name.ends_with("q_norm.weight") {
            *w = (((&*w + 1.0).unwrap() * q_scale).unwrap() - 1.0).unwrap();
        }
    }
    assert!(
        j["tie_word_embeddings"] != serde_json::json!(false),
        "candle's Gemma ties its embeddings"
    );
    let vb = candle_nn::VarBuilder::from_tensors(t, DType::F32, &Device::Cpu);
    j["query_pre_attn_scalar"] = serde_json::json!(hd as usize);
    let window = j["sliding_window"].as_u64().unwrap();
    let mut forward: Box<dyn FnMut(&Tensor) -> Tensor> = if arch == "gemma2" {
        // One layer: Gemma 2's layer 0, a local one, is candle's whole model.
        j["sliding_window"] = if j["num_hidden_layers"] == 1 {
            serde_json::json!(window - 1)
        } else {
            assert!(
                window as usize >= ids.len(),
                "candle's gemma2 windows every layer"
            );
            serde_json::Value::Null
        };
        let cfg: gemma2::Config = serde_json::from_value(j).unwrap();
        let mut m = gemma2::Model::new(false, &cfg, vb).unwrap();
        Box::new(move |x| {
            m.clear_kv_cache();
            m.forward(x, 0).unwrap()
        })
    } else {
        // candle's gemma3 fails a prompt of several tokens (its full-attention cache takes
        // only contiguous values): fed a token at a time, a query sees the cache alone, the
        // local layers' rotating cache of `w` keys, as HF counts them.
        let cfg: gemma3::Config = serde_json::from_value(j).unwrap();
        let mut m = gemma3::Model::new(false, &cfg, vb).unwrap();
        let last = *lens.iter().max().unwrap();
        let all: Vec<Vec<f32>> = (0..last)
            .map(|p| {
                let x = Tensor::new(&ids[p..p + 1], &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let l = m.forward(&x, p).unwrap();
                l.flatten_all().unwrap().to_vec1().unwrap()
            })
            .collect();
        return lens.iter().map(|&n| all[n - 1].clone()).collect();
    };
    lens.iter()
        .map(|&n| {
            let x = Tensor::new(&ids[..n], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            forward(&x).flatten_all().unwrap().to_vec1().unwrap()
        })
        .collect()
}

fn load(dir: &Path) -> LoadedModel {
    common::load(dir)
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2().unwrap()
}

/// camelid's tensor path (all positions in one forward) against candle-transformers at the
/// last position of several prefixes: within 1e-4, the same top-5.
fn check_against_candle(arch: &str, dir: &Path, ids: &[u32]) {
    let lm = load(dir);
    let ours = rows(&lm.model.logits_all(ids).unwrap());
    let lens: Vec<usize> = (1..=ids.len()).step_by(7).chain([ids.len()]).collect();
    let want = reference_logits(arch, dir, ids, &lens);
    for (n, w) in lens.iter().zip(&want) {
        let got = &ours[n - 1];
        let d = max_abs_diff(got, w);
        assert!(d < 1e-4, "{arch} {dir:?}: position {}: max |Δ| {d}", n - 1);
        assert_eq!(
            common::top_k(got, 5),
            common::top_k(w, 5),
            "{arch}: top-5 at {}",
            n - 1
        );
    }
}

/// A paged host cache as the engine keeps one: `bs`-position blocks handed out in reverse
/// (tables not runs of slots).
struct HostStore {
    cache: HostKvCache,
    bs: usize,
    tables: HashMap<u64, Vec<u32>>,
    next_free: Vec<u32>,
}

impl HostStore {
    fn new(lm: &LoadedModel, blocks: usize, bs: usize) -> Self {
        let c = lm.model.config();
        Self {
            cache: HostKvCache::new(
                c.num_layers,
                blocks,
                bs,
                c.num_kv_heads,
                c.head_dim,
                KvDtype::F32,
            ),
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

    /// Gives back `seq`'s blocks wholly before position `first` (outside its window).
    fn free_before(&mut self, seq: u64, first: usize) -> usize {
        let t = self.tables.get_mut(&seq).unwrap();
        let mut freed = 0;
        for b in t.iter_mut().take(first / self.bs) {
            if *b != FREED_BLOCK {
                self.next_free.insert(0, *b);
                *b = FREED_BLOCK;
                freed += 1;
            }
        }
        freed
    }
}

impl KvStore for HostStore {
    fn write_and_read(
        &mut self,
        _: usize,
        _: u64,
        _: usize,
        _: &Tensor,
        _: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        candle_core::bail!("the host store is read in place")
    }

    fn host_paged(&mut self, seqs: &[u64]) -> candle_core::Result<Option<HostPaged<'_>>> {
        let tables = seqs.iter().map(|s| self.tables[s].clone()).collect();
        Ok(Some(HostPaged {
            cache: &mut self.cache,
            block_size: self.bs,
            tables,
        }))
    }
}

/// The CPU serving path against the tensor path on the same ids: sequence 1 prefilled in two
/// chunks next to sequence 2's prompt, then both decoded a token at a time, batched; with a
/// window, the blocks wholly outside it are given back between steps. Every row within 1e-4.
fn check_paged_against_tensor(dir: &Path, a: &[u32], b: &[u32]) {
    let lm = load(dir);
    // Blocks are given back only where every layer keeps to the window (not past Gemma's
    // global layers, which read every key: a freed block there would be read).
    let window = lm.model.config().features.kv_window();
    let want_a = rows(&lm.model.logits_all(a).unwrap());
    let want_b = rows(&lm.model.logits_all(b).unwrap());
    let bs = 4;
    let mut store = HostStore::new(&lm, (a.len() + b.len()).div_ceil(bs) + 4, bs);
    let (pa, pb) = (a.len() - 6, b.len() - 3);
    let split = pa / 3;
    let mut got_a: Vec<Vec<f32>> = vec![];
    let mut got_b: Vec<Vec<f32>> = vec![];
    // Step 1: a's first piece, all of b's prompt.
    store.reserve(1, split);
    store.reserve(2, pb);
    let mut batch = ForwardBatch::default();
    batch.push(1, 0, &a[..split], LogitsWanted::All);
    batch.push(2, 0, &b[..pb], LogitsWanted::All);
    let out = rows(&lm.model.forward(&batch, &mut store).unwrap());
    got_a.extend_from_slice(&out[..split]);
    got_b.extend_from_slice(&out[split..]);
    // Step 2: the rest of a's prompt next to b's first decode.
    store.reserve(1, pa);
    store.reserve(2, pb + 1);
    let mut batch = ForwardBatch::default();
    batch.push(2, pb, &b[pb..pb + 1], LogitsWanted::Last);
    batch.push(1, split, &a[split..pa], LogitsWanted::All);
    let out = rows(&lm.model.forward(&batch, &mut store).unwrap());
    got_b.push(out[0].clone());
    got_a.extend_from_slice(&out[1..]);
    // Decodes, both sequences in each step.
    let (mut na, mut nb) = (pa, pb + 1);
    let mut freed = 0;
    while na < a.len() || nb < b.len() {
        if let Some(w) = window {
            // The next query of each attends from its position + 1 - w on.
            freed += store.free_before(1, (na + 1).saturating_sub(w));
            freed += store.free_before(2, (nb + 1).saturating_sub(w));
        }
        let mut batch = ForwardBatch::default();
        if na < a.len() {
            store.reserve(1, na + 1);
            batch.push(1, na, &a[na..na + 1], LogitsWanted::Last);
        }
        if nb < b.len() {
            store.reserve(2, nb + 1);
            batch.push(2, nb, &b[nb..nb + 1], LogitsWanted::Last);
        }
        let out = rows(&lm.model.forward(&batch, &mut store).unwrap());
        let mut it = out.into_iter();
        if na < a.len() {
            got_a.push(it.next().unwrap());
            na += 1;
        }
        if nb < b.len() {
            got_b.push(it.next().unwrap());
            nb += 1;
        }
    }
    if window.is_some_and(|w| w + 2 * bs < a.len()) {
        assert!(freed > 0, "no block fell out of the window");
    }
    for (name, got, want) in [("a", &got_a, &want_a), ("b", &got_b, &want_b)] {
        assert_eq!(got.len(), want.len());
        for (p, (g, w)) in got.iter().zip(want.iter()).enumerate() {
            let d = max_abs_diff(g, w);
            assert!(
                d < 1e-4,
                "{dir:?} sequence {name} position {p}: paged vs tensor {d}"
            );
        }
    }
}

const SHAPES: [Shape; 4] = [
    // GQA, untied.
    Shape {
        heads: 4,
        kv_heads: 2,
        head_dim: None,
        tied: false,
    },
    // MHA, tied.
    Shape {
        heads: 4,
        kv_heads: 4,
        head_dim: None,
        tied: true,
    },
    // One KV head, tied.
    Shape {
        heads: 4,
        kv_heads: 1,
        head_dim: None,
        tied: true,
    },
    // MHA, untied.
    Shape {
        heads: 2,
        kv_heads: 2,
        head_dim: None,
        tied: false,
    },
];

#[test]
fn qwen2_matches_candle_transformers_and_the_paged_path() {
    for (i, s) in SHAPES.iter().enumerate() {
        let g = write_model("qwen2", *s, serde_json::json!({}), 10 + i as u64);
        let ids = prompt(40, i as u64);
        check_against_candle("qwen2", g.path(), &ids);
        check_paged_against_tensor(g.path(), &ids, &prompt(23, 100 + i as u64));
    }
}

/// Without its biases, the model is another one: the biases really are applied (a loader that
/// dropped them would still load a Qwen2 folder).
#[test]
fn qwen2_biases_change_the_logits() {
    let g = write_model("qwen2", SHAPES[0], serde_json::json!({}), 7);
    let ids = prompt(12, 3);
    let with = rows(&load(g.path()).model.logits_all(&ids).unwrap());
    let mut t =
        candle_core::safetensors::load(g.path().join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, v) in t.iter_mut() {
        if name.ends_with(".bias") {
            *v = v.zeros_like().unwrap();
        }
    }
    candle_core::safetensors::save(&t, g.path().join("model.safetensors")).unwrap();
    let without = rows(&load(g.path()).model.logits_all(&ids).unwrap());
    let d = max_abs_diff(&with[11], &without[11]);
    assert!(d > 1e-2, "biases moved the logits by only {d}");
}

/// YaRN on a Qwen2 model: the paged path equals the tensor path with the scaled table, and the
/// scaling changes the logits (the table itself is checked against HF's formula in rope.rs).
#[test]
fn qwen2_yarn_runs_on_both_paths() {
    let yarn = serde_json::json!({"rope_scaling": {"type": "yarn", "factor": 4.0,
        "original_max_position_embeddings": 16}, "rope_theta": 1000.0});
    let g = write_model("qwen2", SHAPES[0], yarn, 21);
    let ids = prompt(40, 5);
    check_paged_against_tensor(g.path(), &ids, &prompt(19, 6));
    let scaled = rows(&load(g.path()).model.logits_all(&ids).unwrap());
    let plain = write_model(
        "qwen2",
        SHAPES[0],
        serde_json::json!({"rope_theta": 1000.0}),
        21,
    );
    let unscaled = rows(&load(plain.path()).model.logits_all(&ids).unwrap());
    assert!(max_abs_diff(&scaled[39], &unscaled[39]) > 1e-3);
}

#[test]
fn qwen3_matches_candle_transformers_and_the_paged_path() {
    // Qwen3's head size is its own: also one that is not hidden / heads.
    let mut shapes = SHAPES.to_vec();
    shapes.push(Shape {
        heads: 4,
        kv_heads: 2,
        head_dim: Some(16),
        tied: false,
    });
    for (i, s) in shapes.iter().enumerate() {
        let g = write_model("qwen3", *s, serde_json::json!({}), 30 + i as u64);
        let ids = prompt(40, 20 + i as u64);
        check_against_candle("qwen3", g.path(), &ids);
        check_paged_against_tensor(g.path(), &ids, &prompt(23, 120 + i as u64));
    }
}

/// Mistral v0.1's sliding window, on prompts several windows long: the same logits as
/// candle-transformers' mistral, and the paged path (blocks outside the window given back as
/// it goes) equals the tensor path. Without the window the logits differ: it is in effect.
#[test]
fn mistral_sliding_window_matches_candle_transformers_and_the_paged_path() {
    let shapes = [SHAPES[0], SHAPES[3]];
    for (i, s) in shapes.iter().enumerate() {
        for window in [5usize, 12] {
            let g = write_model(
                "mistral",
                *s,
                serde_json::json!({"sliding_window": window}),
                50 + i as u64,
            );
            let ids = prompt(40, 40 + i as u64);
            check_against_candle("mistral", g.path(), &ids);
            check_paged_against_tensor(g.path(), &ids, &prompt(31, 140 + i as u64));
        }
    }
    let g = write_model(
        "mistral",
        SHAPES[0],
        serde_json::json!({"sliding_window": 8}),
        9,
    );
    let full = write_model("mistral", SHAPES[0], serde_json::json!({}), 9);
    let ids = prompt(30, 1);
    let windowed = rows(&load(g.path()).model.logits_all(&ids).unwrap());
    let unwindowed = rows(&load(full.path()).model.logits_all(&ids).unwrap());
    assert!(
        max_abs_diff(&windowed[7], &unwindowed[7]) < 1e-6,
        "inside the window"
    );
    assert!(
        max_abs_diff(&windowed[29], &unwindowed[29]) > 1e-3,
        "past the window"
    );
}

/// The folder's weights and config as a GGUF written by gguf-py, f32 like the folder, the
/// fixture's vocabulary ([`random_model::write_gguf`]).
fn write_gguf(dir: &Path, gguf_arch: &str) -> PathBuf {
    random_model::write_gguf(dir, gguf_arch, &Vocab::Fixture)
}

/// The same random weights as an HF folder and as a GGUF written by gguf-py: the same
/// configuration (features, head size, rope scaling, tying) and the same logits within 1e-4
/// (both f32); the GGUF's paged CPU path equals its tensor path.
#[test]
fn gguf_written_by_gguf_py_matches_the_hf_folder() {
    let yarn = serde_json::json!({"rope_scaling": {"type": "yarn", "factor": 4.0,
        "original_max_position_embeddings": 16}});
    let qwen3_dim = Shape {
        heads: 4,
        kv_heads: 2,
        head_dim: Some(16),
        tied: false,
    };
    let cases = [
        ("qwen2", "qwen2", SHAPES[0], serde_json::json!({})),
        ("qwen2", "qwen2", SHAPES[1], yarn),
        ("qwen3", "qwen3", qwen3_dim, serde_json::json!({})),
        ("qwen3", "qwen3", SHAPES[2], serde_json::json!({})),
        (
            "mistral",
            "llama",
            SHAPES[0],
            serde_json::json!({"sliding_window": 6}),
        ),
        // Llama 3.1's scaling, which llama.cpp's converter stores as the `rope_freqs`
        // tensor and no scaling keys (original context 16: every frequency class in play).
        (
            "llama",
            "llama",
            SHAPES[1],
            serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16}}),
        ),
        ("phi3", "phi3", SHAPES[1], serde_json::json!({})),
        // LongRoPE's factors as the converter writes them (tensors).
        ("phi3", "phi3", SHAPES[0], phi3_longrope(4)),
        // llama.cpp's fixed choices where a Gemma GGUF says nothing: the head size as
        // `query_pre_attn_scalar`, a global layer every 2nd (Gemma 2) or 6th (Gemma 3), a
        // local rope base of 10000.
        (
            "gemma2",
            "gemma2",
            GEMMA_SHAPES[0],
            serde_json::json!({"attn_logit_softcapping": 4.0, "final_logit_softcapping": 3.0,
                "sliding_window": 6}),
        ),
        (
            "gemma3",
            "gemma3",
            GEMMA_SHAPES[3],
            serde_json::json!({"sliding_window": 5, "num_hidden_layers": 6,
                "sliding_window_pattern": 6, "rope_local_base_freq": 10000.0,
                "rope_theta": 1000000.0}),
        ),
    ];
    for (n, (arch, gguf_arch, shape, extra)) in cases.into_iter().enumerate() {
        let g = write_model(arch, shape, extra, 70 + n as u64);
        let path = write_gguf(g.path(), gguf_arch);
        let (hf, gg) = (load(g.path()), load(&path));
        let (a, b) = (hf.model.config(), gg.model.config());
        assert_eq!(b.architecture, gguf_arch);
        assert_eq!(a.features, b.features, "{arch}");
        match (&a.rope_scaling, &b.rope_scaling) {
            (RopeScaling::Llama3 { .. }, RopeScaling::Frequencies { .. }) => {
                // Not an HF config's scaling: converting the GGUF back is refused.
                let out = tempfile::tempdir().unwrap();
                let err = camelid_model::load::convert::gguf_to_hf(&path, out.path(), DType::F32)
                    .unwrap_err();
                assert!(err.to_string().contains("rope_freqs"), "{err}");
            }
            (x, y) => assert_eq!(x, y, "{arch}"),
        }
        assert_eq!(
            (
                a.head_dim,
                a.num_heads,
                a.num_kv_heads,
                a.tie_word_embeddings
            ),
            (
                b.head_dim,
                b.num_heads,
                b.num_kv_heads,
                b.tie_word_embeddings
            ),
            "{arch}"
        );
        let ids = prompt(30, n as u64);
        let want = rows(&hf.model.logits_all(&ids).unwrap());
        let got = rows(&gg.model.logits_all(&ids).unwrap());
        for (p, (x, y)) in got.iter().zip(&want).enumerate() {
            let d = max_abs_diff(x, y);
            assert!(d < 1e-4, "{arch} as GGUF {gguf_arch}: position {p}: {d}");
            assert_eq!(common::top_k(x, 5), common::top_k(y, 5));
        }
        check_paged_against_tensor(&path, &ids, &prompt(17, 200 + n as u64));
    }
}

/// Phi-3's fused Q/K/V and gate/up matrices: the same logits as candle-transformers' phi3
/// and the paged path equals the tensor path.
#[test]
fn phi3_matches_candle_transformers_and_the_paged_path() {
    for (i, s) in SHAPES.iter().enumerate() {
        let g = write_model("phi3", *s, serde_json::json!({}), 90 + i as u64);
        let ids = prompt(40, 60 + i as u64);
        check_against_candle("phi3", g.path(), &ids);
        check_paged_against_tensor(g.path(), &ids, &prompt(23, 160 + i as u64));
    }
}

/// LongRoPE (Phi-3's long-context models): one table, the long factors of the context served
/// (here 256 past an original 8), at every position, as vLLM takes it. The paged path runs
/// the 30-token prompt as a first chunk that ends within the original context (8 tokens) and
/// a second past it: both rotate as the tensor path's single forward, or the first chunk's
/// cached keys would turn the short way and its later queries the long one. The factors
/// change the logits. The table itself is checked against HF's formula in rope.rs.
/// A Phi-3 LongRoPE config for [`SHAPES`]`[0]`: an original context of `orig`, short and long
/// factors growing with the frequency index.
fn phi3_longrope(orig: usize) -> serde_json::Value {
    let half = HIDDEN / SHAPES[0].heads / 2;
    let long: Vec<f32> = (0..half).map(|i| 1.0 + i as f32).collect();
    let short: Vec<f32> = (0..half).map(|i| 1.0 + 0.1 * i as f32).collect();
    serde_json::json!({"rope_scaling": {"type": "longrope",
        "short_factor": short, "long_factor": long},
        "original_max_position_embeddings": orig, "max_position_embeddings": 256})
}

#[test]
fn phi3_longrope_runs_on_both_paths() {
    let g = write_model("phi3", SHAPES[0], phi3_longrope(8), 99);
    let plain = write_model("phi3", SHAPES[0], serde_json::json!({}), 99);
    // (check_paged_against_tensor's first chunk of a 30-token prompt: 8 tokens.)
    let ids = prompt(30, 7);
    check_paged_against_tensor(g.path(), &ids, &prompt(19, 8));
    let scaled = rows(&load(g.path()).model.logits_all(&ids).unwrap());
    let unscaled = rows(&load(plain.path()).model.logits_all(&ids).unwrap());
    for p in [3, 29] {
        assert!(
            max_abs_diff(&scaled[p], &unscaled[p]) > 1e-3,
            "position {p}"
        );
    }
}

/// Tied Gemma shapes (candle's Gemma ties its embeddings): GQA, MHA, one KV head, and a head
/// size that is not hidden / heads.
const GEMMA_SHAPES: [Shape; 4] = [
    Shape {
        heads: 4,
        kv_heads: 2,
        head_dim: None,
        tied: true,
    },
    Shape {
        heads: 4,
        kv_heads: 4,
        head_dim: None,
        tied: true,
    },
    Shape {
        heads: 4,
        kv_heads: 1,
        head_dim: None,
        tied: true,
    },
    Shape {
        heads: 2,
        kv_heads: 1,
        head_dim: Some(16),
        tied: true,
    },
];

/// Gemma 2's soft-capping (values that bend these tiny models' scores and logits) and a
/// `query_pre_attn_scalar` other than the head size.
fn gemma2_extra(window: usize) -> serde_json::Value {
    serde_json::json!({"query_pre_attn_scalar": 24, "attn_logit_softcapping": 4.0,
        "final_logit_softcapping": 3.0, "sliding_window": window})
}

/// Gemma 2 (norms `1 + w`, GeGLU, scaled embeddings, post norms, both soft-cappings, its own
/// query scale) against candle-transformers' gemma2 over 40 tokens, and the paged path
/// against the tensor path with a 6-key window on every other layer; a one-layer model (layer
/// 0 is local) over prompts several windows long against candle's windowed gemma2.
#[test]
fn gemma2_matches_candle_transformers_and_the_paged_path() {
    for (i, s) in GEMMA_SHAPES.iter().enumerate() {
        let g = write_model("gemma2", *s, gemma2_extra(64), 300 + i as u64);
        let ids = prompt(40, 300 + i as u64);
        check_against_candle("gemma2", g.path(), &ids);
        check_paged_against_tensor(g.path(), &ids, &prompt(23, 310 + i as u64));
        let untied = Shape { tied: false, ..*s };
        let g = write_model("gemma2", untied, gemma2_extra(6), 320 + i as u64);
        let lm = load(g.path());
        let f = &lm.model.config().features;
        assert_eq!(
            (0..4).map(|l| f.layer_window(l)).collect::<Vec<_>>(),
            [Some(6), None, Some(6), None],
            "Gemma 2: even layers local"
        );
        assert_eq!(f.kv_window(), None, "a global layer needs every key");
        check_paged_against_tensor(g.path(), &ids, &prompt(31, 330 + i as u64));
        for window in [5, 12] {
            let mut extra = gemma2_extra(window);
            extra["num_hidden_layers"] = serde_json::json!(1);
            let g = write_model("gemma2", *s, extra, 340 + i as u64);
            check_against_candle("gemma2", g.path(), &ids);
            check_paged_against_tensor(g.path(), &ids, &prompt(31, 350 + i as u64));
        }
    }
}

/// Gemma 3 (Gemma 2's layers with Q/K norms, no soft-capping by default, local layers with
/// a rope base of their own) against candle-transformers' gemma3 over 40 tokens with windows
/// of 5 and 12 keys, a global layer every 2nd or 3rd; with soft-capping too; the paged path
/// against the tensor path.
#[test]
fn gemma3_matches_candle_transformers_and_the_paged_path() {
    for (i, s) in GEMMA_SHAPES.iter().enumerate() {
        for (window, layers, pattern) in [(5usize, 2usize, 2usize), (12, 3, 3)] {
            let mut extra = serde_json::json!({"query_pre_attn_scalar": 24,
                "sliding_window": window, "num_hidden_layers": layers,
                "sliding_window_pattern": pattern, "rope_local_base_freq": 100.0});
            if i == 1 {
                extra["attn_logit_softcapping"] = serde_json::json!(4.0);
                extra["final_logit_softcapping"] = serde_json::json!(3.0);
            }
            let g = write_model("gemma3", *s, extra, 400 + 10 * i as u64 + layers as u64);
            let ids = prompt(40, 400 + i as u64);
            check_against_candle("gemma3", g.path(), &ids);
            check_paged_against_tensor(g.path(), &ids, &prompt(31, 410 + i as u64));
        }
    }
    // Untied (HF's Gemma ties, a config may say otherwise): both paths agree.
    let untied = Shape {
        tied: false,
        ..GEMMA_SHAPES[0]
    };
    let g = write_model(
        "gemma3",
        untied,
        serde_json::json!({"sliding_window": 6}),
        430,
    );
    check_paged_against_tensor(g.path(), &prompt(40, 5), &prompt(23, 6));
}

/// Gemma 3's `layer_types` (newer configs) give the same layers as `sliding_window_pattern`,
/// and the global layers' rope scaling leaves the local layers' rope alone: a linear factor
/// changes the logits, and both paths agree with it.
#[test]
fn gemma3_layer_types_and_global_rope_scaling() {
    let layer_types = serde_json::json!({"sliding_window": 5, "num_hidden_layers": 3,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"]});
    let pattern = serde_json::json!({"sliding_window": 5, "num_hidden_layers": 3,
        "sliding_window_pattern": 3});
    let a = write_model("gemma3", GEMMA_SHAPES[0], layer_types, 440);
    let b = write_model("gemma3", GEMMA_SHAPES[0], pattern, 440);
    let ids = prompt(30, 9);
    let (la, lb) = (load(a.path()), load(b.path()));
    assert_eq!(la.model.config().features, lb.model.config().features);
    let (x, y) = (
        rows(&la.model.logits_all(&ids).unwrap()),
        rows(&lb.model.logits_all(&ids).unwrap()),
    );
    assert!(max_abs_diff(&x[29], &y[29]) < 1e-6);
    let scaled = serde_json::json!({"sliding_window": 5, "num_hidden_layers": 3,
        "sliding_window_pattern": 3, "rope_scaling": {"rope_type": "linear", "factor": 4.0}});
    let c = write_model("gemma3", GEMMA_SHAPES[0], scaled, 440);
    check_paged_against_tensor(c.path(), &ids, &prompt(19, 10));
    let lc = load(c.path());
    let z = rows(&lc.model.logits_all(&ids).unwrap());
    assert!(
        max_abs_diff(&z[29], &y[29]) > 1e-3,
        "the scaling is applied"
    );
    // Gemma 3's context already counts the factor (131072 with 8): not stretched again.
    assert_eq!(lc.context_length, lc.model.config().max_position_embeddings);
    let bad = serde_json::json!({"sliding_window": 5, "num_hidden_layers": 3,
        "layer_types": ["full_attention", "sliding_attention", "sliding_attention"]});
    let d = write_model("gemma3", GEMMA_SHAPES[0], bad, 440);
    let e = camelid_model::load(
        Some(d.path().to_str().unwrap()),
        &camelid_model::LoadOptions::default(),
    )
    .err()
    .expect("an irregular layer_types is refused")
    .to_string();
    assert!(e.contains("layer_types"), "{e}");
}

/// A Gemma 2 GGUF without the soft-capping keys caps as llama.cpp and HF's `Gemma2Config`
/// do by default (scores 50, logits 30); its keys, where present, win.
#[test]
fn gemma2_gguf_without_softcap_keys_takes_the_defaults() {
    let bare = write_model(
        "gemma2",
        GEMMA_SHAPES[0],
        serde_json::json!({"sliding_window": 6}),
        450,
    );
    let f = load(&write_gguf(bare.path(), "gemma2"))
        .model
        .config()
        .features
        .clone();
    assert_eq!((f.attn_softcap, f.final_softcap), (Some(50.0), Some(30.0)));
    let keyed = write_model("gemma2", GEMMA_SHAPES[0], gemma2_extra(6), 451);
    let f = load(&write_gguf(keyed.path(), "gemma2"))
        .model
        .config()
        .features
        .clone();
    assert_eq!((f.attn_softcap, f.final_softcap), (Some(4.0), Some(3.0)));
}

/// GGUF keys read as llama.cpp reads them: Gemma 2 without `sliding_window` has its 4096
/// window on every other layer; a window of 0 is none (what the converter writes for Phi-4);
/// the end-of-turn and end-of-message ids end generation (Gemma's GGUF names only `<eos>` as
/// EOS: its turns end with `<end_of_turn>`, the eot id).
#[test]
fn gguf_window_and_end_of_turn_keys_read_as_llama_cpp() {
    let bare = write_model("gemma2", GEMMA_SHAPES[0], serde_json::json!({}), 452);
    let f = load(&write_gguf(bare.path(), "gemma2"))
        .model
        .config()
        .features
        .clone();
    assert_eq!((f.sliding_window, f.global_every), (Some(4096), Some(2)));
    let phi = write_model("phi3", SHAPES[0], serde_json::json!({}), 453);
    let zero = load(&random_model::write_gguf_with(
        phi.path(),
        "phi3",
        &Vocab::Fixture,
        serde_json::json!({"phi3.attention.sliding_window": 0}),
    ));
    assert_eq!(zero.model.config().features.sliding_window, None);
    let eot = write_model("llama", SHAPES[0], serde_json::json!({}), 454);
    let lm = load(&random_model::write_gguf_with(
        eot.path(),
        "llama",
        &Vocab::Fixture,
        serde_json::json!({"tokenizer.ggml.eot_token_id": 7, "tokenizer.ggml.eom_token_id": 9}),
    ));
    assert_eq!(lm.tokenizer.eos_ids, vec![2, 7, 9]);
    assert!(
        [2, 7, 9].iter().all(|i| lm.stop_token_ids.contains(i)),
        "{:?}",
        lm.stop_token_ids
    );
}

/// A linear rope factor stretches the served context (vicuna-7b-v1.5-16k: 4096 × 4, as vLLM
/// serves it), from an HF config and from a GGUF; a GGUF of 2023's converters, which wrote
/// only `rope.scale_linear` (no type, no `rope.scaling.factor`), reads as linear as
/// llama.cpp reads it: the same logits as the HF folder with `rope_scaling` linear 4.
#[test]
fn a_linear_rope_factor_stretches_the_context_and_reads_from_the_old_gguf_key() {
    let linear = serde_json::json!({"rope_scaling": {"type": "linear", "factor": 4.0}});
    let hf = write_model("llama", SHAPES[0], linear, 460);
    let plain = write_model("llama", SHAPES[0], serde_json::json!({}), 460);
    let scaled = load(hf.path());
    assert_eq!(
        (
            scaled.model.config().max_position_embeddings,
            scaled.context_length
        ),
        (256, 1024)
    );
    assert_eq!(load(plain.path()).context_length, 256);
    let modern = load(&write_gguf(hf.path(), "llama"));
    assert_eq!(
        modern.context_length, 1024,
        "the GGUF's factor stretches it too"
    );
    let old = load(&random_model::write_gguf_with(
        plain.path(),
        "llama",
        &Vocab::Fixture,
        serde_json::json!({"llama.rope.scale_linear": 4.0}),
    ));
    assert_eq!(
        old.model.config().rope_scaling,
        RopeScaling::Linear { factor: 4.0 }
    );
    assert_eq!(old.context_length, 1024);
    let ids = prompt(40, 460);
    let want = rows(&scaled.model.logits_all(&ids).unwrap());
    let got = rows(&old.model.logits_all(&ids).unwrap());
    for (p, (x, y)) in got.iter().zip(&want).enumerate() {
        let d = max_abs_diff(x, y);
        assert!(d < 1e-4, "position {p}: {d}");
    }
}

/// Gemma 3 4B/12B/27B are published as `Gemma3ForConditionalGeneration`: the config nests the
/// language model's as `text_config` (only what differs from `Gemma3TextConfig`'s defaults),
/// the weights sit under `language_model.model.` beside a vision tower, the template in
/// `chat_template.json`. The same weights rewritten that way serve the same logits and template
/// as the text-only folder; a stored name camelid does not map is not read.
#[test]
fn gemma3_multimodal_checkpoint_serves_its_language_model() {
    let heads = GEMMA_SHAPES[0];
    let extra = serde_json::json!({"sliding_window": 5, "num_hidden_layers": 3,
        "sliding_window_pattern": 3, "rope_local_base_freq": 10000.0, "rope_theta": 1e6,
        "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-6, "max_position_embeddings": 131072,
        "vocab_size": VOCAB});
    let text = write_model("gemma3", heads, extra, 450);
    let template = "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}";
    let mm = tempfile::tempdir().unwrap();
    for prefix in ["language_model.model.", "model.language_model."] {
        let st =
            candle_core::safetensors::load(text.path().join("model.safetensors"), &Device::Cpu)
                .unwrap();
        let mut renamed: HashMap<String, Tensor> = st
            .into_iter()
            .map(|(k, v)| (format!("{prefix}{}", k.strip_prefix("model.").unwrap()), v))
            .collect();
        renamed.insert(
            "vision_tower.vision_model.embeddings.patch_embedding.weight".into(),
            Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&renamed, mm.path().join("model.safetensors")).unwrap();
        let own: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(text.path().join("config.json")).unwrap(),
        )
        .unwrap();
        // The text_config lists only what differs from Gemma3TextConfig's defaults.
        let mut text_config = serde_json::json!({"model_type": "gemma3_text"});
        for k in [
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "vocab_size",
            "sliding_window",
            "sliding_window_pattern",
        ] {
            text_config[k] = own[k].clone();
        }
        let cfg = serde_json::json!({"architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3", "bos_token_id": 1, "eos_token_id": [2],
            "text_config": text_config, "vision_config": {"hidden_size": 4}});
        std::fs::write(mm.path().join("config.json"), cfg.to_string()).unwrap();
        std::fs::copy(
            text.path().join("tokenizer.model"),
            mm.path().join("tokenizer.model"),
        )
        .unwrap();
        std::fs::write(
            mm.path().join("chat_template.json"),
            serde_json::json!({ "chat_template": template }).to_string(),
        )
        .unwrap();
        let (a, b) = (load(text.path()), load(mm.path()));
        assert_eq!(a.model.config().features, b.model.config().features);
        let ids = prompt(20, 11);
        let (x, y) = (
            rows(&a.model.logits_all(&ids).unwrap()),
            rows(&b.model.logits_all(&ids).unwrap()),
        );
        assert_eq!(x, y, "{prefix}");
        let chat = b
            .template
            .render(&[camelid_model::Message::new("user", "hi")], true)
            .unwrap();
        assert!(
            chat.contains("<start_of_turn>user\nhi<end_of_turn>"),
            "{chat}"
        );
    }
}

/// A bare base model's checkpoint (`LlamaModel`, `MistralModel`: sentence-transformers'
/// embedding models such as e5-mistral) stores its tensors without `model.` and has no
/// `lm_head`: it loads as the same decoder, computing what the prefixed checkpoint computes.
#[test]
fn bare_base_model_checkpoints_load_as_the_decoder() {
    for (arch, class) in [("llama", "LlamaModel"), ("mistral", "MistralModel")] {
        let src = write_model(arch, SHAPES[0], serde_json::json!({}), 495);
        let st = candle_core::safetensors::load(src.path().join("model.safetensors"), &Device::Cpu)
            .unwrap();
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.path().join("config.json")).unwrap())
                .unwrap();
        // Both without lm_head, the embeddings tied (the head of either is the table).
        cfg["tie_word_embeddings"] = true.into();
        let prefixed = tempfile::tempdir().unwrap();
        let bare = tempfile::tempdir().unwrap();
        let mut with: HashMap<String, Tensor> = HashMap::new();
        let mut without: HashMap<String, Tensor> = HashMap::new();
        for (k, v) in st {
            if let Some(rest) = k.strip_prefix("model.") {
                without.insert(rest.to_string(), v.clone());
                with.insert(k, v);
            }
        }
        assert!(without.contains_key("embed_tokens.weight") && without.len() > 4);
        for (d, tensors, architectures) in [
            (
                &prefixed,
                &with,
                format!("{class}ForCausalLM").replace("ModelFor", "For"),
            ),
            (&bare, &without, class.to_string()),
        ] {
            candle_core::safetensors::save(tensors, d.path().join("model.safetensors")).unwrap();
            let mut c = cfg.clone();
            c["architectures"] = serde_json::json!([architectures]);
            std::fs::write(d.path().join("config.json"), c.to_string()).unwrap();
            for f in std::fs::read_dir(src.path()).unwrap() {
                let f = f.unwrap().path();
                let name = f.file_name().unwrap().to_str().unwrap().to_string();
                if name != "model.safetensors" && name != "config.json" {
                    std::fs::copy(&f, d.path().join(name)).unwrap();
                }
            }
        }
        let (a, b) = (load(prefixed.path()), load(bare.path()));
        let ids = prompt(20, 12);
        let (x, y) = (
            rows(&a.model.logits_all(&ids).unwrap()),
            rows(&b.model.logits_all(&ids).unwrap()),
        );
        assert_eq!(x, y, "{class}");
    }
}

/// Files that would load wrongly or not at all are refused with the reason: a layer count
/// beyond the weights (a count is never trusted for an allocation: it panicked with a
/// capacity overflow), a folder of several GGUFs, a split GGUF's shards, partial rotary.
#[test]
fn model_files_camelid_cannot_serve_are_refused_by_name() {
    let err = |r: camelid_model::Result<LoadedModel>| match r {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    let opts = camelid_model::LoadOptions::default();
    let dir = write_model("llama", SHAPES[0], serde_json::json!({}), 460);
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let gguf = write_gguf(dir.path(), "llama");
    let with = |keys: serde_json::Value| {
        random_model::write_gguf_with(dir.path(), "llama", &Vocab::Fixture, keys)
    };
    let shard = with(serde_json::json!({"split.count": 3}));
    let partial = with(serde_json::json!({"llama.rope.dimension_count": 4}));
    cfg["num_hidden_layers"] = serde_json::json!(1_000_000_000_000_000u64);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = err(camelid_model::load(dir.path().to_str(), &opts));
    assert!(e.contains("model.layers.2"), "{e}");

    let folder = tempfile::tempdir().unwrap();
    for name in ["m.Q4_0.gguf", "m.Q8_0.gguf"] {
        std::fs::copy(&gguf, folder.path().join(name)).unwrap();
    }
    let e = err(camelid_model::load(folder.path().to_str(), &opts));
    assert!(
        e.contains("several GGUF files (m.Q4_0.gguf, m.Q8_0.gguf)"),
        "{e}"
    );
    let split = tempfile::tempdir().unwrap();
    std::fs::copy(&gguf, split.path().join("m-00001-of-00002.gguf")).unwrap();
    let e = err(camelid_model::load(split.path().to_str(), &opts));
    assert!(e.contains("split GGUF"), "{e}");
    let e = err(camelid_model::load(shard.to_str(), &opts));
    assert!(e.contains("split in 3"), "{e}");
    let e = err(camelid_model::load(partial.to_str(), &opts));
    assert!(e.contains("partial rotary"), "{e}");
}

/// An F16 GGUF (its matrices read straight into the 16-bit kernels' layout) gives the logits
/// of the same weights in an HF folder of F16 safetensors (read through candle), and the f32
/// model's within f16's rounding.
#[test]
fn f16_gguf_matches_the_f16_safetensors_of_the_same_weights() {
    let dir = write_model("llama", SHAPES[0], serde_json::json!({}), 480);
    let gguf = random_model::write_gguf_f16(dir.path(), "llama", &Vocab::Fixture);
    let f32_model = load(dir.path());
    // The folder's matrices as F16, as `--outtype f16` rounds them.
    let st = dir.path().join("model.safetensors");
    let tensors = candle_core::safetensors::load(&st, &candle_core::Device::Cpu).unwrap();
    let half: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(n, t)| {
            let t = if t.rank() == 2 {
                t.to_dtype(DType::F16).unwrap()
            } else {
                t
            };
            (n, t)
        })
        .collect();
    candle_core::safetensors::save(&half, &st).unwrap();
    let (hf, gg) = (load(dir.path()), load(&gguf));
    assert!(
        gg.model.own_kernel_matmuls().0 > 0,
        "the GGUF's matrices run on the 16-bit kernels"
    );
    let ids = prompt(30, 480);
    let (want, got) = (
        rows(&hf.model.logits_all(&ids).unwrap()),
        rows(&gg.model.logits_all(&ids).unwrap()),
    );
    let exact = rows(&f32_model.model.logits_all(&ids).unwrap());
    for (p, ((x, y), z)) in got.iter().zip(&want).zip(&exact).enumerate() {
        let d = max_abs_diff(x, y);
        assert!(d < 1e-4, "position {p}: F16 GGUF vs F16 safetensors: {d}");
        let r = max_abs_diff(x, z);
        assert!(r > 0.0 && r < 0.05, "position {p}: F16 vs f32: {r}");
    }
}

/// A `tokenizer.json` whose post-processor adds the BOS (Llama 3's `TemplateProcessing`) and
/// a tokenizer_config.json without `add_bos_token`: prompts get the BOS, as HF's
/// `tokenizer(text)` gives them; without that post-processor they do not.
#[test]
fn a_post_processor_that_adds_bos_is_followed() {
    let dir = write_model("llama", SHAPES[0], serde_json::json!({}), 470);
    let spm =
        camelid_model::text::tokenizer::from_sentencepiece(&dir.path().join("tokenizer.model"))
            .unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&spm.to_json_string().unwrap()).unwrap();
    std::fs::remove_file(dir.path().join("tokenizer.model")).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": "</s>"}"#,
    )
    .unwrap();
    let first = |doc: &serde_json::Value| {
        std::fs::write(dir.path().join("tokenizer.json"), doc.to_string()).unwrap();
        let lm = load(dir.path());
        // A chat prompt through a template that writes no BOS gets none, as HF's
        // apply_chat_template (it tokenizes without special tokens).
        let lm = lm
            .with_chat_template(
                "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}".into(),
            )
            .unwrap();
        let chat = camelid_model::text::chat_prompt::chat_prompt_ids(
            &lm.template,
            &lm.tokenizer,
            &[camelid_model::text::template::Message::new("user", "hi")],
            true,
        )
        .unwrap();
        assert_ne!(chat[0], 1, "a chat prompt gets only its template's BOS");
        lm.tokenizer.encode("hi", true).unwrap()[0]
    };
    doc["post_processor"] = serde_json::Value::Null;
    assert_ne!(first(&doc), 1, "no BOS without the post-processor");
    doc["post_processor"] = serde_json::json!({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}});
    assert_eq!(first(&doc), 1);
}

/// `camelid convert` past its shard size writes `model-0000k-of-0000n.safetensors` and their
/// index (holding one shard at a time, not the whole dequantized model): the folder loads to
/// the same logits as the one-file conversion.
#[test]
fn a_sharded_conversion_loads_as_the_one_file() {
    let dir = write_model("llama", SHAPES[0], serde_json::json!({}), 472);
    let gguf = write_gguf(dir.path(), "llama");
    let (one, many) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    camelid_model::load::convert::gguf_to_hf(&gguf, one.path(), DType::F32).unwrap();
    // A shard of 40 000 bytes: several tensors a shard, and shards of one.
    camelid_model::load::convert::gguf_to_hf_sharded(&gguf, many.path(), DType::F32, 40_000)
        .unwrap();
    assert!(one.path().join("model.safetensors").exists());
    assert!(!one.path().join("model.safetensors.index.json").exists());
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(many.path().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let files: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(files.len() > 2, "{files:?}");
    for f in &files {
        assert!(many.path().join(f).exists(), "{f}");
        assert!(
            f.ends_with(&format!("-of-{:05}.safetensors", files.len())),
            "{f}"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(many.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let ids = prompt(20, 472);
    let (a, b) = (load(one.path()), load(many.path()));
    assert_eq!(
        rows(&a.model.logits_all(&ids).unwrap()),
        rows(&b.model.logits_all(&ids).unwrap())
    );
}

/// `camelid convert`'s tokenizer.json adds the BOS (and appends the EOS) as the GGUF says, in
/// its post-processor: transformers' `PreTrainedTokenizerFast`, vLLM and TGI read special
/// tokens from there alone, and encoded the converted model's prompts without its BOS. The
/// folder loaded back by camelid encodes as the GGUF does.
#[test]
fn converted_tokenizers_add_the_special_tokens_the_gguf_names() {
    let dir = write_model("llama", SHAPES[0], serde_json::json!({}), 471);
    for (bos, eos) in [(true, false), (true, true), (false, false)] {
        let gguf = random_model::write_gguf_with(
            dir.path(),
            "llama",
            &Vocab::Fixture,
            serde_json::json!({"tokenizer.ggml.add_bos_token": bos,
                               "tokenizer.ggml.add_eos_token": eos}),
        );
        let out = tempfile::tempdir().unwrap();
        camelid_model::load::convert::gguf_to_hf(&gguf, out.path(), DType::F32).unwrap();
        let from_gguf = load(&gguf);
        let tok = &from_gguf.tokenizer;
        let plain = tok.encode("hello world", false).unwrap();
        let mut want = plain.clone();
        if bos {
            want.insert(0, tok.bos_id.unwrap());
        }
        if eos {
            want.push(tok.eos_ids[0]);
        }
        let hf = tokenizers::Tokenizer::from_file(out.path().join("tokenizer.json")).unwrap();
        let with_specials = hf.encode("hello world", true).unwrap().get_ids().to_vec();
        assert_eq!(with_specials, want, "add_bos {bos}, add_eos {eos}");
        let back = load(out.path());
        assert_eq!(
            back.tokenizer.encode("hello world", true).unwrap(),
            tok.encode("hello world", true).unwrap(),
            "add_bos {bos}, add_eos {eos}"
        );
        assert_eq!(back.tokenizer.eos_appended, tok.eos_appended);
    }
}

/// What an embedding model's files say, read as llama.cpp and sentence-transformers read it:
/// GGUF's `pooling_type` (1 mean, 3 last) and `add_eos_token` (the EOS ends an embedding
/// input, not a prompt to generate from), and an HF folder's `1_Pooling/config.json`.
#[test]
fn embedding_models_name_their_pooling_and_appended_token() {
    use camelid_model::Pooling;
    let dir = write_model("llama", SHAPES[0], serde_json::json!({}), 470);
    let with = |keys: serde_json::Value| {
        load(&random_model::write_gguf_with(
            dir.path(),
            "llama",
            &Vocab::Fixture,
            keys,
        ))
    };
    let plain = load(&write_gguf(dir.path(), "llama"));
    assert_eq!(plain.pooling, None);
    assert_eq!(plain.tokenizer.eos_appended, None);
    let mean =
        with(serde_json::json!({"llama.pooling_type": 1, "tokenizer.ggml.add_eos_token": true}));
    assert_eq!(mean.pooling, Some(Pooling::Mean));
    let eos = mean.tokenizer.eos_ids[0];
    assert_eq!(mean.tokenizer.eos_appended, Some(eos));
    let text = mean.tokenizer.encode("hello world", true).unwrap();
    let embedded = mean.tokenizer.encode_for_embedding("hello world").unwrap();
    assert_ne!(text.last(), Some(&eos));
    assert_eq!(embedded, [text, vec![eos]].concat());
    let last = with(serde_json::json!({"llama.pooling_type": 3}));
    assert_eq!(last.pooling, Some(Pooling::Last));
    // CLS (2) is a pooling camelid does not compute: named as a gap (embeddings refused),
    // not left to the server's default as if the file named none.
    let cls = with(serde_json::json!({"llama.pooling_type": 2}));
    assert_eq!(cls.pooling, None);
    assert!(cls
        .embedding_gaps
        .pooling
        .as_deref()
        .is_some_and(|p| p.contains("CLS")));
    assert_eq!(last.embedding_gaps, Default::default());
    // sentence-transformers' folder layout.
    assert_eq!(load(dir.path()).pooling, None);
    std::fs::create_dir_all(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 64, "pooling_mode_cls_token": false,
            "pooling_mode_mean_tokens": false, "pooling_mode_lasttoken": true}"#,
    )
    .unwrap();
    assert_eq!(load(dir.path()).pooling, Some(Pooling::Last));
    // Its modules: the transformer, the pooling and the normalisation are computed; a Dense
    // projection after them is not (stella's layout).
    let modules = |extra: serde_json::Value| {
        let mut list = serde_json::json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]);
        list.as_array_mut()
            .unwrap()
            .extend(extra.as_array().unwrap().clone());
        std::fs::write(dir.path().join("modules.json"), list.to_string()).unwrap();
        load(dir.path()).embedding_gaps
    };
    assert_eq!(modules(serde_json::json!([])), Default::default());
    let dense = modules(serde_json::json!([
        {"idx": 3, "name": "3", "path": "2_Dense_1024", "type": "sentence_transformers.models.Dense"}]));
    assert_eq!(
        dense.modules,
        ["2_Dense_1024 (sentence_transformers.models.Dense)"]
    );
    std::fs::remove_file(dir.path().join("modules.json")).unwrap();
    // A pooling mode camelid lacks, or two (whose vectors sentence-transformers joins).
    for modes in [
        r#"{"pooling_mode_cls_token": true, "pooling_mode_lasttoken": false}"#,
        r#"{"pooling_mode_weightedmean_tokens": true}"#,
        r#"{"pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": true}"#,
    ] {
        std::fs::write(dir.path().join("1_Pooling/config.json"), modes).unwrap();
        let lm = load(dir.path());
        assert_eq!(lm.pooling, None, "{modes}");
        assert!(lm.embedding_gaps.pooling.is_some(), "{modes}");
    }
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"pooling_mode_lasttoken": true}"#,
    )
    .unwrap();
    // An HF tokenizer.json whose post-processor appends the EOS (Qwen3-Embedding's way).
    assert_eq!(load(dir.path()).tokenizer.eos_appended, None);
    let mut doc: serde_json::Value =
        serde_json::from_str(&plain.tokenizer.to_json_string().unwrap()).unwrap();
    let eos_text = plain.tokenizer.id_to_token(eos).unwrap();
    let seq = serde_json::json!({"Sequence": {"id": "A", "type_id": 0}});
    let end = serde_json::json!({"SpecialToken": {"id": eos_text, "type_id": 0}});
    doc["post_processor"] = serde_json::json!({"type": "TemplateProcessing",
        "single": [seq, end], "pair": [seq, end],
        "special_tokens": {eos_text.clone(): {"id": eos_text, "ids": [eos], "tokens": [eos_text]}}});
    std::fs::write(dir.path().join("tokenizer.json"), doc.to_string()).unwrap();
    let hf = load(dir.path());
    assert_eq!(hf.tokenizer.eos_appended, Some(eos));
    // `tokenizer_config.json`'s `add_eos_token` decides over the post-processor, as in
    // transformers.
    let cfg = |v: serde_json::Value| {
        std::fs::write(dir.path().join("tokenizer_config.json"), v.to_string()).unwrap();
        load(dir.path()).tokenizer.eos_appended
    };
    assert_eq!(cfg(serde_json::json!({"add_eos_token": false})), None);
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(cfg(serde_json::json!({})), None);
    assert_eq!(
        cfg(serde_json::json!({"add_eos_token": true, "eos_token": eos_text})),
        Some(eos)
    );
    assert_eq!(
        hf.tokenizer
            .encode_for_embedding("hello world")
            .unwrap()
            .last(),
        Some(&eos)
    );
}

/// A code model's fill-in-the-middle tokens, from GGUF's `fim_*_token_id` keys (as llama.cpp
/// reads them), and the infill prompt they make: BOS (this vocabulary adds one), `FIM_PRE`
/// prefix `FIM_SUF` suffix `FIM_MID`.
#[test]
fn gguf_fim_tokens_make_the_infill_prompt() {
    use camelid_model::text::tokenizer::FimTokens;
    let dir = write_model("llama", SHAPES[0], serde_json::json!({}), 471);
    let plain = load(&write_gguf(dir.path(), "llama"));
    assert_eq!(plain.tokenizer.fim, None);
    assert_eq!(plain.tokenizer.encode_infill("a", "b").unwrap(), None);
    let coder = load(&random_model::write_gguf_with(
        dir.path(),
        "llama",
        &Vocab::Fixture,
        serde_json::json!({"tokenizer.ggml.fim_pre_token_id": 5,
            "tokenizer.ggml.fim_suf_token_id": 6, "tokenizer.ggml.fim_mid_token_id": 7}),
    ));
    let tok = &coder.tokenizer;
    assert_eq!(
        tok.fim,
        Some(FimTokens {
            prefix: 5,
            suffix: 6,
            middle: 7
        })
    );
    let ids = tok.encode_infill("hello", "world").unwrap().unwrap();
    let bos = tok.bos_id.unwrap();
    let want = [
        vec![bos, 5],
        tok.encode("hello", false).unwrap(),
        vec![6],
        tok.encode("world", false).unwrap(),
        vec![7],
    ]
    .concat();
    assert_eq!(ids, want);
}

/// Where a folder's chat template comes from, in transformers' order: `chat_template.jinja`
/// wins over tokenizer_config.json's (newer transformers save it there), which wins over
/// `chat_template.json`'s; a null one is none; a list of named templates gives its
/// "default", and without one no template of the folder is used (the built-in one is); its
/// "tool_use" renders requests with tools unless another template was chosen.
#[test]
fn chat_templates_are_found_in_transformers_order() {
    let dir = write_model("llama", SHAPES[0], serde_json::json!({}), 490);
    let d = dir.path();
    let cfg_path = d.join("tokenizer_config.json");
    let mut cfg: serde_json::Value = std::fs::read_to_string(&cfg_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    let x = [camelid_model::Message::new("user", "x")];
    let loaded = |cfg: &serde_json::Value| {
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        load(d)
    };
    let rendered = |cfg: &serde_json::Value| loaded(cfg).template.render(&x, false).unwrap();
    let tool_rendered = |lm: &LoadedModel| {
        lm.tool_template
            .as_ref()
            .map(|t| t.render(&x, false).unwrap())
    };
    let t =
        |tag: &str| format!("{tag}{{% for m in messages %}}{{{{ m['content'] }}}}{{% endfor %}}");
    cfg["chat_template"] = serde_json::json!(t("CONFIG:"));
    std::fs::write(d.join("chat_template.jinja"), t("FILE:")).unwrap();
    std::fs::write(
        d.join("chat_template.json"),
        serde_json::json!({"chat_template": t("JSON:")}).to_string(),
    )
    .unwrap();
    assert_eq!(rendered(&cfg), "FILE:x");
    std::fs::remove_file(d.join("chat_template.jinja")).unwrap();
    assert_eq!(rendered(&cfg), "CONFIG:x");
    cfg["chat_template"] = serde_json::Value::Null;
    assert_eq!(rendered(&cfg), "JSON:x");
    std::fs::remove_file(d.join("chat_template.json")).unwrap();
    cfg["chat_template"] = serde_json::json!([{"name": "tool_use", "template": t("TOOLS:")},
                                              {"name": "default", "template": t("DEFAULT:")}]);
    assert_eq!(rendered(&cfg), "DEFAULT:x");
    // The list's "tool_use" renders requests with tools (transformers' choice).
    assert_eq!(tool_rendered(&loaded(&cfg)).as_deref(), Some("TOOLS:x"));
    let builtin_chosen = camelid_model::load(
        Some(d.to_str().unwrap()),
        &camelid_model::LoadOptions {
            template: Some("chatml".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(tool_rendered(&builtin_chosen), None);
    let flag = loaded(&cfg).with_chat_template(t("FLAG:")).unwrap();
    assert_eq!(tool_rendered(&flag), None);
    cfg["chat_template"] = serde_json::json!([{"name": "tool_use", "template": t("TOOLS:")}]);
    let builtin = rendered(&cfg);
    assert!(
        !builtin.contains("TOOLS:") && builtin.contains('x'),
        "{builtin}"
    );
    assert_eq!(tool_rendered(&loaded(&cfg)).as_deref(), Some("TOOLS:x"));
    cfg["chat_template"] = serde_json::json!(t("CONFIG:"));
    assert_eq!(tool_rendered(&loaded(&cfg)), None);

    // A GGUF keeps the list's other templates as `tokenizer.chat_template.NAME`
    // (llama.cpp's converter); its "tool_use" is the one llama.cpp renders tools with.
    let gguf = load(&random_model::write_gguf_with(
        d,
        "llama",
        &Vocab::Fixture,
        serde_json::json!({"tokenizer.chat_template": t("GGUF:"),
                           "tokenizer.chat_template.tool_use": t("GGUFTOOLS:")}),
    ));
    assert_eq!(gguf.template.render(&x, false).unwrap(), "GGUF:x");
    assert_eq!(tool_rendered(&gguf).as_deref(), Some("GGUFTOOLS:x"));
}
