//! The `camelid` binary itself: `serve` with the official openai Python client, SIGTERM
//! draining, and CLI errors.

mod common;
/// The random LoRA adapters of camelid-model's tests (and the random models they need).
#[allow(dead_code)]
#[path = "../../camelid-model/tests/common"]
mod model_fixtures {
    pub mod lora;
    pub mod random_model;
}
use common::http::{stream, token_chunks};
use common::{exits_within, run_test_script, serve, sigterm_pid};
use std::process::Command;
use std::time::{Duration, Instant};

/// Serves the default model as `smol` with key `sk-test` (and `--chat-template` from
/// tests/fixtures/chat-templates/ when `template` is given), then runs the client script
/// `tests/{script}` with the base URL, `smol` and `extra` arguments.
fn client_script_against_serve(script: &str, template: Option<&str>, extra: &[&str]) {
    client_script_against(script, template, &[], extra)
}

/// [`client_script_against_serve`] with more `serve` flags.
fn client_script_against(script: &str, template: Option<&str>, flags: &[&str], extra: &[&str]) {
    let python = std::env::var("CAMELID_TEST_PYTHON").expect(
        "CAMELID_TEST_PYTHON is not set: run the suite with `bash tests/run.sh` (it makes the \
         venv with the openai and ollama clients)",
    );
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests");
    let template = template.map(|t| format!("{root}/fixtures/chat-templates/{t}"));
    let mut args = vec![
        "--api-key",
        "sk-test",
        "--model",
        "smol=smollm2-135m-instruct",
    ];
    if let Some(t) = &template {
        args.extend(["--chat-template", t.as_str()]);
    }
    args.extend(flags);
    let s = serve(&args);
    let path = format!("{root}/{script}");
    run_test_script(
        Command::new(python)
            .args([path.as_str(), &s.base, "smol"])
            .args(extra),
        script,
    );
}

#[test]
fn openai_python_client_works_against_serve() {
    client_script_against_serve("openai/test_client.py", None, &[]);
}

/// Tool calls through the openai client: the default model served with Qwen2.5's tools
/// template; `required` and named calls valid against their schemas over several seeds,
/// streamed calls assembled by the client (`tests/openai/test_tools.py`).
#[test]
fn openai_python_client_calls_tools() {
    client_script_against_serve("openai/test_tools.py", Some("qwen2.5-tools.jinja"), &[]);
}

/// Ollama's native API through the official `ollama` Python client: listings, chat and
/// generate whole and streamed, options, `format`, log-probs, tool calls and errors
/// (`tests/ollama/test_client.py`), on a template whose calls a JSON schema can force.
#[test]
fn ollama_python_client_works_against_serve() {
    client_script_against_serve(
        "ollama/test_client.py",
        Some("llama3-json-tools.jinja"),
        &["sk-test"],
    );
}

/// OpenAI's Responses API through the openai client (`client.responses`): plain, streamed
/// through the SDK's helper, `text.format`, forced function calls and their outputs, errors
/// (`tests/openai/test_responses.py`).
#[test]
fn openai_python_client_uses_responses() {
    client_script_against_serve("openai/test_responses.py", Some("qwen2.5-tools.jinja"), &[]);
}

/// Embeddings through the openai and ollama clients (`tests/openai/test_embeddings.py`): unit
/// vectors of the model's width, base64 and float alike, batching-invariant, token ids as
/// their text, errors; and, independently, the last token's raw vector through the file's LM
/// head (numpy, the `gguf` package) gives the next-token distribution the server samples.
#[test]
fn embeddings_through_the_openai_and_ollama_clients() {
    let (_, gguf, _) = camelid_model::load::resolve(None, None).expect("the default model");
    let gguf = gguf.to_str().expect("a UTF-8 path");
    // A short context: the script's over-long input is cheap to truncate and embed.
    let flags = ["--max-model-len", "1024"];
    client_script_against(
        "openai/test_embeddings.py",
        None,
        &flags,
        &["sk-test", gguf],
    );
}

