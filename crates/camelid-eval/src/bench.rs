//! `camelid bench`: load generation against any OpenAI-compatible server (camelid,
//! llama.cpp's llama-server, vLLM). Streams completions with a fixed prompt length and exactly
//! N output tokens (`ignore_eos`) from 1..C concurrent clients, and reports prefill and
//! decode throughput, time to first token and inter-token latency. A request that comes back
//! with fewer tokens than asked fails the run (a server that stops early would look faster).

use anyhow::{anyhow, Result};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub endpoint: String,
    pub model: String,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub concurrency: Vec<usize>,
    /// Requests per client at each concurrency level.
    pub requests_per_client: usize,
    pub api_key: Option<String>,
}

/// One streamed request, as the client saw it.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub ttft: f64,
    /// Gaps between consecutive streamed chunks after the first.
    pub gaps: Vec<f64>,
    pub total: f64,
    pub chunks: usize,
    /// Tokens the server generated: its streamed usage where it sends one, else the chunks
    /// with text.
    pub tokens: usize,
    /// From the first chunk with text to the last.
    pub decode_s: f64,
    /// The prompt's tokens by the server's usage, where it sends one.
    pub prompt_tokens: Option<usize>,
}

impl Trace {
    /// Seconds per output token after the first (vLLM's TPOT): from the token counts, not
    /// the chunks' gaps, which a server sending several tokens at once (speculative
    /// decoding's accepted drafts) splits into near-zero ones.
    pub fn tpot(&self) -> Option<f64> {
        (self.tokens > 1 && self.decode_s > 0.0).then(|| self.decode_s / (self.tokens - 1) as f64)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LevelResult {
    pub clients: usize,
    pub requests: usize,
    pub wall_s: f64,
    /// Generated tokens per second over the whole level (all clients).
    pub aggregate_tok_s: f64,
    /// Prompt tokens (the server's usage, else the words asked for) / TTFT, median over
    /// requests.
    pub prefill_tok_s_p50: f64,
    /// Per-stream decode rate: 1 / the median over requests of [`Trace::tpot`].
    pub decode_tok_s_per_stream: f64,
    /// Gaps between streamed chunks (what a client sees; not per token where a chunk
    /// carries several).
    pub itl_p50_ms: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub itl_p99_ms: f64,
}

pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let idx = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[idx.min(s.len() - 1)]
}

/// The words the prompts are made of: common enough to be one token each in LLaMA-family
/// tokenizers.
const WORDS: [&str; 15] = [
    "the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "to", "see", "what", "was",
    "new",
];

/// The first `n` words of the endless sentence the prompts are cut from.
fn sentence(n: usize) -> impl Iterator<Item = &'static str> {
    WORDS.iter().copied().cycle().take(n)
}

/// A prompt of about `n` tokens for LLaMA-family tokenizers (one common word per token).
pub fn make_prompt(n: usize) -> String {
    sentence(n).collect::<Vec<_>>().join(" ")
}

