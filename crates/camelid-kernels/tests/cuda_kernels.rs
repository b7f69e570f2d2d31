//! camelid's CUDA kernels against plain CPU references on random inputs (never zeros):
//! ragged batches, block tables out of order, contexts crossing the split-K partition; the
//! paged attention's window, scale and soft-capping against the CPU attention kernel
//! (`camelid_kernels::attention`) on the same data.
//! Built with `--features cuda`; on a machine without a GPU each test says so and returns.
//! kernels/build-cuda.sh builds this as a binary for the GPU machine (benches/gpu/run.sh).
#![cfg(feature = "cuda")]

use camelid_kernels::attention::{
    self as cpu_attention, Heads, HostKvCache, HostPaged, KvDtype, QkvRows, RopeStyle, SeqSpan,
};
use camelid_kernels::cuda::{self as cuda_ops, AttentionParams, AttentionRows, PARTITION};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

/// The GPU, or `None` (the test then prints SKIPPED and returns) on a machine without one.
/// Where a GPU is expected (`CAMELID_REQUIRE_GPU=1`, set by benches/gpu/run.sh) a missing one
/// fails the test instead.
fn cuda() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) if std::env::var("CAMELID_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("CAMELID_REQUIRE_GPU=1 but no CUDA device: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: no CUDA device ({e})");
            None
        }
    }
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest |a - b| relative to the largest |b| (inputs are random and never all zero, so the
/// scale is the output's own: a bf16 bound is relative, not an absolute one in disguise).
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    assert!(
        b.iter().all(|v| v.is_finite()),
        "a reference that is not finite"
    );
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "an all-zero reference tests nothing");
    // NaN wins (`f32::max` would drop it: an all-NaN output would score 0).
    let worst = |m: f32, d: f32| if d.is_nan() || d > m { d } else { m };
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, worst)
        / scale
}

/// A NaN in the output is the largest error, wherever it is.
#[test]
fn rel_err_counts_nan_as_the_worst() {
    assert!(rel_err(&[1.0, f32::NAN, 2.0], &[1.0, 1.0, 2.0]).is_nan());
    assert!(rel_err(&[f32::NAN, 1.0], &[1.0, 1.0]).is_nan());
    assert_eq!(rel_err(&[1.0, 2.5], &[1.0, 2.0]), 0.25);
}

