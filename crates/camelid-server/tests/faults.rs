//! Hostile clients and faults, on the real server (router + engine + default model) over
//! HTTP: what `/metrics` lets a client write, which routes API keys cover, and what clients
//! see when an engine thread dies.

mod common;
use camelid_engine::EngineConfig;
use camelid_server::{AppState, ServerConfig};
use common::{model_entry, serve};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Serves one model named `name` on a free port; returns the base URL.
fn start(config: ServerConfig, name: &str, engine: EngineConfig) -> String {
    let state = Arc::new(AppState::new(config));
    state.set_models(vec![model_entry(name, &[], 512, |_| engine)]);
    serve(state).base
}

/// One request over a raw connection, the request line as given (so that paths reach the
/// server exactly as a hostile client writes them): (status, body).
fn raw(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += &format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out:?}"));
    (status, body.to_string())
}

fn get(base: &str, path: &str, key: Option<&str>) -> (u16, String) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    raw(base, "GET", path, &headers, "")
}

/// The `camelid_requests_total` lines of a `/metrics` text.
fn request_series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| l.starts_with("camelid_requests_total{"))
        .collect()
}

/// Checks one sample line of Prometheus' text format: `name{k="v",…} value`, label values
/// with only `\\`, `\"` and `\n` escaped (a raw `"` or line feed would end the value early
/// or split the line). Returns the labels.
fn parse_sample(line: &str) -> Vec<(String, String)> {
    let mut labels = vec![];
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("{line:?}"));
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line:?}"
    );
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find("=\"").unwrap_or_else(|| panic!("{line:?}"));
            let key = rest[..eq].to_string();
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad label name in {line:?}"
            );
            let mut value = String::new();
            let mut chars = rest[eq + 2..].char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            };
            labels.push((key, value));
            rest = &rest[eq + 2 + end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{line:?}"));
    assert!(
        value.parse::<f64>().is_ok() || value == "+Inf",
        "bad value in {line:?}"
    );
    labels
}

/// Every line of a `/metrics` text is a comment or a well-formed sample.
fn assert_well_formed(metrics: &str) {
    for l in metrics.lines().filter(|l| !l.starts_with('#')) {
        parse_sample(l);
    }
}

/// Paths a client chooses (unknown ones, a battle id, quotes and backslashes) never become
/// label values: requests are counted under their route's template or `unmatched`, so a
/// client can neither add series nor write into the text; model names are escaped.
#[test]
fn metrics_labels_are_route_templates_and_escaped() {
    let model = "smol \"q\" \\ x";
    let base = start(ServerConfig::default(), model, EngineConfig::default());
    for i in 0..40 {
        let (st, _) = get(&base, &format!("/no/such/path-{i}"), None);
        assert_eq!(st, 404);
    }
    let (st, _) = raw(
        &base,
        "POST",
        "/arena/battles/secret-battle-7f3a/vote",
        &[],
        &format!(r#"{{"winner":"model_a","token":"{}"}}"#, "0".repeat(64)),
    );
    assert_eq!(st, 404, "an unknown battle");
    let (st, _) = get(&base, "/v1/models", None);
    assert_eq!(st, 200);
    // A quote and a backslash in the path, as raw bytes on the request line.
    let (st, _) = get(&base, "/evil\"}\\path", None);
    assert!(st == 404 || st == 400, "{st}");
    let (st, metrics) = get(&base, "/metrics", None);
    assert_eq!(st, 200);
    assert_well_formed(&metrics);
    for leaked in ["secret-battle-7f3a", "path-", "evil", "/no/such"] {
        assert!(!metrics.contains(leaked), "{leaked:?} in:\n{metrics}");
    }
    let endpoints: Vec<(String, String)> = request_series(&metrics)
        .into_iter()
        .map(|l| {
            let labels = parse_sample(l);
            (labels[0].1.clone(), labels[1].1.clone())
        })
        .collect();
    let known = [
        "/v1/models",
        "/arena/battles/{id}/vote",
        "/metrics",
        "unmatched",
    ];
    for (e, _) in &endpoints {
        assert!(known.contains(&e.as_str()), "endpoint label {e:?}");
    }
    let unmatched = request_series(&metrics)
        .into_iter()
        .find(|l| l.contains("endpoint=\"unmatched\",status=\"404\""))
        .unwrap_or_else(|| panic!("no unmatched 404 series in:\n{metrics}"));
    let count: f64 = unmatched.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 40.0, "{unmatched}");
    assert!(
        endpoints
            .iter()
            .any(|(e, s)| e == "/arena/battles/{id}/vote" && s == "404"),
        "{endpoints:?}"
    );
    // The model's name is a label value too: escaped, and read back as it is.
    let running = metrics
        .lines()
        .find(|l| l.starts_with("camelid_running_requests{"))
        .unwrap();
    assert_eq!(parse_sample(running), [("model".into(), model.to_string())]);
}

