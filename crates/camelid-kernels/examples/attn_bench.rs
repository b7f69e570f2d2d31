//! Micro-benchmark of decode attention over the paged host KV cache: B sequences, one query
//! each, at context C, SmolLM2's heads (9 over 3 KV heads of 64), `layers` distinct layers so
//! the cache does not sit in L3 between calls:
//! `cargo run --release -p camelid-kernels --example attn_bench [ctx] [seqs] [layers] [f16|q8_0|f32] [reps]`.
use camelid_kernels::attention::{
    paged_attention, Heads, HostKvCache, HostPaged, KvDtype, QkvRows, RopeStyle, SeqSpan,
};
use std::time::Instant;

fn main() {
    let arg = |i: usize, d: usize| std::env::args().nth(i).map_or(d, |s| s.parse().unwrap());
    let (ctx, seqs, layers) = (arg(1, 1000), arg(2, 8), arg(3, 30));
    let dtype = match std::env::args().nth(4).as_deref() {
        None | Some("f16") => KvDtype::F16,
        Some("q8_0") => KvDtype::Q8_0,
        Some("f32") => KvDtype::F32,
        Some(o) => panic!("{o}: f16, q8_0 or f32"),
    };
    let h = Heads {
        q: 9,
        kv: 3,
        dim: 64,
        rope: RopeStyle::Half,
        window: None,
        scale: None,
        softcap: None,
    };
    let bs = 16;
    let per_seq = (ctx + 1).div_ceil(bs);
    let mut cache = HostKvCache::new(layers, seqs * per_seq, bs, h.kv, h.dim, dtype);
    // Sequence s owns blocks s, s + seqs, s + 2·seqs, …: scattered, as after churn.
    let tables: Vec<Vec<u32>> = (0..seqs)
        .map(|s| (0..per_seq).map(|b| (b * seqs + s) as u32).collect())
        .collect();
    let kw = h.kv * h.dim;
    let mut x = 0.1f32;
    let mut next = || {
        x = (x * 3.7 + 0.31).fract();
        x - 0.5
    };
    for layer in 0..layers {
        for (s, t) in tables.iter().enumerate() {
            let _ = s;
            for p in 0..ctx {
                let k: Vec<f32> = (0..kw).map(|_| next()).collect();
                let v: Vec<f32> = (0..kw).map(|_| next()).collect();
                cache.write_slot(layer, t[p / bs] as usize * bs + p % bs, &k, &v);
            }
        }
    }
    let chunks: Vec<SeqSpan> = (0..seqs).map(|s| SeqSpan::new(s as u64, ctx, 1)).collect();
    let width = (h.q + 2 * h.kv) * h.dim;
    let data: Vec<f32> = (0..seqs * width).map(|_| next()).collect();
    let qkv = QkvRows {
        q: (&data, width, 0),
        k: (&data, width, h.q * h.dim),
        v: (&data, width, (h.q + h.kv) * h.dim),
    };
    let (cos, sin) = (vec![1f32; seqs * h.dim / 2], vec![0f32; seqs * h.dim / 2]);
    let mut out = vec![0f32; seqs * h.q * h.dim];
    let mut paged = HostPaged {
        cache: &mut cache,
        block_size: bs,
        tables,
    };
    let mut times = vec![];
    let reps = arg(5, 7);
    for _ in 0..reps {
        let t = Instant::now();
        for layer in 0..layers {
            paged_attention(layer, &chunks, &qkv, &cos, &sin, h, &mut paged, &mut out);
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let kv_bytes = (seqs * ctx * layers * kw * 2) as f64 * dtype.bytes_per_value();
    let ms = times[reps / 2];
    println!(
        "{dtype:?} ctx {ctx} seqs {seqs} layers {layers}: {ms:.2} ms (min {:.2}), {:.1} GB/s of cache, {:.0} cycles@2.5GHz per position-head",
        times[0],
        kv_bytes / ms / 1e6,
        ms * 1e-3 * 2.5e9 * 2.0 / (seqs * ctx * layers * h.kv) as f64
    );
}
