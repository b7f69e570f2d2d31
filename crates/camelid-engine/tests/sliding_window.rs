//! A sliding-window model (Mistral v0.1's kind) in the engine: the blocks that fall out of a
//! sequence's window go back to the pool as it generates, so the KV blocks in use stay
//! bounded by the window during a generation several windows long, and the greedy tokens
//! are the tensor path's (a contiguous cache, every key kept, the window as a mask).

use camelid_engine::{EngineConfig, EngineHandle, EngineMetrics, Event, Request};
use camelid_model::decode::{generate, GenerationParams};
use camelid_model::{LoadOptions, SamplingParams};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

const WINDOW: usize = 16;

/// A random-weight `MistralForCausalLM` folder with a window of [`WINDOW`] (the tokenizer is the
/// LLaMA fixture's); `gemma`: a `Gemma2ForCausalLM` one, whose odd layers are global.
fn model_folder(gemma: bool) -> tempfile::TempDir {
    let guard = tempfile::Builder::new()
        .prefix("camelid-window-")
        .tempdir()
        .unwrap();
    let dir = guard.path();
    let (h, i, layers, vocab, heads, kv_heads) = (32usize, 64usize, 2usize, 80usize, 4, 2);
    let hd = h / heads;
    let dev = Device::Cpu;
    let r = |shape: (usize, usize)| Tensor::randn(0f32, 0.4, shape, &dev).unwrap();
    let ones = |n: usize| Tensor::ones(n, DType::F32, &dev).unwrap();
    let mut t = HashMap::new();
    t.insert("model.embed_tokens.weight".to_string(), r((vocab, h)));
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        t.insert(format!("{p}.self_attn.q_proj.weight"), r((heads * hd, h)));
        t.insert(
            format!("{p}.self_attn.k_proj.weight"),
            r((kv_heads * hd, h)),
        );
        t.insert(
            format!("{p}.self_attn.v_proj.weight"),
            r((kv_heads * hd, h)),
        );
        t.insert(format!("{p}.self_attn.o_proj.weight"), r((h, heads * hd)));
        t.insert(format!("{p}.mlp.gate_proj.weight"), r((i, h)));
        t.insert(format!("{p}.mlp.up_proj.weight"), r((i, h)));
        t.insert(format!("{p}.mlp.down_proj.weight"), r((h, i)));
        t.insert(format!("{p}.input_layernorm.weight"), ones(h));
        t.insert(format!("{p}.post_attention_layernorm.weight"), ones(h));
        if gemma {
            t.insert(format!("{p}.pre_feedforward_layernorm.weight"), ones(h));
            t.insert(format!("{p}.post_feedforward_layernorm.weight"), ones(h));
        }
    }
    t.insert("model.norm.weight".into(), ones(h));
    t.insert("lm_head.weight".into(), r((vocab, h)));
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let class = if gemma {
        "Gemma2ForCausalLM"
    } else {
        "MistralForCausalLM"
    };
    let cfg = format!(
        r#"{{"architectures": ["{class}"], "hidden_size": {h}, "head_dim": {hd},
        "intermediate_size": {i}, "vocab_size": {vocab}, "num_hidden_layers": {layers},
        "num_attention_heads": {heads}, "num_key_value_heads": {kv_heads},
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 512,
        "sliding_window": {WINDOW}, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": false, "query_pre_attn_scalar": {hd},
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}}"#
    );
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
    std::fs::copy(fixture.join("tokenizer.model"), dir.join("tokenizer.model")).unwrap();
    guard
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
    let want = generate(&lm, &prompt, params(n_new), |_| {})
        .unwrap()
        .tokens;
    let bs = 4;
    let engine = EngineHandle::spawn(
        load(),
        EngineConfig {
            block_size: bs,
            num_blocks: Some(256),
            ..Default::default()
        },
    );
    let mut rx = engine
        .submit(Request {
            prompt: prompt.clone(),
            params: params(n_new),
            prompt_logprobs: None,
            cache_salt: None,
        })
        .unwrap();
    let (mut got, mut most_blocks) = (vec![], 0);
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token { token, .. } => {
                got.push(token);
                most_blocks = most_blocks.max(EngineMetrics::get(&engine.metrics.kv_blocks_used));
            }
            Event::Finished { .. } => break,
            Event::Error(e) | Event::Refused(e) => panic!("{e}"),
            Event::PromptLogprobs(_) => {}
        }
    }
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