/// Structured output through the openai client: `beta.chat.completions.parse` with a
/// pydantic model, strict schemas validated by `jsonschema`, regex, choice, a broken schema.
#[test]
fn openai_python_client_gets_structured_output() {
    client_script_against_serve("openai/test_structured.py", None, &[]);
}

/// SIGTERM while a long stream is in flight: the listener closes at once (a new connection
/// is refused while the stream still runs), the stream runs to its full length, then the
/// process exits cleanly.
#[test]
fn sigterm_lets_streams_finish_then_exits() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    const N: usize = 256;
    let mut s = serve(&[]);
    let base = s.base.clone();
    // logprobs: every token is a chunk of its own (even one with no visible text), so the
    // chunks count the tokens.
    let body = format!(
        r#"{{"model":"default","messages":[{{"role":"user","content":"Hi"}}],"max_tokens":{N},"ignore_eos":true,"logprobs":true,"stream":true,"stream_options":{{"include_usage":true}}}}"#
    );
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let signalled = Arc::new(AtomicBool::new(false));
    let after_signal = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let pid = s.child.id();
    let reader = {
        let (signalled, after_signal, done) =
            (signalled.clone(), after_signal.clone(), done.clone());
        std::thread::spawn(move || {
            let mut first = true;
            stream(&base, "/v1/chat/completions", &body, |d| {
                if signalled.load(Ordering::SeqCst) {
                    after_signal.fetch_add(1, Ordering::SeqCst);
                }
                if std::mem::take(&mut first) {
                    // The reader signals, not the test's thread: a loaded machine that is
                    // slow to wake that thread must not let the stream run ahead uncounted.
                    signalled.store(true, Ordering::SeqCst);
                    sigterm_pid(pid);
                    let _ = first_tx.send(());
                }
                if d == "[DONE]" {
                    done.store(true, Ordering::SeqCst);
                }
                true
            })
        })
    };
    first_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the stream's first chunk");
    // While the stream drains, the listener is gone: new connections are refused.
    let addr = s.base.trim_start_matches("http://").to_string();
    let t = Instant::now();
    loop {
        match std::net::TcpStream::connect(&addr) {
            // A connection that raced the listener's close is reset: try again.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                break;
            }
            Ok(c) => drop(c),
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "still accepting connections 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !done.load(Ordering::SeqCst),
        "the stream had ended before the refused connection: nothing was draining"
    );
    let (status, events) = reader
        .join()
        .unwrap()
        .expect("the in-flight stream completes");
    assert_eq!(status, 200, "{events:?}");
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "stream was cut: {events:?}"
    );
    assert!(
        after_signal.load(Ordering::SeqCst) > N / 2,
        "most of the stream came after SIGTERM ({} chunks)",
        after_signal.load(Ordering::SeqCst)
    );
    let (chunks, tokens) = token_chunks(&events);
    assert_eq!(tokens, N, "token chunks");
    let finish: Vec<&serde_json::Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&serde_json::json!("length")]);
    assert_eq!(
        chunks.last().unwrap()["usage"]["completion_tokens"],
        N,
        "{:?}",
        chunks.last()
    );
    let st = exits_within(&mut s.child, Duration::from_secs(30), "after SIGTERM");
    assert!(st.success(), "exit status {st}");
}

/// `camelid serve --port 0 ARGS` stops at start with an error that contains `says`.
fn serve_refuses(args: &[&str], says: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_camelid"))
        .args(["serve", "--port", "0"])
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(says),
        "{args:?}: {err}"
    );
}

/// GETs `path` naming `host` in `Host`: (status, body).
fn get_as(base: &str, path: &str, host: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// GETs `path`; its JSON body.
fn get_json(base: &str, path: &str) -> serde_json::Value {
    let (_, body) = get_as(base, path, base.trim_start_matches("http://"));
    serde_json::from_str(&body).unwrap()
}

/// A non-streamed POST over a raw connection: (status, JSON body).
fn post_json(base: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|_| body.into()),
    )
}

