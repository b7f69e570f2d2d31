//! Reading LoRA adapters: a PEFT folder (`adapter_config.json`, `adapter_model.safetensors`,
//! HF module names), a llama.cpp LoRA GGUF (`blk.N.attn_q.weight.lora_a`, the converter's Q/K
//! layout), or a hub id of a PEFT adapter, into [`LoraAdapter`] (crate::lora).

use crate::config::{ModelConfig, RopeStyle};
use crate::error::{Error, Result};
use crate::load::gguf::GgufFile;
use crate::lora::{LoraAdapter, Pair, Target};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

impl LoraAdapter {
    /// Reads the adapter at `path` (a PEFT folder or a llama.cpp LoRA GGUF) for a model with
    /// config `cfg` on `device`; every tensor's shape is checked against the model's.
    pub fn load(name: &str, path: &Path, cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let (pairs, layout) = if path.is_dir() {
            (read_peft(path)?, RopeStyle::Half)
        } else {
            read_gguf(path, cfg)?
        };
        Self::from_pairs(name, path, pairs, layout, cfg, device)
    }
}

/// Where an adapter spec is: a local folder or file as it is, else a hub id's snapshot
/// (downloaded, or from the cache offline).
pub fn resolve(spec: &Path, revision: Option<&str>) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    match spec.to_str() {
        Some(id) if crate::load::hub::is_hub_id(id) => {
            crate::load::hub::fetch_adapter(id, revision)
        }
        _ => Err(Error::Io(format!(
            "{}: no such file or folder, not a hub id",
            spec.display()
        ))),
    }
}

/// A PEFT folder's LoRA pairs (HF layout).
fn read_peft(dir: &Path) -> Result<Vec<Pair>> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let c: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::BadConfig(format!("{}: {e}", cfg_path.display())))?;
    let origin = cfg_path.display();
    let field = |k: &str| c.get(k).filter(|v| !v.is_null());
    if let Some(t) = field("peft_type").and_then(|v| v.as_str()) {
        if t != "LORA" {
            return Err(Error::Unsupported(format!(
                "{origin}: peft_type {t:?} (camelid serves LORA adapters)"
            )));
        }
    }
    let on = |k: &str| field(k).and_then(|v| v.as_bool()) == Some(true);
    let nonempty = |k: &str| match field(k) {
        Some(serde_json::Value::Object(m)) => !m.is_empty(),
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(serde_json::Value::String(s)) => !s.is_empty(),
        _ => false,
    };
    for (k, why) in [
        ("use_dora", "DoRA's magnitude vectors"),
        ("fan_in_fan_out", "transposed (Conv1D) weights"),
    ] {
        if on(k) {
            return Err(Error::Unsupported(format!("{origin}: {k} ({why})")));
        }
    }
    for (k, why) in [
        ("alpha_pattern", "per-module alphas"),
        ("modules_to_save", "whole modules saved beside the adapter"),
    ] {
        if nonempty(k) {
            return Err(Error::Unsupported(format!("{origin}: {k} ({why})")));
        }
    }
    if let Some(b) = field("bias").and_then(|v| v.as_str()) {
        if b != "none" {
            return Err(Error::Unsupported(format!(
                "{origin}: bias {b:?} (LoRA biases)"
            )));
        }
    }
    // PEFT's `LoraConfig` default.
    let alpha = field("lora_alpha").and_then(|v| v.as_f64()).unwrap_or(8.0) as f32;
    let rs = on("use_rslora");
    let weights = dir.join("adapter_model.safetensors");
    if !weights.exists() {
        return Err(Error::Unsupported(format!(
            "{}: no adapter_model.safetensors (a PyTorch adapter_model.bin must be saved as \
             safetensors: PEFT's save_pretrained(safe_serialization=True))",
            dir.display()
        )));
    }
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
        .map_err(|e| Error::BadWeights(format!("{}: {e}", weights.display())))?;
    let mut halves = Halves::new();
    for (name, t) in tensors {
        let bad = |why: &str| Error::Unsupported(format!("{}: {name}: {why}", weights.display()));
        let rest = name
            .strip_prefix("base_model.model.")
            .unwrap_or(&name)
            .strip_prefix("model.layers.")
            .ok_or_else(|| bad("not a LoRA update of a decoder layer's projection"))?;
        let (idx, tail) = rest.split_once('.').ok_or_else(|| bad("no layer"))?;
        let layer: usize = idx.parse().map_err(|_| bad("no layer"))?;
        let (module, which) = if let Some(m) = tail.strip_suffix(".lora_A.weight") {
            (m, 0)
        } else if let Some(m) = tail.strip_suffix(".lora_B.weight") {
            (m, 1)
        } else {
            return Err(bad("not a lora_A or lora_B weight"));
        };
        let target = Target::from_hf(module).ok_or_else(|| {
            bad("a module camelid does not adapt (q/k/v/o, gate/up/down projections only)")
        })?;
        let t = t.to_dtype(DType::F32)?;
        put(&mut halves, (layer, target), which, t);
    }
    pairs_of(halves, alpha, rs, &weights)
}

/// Each update's A and B (index 0 and 1) as they are found.
type Halves = HashMap<(usize, Target), (Option<Tensor>, Option<Tensor>)>;