async fn one(http: &reqwest::Client, o: &BenchOptions, prompt: &str) -> Result<Trace> {
    let url = format!(
        "{}/v1/completions",
        o.endpoint.trim_end_matches('/').trim_end_matches("/v1")
    );
    let body = json!({"model": o.model, "prompt": prompt, "max_tokens": o.output_tokens, "temperature": 0,
                      "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
    let mut req = http.post(url).json(&body);
    if let Some(k) = &o.api_key {
        req = req.bearer_auth(k);
    }
    let t0 = Instant::now();
    let resp = req.send().await?;
    if !resp.status().is_success() {
        return Err(anyhow!(
            "HTTP {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        ));
    }
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut trace = Trace::default();
    let mut last: Option<Instant> = None;
    let mut usage_tokens: Option<usize> = None;
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(nl) = buf.find('\n') {
            let line: String = buf.drain(..=nl).collect();
            let Some(data) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                usage_tokens = Some(n as usize);
            }
            if let Some(n) = v["usage"]["prompt_tokens"].as_u64() {
                trace.prompt_tokens = Some(n as usize);
            }
            let has_text = v["choices"][0]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty());
            if !has_text {
                continue;
            }
            let now = Instant::now();
            match last {
                None => trace.ttft = (now - t0).as_secs_f64(),
                Some(prev) => trace.gaps.push((now - prev).as_secs_f64()),
            }
            trace.decode_s = (now - t0).as_secs_f64() - trace.ttft;
            last = Some(now);
            trace.chunks += 1;
        }
    }
    trace.total = t0.elapsed().as_secs_f64();
    if last.is_none() {
        // Its TTFT would read 0 (and the prefill rate infinite): the tokens it made decode to
        // no text (a tokenizer smaller than the model's vocabulary, say).
        return Err(anyhow!(
            "a request streamed no text ({} tokens by its usage): no time to its first token \
             can be taken, nor gaps between tokens",
            usage_tokens.map_or("unknown".into(), |n| n.to_string())
        ));
    }
    trace.tokens = usage_tokens.unwrap_or(trace.chunks);
    if trace.tokens < o.output_tokens {
        return Err(anyhow!(
            "a request returned {} of the {} tokens asked for ({}): the server stopped early, \
             its timings would not be comparable",
            trace.tokens,
            o.output_tokens,
            if usage_tokens.is_some() {
                "its usage"
            } else {
                "streamed chunks with text"
            }
        ));
    }
    Ok(trace)
}

/// Words that open a [`unique_prompt`]: its salt in base 15, a word a digit (15⁶ ≈ 11 M
/// salts, always six tokens).
const SALT_WORDS: usize = 6;

/// A prompt of about `n` tokens (`n` words) that starts differently for every `salt` (below
/// 15⁶; a prompt under six words holds only the salt's first digits), so no server's prefix
/// cache can skip its prefill (every request pays for its prompt, as in a real load).
pub fn unique_prompt(n: usize, salt: usize) -> String {
    let mut words: Vec<&str> = (0..SALT_WORDS.min(n))
        .map(|k| WORDS[salt / WORDS.len().pow(k as u32) % WORDS.len()])
        .collect();
    words.extend(sentence(n.saturating_sub(SALT_WORDS)));
    words.join(" ")
}

/// Where a run's salts start: random, so that runs against a server that stays up (the
/// benchmark scripts alternate two live servers) do not repeat an earlier run's prompts,
/// which its prefix cache would answer without a prefill.
fn first_salt() -> usize {
    use rand::Rng;
    rand::rng().random_range(0..WORDS.len().pow(SALT_WORDS as u32))
}

/// The first model the server lists at `/v1/models`: what to load-test when none is named
/// (as vLLM's benchmark does; camelid names a model by its folder or file, so no fixed name
/// fits every server).
pub async fn served_model(endpoint: &str, api_key: Option<&str>) -> Result<String> {
    let url = format!(
        "{}/v1/models",
        endpoint.trim_end_matches('/').trim_end_matches("/v1")
    );
    let mut req = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(30));
    if let Some(k) = api_key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| anyhow!("{url}: not a model list ({status}): {e}"))?;
    body["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{url} lists no model ({status}): {body}; name one with --model"))
}

pub async fn run(o: &BenchOptions) -> Result<Vec<LevelResult>> {
    // A fresh connection per request: some servers (llama-server) close kept-alive
    // connections between requests, which a pooled client reports as a failed request.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1800))
        .pool_max_idle_per_host(0)
        .build()?;
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(first_salt()));
    let next_prompt = move || {
        let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        unique_prompt(o.prompt_tokens, i)
    };
    // Warm-up: one request, not measured.
    one(&http, o, &next_prompt()).await?;
    let mut out = vec![];
    for &c in &o.concurrency {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..c)
            .map(|_| {
                let prompts: Vec<String> =
                    (0..o.requests_per_client).map(|_| next_prompt()).collect();
                let (http, o) = (http.clone(), o.clone());
                tokio::spawn(async move {
                    let mut traces = vec![];
                    for prompt in prompts {
                        traces.push(one(&http, &o, &prompt).await?);
                    }
                    Ok::<_, anyhow::Error>(traces)
                })
            })
            .collect();
        let mut traces = vec![];
        for t in tasks {
            traces.extend(t.await??);
        }
        let wall = t0.elapsed().as_secs_f64();
        let ttfts: Vec<f64> = traces.iter().map(|t| t.ttft).collect();
        let gaps: Vec<f64> = traces.iter().flat_map(|t| t.gaps.iter().copied()).collect();
        let generated = traces.iter().map(|t| t.tokens).sum::<usize>() as f64;
        let tpots: Vec<f64> = traces.iter().filter_map(Trace::tpot).collect();
        let prefill: Vec<f64> = traces
            .iter()
            .map(|t| t.prompt_tokens.unwrap_or(o.prompt_tokens) as f64 / t.ttft)
            .collect();
        out.push(LevelResult {
            clients: c,
            requests: traces.len(),
            wall_s: wall,
            aggregate_tok_s: generated / wall,
            prefill_tok_s_p50: percentile(&prefill, 50.0),
            decode_tok_s_per_stream: 1.0 / percentile(&tpots, 50.0),
            ttft_p50_ms: percentile(&ttfts, 50.0) * 1e3,
            ttft_p99_ms: percentile(&ttfts, 99.0) * 1e3,
            itl_p50_ms: percentile(&gaps, 50.0) * 1e3,
            itl_p99_ms: percentile(&gaps, 99.0) * 1e3,
        });
    }
    Ok(out)
}