/// DNS rebinding: a page of `evil.example` that points its name at 127.0.0.1 would be its
/// own site to a server on the visitor's machine, free to read every answer. A server on a
/// loopback address (the default) answers only this machine's names; `--allowed-hosts`
/// adds a proxy's.
#[test]
fn loopback_servers_refuse_foreign_host_names() {
    let ask = |base: &str, host: &str| get_as(base, "/v1/models", host);
    for flags in [&[][..], &["--allowed-hosts", "camelid"][..]] {
        let mut args = vec!["--model", "smol=smollm2-135m-instruct"];
        args.extend(flags);
        let s = serve(&args);
        let port = s.base.rsplit(':').next().unwrap();
        let (st, body) = ask(&s.base, &format!("evil.example:{port}"));
        assert_eq!(st, 403, "{body}");
        assert!(body.contains("--allowed-hosts"), "{body}");
        for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
            assert_eq!(ask(&s.base, &host).0, 200, "{host}");
        }
        let proxied = ask(&s.base, "camelid").0;
        assert_eq!(proxied, if flags.is_empty() { 403 } else { 200 });
    }
}

/// `--alias NAME=ALIAS`: the model answers to its alias as to its name; an alias given for
/// another name is not the model's, and an unknown name is a 404.
#[test]
fn alias_names_the_model() {
    let s = serve(&[
        "--model",
        "smol=smollm2-135m-instruct",
        "--alias",
        "smol=chatty",
        "--alias",
        "other=elsewhere",
    ]);
    let ask = |model: &str| {
        post_json(
            &s.base,
            "/v1/chat/completions",
            &serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Hi"}],
                                "max_tokens": 4, "temperature": 0})
            .to_string(),
        )
    };
    let (st, by_name) = ask("smol");
    assert_eq!(st, 200, "{by_name}");
    let (st, by_alias) = ask("chatty");
    assert_eq!(st, 200, "{by_alias}");
    assert_eq!(
        by_alias["choices"][0]["message"]["content"], by_name["choices"][0]["message"]["content"],
        "the alias is the same model"
    );
    for unknown in ["elsewhere", "nope"] {
        let (st, b) = ask(unknown);
        assert_eq!(st, 404, "{unknown}: {b}");
        assert_eq!(b["error"]["code"], "model_not_found", "{b}");
    }
}

