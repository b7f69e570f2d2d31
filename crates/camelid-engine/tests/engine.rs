//! The engine on real models: batching, paged KV with preemption, prefix caching,
//! cancellation and seeded batch invariance.

use camelid_engine::{EngineConfig, EngineHandle, EngineMetrics, Event, Request, SubmitError};
use camelid_model::generate::GenerationParams;
use camelid_model::{LoadOptions, SamplingParams};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

fn tiny() -> camelid_model::LoadedModel {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
    camelid_model::load(Some(p.to_str().unwrap()), &LoadOptions::default()).unwrap()
}

fn smol() -> camelid_model::LoadedModel {
    camelid_model::load(None, &LoadOptions::default()).unwrap()
}

fn params(max_tokens: usize, sampling: SamplingParams) -> GenerationParams {
    let mut p = GenerationParams::new(max_tokens, sampling);
    p.ignore_eos = true;
    p
}

/// Drains a request's events: (tokens, cached prompt tokens).
fn drain(mut rx: UnboundedReceiver<Event>) -> Result<(Vec<u32>, usize), String> {
    let mut toks = vec![];
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token { token, .. } => toks.push(token),
            Event::Finished { usage, .. } => return Ok((toks, usage.cached_tokens)),
            Event::Error(e) => return Err(e),
            Event::PromptLogprobs(_) => {}
        }
    }
    Err("stream ended without Finished".into())
}

fn prompts(lm: &camelid_model::LoadedModel, n: usize) -> Vec<Vec<u32>> {
    let words = [
        "hello world",
        "the lazy fox",
        "paris is the capital",
        "one two three four",
        "a curious user",
        "vicuna llama",
    ];
    (0..n)
        .map(|i| {
            lm.tokenizer
                .encode(
                    &format!(
                        "{} {}",
                        words[i % words.len()],
                        words[(i * 7 + 3) % words.len()]
                    ),
                    true,
                )
                .unwrap()
        })
        .collect()
}

fn run_all(engine: &EngineHandle, ps: &[Vec<u32>], max_tokens: usize) -> Vec<Vec<u32>> {
    let rxs: Vec<_> = ps
        .iter()
        .map(|p| {
            engine
                .submit(Request {
                    prompt: p.clone(),
                    params: params(max_tokens, SamplingParams::greedy()),
                    prompt_logprobs: None,
                })
                .unwrap()
        })
        .collect();
    rxs.into_iter().map(|rx| drain(rx).unwrap().0).collect()
}

