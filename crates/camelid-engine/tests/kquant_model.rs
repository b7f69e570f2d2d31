//! A small random-weight LLaMA in Q4_K_M's mix of K formats (Q4_K, Q6_K, and a Q5_K tensor)
//! through the CPU serving path (paged host cache, prefill and decode): camelid's own K-quant
//! kernels against candle's `QMatMul` on the same file.
//!
//! Both quantize the activations to Q8_K (8 bits per value, one f32 scale per 256) and do the
//! integer products exactly; they differ only in rounding (candle's scale is −127/max with a
//! signed max and round-half-away, ours 127/|max| with ties to even, so a value exactly between
//! two steps may land one step apart) and in the float summation order. Measured here:
//! `max |Δlogit|` ~1e-5 of logits spanning ±22. The bound, 1e-3, leaves room for a few such
//! one-step flips (each moves a logit by about one activation step times a weight, ~1e-4
//! here) but not for a wrong scale, sub-block or row, which moves logits by whole units; every
//! greedy token must be the same.

#[path = "../../camelid-model/tests/common/mod.rs"]
mod common;
mod paged_greedy;

use camelid_model::LoadOptions;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use paged_greedy::{argmax, greedy};
use rand::{Rng, SeedableRng};
use std::path::Path;

const HIDDEN: usize = 256;
const FFN: usize = 512;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const LAYERS: usize = 2;

/// Writes the random model: the default model's tokenizer and template metadata, a small
/// LLaMA shape, and Q4_K_M's format per tensor (Q6_K for `output`, one layer's `attn_v` and
/// `ffn_down`, as llama-quantize does), plus a Q5_K `ffn_down` in the other layer.
fn write_model(path: &Path) {
    let mut f = std::fs::File::open(common::default_gguf()).unwrap();
    let base = gguf_file::Content::read(&mut f).unwrap();
    let vocab = match base.metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(t)) => t.len(),
        _ => panic!("default model has no token list"),
    };
    let mut meta: Vec<(String, Value)> = base
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("llama."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let u32s = [
        ("llama.embedding_length", HIDDEN),
        ("llama.feed_forward_length", FFN),
        ("llama.block_count", LAYERS),
        ("llama.attention.head_count", HEADS),
        ("llama.attention.head_count_kv", KV_HEADS),
        ("llama.context_length", 2048),
        ("llama.rope.dimension_count", HIDDEN / HEADS),
        ("llama.vocab_size", vocab),
    ];
    meta.extend(u32s.map(|(k, v)| (k.to_string(), Value::U32(v as u32))));
    meta.push((
        "llama.attention.layer_norm_rms_epsilon".into(),
        Value::F32(1e-5),
    ));
    meta.push(("llama.rope.freq_base".into(), Value::F32(10000.0)));

    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let mut tensor = |rows: usize, cols: usize, scale: f32, t: GgmlDType| {
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0f32..1.0) * scale)
            .collect();
        let shape: Vec<usize> = if rows == 1 {
            vec![cols]
        } else {
            vec![rows, cols]
        };
        let x = Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
        QTensor::quantize(&x, t).unwrap()
    };
    let (q4, q5, q6, f32_) = (
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
        GgmlDType::F32,
    );
    let kv = KV_HEADS * HIDDEN / HEADS;
    let mut tensors = vec![
        (
            "token_embd.weight".to_string(),
            tensor(vocab, HIDDEN, 1.0, q4),
        ),
        ("output.weight".to_string(), tensor(vocab, HIDDEN, 1.0, q6)),
        (
            "output_norm.weight".to_string(),
            tensor(1, HIDDEN, 1.0, f32_),
        ),
    ];
    for l in 0..LAYERS {
        let (v_type, down_type) = if l == 0 { (q6, q6) } else { (q4, q5) };
        let s = 1.0 / (HIDDEN as f32).sqrt();
        for (name, rows, cols, scale, t) in [
            ("attn_norm", 1, HIDDEN, 1.0, f32_),
            ("ffn_norm", 1, HIDDEN, 1.0, f32_),
            ("attn_q", HIDDEN, HIDDEN, 2.0 * s, q4),
            ("attn_k", kv, HIDDEN, 2.0 * s, q4),
            ("attn_v", kv, HIDDEN, 2.0 * s, v_type),
            ("attn_output", HIDDEN, HIDDEN, 2.0 * s, q4),
            ("ffn_gate", FFN, HIDDEN, 2.0 * s, q4),
            ("ffn_up", FFN, HIDDEN, 2.0 * s, q4),
            (
                "ffn_down",
                HIDDEN,
                FFN,
                2.0 / (FFN as f32).sqrt(),
                down_type,
            ),
        ] {
            tensors.push((
                format!("blk.{l}.{name}.weight"),
                tensor(rows, cols, scale, t),
            ));
        }
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut out = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut out, &meta_refs, &tensor_refs).unwrap();
}

#[test]
fn k_quant_model_own_kernels_match_candle_qmatmul() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("random-q4_k_m.gguf");
    write_model(&path);
    let spec = path.to_str().unwrap();
    let own = camelid_model::load(Some(spec), &LoadOptions::default()).unwrap();
    let candle_opts = LoadOptions {
        candle_qmatmul: true,
        ..Default::default()
    };
    let candle = camelid_model::load(Some(spec), &candle_opts).unwrap();
    // Every matmul of the file is a K format: all on the own kernels, or all on candle's.
    let (on_own, all) = own.model.own_kernel_matmuls();
    assert_eq!(on_own, all, "matmuls on camelid's K kernels");
    assert_eq!(candle.model.own_kernel_matmuls().0, 0);
    let tok = |s: &str| own.tokenizer.encode(s, true).unwrap();
    let long = tok("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined several existing technologies into a system that could print books quickly and cheaply.");
    // One sequence (single-row decode), then three side by side (multi-row passes).
    for prompts in [
        vec![long.clone()],
        vec![long, tok("Hi"), tok("List three primes.")],
    ] {
        let a = greedy(&own, &prompts, 6);
        let b = greedy(&candle, &prompts, 6);
        let mut worst = 0f32;
        for (step, (x, y)) in a.iter().zip(&b).enumerate() {
            for (s, (p, q)) in x.iter().zip(y).enumerate() {
                let d = common::max_abs_diff(p, q);
                worst = worst.max(d);
                assert!(d <= 1e-3, "step {step} seq {s}: max |Δlogit| {d}");
                assert_eq!(argmax(p), argmax(q), "step {step} seq {s}: greedy token");
            }
        }
        let span = a[0][0].iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "{} sequences: max |Δlogit| {worst} (logits within ±{span})",
            prompts.len()
        );
    }
}
