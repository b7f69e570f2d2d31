//! The engine on real models: batching, paged KV with preemption, prefix caching,
//! cancellation and seeded batch invariance.

use camelid_engine::{
    EngineConfig, EngineHandle, EngineMetrics, Event, Request, SubmitError, DEFAULT_KV_POSITIONS,
};
use camelid_model::decode::sampling::TokenLogprob;
use camelid_model::decode::GenerationParams;
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

/// A generation of `max_tokens` (EOS ignored), nothing else asked.
fn plain_request(prompt: Vec<u32>, max_tokens: usize, sampling: SamplingParams) -> Request {
    Request {
        prompt,
        params: params(max_tokens, sampling),
        prompt_logprobs: None,
        cache_salt: None,
        embed: None,
        lora: None,
    }
}

/// Drains a request's events: (tokens, cached prompt tokens).
fn drain(mut rx: UnboundedReceiver<Event>) -> Result<(Vec<u32>, usize), String> {
    let mut toks = vec![];
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token { token, .. } => toks.push(token),
            Event::Finished { usage, .. } => return Ok((toks, usage.cached_tokens)),
            Event::Error(e) | Event::GrammarFailed(e) | Event::Refused(e) => return Err(e),
            Event::PromptLogprobs(_) => {}
            Event::Embedding(_) => return Err("an embedding from a generation".into()),
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
                .submit(plain_request(
                    p.clone(),
                    max_tokens,
                    SamplingParams::greedy(),
                ))
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
/// (stretch 1: a step may take what a decode step of every running sequence would, at least
/// one prompt token, once the step costs are learned; the lone-stream bound is off here, as
/// its 2.5× a 1-row step of this tiny model would let whole prompts through);
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
            .submit(plain_request(short.clone(), 40, SamplingParams::greedy()))
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
    // The bound took effect: without it a long prompt goes whole into a step beside the
    // first stream's decode; with it, no step with decodes carried half a long prompt.
    let chunk = |e: &EngineHandle| EngineMetrics::get(&e.metrics.max_prefill_tokens_with_decodes);
    assert!(
        chunk(&unbounded) >= 44,
        "the unbounded engine never prefilled a whole prompt beside a decode: {}",
        chunk(&unbounded)
    );
    assert!(
        (1..22).contains(&chunk(&bounded)),
        "stretch 1 let {} prefill tokens into a step with decodes",
        chunk(&bounded)
    );
}

/// Requests that reach an idle engine one after another, each soon after the one before,
/// start in one step with a burst window (and then finish in it: one token each), and one
/// after another without it. Spaced 50 ms apart, against a quiet gap of 2 s, so a slow CI
/// machine cannot split the burst.
#[test]
fn a_burst_of_requests_starts_in_one_step() {
    let lm = tiny();
    let ps = prompts(&lm, 3);
    let steps = |window: Duration| {
        let engine = EngineHandle::spawn(
            tiny(),
            EngineConfig {
                burst_window: window,
                burst_quiet: Duration::from_secs(2),
                ..Default::default()
            },
        );
        let rxs: Vec<_> = ps
            .iter()
            .map(|p| {
                let rx = engine
                    .submit(plain_request(p.clone(), 1, SamplingParams::greedy()))
                    .unwrap();
                std::thread::sleep(Duration::from_millis(50));
                rx
            })
            .collect();
        for rx in rxs {
            assert_eq!(drain(rx).unwrap().0.len(), 1);
        }
        wait_idle(&engine.metrics);
        EngineMetrics::get(&engine.metrics.steps)
    };
    assert_eq!(steps(Duration::from_secs(10)), 1);
    // (3 unless the engine thread stalled past a 50 ms spacing.)
    assert!(steps(Duration::ZERO) > 1);
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
    let r = engine.submit(plain_request(vec![1, 5, 6], 30, SamplingParams::greedy()));
    match r {
        Err(SubmitError::Invalid(m)) => assert!(m.contains("KV"), "{m}"),
        other => panic!("expected Invalid, got {:?}", other.map(|_| ())),
    }
}

