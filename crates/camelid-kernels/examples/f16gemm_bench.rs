//! Micro-benchmark of the 16-bit weight matmul on a 1B-class FFN matrix (8192 × 2048, 32 MiB
//! in f16: past the L2, as in a real model) against candle's f32 matmul on the same weights
//! widened (what the CPU ran before): `cargo run --release -p camelid-kernels --example
//! f16gemm_bench [threads] [f16|bf16] [ours]` (`ours`: candle's matmul not run, e.g. for
//! `perf stat` on a shared machine). With `ours`, every flavour past AVX2 that the CPU runs
//! (AVX-512 FMA, AMX tiles), alternating, at 1–256 rows; with `layout`, how long each flavour's
//! layout takes to build (part of a model's load).
use camelid_kernels::f16gemm::{matmul, Flavour, HalfKind, HalfWeight};
use candle_core::{Device, Tensor};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(0);
    let kind = match std::env::args().nth(2).as_deref() {
        None | Some("f16") => HalfKind::F16,
        Some("bf16") => HalfKind::Bf16,
        Some(f) => panic!("{f}: f16 or bf16"),
    };
    if threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .unwrap();
    }
    // SHAPE=n,k: another matrix (2048,8192: the FFN's down projection).
    let (n, k) = std::env::var("SHAPE").map_or((8192, 2048), |v| {
        let (n, k) = v.split_once(',').unwrap();
        (n.parse().unwrap(), k.parse().unwrap())
    });
    let wf = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu).unwrap();
    let bits: Vec<u16> = wf
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|&v| match kind {
            HalfKind::F16 => half::f16::from_f32(v).to_bits(),
            HalfKind::Bf16 => half::bf16::from_f32(v).to_bits(),
        })
        .collect();
    if std::env::args().nth(3).as_deref() == Some("layout") {
        return layout_time(kind, n, k, &bits);
    }
    if std::env::args().nth(3).as_deref() == Some("ours") {
        return flavours(kind, n, k, &bits);
    }
    let w = HalfWeight::new(kind, n, k, &bits).unwrap();
    let wide: Vec<f32> = bits.iter().map(|&b| kind.to_f32(b)).collect();
    let wt = Tensor::from_vec(wide, (n, k), &Device::Cpu)
        .unwrap()
        .t()
        .unwrap();
    println!(
        "{kind:?} {:?}, threads {}, {n}×{k}",
        w.flavour(),
        rayon::current_num_threads()
    );
    for m in [1usize, 8, 64] {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
            .collect();
        let mut out = vec![0f32; m * n];
        let reps = if m == 64 { 10 } else { 40 };
        matmul(&w, &x, m, &mut out);
        let t = Instant::now();
        for _ in 0..reps {
            matmul(&w, &x, m, &mut out);
        }
        let ours = t.elapsed().as_secs_f64() / reps as f64;
        let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap();
        let _ = xt.matmul(&wt).unwrap();
        let t = Instant::now();
        for _ in 0..reps {
            let _ = xt.matmul(&wt).unwrap();
        }
        let candle = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "m={m:3}: f16gemm {:7.3} ms ({:5.1} GB/s of weights), candle f32 {:7.3} ms",
            ours * 1e3,
            (n * k * 2) as f64 / ours / 1e9,
            candle * 1e3
        );
    }
}

/// Each flavour past AVX2 at 1–256 rows, alternating: milliseconds a call (median of 3 runs).
fn flavours(kind: HalfKind, n: usize, k: usize, bits: &[u16]) {
    let fls: Vec<Flavour> = Flavour::available()
        .into_iter()
        .filter(|f| matches!(f, Flavour::Avx512 | Flavour::Amx))
        .collect();
    // COPIES matrices a flavour, taken in turn: 16 (512 MiB) read the weights from DRAM past a
    // large L3, as a real model's decode does.
    let copies: usize = std::env::var("COPIES").map_or(1, |v| v.parse().unwrap());
    let ws: Vec<Vec<HalfWeight>> = fls
        .iter()
        .map(|&f| {
            (0..copies)
                .map(|_| HalfWeight::with_flavour(kind, n, k, bits, f).unwrap())
                .collect()
        })
        .collect();
    for m in [1usize, 2, 4, 8, 12, 16, 32, 64, 256] {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
            .collect();
        let mut out = vec![0f32; m * n];
        let reps = (400 / m).clamp(3, 40);
        let mut times = vec![Vec::new(); ws.len()];
        for _ in 0..3 {
            for (w, t) in ws.iter().zip(&mut times) {
                matmul(&w[0], &x, m, &mut out);
                let s = Instant::now();
                for r in 0..reps {
                    matmul(&w[r % copies], &x, m, &mut out);
                }
                t.push(s.elapsed().as_secs_f64() / reps as f64 * 1e3);
            }
        }
        let line: Vec<String> = fls
            .iter()
            .zip(&mut times)
            .map(|(f, t)| {
                t.sort_by(f64::total_cmp);
                format!("{f:?} {:7.3} ms", t[1])
            })
            .collect();
        println!("m={m:3}: {}", line.join("  "));
    }
}

/// Milliseconds each flavour takes to lay the matrix out.
fn layout_time(kind: HalfKind, n: usize, k: usize, bits: &[u16]) {
    for f in Flavour::available() {
        let t = Instant::now();
        let w = HalfWeight::with_flavour(kind, n, k, bits, f).unwrap();
        println!(
            "{f:?}: laid out in {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        drop(w);
    }
}
