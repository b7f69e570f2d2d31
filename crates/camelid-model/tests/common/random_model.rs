//! Random-weight models of any architecture camelid serves, written here: an HF folder
//! (safetensors and `config.json`, as the HF checkpoints of each architecture have them) and
//! the same weights as a GGUF written by llama.cpp's own gguf-py (`tests/gguf/write_gguf.py`).

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The attention's shape and the embeddings' tying.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub heads: usize,
    pub kv_heads: usize,
    /// `None`: hidden / heads.
    pub head_dim: Option<usize>,
    pub tied: bool,
}

/// Widths, depth and the random weights' spread.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub hidden: usize,
    pub inter: usize,
    pub vocab: usize,
    pub layers: usize,
    /// Standard deviations: the token embeddings, the other matrices and biases, the
    /// (untied) output matrix. The output's sets how peaked the next-token distribution is.
    pub embed_std: f32,
    pub weight_std: f32,
    pub lm_head_std: f32,
}

/// The `architectures` test's models: 80 tokens (the LLaMA fixture's tokenizer), hidden 32.
pub const TINY: Sizes = Sizes {
    hidden: 32,
    inter: 64,
    vocab: 80,
    layers: 2,
    embed_std: 0.5,
    weight_std: 0.3,
    lm_head_std: 0.3,
};

/// The LLaMA fixture's folder: in this checkout, or under the working directory (a test
/// binary carried to another machine, the GPU's, runs from the repository's root there).
pub fn fixture() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
    if here.exists() {
        return here;
    }
    PathBuf::from("tests/fixtures/tiny-llama")
}

/// Deterministic pseudo-random ids in a vocabulary of `vocab` (BOS first).
pub fn prompt_in(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    std::iter::once(1)
        .chain((1..n).map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            3 + ((x >> 33) % (vocab as u64 - 3)) as u32
        }))
        .collect()
}