/// The waiting queue counts sequences: a request's choices are queued all or none, a full
/// queue is `QueueFull` at once, and requests cancelled while waiting give their room back.
#[test]
fn the_waiting_queue_counts_sequences_and_is_bounded() {
    let engine = EngineHandle::spawn(
        smol(),
        EngineConfig {
            max_running: 1,
            max_waiting: 3,
            ..Default::default()
        },
    );
    let req = |max_tokens| plain_request(vec![1, 2, 3], max_tokens, SamplingParams::greedy());
    let running = engine.submit(req(480)).unwrap();
    let t = Instant::now();
    while engine
        .metrics
        .running
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(t.elapsed() < Duration::from_secs(20), "never admitted");
        std::thread::sleep(Duration::from_millis(10));
    }
    let two = engine.submit_all(vec![req(1), req(1)]).unwrap();
    // Two more do not fit beside those two: neither is queued.
    assert_eq!(
        engine.submit_all(vec![req(1), req(1)]).map(|_| ()),
        Err(SubmitError::QueueFull)
    );
    let third = engine.submit(req(1)).unwrap();
    assert_eq!(
        engine.submit(req(1)).map(|_| ()),
        Err(SubmitError::QueueFull)
    );
    assert!(matches!(
        engine.submit_all(vec![req(1), req(1), req(1), req(1)]),
        Err(SubmitError::Invalid(_))
    ));
    // Cancelling the waiting pair frees their room within a step.
    drop(two);
    let t = Instant::now();
    let more = loop {
        match engine.submit_all(vec![req(1), req(1)]) {
            Ok(rxs) => break rxs,
            Err(SubmitError::QueueFull) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "room never came back"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(running);
    for rx in more.into_iter().chain([third]) {
        assert_eq!(drain(rx).unwrap().0.len(), 1);
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
            e.submit(plain_request(p.clone(), 6, SamplingParams::greedy()))
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

/// A cache the user does not size holds the model's context, up to
/// [`DEFAULT_KV_POSITIONS`], and never less than the configured floor: at most a MiB more.
#[test]
fn the_default_cache_holds_the_context_up_to_the_default_positions() {
    let lm = smol();
    let floor = EngineConfig {
        kv_cache_mb: 1,
        ..Default::default()
    };
    let per_mib = (1 << 20) / floor.kv_cache_mb_holding(&lm, 1 << 20).max(1);
    for context in [100, 3000, DEFAULT_KV_POSITIONS, 8192] {
        let c = EngineConfig {
            kv_cache_mb: floor.default_kv_cache_mb(&lm, context),
            ..floor.clone()
        };
        let held = c.num_blocks(&lm) * c.block_size;
        let want = context.min(DEFAULT_KV_POSITIONS);
        assert!(
            held >= want.max(per_mib) && held <= want.max(per_mib) + per_mib + c.block_size,
            "context {context}: {held} positions in {} MiB",
            c.kv_cache_mb
        );
    }
    // The default floor, 512 MiB, holds more of this small model than its context.
    assert_eq!(EngineConfig::default().default_kv_cache_mb(&lm, 8192), 512);
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
            .submit(plain_request(probe.clone(), 12, sampling.clone()))
            .unwrap(),
    )
    .unwrap()
    .0;
    wait_idle(&engine.metrics);
    let steps_before = EngineMetrics::get(&engine.metrics.steps);
    let mut rxs = vec![];
    for (i, p) in others.iter().enumerate() {
        let s = SamplingParams {
            seed: Some(i as u64),
            ..sampling.clone()
        };
        rxs.push(engine.submit(plain_request(p.clone(), 12, s)).unwrap());
        if i == 7 {
            rxs.push(
                engine
                    .submit(plain_request(probe.clone(), 12, sampling.clone()))
                    .unwrap(),
            );
        }
    }
    let outs: Vec<Vec<u32>> = rxs.into_iter().map(|r| drain(r).unwrap().0).collect();
    assert_eq!(
        outs[8], alone,
        "the same seed gave other tokens in a batch of 16"
    );
    // The probe did run in a batch. Every request takes exactly 12 steps (its prefill
    // samples the first token, 11 decodes follow); had the probe shared s fewer of its
    // steps, the others would have needed s steps of their own besides: it shared at least
    // 24 - steps of its 12.
    let steps = EngineMetrics::get(&engine.metrics.steps) - steps_before;
    assert!(
        steps <= 18,
        "{steps} steps for 16 requests of 12 tokens: the probe shared fewer than 6 steps"
    );
    // And the tokens are samples: of the seed and the temperature.
    let alone_with = |sampling: SamplingParams| {
        drain(
            engine
                .submit(plain_request(probe.clone(), 12, sampling))
                .unwrap(),
        )
        .unwrap()
        .0
    };
    assert_ne!(
        alone_with(SamplingParams {
            seed: Some(4321),
            ..sampling.clone()
        }),
        alone,
        "another seed gave the same tokens"
    );
    assert_ne!(
        alone_with(SamplingParams::greedy()),
        alone,
        "temperature 0.9 gave the greedy tokens"
    );
}

#[test]
fn cancellation_and_random_disconnects_leave_no_blocks() {
    use rand::{Rng, SeedableRng};
    // Also with speculative decoding (blocks of 4: drafts cross blocks, and rejected ones
    // give them back): the same outputs, every block back.
    let spec = camelid_engine::NgramSpec::new(4, Some(1), Some(3), None).unwrap();
    let outputs = [None, Some(spec)].map(|speculative| {
        let lm = tiny();
        let ps = prompts(&lm, 64);
        let engine = EngineHandle::spawn(
            lm,
            EngineConfig {
                block_size: 4,
                num_blocks: Some(400),
                max_running: 16,
                speculative,
                ..Default::default()
            },
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut kept = vec![];
        for p in &ps {
            let mut rx = engine
                .submit(plain_request(p.clone(), 40, SamplingParams::greedy()))
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
        let outs: Vec<Vec<u32>> = kept.into_iter().map(|rx| drain(rx).unwrap().0).collect();
        assert!(outs.iter().all(|o| o.len() == 40));
        wait_idle(&engine.metrics);
        assert!(EngineMetrics::get(&engine.metrics.cancelled) > 0);
        if speculative.is_some() {
            assert!(EngineMetrics::get(&engine.metrics.spec_accepted_tokens) > 0);
        }
        outs
    });
    assert_eq!(outputs[0], outputs[1]);
}

/// Requests admitted in the same step with a common prompt prefix (the n choices of one
/// request; a shared system prompt) compute its full blocks once: the others wait for them
/// and compute only their own tails. Counted exactly through the tokens the forwards ran, and
/// every output is the one a lone request without prefix caching gets.
#[test]
fn prompts_admitted_together_compute_a_common_prefix_once() {
    let lm = smol();
    let vocab = lm.model.config().vocab_size as u32;
    let ids = |seed: u32, n: usize| -> Vec<u32> {
        (0..n as u32)
            .map(|i| (seed * 7919 + i * 104_729) % (vocab - 10) + 5)
            .collect()
    };
    // Four identical 70-token prompts (4 full blocks of 16 reusable), then two prompts that
    // share their first 40 tokens (2 full blocks) and differ after.
    let same = ids(1, 70);
    let common = ids(2, 40);
    let (mut a, mut b) = (common.clone(), common.clone());
    a.extend(ids(3, 20));
    b.extend(ids(4, 25));
    let group: Vec<Vec<u32>> = vec![same.clone(), same.clone(), same.clone(), same, a, b];
    let reference = EngineHandle::spawn(
        smol(),
        EngineConfig {
            prefix_caching: false,
            ..Default::default()
        },
    );
    let want: Vec<Vec<u32>> = group
        .iter()
        .map(|p| run_all(&reference, std::slice::from_ref(p), 8).remove(0))
        .collect();

    let engine = EngineHandle::spawn(lm, EngineConfig::default());
    let req =
        |p: &Vec<u32>, max_tokens| plain_request(p.clone(), max_tokens, SamplingParams::greedy());
    // A 300-token prompt keeps the engine busy while the group is submitted, so the group
    // is admitted together, at the next step.
    let busy = engine.submit(req(&ids(5, 300), 30)).unwrap();
    let rxs: Vec<_> = group
        .iter()
        .map(|p| engine.submit(req(p, 8)).unwrap())
        .collect();
    let got: Vec<(Vec<u32>, usize)> = rxs.into_iter().map(|r| drain(r).unwrap()).collect();
    assert_eq!(drain(busy).unwrap().0.len(), 30);
    for (i, (toks, _)) in got.iter().enumerate() {
        assert_eq!(toks, &want[i], "prompt {i}: sharing changed the output");
    }
    let cached: Vec<usize> = got.iter().map(|g| g.1).collect();
    assert_eq!(
        cached,
        vec![0, 64, 64, 64, 0, 32],
        "prompt tokens reused per request"
    );
    // Tokens through the forwards: each prompt's uncached part, and 7 decodes per request
    // after the first token (29 for the busy one).
    let computed: usize = 300 + 29 + (70 + 3 * 6) + 60 + (65 - 32) + 6 * 7;
    assert_eq!(
        EngineMetrics::get(&engine.metrics.batched_tokens) as usize,
        computed
    );
    assert_eq!(
        EngineMetrics::get(&engine.metrics.cached_prompt_tokens),
        3 * 64 + 32
    );
    wait_idle(&engine.metrics);
}

/// Identical prompts over a pool too small for them all: sequences wait for each other's
/// shared blocks while others are preempted and recomputed; every request still completes
/// (within a deadline, not a hang) with the output of an unconstrained engine.
#[test]
fn shared_prefixes_under_a_tiny_pool_still_complete() {
    let lm = tiny();
    let base = prompts(&lm, 3);
    // Each prompt three times: the copies are admitted together and share blocks.
    let ps: Vec<Vec<u32>> = base
        .iter()
        .flat_map(|p| [p.clone(), p.clone(), p.clone()])
        .collect();
    let roomy = EngineHandle::spawn(
        tiny(),
        EngineConfig {
            block_size: 4,
            num_blocks: Some(1024),
            prefix_caching: false,
            ..Default::default()
        },
    );
    let want = run_all(&roomy, &ps, 20);
    let tight = EngineHandle::spawn(
        lm,
        EngineConfig {
            block_size: 4,
            num_blocks: Some(12),
            ..Default::default()
        },
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let (engine, prompts_) = (tight.clone(), ps.clone());
    std::thread::spawn(move || tx.send(run_all(&engine, &prompts_, 20)));
    let got = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("requests did not complete");
    assert_eq!(got, want);
    assert!(
        EngineMetrics::get(&tight.metrics.preemptions) > 0,
        "the pool was never short"
    );
    assert!(
        EngineMetrics::get(&tight.metrics.cached_prompt_tokens) > 0,
        "nothing was shared"
    );
    wait_idle(&tight.metrics);
}

/// A prompt that does not fit beside an older sequence waits for it instead of being taken
/// back every step to preempt itself again (vLLM's scheduler takes a waiting request only
/// once its blocks can be had). 10 blocks of 4: A (28 prompt + 8 output) holds 7-9 of them,
/// B's 16-token prompt needs 4. B is preempted once, then waits; both outputs are those of a
/// roomy pool.
#[test]
fn a_prompt_that_does_not_fit_waits_instead_of_preempting_itself_each_step() {
    let lm = tiny();
    let a: Vec<u32> = std::iter::once(1)
        .chain((0..27).map(|i| 3 + i % 40))
        .collect();
    let b: Vec<u32> = std::iter::once(1)
        .chain((0..15).map(|i| 5 + i % 30))
        .collect();
    let run = |engine: &EngineHandle| -> Vec<Vec<u32>> {
        let rxs = engine
            .submit_all(vec![
                plain_request(a.clone(), 8, SamplingParams::greedy()),
                plain_request(b.clone(), 4, SamplingParams::greedy()),
            ])
            .unwrap();
        rxs.into_iter().map(|rx| drain(rx).unwrap().0).collect()
    };
    let roomy = EngineHandle::spawn(
        tiny(),
        EngineConfig {
            block_size: 4,
            num_blocks: Some(1024),
            ..Default::default()
        },
    );
    let want = run(&roomy);
    // Both join the first step (a burst window of a second): on a loaded machine the
    // submitting thread may pause between A and B long enough for A to run to its end.
    let tight = EngineHandle::spawn(
        lm,
        EngineConfig {
            block_size: 4,
            num_blocks: Some(10),
            prefix_caching: false,
            burst_window: Duration::from_secs(1),
            burst_quiet: Duration::from_secs(1),
            ..Default::default()
        },
    );
    assert_eq!(run(&tight), want);
    let preemptions = EngineMetrics::get(&tight.metrics.preemptions);
    assert!(
        (1..=2).contains(&preemptions),
        "{preemptions} preemptions for one prompt that had to wait"
    );
    wait_idle(&tight.metrics);
}

/// Shutting down: requests that have not started are refused at once, the running one goes
/// on to its last token, and nothing new is taken but the later parts of requests under way.
#[test]
fn stop_admitting_refuses_waiting_requests_and_finishes_running_ones() {
    let engine = EngineHandle::spawn(
        tiny(),
        EngineConfig {
            max_running: 1,
            ..Default::default()
        },
    );
    let submit = |max_tokens| {
        engine
            .submit(plain_request(
                vec![1, 5, 6],
                max_tokens,
                SamplingParams::greedy(),
            ))
            .unwrap()
    };
    let mut running = submit(60);
    assert!(matches!(running.blocking_recv(), Some(Event::Token { .. })));
    let waiting: Vec<_> = (0..3).map(|_| submit(4)).collect();
    engine.stop_admitting();
    for mut rx in waiting {
        match rx.blocking_recv() {
            Some(Event::Refused(m)) => assert!(m.contains("shutting down"), "{m}"),
            other => panic!("a waiting request got {other:?}, not Refused"),
        }
        assert!(rx.blocking_recv().is_none(), "an event after Refused");
    }
    let (rest, _) = drain(running).expect("the running request finishes");
    assert_eq!(rest.len(), 59, "the running request was cut short");
    let late = engine.submit(plain_request(vec![1, 5, 6], 4, SamplingParams::greedy()));
    assert_eq!(late.err(), Some(SubmitError::ShuttingDown));
    // The later part of a request under way (an embeddings request's next wave) is still
    // taken, and runs to its end.
    let next = engine
        .submit_all_continuing(vec![plain_request(
            vec![1, 5, 6],
            4,
            SamplingParams::greedy(),
        )])
        .expect("a continuing part is taken during shutdown");
    let (tokens, _) = drain(next.into_iter().next().unwrap()).expect("it runs");
    assert_eq!(tokens.len(), 4);
    wait_idle(&engine.metrics);
}

/// Shutting down while the first of a request's `n` choices runs and the others wait for a
/// slot: the client is being answered, so every choice runs to its end (refusing the rest
/// ended a stream already under way with an error).
#[test]
fn stop_admitting_lets_a_started_requests_other_choices_run() {
    let engine = EngineHandle::spawn(
        tiny(),
        EngineConfig {
            max_running: 1,
            ..Default::default()
        },
    );
    let choices = engine
        .submit_all(
            (0..3)
                .map(|_| plain_request(vec![1, 5, 6], 6, SamplingParams::greedy()))
                .collect(),
        )
        .unwrap();
    let mut choices = choices.into_iter();
    let mut first = choices.next().unwrap();
    assert!(matches!(first.blocking_recv(), Some(Event::Token { .. })));
    engine.stop_admitting();
    let (rest, _) = drain(first).expect("the running choice finishes");
    assert_eq!(rest.len(), 5);
    for rx in choices {
        let (tokens, _) = drain(rx).expect("a waiting choice of the started request runs");
        assert_eq!(tokens.len(), 6);
    }
    wait_idle(&engine.metrics);
}

/// An engine thread that panics (here by `panic_at_step`, standing in for a bug in a kernel)
/// closes every request's channel without a last event, says it is not running, and refuses
/// what is submitted after.
#[test]
fn a_panicking_engine_ends_its_requests_unfinished_and_says_so() {
    let engine = EngineHandle::spawn(
        tiny(),
        EngineConfig {
            panic_at_step: Some(4),
            ..Default::default()
        },
    );
    assert!(engine.is_running());
    let rxs: Vec<_> = (0..2)
        .map(|_| {
            engine
                .submit(plain_request(vec![1, 5, 6], 50, SamplingParams::greedy()))
                .unwrap()
        })
        .collect();
    for rx in rxs {
        assert_eq!(
            drain(rx),
            Err("stream ended without Finished".into()),
            "a request of a dead engine"
        );
    }
    let t = Instant::now();
    while engine.is_running() {
        assert!(t.elapsed() < Duration::from_secs(10), "still running");
        std::thread::sleep(Duration::from_millis(10));
    }
    let late = engine.submit(plain_request(vec![1, 5, 6], 4, SamplingParams::greedy()));
    assert_eq!(late.err(), Some(SubmitError::Stopped));
    // Its gauges say nothing runs or holds a block (they read 2 and the blocks of step 3).
    let m = &engine.metrics;
    assert_eq!(
        [&m.running, &m.waiting, &m.kv_blocks_used].map(EngineMetrics::get),
        [0, 0, 0]
    );
}

/// A step whose logits rows are lost (a device that could not read them back: here
/// `lose_logits_from_step`) ends its members with an error, a member verifying a draft too,
/// and the engine serves on. A drafting member once had its decoded position marked computed
/// with no token drawn, and the next step panicked on it as an empty prompt chunk.
#[test]
fn lost_logits_end_requests_with_an_error_and_the_engine_runs_on() {
    // A prompt holding the token the prefill draws (greedy, found by a fault-free engine):
    // prompt lookup (1-grams) then has a draft for the first decode step.
    let vocab = tiny().model.config().vocab_size as u32;
    let probe = EngineHandle::spawn(tiny(), EngineConfig::default());
    let prompt = (0..vocab / 8)
        .map(|k| {
            (1..40)
                .map(|i| (i * 7 + k * 8) % (vocab - 1) + 1)
                .collect::<Vec<u32>>()
        })
        .find(|p| {
            let rx = probe
                .submit(plain_request(p.clone(), 1, SamplingParams::greedy()))
                .unwrap();
            p.contains(&drain(rx).unwrap().0[0])
        })
        .expect("a prompt holding its first greedy token");
    let spec = camelid_engine::NgramSpec::new(3, Some(1), Some(3), None).unwrap();
    let engine = EngineHandle::spawn(
        tiny(),
        EngineConfig {
            speculative: Some(spec),
            lose_logits_from_step: Some(2),
            ..Default::default()
        },
    );
    let rx = engine
        .submit(plain_request(prompt.clone(), 16, SamplingParams::greedy()))
        .unwrap();
    assert_eq!(drain(rx), Err("the logits were lost".into()));
    // Step 1 the prompt, step 2 the decoded token and its draft.
    let tokens = EngineMetrics::get(&engine.metrics.batched_tokens);
    assert!(
        tokens > prompt.len() as u64 + 1,
        "no draft in step 2: {tokens} tokens for a {}-token prompt",
        prompt.len()
    );
    // Still serving: the next request's logits are lost too, and it is told so.
    let rx = engine
        .submit(plain_request(vec![1, 5, 6], 4, SamplingParams::greedy()))
        .unwrap();
    assert_eq!(drain(rx), Err("the logits were lost".into()));
    // A prompt scored alone (lm-evaluation-harness's request) is told so too: it scored
    // nothing and ended as if whole, or tripped the engine's own check.
    let mut scoring = plain_request(vec![1, 5, 6, 7], 0, SamplingParams::greedy());
    scoring.prompt_logprobs = Some(0);
    assert_eq!(
        drain(engine.submit(scoring).unwrap()),
        Err("the logits were lost".into())
    );
    assert!(engine.is_running());
    wait_idle(&engine.metrics);
}

/// What one request's events said: its prompt log-probabilities (and how many times they
/// came), its greedy tokens and their log-probabilities.
#[derive(Debug, PartialEq)]
struct Scored {
    prompt: Vec<TokenLogprob>,
    prompt_events: usize,
    /// Generated tokens that came before the prompt's log-probabilities.
    tokens_before_prompt: usize,
    tokens: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
}

fn drain_scored(mut rx: UnboundedReceiver<Event>) -> Scored {
    let mut s = Scored {
        prompt: vec![],
        prompt_events: 0,
        tokens_before_prompt: 0,
        tokens: vec![],
        logprobs: vec![],
    };
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::PromptLogprobs(lp) => {
                s.prompt_events += 1;
                s.tokens_before_prompt = s.tokens.len();
                s.prompt.extend(lp);
            }
            Event::Token { token, logprob, .. } => {
                s.tokens.push(token);
                s.logprobs.extend(logprob);
            }
            Event::Finished { .. } => return s,
            Event::Error(e) | Event::GrammarFailed(e) | Event::Refused(e) => {
                panic!("request failed: {e}")
            }
            Event::Embedding(_) => panic!("an embedding from a generation"),
        }
    }
    panic!("stream ended without Finished")
}

/// Prompt log-probabilities (what lm-evaluation-harness scores) and greedy tokens are
/// exactly those of the request alone, bit for bit, whether it is batched with others,
/// prefilled in small chunks or preempted and recomputed: every kernel computes a row the
/// same way whatever else is in the batch, and a preempted sequence scores each prompt token
/// once.
#[test]
fn prompt_logprobs_and_greedy_tokens_ignore_batching_chunking_and_preemption() {
    let lm = smol();
    let texts = [
        "The committee met on Tuesday to discuss the budget for the new library. ",
        "Rivers carry sediment from the mountains down to the sea over many years. ",
        "She opened the old wooden box and found letters written by her grandmother. ",
        "A prime number has exactly two divisors: one and the number itself, nothing else. ",
    ];
    // Four different 100-token prompts: 7 blocks of 16 each, 8 with their 20 new tokens.
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| {
            let ids = lm.tokenizer.encode(&t.repeat(12), true).unwrap();
            assert!(ids.len() >= 100);
            ids[..100].to_vec()
        })
        .collect();
    let request = |p: &Vec<u32>| {
        let mut params = params(20, SamplingParams::greedy());
        params.logprobs = Some(2);
        Request {
            prompt: p.clone(),
            params,
            prompt_logprobs: Some(3),
            cache_salt: None,
            embed: None,
            lora: None,
        }
    };
    let all_at_once = |engine: &EngineHandle| -> Vec<Scored> {
        let rxs: Vec<_> = prompts
            .iter()
            .map(|p| engine.submit(request(p)).unwrap())
            .collect();
        rxs.into_iter().map(drain_scored).collect()
    };
    let spawn = |lm, num_blocks, max_batch_tokens| {
        EngineHandle::spawn(
            lm,
            EngineConfig {
                num_blocks: Some(num_blocks),
                max_batch_tokens,
                ..Default::default()
            },
        )
    };
    let metric = |e: &EngineHandle, m: fn(&EngineMetrics) -> &std::sync::atomic::AtomicU64| {
        EngineMetrics::get(m(&e.metrics))
    };

    // Alone: one request at a time, each prompt in one forward.
    let roomy = spawn(lm, 1024, 512);
    let alone: Vec<Scored> = prompts
        .iter()
        .map(|p| drain_scored(roomy.submit(request(p)).unwrap()))
        .collect();
    for s in &alone {
        assert_eq!((s.prompt.len(), s.prompt_events), (99, 1));
        assert_eq!((s.tokens.len(), s.logprobs.len()), (20, 20));
    }
    assert_ne!(alone[0].tokens, alone[1].tokens);

    // Batched: the four together (their prompts share forwards: 20 steps each at most, 80
    // had they run one after another).
    wait_idle(&roomy.metrics);
    let steps = metric(&roomy, |m| &m.steps);
    let batched = all_at_once(&roomy);
    let batched_steps = metric(&roomy, |m| &m.steps) - steps;
    assert!(batched_steps <= 25, "{batched_steps} steps: not batched");

    // Chunked: 24 tokens a step, so prompts prefill in pieces that end mid-block.
    let chunky = spawn(smol(), 1024, 24);
    let chunked = all_at_once(&chunky);
    assert_eq!(metric(&chunky, |m| &m.preemptions), 0);

    // Preempted: 12 blocks hold one sequence (8 blocks) but never two; prompts prefill in
    // chunks of 24 tokens beside decodes, so sequences are preempted halfway through their
    // prompts and while decoding, and recomputed.
    let tight = spawn(smol(), 12, 24);
    let preempted = all_at_once(&tight);
    assert!(
        metric(&tight, |m| &m.preemptions) > 0,
        "the pool was never short"
    );

    for (name, got) in [
        ("batched", &batched),
        ("chunked", &chunked),
        ("preempted", &preempted),
    ] {
        for (i, (g, a)) in got.iter().zip(&alone).enumerate() {
            assert_eq!(
                (g.prompt_events, g.prompt.len()),
                (1, 99),
                "{name} prompt {i}: prompt log-probabilities sent {} times, {} of them",
                g.prompt_events,
                g.prompt.len()
            );
            if let Some(p) = (0..99).find(|&p| g.prompt[p] != a.prompt[p]) {
                panic!(
                    "{name} prompt {i}: token {} scored {:?}, alone {:?}",
                    p + 1,
                    g.prompt[p],
                    a.prompt[p]
                );
            }
            assert_eq!(g, a, "{name} prompt {i}: generation differs");
        }
    }
    for e in [&roomy, &chunky, &tight] {
        wait_idle(&e.metrics);
    }
}

/// A `cache_salt` partitions the prefix cache: the same prompt under another salt (or none)
/// reuses nothing, under the same salt its full blocks; the output never changes.
#[test]
fn cache_salts_keep_prefixes_apart() {
    let lm = tiny();
    let mut prompt: Vec<u32> = prompts(&lm, 4).concat();
    prompt.truncate(40); // the tiny model's context is 64
    assert!(prompt.len() > 12, "{} tokens", prompt.len());
    let full = (prompt.len() - 1) / 4 * 4;
    let engine = EngineHandle::spawn(
        lm,
        EngineConfig {
            block_size: 4,
            num_blocks: Some(256),
            ..Default::default()
        },
    );
    let go = |salt: Option<&str>| {
        drain(
            engine
                .submit(Request {
                    prompt: prompt.clone(),
                    params: params(6, SamplingParams::greedy()),
                    prompt_logprobs: None,
                    cache_salt: salt.map(String::from),
                    embed: None,
                    lora: None,
                })
                .unwrap(),
        )
        .unwrap()
    };
    let (want, cached) = go(Some("alice"));
    assert_eq!(cached, 0);
    for (salt, cached_want) in [
        (Some("bob"), 0),
        (None, 0),
        (Some("alice"), full),
        (Some("bob"), full),
        (None, full),
        (Some("Alice"), 0),
    ] {
        let (toks, cached) = go(salt);
        assert_eq!(cached, cached_want, "salt {salt:?}");
        assert_eq!(toks, want, "salt {salt:?} changed the output");
    }
    wait_idle(&engine.metrics);
}

/// Sequences preempted while they decode recompute their generated tokens as a prompt and go
/// on with the greedy tokens they would have had alone.
#[test]
fn decoding_sequences_preempted_and_recomputed_keep_their_greedy_tokens() {
    let lm = smol();
    let prompts: Vec<Vec<u32>> = [
        "Write a long story about a lighthouse keeper and the storm that changed his life.",
        "Explain, step by step and in detail, how a steam engine turns heat into motion.",
    ]
    .iter()
    .map(|t| lm.tokenizer.encode(t, true).unwrap())
    .collect();
    let request = |p: &Vec<u32>| {
        let mut params = params(60, SamplingParams::greedy());
        params.logprobs = Some(2);
        Request {
            prompt: p.clone(),
            params,
            prompt_logprobs: Some(1),
            cache_salt: None,
            embed: None,
            lora: None,
        }
    };
    let roomy = EngineHandle::spawn(smol(), EngineConfig::default());
    let alone: Vec<Scored> = prompts
        .iter()
        .map(|p| drain_scored(roomy.submit(request(p)).unwrap()))
        .collect();
    // Both prompts and their first tokens fit in 8 blocks of 16, their 60 tokens each not:
    // the newer is preempted while it decodes (its prompt scored and sent already).
    let need: usize = prompts.iter().map(|p| (p.len() + 60).div_ceil(16)).sum();
    assert!(need > 8 && prompts.iter().all(|p| p.len() < 32), "{need}");
    // And with speculative decoding: drafts take only spare blocks, and what a preempted
    // sequence recomputes is what it accepted.
    let spec = camelid_engine::NgramSpec::new(4, Some(1), Some(3), None).unwrap();
    for (lm, speculative) in [(lm, None), (smol(), Some(spec))] {
        let tight = EngineHandle::spawn(
            lm,
            EngineConfig {
                num_blocks: Some(8),
                speculative,
                ..Default::default()
            },
        );
        let rxs: Vec<_> = prompts
            .iter()
            .map(|p| tight.submit(request(p)).unwrap())
            .collect();
        let got: Vec<Scored> = rxs.into_iter().map(drain_scored).collect();
        assert!(EngineMetrics::get(&tight.metrics.preemptions) > 0);
        check_preempted(&got, &alone);
        wait_idle(&tight.metrics);
    }
}

fn check_preempted(got: &[Scored], alone: &[Scored]) {
    for (i, (g, a)) in got.iter().zip(alone).enumerate() {
        assert_eq!(g.prompt_events, 1, "prompt {i}");
        assert_eq!(g.prompt, a.prompt, "prompt {i}: prompt log-probabilities");
        assert_eq!(g.tokens, a.tokens, "prompt {i}: greedy tokens");
        let worst = g
            .logprobs
            .iter()
            .zip(&a.logprobs)
            .map(|(x, y)| (x.logprob - y.logprob).abs())
            .fold(0f32, f32::max);
        eprintln!("prompt {i}: generated log-probabilities differ by at most {worst}");
        assert_eq!(
            g.logprobs, a.logprobs,
            "prompt {i}: generated log-probabilities"
        );
    }
}

/// What an embedding request's events said: the vector (and how many came) and its usage.
fn drain_embedding(mut rx: UnboundedReceiver<Event>) -> (Vec<f32>, usize, camelid_engine::Usage) {
    let (mut v, mut vectors) = (vec![], 0);
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Embedding(e) => {
                vectors += 1;
                v = e;
            }
            Event::Finished { usage, .. } => return (v, vectors, usage),
            Event::Error(e) | Event::GrammarFailed(e) | Event::Refused(e) => {
                panic!("request failed: {e}")
            }
            Event::Token { .. } | Event::PromptLogprobs(_) => {
                panic!("an embedding request generated or scored")
            }
        }
    }
    panic!("stream ended without Finished")
}

