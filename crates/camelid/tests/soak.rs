//! The soak: 256 streaming clients at once on the default model with a KV pool small enough
//! to force preemption, a third of them hanging up at random points, mixed with `n > 1`,
//! `echo` and stop strings. Every request must end, every KV block come back (the engine's
//! `/metrics` gauge), memory stay within +200 MB, all under 3 minutes.

mod common;
use common::http::{metric, metrics, send, stream};
use common::serve;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const CLIENTS: usize = 256;
const MAX_TOKENS: usize = 10;

/// xorshift64*: reproducible choices per client without a crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % below
    }
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

/// Client `i`'s request: (path, body, choices, echoed prompt).
fn request(i: usize, rng: &mut Rng) -> (&'static str, Value, usize, Option<String>) {
    let topic = ["rivers", "cats", "the moon", "bread", "trains", "music"][i % 6];
    let seed = rng.next(1 << 20);
    match i % 4 {
        0 => (
            "/v1/chat/completions",
            json!({"model": "default", "messages": [{"role": "user", "content": format!("Tell me about {topic}.")}],
                   "max_tokens": MAX_TOKENS, "stream": true, "stop": [" the", ".", "\n"],
                   "temperature": 0.8, "seed": seed}),
            1,
            None,
        ),
        1 => (
            "/v1/chat/completions",
            json!({"model": "default", "messages": [{"role": "user", "content": format!("Three words about {topic}:")}],
                   "max_tokens": MAX_TOKENS, "stream": true, "n": 3, "temperature": 1.0, "seed": seed,
                   "stream_options": {"include_usage": true}}),
            3,
            None,
        ),
        2 => {
            let prompt = format!("A short note on {topic} (client {i}):");
            (
                "/v1/completions",
                json!({"model": "default", "prompt": prompt, "echo": true, "max_tokens": MAX_TOKENS,
                       "stream": true, "temperature": 0.7, "seed": seed, "n": 2}),
                2,
                Some(prompt),
            )
        }
        _ => (
            "/v1/chat/completions",
            json!({"model": "default", "messages": [{"role": "user", "content": format!("Write a line on {topic}, {i}.")}],
                   "max_tokens": MAX_TOKENS, "ignore_eos": true, "stream": true, "temperature": 0}),
            1,
            None,
        ),
    }
}

/// A stream read to its end: one finish reason per choice, no error, `[DONE]` last; an echo
/// request's text starts with its prompt.
fn check_complete(i: usize, events: &[String], choices: usize, echo: Option<&str>) {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "client {i}: {events:?}"
    );
    let mut finished = vec![0; choices];
    let mut text = vec![String::new(); choices];
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap_or_else(|_| panic!("client {i}: {e}"));
        assert!(c.get("error").is_none(), "client {i}: {e}");
        for ch in c["choices"].as_array().unwrap() {
            let idx = ch["index"].as_u64().unwrap() as usize;
            let piece = ch["text"].as_str().or(ch["delta"]["content"].as_str());
            text[idx] += piece.unwrap_or("");
            if let Some(r) = ch["finish_reason"].as_str() {
                assert!(r == "stop" || r == "length", "client {i}: {e}");
                finished[idx] += 1;
            }
        }
    }
    assert_eq!(
        finished,
        vec![1; choices],
        "client {i}: finish reasons {events:?}"
    );
    if let Some(p) = echo {
        for t in &text {
            assert!(t.starts_with(p), "client {i}: echo lost: {t:?}");
        }
    }
}

#[test]
fn soak_256_streams_with_hangups_on_a_small_kv_pool() {
    let s = serve(&["--kv-cache-mb", "12"]);
    let base = s.base.clone();
    let pid = s.child.id();
    // Warm up (allocator arenas, worker threads), then take the baseline.
    for i in 0..8 {
        let (path, body, ..) = request(i, &mut Rng(i as u64 + 1));
        let (st, _) = stream(&base, path, &body.to_string(), |_| true).unwrap();
        assert_eq!(st, 200);
    }
    let baseline = rss_mb(pid);
    let started = Instant::now();
    let peak = std::sync::Arc::new(std::sync::Mutex::new(baseline));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let r = rss_mb(pid);
                let mut p = peak.lock().unwrap();
                *p = p.max(r);
                drop(p);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1000_0001));
                let (path, body, choices, echo) = request(i, &mut rng);
                let body = body.to_string();
                let hang_up = rng.next(3) == 0;
                if hang_up && rng.next(4) == 0 {
                    // Gone before the response starts.
                    drop(send(&base, "POST", path, &[], &body).unwrap());
                    return false;
                }
                // Hanging up after the opening chunk, or some tokens in.
                let after = if hang_up {
                    1 + rng.next(8) as usize
                } else {
                    usize::MAX
                };
                let mut seen = 0;
                let (st, events) = stream(&base, path, &body, |_| {
                    seen += 1;
                    seen < after
                })
                .unwrap_or_else(|e| panic!("client {i}: {e}"));
                assert_eq!(st, 200, "client {i}: {events:?}");
                if events.len() < after {
                    check_complete(i, &events, choices, echo.as_deref());
                }
                hang_up
            })
        })
        .collect();
    let mut hung_up = 0;
    for c in clients {
        hung_up += c.join().expect("a client failed") as usize;
    }
    let elapsed = started.elapsed();
    // Every sequence ends and gives its blocks back: nothing running or waiting, no KV block
    // held (cached prefix blocks nobody holds are free).
    let t = Instant::now();
    let m = loop {
        let m = metrics(&base);
        let busy = metric(&m, "camelid_running_requests")
            + metric(&m, "camelid_waiting_requests")
            + metric(&m, "camelid_kv_blocks_used");
        if busy == 0.0 {
            break m;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the engine did not drain:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = *peak.lock().unwrap();
    let after = rss_mb(pid);
    eprintln!(
        "soak: {CLIENTS} clients ({hung_up} hung up) in {:.1}s; RSS {baseline:.0} MB -> peak {peak:.0} MB, {after:.0} MB after; {} preemptions, {} cancelled",
        elapsed.as_secs_f64(),
        metric(&m, "camelid_preemptions_total"),
        metric(&m, "camelid_cancelled_requests_total"),
    );
    assert!(
        metric(&m, "camelid_preemptions_total") > 0.0,
        "the pool never ran short:\n{m}"
    );
    assert!(
        metric(&m, "camelid_cancelled_requests_total") > 0.0,
        "no hang-up reached the engine:\n{m}"
    );
    assert!(
        peak - baseline < 200.0,
        "RSS grew {baseline:.0} -> {peak:.0} MB"
    );
    assert!(
        elapsed < Duration::from_secs(180),
        "the soak took {elapsed:?}"
    );
    // The server still answers.
    let (path, body, choices, echo) = request(3, &mut Rng(7));
    let (st, events) = stream(&base, path, &body.to_string(), |_| true).unwrap();
    assert_eq!(st, 200);
    check_complete(9999, &events, choices, echo.as_deref());
}
