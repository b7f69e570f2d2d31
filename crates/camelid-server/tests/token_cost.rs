//! Per-token cost stays O(new text) whatever a request asks for: a neighbour with 16 stop
//! strings of 250 kB whose tokens are all skipped special tokens (`logit_bias`) must not slow
//! another client's stream. The real server and default model on a loopback port; the
//! victim's inter-token latency next to that neighbour is compared with its latency next to
//! a harmless neighbour of the same shape, measured in the same test, rounds alternating.

mod common;
use camelid_engine::EngineConfig;
use camelid_server::{AppState, ServerConfig};
use common::{model_entry, runtime, serve};
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STOP_BYTES: usize = 250_000;
const STOPS: usize = 16;
/// Choices of the neighbouring request (each one a sequence with its own decoder).
const NEIGHBOUR_N: usize = 4;
const VICTIM_TOKENS: usize = 40;
const ROUNDS: usize = 3;

fn start() -> String {
    let entry = model_entry("smol", &[], 4096, |_| EngineConfig::default());
    // The neighbour's body is about 4 MB of stop strings; the limit is set here, not assumed.
    let state = Arc::new(AppState::new(ServerConfig {
        body_limit: 8 << 20,
        ..Default::default()
    }));
    state.set_models(vec![entry]);
    serve(state).base
}

async fn post(base: &str, path: &str, body: &Value) -> reqwest::Response {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r
}

async fn generated_tokens(base: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("camelid_generation_tokens_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn token_id(base: &str, text: &str) -> u64 {
    let r: Value = post(
        base,
        "/tokenize",
        &json!({"prompt": text, "add_special_tokens": false}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(r["count"], 1, "{text:?} is one token: {r}");
    r["tokens"][0].as_u64().unwrap()
}

/// The victim: a greedy stream of `VICTIM_TOKENS` tokens; the gaps (seconds) between the
/// arrivals of its content chunks after the first.
async fn victim_gaps(base: &str) -> Vec<f64> {
    let body = json!({"model": "smol", "messages": [{"role": "user", "content": "Tell me about the sea."}],
                      "max_tokens": VICTIM_TOKENS, "ignore_eos": true, "temperature": 0, "stream": true});
    let mut stream = post(base, "/v1/chat/completions", &body)
        .await
        .bytes_stream();
    let (mut buf, mut arrivals) = (String::new(), vec![]);
    while let Some(chunk) = stream.next().await {
        let now = Instant::now();
        buf += std::str::from_utf8(&chunk.unwrap()).unwrap();
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap();
            if v["choices"][0]["delta"]["content"].is_string() {
                arrivals.push(now);
            }
        }
    }
    assert!(
        arrivals.len() >= VICTIM_TOKENS / 2,
        "{} chunks",
        arrivals.len()
    );
    arrivals
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect()
}

/// Starts the neighbour and waits until it decodes; dropping the stream cancels it.
async fn start_neighbour(base: &str, body: &Value) -> impl futures::Stream {
    let before = generated_tokens(base).await;
    let stream = post(base, "/v1/chat/completions", body)
        .await
        .bytes_stream();
    let deadline = Instant::now() + Duration::from_secs(120);
    while generated_tokens(base).await < before + 2.0 * NEIGHBOUR_N as f64 {
        assert!(
            Instant::now() < deadline,
            "the neighbour never started decoding"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stream
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn hostile_stops_and_special_tokens_do_not_slow_other_streams() {
    let base = start();
    runtime().block_on(async {
        let special = token_id(&base, "<|im_start|>").await;
        let plain = token_id(&base, " the").await;
        let neighbour = |hostile: bool| {
            let mut b = json!({"model": "smol", "messages": [{"role": "user", "content": "Go on."}],
                               "max_tokens": 3000, "ignore_eos": true, "temperature": 0,
                               "n": NEIGHBOUR_N, "stream": true});
            if hostile {
                // Stop strings the output never reaches, each nearly all one letter (the most
                // prefixes to try), and only skipped special tokens: no text at all.
                let stops: Vec<String> = (0..STOPS)
                    .map(|i| format!("{}{i:02}", "z".repeat(STOP_BYTES - 2)))
                    .collect();
                b["stop"] = json!(stops);
                b["logit_bias"] = json!({special.to_string(): 100});
            } else {
                b["logit_bias"] = json!({plain.to_string(): 100});
            }
            b
        };
        let (harmless, hostile) = (neighbour(false), neighbour(true));
        victim_gaps(&base).await; // warm-up
        let (mut base_gaps, mut hostile_gaps) = (vec![], vec![]);
        for _ in 0..ROUNDS {
            for (body, gaps) in [(&harmless, &mut base_gaps), (&hostile, &mut hostile_gaps)] {
                let n = start_neighbour(&base, body).await;
                let before = generated_tokens(&base).await;
                gaps.extend(victim_gaps(&base).await);
                let during = generated_tokens(&base).await - before;
                drop(n);
                // The neighbour decoded alongside the victim the whole time.
                assert!(
                    during >= (VICTIM_TOKENS * (1 + NEIGHBOUR_N / 2)) as f64,
                    "{during} tokens while the victim ran"
                );
            }
        }
        let (b, h) = (median(base_gaps), median(hostile_gaps));
        eprintln!(
            "victim inter-token latency: {:.1} ms next to a harmless neighbour, {:.1} ms next to \
             the hostile one",
            b * 1e3,
            h * 1e3
        );
        assert!(
            h <= 2.0 * b,
            "{:.1} ms vs a baseline of {:.1} ms",
            h * 1e3,
            b * 1e3
        );
    });
}
