//! The CPU forward pass of f32 models over a paged host KV cache (the serving path on the CPU),
//! on plain buffers kept from step to step.
//!
//! RMSNorm, the residual adds, SiLU·mul and the quantized matmuls write into a [`Workspace`]
//! instead of allocating a tensor per op: the tensor path allocated about ten buffers per layer,
//! whose fresh pages the kernel zeroed again on every step, and candle's element-wise ops ran on
//! a thread pool of their own next to rayon's, each spinning while the other worked. Each
//! residual add is fused with the RMSNorm that follows it, and the matmuls' quantized
//! activations are buffers of the workspace too. The tensor runtime ([`super::tensor`]) stays
//! the reference the tests compare against.
//!
//! Past the last layer's attention only the rows whose logits or hidden states are read go on
//! (as llama.cpp's `inp_out_ids`): a prompt's other rows have written their keys and values,
//! all that is kept of them. The rows read keep their bits, as camelid's kernels give a row
//! the same bits whatever the rows beside it (candle's dense f32 matmul, which f32 weights
//! take, promises no such thing: there the rows read may move in their last bits).

use crate::batch::{ForwardBatch, ForwardOutput};
use crate::config::Activation;
use crate::error::{Error, Result};
use crate::lora::{self, Proj};
use crate::models::llama::{HostLayer, Llama};
use camelid_kernels::attention::{self, HostPaged, QkvRows};
use camelid_kernels::quant::QActs;
use camelid_kernels::vecmath::{self, Scalar, VecOps};
use candle_core::{DType, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;

/// Buffers of one forward, sized by the largest batch seen so far.
#[derive(Default)]
pub(crate) struct Workspace {
    /// The residual stream, `(tokens, hidden)`.
    x: Vec<f32>,
    /// The normed residual, input of the next matmul.
    h: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    /// Output of the attention's or the MLP's last projection.
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    acts: QActs,
}

thread_local! {
    /// The workspace of the forwards this thread runs. Per thread rather than per model: it
    /// holds no model data (buffers only, resized on demand), and a model (models/) then
    /// carries nothing of a runtime. The engine runs each model's steps on its one loop thread.
    static WORKSPACE: RefCell<Workspace> = RefCell::new(Workspace::default());
}

/// Sets `buf` to `len` elements without clearing them (every caller overwrites them all).
fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// Runs `batch` through `model` with attention in place over `kv`.
pub(crate) fn forward(model: &Llama, batch: &ForwardBatch, kv: HostPaged) -> Result<ForwardOutput> {
    let norms = model.host_norms()?;
    WORKSPACE.with(|ws| {
        let mut ws = ws.borrow_mut();
        run(model, batch, kv, &norms.layers, &norms.last, &mut ws)
    })
}

fn run(
    model: &Llama,
    batch: &ForwardBatch,
    mut kv: HostPaged,
    norms: &[HostLayer],
    final_norm: &[f32],
    ws: &mut Workspace,
) -> Result<ForwardOutput> {
    let cfg = &model.cfg;
    let (n, hidden) = (batch.tokens.len(), cfg.hidden_size);
    let eps = cfg.rms_norm_eps as f32;
    let f = &cfg.features;
    // Layer `li`'s heads: its window (Gemma's global layers have none), scale and cap.
    let heads_of = |li: usize| attention::Heads {
        q: cfg.num_heads,
        kv: cfg.num_kv_heads,
        dim: cfg.head_dim,
        rope: cfg.rope_style,
        window: f.layer_window(li),
        scale: f.attn_scale,
        softcap: f.attn_softcap,
    };
    let (qw, kw) = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    let spans: Vec<_> = batch.chunks.iter().map(|c| c.span()).collect();
    // The blocks every layer may still read: from the window every layer shares, if any.
    let shared = attention::Heads {
        window: f.kv_window(),
        ..heads_of(0)
    };
    kv.check(&spans, |p| shared.first_key(p))
        .map_err(Error::Invalid)?;
    let rope_spans: Vec<_> = spans.iter().map(|c| (c.start_pos, c.len)).collect();
    let (cos, sin) = model.rope.cos_sin_rows(&rope_spans);
    let local_rope = model
        .rope_local
        .as_ref()
        .map(|r| r.cos_sin_rows(&rope_spans));

    // Embeddings.
    let emb = model
        .embed
        .rows(&batch.tokens, &model.device)?
        .to_dtype(DType::F32)?;
    let x = sized(&mut ws.x, n * hidden);
    x.copy_from_slice(&emb.flatten_all()?.to_vec1::<f32>()?);
    if let Some(s) = f.embed_scale {
        x.iter_mut().for_each(|v| *v *= s);
    }

    let inter = model.layers[0].down.in_features();
    // Each row's LoRA adapter, added to each matmul's output (nothing when none has one).
    let mut adapters: Vec<_> = batch
        .chunks
        .iter()
        .flat_map(|c| std::iter::repeat_n(c.lora.as_deref(), c.len))
        .collect();
    // The rows whose final hidden state is read (logits or hidden states out), ascending. The
    // last layer needs every row's keys and values (they go to the cache), but only these
    // rows past its attention: a prompt's other rows skip its output projection and MLP.
    let (logit_rows, hidden_rows) = (batch.logit_row_indices(), batch.hidden_row_indices());
    let mut wanted = [logit_rows.as_slice(), &hidden_rows].concat();
    wanted.sort_unstable();
    let last = model.layers.len().saturating_sub(1);
    // Rows still computed: every row, then the wanted ones after the last attention.
    let mut live = n;
    for (li, layer) in model.layers.iter().enumerate() {
        let host = &norms[li];
        let heads = heads_of(li);
        let (cos, sin) = match &local_rope {
            Some((c, s)) if f.is_local(li) => (c, s),
            _ => (&cos, &sin),
        };
        // Attention block (the previous layer's residual add happened in its last step).
        if li == 0 {
            rms_norm_rows(
                &ws.x[..n * hidden],
                &host.attn_norm,
                eps,
                sized(&mut ws.h, n * hidden),
            );
        }
        let width = qw + 2 * kw;
        let qkv = sized(&mut ws.qkv, n * width);
        layer
            .qkv
            .forward_cpu_into(&ws.h[..n * hidden], n, &mut ws.acts, qkv)?;
        lora::add_rows(&adapters, li, Proj::Qkv, &ws.h[..n * hidden], qkv);
        if let Some(bias) = &host.qkv_bias {
            for r in qkv.chunks_exact_mut(width) {
                r.iter_mut().zip(bias).for_each(|(a, b)| *a += b);
            }
        }
        // Each head of Q and K normed before rope (rope runs in the attention kernel).
        if let Some((q_norm, k_norm)) = &host.qk_norm {
            for r in qkv.chunks_exact_mut(width) {
                let (q, k) = r[..qw + kw].split_at_mut(qw);
                q.chunks_exact_mut(heads.dim)
                    .for_each(|x| rms_norm_in_place(x, q_norm, eps));
                k.chunks_exact_mut(heads.dim)
                    .for_each(|x| rms_norm_in_place(x, k_norm, eps));
            }
        }
        let rows = QkvRows {
            q: (qkv, width, 0),
            k: (qkv, width, qw),
            v: (qkv, width, qw + kw),
        };
        let attn = sized(&mut ws.attn, n * qw);
        attention::paged_attention(li, &spans, &rows, cos, sin, heads, &mut kv, attn);
        if li == last && wanted.len() < n {
            keep_rows(&mut ws.x[..n * hidden], hidden, &wanted);
            keep_rows(attn, qw, &wanted);
            adapters = wanted.iter().map(|&r| adapters[r]).collect();
            live = wanted.len();
            if live == 0 {
                // A prompt chunk before its last: only its keys and values were wanted.
                break;
            }
        }
        // From here on `n` is the rows still computed (all but in the last layer).
        let (n, attn) = (live, &ws.attn[..live * qw]);
        let proj = sized(&mut ws.proj, n * hidden);
        layer.o.forward_cpu_into(attn, n, &mut ws.acts, proj)?;
        lora::add_rows(&adapters, li, Proj::O, attn, proj);
        if let Some((post_attn, _)) = &host.post_norms {
            proj.chunks_exact_mut(hidden)
                .for_each(|r| rms_norm_in_place(r, post_attn, eps));
        }
        add_rms_norm_rows(
            &mut ws.x[..n * hidden],
            proj,
            &host.mlp_norm,
            eps,
            &mut ws.h,
        );
        // MLP block.
        let gate_up = sized(&mut ws.gate_up, n * 2 * inter);
        layer
            .gate_up
            .forward_cpu_into(&ws.h[..n * hidden], n, &mut ws.acts, gate_up)?;
        lora::add_rows(&adapters, li, Proj::GateUp, &ws.h[..n * hidden], gate_up);
        let proj = sized(&mut ws.proj, n * hidden);
        // SiLU·up straight into the down projection's Q8_K rows where it takes them and no
        // adapter needs the rows themselves (the same bits as through `act`).
        let gated = |r: usize, o: &mut [f32]| {
            let (gate, up) = gate_up[r * 2 * inter..(r + 1) * 2 * inter].split_at(inter);
            vecmath::silu_mul(gate, up, o)
        };
        let fused = f.activation == Activation::Silu
            && adapters.iter().all(|a| a.is_none())
            && layer
                .down
                .forward_cpu_rows_into(n, gated, &mut ws.acts, proj)?;
        if !fused {
            let act = sized(&mut ws.act, n * inter);
            match f.activation {
                Activation::Silu => silu_mul_rows(gate_up, inter, act),
                Activation::GeluTanh => gelu_tanh_mul_rows(gate_up, inter, act),
            }
            layer.down.forward_cpu_into(act, n, &mut ws.acts, proj)?;
            lora::add_rows(&adapters, li, Proj::Down, act, proj);
        }
        if let Some((_, post_mlp)) = &host.post_norms {
            proj.chunks_exact_mut(hidden)
                .for_each(|r| rms_norm_in_place(r, post_mlp, eps));
        }
        // The residual add, fused with the next layer's attention norm (or a plain add after
        // the last layer: the final norm runs on the wanted rows only).
        match norms.get(li + 1) {
            Some(next) => add_rms_norm_rows(
                &mut ws.x[..n * hidden],
                proj,
                &next.attn_norm,
                eps,
                &mut ws.h,
            ),
            None => ws.x[..n * hidden]
                .iter_mut()
                .zip(proj.iter())
                .for_each(|(a, b)| *a += b),
        }
    }

    // The wanted rows through the final norm; the logit rows then through the LM head.
    let normed = |rows: &[usize], out: &mut [f32]| {
        for (dst, &r) in out.chunks_exact_mut(hidden).zip(rows) {
            rms_norm_row(&ws.x[r * hidden..(r + 1) * hidden], final_norm, eps, dst);
        }
    };
    // A row's place among the rows computed to the end.
    let at = |r: usize| wanted.binary_search(&r).expect("a wanted row");
    let hidden_rows: Vec<usize> = hidden_rows.into_iter().map(at).collect();
    let hidden_out = if hidden_rows.is_empty() {
        None
    } else {
        let mut out = vec![0f32; hidden_rows.len() * hidden];
        normed(&hidden_rows, &mut out);
        Some(Tensor::from_vec(
            out,
            (hidden_rows.len(), hidden),
            &model.device,
        )?)
    };
    let rows: Vec<usize> = logit_rows.into_iter().map(at).collect();
    let vocab = cfg.vocab_size;
    let mut logits = vec![0f32; rows.len() * vocab];
    if !rows.is_empty() {
        let mut h = std::mem::take(&mut ws.h);
        let hs = sized(&mut h, rows.len() * hidden);
        normed(&rows, hs);
        let done = model
            .lm_head
            .forward_cpu_into(hs, rows.len(), &mut ws.acts, &mut logits);
        ws.h = h;
        done?;
        if let Some(cap) = f.final_softcap {
            logits.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
    }
    Ok(ForwardOutput {
        logits: Tensor::from_vec(logits, (rows.len(), vocab), &model.device)?,
        hidden: hidden_out,
    })
}

/// Moves rows `keep` (ascending) of `x` (rows of `width`) to its front, in that order.
fn keep_rows(x: &mut [f32], width: usize, keep: &[usize]) {
    for (i, &r) in keep.iter().enumerate() {
        if r != i {
            x.copy_within(r * width..(r + 1) * width, i * width);
        }
    }
}

/// Rows from which the residual stream's RMSNorms (with their fused residual adds) and the
/// gated activations run on rayon's threads, as the matmuls around them do (the rarer
/// per-architecture ops, Q/K norms, post-norms and biases, stay on the step's thread). On
/// one thread they left the other idle for 2–3 % of a 512-token prompt's step (1B model,
/// two threads); a decode step's few rows are not worth a split.
const PARALLEL_ROWS: usize = 16;

fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    let job = |(xr, or): (&[f32], &mut [f32])| rms_norm_row(xr, w, eps, or);
    if x.len() >= PARALLEL_ROWS * d {
        x.par_chunks_exact(d)
            .zip(out.par_chunks_exact_mut(d))
            .for_each(job);
    } else {
        x.chunks_exact(d).zip(out.chunks_exact_mut(d)).for_each(job);
    }
}

/// `x += y`, then `out = rms_norm(x)`, row by row (one pass over each row while it is hot).
fn add_rms_norm_rows(x: &mut [f32], y: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    let d = w.len();
    let parallel = x.len() >= PARALLEL_ROWS * d;
    let out = sized(out, x.len());
    let job = |((xr, yr), or): ((&mut [f32], &[f32]), &mut [f32])| {
        xr.iter_mut().zip(yr).for_each(|(a, b)| *a += b);
        rms_norm_row(xr, w, eps, or);
    };
    if parallel {
        x.par_chunks_exact_mut(d)
            .zip(y.par_chunks_exact(d))
            .zip(out.par_chunks_exact_mut(d))
            .for_each(job);
    } else {
        x.chunks_exact_mut(d)
            .zip(y.chunks_exact(d))
            .zip(out.chunks_exact_mut(d))
            .for_each(job);
    }
}

/// `out = x / sqrt(mean(x²) + eps) · w` (LLaMA's RMSNorm, as candle computes it).
fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    // Eight partial sums (a plain `.sum()` is one sequential chain: not vectorized).
    let ss = Scalar::dot(x, x);
    let r = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * r * g;
    }
}

