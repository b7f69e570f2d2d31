//! Micro-benchmark of the 16-bit weight matmul on a 1B-class FFN matrix (8192 × 2048, 32 MiB
//! in f16: past the L2, as in a real model) against candle's f32 matmul on the same weights
//! widened (what the CPU ran before): `cargo run --release -p camelid-kernels --example
//! f16gemm_bench [threads] [f16|bf16] [ours]` (`ours`: candle's matmul not run, e.g. for
//! `perf stat` on a shared machine).
use camelid_kernels::f16gemm::{matmul, HalfKind, HalfWeight};
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
    let (n, k) = (8192, 2048);
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
        if std::env::args().nth(3).as_deref() == Some("ours") {
            println!("m={m:3}: f16gemm {:7.3} ms", ours * 1e3);
            continue;
        }
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
