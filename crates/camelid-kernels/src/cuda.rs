//! camelid's own CUDA kernels (`kernels/*.cu`, compiled to PTX by build.rs) as candle ops:
//! paged attention over block tables (split-K; a scale, a sliding window and soft-capping as
//! the CPU kernel takes them), the paged KV-cache write, residual add + RMSNorm, rotary
//! embedding in place (per-chunk frequencies, an attention factor), SiLU·mul and GELU·mul.
//! f32, f16 and bf16.
//!
//! Cache layout: `(slots, kv_heads, head_dim)` per layer, slot-major like the engine's
//! tensor storage (the CPU's [`crate::attention::HostKvCache`] is block-major,
//! `[block][kv_head][slot][head_dim]`). Metadata (block tables, context lengths, slot
//! mappings, positions) travels as small device tensors held by the op.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaView, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, WrapErr};
use candle_core::{
    bail, CpuStorage, CudaDevice, CudaStorage, CustomOp1, CustomOp3, DType, InplaceOp1, InplaceOp2,
    Layout, Result, Shape, Storage, Tensor,
};

/// Whether our CUDA kernels are used (default yes; `CAMELID_CUDA_KERNELS=0` says no).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("CAMELID_CUDA_KERNELS").map_or(true, |v| v != "0"))
}

const ATTENTION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
const LAYERS_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/layers.ptx"));

pub use crate::cuda_shapes::{partition_for, rows_per_launch, set_partials_budget, PARTITION};
/// The largest head [`paged_attention`] takes (`MAX_HEAD_DIM` in attention.cu).
pub const MAX_HEAD_DIM: usize = 256;

fn suffix(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        d => bail!("camelid CUDA kernels: unsupported dtype {d:?}"),
    })
}

fn func(dev: &CudaDevice, module: &str, name: &str, dtype: DType) -> Result<CudaFunction> {
    let ptx = if module == "attention" {
        ATTENTION_PTX
    } else {
        LAYERS_PTX
    };
    Ok(dev
        .get_or_load_custom_func(
            &format!("{name}_{}", suffix(dtype)?),
            &format!("camelid_{module}"),
            ptx,
        )?
        .into_cuda_function())
}

fn contiguous(l: &Layout, what: &str) -> Result<(usize, usize)> {
    l.contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} must be contiguous")))
}

/// A metadata tensor's device view (u32, i64 or f32), contiguous. `s`/`l` come from
/// `tensor.storage_and_layout()`, whose guard the caller keeps alive across the launch.
fn view<'a, T: CudaDType>(s: &'a Storage, l: &Layout) -> Result<CudaView<'a, T>> {
    let Storage::Cuda(c) = s else {
        bail!("metadata must live on the CUDA device")
    };
    let (a, b) = contiguous(l, "metadata")?;
    Ok(c.as_cuda_slice::<T>()?.slice(a..b))
}

/// Page-locked host memory that f32 device tensors are copied into, kept and grown across
/// calls. candle's `to_vec*` copies into pageable memory, which the driver stages through its
/// own small pinned buffers: on the H200 machine a step's forward grew ~0.5 ms for each row of
/// 128k f32 logits it brought back (~1 GB/s; benches/gpu/RESULTS.md, 2026-12-04).
#[derive(Default)]
pub struct PinnedHost {
    buf: Option<PinnedHostSlice<f32>>,
    /// Values of the last copy.
    len: usize,
}

/// The most [`PinnedHost`] holds: page-locked memory is taken from the host for good, and a
/// step's logits past this (prompt logprobs of long chunks) go through pageable memory.
pub const PINNED_HOST_MAX_BYTES: usize = 256 << 20;

