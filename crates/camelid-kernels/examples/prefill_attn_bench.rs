//! Micro-benchmark of prompt attention over the paged host KV cache: one prompt chunk of P
//! tokens after S cached positions, Llama-3.2-1B's heads (32 over 8 KV heads of 64), `layers`
//! layers: `cargo run --release -p camelid-kernels --example prefill_attn_bench [P] [layers]
//! [reps] [S]`.
use camelid_kernels::attention::{
    paged_attention, Heads, HostKvCache, HostPaged, KvDtype, QkvRows, RopeStyle, SeqSpan,
};
use std::time::Instant;

fn main() {
    let arg = |i: usize, d: usize| std::env::args().nth(i).map_or(d, |s| s.parse().unwrap());
    let (p, layers, reps, start) = (arg(1, 512), arg(2, 16), arg(3, 7), arg(4, 0));
    let h = Heads {
        q: 32,
        kv: 8,
        dim: 64,
        rope: RopeStyle::Half,
        window: None,
        scale: None,
        softcap: None,
    };
    let bs = 16;
    let blocks = (start + p).div_ceil(bs);
    let mut cache = HostKvCache::new(layers, blocks, bs, h.kv, h.dim, KvDtype::F16);
    let mut x = 0.1f32;
    let width = (h.q + 2 * h.kv) * h.dim;
    let data: Vec<f32> = (0..p * width)
        .map(|_| {
            x = (x * 3.7 + 0.31).fract();
            x - 0.5
        })
        .collect();
    let qkv = QkvRows {
        q: (&data, width, 0),
        k: (&data, width, h.q * h.dim),
        v: (&data, width, (h.q + h.kv) * h.dim),
    };
    let chunks = [SeqSpan::new(0, start, p)];
    let (cos, sin) = (vec![1f32; p * h.dim / 2], vec![0f32; p * h.dim / 2]);
    let mut out = vec![0f32; p * h.q * h.dim];
    let mut paged = HostPaged {
        cache: &mut cache,
        block_size: bs,
        tables: vec![(0..blocks as u32).collect()],
    };
    let mut times = vec![];
    for _ in 0..reps {
        let t = Instant::now();
        for layer in 0..layers {
            paged_attention(layer, &chunks, &qkv, &cos, &sin, h, &mut paged, &mut out);
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    // Multiply-adds of the causal scores and outputs: each row against the keys up to it.
    let macs = (h.q * h.dim * 2 * (p * start + p * (p + 1) / 2) * layers) as f64;
    let ms = times[reps / 2];
    println!(
        "prompt {p} after {start} layers {layers}: {ms:.2} ms (min {:.2}), {:.1} GMAC/s causal",
        times[0],
        macs / times[0] / 1e6
    );
}
