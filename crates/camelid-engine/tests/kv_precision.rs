//! What the f16 KV cache (the CPU default) costs, over 20 varied chat prompts: how far the
//! log-probabilities of the reference's top-5 first tokens move (per prompt, the largest move).
//!
//! - On the dense model (the default GGUF dequantized to f32: the same weights, activations
//!   kept exact) only attention differs between two runs. The f16 cache must stay within
//!   0.01 nats on every prompt (measured: at most 0.004), and a Q8_0 cache must not, or the
//!   bound would not tell the two apart (measured: 0.13; keys truncated to bf16's 8 bits:
//!   0.033). This is the test that catches a less precise cache.
//! - On the default model as served (Q4_1 weights, camelid's quantized matmuls) every matmul
//!   rounds its input activations to 8 bits per value, and any change of attention's last
//!   bits flips some of those roundings, compounding over 30 layers. f16 and Q8_0 caches move
//!   the logprobs alike (~0.2 nats median), an f32 cache that only sums in another order
//!   (prompt tiles off, AVX2 tiles instead of AVX-512) by 0.045 median and up to 0.4, and the
//!   activation rounding itself (quantized vs dense, both f32 caches) by ~0.2: the noise of
//!   that rounding is what moves, not the cache's error. So here the test holds what is true
//!   and can be measured: against the dense model, the quantized model with the f16 cache is
//!   as accurate as with the f32 cache (median and p90 within 1.25× + 0.01), and the reference
//!   run is reproducible to the bit. It cannot tell a cache of 8 bits from f16 (that noise is
//!   larger than either's error); only a grossly wrong cache fails it.
//!
//! The numbers are in benches/README.md. Its own test binary: it switches the process-wide
//! prompt-attention path (the tests here take turns).

// The model crate's test fixtures (the default model and its cached f32 conversion).
#[path = "../../camelid-model/tests/common/mod.rs"]
mod common;
mod first_token;

use camelid_kernels::attention::prefill::{set_path, PrefillPath};
use camelid_model::{KvDtype, LoadOptions, LoadedModel};
use first_token::{first_token_logprobs, top5_shift};
use std::sync::{Mutex, MutexGuard};

const PROMPTS: [&str; 20] = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain photosynthesis to a ten-year-old.",
    "What is 17 times 23?",
    "Translate 'good morning' into Spanish.",
    "Give me three tips for better sleep.",
    "Who wrote Pride and Prejudice?",
    "Write a Python function that reverses a string.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet in one sentence.",
    "List the planets of the solar system in order.",
    "What are the health benefits of green tea?",
    "How do I boil an egg?",
    "Describe a cat to someone who has never seen one.",
    "What is the difference between weather and climate?",
    "Suggest a name for a bakery.",
    "Is a tomato a fruit or a vegetable?",
    "Tell me a short joke about computers.",
    "How many legs does a spider have?",
    "What should I pack for a weekend hiking trip?",
];

/// (median, 90th percentile, max) of `v`.
fn spread(mut v: Vec<f32>) -> (f32, f32, f32) {
    v.sort_by(f32::total_cmp);
    let at = |q: f32| v[((v.len() - 1) as f32 * q).round() as usize];
    (at(0.5), at(0.9), at(1.0))
}

/// One test at a time: they switch the process-wide prompt-attention path.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every prompt's first-token logprobs with the prompt-attention `path` and cache `kv`.
fn run(lm: &LoadedModel, path: PrefillPath, kv: KvDtype) -> Vec<Vec<f32>> {
    set_path(path);
    let r = PROMPTS
        .iter()
        .map(|p| first_token_logprobs(lm, p, kv))
        .collect();
    set_path(PrefillPath::Widest);
    r
}

/// Per prompt, the largest move of a `reference` top-5 logprob in `other`.
fn shifts(reference: &[Vec<f32>], other: &[Vec<f32>]) -> Vec<f32> {
    reference
        .iter()
        .zip(other)
        .map(|(r, o)| top5_shift(r, o))
        .collect()
}

/// The shifts of an f32 cache whose attention only sums in another order.
fn summation_order_shifts(lm: &LoadedModel, reference: &[Vec<f32>]) -> Vec<f32> {
    let mut s = shifts(reference, &run(lm, PrefillPath::Off, KvDtype::F32));
    if camelid_kernels::cpu_features::avx512() {
        s.extend(shifts(reference, &run(lm, PrefillPath::Avx2, KvDtype::F32)));
    }
    s
}

