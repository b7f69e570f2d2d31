//! Tiny random-weight models of every architecture, written as HF folders (safetensors and
//! config.json) with the LLaMA fixture's tokenizer: what the architecture tests (CPU) and the
//! CUDA runtime's tests load.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The LLaMA fixture's folder: in this checkout, or under the working directory (a test
/// binary carried to another machine runs from the repository's root there).
pub fn fixture() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
    if here.exists() {
        return here;
    }
    PathBuf::from("tests/fixtures/tiny-llama")
}

pub const VOCAB: usize = 80;

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub heads: usize,
    pub kv_heads: usize,
    /// `None`: hidden / heads.
    pub head_dim: Option<usize>,
    pub tied: bool,
}

pub const HIDDEN: usize = 32;
pub const INTER: usize = 64;
pub const LAYERS: usize = 2;

/// A random-weight HF folder of `arch` (`qwen2`, `qwen3`, `mistral`, `phi3`, `gemma2`,
/// `gemma3`) with `extra` merged into
/// its config.json; the tokenizer is the LLaMA fixture's (the tests feed ids).
pub fn write_model(arch: &str, s: Shape, extra: serde_json::Value, seed: u64) -> tempfile::TempDir {
    let guard = tempfile::Builder::new()
        .prefix(&format!("camelid-{arch}-"))
        .tempdir()
        .unwrap();
    let dir = guard.path();
    use rand::{Rng, SeedableRng};
    // Seeded: the same seed writes the same weights (candle's CPU generator takes no seed).
    let rng = std::cell::RefCell::new(rand::rngs::StdRng::seed_from_u64(seed));
    let hd = s.head_dim.unwrap_or(HIDDEN / s.heads);
    let layers = extra
        .get("num_hidden_layers")
        .and_then(|n| n.as_u64())
        .map_or(LAYERS, |n| n as usize);
    let gemma = arch.starts_with("gemma");
    // Uniform with standard deviation `std`.
    let r = |shape: &[usize], std: f32| {
        let n: usize = shape.iter().product();
        let half_width = std * 3f32.sqrt();
        let v: Vec<f32> = (0..n)
            .map(|_| rng.borrow_mut().random_range(-half_width..half_width))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    // Gemma stores a norm's `w` of a `(1 + w)` scale.
    let ones = |n: usize| {
        if gemma {
            r(&[n], 0.1)
        } else {
            (r(&[n], 0.1) + 1.0).unwrap()
        }
    };
    let mut t = HashMap::new();
    t.insert(
        "model.embed_tokens.weight".to_string(),
        r(&[VOCAB, HIDDEN], 0.5),
    );
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        let (qw, kw) = (s.heads * hd, s.kv_heads * hd);
        t.insert(
            format!("{p}.self_attn.q_proj.weight"),
            r(&[qw, HIDDEN], 0.3),
        );
        t.insert(
            format!("{p}.self_attn.k_proj.weight"),
            r(&[kw, HIDDEN], 0.3),
        );
        t.insert(
            format!("{p}.self_attn.v_proj.weight"),
            r(&[kw, HIDDEN], 0.3),
        );
        t.insert(
            format!("{p}.self_attn.o_proj.weight"),
            r(&[HIDDEN, qw], 0.3),
        );
        if arch == "qwen2" {
            for (n, w) in [("q", qw), ("k", kw), ("v", kw)] {
                t.insert(format!("{p}.self_attn.{n}_proj.bias"), r(&[w], 0.5));
            }
        }
        if gemma {
            t.insert(
                format!("{p}.pre_feedforward_layernorm.weight"),
                ones(HIDDEN),
            );
            t.insert(
                format!("{p}.post_feedforward_layernorm.weight"),
                ones(HIDDEN),
            );
        }
        if arch == "qwen3" || arch == "gemma3" {
            t.insert(format!("{p}.self_attn.q_norm.weight"), ones(hd));
            t.insert(format!("{p}.self_attn.k_norm.weight"), ones(hd));
        }
        t.insert(
            format!("{p}.mlp.gate_proj.weight"),
            r(&[INTER, HIDDEN], 0.3),
        );
        t.insert(format!("{p}.mlp.up_proj.weight"), r(&[INTER, HIDDEN], 0.3));
        t.insert(
            format!("{p}.mlp.down_proj.weight"),
            r(&[HIDDEN, INTER], 0.3),
        );
        t.insert(format!("{p}.input_layernorm.weight"), ones(HIDDEN));
        t.insert(format!("{p}.post_attention_layernorm.weight"), ones(HIDDEN));
        if arch == "phi3" {
            // Phi-3 stores Q, K, V as one matrix and gate, up as another.
            let mut take = |n: &str| t.remove(&format!("{p}.{n}.weight")).unwrap();
            let qkv = [
                take("self_attn.q_proj"),
                take("self_attn.k_proj"),
                take("self_attn.v_proj"),
            ];
            let gate_up = [take("mlp.gate_proj"), take("mlp.up_proj")];
            t.insert(
                format!("{p}.self_attn.qkv_proj.weight"),
                Tensor::cat(&qkv, 0).unwrap(),
            );
            t.insert(
                format!("{p}.mlp.gate_up_proj.weight"),
                Tensor::cat(&gate_up, 0).unwrap(),
            );
        }
    }
    t.insert("model.norm.weight".into(), ones(HIDDEN));
    if !s.tied {
        t.insert("lm_head.weight".into(), r(&[VOCAB, HIDDEN], 0.3));
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let class = match arch {
        "qwen2" => "Qwen2ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        "mistral" => "MistralForCausalLM",
        "phi3" => "Phi3ForCausalLM",
        "gemma2" => "Gemma2ForCausalLM",
        "gemma3" => "Gemma3ForCausalLM",
        other => panic!("{other}"),
    };
    // Every field candle-transformers' configs require, as the HF configs of these models
    // have them.
    let mut cfg = serde_json::json!({
        "architectures": [class], "model_type": arch, "hidden_size": HIDDEN,
        "intermediate_size": INTER, "vocab_size": VOCAB, "num_hidden_layers": LAYERS,
        "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads, "head_dim": hd,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 256,
        "tie_word_embeddings": s.tied, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "sliding_window": null, "use_sliding_window": false,
        "max_window_layers": LAYERS, "attention_bias": false
    });
    if gemma {
        // Gemma's fields (candle-transformers' configs require each); the tests' values
        // bend the tiny models' scores and logits (the real ones are 50 and 30).
        let g = serde_json::json!({"model_type": if arch == "gemma3" { "gemma3_text" } else { arch },
            "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": hd, "attn_logit_softcapping": null,
            "final_logit_softcapping": null, "sliding_window": 4096, "sliding_window_pattern": 2,
            "rope_local_base_freq": 100.0});
        for (k, v) in g.as_object().unwrap() {
            cfg[k] = v.clone();
        }
    }
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        fixture().join("tokenizer.model"),
        dir.join("tokenizer.model"),
    )
    .unwrap();
    guard
}

/// Deterministic pseudo-random ids in the vocabulary (BOS first).
pub fn prompt(n: usize, seed: u64) -> Vec<u32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    std::iter::once(1)
        .chain((1..n).map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            3 + ((x >> 33) % (VOCAB as u64 - 3)) as u32
        }))
        .collect()
}
