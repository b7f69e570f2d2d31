#![allow(clippy::needless_range_loop)] // sequence ids double as indices
//! Times one engine step (a forward over the paged host KV cache) on the default model (or
//! `MODEL=<path>`), for
//! the batch shapes continuous batching produces: B decodes at context ~C, alone or next to a
//! prefill chunk of P tokens. Medians of repeated steps, in ms:
//! `cargo run --release -p camelid-engine --example step_bench [ctx] [reps] [decodes:prefill ...]`.
use camelid_engine::paged::PagedKv;
use camelid_model::KvDtype;
use camelid_model::{ForwardBatch, LoadOptions, LogitsWanted};
use std::time::Instant;

fn main() {
    // Inside a rayon pool, as the engine loop runs.
    rayon::ThreadPoolBuilder::new()
        .build()
        .unwrap()
        .install(bench)
}

fn bench() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ctx = args.first().map_or(160, |a| a.parse().unwrap());
    let reps = args.get(1).map_or(15, |a| a.parse().unwrap());
    // Optional shapes "decodes:prefill ..." (default: a fixed list).
    let mut shapes: Vec<(usize, usize)> = args
        .iter()
        .skip(2)
        .map(|a| {
            let (b, p) = a.split_once(':').expect("shape as decodes:prefill");
            (b.parse().unwrap(), p.parse().unwrap())
        })
        .collect();
    if shapes.is_empty() {
        shapes = vec![
            (1, 0),
            (2, 0),
            (4, 0),
            (8, 0),
            (16, 0),
            (8, 16),
            (8, 32),
            (8, 64),
            (0, 64),
            (0, 128),
        ];
    }
    // MODEL=<path or hub id> times another model (default: the default model).
    let spec = std::env::var("MODEL").ok();
    let lm = camelid_model::load(spec.as_deref(), &LoadOptions::default()).expect("model");
    let c = lm.model.config().clone();
    let vocab = c.vocab_size as u32;
    let bs = 16;
    // KV=q8_0 or KV=f32 picks the cache's element type (default f16, the server's).
    let kv_dtype = match std::env::var("KV").as_deref() {
        Err(_) | Ok("f16") => KvDtype::F16,
        Ok("f32") => KvDtype::F32,
        Ok("q8_0") => KvDtype::Q8_0,
        Ok(other) => panic!("KV={other}: one of f16, f32, q8_0"),
    };
    let mut kv = PagedKv::new(
        c.num_layers,
        c.num_kv_heads,
        c.head_dim,
        4096,
        bs,
        lm.model.dtype(),
        kv_dtype,
        lm.model.device(),
    )
    .unwrap();
    // Deterministic pseudo-text: distinct per sequence so nothing is shared.
    let toks = |seq: u64, n: usize| -> Vec<u32> {
        (0..n as u64)
            .map(|i| ((seq * 7919 + i * 104_729) % (vocab as u64 - 10)) as u32 + 5)
            .collect()
    };
    let max_b = 16u64;
    // Prefill every decode sequence to `ctx` tokens.
    for s in 0..max_b {
        kv.start(s, &[], None, usize::MAX);
        assert!(kv.reserve(s, ctx + 4 * reps + 8));
        let t = toks(s, ctx);
        for (i, ch) in t.chunks(256).enumerate() {
            let b = ForwardBatch::single(s, i * 256, ch, LogitsWanted::None);
            lm.model.forward(&b, &mut kv).unwrap();
        }
    }
    let mut pos = vec![ctx; max_b as usize];
    let mut next_prefill = 1000u64;
    println!("context {ctx}, {reps} steps each, {kv_dtype:?} cache");
    println!("| decodes | prefill | step ms (median) | min | ms per row |");
    println!("|--:|--:|--:|--:|--:|");
    for (b, p) in shapes {
        let mut times = Vec::new();
        for _ in 0..reps {
            let mut batch = ForwardBatch::default();
            for s in 0..b {
                batch.push(
                    s as u64,
                    pos[s],
                    &[(pos[s] % 1000) as u32 + 3],
                    LogitsWanted::Last,
                );
            }
            if p > 0 {
                let s = next_prefill;
                next_prefill += 1;
                kv.start(s, &[], None, usize::MAX);
                assert!(kv.reserve(s, p));
                batch.push(s, 0, &toks(s, p), LogitsWanted::Last);
            }
            let t0 = Instant::now();
            lm.model.forward(&batch, &mut kv).unwrap();
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            for s in 0..b {
                pos[s] += 1;
            }
            if p > 0 {
                kv.free(next_prefill - 1);
            }
        }
        // Rewind the decode positions so every shape sees about the same context.
        for s in 0..b {
            pos[s] -= reps;
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = times[times.len() / 2];
        println!(
            "| {b} | {p} | {med:.1} | {:.1} | {:.2} |",
            times[0],
            med / (b + p) as f64
        );
    }
}