/// The routes `router` puts behind the API keys (method, path with its parameters filled), from
/// the part of `src/lib.rs` that builds them: every `.route("…", get|post|any(…))` and the
/// paths of Ollama's refused routes, up to the keyed router's fallback.
fn keyed_routes() -> Vec<(&'static str, String)> {
    let src = include_str!("../src/lib.rs");
    let start = src
        .find("let mut keyed = Router::new()")
        .expect("the keyed router");
    let end = start + src[start..].find("keyed.fallback(").expect("its fallback");
    let fill = |p: &str| {
        p.replace("{*model}", "smol")
            .replace("{digest}", "sha256-x")
    };
    let section = &src[start..end];
    let mut out = vec![];
    // `.route("PATH", get|post|any(handler))`, on one line or wrapped over several.
    for (at, _) in section.match_indices(".route(") {
        let call = section[at + ".route(".len()..].trim_start();
        let Some(quoted) = call.strip_prefix('"') else {
            continue; // the refused routes' loop: `.route(path, …)`, read below
        };
        let (path, rest) = quoted.split_once('"').expect("a closed path literal");
        let handler = rest.trim_start().trim_start_matches(',').trim_start();
        let method = if handler.starts_with("get(") {
            "GET"
        } else {
            assert!(
                handler.starts_with("post("),
                "a route this test cannot probe: {handler:.40}"
            );
            "POST"
        };
        out.push((method, fill(path)));
    }
    // Ollama's refused routes (`any`): the path literals of the `for path in [...]` list.
    let list = &section[section.find("for path in [").expect("the refused routes")..];
    let list = &list[..list.find(']').expect("their list's end")];
    for path in list.split('"').skip(1).step_by(2) {
        out.push(("POST", fill(path)));
    }
    out
}

/// Every route but `/health` needs a key when keys are set, `/metrics` too unless it is made
/// public, unknown paths too (a client without a key cannot probe which routes exist); an
/// empty bearer token never passes, even should an empty key be configured.
#[test]
fn api_keys_cover_every_route_but_health() {
    let key = "sk-cover";
    let base = start(
        ServerConfig {
            api_keys: vec![key.into()],
            ..Default::default()
        },
        "smol",
        EngineConfig::default(),
    );
    // Every route the router registers behind the keys, read from its source so that a route
    // added later is covered too, and a path no route has.
    let routes: Vec<(&str, String)> = keyed_routes()
        .into_iter()
        .chain([
            ("GET", "/v1/unknown".to_string()),
            ("GET", "/metrics".into()),
        ])
        .collect();
    assert!(routes.len() >= 24, "read only {routes:?}");
    let bearer = format!("Bearer {key}");
    for (method, path) in &routes {
        let (method, path, body) = (
            *method,
            path.as_str(),
            if *method == "GET" { "" } else { "{}" },
        );
        for auth in [
            None,
            Some("Bearer "),
            Some("Bearer sk-wrong"),
            Some("sk-cover"),
        ] {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
            let (st, b) = raw(&base, method, path, &headers, body);
            assert_eq!(st, 401, "{method} {path} with {auth:?}: {b}");
            let b: Value = serde_json::from_str(&b).unwrap();
            if path.starts_with("/api/") {
                // Ollama's error shape: the message alone.
                assert!(
                    b["error"].as_str().is_some_and(|m| m.contains("API key")),
                    "{b}"
                );
            } else {
                assert_eq!(b["error"]["code"], "invalid_api_key", "{b}");
            }
        }
        let (st, b) = raw(&base, method, path, &[("Authorization", &bearer)], body);
        // Past the key, and to a route that takes this method.
        assert!(
            ![401, 405].contains(&st),
            "{method} {path} with the key: {st} {b}"
        );
    }
    assert_eq!(get(&base, "/health", None).0, 200, "health stays open");
    // The arena's visitor routes stay open to visitors (`--arena-private` closes them: see
    // tests/arena.rs); a battle that names a model is refused for that, not for the key.
    let battle = r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1}"#;
    for (method, path, body) in [
        ("GET", "/arena/leaderboard", ""),
        ("POST", "/arena/battles", battle),
        ("POST", "/arena/battles/x/vote", r#"{"winner":"tie"}"#),
    ] {
        let (st, b) = raw(&base, method, path, &[], body);
        assert_ne!(st, 401, "{method} {path} without a key: {b}");
    }

    let public = start(
        ServerConfig {
            api_keys: vec![key.into()],
            metrics_public: true,
            ..Default::default()
        },
        "smol",
        EngineConfig::default(),
    );
    let (st, m) = get(&public, "/metrics", None);
    assert_eq!(st, 200, "{m}");
    assert!(m.contains("camelid_requests_total"), "{m}");
    assert_eq!(get(&public, "/v1/models", None).0, 401);
    assert_eq!(get(&public, "/v1/models", Some(key)).0, 200);

    // A misconfigured empty key lets nobody in without a key.
    let empty = start(
        ServerConfig {
            api_keys: vec![String::new()],
            ..Default::default()
        },
        "smol",
        EngineConfig::default(),
    );
    assert_eq!(get(&empty, "/v1/models", None).0, 401);
    let (st, _) = raw(
        &empty,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer ")],
        "",
    );
    assert_eq!(st, 401);
}

