//! A small random-weight LLaMA stored as f16 and as bf16 safetensors, loaded the default way
//! on the CPU (matrices kept 16-bit, camelid's `f16gemm` kernels) against the same file loaded
//! with `dtype: f32` (every weight widened, candle's f32 matmul), over the CPU serving path
//! (paged host cache, prefill then decode) and the tensor path.
//!
//! Widening f16/bf16 to f32 is exact, so both models hold the same weight values; each matmul
//! output then differs only by f32 summation order: at most 2·k·u·Σ|x·w| (u = 2⁻²⁴, k ≤ 320),
//! a relative 4e-5 in the worst case, ~√k·u typically. Logits span ±3 (f16, untied) to ±24
//! (bf16, tied embeddings); measured max |Δlogit| 3e-6 and 1.3e-5. The bound, 1e-3, is the
//! worst case at ±24 and far below what a wrong row, lane, group or padding moves (units).
//! Every greedy token must be the same.

#[path = "../../camelid-model/tests/common/mod.rs"]
mod common;
mod paged_greedy;

use camelid_kernels::f16gemm::HalfKind;
use camelid_model::LoadOptions;
use candle_core::{DType, Device, Tensor};
use paged_greedy::{argmax, greedy};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

const HIDDEN: usize = 128;
const INTER: usize = 320;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const LAYERS: usize = 2;
/// The fixture tokenizer's vocabulary size is larger; the test feeds ids below this.
const VOCAB: usize = 80;

/// A random LLaMA HF folder with its tensors stored in `dtype`; `tied`: no `lm_head`.
fn write_model(dir: &Path, dtype: DType, tied: bool) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let mut r = |shape: &[usize], scale: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0) * scale)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    let hd = HIDDEN / HEADS;
    let kv = KV_HEADS * hd;
    let s = 2.0 / (HIDDEN as f32).sqrt();
    let mut t = HashMap::new();
    t.insert(
        "model.embed_tokens.weight".to_string(),
        r(&[VOCAB, HIDDEN], 1.0),
    );
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        for (name, rows, cols, scale) in [
            ("self_attn.q_proj", HIDDEN, HIDDEN, s),
            ("self_attn.k_proj", kv, HIDDEN, s),
            ("self_attn.v_proj", kv, HIDDEN, s),
            ("self_attn.o_proj", HIDDEN, HIDDEN, s),
            ("mlp.gate_proj", INTER, HIDDEN, s),
            ("mlp.up_proj", INTER, HIDDEN, s),
            ("mlp.down_proj", HIDDEN, INTER, 2.0 / (INTER as f32).sqrt()),
        ] {
            t.insert(format!("{p}.{name}.weight"), r(&[rows, cols], scale));
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            let ones = (r(&[HIDDEN], 0.1).to_dtype(DType::F32).unwrap() + 1.0).unwrap();
            t.insert(format!("{p}.{n}.weight"), ones.to_dtype(dtype).unwrap());
        }
    }
    let ones = (r(&[HIDDEN], 0.1).to_dtype(DType::F32).unwrap() + 1.0).unwrap();
    t.insert("model.norm.weight".into(), ones.to_dtype(dtype).unwrap());
    if !tied {
        t.insert("lm_head.weight".into(), r(&[VOCAB, HIDDEN], s));
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTER, "vocab_size": VOCAB, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
        "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
    std::fs::copy(fixture.join("tokenizer.model"), dir.join("tokenizer.model")).unwrap();
}

fn prompt(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    std::iter::once(1)
        .chain((1..n).map(|_| rng.random_range(3..VOCAB as u32)))
        .collect()
}

fn check(dtype: DType, tied: bool) {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), dtype, tied);
    let spec = dir.path().to_str().unwrap();
    let half = camelid_model::load(Some(spec), &LoadOptions::default()).unwrap();
    let wide_opts = LoadOptions {
        dtype: Some(DType::F32),
        ..Default::default()
    };
    let wide = camelid_model::load(Some(spec), &wide_opts).unwrap();
    // Kept 16-bit, every matmul on the own kernels (Q/K/V and gate/up fused); widened: none.
    let (on_own, all) = half.model.own_kernel_matmuls();
    assert_eq!(
        (on_own, all),
        (1 + 4 * LAYERS, 1 + 4 * LAYERS),
        "{dtype:?}: matmuls kept 16-bit"
    );
    // In the file's own 16-bit type: bf16 weights widened to f16 would lose range.
    let kind = match dtype {
        DType::F16 => HalfKind::F16,
        _ => HalfKind::Bf16,
    };
    assert!(
        half.model.half_kinds().iter().all(|&k| k == Some(kind)),
        "{dtype:?}: {:?}",
        half.model.half_kinds()
    );
    assert_eq!(half.model.dtype(), DType::F32, "activations stay f32");
    assert_eq!(wide.model.own_kernel_matmuls().0, 0);

    let long = prompt(37, 3);
    for prompts in [
        vec![long.clone()],
        vec![long.clone(), prompt(5, 4), prompt(12, 5)],
    ] {
        let a = greedy(&half, &prompts, 6);
        let b = greedy(&wide, &prompts, 6);
        let mut worst = 0f32;
        for (step, (x, y)) in a.iter().zip(&b).enumerate() {
            for (s, (p, q)) in x.iter().zip(y).enumerate() {
                let d = common::max_abs_diff(p, q);
                worst = worst.max(d);
                assert!(d <= 1e-3, "{dtype:?} step {step} seq {s}: max |Δlogit| {d}");
                assert_eq!(
                    argmax(p),
                    argmax(q),
                    "{dtype:?} step {step} seq {s}: greedy token"
                );
            }
        }
        let span = a[0][0].iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "{dtype:?} tied={tied}, {} sequences: max |Δlogit| {worst} (±{span})",
            prompts.len()
        );
    }
    // The tensor path (candle ops around the same kernels), all positions.
    let a: Vec<Vec<f32>> = half.model.logits_all(&long).unwrap().to_vec2().unwrap();
    let b: Vec<Vec<f32>> = wide.model.logits_all(&long).unwrap().to_vec2().unwrap();
    for (i, (p, q)) in a.iter().zip(&b).enumerate() {
        let d = common::max_abs_diff(p, q);
        assert!(
            d <= 1e-3,
            "{dtype:?} tensor path, position {i}: max |Δlogit| {d}"
        );
    }
}

#[test]
fn f16_weights_stay_16bit_and_match_the_f32_path() {
    check(DType::F16, false);
}

#[test]
fn bf16_weights_stay_16bit_and_match_the_f32_path() {
    check(DType::BF16, true);
}

#[test]
fn an_f32_file_stays_f32() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), DType::F32, false);
    let lm =
        camelid_model::load(Some(dir.path().to_str().unwrap()), &LoadOptions::default()).unwrap();
    assert_eq!(
        lm.model.own_kernel_matmuls().0,
        0,
        "f32 weights: candle's f32 matmul"
    );
}