fn put(halves: &mut Halves, key: (usize, Target), which: usize, t: Tensor) {
    let e = halves.entry(key).or_default();
    if which == 0 {
        e.0 = Some(t);
    } else {
        e.1 = Some(t);
    }
}

/// The pairs of `halves`, each with both of its tensors, sorted by layer.
fn pairs_of(halves: Halves, alpha: f32, rs: bool, file: &Path) -> Result<Vec<Pair>> {
    let mut pairs = halves
        .into_iter()
        .map(|((layer, target), (a, b))| match (a, b) {
            (Some(a), Some(b)) => Ok(Pair {
                layer,
                target,
                a,
                b,
                alpha,
                rs,
            }),
            _ => Err(Error::BadWeights(format!(
                "{}: layer {layer} {target:?} has only one of its A and B matrices",
                file.display()
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    pairs.sort_by_key(|p| (p.layer, p.target as u8));
    Ok(pairs)
}

/// The largest LoRA rank a GGUF adapter may have (PEFT's are 4–256).
const MAX_LORA_RANK: usize = 1024;

/// A llama.cpp LoRA GGUF's pairs, and the rotary layout its Q/K rows are in (the
/// architecture's GGUF layout, as its converter wrote them).
fn read_gguf(path: &Path, cfg: &ModelConfig) -> Result<(Vec<Pair>, RopeStyle)> {
    let mut g = GgufFile::open(path, &Device::Cpu)?;
    let origin = path.display().to_string();
    if g.meta_str("general.type") != Some("adapter") || g.meta_str("adapter.type") != Some("lora") {
        return Err(Error::BadWeights(format!(
            "{origin}: not a LoRA adapter (general.type \"adapter\", adapter.type \"lora\")"
        )));
    }
    let arch = g
        .meta_str("general.architecture")
        .unwrap_or_default()
        .to_string();
    // llama.cpp writes Mistral's files (and their adapters) as `llama`.
    fn family(a: &str) -> &str {
        if a == "mistral" {
            "llama"
        } else {
            a
        }
    }
    if family(&arch) != family(&cfg.architecture) {
        return Err(Error::BadWeights(format!(
            "{origin}: an adapter for {arch:?}, the model is {:?}",
            cfg.architecture
        )));
    }
    let layout = crate::models::for_gguf(&arch, &origin)?.gguf_rope;
    // llama.cpp: no alpha (0) means a scale of 1.
    let alpha = g.meta_f32("adapter.lora.alpha").unwrap_or(0.0);
    let names: Vec<String> = g.content.tensor_infos.keys().cloned().collect();
    let mut halves = Halves::new();
    for name in names {
        let bad = |why: &str| Error::Unsupported(format!("{origin}: {name}: {why}"));
        let (base, which) = if let Some(b) = name.strip_suffix(".weight.lora_a") {
            (b, 0)
        } else if let Some(b) = name.strip_suffix(".weight.lora_b") {
            (b, 1)
        } else {
            return Err(bad("not a lora_a or lora_b tensor"));
        };
        let rest = base
            .strip_prefix("blk.")
            .ok_or_else(|| bad("not a LoRA update of a decoder layer's projection"))?;
        let (idx, module) = rest.split_once('.').ok_or_else(|| bad("no layer"))?;
        let layer: usize = idx.parse().map_err(|_| bad("no layer"))?;
        // Its shape is checked before it is dequantized (a quantized tensor grows up to
        // twelvefold as f32): a rank and a width the model could have.
        let dims = g.content.tensor_infos[&name].shape.dims().to_vec();
        let widest = cfg
            .hidden_size
            .max(2 * cfg.intermediate_size)
            .max(cfg.num_heads * cfg.head_dim);
        match dims[..] {
            [r, c] if r.min(c) <= MAX_LORA_RANK && r.max(c) <= widest => {}
            _ => {
                return Err(bad(&format!(
                    "shape {dims:?}: not a LoRA half of this model"
                )))
            }
        }
        let t = g.read_qtensor(&name)?.dequantize(&Device::Cpu)?;
        // B's rows (its output width) tell Phi-3's fused gate/up from a plain up.
        let rows = if which == 1 { t.dims2()?.0 } else { 0 };
        let target = match Target::from_gguf(module, rows, cfg.intermediate_size) {
            Some(t) => t,
            // `ffn_up`'s A comes without B's width: keyed as `Up` until B says.
            None => return Err(bad("a tensor camelid does not adapt")),
        };
        let key = (layer, target);
        put(&mut halves, key, which, t);
    }
    // Phi-3's fused `ffn_up`: its A was keyed `Up` before its B (keyed `GateUp`) was seen.
    let fused: Vec<usize> = halves
        .iter()
        .filter(|(key, ab)| key.1 == Target::GateUp && ab.0.is_none())
        .map(|(key, _)| key.0)
        .collect();
    for l in fused {
        if let Some((Some(a), None)) = halves.remove(&(l, Target::Up)) {
            halves.get_mut(&(l, Target::GateUp)).expect("listed").0 = Some(a);
        }
    }
    let pairs = pairs_of(halves, alpha, false, path)?;
    // llama.cpp's scale without alpha is 1, i.e. alpha = rank.
    let pairs = pairs
        .into_iter()
        .map(|mut p| {
            if p.alpha == 0.0 {
                p.alpha = p.a.dims()[0] as f32;
            }
            p
        })
        .collect();
    Ok((pairs, layout))
}
