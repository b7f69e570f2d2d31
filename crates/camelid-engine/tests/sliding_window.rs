//! A sliding-window model (Mistral v0.1's kind) in the engine: the blocks that fall out of a
//! sequence's window go back to the pool as it generates, so the KV blocks in use stay
//! bounded by the window during a generation several windows long, and the greedy tokens
//! are the tensor path's (a contiguous cache, every key kept, the window as a mask).

// The model crate's test fixtures (the seeded random-weight writer).
#[path = "../../camelid-model/tests/common/mod.rs"]
mod common;

use camelid_engine::{EngineConfig, EngineHandle, EngineMetrics, Event, Request};
use camelid_model::decode::{generate, GenerationParams};
use camelid_model::{KvDtype, LoadOptions, SamplingParams};
use common::random_model::{write_hf, Shape, TINY};
use serde_json::json;

const WINDOW: usize = 16;

/// A seeded random-weight `MistralForCausalLM` folder with a window of [`WINDOW`]; `gemma`: a
/// `Gemma2ForCausalLM` one, whose odd layers are global (soft-capped as the real ones are).
fn model_folder(gemma: bool) -> tempfile::TempDir {
    let shape = Shape {
        heads: 4,
        kv_heads: 2,
        head_dim: None,
        tied: false,
    };
    let mut extra = json!({"sliding_window": WINDOW, "max_position_embeddings": 512});
    if gemma {
        extra["attn_logit_softcapping"] = json!(50.0);
        extra["final_logit_softcapping"] = json!(30.0);
    }
    write_hf(
        if gemma { "gemma2" } else { "mistral" },
        shape,
        &TINY,
        extra,
        7,
    )
}

fn params(max_tokens: usize) -> GenerationParams {
    let mut p = GenerationParams::new(max_tokens, SamplingParams::greedy());
    p.ignore_eos = true;
    p
}

/// Generates `3 · WINDOW` tokens from a short prompt in the engine (blocks of 4) and by the
/// tensor path; returns both token lists, the most KV blocks in use at once, and the count
/// of blocks holding every position.
fn generate_in_engine(gemma: bool) -> (Vec<u32>, Vec<u32>, usize, usize) {
    let folder = model_folder(gemma);
    let load = || {
        camelid_model::load(
            Some(folder.path().to_str().unwrap()),
            &LoadOptions::default(),
        )
        .unwrap()
    };
    let lm = load();
    assert_eq!(lm.model.config().features.sliding_window, Some(WINDOW));
    let prompt = lm
        .tokenizer
        .encode("the quick brown fox jumps over", true)
        .unwrap();
    let n_new = 3 * WINDOW;
    // The reference: one sequence over a contiguous cache (every key kept, window masked).
    let mut with_logprobs = params(n_new);
    with_logprobs.logprobs = Some(2);
    let reference = generate(&lm, &prompt, with_logprobs, |_| {}).unwrap();
    // Summation order moves logprobs by ~1e-6 here: a near-tie could flip a token on some
    // CPU (an AVX2 one sums otherwise than an AVX-512 one) without anything being wrong.
    for (i, l) in reference.logprobs.iter().enumerate() {
        let margin = l.top[0].1 - l.top[1].1;
        assert!(
            margin > 1e-3,
            "step {i}: a near-tie ({margin}); pick another seed"
        );
    }
    let want = reference.tokens;
    let bs = 4;
    let engine = EngineHandle::spawn(
        load(),
        EngineConfig {
            block_size: bs,
            num_blocks: Some(256),
            // The tensor path's cache is f32: the two paths differ only in summation order.
            host_kv_dtype: KvDtype::F32,
            ..Default::default()
        },
    );
    let mut rx = engine
        .submit(Request {
            prompt: prompt.clone(),
            params: params(n_new),
            prompt_logprobs: None,
            cache_salt: None,
            embed: None,
            lora: None,
        })
        .unwrap();
    let mut got = vec![];
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token { token, .. } => got.push(token),
            Event::Finished { .. } => break,
            Event::Error(e) | Event::GrammarFailed(e) | Event::Refused(e) => panic!("{e}"),
            Event::PromptLogprobs(_) | Event::Embedding(_) => {}
        }
    }
    // Read at each step's forward: sampling `kv_blocks_used` as tokens arrive raced the
    // engine (a fast one had finished and given every block back before the reads).
    let most_blocks = EngineMetrics::get(&engine.metrics.kv_blocks_peak);
    let unbounded = (prompt.len() + n_new).div_ceil(bs);
    (got, want, most_blocks as usize, unbounded)
}

#[test]
fn kv_blocks_stay_bounded_by_the_window_and_tokens_match_the_tensor_path() {
    let (got, want, most_blocks, unbounded) = generate_in_engine(false);
    assert_eq!(got, want, "engine (paged, windowed) vs tensor path");
    // The window's positions span at most WINDOW / bs + 1 blocks; one more for the next
    // token's reservation. Holding every block would take (prompt + 3 · WINDOW) / bs.
    let bound = WINDOW / 4 + 2;
    assert!(unbounded > 2 * bound);
    assert!(
        most_blocks <= bound,
        "{most_blocks} blocks in use (bound {bound}; all of them would be {unbounded})"
    );
}

/// Gemma 2: a window on the even layers only. The odd (global) layers read every key, so no
/// block is given back (a freed one would be read) and the greedy tokens are the tensor
/// path's over a generation three windows long.
#[test]
fn a_model_with_global_layers_keeps_every_block() {
    let (got, want, most_blocks, unbounded) = generate_in_engine(true);
    assert_eq!(got, want, "engine (paged, Gemma 2 layers) vs tensor path");
    assert!(
        most_blocks + 1 >= unbounded,
        "{most_blocks} blocks in use; every position needs {unbounded}"
    );
}