/// [`rms_norm_row`] of `x` into itself (a head of Q or K).
fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let ss = Scalar::dot(x, x);
    let r = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for (v, &g) in x.iter_mut().zip(w) {
        *v = *v * r * g;
    }
}

/// `out[row] = gelu(gate) · up` (GELU's tanh approximation, Gemma's GeGLU) for rows of the
/// gate/up projection's joined output.
fn gelu_tanh_mul_rows(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    gated_rows(gate_up, inter, out, |gate, up, o| {
        for ((o, &x), &u) in o.iter_mut().zip(gate).zip(up) {
            let gelu = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh());
            *o = gelu * u;
        }
    });
}

/// `out[row] = silu(gate) · up` for rows of the gate/up projection's joined output.
fn silu_mul_rows(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    gated_rows(gate_up, inter, out, vecmath::silu_mul);
}

/// `f(gate, up, out)` for each row of the gate/up projection's joined output.
fn gated_rows(
    gate_up: &[f32],
    inter: usize,
    out: &mut [f32],
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) {
    let job = |(g, o): (&[f32], &mut [f32])| {
        let (gate, up) = g.split_at(inter);
        f(gate, up, o)
    };
    if out.len() >= PARALLEL_ROWS * inter {
        gate_up
            .par_chunks_exact(2 * inter)
            .zip(out.par_chunks_exact_mut(inter))
            .for_each(job);
    } else {
        gate_up
            .chunks_exact(2 * inter)
            .zip(out.chunks_exact_mut(inter))
            .for_each(job);
    }
}
