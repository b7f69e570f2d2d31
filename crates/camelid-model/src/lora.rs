//! LoRA adapters: low-rank updates of a model's projections, applied at run time to the rows
//! of the sequences that ask for them, so one loaded base model serves itself and any number
//! of fine-tunes side by side in one batch (vLLM's multi-LoRA serving, llama.cpp's `--lora`).
//!
//! An adapter is read from a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`,
//! what `peft`'s `save_pretrained` writes) or from a llama.cpp LoRA GGUF (what
//! `convert_lora_to_gguf.py` writes). Each of its projections adds
//! `scale · (x Aᵀ) Bᵀ` to the base projection's output `x Wᵀ`, with `scale = alpha / rank`
//! (PEFT's `lora_alpha / r`, `/ √r` under rsLoRA; llama.cpp's `adapter.lora.alpha / rank`).
//! The weights are never merged: the base stays shared, quantized or not.
//!
//! Q and K rows follow the model's rotary layout: an adapter written for the other layout (a
//! PEFT adapter on a llama GGUF, whose converter permuted Q/K rows; a GGUF adapter on an HF
//! folder) has its B rows permuted as the converter permutes the weights.

use crate::config::{ModelConfig, RopeStyle};
use crate::error::{Error, Result};
use crate::load::gguf::GgufFile;
use camelid_kernels::vecmath::{Scalar, VecOps};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The four matmuls of a layer (fused projections count once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proj {
    /// Q, K and V side by side.
    Qkv,
    O,
    /// Gate and up side by side.
    GateUp,
    Down,
}

/// What an adapter's tensor updates: a base projection, or several fused ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Q,
    K,
    V,
    Qkv,
    O,
    Gate,
    Up,
    GateUp,
    Down,
}

impl Target {
    /// PEFT's module names (HF's), Phi-3's fused ones included.
    fn from_hf(module: &str) -> Option<Self> {
        Some(match module {
            "self_attn.q_proj" => Target::Q,
            "self_attn.k_proj" => Target::K,
            "self_attn.v_proj" => Target::V,
            "self_attn.qkv_proj" => Target::Qkv,
            "self_attn.o_proj" => Target::O,
            "mlp.gate_proj" => Target::Gate,
            "mlp.up_proj" => Target::Up,
            "mlp.gate_up_proj" => Target::GateUp,
            "mlp.down_proj" => Target::Down,
            _ => return None,
        })
    }

    /// llama.cpp's tensor names; `ffn_up` is Phi-3's fused gate and up where it is that wide.
    fn from_gguf(name: &str, rows: usize, inter: usize) -> Option<Self> {
        Some(match name {
            "attn_q" => Target::Q,
            "attn_k" => Target::K,
            "attn_v" => Target::V,
            "attn_qkv" => Target::Qkv,
            "attn_output" => Target::O,
            "ffn_gate" => Target::Gate,
            "ffn_up" if rows == 2 * inter => Target::GateUp,
            "ffn_up" => Target::Up,
            "ffn_down" => Target::Down,
            _ => return None,
        })
    }

    /// The matmul it adds to, its columns there (offset, width) and its input width.
    fn place(self, c: &ModelConfig) -> (Proj, usize, usize, usize) {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let (qw, kw) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        match self {
            Target::Q => (Proj::Qkv, 0, qw, h),
            Target::K => (Proj::Qkv, qw, kw, h),
            Target::V => (Proj::Qkv, qw + kw, kw, h),
            Target::Qkv => (Proj::Qkv, 0, qw + 2 * kw, h),
            Target::O => (Proj::O, 0, h, qw),
            Target::Gate => (Proj::GateUp, 0, i, h),
            Target::Up => (Proj::GateUp, i, i, h),
            Target::GateUp => (Proj::GateUp, 0, 2 * i, h),
            Target::Down => (Proj::Down, 0, h, i),
        }
    }
}

