//! Random LoRA adapters written here as PEFT saves them (`adapter_config.json`,
//! `adapter_model.safetensors`, HF module names and layout), the same adapter as a llama.cpp
//! LoRA GGUF (`tests/gguf/write_lora_gguf.py`, gguf-py and the converter's permutation), and
//! an HF folder with the adapter merged into its weights (`W + alpha / r · B A`, computed
//! here): the reference an adapter applied at run time must equal.

use super::random_model::test_python;
use camelid_model::config::ModelConfig;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Every projection PEFT's LoRA targets in a LLaMA-style layer.
pub const ALL_TARGETS: &[&str] = &[
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// An adapter's tensors as written: per module (`model.layers.N.self_attn.q_proj`), A
/// `(r, in)` and B `(out, r)`.
pub struct Adapter {
    pub dir: PathBuf,
    pub alpha: f32,
    pub rank: usize,
    pub pairs: Vec<(String, Tensor, Tensor)>,
}

/// A module's (input, output) widths in a model of config `c`.
fn widths(c: &ModelConfig, target: &str) -> (usize, usize) {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let (qw, kw) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    match target {
        "self_attn.q_proj" => (h, qw),
        "self_attn.k_proj" | "self_attn.v_proj" => (h, kw),
        "self_attn.o_proj" => (qw, h),
        "mlp.gate_proj" | "mlp.up_proj" => (h, i),
        "mlp.down_proj" => (i, h),
        t => panic!("no widths for {t}"),
    }
}

/// Writes a random PEFT adapter for a model of config `c` into `dir`: rank `rank`,
/// `lora_alpha` `alpha`, `targets` on every layer, A and B uniform with standard deviation
/// `std` (seeded).
pub fn write_peft(
    dir: &Path,
    c: &ModelConfig,
    rank: usize,
    alpha: f32,
    targets: &[&str],
    std: f32,
    seed: u64,
) -> Adapter {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut r = |shape: (usize, usize)| {
        let w = std * 3f32.sqrt();
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| rng.random_range(-w..w))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    std::fs::create_dir_all(dir).unwrap();
    let mut pairs = vec![];
    let mut tensors = HashMap::new();
    for l in 0..c.num_layers {
        for t in targets {
            let (k, n) = widths(c, t);
            let module = format!("model.layers.{l}.{t}");
            let (a, b) = (r((rank, k)), r((n, rank)));
            tensors.insert(
                format!("base_model.model.{module}.lora_A.weight"),
                a.clone(),
            );
            tensors.insert(
                format!("base_model.model.{module}.lora_B.weight"),
                b.clone(),
            );
            pairs.push((module, a, b));
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
    let short: Vec<&str> = targets
        .iter()
        .map(|t| t.rsplit('.').next().unwrap())
        .collect();
    let config = serde_json::json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": false,
        "target_modules": short, "modules_to_save": null, "use_rslora": false,
        "use_dora": false, "base_model_name_or_path": "random"
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    Adapter {
        dir: dir.to_path_buf(),
        alpha,
        rank,
        pairs,
    }
}

/// The HF folder `base` (f32 `model.safetensors`) with `adapter` merged into its weights,
/// written to `out` (the other files copied).
pub fn merge_into(base: &Path, adapter: &Adapter, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    for e in std::fs::read_dir(base).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() && p.file_name().unwrap() != "model.safetensors" {
            std::fs::copy(&p, out.join(p.file_name().unwrap())).unwrap();
        }
    }
    let mut w =
        candle_core::safetensors::load(base.join("model.safetensors"), &Device::Cpu).unwrap();
    let scale = (adapter.alpha / adapter.rank as f32) as f64;
    for (module, a, b) in &adapter.pairs {
        let name = format!("{module}.weight");
        let old = w[&name].to_dtype(DType::F32).unwrap();
        let delta = (b.matmul(a).unwrap() * scale).unwrap();
        w.insert(name, (old + delta).unwrap());
    }
    candle_core::safetensors::save(&w, out.join("model.safetensors")).unwrap();
}

/// `adapter` as a llama.cpp LoRA GGUF for architecture `arch` (written by gguf-py).
pub fn write_lora_gguf(adapter: &Adapter, arch: &str, c: &ModelConfig, out: &Path) -> PathBuf {
    let raw = out.with_extension("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let dump = |t: &Tensor, name: String| {
        let file = raw.join(name);
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&file, bytes).unwrap();
        serde_json::json!({"file": file, "shape": t.dims()})
    };
    let tensors: Vec<_> = adapter
        .pairs
        .iter()
        .enumerate()
        .map(|(i, (module, a, b))| {
            serde_json::json!({"module": module, "a": dump(a, format!("{i}.a")),
                               "b": dump(b, format!("{i}.b"))})
        })
        .collect();
    let spec = serde_json::json!({"out": out, "arch": arch, "alpha": adapter.alpha,
        "n_head": c.num_heads, "n_head_kv": c.num_kv_heads, "n_layers": c.num_layers,
        "tensors": tensors});
    let spec_path = out.with_extension("json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../camelid-model/tests/gguf/write_lora_gguf.py");
    let st = std::process::Command::new(test_python())
        .arg(&script)
        .arg(&spec_path)
        .status()
        .unwrap();
    assert!(st.success(), "write_lora_gguf.py failed");
    out.to_path_buf()
}
