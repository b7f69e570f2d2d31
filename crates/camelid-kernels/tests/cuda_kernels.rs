//! camelid's CUDA kernels against plain CPU references on random inputs (never zeros):
//! ragged batches, block tables out of order, contexts crossing the split-K partition.
//! Built with `--features cuda`; on a machine without a GPU each test says so and returns.
//! kernels/build-cuda.sh builds this as a binary for the GPU machine (benches/gpu/run.sh).
#![cfg(feature = "cuda")]

use camelid_kernels::cuda::{self as cuda_ops, AttentionRows, PARTITION};
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
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "an all-zero reference tests nothing");
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
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
        let got = to_vec(&cuda_ops::paged_attention(&qt, &kt, &vt, &meta, scale).unwrap());
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

#[test]
fn rope_inplace_matches_the_cpu_in_both_styles() {
    let Some(dev) = cuda() else { return };
    let (tokens, heads, hd) = (6, 4, 64);
    let positions: Vec<u32> = vec![0, 1, 2, 700, 4095, 8191];
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|j| 10000f32.powf(-(2.0 * j as f32) / hd as f32))
        .collect();
    let x = random(tokens * heads * hd, 10);
    for interleaved in [false, true] {
        for dt in DTYPES {
            let xt = Tensor::from_vec(x.clone(), (tokens, heads, hd), &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let xr = to_vec(&xt);
            cuda_ops::rope_inplace(
                &xt,
                &Tensor::new(positions.as_slice(), &dev).unwrap(),
                &Tensor::new(inv_freq.as_slice(), &dev).unwrap(),
                interleaved,
            )
            .unwrap();
            let mut want = xr.clone();
            for t in 0..tokens {
                for h in 0..heads {
                    for j in 0..hd / 2 {
                        let base = (t * heads + h) * hd;
                        let (a, b) = if interleaved {
                            (base + 2 * j, base + 2 * j + 1)
                        } else {
                            (base + j, base + j + hd / 2)
                        };
                        let ang = positions[t] as f64 * inv_freq[j] as f64;
                        let (s, c) = ang.sin_cos();
                        want[a] = (xr[a] as f64 * c - xr[b] as f64 * s) as f32;
                        want[b] = (xr[a] as f64 * s + xr[b] as f64 * c) as f32;
                    }
                }
            }
            // f32 angles at position 8191 carry ~1e-3 rad of rounding: a looser f32 bound.
            let tol = tolerance(dt).max(2e-3);
            let err = rel_err(&to_vec(&xt), &want);
            assert!(err < tol, "{dt:?} interleaved={interleaved}: {err}");
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