/// Engine sizes out of range stop `serve` before a model loads, naming the flag (a zero was
/// quietly raised; a block of 100 000 positions took 2.5 GB past an 8 MiB --kv-cache-mb).
#[test]
fn serve_refuses_engine_sizes_out_of_range() {
    for (flag, value) in [
        ("--block-size", "0"),
        ("--block-size", "100000"),
        ("--kv-cache-mb", "0"),
        ("--max-num-seqs", "0"),
        ("--max-num-batched-tokens", "0"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_camelid"))
            .args(["serve", "--model", "/no/such/model.gguf", "--port", "0"])
            .arg(format!("{flag}={value}"))
            .output()
            .unwrap();
        assert_refused_flag(&out, flag, value);
    }
}

/// `out` failed on `flag` before anything looked for the (missing) model.
fn assert_refused_flag(out: &std::process::Output, flag: &str, value: &str) {
    assert!(!out.status.success(), "{flag} {value}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(flag) && !err.contains("/no/such/model.gguf"),
        "{flag} {value}: {err}"
    );
}

/// A KV pool that holds less than the model's context serves the context it holds: `/v1/models`
/// says so, and a request naming no `max_tokens` (the rest of the context) is answered, not
/// refused for needing more KV memory than the cache has.
#[test]
fn a_kv_pool_smaller_than_the_context_serves_what_it_holds() {
    let s = serve(&["--kv-cache-mb", "8"]);
    let models = get_json(&s.base, "/v1/models");
    let len = models["data"][0]["max_model_len"].as_u64().unwrap();
    assert!(len > 0 && len < 8192, "{models}");
    let (st, b) = post_json(
        &s.base,
        "/v1/chat/completions",
        &serde_json::json!({"model": "default", "temperature": 0,
            "messages": [{"role": "user", "content": "Hi"}]})
        .to_string(),
    );
    assert_eq!(st, 200, "{b}");
    let u = &b["usage"];
    assert!(
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap() <= len,
        "{b}"
    );
}

/// `--speculative-config` (vLLM's JSON, the `ngram` method): the same greedy tokens and
/// log-probabilities as without, streamed and whole, with drafts accepted on text that
/// repeats itself (`/metrics`); another method or a bad count stops the start, naming it.
#[test]
fn speculative_config_gives_the_same_answers() {
    let spec = r#"{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3,
                   "prompt_lookup_min": 1}"#;
    let plain = serve(&["--model", "smol=smollm2-135m-instruct"]);
    let drafting = serve(&[
        "--model",
        "smol=smollm2-135m-instruct",
        "--speculative-config",
        spec,
    ]);
    let body = serde_json::json!({"model": "smol", "max_tokens": 40, "temperature": 0,
        "logprobs": 2, "prompt": "Monday, Tuesday, Wednesday, Monday, Tuesday, Wednesday, Monday,"})
    .to_string();
    let (st, want) = post_json(&plain.base, "/v1/completions", &body);
    assert_eq!(st, 200, "{want}");
    let (st, got) = post_json(&drafting.base, "/v1/completions", &body);
    assert_eq!(st, 200, "{got}");
    assert_eq!(got["choices"], want["choices"]);
    assert_eq!(got["usage"]["completion_tokens"], 40);
    let chat = serde_json::json!({"model": "smol", "max_tokens": 40, "temperature": 0,
        "stream": true, "messages": [{"role": "user",
        "content": "Repeat exactly: one fish, two fish, red fish, blue fish, one fish, two fish."}]})
    .to_string();
    let text = |base: &str| {
        let (st, events) = stream(base, "/v1/chat/completions", &chat, |_| true).unwrap();
        assert_eq!(st, 200, "{events:?}");
        let (chunks, _) = token_chunks(&events);
        chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect::<String>()
    };
    assert_eq!(text(&drafting.base), text(&plain.base));
    let m = common::http::metrics(&drafting.base);
    let accepted = common::http::metric(&m, "camelid_spec_decode_accepted_tokens_total");
    let drafted = common::http::metric(&m, "camelid_spec_decode_draft_tokens_total");
    assert!(accepted > 0.0 && accepted <= drafted, "{m}");
    let m = common::http::metrics(&plain.base);
    assert_eq!(
        common::http::metric(&m, "camelid_spec_decode_draft_tokens_total"),
        0.0
    );
    for (bad, says) in [
        (
            r#"{"method": "eagle", "num_speculative_tokens": 4}"#,
            "eagle",
        ),
        (
            r#"{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 5, "prompt_lookup_max": 2}"#,
            "prompt_lookup_min",
        ),
    ] {
        serve_refuses(&["--speculative-config", bad], says);
    }
}