fn wait_idle(m: &EngineMetrics) {
    let t = Instant::now();
    while EngineMetrics::get(&m.running) + EngineMetrics::get(&m.waiting) > 0
        || EngineMetrics::get(&m.kv_blocks_used) > 0
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "engine did not go idle: used blocks {}",
            EngineMetrics::get(&m.kv_blocks_used)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn preemption_under_a_tiny_pool_gives_the_same_outputs() {
    let lm = tiny();
    let ps = prompts(&lm, 6);
    let roomy = EngineHandle::spawn(
        tiny(),
        EngineConfig {
            block_size: 4,
            num_blocks: Some(1024),
            ..Default::default()
        },
    );
    let want = run_all(&roomy, &ps, 20);
    // 10 blocks of 4 = 40 positions; six sequences of ~30 positions each must take turns.
    let tight = EngineHandle::spawn(
        lm,
        EngineConfig {
            block_size: 4,
            num_blocks: Some(10),
            prefix_caching: false,
            ..Default::default()
        },
    );
    let got = run_all(&tight, &ps, 20);
    assert_eq!(got, want);
    assert!(
        EngineMetrics::get(&tight.metrics.preemptions) > 0,
        "the pool was never short"
    );
    wait_idle(&tight.metrics);
}

/// Prompts that arrive while another stream decodes are prefilled in time-bounded chunks
/// (with stretch 1 and blocks of 4: four tokens a step, once the step costs are learned);
/// however small the chunks, every request completes with the output of an unbounded engine.
#[test]
fn time_bounded_prefill_chunks_change_no_output() {
    let lm = tiny();
    let long: Vec<Vec<u32>> = prompts(&lm, 3)
        .into_iter()
        .map(|p| p.iter().copied().cycle().take(44).collect())
        .collect();
    let short = prompts(&lm, 1).remove(0);
    let run = |engine: &EngineHandle| {
        // Warm-up: a prefill-only step and decode-only steps teach the engine their costs.
        run_all(engine, std::slice::from_ref(&short), 8);
        let first = engine
            .submit(Request {
                prompt: short.clone(),
                params: params(40, SamplingParams::greedy()),
                prompt_logprobs: None,
            })
            .unwrap();
        let mut first = first;
        let mut first_tokens = vec![];
        // Submit the long prompts once the first stream is decoding.
        while first_tokens.len() < 2 {
            match first.blocking_recv() {
                Some(Event::Token { token, .. }) => first_tokens.push(token),
                other => panic!("unexpected event {other:?}"),
            }
        }
        let later = run_all(engine, &long, 12);
        let (rest, _) = drain(first).unwrap();
        first_tokens.extend(rest);
        wait_idle(&engine.metrics);
        (first_tokens, later)
    };
    let bounded = EngineHandle::spawn(
        tiny(),
        EngineConfig {
            block_size: 4,
            num_blocks: Some(1024),
            max_step_stretch: Some(1.0),
            ..Default::default()
        },
    );
    let unbounded = EngineHandle::spawn(
        lm,
        EngineConfig {
            block_size: 4,
            num_blocks: Some(1024),
            ..Default::default()
        },
    );
    assert_eq!(run(&bounded), run(&unbounded));
}

#[test]
fn a_request_larger_than_the_pool_fails_at_once() {
    let engine = EngineHandle::spawn(
        tiny(),
        EngineConfig {
            block_size: 4,
            num_blocks: Some(4),
            ..Default::default()
        },
    );
    let r = engine.submit(Request {
        prompt: vec![1, 5, 6],
        params: params(30, SamplingParams::greedy()),
        prompt_logprobs: None,
    });
    match r {
        Err(SubmitError::Invalid(m)) => assert!(m.contains("KV"), "{m}"),
        other => panic!("expected Invalid, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn prefix_cache_reuses_blocks_and_changes_nothing() {
    let lm = smol();
    let history: Vec<u32> = lm
        .tokenizer
        .encode(
            &"The quick brown fox jumps over the lazy dog. ".repeat(12),
            true,
        )
        .unwrap();
    let mut turn2 = history.clone();
    turn2.extend(lm.tokenizer.encode(" And then?", false).unwrap());
    let cached = EngineHandle::spawn(smol(), EngineConfig::default());
    let uncached = EngineHandle::spawn(
        lm,
        EngineConfig {
            prefix_caching: false,
            ..Default::default()
        },
    );
    let go = |e: &EngineHandle, p: &Vec<u32>| {
        drain(
            e.submit(Request {
                prompt: p.clone(),
                params: params(6, SamplingParams::greedy()),
                prompt_logprobs: None,
            })
            .unwrap(),
        )
        .unwrap()
    };
    let (_, c0) = go(&cached, &history);
    assert_eq!(c0, 0);
    let (t_cached, c1) = go(&cached, &turn2);
    assert!(
        c1 >= history.len() - 16 && c1 % 16 == 0,
        "cached {c1} of {} history tokens",
        history.len()
    );
    let (t_plain, c2) = go(&uncached, &turn2);
    assert_eq!(c2, 0);
    assert_eq!(t_cached, t_plain, "prefix caching changed the output");
    assert!(EngineMetrics::get(&cached.metrics.prefix_cache_hits) >= 1);
    wait_idle(&cached.metrics);
}

#[test]
fn seeded_sampling_is_batch_invariant() {
    let lm = smol();
    let probe = lm
        .tokenizer
        .encode("Write a short poem about the sea.", true)
        .unwrap();
    let others = prompts(&lm, 15);
    let engine = EngineHandle::spawn(lm, EngineConfig::default());
    let sampling = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: Some(1234),
        ..Default::default()
    };
    let alone = drain(
        engine
            .submit(Request {
                prompt: probe.clone(),
                params: params(12, sampling.clone()),
                prompt_logprobs: None,
            })
            .unwrap(),
    )
    .unwrap()
    .0;
    let mut rxs = vec![];
    for (i, p) in others.iter().enumerate() {
        let s = SamplingParams {
            seed: Some(i as u64),
            ..sampling.clone()
        };
        rxs.push(
            engine
                .submit(Request {
                    prompt: p.clone(),
                    params: params(12, s),
                    prompt_logprobs: None,
                })
                .unwrap(),
        );
        if i == 7 {
            rxs.push(
                engine
                    .submit(Request {
                        prompt: probe.clone(),
                        params: params(12, sampling.clone()),
                        prompt_logprobs: None,
                    })
                    .unwrap(),
            );
        }
    }
    let outs: Vec<Vec<u32>> = rxs.into_iter().map(|r| drain(r).unwrap().0).collect();
    assert_eq!(
        outs[8], alone,
        "the same seed gave other tokens in a batch of 16"
    );
}

#[test]
fn cancellation_and_random_disconnects_leave_no_blocks() {
    use rand::{Rng, SeedableRng};
    let lm = tiny();
    let ps = prompts(&lm, 64);
    let engine = EngineHandle::spawn(
        lm,
        EngineConfig {
            block_size: 4,
            num_blocks: Some(400),
            max_running: 16,
            ..Default::default()
        },
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut kept = vec![];
    for p in &ps {
        let mut rx = engine
            .submit(Request {
                prompt: p.clone(),
                params: params(40, SamplingParams::greedy()),
                prompt_logprobs: None,
            })
            .unwrap();
        match rng.random_range(0..3) {
            0 => drop(rx), // gone before it starts
            1 => {
                let _ = rx.blocking_recv(); // gone mid-generation
                drop(rx);
            }
            _ => kept.push(rx),
        }
    }
    for rx in kept {
        assert_eq!(drain(rx).unwrap().0.len(), 40);
    }
    wait_idle(&engine.metrics);
    assert!(EngineMetrics::get(&engine.metrics.cancelled) > 0);
}