/// One projection's update: `y[:, offset..offset + n] += scale · (x Aᵀ) Bᵀ`.
struct Delta {
    offset: usize,
    n: usize,
    k: usize,
    rank: usize,
    scale: f32,
    /// A, `rank × k`.
    a: Vec<f32>,
    /// Bᵀ, `rank × n`: the update of a row is a sum of its rows (axpy).
    bt: Vec<f32>,
    /// For the tensor runtime, on the model's device: Aᵀ `(k, rank)` and `scale · Bᵀ`
    /// `(rank, n)`, f32.
    at_dev: Tensor,
    bt_dev: Tensor,
}

impl Delta {
    /// Adds this update of one input row `x` (k) to its output row `out`.
    fn add_row(&self, x: &[f32], out: &mut [f32]) {
        let mut t = vec![0f32; self.rank];
        for (t, a) in t.iter_mut().zip(self.a.chunks_exact(self.k)) {
            *t = self.scale * Scalar::dot(a, x);
        }
        let out = &mut out[self.offset..self.offset + self.n];
        for (&t, b) in t.iter().zip(self.bt.chunks_exact(self.n)) {
            Scalar::axpy(out, t, b);
        }
    }
}

/// A layer's updates, by matmul.
#[derive(Default)]
struct LayerDeltas {
    qkv: Vec<Delta>,
    o: Vec<Delta>,
    gate_up: Vec<Delta>,
    down: Vec<Delta>,
}

impl LayerDeltas {
    fn of(&self, p: Proj) -> &[Delta] {
        match p {
            Proj::Qkv => &self.qkv,
            Proj::O => &self.o,
            Proj::GateUp => &self.gate_up,
            Proj::Down => &self.down,
        }
    }
    fn of_mut(&mut self, p: Proj) -> &mut Vec<Delta> {
        match p {
            Proj::Qkv => &mut self.qkv,
            Proj::O => &mut self.o,
            Proj::GateUp => &mut self.gate_up,
            Proj::Down => &mut self.down,
        }
    }
}

/// A loaded LoRA adapter for one model.
pub struct LoraAdapter {
    /// Unique in the process: what keeps its cached prefixes apart from other adapters'.
    id: u64,
    pub name: String,
    pub path: PathBuf,
    /// The largest rank of its updates.
    pub rank: usize,
    layers: Vec<LayerDeltas>,
    /// The shape of the model it was read for (layers, hidden, FFN, Q and KV widths, Q/K
    /// row layout: its B rows were put in that layout).
    shape: [usize; 6],
}

fn shape_of(c: &ModelConfig) -> [usize; 6] {
    [
        c.num_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        c.rope_style as usize,
    ]
}

impl std::fmt::Debug for LoraAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraAdapter")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("rank", &self.rank)
            .finish()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One adapter tensor pair as read, before it is placed.
struct Pair {
    layer: usize,
    target: Target,
    /// `rank × k` and `n × rank`, f32.
    a: Tensor,
    b: Tensor,
    alpha: f32,
    rs: bool,
}