impl PinnedHost {
    /// Copies `t` (f32, contiguous, on a CUDA device) here and waits for the copy. Past
    /// [`PINNED_HOST_MAX_BYTES`], or where page-locked memory cannot be had, an error: the
    /// caller copies through pageable memory instead.
    pub fn copy_from(&mut self, t: &Tensor) -> Result<()> {
        let n = t.elem_count();
        self.len = 0;
        if n == 0 {
            return Ok(());
        }
        if n * 4 > PINNED_HOST_MAX_BYTES {
            bail!("{n} values are more than PinnedHost holds");
        }
        let (s, l) = t.storage_and_layout();
        let Storage::Cuda(c) = &*s else {
            bail!("PinnedHost::copy_from: the tensor is not on a CUDA device")
        };
        let (a, b) = contiguous(l, "rows copied to the host")?;
        let src = c.as_cuda_slice::<f32>()?.slice(a..b);
        let stream = c.device().cuda_stream();
        if self.buf.as_ref().is_none_or(|p| p.len() < n) {
            // The old buffer goes before the larger one is taken.
            self.buf = None;
            // SAFETY: the copy below writes every value before any is read. Flags 0: ordinary
            // cached pages (cudarc's `alloc_pinned` makes write-combined ones, slow to read).
            let fresh = unsafe { stream.context().alloc_pinned_with_flags::<f32>(n, 0) };
            self.buf = Some(fresh.w()?);
        }
        let buf = self.buf.as_mut().expect("allocated above");
        // Into exactly `n` values: cudarc copies as many bytes as the destination holds, and
        // the buffer may be larger than this copy.
        let dst = &mut buf.as_mut_slice().w()?[..n];
        stream.memcpy_dtoh(&src, dst).w()?;
        stream.synchronize().w()?;
        self.len = n;
        Ok(())
    }

    /// The values of the last successful [`Self::copy_from`] (empty if the buffer cannot be
    /// read, which takes a failed CUDA context).
    pub fn values(&self) -> &[f32] {
        match &self.buf {
            Some(b) if self.len > 0 => b.as_slice().map_or(&[], |v| &v[..self.len]),
            _ => &[],
        }
    }
}

/// Writes `src` rows `(tokens, kv_heads · head_dim)` into `cache` `(slots, kv_heads, head_dim)`
/// at `slot_mapping` (i64 per token on the device; negative entries are skipped).
pub fn cache_write(cache: &Tensor, src: &Tensor, slot_mapping: &Tensor) -> Result<()> {
    cache.inplace_op2(
        src,
        &CacheWrite {
            slots: slot_mapping.clone(),
        },
    )
}

struct CacheWrite {
    slots: Tensor,
}

impl InplaceOp2 for CacheWrite {
    fn name(&self) -> &'static str {
        "camelid-cache-write"
    }
    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        bail!("cache_write is a CUDA op (the CPU writes its HostKvCache directly)")
    }
    fn cuda_fwd(
        &self,
        cache: &mut CudaStorage,
        cl: &Layout,
        src: &CudaStorage,
        sl: &Layout,
    ) -> Result<()> {
        let (tokens, row) = sl.shape().dims2()?;
        let (c0, _) = contiguous(cl, "cache")?;
        let (s0, s1) = contiguous(sl, "cache_write src")?;
        if c0 != 0 {
            bail!("cache must start at offset 0");
        }
        // A slot of the cache holds one source row; one slot per token.
        let slot_width: usize = cl.shape().dims().iter().skip(1).product();
        if slot_width != row || self.slots.elem_count() != tokens {
            bail!(
                "cache_write: rows of {row} into slots of {slot_width}, {tokens} tokens for {} slots",
                self.slots.elem_count()
            );
        }
        if tokens == 0 {
            return Ok(());
        }
        let (g, l) = self.slots.storage_and_layout();
        let slots = view::<i64>(&g, l)?;
        let dev = src.device().clone();
        let f = func(&dev, "attention", "cache_write", src.dtype())?;
        let cfg = LaunchConfig {
            grid_dim: (tokens as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        macro_rules! go {
            ($v:ident) => {{
                let (CudaStorageSlice::$v(c), CudaStorageSlice::$v(s)) =
                    (&mut cache.slice, &src.slice)
                else {
                    bail!("cache_write: cache and src dtypes differ")
                };
                let s = s.slice(s0..s1);
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                b.arg(&s);
                b.arg(c);
                b.arg(&slots);
                let row = row as i32;
                b.arg(&row);
                // Safety: shapes checked above; the kernel stays inside `tokens` rows and the
                // slots the engine allocated.
                unsafe { b.launch(cfg) }.w()?;
            }};
        }
        match src.dtype() {
            DType::F32 => go!(F32),
            DType::F16 => go!(F16),
            DType::BF16 => go!(BF16),
            d => bail!("cache_write: unsupported dtype {d:?}"),
        }
        Ok(())
    }
}

/// Query rows for [`paged_attention`]: each row is one token of one sequence.
pub struct AttentionRows {
    /// Per row: index into `block_tables`' rows (u32, device).
    pub row_seq: Tensor,
    /// Per row: positions visible to it, i.e. its position + 1 (u32, device).
    pub row_ctx: Tensor,
    /// `(seqs, max_blocks)` block ids (u32, device).
    pub block_tables: Tensor,
    /// Longest context of any row (sets the number of splits).
    pub max_ctx: usize,
    pub block_size: usize,
}

/// How one layer's queries score keys, as the CPU kernel's `attention::Heads` says it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionParams {
    /// Multiplies `q · k`.
    pub scale: f32,
    /// The query at position `p` sees keys `p + 1 - w ..= p` only (`None`: every earlier key).
    pub window: Option<usize>,
    /// Scores soft-capped to `cap · tanh(s / cap)` before the softmax.
    pub softcap: Option<f32>,
}