/// A random-weight HF folder of `arch` (`llama`, `qwen2`, `qwen3`, `mistral`, `phi3`,
/// `gemma2`, `gemma3`) with `extra` merged into its config.json; the tokenizer is the LLaMA
/// fixture's (the tests feed ids). `num_hidden_layers` in `extra` overrides `z.layers`.
pub fn write_hf(
    arch: &str,
    s: Shape,
    z: &Sizes,
    extra: serde_json::Value,
    seed: u64,
) -> tempfile::TempDir {
    let guard = tempfile::Builder::new()
        .prefix(&format!("camelid-{arch}-"))
        .tempdir()
        .unwrap();
    let dir = guard.path();
    use rand::{Rng, SeedableRng};
    // Seeded: the same seed writes the same weights (candle's CPU generator takes no seed).
    let rng = std::cell::RefCell::new(rand::rngs::StdRng::seed_from_u64(seed));
    let (hidden, inter, vocab, ws) = (z.hidden, z.inter, z.vocab, z.weight_std);
    let hd = s.head_dim.unwrap_or(hidden / s.heads);
    let layers = extra
        .get("num_hidden_layers")
        .and_then(|n| n.as_u64())
        .map_or(z.layers, |n| n as usize);
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
        r(&[vocab, hidden], z.embed_std),
    );
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        let (qw, kw) = (s.heads * hd, s.kv_heads * hd);
        t.insert(format!("{p}.self_attn.q_proj.weight"), r(&[qw, hidden], ws));
        t.insert(format!("{p}.self_attn.k_proj.weight"), r(&[kw, hidden], ws));
        t.insert(format!("{p}.self_attn.v_proj.weight"), r(&[kw, hidden], ws));
        t.insert(format!("{p}.self_attn.o_proj.weight"), r(&[hidden, qw], ws));
        if arch == "qwen2" {
            for (n, w) in [("q", qw), ("k", kw), ("v", kw)] {
                t.insert(format!("{p}.self_attn.{n}_proj.bias"), r(&[w], 0.5));
            }
        }
        if gemma {
            t.insert(
                format!("{p}.pre_feedforward_layernorm.weight"),
                ones(hidden),
            );
            t.insert(
                format!("{p}.post_feedforward_layernorm.weight"),
                ones(hidden),
            );
        }
        if arch == "qwen3" || arch == "gemma3" {
            t.insert(format!("{p}.self_attn.q_norm.weight"), ones(hd));
            t.insert(format!("{p}.self_attn.k_norm.weight"), ones(hd));
        }
        t.insert(format!("{p}.mlp.gate_proj.weight"), r(&[inter, hidden], ws));
        t.insert(format!("{p}.mlp.up_proj.weight"), r(&[inter, hidden], ws));
        t.insert(format!("{p}.mlp.down_proj.weight"), r(&[hidden, inter], ws));
        t.insert(format!("{p}.input_layernorm.weight"), ones(hidden));
        t.insert(format!("{p}.post_attention_layernorm.weight"), ones(hidden));
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
    t.insert("model.norm.weight".into(), ones(hidden));
    if !s.tied {
        t.insert("lm_head.weight".into(), r(&[vocab, hidden], z.lm_head_std));
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let class = match arch {
        "llama" => "LlamaForCausalLM",
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
        "architectures": [class], "model_type": arch, "hidden_size": hidden,
        "intermediate_size": inter, "vocab_size": vocab, "num_hidden_layers": z.layers,
        "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads, "head_dim": hd,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 256,
        "tie_word_embeddings": s.tied, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "sliding_window": null, "use_sliding_window": false,
        "max_window_layers": z.layers, "attention_bias": false
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

/// The vocabulary a GGUF gets.
pub enum Vocab {
    /// The LLaMA fixture's SentencePiece pieces (padded to the config's `vocab_size`).
    Fixture,
    /// Every `tokenizer.*` field of this GGUF (a vocabulary llama.cpp loads as it is).
    CopyFrom(PathBuf),
    /// These SentencePiece pieces and their types (`tokenizer.ggml.model` "llama").
    Pieces(Vec<String>, Vec<i32>),
}

/// The Python the tests run gguf-py with: `CAMELID_TEST_PYTHON` (`tests/run.sh` makes the
/// venv and sets it).
pub fn test_python() -> String {
    std::env::var("CAMELID_TEST_PYTHON").expect(
        "CAMELID_TEST_PYTHON is not set: run the suite with `bash tests/run.sh` (it makes the \
         venv with the gguf package)",
    )
}

/// The folder's weights and config as a GGUF of architecture `gguf_arch`, written by
/// llama.cpp's gguf-py (`tests/gguf/write_gguf.py`: its key and tensor names, its converter's
/// Q/K permutation for `llama`, Gemma's `1 + w` norms), f32 whatever the folder's type.
pub fn write_gguf(dir: &Path, gguf_arch: &str, vocab: &Vocab) -> PathBuf {
    write_gguf_with(dir, gguf_arch, vocab, serde_json::json!({}))
}

/// As [`write_gguf`], with the metadata `keys` (GGUF key → string, integer or bool, e.g.
/// `tokenizer.ggml.pre`) added, in place of the copied vocabulary's where it has them; a
/// null one is left out.
pub fn write_gguf_with(
    dir: &Path,
    gguf_arch: &str,
    vocab: &Vocab,
    keys: serde_json::Value,
) -> PathBuf {
    write_gguf_typed(dir, gguf_arch, vocab, keys, false)
}

/// As [`write_gguf`], its matrices stored as F16 (as `convert_hf_to_gguf.py --outtype f16`
/// writes them: vectors stay F32).
pub fn write_gguf_f16(dir: &Path, gguf_arch: &str, vocab: &Vocab) -> PathBuf {
    write_gguf_typed(dir, gguf_arch, vocab, serde_json::json!({}), true)
}

fn write_gguf_typed(
    dir: &Path,
    gguf_arch: &str,
    vocab: &Vocab,
    keys: serde_json::Value,
    f16: bool,
) -> PathBuf {
    let python = test_python();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let mut list = vec![];
    for (i, (name, t)) in tensors.iter().enumerate() {
        let file = raw.join(format!("{i}.f32"));
        let v: Vec<f32> = t
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&file, bytes).unwrap();
        list.push(serde_json::json!({"name": name, "shape": t.dims(), "file": file}));
    }
    // A file per set of keys: one folder may be written with several.
    let tag = match keys.as_object() {
        Some(m) if !m.is_empty() => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            keys.to_string().hash(&mut h);
            format!("-{:016x}", h.finish())
        }
        _ => String::new(),
    };
    let kind = if f16 { "-f16" } else { "" };
    let out = dir.join(format!("model-{gguf_arch}{tag}{kind}.gguf"));
    let mut spec = serde_json::json!({"arch": gguf_arch, "out": out, "hparams": cfg,
        "tensors": list, "keys": keys, "f16": f16});
    match vocab {
        Vocab::Fixture => {
            let n = cfg["vocab_size"].as_u64().unwrap() as u32;
            let tok = camelid_model::text::tokenizer::from_sentencepiece(
                &fixture().join("tokenizer.model"),
            )
            .unwrap();
            let tokens: Vec<String> = (0..n)
                .map(|i| tok.id_to_token(i).unwrap_or_else(|| format!("<extra{i}>")))
                .collect();
            // SentencePiece's types: 2 unknown, 3 control, 1 normal.
            let types: Vec<i32> = (0..n)
                .map(|i| [2, 3, 3].get(i as usize).copied().unwrap_or(1))
                .collect();
            spec["tokens"] = serde_json::json!(tokens);
            spec["token_types"] = serde_json::json!(types);
        }
        Vocab::CopyFrom(src) => spec["tokenizer_from"] = serde_json::json!(src),
        Vocab::Pieces(tokens, types) => {
            spec["tokens"] = serde_json::json!(tokens);
            spec["token_types"] = serde_json::json!(types);
        }
    }
    let spec_path = dir.join("gguf-spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gguf/write_gguf.py");
    let st = std::process::Command::new(python)
        .arg(script)
        .arg(&spec_path)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "write_gguf.py failed (is the gguf package installed?)"
    );
    let _ = std::fs::remove_dir_all(&raw);
    out
}