/// Embedding requests pool the model's own final hidden states: those of one forward over
/// the prompt alone (the same CPU kernels, an f32 cache), the last row or the mean of every
/// row, bit for bit — whether they are batched with generations, prefilled in chunks,
/// preempted and recomputed, or (last-token pooling) served from the prefix cache. Mean
/// pooling reuses no cached prefix (it needs every position's row).
#[test]
fn embeddings_pool_the_models_hidden_states_whatever_the_batching() {
    use camelid_engine::paged::PagedKv;
    use camelid_engine::Pooling;
    use camelid_model::{ForwardBatch, KvDtype, LogitsWanted};
    let lm = smol();
    let texts = [
        "The committee met on Tuesday to discuss the budget for the new library. ",
        "Rivers carry sediment from the mountains down to the sea over many years. ",
        "She opened the old wooden box and found letters written by her grandmother. ",
    ];
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| lm.tokenizer.encode(&t.repeat(5), true).unwrap()[..70].to_vec())
        .collect();
    // The reference: each prompt alone in one forward, every row's hidden state.
    let c = lm.model.config().clone();
    let reference: Vec<(Vec<f32>, Vec<f32>)> = prompts
        .iter()
        .map(|p| {
            let mut kv = PagedKv::new(
                c.num_layers,
                c.num_kv_heads,
                c.head_dim,
                p.len().div_ceil(16),
                16,
                lm.model.dtype(),
                KvDtype::F32,
                lm.model.device(),
            )
            .unwrap();
            kv.start(0, &[], None, usize::MAX);
            assert!(kv.reserve(0, p.len()));
            let mut b = ForwardBatch::default();
            b.push_hidden(0, 0, p, LogitsWanted::All, p.len());
            let out = lm.model.forward_output(&b, &mut kv).unwrap();
            assert_eq!(out.logits.dims(), [0, c.vocab_size]);
            let rows: Vec<Vec<f32>> = out.hidden.unwrap().to_vec2().unwrap();
            assert_eq!((rows.len(), rows[0].len()), (p.len(), c.hidden_size));
            let mean = (0..c.hidden_size)
                .map(|j| (rows.iter().map(|r| r[j] as f64).sum::<f64>() / rows.len() as f64) as f32)
                .collect();
            (rows.last().unwrap().clone(), mean)
        })
        .collect();
    assert_ne!(reference[0].0, reference[1].0);
    assert_ne!(reference[0].0, reference[0].1);
    let embed = |p: &Vec<u32>, pooling| Request {
        prompt: p.clone(),
        params: params(0, SamplingParams::greedy()),
        prompt_logprobs: None,
        cache_salt: None,
        embed: Some(pooling),
        lora: None,
    };
    let spawn = |num_blocks, max_batch_tokens| {
        EngineHandle::spawn(
            smol(),
            EngineConfig {
                num_blocks: Some(num_blocks),
                max_batch_tokens,
                host_kv_dtype: KvDtype::F32,
                ..Default::default()
            },
        )
    };
    // Every prompt, both poolings, beside two generations that keep decoding meanwhile.
    let check = |engine: &EngineHandle, name: &str| {
        let gens: Vec<_> = prompts[..2]
            .iter()
            .map(|p| {
                engine
                    .submit(plain_request(p.clone(), 40, SamplingParams::greedy()))
                    .unwrap()
            })
            .collect();
        let rxs: Vec<_> = prompts
            .iter()
            .flat_map(|p| {
                [Pooling::Last, Pooling::Mean].map(|k| engine.submit(embed(p, k)).unwrap())
            })
            .collect();
        let mut cached = vec![];
        for (i, rx) in rxs.into_iter().enumerate() {
            let (v, vectors, usage) = drain_embedding(rx);
            let (want_last, want_mean) = &reference[i / 2];
            let (kind, want) = if i % 2 == 0 {
                ("last", want_last)
            } else {
                ("mean", want_mean)
            };
            assert_eq!(vectors, 1, "{name}: prompt {} {kind}", i / 2);
            assert_eq!(
                (usage.prompt_tokens, usage.completion_tokens),
                (70, 0),
                "{name}: prompt {} {kind}",
                i / 2
            );
            assert!(&v == want, "{name}: prompt {} {kind}-pooled differs", i / 2);
            cached.push(usage.cached_tokens);
        }
        for rx in gens {
            assert_eq!(drain(rx).unwrap().0.len(), 40, "{name}: a generation");
        }
        cached
    };
    let roomy = spawn(1024, 512);
    check(&roomy, "batched");
    // Again on the same engine: last-token pooling reuses the cached prefix, mean does not.
    let cached = check(&roomy, "cached");
    for (i, c) in cached.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(*c, 64, "last-pooled prompt {} reused {c} tokens", i / 2);
        } else {
            assert_eq!(*c, 0, "mean-pooled prompt {} reused {c} tokens", i / 2);
        }
    }
    let chunky = spawn(1024, 24);
    check(&chunky, "chunked");
    // 12 blocks hold two 70-token sequences (5 blocks each) but not all eight.
    let tight = spawn(12, 24);
    check(&tight, "preempted");
    assert!(
        EngineMetrics::get(&tight.metrics.preemptions) > 0,
        "the pool was never short"
    );
    // Asking an embedding request for tokens or prompt scores is refused.
    let mut bad = embed(&prompts[0], Pooling::Last);
    bad.params.max_tokens = 1;
    assert!(matches!(roomy.submit(bad), Err(SubmitError::Invalid(_))));
    for e in [&roomy, &chunky, &tight] {
        wait_idle(&e.metrics);
    }
}