/// `q (rows, q_heads, head_dim)` against the paged `k_cache`/`v_cache`
/// `(slots, kv_heads, head_dim)`; returns `(rows, q_heads, head_dim)`.
pub fn paged_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    rows: &AttentionRows,
    params: AttentionParams,
) -> Result<Tensor> {
    if params.window == Some(0) || params.softcap.is_some_and(|c| c.is_nan() || c <= 0.0) {
        bail!("paged_attention: {params:?} (a window and a cap must be > 0)");
    }
    // A row sees at most `window` positions: the splits cover that many.
    let span = params.window.map_or(rows.max_ctx, |w| w.min(rows.max_ctx));
    let (n_rows, q_heads, _) = q.dims3()?;
    let partition = partition_for(span, n_rows, q_heads);
    q.apply_op3_no_bwd(
        k_cache,
        v_cache,
        &PagedAttention {
            row_seq: rows.row_seq.clone(),
            row_ctx: rows.row_ctx.clone(),
            block_tables: rows.block_tables.clone(),
            splits: span.div_ceil(partition).max(1),
            partition,
            block_size: rows.block_size,
            scale: params.scale,
            // 0: none, in the kernel's terms (a window past i32 covers every context).
            window: params.window.map_or(0, |w| w.min(i32::MAX as usize) as i32),
            softcap: params.softcap.unwrap_or(0.0),
        },
    )
}

struct PagedAttention {
    row_seq: Tensor,
    row_ctx: Tensor,
    block_tables: Tensor,
    splits: usize,
    partition: usize,
    block_size: usize,
    scale: f32,
    window: i32,
    softcap: f32,
}