fn tolerance(dt: DType) -> f32 {
    match dt {
        DType::F32 => 1e-4,
        DType::F16 => 4e-3,
        _ => 3e-2,
    }
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

#[test]
fn cache_write_puts_rows_in_their_slots() {
    let Some(dev) = cuda() else { return };
    let (slots, row, tokens) = (64, 3 * 64, 9);
    for dt in DTYPES {
        let cache0 = random(slots * row, 1);
        let src = random(tokens * row, 2);
        // Scattered slots; token 4 is padding (-1) and must write nothing.
        let map: Vec<i64> = vec![17, 3, 63, 0, -1, 40, 41, 8, 33];
        let cache = Tensor::from_vec(cache0.clone(), (slots, 3, 64), &dev)
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        let s = Tensor::from_vec(src.clone(), (tokens, row), &dev)
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        let m = Tensor::new(map.as_slice(), &dev).unwrap();
        cuda_ops::cache_write(&cache, &s, &m).unwrap();
        let got = to_vec(&cache);
        // Reference: the same rounding to dt on the CPU, then the copy.
        let round = |v: &[f32], shape: (usize, usize)| {
            to_vec(
                &Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap(),
            )
        };
        let mut want = round(&cache0, (slots, row));
        let src_r = round(&src, (tokens, row));
        for (t, &slot) in map.iter().enumerate() {
            if slot >= 0 {
                let slot = slot as usize;
                want[slot * row..(slot + 1) * row].copy_from_slice(&src_r[t * row..(t + 1) * row]);
            }
        }
        assert_eq!(got, want, "{dt:?}");
    }
}

/// Plain attention of one query row (all heads) over positions 0..ctx of a sequence.
#[allow(clippy::too_many_arguments)]
fn naive_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    table: &[u32],
    ctx: usize,
    bs: usize,
    (qh, kvh, hd): (usize, usize, usize),
    scale: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; qh * hd];
    for h in 0..qh {
        let g = h / (qh / kvh);
        let slot = |p: usize| table[p / bs] as usize * bs + p % bs;
        let s: Vec<f64> = (0..ctx)
            .map(|p| {
                let kr = &k[(slot(p) * kvh + g) * hd..][..hd];
                (0..hd)
                    .map(|d| q[h * hd + d] as f64 * kr[d] as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for d in 0..hd {
            out[h * hd + d] = (0..ctx)
                .map(|p| e[p] / z * v[(slot(p) * kvh + g) * hd + d] as f64)
                .sum::<f64>() as f32;
        }
    }
    out
}

#[test]
fn paged_attention_matches_naive_attention_on_ragged_batches() {
    let Some(dev) = cuda() else { return };
    let (qh, kvh, hd, bs) = (8, 2, 128, 16);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    // Three sequences: 1 token, 37 tokens (partial last block), 1 100 tokens (three splits).
    let lens = [1usize, 37, 1100];
    let blocks_needed: Vec<usize> = lens.iter().map(|l| l.div_ceil(bs)).collect();
    let total_blocks: usize = blocks_needed.iter().sum::<usize>() + 5;
    // Hand out block ids in a shuffled order so no table is contiguous.
    let mut ids: Vec<u32> = (0..total_blocks as u32).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.random_range(0..=i));
    }
    let max_blocks = *blocks_needed.iter().max().unwrap();
    let mut tables = vec![0u32; lens.len() * max_blocks];
    let mut next = 0;
    for (s, &n) in blocks_needed.iter().enumerate() {
        for b in 0..n {
            tables[s * max_blocks + b] = ids[next];
            next += 1;
        }
    }
    // Rows: decode of seq 0 (ctx 1), decode of seq 2 (ctx 1100), a prefill run of seq 1
    // (positions 30..37, ctx 31..=37), and a row of seq 2 at ctx 513 (just past a split).
    let mut rows: Vec<(u32, u32)> = vec![(0, 1), (2, 1100)];
    rows.extend((31..=37).map(|c| (1u32, c as u32)));
    rows.push((2, (PARTITION + 1) as u32));
    let slots = total_blocks * bs;
    let k = random(slots * kvh * hd, 4);
    let v = random(slots * kvh * hd, 5);
    let q = random(rows.len() * qh * hd, 6);
    let scale = 1.0 / (hd as f32).sqrt();
    for dt in DTYPES {
        let t = |data: &[f32], shape: (usize, usize, usize)| {
            Tensor::from_vec(data.to_vec(), shape, &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap()
        };
        let (qt, kt, vt) = (
            t(&q, (rows.len(), qh, hd)),
            t(&k, (slots, kvh, hd)),
            t(&v, (slots, kvh, hd)),
        );
        let meta = AttentionRows {
            row_seq: Tensor::new(
                rows.iter().map(|r| r.0).collect::<Vec<_>>().as_slice(),
                &dev,
            )
            .unwrap(),
            row_ctx: Tensor::new(
                rows.iter().map(|r| r.1).collect::<Vec<_>>().as_slice(),
                &dev,
            )
            .unwrap(),
            block_tables: Tensor::from_vec(tables.clone(), (lens.len(), max_blocks), &dev).unwrap(),
            max_ctx: 1100,
            block_size: bs,
        };
        let params = AttentionParams {
            scale,
            window: None,
            softcap: None,
        };
        let got = to_vec(&cuda_ops::paged_attention(&qt, &kt, &vt, &meta, params).unwrap());
        // The rows in launches of one and of three rows (a long prompt chunk's way, whose
        // splits' partial outputs would not fit at once): the same bits.
        let splits = 1100usize.div_ceil(cuda_ops::partition_for(1100, rows.len(), qh));
        for budget in [1, 3 * qh * splits * (hd + 2) * 4] {
            cuda_ops::set_partials_budget(budget);
            let grouped = cuda_ops::paged_attention(&qt, &kt, &vt, &meta, params);
            cuda_ops::set_partials_budget(camelid_kernels::cuda_shapes::PARTIALS_BUDGET);
            let grouped = to_vec(&grouped.unwrap());
            assert!(
                grouped
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{dt:?}: rows launched in groups (budget {budget} B) differ"
            );
        }
        // The reference sees the same dt-rounded inputs.
        let (qr, kr, vr) = (to_vec(&qt), to_vec(&kt), to_vec(&vt));
        for (i, &(s, ctx)) in rows.iter().enumerate() {
            let table = &tables[s as usize * max_blocks..(s as usize + 1) * max_blocks];
            let want = naive_attention(
                &qr[i * qh * hd..(i + 1) * qh * hd],
                &kr,
                &vr,
                table,
                ctx as usize,
                bs,
                (qh, kvh, hd),
                scale,
            );
            let err = rel_err(&got[i * qh * hd..(i + 1) * qh * hd], &want);
            assert!(
                err < tolerance(dt),
                "{dt:?} row {i} (seq {s}, ctx {ctx}): error {err}"
            );
        }
    }
}

#[test]
fn add_rms_norm_matches_the_cpu() {
    let Some(dev) = cuda() else { return };
    let (rows, hidden, eps) = (5, 4096 + 64, 1e-5f32);
    let (x, r, w) = (
        random(rows * hidden, 7),
        random(rows * hidden, 8),
        random(hidden, 9),
    );
    for dt in DTYPES {
        let t = |d: &[f32], s: &[usize]| {
            Tensor::from_vec(d.to_vec(), s, &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap()
        };
        let (sum, normed) = cuda_ops::add_rms_norm(
            &t(&x, &[rows, hidden]),
            &t(&r, &[rows, hidden]),
            &t(&w, &[hidden]),
            eps,
        )
        .unwrap();
        let (xr, rr, wr) = (
            to_vec(&t(&x, &[rows, hidden])),
            to_vec(&t(&r, &[rows, hidden])),
            to_vec(&t(&w, &[hidden])),
        );
        let mut want_sum = vec![0f32; rows * hidden];
        let mut want_norm = vec![0f32; rows * hidden];
        for i in 0..rows {
            let s: Vec<f32> = (0..hidden)
                .map(|j| xr[i * hidden + j] + rr[i * hidden + j])
                .collect();
            let ms = s.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / hidden as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            for j in 0..hidden {
                want_sum[i * hidden + j] = s[j];
                want_norm[i * hidden + j] = (s[j] as f64 * inv * wr[j] as f64) as f32;
            }
        }
        assert!(
            rel_err(&to_vec(&sum), &want_sum) < tolerance(dt),
            "{dt:?} sum"
        );
        assert!(
            rel_err(&to_vec(&normed), &want_norm) < tolerance(dt),
            "{dt:?} norm"
        );
    }
}

/// Two frequency rows (two rope bases, as two chunks of a batch may have: dynamic NTK,
/// LongRoPE), tokens taking either, and an attention factor on cos and sin (YaRN, LongRoPE).
#[test]
fn rope_inplace_matches_the_cpu_in_both_styles() {
    let Some(dev) = cuda() else { return };
    let (tokens, heads, hd) = (6, 4, 64);
    let positions: Vec<u32> = vec![0, 1, 2, 700, 4095, 8191];
    let freq_row: Vec<u32> = vec![0, 1, 1, 0, 1, 0];
    let inv_freq: Vec<f32> = [10_000f32, 1_000_000.0]
        .iter()
        .flat_map(|theta| (0..hd / 2).map(move |j| theta.powf(-(2.0 * j as f32) / hd as f32)))
        .collect();
    let x = random(tokens * heads * hd, 10);
    let inv_t = Tensor::from_vec(inv_freq.clone(), (2, hd / 2), &dev).unwrap();
    let rows_t = Tensor::new(freq_row.as_slice(), &dev).unwrap();
    let pos_t = Tensor::new(positions.as_slice(), &dev).unwrap();
    for mscale in [1.0f32, 1.25] {
        for interleaved in [false, true] {
            for dt in DTYPES {
                let xt = Tensor::from_vec(x.clone(), (tokens, heads, hd), &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap();
                let xr = to_vec(&xt);
                let freqs = cuda_ops::RopeFreqs {
                    inv_freq: &inv_t,
                    freq_row: &rows_t,
                    mscale,
                };
                cuda_ops::rope_inplace(&xt, &pos_t, &freqs, interleaved).unwrap();
                let mut want = xr.clone();
                for t in 0..tokens {
                    let f = &inv_freq[freq_row[t] as usize * hd / 2..][..hd / 2];
                    for h in 0..heads {
                        for (j, &fj) in f.iter().enumerate() {
                            let base = (t * heads + h) * hd;
                            let (a, b) = if interleaved {
                                (base + 2 * j, base + 2 * j + 1)
                            } else {
                                (base + j, base + j + hd / 2)
                            };
                            let ang = positions[t] as f64 * fj as f64;
                            let (s, c) = ang.sin_cos();
                            let (c, s) = (c * mscale as f64, s * mscale as f64);
                            want[a] = (xr[a] as f64 * c - xr[b] as f64 * s) as f32;
                            want[b] = (xr[a] as f64 * s + xr[b] as f64 * c) as f32;
                        }
                    }
                }
                // f32 angles at position 8191 carry ~1e-3 rad of rounding: a looser f32 bound.
                let tol = tolerance(dt).max(2e-3);
                let err = rel_err(&to_vec(&xt), &want);
                assert!(
                    err < tol,
                    "{dt:?} interleaved={interleaved} mscale={mscale}: {err}"
                );
            }
        }
    }
}

#[test]
fn silu_mul_matches_the_cpu() {
    let Some(dev) = cuda() else { return };
    let (rows, inter) = (7, 11008);
    let gu = random(rows * 2 * inter, 11);
    for dt in DTYPES {
        let t = Tensor::from_vec(gu.clone(), (rows, 2 * inter), &dev)
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        let r = to_vec(&t);
        let got = to_vec(&cuda_ops::silu_mul(&t).unwrap());
        let want: Vec<f32> = (0..rows * inter)
            .map(|i| {
                let (row, j) = (i / inter, i % inter);
                let g = r[row * 2 * inter + j] as f64;
                let u = r[row * 2 * inter + inter + j] as f64;
                (g / (1.0 + (-g).exp()) * u) as f32
            })
            .collect();
        assert!(rel_err(&got, &want) < tolerance(dt), "{dt:?}");
    }
}

#[test]
fn gelu_tanh_mul_matches_the_cpu() {
    let Some(dev) = cuda() else { return };
    let (rows, inter) = (5, 9216);
    // Gates over ±4: the tanh's curve, not only its linear middle.
    let gu: Vec<f32> = random(rows * 2 * inter, 12)
        .iter()
        .map(|v| 4.0 * v)
        .collect();
    for dt in DTYPES {
        let t = Tensor::from_vec(gu.clone(), (rows, 2 * inter), &dev)
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        let r = to_vec(&t);
        let got = to_vec(&cuda_ops::gelu_tanh_mul(&t).unwrap());
        let want: Vec<f32> = (0..rows * inter)
            .map(|i| {
                let (row, j) = (i / inter, i % inter);
                let g = r[row * 2 * inter + j] as f64;
                let u = r[row * 2 * inter + inter + j] as f64;
                let inner = (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g.powi(3));
                (0.5 * g * (1.0 + inner.tanh()) * u) as f32
            })
            .collect();
        assert!(rel_err(&got, &want) < tolerance(dt), "{dt:?}");
    }
}

/// Sequences of 1, 37 and 1 100 tokens (a lone token, a partial last block, three split-K
/// partitions) in shuffled blocks, every token a query row that sees its own position and the
/// earlier ones: random queries, keys and values, and a cache whose other slots hold noise.
struct AttentionCase {
    heads: (usize, usize, usize),
    block_size: usize,
    blocks: usize,
    lens: Vec<usize>,
    /// Per sequence.
    tables: Vec<Vec<u32>>,
    /// `(tokens, q_heads · head_dim)` and `(tokens, kv_heads · head_dim)`, sequence after
    /// sequence.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl AttentionCase {
    fn new((qh, kvh, hd): (usize, usize, usize), seed: u64) -> Self {
        let (bs, lens) = (16, vec![1usize, 37, 1100]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let blocks = lens.iter().map(|l| l.div_ceil(bs)).sum::<usize>() + 3;
        let mut ids: Vec<u32> = (0..blocks as u32).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.random_range(0..=i));
        }
        let mut free = ids.into_iter();
        let tables = lens
            .iter()
            .map(|l| free.by_ref().take(l.div_ceil(bs)).collect())
            .collect();
        let n: usize = lens.iter().sum();
        Self {
            heads: (qh, kvh, hd),
            block_size: bs,
            blocks,
            tables,
            q: random(n * qh * hd, seed + 1),
            k: random(n * kvh * hd, seed + 2),
            v: random(n * kvh * hd, seed + 3),
            lens,
        }
    }

    /// Each token's (sequence, position), in row order.
    fn tokens(&self) -> Vec<(usize, usize)> {
        self.lens
            .iter()
            .enumerate()
            .flat_map(|(s, &l)| (0..l).map(move |p| (s, p)))
            .collect()
    }

    /// The case's inputs rounded to `dt` (what both kernels then see).
    fn rounded(&self, dt: DType) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let r = |x: &[f32]| to_vec(&Tensor::new(x, &Device::Cpu).unwrap().to_dtype(dt).unwrap());
        (r(&self.q), r(&self.k), r(&self.v))
    }

    /// The CPU attention kernel over a host cache with the same block tables, each sequence a
    /// prompt from position 0 (cos 1, sin 0: no rotation): `(tokens, q_heads · head_dim)`.
    fn cpu(&self, (q, k, v): &(Vec<f32>, Vec<f32>, Vec<f32>), p: AttentionParams) -> Vec<f32> {
        let (qh, kvh, hd) = self.heads;
        let bs = self.block_size;
        let mut cache = HostKvCache::new(1, self.blocks, bs, kvh, hd, KvDtype::F32);
        let mut paged = HostPaged {
            cache: &mut cache,
            block_size: bs,
            tables: self.tables.clone(),
        };
        let spans: Vec<SeqSpan> = self
            .lens
            .iter()
            .enumerate()
            .map(|(s, &l)| SeqSpan::new(s as u64, 0, l))
            .collect();
        let n: usize = self.lens.iter().sum();
        let (cos, sin) = (vec![1f32; n * hd / 2], vec![0f32; n * hd / 2]);
        let rows = QkvRows {
            q: (q.as_slice(), qh * hd, 0),
            k: (k.as_slice(), kvh * hd, 0),
            v: (v.as_slice(), kvh * hd, 0),
        };
        let heads = Heads {
            q: qh,
            kv: kvh,
            dim: hd,
            rope: RopeStyle::Half,
            window: p.window,
            scale: Some(p.scale),
            softcap: p.softcap,
        };
        let mut out = vec![0f32; n * qh * hd];
        cpu_attention::paged_attention(0, &spans, &rows, &cos, &sin, heads, &mut paged, &mut out);
        out
    }

    /// The CUDA kernel in `dt` over a slot-major device cache holding the same keys and
    /// values in the same blocks (noise in every other slot).
    fn cuda(&self, dev: &Device, dt: DType, p: AttentionParams) -> Vec<f32> {
        let (qh, kvh, hd) = self.heads;
        let (bs, kw) = (self.block_size, kvh * hd);
        let slots = self.blocks * bs;
        let (mut kc, mut vc) = (random(slots * kw, 20), random(slots * kw, 21));
        let tokens = self.tokens();
        for (t, &(s, pos)) in tokens.iter().enumerate() {
            let slot = self.tables[s][pos / bs] as usize * bs + pos % bs;
            kc[slot * kw..][..kw].copy_from_slice(&self.k[t * kw..][..kw]);
            vc[slot * kw..][..kw].copy_from_slice(&self.v[t * kw..][..kw]);
        }
        let t = |data: Vec<f32>, shape: (usize, usize, usize)| {
            Tensor::from_vec(data, shape, dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap()
        };
        let max_blocks = self.tables.iter().map(Vec::len).max().unwrap();
        let mut flat = vec![0u32; self.tables.len() * max_blocks];
        for (row, table) in flat.chunks_mut(max_blocks).zip(&self.tables) {
            row[..table.len()].copy_from_slice(table);
        }
        let seq: Vec<u32> = tokens.iter().map(|&(s, _)| s as u32).collect();
        let ctx: Vec<u32> = tokens.iter().map(|&(_, p)| p as u32 + 1).collect();
        let meta = AttentionRows {
            row_seq: Tensor::new(seq.as_slice(), dev).unwrap(),
            row_ctx: Tensor::new(ctx.as_slice(), dev).unwrap(),
            block_tables: Tensor::from_vec(flat, (self.tables.len(), max_blocks), dev).unwrap(),
            max_ctx: *self.lens.iter().max().unwrap(),
            block_size: bs,
        };
        let out = cuda_ops::paged_attention(
            &t(self.q.clone(), (tokens.len(), qh, hd)),
            &t(kc, (slots, kvh, hd)),
            &t(vc, (slots, kvh, hd)),
            &meta,
            p,
        )
        .unwrap();
        to_vec(&out)
    }

    /// The CUDA kernel against the CPU kernel under `p`, every row within the dtype's bound;
    /// the CPU kernel's rows under `p` must differ from those under `plain` (else the case
    /// would not test what `p` adds).
    fn check(&self, dev: &Device, p: AttentionParams, plain: AttentionParams) {
        let (qh, _, hd) = self.heads;
        let row = qh * hd;
        let want_f32 = self.cpu(&self.rounded(DType::F32), p);
        let unchanged = self.cpu(&self.rounded(DType::F32), plain);
        let moved = want_f32
            .chunks(row)
            .zip(unchanged.chunks(row))
            .map(|(a, b)| rel_err(a, b))
            .fold(0f32, f32::max);
        assert!(
            moved > 0.1,
            "{p:?} vs {plain:?} moves the output only {moved}"
        );
        for dt in DTYPES {
            let want = self.cpu(&self.rounded(dt), p);
            let got = self.cuda(dev, dt, p);
            for (t, ((s, pos), (g, w))) in self
                .tokens()
                .into_iter()
                .zip(got.chunks(row).zip(want.chunks(row)))
                .enumerate()
            {
                let err = rel_err(g, w);
                assert!(
                    err < tolerance(dt),
                    "{dt:?} {p:?}: row {t} (sequence {s}, position {pos}): error {err}"
                );
            }
        }
    }
}

/// Windows of one position, one block, an unaligned width and one wider than a split-K
/// partition (its rows' splits start at the window, mid-block), as the CPU kernel counts them.
#[test]
fn paged_attention_window_matches_the_cpu_kernel() {
    let Some(dev) = cuda() else { return };
    let case = AttentionCase::new((8, 2, 128), 30);
    let plain = AttentionParams {
        scale: 1.0 / 128f32.sqrt(),
        window: None,
        softcap: None,
    };
    for w in [1, 16, 100, PARTITION + 88] {
        let p = AttentionParams {
            window: Some(w),
            ..plain
        };
        case.check(&dev, p, plain);
    }
}

/// A score scale other than `1 / sqrt(head_dim)` (Gemma's `query_pre_attn_scalar`).
#[test]
fn paged_attention_scale_matches_the_cpu_kernel() {
    let Some(dev) = cuda() else { return };
    let case = AttentionCase::new((8, 2, 64), 40);
    let plain = AttentionParams {
        scale: 1.0 / 64f32.sqrt(),
        window: None,
        softcap: None,
    };
    case.check(
        &dev,
        AttentionParams {
            scale: 0.4,
            ..plain
        },
        plain,
    );
}

/// Soft-capped scores (Gemma 2: head size 256, the kernel's largest), alone and with a
/// window (Gemma 2's local layers).
#[test]
fn paged_attention_softcap_matches_the_cpu_kernel() {
    let Some(dev) = cuda() else { return };
    let case = AttentionCase::new((4, 2, 256), 50);
    // Scores of standard deviation ~2 (256 products of variance 1/9, times 0.4): a cap of
    // 1.5 bends most of them.
    let plain = AttentionParams {
        scale: 0.4,
        window: None,
        softcap: None,
    };
    let capped = AttentionParams {
        softcap: Some(1.5),
        ..plain
    };
    case.check(&dev, capped, plain);
    let windowed = AttentionParams {
        window: Some(100),
        ..capped
    };
    case.check(
        &dev,
        windowed,
        AttentionParams {
            window: Some(100),
            ..plain
        },
    );
}

/// Rows copied through page-locked memory are the tensor's values, from an offset view too;
/// the buffer grows for a larger copy and a smaller one after it shows only its own values.
#[test]
fn pinned_host_copies_are_the_tensors_values() {
    let Some(dev) = cuda() else { return };
    let mut pinned = cuda_ops::PinnedHost::default();
    let big = Tensor::from_vec(random(3 * 128_256, 11), (3, 128_256), &dev).unwrap();
    for t in [
        big.narrow(0, 1, 1).unwrap(), // an offset into the allocation
        big.clone(),                  // larger: a new buffer
        big.narrow(0, 2, 1).unwrap(), // smaller again
    ] {
        pinned.copy_from(&t).unwrap();
        assert_eq!(pinned.values(), to_vec(&t).as_slice());
    }
    let empty = Tensor::zeros((0, 8), DType::F32, &dev).unwrap();
    pinned.copy_from(&empty).unwrap();
    assert!(pinned.values().is_empty());
    // Past the cap: an error (the caller goes through pageable memory), nothing kept.
    let n = cuda_ops::PINNED_HOST_MAX_BYTES / 4 + 1;
    let over = Tensor::zeros((1, n), DType::F32, &dev).unwrap();
    assert!(pinned.copy_from(&over).is_err());
    assert!(pinned.values().is_empty());
}