/// `--lora-modules` (vLLM's flag): an adapter of the default model served beside it, listed
/// with the base as its `parent`, answering under its name with its own text (the base's
/// unchanged beside it); an adapter that cannot load, or names no served base, stops the
/// start, naming it.
#[test]
fn lora_modules_serve_adapters_beside_their_base() {
    let lm = camelid_model::load(None, &Default::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = model_fixtures::lora::write_peft(
        &tmp.path().join("peft"),
        lm.model.config(),
        8,
        16.0,
        model_fixtures::lora::ALL_TARGETS,
        0.02,
        5,
    );
    let by_name = format!("tuned={}", a.dir.display());
    let by_json = serde_json::json!({"name": "tuned-too", "path": a.dir,
                                     "base_model_name": "smol"})
    .to_string();
    let plain = serve(&["--model", "smol=smollm2-135m-instruct"]);
    let s = serve(&[
        "--model",
        "smol=smollm2-135m-instruct",
        "--lora-modules",
        &by_name,
        &by_json,
    ]);
    let (st, list) = common::http::request(&s.base, "GET", "/v1/models", &[], "").unwrap();
    assert_eq!(st, 200, "{list}");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in ["smol", "tuned", "tuned-too"] {
        assert!(ids.contains(&id), "{id} not in {ids:?}");
    }
    assert_eq!(
        ids[0], "smol",
        "the base is listed first (clients take data[0])"
    );
    let tuned = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "tuned")
        .unwrap();
    assert_eq!(tuned["parent"], "smol", "{tuned}");
    assert_eq!(tuned["root"], a.dir.display().to_string(), "{tuned}");
    let ask = |base: &str, model: &str| {
        let body = serde_json::json!({"model": model, "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": "Name three colours of the rainbow."}]});
        let (st, b) = post_json(base, "/v1/chat/completions", &body.to_string());
        assert_eq!(st, 200, "{model}: {b}");
        assert_eq!(b["model"], model, "{b}");
        b["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let base_text = ask(&plain.base, "smol");
    assert_eq!(
        ask(&s.base, "smol"),
        base_text,
        "the base beside its adapters"
    );
    let tuned_text = ask(&s.base, "tuned");
    assert_ne!(tuned_text, base_text, "the adapter changed nothing");
    assert_eq!(
        ask(&s.base, "tuned-too"),
        tuned_text,
        "the same adapter twice"
    );
    // Where `model` may be left out (`/tokenize`), the one base model is meant, its adapters
    // aside.
    let (st, b) = post_json(&s.base, "/tokenize", r#"{"prompt": "hello"}"#);
    assert_eq!(st, 200, "{b}");
    assert!(b["tokens"].as_array().is_some_and(|t| !t.is_empty()), "{b}");
    // Two adapters of one name, even for different bases, stop the start before any load.
    let twice = |base: &str| {
        serde_json::json!({"name": "x", "path": a.dir, "base_model_name": base}).to_string()
    };
    serve_refuses(
        &["--lora-modules", &twice("smol"), &twice("typo")],
        "two adapters are named",
    );
    // An adapter's name may not take a served model's.
    let clash = format!("smollm2-135m-instruct={}", a.dir.display());
    serve_refuses(&["--lora-modules", &clash], "two served models");
}

/// `--allow-runtime-lora`: vLLM's `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`
/// add and remove adapters on a running server; without the flag they are 404.
#[test]
fn runtime_lora_adapters_load_replace_and_unload() {
    let lm = camelid_model::load(None, &Default::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let write = |dir: &str, seed| {
        model_fixtures::lora::write_peft(
            &tmp.path().join(dir),
            lm.model.config(),
            8,
            16.0,
            model_fixtures::lora::ALL_TARGETS,
            0.02,
            seed,
        )
    };
    let (a, b) = (write("a", 5), write("b", 6));
    let load = |base: &str, body: serde_json::Value| {
        post_json(base, "/v1/load_lora_adapter", &body.to_string())
    };
    let plain = serve(&["--model", "smol=smollm2-135m-instruct"]);
    let (st, e) = load(
        &plain.base,
        serde_json::json!({"lora_name": "tuned", "lora_path": a.dir}),
    );
    assert_eq!(st, 404, "{e}");
    assert!(e.to_string().contains("--allow-runtime-lora"), "{e}");
    let s = serve(&[
        "--model",
        "smol=smollm2-135m-instruct",
        "--allow-runtime-lora",
    ]);
    let ask = |model: &str| {
        let body = serde_json::json!({"model": model, "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": "Name three colours of the rainbow."}]});
        let (st, b) = post_json(&s.base, "/v1/chat/completions", &body.to_string());
        (st, b["choices"][0]["message"]["content"].clone(), b)
    };
    let ids = || {
        let (st, list) = common::http::request(&s.base, "GET", "/v1/models", &[], "").unwrap();
        assert_eq!(st, 200, "{list}");
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        list["data"].as_array().unwrap().clone()
    };
    let (_, base_text, _) = ask("smol");
    let (st, ok) = load(
        &s.base,
        serde_json::json!({"lora_name": "tuned", "lora_path": a.dir}),
    );
    assert_eq!(st, 200, "{ok}");
    assert_eq!(ok, "Success: LoRA adapter 'tuned' added successfully.");
    let listed = ids();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[1]["id"], "tuned");
    assert_eq!(listed[1]["parent"], "smol");
    assert_eq!(listed[1]["root"], a.dir.display().to_string());
    let (st, tuned_a, body) = ask("tuned");
    assert_eq!(st, 200, "{body}");
    assert_ne!(tuned_a, base_text, "the adapter changed nothing");
    assert_eq!(ask("smol").1, base_text, "the base beside its adapter");
    // Refused: a name taken (by the adapter, by the base), a path that holds no adapter,
    // and a body without the fields.
    for (body, want) in [
        (
            serde_json::json!({"lora_name": "tuned", "lora_path": b.dir}),
            "has already been loaded",
        ),
        (
            serde_json::json!({"lora_name": "smol", "lora_path": b.dir, "load_inplace": true}),
            "has already been loaded",
        ),
        (
            serde_json::json!({"lora_name": "x", "lora_path": tmp.path().join("none")}),
            "none",
        ),
        (serde_json::json!({"lora_name": "x"}), "must be provided"),
    ] {
        let (st, e) = load(&s.base, body.clone());
        assert_eq!(st, 400, "{body}: {e}");
        assert!(
            e["error"]["message"].to_string().contains(want),
            "{body}: {e}"
        );
    }
    // Replaced in place by another adapter: its answers are the new adapter's, the same as
    // it gives under a name of its own (the old adapter's cached prompt is not reused).
    let (st, ok) = load(
        &s.base,
        serde_json::json!({"lora_name": "tuned", "lora_path": b.dir, "load_inplace": true}),
    );
    assert_eq!(st, 200, "{ok}");
    let tuned_b = ask("tuned").1;
    assert_ne!(tuned_b, tuned_a, "still the first adapter");
    let (st, ok) = load(
        &s.base,
        serde_json::json!({"lora_name": "b", "lora_path": b.dir, "base_model_name": "smol"}),
    );
    assert_eq!(st, 200, "{ok}");
    assert_eq!(ask("b").1, tuned_b);
    // Ollama's listing names an adapter's base as its parent (and lists each as NAME:latest).
    let (st, tags) = common::http::request(&s.base, "GET", "/api/tags", &[], "").unwrap();
    assert_eq!(st, 200, "{tags}");
    let tags: serde_json::Value = serde_json::from_str(&tags).unwrap();
    let parent = |name: &str| {
        tags["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == format!("{name}:latest"))
            .map(|m| m["details"]["parent_model"].clone())
    };
    assert_eq!(parent("b"), Some("smol".into()), "{tags}");
    assert_eq!(parent("smol"), Some("".into()), "{tags}");
    // Unloaded: gone from the listing and the requests, the base unchanged.
    let unload = |name: &str| {
        post_json(
            &s.base,
            "/v1/unload_lora_adapter",
            &serde_json::json!({ "lora_name": name }).to_string(),
        )
    };
    let (st, ok) = unload("tuned");
    assert_eq!(st, 200, "{ok}");
    assert_eq!(ok, "Success: LoRA adapter 'tuned' removed successfully.");
    let (st, _, e) = ask("tuned");
    assert_eq!(st, 404, "{e}");
    let names: Vec<_> = ids().iter().map(|m| m["id"].clone()).collect();
    assert_eq!(names, ["smol", "b"]);
    for name in ["tuned", "smol"] {
        let (st, e) = unload(name);
        assert_eq!(st, 404, "{name}: {e}");
        assert!(e.to_string().contains("cannot be found"), "{e}");
    }
    assert_eq!(ask("smol").1, base_text);
    // Open to the network without a key: refused at start.
    serve_refuses(&["--host", "0.0.0.0", "--allow-runtime-lora"], "--api-key");
}