/// Speculative decoding by prompt lookup changes no token and no log-probability, greedy or
/// seeded, alone or batched: a drafted position attends as the decode it stands in for, and
/// its row is sampled with the same draws as one token a step. On text that repeats itself
/// drafts are accepted, and a request needs fewer steps than tokens.
#[test]
fn speculative_decoding_gives_the_tokens_of_one_token_steps() {
    let lm = smol();
    let texts = [
        "Repeat after me: the quick brown fox jumps over the lazy dog. Repeat after me: the \
         quick brown fox jumps over the lazy dog. Repeat after me:",
        "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n",
        "Monday, Tuesday, Wednesday, Monday, Tuesday, Wednesday, Monday,",
        "Write a short poem about the sea.",
    ];
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| lm.tokenizer.encode(t, true).unwrap())
        .collect();
    let sampled = SamplingParams {
        temperature: 0.8,
        seed: Some(99),
        ..Default::default()
    };
    let request = |p: &Vec<u32>, sampling: &SamplingParams| {
        let mut params = params(48, sampling.clone());
        params.logprobs = Some(2);
        Request {
            prompt: p.clone(),
            params,
            prompt_logprobs: None,
            cache_salt: None,
            embed: None,
            lora: None,
        }
    };
    let plain = EngineHandle::spawn(smol(), EngineConfig::default());
    let spec = camelid_engine::NgramSpec::new(4, Some(1), Some(3), None).unwrap();
    let drafting = EngineHandle::spawn(
        lm,
        EngineConfig {
            speculative: Some(spec),
            ..Default::default()
        },
    );
    for (greedy, sampling) in [(true, SamplingParams::greedy()), (false, sampled)] {
        let want: Vec<Scored> = prompts
            .iter()
            .map(|p| drain_scored(plain.submit(request(p, &sampling)).unwrap()))
            .collect();
        // One at a time: greedy, the list that goes on repeating itself takes fewer steps
        // than tokens.
        let steps_before = EngineMetrics::get(&drafting.metrics.steps);
        let first = drain_scored(drafting.submit(request(&prompts[2], &sampling)).unwrap());
        let steps = EngineMetrics::get(&drafting.metrics.steps) - steps_before;
        assert!(
            !greedy || steps < 40,
            "{steps} steps for 48 tokens of a repeated list: drafts were not accepted"
        );
        // Then all together, drafting side by side.
        let rxs: Vec<_> = prompts
            .iter()
            .map(|p| drafting.submit(request(p, &sampling)).unwrap())
            .collect();
        let together: Vec<Scored> = rxs.into_iter().map(drain_scored).collect();
        let runs = std::iter::once((&first, &want[2])).chain(together.iter().zip(&want));
        for (i, (g, w)) in runs.enumerate() {
            assert_eq!(g.tokens, w.tokens, "{sampling:?}, run {i}: tokens");
            assert_eq!(
                g.logprobs, w.logprobs,
                "{sampling:?}, run {i}: log-probabilities"
            );
        }
    }
    let drafted = EngineMetrics::get(&drafting.metrics.spec_draft_tokens);
    let accepted = EngineMetrics::get(&drafting.metrics.spec_accepted_tokens);
    eprintln!("drafted {drafted}, accepted {accepted}");
    assert!(accepted > 0 && accepted <= drafted);
    assert_eq!(EngineMetrics::get(&plain.metrics.spec_draft_tokens), 0);
    wait_idle(&drafting.metrics);

    // A prompt whose last chunk is one token (steps of all but one of its tokens) looks like
    // a decode; it drafts only once it has generated, so its prompt log-probabilities come
    // whole, once, and the same.
    let p = &prompts[2];
    let scored = |engine: &EngineHandle| {
        let mut r = request(p, &SamplingParams::greedy());
        r.prompt_logprobs = Some(1);
        drain_scored(engine.submit(r).unwrap())
    };
    let want = scored(&plain);
    let chunked = EngineHandle::spawn(
        smol(),
        EngineConfig {
            speculative: Some(spec),
            max_batch_tokens: p.len() - 1,
            ..Default::default()
        },
    );
    let got = scored(&chunked);
    assert_eq!((got.prompt_events, got.tokens_before_prompt), (1, 0));
    assert_eq!(got.prompt, want.prompt, "prompt log-probabilities");
    assert_eq!(got.tokens, want.tokens);
    assert!(EngineMetrics::get(&chunked.metrics.spec_accepted_tokens) > 0);
    wait_idle(&chunked.metrics);
}

