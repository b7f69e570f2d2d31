//! LoRA adapters in the engine under a random PEFT adapter of every projection: the CPU
//! serving runtime's adapted rows against the tensor runtime's (itself checked against merged
//! weights in camelid-model's `tests/lora.rs`), each request under its own adapter whatever it
//! is batched with, and the prefix cache kept apart per adapter.

#[path = "../../camelid-model/tests/common/mod.rs"]
mod common;

use camelid_engine::{EngineConfig, EngineHandle, EngineMetrics, Event, Request};
use camelid_model::decode::GenerationParams;
use camelid_model::{KvDtype, LoadOptions, LoadedModel, LoraAdapter, SamplingParams, SharedLora};
use common::lora::{self as adapters, ALL_TARGETS};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STEPS: usize = 12;

fn smol() -> LoadedModel {
    camelid_model::load(None, &LoadOptions::default()).unwrap()
}

/// A random adapter of every projection of `lm`, strong enough to change its greedy text on
/// any CPU: at 0.02 it moved the default model's logits by ~1.5, which left the first 12
/// greedy tokens of both prompts as they were on an AVX-512 machine (the kernels round
/// otherwise than AVX2's, so another text); at 0.05 the updates are ~6× larger.
fn adapter(lm: &LoadedModel, dir: &std::path::Path) -> SharedLora {
    let a = adapters::write_peft(dir, lm.model.config(), 8, 16.0, ALL_TARGETS, 0.05, 5);
    Arc::new(LoraAdapter::load("t", &a.dir, lm.model.config(), lm.model.device()).unwrap())
}

fn request(prompt: &[u32]) -> Request {
    let mut params = GenerationParams::new(STEPS, SamplingParams::greedy());
    params.ignore_eos = true;
    Request {
        prompt: prompt.to_vec(),
        params,
        prompt_logprobs: None,
        cache_salt: None,
        embed: None,
        lora: None,
    }
}

/// A request's greedy tokens and cached prompt tokens.
fn drain(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> (Vec<u32>, usize) {
    let mut toks = vec![];
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token { token, .. } => toks.push(token),
            Event::Finished { usage, .. } => return (toks, usage.cached_tokens),
            other => panic!("unexpected event {other:?}"),
        }
    }
    panic!("stream ended without Finished")
}