/// `camelid generate` on a model that does not exist, with `extra` flags and `CAMELID_DEVICE`
/// set to `device` (else unset, whatever the runner's environment says).
fn generate_missing_model(extra: &[String], device: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_camelid"));
    cmd.args([
        "generate",
        "--model",
        "/no/such/model.gguf",
        "--prompt",
        "x",
    ])
    .args(extra)
    .env_remove("CAMELID_DEVICE");
    if let Some(d) = device {
        cmd.env("CAMELID_DEVICE", d);
    }
    cmd.output().unwrap()
}

#[test]
fn cli_errors_are_one_line_and_non_zero() {
    let out = generate_missing_model(&[], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: ") && last.contains("/no/such/model.gguf"),
        "{err}"
    );
    // A CUDA device on a build without CUDA says how to build one, from the flag or from
    // `CAMELID_DEVICE` (the deployments set it).
    if !cfg!(feature = "cuda") {
        let by_flag = generate_missing_model(&["--device".into(), "cuda:1".into()], None);
        let by_env = generate_missing_model(&[], Some("cuda"));
        for out in [by_flag, by_env] {
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
    let help = Command::new(env!("CARGO_BIN_EXE_camelid"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--model",
        "--template",
        "--host",
        "--port",
        "--api-key",
        "--max-model-len",
        "--max-concurrent",
        "--dtype",
        "--device",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}");
    }
    // Every flag says what it is.
    let blank: Vec<&str> = help
        .lines()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0].trim_start().starts_with("--") && w[1].trim().is_empty())
        .map(|w| w[0].trim())
        .collect();
    assert!(blank.is_empty(), "flags without help: {blank:?}");
    // Sampling flags out of the server's ranges are refused before a model loads.
    for (flag, value) in [
        ("--max-tokens", "0"),
        ("--temperature", "-1"),
        ("--temperature", "3"),
        ("--top-p", "5"),
        ("--top-p", "-0.1"),
        ("--repetition-penalty", "0"),
        ("--repetition-penalty", "101"),
    ] {
        let out = generate_missing_model(&[format!("{flag}={value}")], None);
        assert_refused_flag(&out, flag, value);
    }
}

/// `camelid score --paged` (the engine's paged cache, the prompt in two chunks: the CPU
/// attention kernel here, camelid's kernels on CUDA) gives the contiguous path's logits.
#[test]
fn score_paged_matches_contiguous() {
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-llama"
    );
    let guard = tempfile::tempdir().unwrap();
    let dir = guard.path();
    let ids = "1,15,27,3,49,42,7,64,5,18,33,2,71,40,11,9,23,57,6,70,12,38,4,60";
    let read = |name: &str, paged: bool| -> Vec<f32> {
        let out = dir.join(name);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_camelid"));
        cmd.args([
            "score", "--model", model, "--dtype", "f32", "--ids", ids, "--out",
        ])
        .arg(&out);
        if paged {
            cmd.arg("--paged");
        }
        let r = cmd.output().unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        std::fs::read(&out)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let (plain, paged) = (read("plain.f32", false), read("paged.f32", true));
    assert_eq!(plain.len(), paged.len());
    assert!(plain.len() >= 24 * 2, "one row per position");
    let diff = plain
        .iter()
        .zip(&paged)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 1e-4, "paged vs contiguous logits differ by {diff}");
}