/// A lone prompt whose last few tokens would take a step of their own takes them in its step
/// (`finish_prompt_within`), with the same tokens and prompt log-probabilities as in steps
/// of the budget (the default model's kernels give a row the same bits in any batch); one
/// token more, and the budget holds. Beside a decode it holds too.
#[test]
fn a_lone_prompts_last_few_tokens_join_its_step() {
    let lm = smol();
    let ids = lm
        .tokenizer
        .encode(
            &"the lazy fox jumps over the sleeping dog ".repeat(20),
            true,
        )
        .unwrap();
    assert!(ids.len() > 41);
    let spawn = |within| {
        EngineHandle::spawn(
            smol(),
            EngineConfig {
                max_batch_tokens: 32,
                finish_prompt_within: within,
                ..Default::default()
            },
        )
    };
    let (hard, finishing) = (spawn(0), spawn(8));
    // (steps, scored output) of one prompt of `n` tokens and one generated token.
    let run = |e: &EngineHandle, n: usize| {
        wait_idle(&e.metrics);
        let steps = EngineMetrics::get(&e.metrics.steps);
        let mut params = params(1, SamplingParams::greedy());
        params.logprobs = Some(2);
        let r = Request {
            prompt: ids[..n].to_vec(),
            params,
            prompt_logprobs: Some(2),
            cache_salt: None,
            embed: None,
            lora: None,
        };
        let s = drain_scored(e.submit(r).unwrap());
        (EngineMetrics::get(&e.metrics.steps) - steps, s)
    };
    let (hard_steps, want) = run(&hard, 40);
    let (steps, got) = run(&finishing, 40);
    assert_eq!((hard_steps, steps), (2, 1), "32 + 8 tokens");
    assert_eq!(got, want, "one step changed the output");
    assert_eq!(run(&finishing, 41).0, 2, "32 + 9 tokens");

    // Beside a running stream the budget stays a cap.
    wait_idle(&finishing.metrics);
    let mut stream = finishing
        .submit(plain_request(
            ids[..4].to_vec(),
            200,
            SamplingParams::greedy(),
        ))
        .unwrap();
    assert!(matches!(stream.blocking_recv(), Some(Event::Token { .. })));
    // 39 tokens beside one decode: 31 fit the budget, 8 would be left (salted: nothing of
    // the prompts before is cached).
    let mut beside = plain_request(ids[..39].to_vec(), 1, SamplingParams::greedy());
    beside.cache_salt = Some("beside".into());
    assert_eq!(drain(finishing.submit(beside).unwrap()).unwrap().0.len(), 1);
    drain(stream).unwrap();
    let most = EngineMetrics::get(&finishing.metrics.max_prefill_tokens_with_decodes);
    assert!(
        (1..=31).contains(&most),
        "{most} prompt tokens beside a decode"
    );
    for e in [&hard, &finishing] {
        wait_idle(&e.metrics);
    }
}
