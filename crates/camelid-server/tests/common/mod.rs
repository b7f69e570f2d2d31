//! The harness the server's test files share: one tokio runtime, the default model as a
//! served entry, the server on a free loopback port, and requests over reqwest.
// Each test binary uses a part of this module.
#![allow(dead_code)]

use camelid_engine::{EngineConfig, EngineHandle, EngineOverrides};
use camelid_model::LoadedModel;
use camelid_server::{AppState, ModelEntry, ServerConfig};
use serde_json::Value;
use std::sync::{Arc, OnceLock};

pub struct Server {
    pub base: String,
    pub addr: std::net::SocketAddr,
}

/// The runtime the servers and the clients run on.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// The default model served as `name`; `engine` chooses the engine's configuration for it.
pub fn model_entry(
    name: &str,
    aliases: &[&str],
    max_model_len: usize,
    engine: impl FnOnce(&LoadedModel) -> EngineConfig,
) -> ModelEntry {
    model_entry_at(None, name, aliases, max_model_len, engine)
}

/// The tiny random Llama of `tests/fixtures/tiny-llama` (a SentencePiece vocabulary of 80
/// pieces that adds a BOS token) served as `name`.
pub fn tiny_llama_entry(name: &str) -> ModelEntry {
    let p =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
    model_entry_at(p.to_str(), name, &[], 64, |_| EngineConfig::default())
}

/// The model at `path` (the default model for `None`) served as `name`.
pub fn model_entry_at(
    path: Option<&str>,
    name: &str,
    aliases: &[&str],
    max_model_len: usize,
    engine: impl FnOnce(&LoadedModel) -> EngineConfig,
) -> ModelEntry {
    let lm = camelid_model::load(path, &camelid_model::LoadOptions::default()).expect("model");
    let config = engine(&lm);
    let mut e = entry_of(lm, name, max_model_len, config);
    e.aliases = aliases.iter().map(|a| a.to_string()).collect();
    e
}

/// A loaded model served as `name` on an engine of its own.
pub fn entry_of(
    lm: LoadedModel,
    name: &str,
    max_model_len: usize,
    config: EngineConfig,
) -> ModelEntry {
    ModelEntry {
        name: name.into(),
        aliases: vec![],
        template: lm.template.clone(),
        tool_template: lm.tool_template.clone(),
        stop_token_ids: lm.stop_token_ids.clone(),
        stop_strings: lm.stop_strings.clone(),
        max_model_len,
        created: 0,
        details: camelid_server::state::ModelDetails::of(&lm),
        sampling_defaults: lm.sampling_defaults,
        engine: EngineHandle::spawn(lm, config),
    }
}

/// A chat template whose generation prompt opens a `<think>` block, as DeepSeek-R1's does
/// (a reasoning model's output then starts inside it).
pub const THINKING_TEMPLATE: &str =
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
    {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}";

/// Serves `state` on a free loopback port, on [`runtime`].
pub fn serve(state: Arc<AppState>) -> Server {
    let listener = runtime()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime().spawn(camelid_server::serve(listener, state));
    Server {
        base: format!("http://{addr}"),
        addr,
    }
}

/// The default model served alone as `smol` with its engine at hand (for its metrics).
pub struct EngineServer {
    pub base: String,
    pub engine: EngineHandle,
}

/// The server `camelid serve --kv-cache-mb <kv_cache_mb>` runs (the CPU's engine defaults).
pub fn serve_default_model(kv_cache_mb: usize) -> EngineServer {
    let entry = model_entry("smol", &[], 2048, |lm| {
        EngineConfig::for_device(
            lm.model.device(),
            &EngineOverrides {
                kv_cache_mb: Some(kv_cache_mb),
                ..Default::default()
            },
        )
    });
    let engine = entry.engine.clone();
    let state = Arc::new(AppState::new(ServerConfig::default()));
    state.set_models(vec![entry]);
    EngineServer {
        base: serve(state).base,
        engine,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// The `data:` payloads of a streamed answer (asserted 200 and `text/event-stream`), `[DONE]`
/// included.
pub fn sse_data(base: &str, path: &str, body: &Value) -> Vec<String> {
    runtime().block_on(async {
        let r = client()
            .post(format!("{base}{path}"))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let text = r.text().await.unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("data: ").map(String::from))
            .collect()
    })
}

/// (status, body as JSON, or as a JSON string when it is not JSON).
async fn status_and_body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Sends a request and waits for the whole answer: (status, body as in `status_and_body`).
pub fn send(
    base: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    runtime().block_on(async {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = client().request(method, format!("{base}{path}"));
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        status_and_body(r.body(body).send().await.unwrap()).await
    })
}

/// POSTs `body` as JSON.
pub async fn post_async(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = client().post(format!("{base}{path}")).json(body);
    status_and_body(r.send().await.unwrap()).await
}

/// [`post_async`], waited for.
pub fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    runtime().block_on(post_async(base, path, body))
}

/// A body for a failure message: at most a few hundred characters.
pub fn short(b: &Value) -> String {
    let s = b.to_string();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// `status` is `want_status` and `body` an OpenAI error (`message`, `type`, `param`, `code`),
/// naming `param` when given.
pub fn assert_error(status: u16, body: &Value, want_status: u16, param: Option<&str>) {
    let shown = short(body);
    assert_eq!(status, want_status, "{shown}");
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "not an OpenAI error: {shown}"
    );
    assert!(e["type"].is_string(), "{shown}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{shown}"
    );
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{shown}");
    }
}