impl CustomOp3 for PagedAttention {
    fn name(&self) -> &'static str {
        "camelid-paged-attention"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("paged_attention is a CUDA op (the CPU path is cpu_attention::paged_attention)")
    }
    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        ql: &Layout,
        k: &CudaStorage,
        kl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (rows, q_heads, head_dim) = ql.shape().dims3()?;
        let (_, kv_heads, kd) = kl.shape().dims3()?;
        if kd != head_dim
            || vl.shape() != kl.shape()
            || head_dim > MAX_HEAD_DIM
            || q_heads % kv_heads != 0
        {
            bail!(
                "paged_attention: q {:?}, k {:?}, v {:?}",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        // The grid's y (rows) and z (splits) dimensions stop at 65 535; each row needs its
        // sequence and context length.
        if rows > 65_535 || self.splits > 65_535 {
            bail!(
                "paged_attention: {rows} rows or {} splits, over the grid's 65 535",
                self.splits
            );
        }
        if self.row_seq.elem_count() != rows || self.row_ctx.elem_count() != rows {
            bail!(
                "paged_attention: {rows} query rows, {} row sequences, {} row contexts",
                self.row_seq.elem_count(),
                self.row_ctx.elem_count()
            );
        }
        let (q0, q1) = contiguous(ql, "q")?;
        if contiguous(kl, "k_cache")?.0 != 0 || contiguous(vl, "v_cache")?.0 != 0 {
            bail!("caches must start at offset 0");
        }
        let (_, max_blocks) = self.block_tables.dims2()?;
        let (g1, l1) = self.row_seq.storage_and_layout();
        let (g2, l2) = self.row_ctx.storage_and_layout();
        let (g3, l3) = self.block_tables.storage_and_layout();
        let (row_seq, row_ctx, tables) = (
            view::<u32>(&g1, l1)?,
            view::<u32>(&g2, l2)?,
            view::<u32>(&g3, l3)?,
        );
        let dev = q.device().clone();
        let splits = self.splits;
        // Rows go in launches of at most `group`: the splits' partial outputs are
        // `head_dim` f32 per (row, head, split), which for a long prompt chunk late in a long
        // context would be gigabytes at once (2 048 rows × 32 heads × 256 splits × 64).
        let group = rows_per_launch(q_heads, splits, head_dim).min(rows).max(1);
        let parts = group * q_heads * splits;
        // Safety: each launch's kernel writes every split's entries of its rows, empty
        // splits too, before its reduce reads them.
        let (part_out, part_max, part_sum) = unsafe {
            (
                dev.alloc::<f32>(parts * head_dim)?,
                dev.alloc::<f32>(parts)?,
                dev.alloc::<f32>(parts)?,
            )
        };
        let attn = func(&dev, "attention", "paged_attention", q.dtype())?;
        let reduce = func(&dev, "attention", "paged_attention_reduce", q.dtype())?;
        let configs = |n: usize| {
            let cfg = LaunchConfig {
                grid_dim: (q_heads as u32, n as u32, splits as u32),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            let rcfg = LaunchConfig {
                grid_dim: (q_heads as u32, n as u32, 1),
                block_dim: (head_dim.min(256) as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            (cfg, rcfg)
        };
        let per_row = q_heads * head_dim;
        let ints = [
            q_heads as i32,
            kv_heads as i32,
            head_dim as i32,
            self.block_size as i32,
            max_blocks as i32,
            splits as i32,
            self.partition as i32,
        ];
        macro_rules! go {
            ($v:ident, $t:ty) => {{
                let (CudaStorageSlice::$v(qs), CudaStorageSlice::$v(ks), CudaStorageSlice::$v(vs)) =
                    (&q.slice, &k.slice, &v.slice)
                else {
                    bail!("paged_attention: q and caches dtypes differ")
                };
                let qs = qs.slice(q0..q1);
                // Safety: written by the reduce kernels (every row's) before any read.
                let out = unsafe { dev.alloc::<$t>(rows * per_row)? };
                let stream = dev.cuda_stream();
                for r0 in (0..rows).step_by(group) {
                    let n = group.min(rows - r0);
                    let (cfg, rcfg) = configs(n);
                    // The launch's rows: the kernels index them from 0.
                    let (q_g, seq_g, ctx_g) = (
                        qs.slice(r0 * per_row..(r0 + n) * per_row),
                        row_seq.slice(r0..r0 + n),
                        row_ctx.slice(r0..r0 + n),
                    );
                    let mut b = stream.launch_builder(&attn);
                    b.arg(&q_g);
                    b.arg(ks);
                    b.arg(vs);
                    b.arg(&seq_g);
                    b.arg(&ctx_g);
                    b.arg(&tables);
                    b.arg(&part_out);
                    b.arg(&part_max);
                    b.arg(&part_sum);
                    for i in &ints {
                        b.arg(i);
                    }
                    b.arg(&self.scale);
                    b.arg(&self.window);
                    b.arg(&self.softcap);
                    // Safety: shapes checked above; block tables and contexts come from the
                    // engine.
                    unsafe { b.launch(cfg) }.w()?;
                    let out_g = out.slice(r0 * per_row..(r0 + n) * per_row);
                    let mut b = stream.launch_builder(&reduce);
                    b.arg(&part_out);
                    b.arg(&part_max);
                    b.arg(&part_sum);
                    b.arg(&out_g);
                    let (qh, hd, sp) = (q_heads as i32, head_dim as i32, splits as i32);
                    b.arg(&qh);
                    b.arg(&hd);
                    b.arg(&sp);
                    // Safety: the partial outputs of this launch's rows, written above.
                    unsafe { b.launch(rcfg) }.w()?;
                }
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = match q.dtype() {
            DType::F32 => go!(F32, f32),
            DType::F16 => go!(F16, half::f16),
            DType::BF16 => go!(BF16, half::bf16),
            d => bail!("paged_attention: unsupported dtype {d:?}"),
        };
        Ok((out, Shape::from((rows, q_heads, head_dim))))
    }
}

/// `(x + residual, rms_norm(x + residual) · weight)` for `(rows, hidden)` inputs, in one kernel.
pub fn add_rms_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let both = x.apply_op3_no_bwd(residual, weight, &AddRmsNorm { eps })?;
    let rows = x.dim(0)?;
    Ok((both.narrow(0, 0, rows)?, both.narrow(0, rows, rows)?))
}

struct AddRmsNorm {
    eps: f32,
}

impl CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "camelid-add-rms-norm"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("add_rms_norm is a CUDA op")
    }
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        r: &CudaStorage,
        rl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (rows, hidden) = xl.shape().dims2()?;
        if rl.shape() != xl.shape() || wl.shape().dims() != [hidden] {
            bail!(
                "add_rms_norm: x {:?}, residual {:?}, weight {:?}",
                xl.shape(),
                rl.shape(),
                wl.shape()
            );
        }
        let ((x0, x1), (r0, r1), (w0, w1)) = (
            contiguous(xl, "x")?,
            contiguous(rl, "residual")?,
            contiguous(wl, "weight")?,
        );
        let dev = x.device().clone();
        let f = func(&dev, "layers", "add_rms_norm", x.dtype())?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        macro_rules! go {
            ($v:ident, $t:ty) => {{
                let (CudaStorageSlice::$v(xs), CudaStorageSlice::$v(rs), CudaStorageSlice::$v(ws)) =
                    (&x.slice, &r.slice, &w.slice)
                else {
                    bail!("add_rms_norm: dtypes differ")
                };
                // Safety: every element is written by the kernel.
                let out = unsafe { dev.alloc::<$t>(2 * rows * hidden)? };
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                let (xs, rs, ws) = (xs.slice(x0..x1), rs.slice(r0..r1), ws.slice(w0..w1));
                b.arg(&xs);
                b.arg(&rs);
                b.arg(&ws);
                b.arg(&out);
                let (n, h) = (rows as i64, hidden as i32);
                b.arg(&n);
                b.arg(&h);
                b.arg(&self.eps);
                unsafe { b.launch(cfg) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = match x.dtype() {
            DType::F32 => go!(F32, f32),
            DType::F16 => go!(F16, half::f16),
            DType::BF16 => go!(BF16, half::bf16),
            d => bail!("add_rms_norm: unsupported dtype {d:?}"),
        };
        Ok((out, Shape::from((2 * rows, hidden))))
    }
}

/// Rotary frequencies for [`rope_inplace`]: `inv_freq (rows, head_dim / 2)` f32 and, per
/// token, the row it takes (`freq_row`, u32), all on the device; cos and sin are multiplied
/// by `mscale` (YaRN's and LongRoPE's attention factor; 1 otherwise).
pub struct RopeFreqs<'a> {
    pub inv_freq: &'a Tensor,
    pub freq_row: &'a Tensor,
    pub mscale: f32,
}

/// Rotates `x (tokens, heads, head_dim)` in place at `positions` (u32 per token, device),
/// token `t` with frequencies `freqs.inv_freq[freqs.freq_row[t]]`.
pub fn rope_inplace(
    x: &Tensor,
    positions: &Tensor,
    freqs: &RopeFreqs,
    interleaved: bool,
) -> Result<()> {
    let (tokens, _, head_dim) = x.dims3()?;
    let (_, half) = freqs.inv_freq.dims2()?;
    if half * 2 != head_dim || positions.dims1()? != tokens || freqs.freq_row.dims1()? != tokens {
        bail!(
            "rope_inplace: x {:?}, positions {:?}, inv_freq {:?}, freq_row {:?}",
            x.shape(),
            positions.shape(),
            freqs.inv_freq.shape(),
            freqs.freq_row.shape()
        );
    }
    x.inplace_op1(&RopeInplace {
        positions: positions.clone(),
        freq_row: freqs.freq_row.clone(),
        inv_freq: freqs.inv_freq.clone(),
        mscale: freqs.mscale,
        interleaved,
    })
}

struct RopeInplace {
    positions: Tensor,
    freq_row: Tensor,
    inv_freq: Tensor,
    mscale: f32,
    interleaved: bool,
}

impl InplaceOp1 for RopeInplace {
    fn name(&self) -> &'static str {
        "camelid-rope"
    }
    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
        bail!("rope_inplace is a CUDA op")
    }
    fn cuda_fwd(&self, x: &mut CudaStorage, xl: &Layout) -> Result<()> {
        let (tokens, heads, head_dim) = xl.shape().dims3()?;
        let (x0, x1) = contiguous(xl, "x")?;
        let (g1, l1) = self.positions.storage_and_layout();
        let (g2, l2) = self.inv_freq.storage_and_layout();
        let (g3, l3) = self.freq_row.storage_and_layout();
        let (pos, inv, rows) = (
            view::<u32>(&g1, l1)?,
            view::<f32>(&g2, l2)?,
            view::<u32>(&g3, l3)?,
        );
        let dev = x.device().clone();
        let f = func(&dev, "layers", "rope_inplace", x.dtype())?;
        let cfg = LaunchConfig {
            grid_dim: (tokens as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        macro_rules! go {
            ($v:ident) => {{
                let CudaStorageSlice::$v(xs) = &mut x.slice else {
                    unreachable!()
                };
                let mut xs = xs.slice_mut(x0..x1);
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                b.arg(&mut xs);
                b.arg(&pos);
                b.arg(&rows);
                b.arg(&inv);
                let (h, d, i) = (heads as i32, head_dim as i32, self.interleaved as i32);
                b.arg(&h);
                b.arg(&d);
                b.arg(&i);
                b.arg(&self.mscale);
                unsafe { b.launch(cfg) }.w()?;
            }};
        }
        match x.dtype() {
            DType::F32 => go!(F32),
            DType::F16 => go!(F16),
            DType::BF16 => go!(BF16),
            d => bail!("rope_inplace: unsupported dtype {d:?}"),
        }
        Ok(())
    }
}

/// `silu(gate) · up` for `gate_up (rows, 2 · inter)` (gate first); returns `(rows, inter)`.
pub fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    gate_up.apply_op1_no_bwd(&ActMul { gelu: false })
}

/// `gelu(gate) · up` (GELU's tanh approximation: Gemma's GeGLU), as [`silu_mul`].
pub fn gelu_tanh_mul(gate_up: &Tensor) -> Result<Tensor> {
    gate_up.apply_op1_no_bwd(&ActMul { gelu: true })
}

/// `act(gate) · up`: GELU (tanh) or SiLU.
struct ActMul {
    gelu: bool,
}

impl CustomOp1 for ActMul {
    fn name(&self) -> &'static str {
        if self.gelu {
            "camelid-gelu-tanh-mul"
        } else {
            "camelid-silu-mul"
        }
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{} is a CUDA op", self.name())
    }
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (rows, width) = l.shape().dims2()?;
        let inter = width / 2;
        let (a, b_) = contiguous(l, "gate_up")?;
        let dev = s.device().clone();
        let kernel = if self.gelu {
            "gelu_tanh_mul"
        } else {
            "silu_mul"
        };
        let f = func(&dev, "layers", kernel, s.dtype())?;
        let n = (rows * inter) as u32;
        let cfg = LaunchConfig::for_num_elems(n.max(1));
        macro_rules! go {
            ($v:ident, $t:ty) => {{
                let CudaStorageSlice::$v(xs) = &s.slice else {
                    unreachable!()
                };
                let xs = xs.slice(a..b_);
                // Safety: every element is written by the kernel.
                let out = unsafe { dev.alloc::<$t>(rows * inter)? };
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                b.arg(&xs);
                b.arg(&out);
                let (r, i) = (rows as i64, inter as i32);
                b.arg(&r);
                b.arg(&i);
                unsafe { b.launch(cfg) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = match s.dtype() {
            DType::F32 => go!(F32, f32),
            DType::F16 => go!(F16, half::f16),
            DType::BF16 => go!(BF16, half::bf16),
            d => bail!("{kernel}: unsupported dtype {d:?}"),
        };
        Ok((out, Shape::from((rows, inter))))
    }
}
