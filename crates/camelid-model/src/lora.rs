//! LoRA adapters: low-rank updates of a model's projections, applied at run time to the rows
//! of the sequences that ask for them, so one loaded base model serves itself and any number
//! of fine-tunes side by side in one batch (vLLM's multi-LoRA serving, llama.cpp's `--lora`).
//!
//! An adapter is read (by `load/lora.rs`) from a PEFT folder (`adapter_config.json` +
//! `adapter_model.safetensors`, what `peft`'s `save_pretrained` writes) or from a llama.cpp
//! LoRA GGUF (what `convert_lora_to_gguf.py` writes). Each of its projections adds
//! `scale · (x Aᵀ) Bᵀ` to the base projection's output `x Wᵀ`, with `scale = alpha / rank`
//! (PEFT's `lora_alpha / r`, `/ √r` under rsLoRA; llama.cpp's `adapter.lora.alpha / rank`).
//! The weights are never merged: the base stays shared, quantized or not.
//!
//! Q and K rows follow the model's rotary layout: an adapter written for the other layout (a
//! PEFT adapter on a llama GGUF, whose converter permuted Q/K rows; a GGUF adapter on an HF
//! folder) has its B rows permuted as the converter permutes the weights.

use crate::config::{ModelConfig, RopeStyle};
use crate::error::{Error, Result};
use camelid_kernels::vecmath::{Scalar, VecOps};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
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
pub(crate) enum Target {
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
    pub(crate) fn from_hf(module: &str) -> Option<Self> {
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
    pub(crate) fn from_gguf(name: &str, rows: usize, inter: usize) -> Option<Self> {
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
pub(crate) struct Pair {
    pub layer: usize,
    pub target: Target,
    /// `rank × k` and `n × rank`, f32.
    pub a: Tensor,
    pub b: Tensor,
    pub alpha: f32,
    /// rsLoRA: the scale is `alpha / √rank`.
    pub rs: bool,
}

impl LoraAdapter {
    /// The adapter of the `pairs` read from `path` (their Q/K rows in `layout`) for a model
    /// with config `cfg` on `device`; every tensor's shape is checked against the model's.
    /// Reading the files: `load/lora.rs`.
    pub(crate) fn from_pairs(
        name: &str,
        path: &Path,
        pairs: Vec<Pair>,
        layout: RopeStyle,
        cfg: &ModelConfig,
        device: &Device,
    ) -> Result<Self> {
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

    /// `y` (`x`'s rows through layer `li`'s matmul `proj`, f32) plus this adapter's updates
    /// of them: the tensor runtime's [`add_rows`], as candle ops on the model's device.
    pub(crate) fn add_to_rows(
        &self,
        li: usize,
        proj: Proj,
        x: &Tensor,
        y: Tensor,
    ) -> Result<Tensor> {
        let (rows, width) = y.dims2()?;
        let mut y = y;
        for d in self.layers[li].of(proj) {
            let dd = x.matmul(&d.at_dev)?.matmul(&d.bt_dev)?;
            let mut cols = vec![];
            if d.offset > 0 {
                cols.push(Tensor::zeros((rows, d.offset), DType::F32, y.device())?);
            }
            cols.push(dd);
            let after = width - d.offset - d.n;
            if after > 0 {
                cols.push(Tensor::zeros((rows, after), DType::F32, y.device())?);
            }
            y = (y + Tensor::cat(&cols, 1)?)?;
        }
        Ok(y)
    }

    /// Whether it was read for a model of this shape.
    pub fn fits(&self, cfg: &ModelConfig) -> bool {
        self.shape == shape_of(cfg)
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
    debug_assert!(
        x.len().is_multiple_of(m) && out.len().is_multiple_of(m),
        "an adapter entry per row"
    );
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

/// Shared handle to an adapter, as requests and batches hold it.
pub type SharedLora = Arc<LoraAdapter>;