fn wait_idle(m: &EngineMetrics) {
    let t = Instant::now();
    while EngineMetrics::get(&m.running) + EngineMetrics::get(&m.kv_blocks_used) > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "engine did not go idle"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn prompts(lm: &LoadedModel) -> Vec<Vec<u32>> {
    [
        "Write a short poem about the sea and the wind over the harbour.",
        "List three facts about llamas, each in one sentence.",
    ]
    .iter()
    .map(|t| {
        let msgs = [camelid_model::Message::new("user", t)];
        let text = lm.template.render(&msgs, true).unwrap();
        lm.tokenizer.encode(&text, false).unwrap()
    })
    .collect()
}

/// The tensor runtime's greedy continuation check: each token the engine chose is the
/// reference's argmax at its position (a near-tie, within 1e-3, may go either way).
fn check_greedy(lm: &LoadedModel, lora: Option<SharedLora>, prompt: &[u32], got: &[u32]) {
    let seq: Vec<u32> = [prompt, &got[..got.len() - 1]].concat();
    let logits: Vec<Vec<f32>> = lm
        .model
        .logits_all_adapted(&seq, lora)
        .unwrap()
        .to_vec2()
        .unwrap();
    for (i, &tok) in got.iter().enumerate() {
        let row = &logits[prompt.len() - 1 + i];
        let best = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert!(
            row[tok as usize] >= best - 1e-3,
            "step {i}: the engine chose {tok} ({}), the reference's best is {best}",
            row[tok as usize]
        );
    }
}

/// The CPU serving runtime's adapted rows against the tensor runtime's, on the default
/// model's f32 conversion (dense weights: the two runtimes differ only in summation order,
/// where the quantized model's 8-bit activations would amplify that into near-ties).
#[test]
fn adapted_rows_match_the_reference_runtime() {
    let f32_model = || {
        let p = common::converted_f32();
        camelid_model::load(Some(p.to_str().unwrap()), &LoadOptions::default()).unwrap()
    };
    let reference = f32_model();
    let tmp = tempfile::tempdir().unwrap();
    let lora = adapter(&reference, tmp.path());
    let base = EngineHandle::spawn(
        f32_model(),
        EngineConfig {
            host_kv_dtype: KvDtype::F32,
            ..Default::default()
        },
    );
    let adapted = base.with_lora(lora.clone()).unwrap();
    for p in prompts(&reference) {
        let plain = drain(base.submit(request(&p)).unwrap()).0;
        let tuned = drain(adapted.submit(request(&p)).unwrap()).0;
        assert_ne!(plain, tuned, "the adapter changed nothing");
        check_greedy(&reference, None, &p, &plain);
        check_greedy(&reference, Some(lora.clone()), &p, &tuned);
    }
    wait_idle(&base.metrics);
}

/// On the default model (Q4_1, Q/K rows permuted by the converter): each request gets the
/// tokens it gets alone, base and adapted rows in the same steps.
#[test]
fn each_request_runs_under_its_own_adapter_whatever_its_batch() {
    let lm = smol();
    let tmp = tempfile::tempdir().unwrap();
    let lora = adapter(&lm, tmp.path());
    let ps = prompts(&lm);
    // An adapter read for a model of another shape is refused, not run.
    let mut wide = lm.model.config().clone();
    wide.intermediate_size *= 2;
    let other = adapters::write_peft(
        &tmp.path().join("wide"),
        &wide,
        4,
        8.0,
        ALL_TARGETS,
        0.02,
        1,
    );
    let other = LoraAdapter::load("wide", &other.dir, &wide, lm.model.device()).unwrap();
    let base = EngineHandle::spawn(lm, EngineConfig::default());
    let err = base.with_lora(Arc::new(other)).err().expect("refused");
    assert!(err.contains("another shape"), "{err}");
    let adapted = base.with_lora(lora).unwrap();
    let alone = |e: &EngineHandle, p: &[u32]| drain(e.submit(request(p)).unwrap()).0;
    let base_alone: Vec<_> = ps.iter().map(|p| alone(&base, p)).collect();
    let lora_alone: Vec<_> = ps.iter().map(|p| alone(&adapted, p)).collect();
    for i in 0..ps.len() {
        assert_ne!(
            base_alone[i], lora_alone[i],
            "prompt {i}: the adapter changed nothing"
        );
    }
    let counts = || [&base.metrics.steps, &base.metrics.batched_sequences].map(EngineMetrics::get);
    let before = counts();
    let rxs: Vec<_> = ps
        .iter()
        .flat_map(|p| [base.submit(request(p)), adapted.submit(request(p))])
        .map(|r| r.unwrap())
        .collect();
    let got: Vec<_> = rxs.into_iter().map(|rx| drain(rx).0).collect();
    for i in 0..ps.len() {
        assert_eq!(
            got[2 * i],
            base_alone[i],
            "prompt {i}: base batched with the adapter"
        );
        assert_eq!(
            got[2 * i + 1],
            lora_alone[i],
            "prompt {i}: adapter batched with the base"
        );
    }
    // Base and adapted rows shared steps: more sequences a step, on average, than either
    // kind alone has.
    let [steps, sequences] = std::array::from_fn(|k| counts()[k] - before[k]);
    assert!(
        sequences > ps.len() as u64 * steps,
        "{sequences} sequences in {steps} steps: the adapters never shared a step"
    );
    wait_idle(&base.metrics);
}

#[test]
fn each_adapter_keeps_its_cached_prefixes_apart() {
    let lm = smol();
    let tmp = tempfile::tempdir().unwrap();
    let lora = adapter(&lm, tmp.path());
    let prompt = prompts(&lm).concat();
    let full = (prompt.len() - 1) / 16 * 16;
    assert!(full >= 32, "{} prompt tokens", prompt.len());
    let base = EngineHandle::spawn(lm, EngineConfig::default());
    let adapted = base.with_lora(lora).unwrap();
    let go = |e: &EngineHandle| drain(e.submit(request(&prompt)).unwrap());
    // The base fills the cache; the adapter's keys and values for the same tokens differ, so
    // it must not read them, but does read its own.
    let (base_tokens, cached) = go(&base);
    assert_eq!(cached, 0);
    let (lora_tokens, cached) = go(&adapted);
    assert_eq!(cached, 0, "the adapter read the base model's cached blocks");
    assert_ne!(lora_tokens, base_tokens);
    for (e, want, label) in [
        (&adapted, &lora_tokens, "adapter"),
        (&base, &base_tokens, "base"),
    ] {
        let (toks, cached) = go(e);
        assert_eq!(cached, full, "{label}: its own cached prefix");
        assert_eq!(&toks, want, "{label}: the cached prefix changed the output");
    }
    wait_idle(&base.metrics);
}