impl LoraAdapter {
    /// Reads the adapter at `path` (a PEFT folder or a llama.cpp LoRA GGUF) for a model with
    /// config `cfg` on `device`; every tensor's shape is checked against the model's.
    pub fn load(name: &str, path: &Path, cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let (pairs, layout) = if path.is_dir() {
            (read_peft(path)?, RopeStyle::Half)
        } else {
            read_gguf(path, cfg)?
        };
        let origin = path.display().to_string();
        if pairs.is_empty() {
            return Err(Error::BadWeights(format!("{origin}: no LoRA tensors")));
        }
        let mut layers: Vec<LayerDeltas> =
            (0..cfg.num_layers).map(|_| Default::default()).collect();
        let mut rank = 0;
        for p in pairs {
            let what = format!("{origin}: layer {} {:?}", p.layer, p.target);
            let (proj, offset, n, k) = p.target.place(cfg);
            if p.layer >= cfg.num_layers {
                return Err(Error::BadWeights(format!(
                    "{what}: the model has {} layers",
                    cfg.num_layers
                )));
            }
            let (r, ka) = p.a.dims2()?;
            let (nb, rb) = p.b.dims2()?;
            if ka != k || nb != n || rb != r || r == 0 {
                return Err(Error::BadWeights(format!(
                    "{what}: A is {r} × {ka} and B {nb} × {rb}; this model needs A r × {k} and \
                     B {n} × r (an adapter for another model?)"
                )));
            }
            let mut b: Vec<f32> = p.b.flatten_all()?.to_vec1()?;
            let heads = match p.target {
                Target::Q => Some(cfg.num_heads),
                Target::K => Some(cfg.num_kv_heads),
                _ => None,
            };
            if layout != cfg.rope_style {
                match heads {
                    Some(h) => b = reorder_rotary_rows(&b, h, r, layout, cfg.rope_style),
                    None if p.target == Target::Qkv => {
                        return Err(Error::Unsupported(format!(
                            "{what}: a fused QKV update for a model whose Q/K rows are laid \
                             out differently"
                        )))
                    }
                    None => {}
                }
            }
            let scale = if p.rs {
                p.alpha / (r as f32).sqrt()
            } else {
                p.alpha / r as f32
            };
            let a: Vec<f32> = p.a.flatten_all()?.to_vec1()?;
            // Bᵀ: row j holds B's column j.
            let mut bt = vec![0f32; r * n];
            for (o, row) in b.chunks_exact(r).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    bt[j * n + o] = v;
                }
            }
            let at_dev = Tensor::from_slice(&a, (r, k), device)?.t()?.contiguous()?;
            let bt_dev = (Tensor::from_slice(&bt, (r, n), device)? * scale as f64)?;
            rank = rank.max(r);
            layers[p.layer].of_mut(proj).push(Delta {
                offset,
                n,
                k,
                rank: r,
                scale,
                a,
                bt,
                at_dev,
                bt_dev,
            });
        }
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            path: path.to_path_buf(),
            rank,
            layers,
            shape: shape_of(cfg),
        })
    }

    /// Unique among the adapters of this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether it was read for a model of this shape.
    pub fn fits(&self, cfg: &ModelConfig) -> bool {
        self.shape == shape_of(cfg)
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

/// Permutes the rows of B (`(heads · d) × cols`) of a Q or K update from one rotary layout to
/// the other: GGUF's interleaved row `2j + s` of a head is HF's row `s · d/2 + j`
/// (llama.cpp's converter `permute`, and its inverse).
fn reorder_rotary_rows(
    b: &[f32],
    heads: usize,
    cols: usize,
    from: RopeStyle,
    to: RopeStyle,
) -> Vec<f32> {
    let rows = b.len() / cols;
    let d = rows / heads;
    let mut out = vec![0f32; b.len()];
    for h in 0..heads {
        for j in 0..d / 2 {
            for s in 0..2 {
                let inter = h * d + 2 * j + s;
                let half = h * d + s * (d / 2) + j;
                let (src, dst) = match (from, to) {
                    (RopeStyle::Half, RopeStyle::Interleaved) => (half, inter),
                    _ => (inter, half),
                };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&b[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
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
    let mut halves: HashMap<(usize, Target), (Option<Tensor>, Option<Tensor>)> = HashMap::new();
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
        let e = halves.entry((layer, target)).or_default();
        if which == 0 {
            e.0 = Some(t);
        } else {
            e.1 = Some(t);
        }
    }
    pairs_of(halves, alpha, rs, &weights)
}

/// The pairs of `halves`, each with both of its tensors, sorted by layer.
fn pairs_of(
    halves: HashMap<(usize, Target), (Option<Tensor>, Option<Tensor>)>,
    alpha: f32,
    rs: bool,
    file: &Path,
) -> Result<Vec<Pair>> {
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
    let mut halves: HashMap<(usize, Target), (Option<Tensor>, Option<Tensor>)> = HashMap::new();
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
        let t = g.read_qtensor(&name)?.dequantize(&Device::Cpu)?;
        // B's rows (its output width) tell Phi-3's fused gate/up from a plain up.
        let rows = if which == 1 { t.dims2()?.0 } else { 0 };
        let target = match Target::from_gguf(module, rows, cfg.intermediate_size) {
            Some(t) => t,
            // `ffn_up`'s A comes without B's width: keyed as `Up` until B says.
            None => return Err(bad("a tensor camelid does not adapt")),
        };
        let key = (layer, target);
        let e = halves.entry(key).or_default();
        if which == 0 {
            e.0 = Some(t);
        } else {
            e.1 = Some(t);
        }
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

/// Each batch row's adapter (`None`: the base model's), from the batch's chunks.
pub(crate) fn row_adapters(batch: &crate::batch::ForwardBatch) -> Vec<Option<&LoraAdapter>> {
    batch
        .chunks
        .iter()
        .flat_map(|c| std::iter::repeat_n(c.lora.as_deref(), c.len))
        .collect()
}

/// Adds each row's adapter update of layer `li`'s matmul `proj` to its output: `x` holds the
/// matmul's input rows, `out` its output rows (the CPU runtime's buffers).
pub(crate) fn add_rows(
    rows: &[Option<&LoraAdapter>],
    li: usize,
    proj: Proj,
    x: &[f32],
    out: &mut [f32],
) {
    let m = rows.len();
    if m == 0 || rows.iter().all(|r| r.is_none()) {
        return;
    }
    let (k, width) = (x.len() / m, out.len() / m);
    out.par_chunks_mut(width)
        .zip(x.par_chunks(k))
        .zip(rows.par_iter())
        .for_each(|((o, x), a)| {
            if let Some(a) = a {
                for d in a.layers[li].of(proj) {
                    d.add_row(x, o);
                }
            }
        });
}

/// [`add_rows`] for the tensor runtime: `y` (`x`'s rows through the base matmul) plus each
/// chunk's adapter update, as candle ops on the model's device.
pub(crate) fn add_tensor(
    batch: &crate::batch::ForwardBatch,
    li: usize,
    proj: Proj,
    x: &Tensor,
    y: Tensor,
) -> Result<Tensor> {
    if batch.chunks.iter().all(|c| c.lora.is_none()) {
        return Ok(y);
    }
    let width = y.dim(1)?;
    let xf = x.to_dtype(DType::F32)?;
    let mut parts = Vec::with_capacity(batch.chunks.len());
    let mut off = 0;
    for c in &batch.chunks {
        let yc = y.narrow(0, off, c.len)?;
        let mut yc_f = None;
        if let Some(a) = &c.lora {
            let xc = xf.narrow(0, off, c.len)?;
            let mut acc = yc.to_dtype(DType::F32)?;
            for d in a.layers[li].of(proj) {
                let dd = xc.matmul(&d.at_dev)?.matmul(&d.bt_dev)?;
                let mut cols = vec![];
                if d.offset > 0 {
                    cols.push(Tensor::zeros((c.len, d.offset), DType::F32, y.device())?);
                }
                cols.push(dd);
                let after = width - d.offset - d.n;
                if after > 0 {
                    cols.push(Tensor::zeros((c.len, after), DType::F32, y.device())?);
                }
                acc = (acc + Tensor::cat(&cols, 1)?)?;
            }
            yc_f = Some(acc.to_dtype(y.dtype())?);
        }
        parts.push(yc_f.unwrap_or(yc));
        off += c.len;
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Whether any chunk of the batch runs under an adapter.
#[cfg(feature = "cuda")]
pub(crate) fn any(batch: &crate::batch::ForwardBatch) -> bool {
    batch.chunks.iter().any(|c| c.lora.is_some())
}

/// Shared handle to an adapter, as requests and batches hold it.
pub type SharedLora = Arc<LoraAdapter>;