/// The `data:` payloads of a streamed response over a raw connection (de-chunked).
fn stream_events(base: &str, path: &str, body: &str) -> (u16, Vec<String>) {
    let (st, text) = raw(base, "POST", path, &[], body);
    let mut events = vec![];
    let mut rest = text.as_str();
    // Chunked encoding: size line, data, CRLF; payload lines are whole within the body.
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        body += &after[..n];
        rest = &after[n..];
        rest = rest.strip_prefix("\r\n").unwrap_or(rest);
    }
    for l in body.lines() {
        if let Some(d) = l.strip_prefix("data: ") {
            events.push(d.to_string());
        }
    }
    (st, events)
}

/// An engine thread that panics mid-generation: the stream in flight ends with an error event
/// (never a clean `[DONE]` without a finish reason), a whole request gets a 5xx OpenAI error,
/// `/health` says 503 naming the engine, and new requests get 503.
#[test]
fn a_dead_engine_ends_streams_with_an_error_and_health_says_503() {
    let base = start(
        ServerConfig::default(),
        "smol",
        EngineConfig {
            panic_at_step: Some(10),
            ..Default::default()
        },
    );
    assert_eq!(get(&base, "/health", None).0, 200);
    let stream_body =
        json!({"model": "smol", "messages": [{"role": "user", "content": "Count to fifty."}],
        "max_tokens": 60, "ignore_eos": true, "stream": true, "n": 2})
        .to_string();
    let whole_body = json!({"model": "smol", "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 60, "ignore_eos": true})
    .to_string();
    let streamed = {
        let base = base.clone();
        std::thread::spawn(move || stream_events(&base, "/v1/chat/completions", &stream_body))
    };
    let whole = {
        let base = base.clone();
        std::thread::spawn(move || raw(&base, "POST", "/v1/chat/completions", &[], &whole_body))
    };
    let (st, events) = streamed.join().unwrap();
    assert_eq!(st, 200);
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks.iter().any(|c| c["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty())),
        "tokens came before the fault: {events:?}"
    );
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null()),
        "a finish reason from a dead engine: {events:?}"
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{events:?}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("engine"),
        "{last}"
    );
    let (st, b) = whole.join().unwrap();
    let b: Value = serde_json::from_str(&b).unwrap();
    assert!(st == 500 || st == 503, "{st} {b}");
    assert!(b["error"]["message"].is_string(), "{b}");
    let (st, h) = get(&base, "/health", None);
    assert_eq!((st, h.as_str()), (503, "engine stopped: smol"));
    let t = Instant::now();
    let (st, b) = raw(
        &base,
        "POST",
        "/v1/chat/completions",
        &[],
        r#"{"model":"smol","messages":[{"role":"user","content":"x"}],"max_tokens":1}"#,
    );
    assert_eq!(st, 503, "{b}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let b: Value = serde_json::from_str(&b).unwrap();
    assert!(
        b["error"]["message"].as_str().unwrap().contains("stopped"),
        "{b}"
    );
}