/// MT-bench's second turn: a long history, then the same history plus a new question.
/// Returns the TTFT (seconds) of both; with a prefix cache the second skips the history.
pub async fn second_turn(o: &BenchOptions, history_tokens: usize) -> Result<(f64, f64)> {
    // A fresh connection per request: llama-server closes idle keep-alive connections, and a
    // pooled one it closed fails the next request.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1800))
        .pool_max_idle_per_host(0)
        .build()?;
    let o = BenchOptions {
        output_tokens: 4,
        ..o.clone()
    };
    // A history unlike the throughput prompts, so nothing of it is cached yet.
    let history = make_prompt(history_tokens).replace("the ", "one ");
    let first = one(&http, &o, &history).await?;
    let second = one(&http, &o, &format!("{history} and what happened next ?")).await?;
    Ok((first.ttft, second.ttft))
}

pub fn render(name: &str, rows: &[LevelResult]) -> String {
    let mut s = format!(
        "{name}\n{:>7} {:>8} {:>11} {:>12} {:>12} {:>10} {:>10} {:>9} {:>9}\n",
        "clients",
        "requests",
        "agg tok/s",
        "prefill t/s",
        "decode t/s",
        "ttft p50",
        "ttft p99",
        "itl p50",
        "itl p99"
    );
    for r in rows {
        s += &format!(
            "{:>7} {:>8} {:>11.1} {:>12.1} {:>12.1} {:>8.0}ms {:>8.0}ms {:>7.1}ms {:>7.1}ms\n",
            r.clients,
            r.requests,
            r.aggregate_tok_s,
            r.prefill_tok_s_p50,
            r.decode_tok_s_per_stream,
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.itl_p50_ms,
            r.itl_p99_ms
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
        assert_eq!(make_prompt(4), "the cat sat on");
    }

    /// Every salt opens its prompt with its own six words (so a prefix cache shares nothing
    /// between two requests), and the prompt keeps its length in words.
    #[test]
    fn unique_prompts_differ_from_their_first_words() {
        let heads: std::collections::HashSet<String> = (0..2000)
            .chain([15usize.pow(6) - 1, 3_000_000])
            .map(|salt| {
                let p = unique_prompt(64, salt);
                assert_eq!(p.split(' ').count(), 64, "{p}");
                p.split(' ').take(SALT_WORDS).collect::<Vec<_>>().join(" ")
            })
            .collect();
        assert_eq!(heads.len(), 2002);
        assert_eq!(unique_prompt(3, 1), "cat the the");
        assert_eq!(unique_prompt(8, 0), "the the the the the the the cat");
        assert!(first_salt() < 15usize.pow(6));
    }

    /// A stand-in OpenAI server for `/v1/completions` streams: each request gets
    /// `max_tokens - short` one-token text chunks, with a usage chunk (the tokens it sent)
    /// when `usage` is set and the request asked for one. Returns its base URL.
    async fn fake_server(short: usize, usage: bool) -> String {
        token_server(short, usage, false, None).await
    }

    /// [`fake_server`], its token chunks' text empty where `silent` (tokens that decode to
    /// nothing); with `pace` `(n, ms)`, the chunks sent `n` at once every `ms` milliseconds.
    async fn token_server(
        short: usize,
        usage: bool,
        silent: bool,
        pace: Option<(usize, u64)>,
    ) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    let body = loop {
                        let n = sock.read(&mut buf).await.unwrap();
                        assert!(n > 0, "request cut short");
                        req.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&req).to_string();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let len: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            break serde_json::from_slice::<Value>(&req[end + 4..end + 4 + len])
                                .unwrap();
                        }
                    };
                    let asked = body["max_tokens"].as_u64().unwrap() as usize;
                    let sent = asked - short;
                    let mut out = String::from(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
                    );
                    for i in 0..sent {
                        let text = if silent {
                            String::new()
                        } else {
                            format!(" t{i}")
                        };
                        out += &format!(
                            "data: {}\n\n",
                            json!({"choices": [{"index": 0, "text": text, "finish_reason": null}]})
                        );
                        if let Some((n, ms)) = pace.filter(|(n, _)| (i + 1) % n == 0) {
                            let _ = n;
                            sock.write_all(out.as_bytes()).await.unwrap();
                            out.clear();
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                    }
                    let reason = if short > 0 { "stop" } else { "length" };
                    out += &format!(
                        "data: {}\n\n",
                        json!({"choices": [{"index": 0, "text": "", "finish_reason": reason}]})
                    );
                    if usage && body["stream_options"]["include_usage"] == true {
                        out += &format!(
                            "data: {}\n\n",
                            json!({"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": sent}})
                        );
                    }
                    out += "data: [DONE]\n\n";
                    sock.write_all(out.as_bytes()).await.unwrap();
                    sock.shutdown().await.unwrap();
                });
            }
        });
        base
    }

    /// A server that answers every request with `body` (status 200). Returns its base URL.
    async fn fixed_server(body: Value) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let body = body.to_string();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !String::from_utf8_lossy(&req).contains("\r\n\r\n") {
                        let n = sock.read(&mut buf).await.unwrap();
                        req.extend_from_slice(&buf[..n]);
                    }
                    assert!(req.starts_with(b"GET /v1/models "), "{req:?}");
                    let out = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    sock.write_all(out.as_bytes()).await.unwrap();
                });
            }
        });
        base
    }

    /// With no model named, the bench runs the server's first listed model; a server that
    /// lists none is an error that says to name one.
    #[tokio::test]
    async fn the_first_served_model_is_benched_when_none_is_named() {
        let two = json!({"object": "list", "data": [{"id": "llama-1b"}, {"id": "smol"}]});
        let base = fixed_server(two).await;
        assert_eq!(served_model(&base, None).await.unwrap(), "llama-1b");
        assert_eq!(
            served_model(&format!("{base}/v1/"), None).await.unwrap(),
            "llama-1b"
        );
        let none = fixed_server(json!({"object": "list", "data": []})).await;
        let err = served_model(&none, None).await.unwrap_err().to_string();
        assert!(err.contains("--model"), "{err}");
    }

    fn options(endpoint: String) -> BenchOptions {
        BenchOptions {
            endpoint,
            model: "fake".into(),
            prompt_tokens: 8,
            output_tokens: 16,
            concurrency: vec![1, 2],
            requests_per_client: 2,
            api_key: None,
        }
    }

    /// A server that sends every token asked for is measured; one that stops early fails
    /// the run, whether it reports its usage or only streams fewer chunks.
    #[tokio::test]
    async fn a_server_that_stops_early_fails_the_run() {
        for usage in [true, false] {
            let full = run(&options(fake_server(0, usage).await)).await.unwrap();
            assert_eq!(full.len(), 2);
            for level in &full {
                assert_eq!(level.requests, level.clients * 2);
                let generated = level.aggregate_tok_s * level.wall_s;
                assert!(
                    (generated - (level.requests * 16) as f64).abs() < 1e-6,
                    "{level:?}"
                );
            }
            let err = run(&options(fake_server(3, usage).await))
                .await
                .expect_err("a server sending 13 of 16 tokens must fail the run")
                .to_string();
            assert!(err.contains("13 of the 16 tokens"), "{err}");
        }
    }

    /// A server whose every token streams no text (its usage counting them all) fails the
    /// run: its first token's time read 0 and its prefill rate infinite.
    #[tokio::test]
    async fn a_stream_without_text_fails_the_run() {
        let err = run(&options(token_server(0, true, true, None).await))
            .await
            .expect_err("no first token to time")
            .to_string();
        assert!(err.contains("streamed no text (16 tokens"), "{err}");
    }

    /// Tokens that arrive several at once (a speculative step's accepted drafts: 4 events
    /// every 20 ms) are timed by their count: 4 tokens per 20 ms is 200 a second, where the
    /// median gap between chunks (near zero) read thousands. The prefill rate takes the
    /// prompt's tokens from the usage.
    #[tokio::test]
    async fn tokens_that_arrive_together_are_timed_by_their_count() {
        let mut o = options(token_server(0, true, false, Some((4, 20))).await);
        o.output_tokens = 32;
        o.concurrency = vec![1];
        o.prompt_tokens = 1000;
        o.requests_per_client = 1;
        let level = &run(&o).await.unwrap()[0];
        let rate = level.decode_tok_s_per_stream;
        // At most 31 tokens in 7 pauses of 20 ms (221 a second); a loaded machine sleeps longer.
        assert!((50.0..230.0).contains(&rate), "{level:?}");
        // 8 prompt tokens by the usage, not the 1000 words asked for.
        let ttft = level.ttft_p50_ms / 1e3;
        assert!(
            (level.prefill_tok_s_p50 * ttft - 8.0).abs() < 1.0,
            "{level:?}"
        );
    }
}