fn show(model: &str, rows: &[(&str, (f32, f32, f32))]) {
    for (what, (med, p90, max)) in rows {
        eprintln!(
            "{model}: {what:<26} max |Δ top-5 logprob|: median {med:.4}  p90 {p90:.4}  max {max:.4}"
        );
    }
}

#[test]
fn f16_cache_keeps_first_token_logprobs_on_the_dense_model() {
    let _g = serial();
    let dir = common::converted_f32();
    let lm = camelid_model::load(Some(dir.to_str().unwrap()), &LoadOptions::default()).unwrap();
    let reference = run(&lm, PrefillPath::Widest, KvDtype::F32);
    let f16 = spread(shifts(
        &reference,
        &run(&lm, PrefillPath::Widest, KvDtype::F16),
    ));
    let q8 = spread(shifts(
        &reference,
        &run(&lm, PrefillPath::Widest, KvDtype::Q8_0),
    ));
    let order = spread(summation_order_shifts(&lm, &reference));
    show(
        "dense",
        &[
            ("f32, summation order", order),
            ("f16 cache", f16),
            ("q8_0 cache", q8),
        ],
    );
    assert!(
        f16.2 <= 0.01,
        "the f16 cache moves a top-5 first-token logprob by up to {} nats (median, p90, max: {f16:?})",
        f16.2
    );
    assert!(
        q8.2 > 0.01,
        "a Q8_0 cache stays within 0.01 nats too ({q8:?}): the bound does not tell it from f16"
    );
}

/// Whether the quantized model with some cache is as accurate as with the f32 cache, both
/// measured against the dense model (the same weights with exact activations): `with` the
/// cache's (median, p90, max) shifts from dense, `f32` the f32 cache's.
fn as_accurate_as_f32(with: (f32, f32, f32), f32: (f32, f32, f32)) -> bool {
    with.0 <= 1.25 * f32.0 + 0.01 && with.1 <= 1.25 * f32.1 + 0.01
}

#[test]
fn f16_cache_leaves_the_quantized_model_as_accurate_as_f32() {
    let _g = serial();
    let dense = {
        let dir = common::converted_f32();
        let lm = camelid_model::load(Some(dir.to_str().unwrap()), &LoadOptions::default()).unwrap();
        run(&lm, PrefillPath::Widest, KvDtype::F32)
    };
    let lm = camelid_model::load(None, &LoadOptions::default()).expect("default model");
    let reference = run(&lm, PrefillPath::Widest, KvDtype::F32);
    // Reproducible to the bit: every shift below comes from the change made.
    assert_eq!(
        shifts(&reference, &run(&lm, PrefillPath::Widest, KvDtype::F32)),
        [0.0; PROMPTS.len()]
    );
    let order = spread(summation_order_shifts(&lm, &reference));
    let with_f16 = run(&lm, PrefillPath::Widest, KvDtype::F16);
    let with_q8 = run(&lm, PrefillPath::Widest, KvDtype::Q8_0);
    let (f16, q8) = (
        spread(shifts(&reference, &with_f16)),
        spread(shifts(&reference, &with_q8)),
    );
    let from_dense = |runs: &[Vec<f32>]| spread(shifts(&dense, runs));
    let (f32_err, f16_err, q8_err) = (
        from_dense(&reference),
        from_dense(&with_f16),
        from_dense(&with_q8),
    );
    show(
        "Q4_1",
        &[
            ("f32, summation order", order),
            ("f16 cache", f16),
            ("q8_0 cache", q8),
            ("f32 cache from dense", f32_err),
            ("f16 cache from dense", f16_err),
            ("q8_0 cache from dense", q8_err),
        ],
    );
    assert!(
        order.0 > 0.0,
        "the summation-order changes moved nothing: the comparison measures nothing"
    );
    assert!(
        as_accurate_as_f32(f16_err, f32_err),
        "with the f16 cache the quantized model's first-token top-5 logprobs are {f16_err:?} \
         (median, p90, max) from the dense model's, with the f32 cache {f32_err:?}"
    );
}
