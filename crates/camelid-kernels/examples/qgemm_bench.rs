//! Micro-benchmark of camelid's quantized CPU matmul (weights larger than the caches, as in a
//! real model): `cargo run --release -p camelid-kernels --example qgemm_bench [threads] [format]`
//! (format: q4_0, q4_1 — the default — q5_0, q5_1, q8_0, q4_k, q5_k or q6_k).
use camelid_kernels::quant::{matmul, QKind, QWeight};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(0);
    let (dtype, kind) = match std::env::args().nth(2).as_deref() {
        None | Some("q4_1") => (GgmlDType::Q4_1, QKind::Q4_1),
        Some("q4_0") => (GgmlDType::Q4_0, QKind::Q4_0),
        Some("q8_0") => (GgmlDType::Q8_0, QKind::Q8_0),
        Some("q4_k") => (GgmlDType::Q4K, QKind::Q4K),
        Some("q5_k") => (GgmlDType::Q5K, QKind::Q5K),
        Some("q6_k") => (GgmlDType::Q6K, QKind::Q6K),
        Some("q5_0") => (GgmlDType::Q5_0, QKind::Q5_0),
        Some("q5_1") => (GgmlDType::Q5_1, QKind::Q5_1),
        Some(f) => panic!("format {f}: one of q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k"),
    };
    if threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .unwrap();
    }
    // 22 MB of Q4_1, 38 MB of Q8_0; the K formats need a multiple of 256 columns.
    // COLS=<n> sets the inner dimension (e.g. 2048 or 8192, a 1B model's), copies shrinking to
    // keep ~the same bytes.
    let cols: usize =
        std::env::var("COLS").map_or(if kind.is_k() { 768 } else { 576 }, |c| c.parse().unwrap());
    // COPIES=<n>: that many matrices taken in turn (e.g. 400 at 2048 columns, ~700 MB of Q4_K:
    // past a 480 MiB L3, read from DRAM as a real model's decode is).
    let copies = std::env::var("COPIES").map_or((40 * 768 / cols).max(2), |c| c.parse().unwrap());
    let rows = 1536;
    let mut ws = vec![];
    for c in 0..copies {
        let w = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
        let w = (w + c as f64 * 1e-3).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        ws.push(QWeight::new(kind, rows, cols, q.data().unwrap().into_owned()).unwrap());
    }
    let bytes: usize = copies * rows * cols / kind.block_values() * kind.block_bytes();
    println!(
        "{kind:?}  threads {}  weights {:.1} MB",
        rayon::current_num_threads(),
        bytes as f64 / 1e6
    );
    // MS=8,64 picks the activation row counts (default: 1 2 4 8 16 64 256).
    let ms: Vec<usize> = std::env::var("MS").map_or(vec![1, 2, 4, 8, 16, 64, 256], |v| {
        v.split(',').map(|m| m.parse().unwrap()).collect()
    });
    for m in ms {
        // ACTS=normal: normally distributed activations (as a model's hidden states are,
        // roughly), where the K kernels sum 16 values at a time; ACTS=outliers: the same
        // with every 256th value 8 (as real hidden states' outlier channels), where Q5_K's
        // sum 32; the default, uniform in [−1, 1), makes them sum 8.
        let acts = std::env::var("ACTS").unwrap_or_default();
        let x: Vec<f32> = if acts == "normal" || acts == "outliers" {
            let mut x: Vec<f32> = Tensor::randn(0f32, 1.0, m * cols, &Device::Cpu)
                .unwrap()
                .to_vec1()
                .unwrap();
            if acts == "outliers" {
                x.iter_mut().step_by(256).for_each(|v| *v = 8.0);
            }
            x
        } else {
            (0..m * cols)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        let mut out = vec![0f32; m * rows];
        // ITERS=<n>: passes timed (default 2–16, by rows); more for a profile.
        let iters = std::env::var("ITERS").map_or((256 / m).clamp(2, 16), |v| v.parse().unwrap());
        let t = Instant::now();
        for _ in 0..iters {
            for w in &ws {
                matmul(w, &x, m, &mut out);
            }
        }
        let s = t.elapsed().as_secs_f64() / iters as f64;
        let blocks = (m * copies * rows * cols / 32) as f64;
        println!(
            "m {m:4}  {:7.2} ms/pass  weights {:6.2} GB/s  {:5.2} ns/block-product  {:6.1} GMAC/s",
            s * 1e3,
            bytes as f64 / s / 1e9,
            s * 1e9 / blocks,
            blocks * 32.0 / s / 1e9
        );
    }
}
