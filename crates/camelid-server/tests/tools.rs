//! Tool calling over HTTP: the default model served three times, as `tools` with Qwen2.5's
//! chat template (`tests/fixtures/chat-templates/qwen2.5-tools.jinja`, Hermes `<tool_call>`
//! blocks), as `mistral` with a template in Mistral-7B-Instruct-v0.3's format
//! (`mistral-v0.3-tools.jinja`, which takes only 9-character call ids) and as `plain` with its
//! own template, which has no tools.

mod common;

use camelid_engine::EngineConfig;
use camelid_model::text::tool_calls::{parse_output, ToolFormat};
use camelid_model::ChatTemplate;
use camelid_server::{AppState, ModelEntry, ServerConfig};
use common::{assert_error, client, post, runtime, serve, short, Server};
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};

const QWEN_TOOLS: &str = include_str!("../../../tests/fixtures/chat-templates/qwen2.5-tools.jinja");
const MISTRAL_V03: &str =
    include_str!("../../../tests/fixtures/chat-templates/mistral-v0.3-tools.jinja");

fn entry(name: &str, template: Option<&str>) -> ModelEntry {
    let mut lm =
        camelid_model::load(None, &camelid_model::LoadOptions::default()).expect("default model");
    if let Some(t) = template {
        lm = lm.with_chat_template(t.to_string()).unwrap();
    }
    common::entry_of(lm, name, 2048, EngineConfig::default())
}

/// The default model with its own template, and Qwen2.5's as its `tool_use` template (as a
/// Hermes-2-Pro or Hermes-3 folder's list of named templates gives one).
fn hermes_entry() -> ModelEntry {
    let mut lm =
        camelid_model::load(None, &camelid_model::LoadOptions::default()).expect("default model");
    let ChatTemplate::Jinja {
        bos_token,
        eos_token,
        ..
    } = lm.template.clone()
    else {
        panic!("the default model has a jinja template")
    };
    lm.tool_template = Some(ChatTemplate::Jinja {
        source: QWEN_TOOLS.into(),
        bos_token,
        eos_token,
    });
    common::entry_of(lm, "hermes", 2048, EngineConfig::default())
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let state = AppState::new(ServerConfig::default());
        state.set_models(vec![
            entry("tools", Some(QWEN_TOOLS)),
            entry("mistral", Some(MISTRAL_V03)),
            entry("plain", None),
            hermes_entry(),
        ]);
        serve(Arc::new(state))
    })
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather",
        "description": "The weather in a city today",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": false}}})
}

fn chat(model: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "max_tokens": 48,
        "messages": [{"role": "system", "content": "Answer weather questions with the get_weather tool."},
                     {"role": "user", "content": "What is the weather in Paris?"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// The SSE `data:` payloads of a streamed request, `[DONE]` last.
fn stream(body: &Value) -> Vec<Value> {
    runtime().block_on(async {
        let r = client()
            .post(format!("{}/v1/chat/completions", server().base))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
        data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    })
}

/// One streamed choice put together as a client does: content, calls by `index` (id, type
/// and name from their first delta, arguments concatenated), finish reason.
#[derive(Debug, Default, PartialEq)]
struct Assembled {
    content: String,
    calls: Vec<(String, String, String)>,
    finish: Option<String>,
}

fn assemble(chunks: &[Value], choice: u64) -> Assembled {
    let mut a = Assembled::default();
    for c in chunks {
        for ch in c["choices"].as_array().unwrap() {
            if ch["index"] != choice {
                continue;
            }
            let d = &ch["delta"];
            a.content += d["content"].as_str().unwrap_or_default();
            for tc in d["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().unwrap() as usize;
                if i == a.calls.len() {
                    assert!(tc["id"].as_str().unwrap().starts_with("call_"), "{tc}");
                    assert_eq!(tc["type"], "function", "{tc}");
                    a.calls.push((
                        tc["id"].as_str().unwrap().into(),
                        String::new(),
                        String::new(),
                    ));
                }
                let call = &mut a.calls[i];
                if let Some(n) = tc["function"]["name"].as_str() {
                    assert!(call.1.is_empty(), "the name comes once: {tc}");
                    call.1 = n.into();
                }
                call.2 += tc["function"]["arguments"].as_str().unwrap_or_default();
            }
            if let Some(f) = ch["finish_reason"].as_str() {
                a.finish = Some(f.into());
            }
        }
    }
    a
}

/// A whole response's choice in the same shape (ids aside).
fn whole(choice: &Value) -> Assembled {
    let m = &choice["message"];
    Assembled {
        content: m["content"].as_str().unwrap_or_default().into(),
        calls: m["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                assert!(c["id"].as_str().unwrap().starts_with("call_"), "{c}");
                assert_eq!(c["type"], "function");
                (
                    String::new(),
                    c["function"]["name"].as_str().unwrap().into(),
                    c["function"]["arguments"].as_str().unwrap().into(),
                )
            })
            .collect(),
        finish: choice["finish_reason"].as_str().map(String::from),
    }
}

fn without_ids(mut a: Assembled) -> Assembled {
    a.calls.iter_mut().for_each(|c| c.0.clear());
    a
}

#[test]
fn tools_need_a_template_that_renders_them() {
    let s = &server().base;
    let (st, b) = post(
        s,
        "/v1/chat/completions",
        &chat("plain", json!({"tools": [weather_tool()]})),
    );
    assert_error(st, &b, 400, Some("tools"));
    assert!(
        b["error"]["message"].as_str().unwrap().contains("template"),
        "{}",
        short(&b)
    );
    // Under tool_choice "none" they need not be shown (vLLM's
    // `--exclude-tools-when-tool-choice-none`; agent frameworks send their tools with every
    // request): the answer of the request without them.
    let (st, b) = post(
        s,
        "/v1/chat/completions",
        &chat(
            "plain",
            json!({"tools": [weather_tool()], "tool_choice": "none", "temperature": 0}),
        ),
    );
    assert_eq!(st, 200, "{}", short(&b));
    let (st, plain) = post(
        s,
        "/v1/chat/completions",
        &chat("plain", json!({"temperature": 0})),
    );
    assert_eq!(st, 200, "{}", short(&plain));
    assert_eq!(b["choices"][0]["message"], plain["choices"][0]["message"]);
}

#[test]
fn bad_tool_requests_are_400s_naming_the_field() {
    let s = &server().base;
    let named = |n: &str| json!({"type": "function", "function": {"name": n}});
    let cases = [
        (
            json!({"tools": [weather_tool()], "tool_choice": named("get_time")}),
            "tool_choice",
        ),
        (
            json!({"tools": [weather_tool()], "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (json!({"tool_choice": named("get_weather")}), "tool_choice"),
        (json!({"tools": {"type": "function"}}), "tools"),
        (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "has space"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": [weather_tool(), {"type": "function", "function": {"name": "f", "parameters": "city"}}]}),
            "tools[1].function.parameters",
        ),
        (
            json!({"tools": [weather_tool(), weather_tool()]}),
            "tools[1].function.name",
        ),
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (json!({"function_call": {"name": "f"}}), "function_call"),
        (
            json!({"messages": [{"role": "user", "content": "hi", "tool_calls": []}]}),
            "messages[0].tool_calls",
        ),
    ];
    for (extra, param) in cases {
        let (st, b) = post(s, "/v1/chat/completions", &chat("tools", extra.clone()));
        assert_error(st, &b, 400, Some(param));
    }
}

/// A conversation with an assistant's call (content null) and the tool's answer reaches the
/// model as Qwen2.5's template writes it: the prompt has exactly the tokens of that text.
/// (That special-token text in a tool's answer or a call's arguments stays text is
/// `camelid-model`'s `chat_prompt` tests.)
#[test]
fn calls_and_tool_results_render_through_the_template() {
    let s = &server().base;
    let tool = json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}});
    let body = json!({"model": "tools", "max_tokens": 1, "tools": [tool],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_7", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_7", "content": "18 C"}]});
    let (st, b) = post(s, "/v1/chat/completions", &body);
    assert_eq!(st, 200, "{}", short(&b));
    let want = concat!(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n",
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n",
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n",
        r#"{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}"#,
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n",
        "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n",
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n",
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n",
        "<|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>\n",
        "<|im_start|>assistant\n",
    );
    let (st, t) = post(
        s,
        "/tokenize",
        &json!({"model": "tools", "prompt": want, "add_special_tokens": true}),
    );
    assert_eq!(st, 200, "{}", short(&t));
    assert_eq!(b["usage"]["prompt_tokens"], t["count"], "{}", short(&b));
    // A call written back with empty arguments is a call without any (`{}`, as vLLM reads
    // it), not a 400.
    let call_with = |arguments: Value| {
        let mut b = body.clone();
        b["messages"][1]["tool_calls"][0]["function"]["arguments"] = arguments;
        let (st, t) = post(s, "/tokenize", &b);
        assert_eq!(st, 200, "{}", short(&t));
        t["tokens"].clone()
    };
    assert_eq!(call_with(json!("")), call_with(json!("{}")));
    // Arguments that are not JSON (a call cut short) are opaque text, as OpenAI takes them:
    // the conversation goes on, the template shows them as the string they are.
    let cut = "{\"city\": \"Par";
    let (st, b2) = post(s, "/v1/chat/completions", &{
        let mut b = body.clone();
        b["messages"][1]["tool_calls"][0]["function"]["arguments"] = cut.into();
        b
    });
    assert_eq!(st, 200, "{}", short(&b2));
    let (st, t) = post(
        s,
        "/tokenize",
        &json!({"model": "tools", "add_special_tokens": true, "prompt": want.replace(
            "\"arguments\": {\"city\": \"Paris\"}",
            &format!("\"arguments\": {}", Value::from(cut)),
        )}),
    );
    assert_eq!(st, 200, "{}", short(&t));
    assert_eq!(b2["usage"]["prompt_tokens"], t["count"], "{}", short(&b2));
    assert_ne!(
        call_with(json!("")),
        call_with(json!("{\"city\": \"Paris\"}"))
    );
}

/// A model with a `tool_use` template renders a request with tools through it, and one
/// without tools through its default template (transformers' and llama.cpp's choice); its
/// output is read for calls in the tool template's format, and Ollama's `/api/show` lists
/// the `tools` capability.
#[test]
fn a_tool_use_template_renders_requests_with_tools() {
    let s = &server().base;
    let messages = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    let count = |model: &str, tools: bool| {
        let mut b = json!({"model": model, "messages": messages});
        if tools {
            b["tools"] = json!([weather_tool()]);
        }
        let (st, t) = post(s, "/tokenize", &b);
        assert_eq!(st, 200, "{}", short(&t));
        t["tokens"].clone()
    };
    assert_eq!(count("hermes", true), count("tools", true));
    assert_eq!(count("hermes", false), count("plain", false));
    assert_ne!(count("hermes", false), count("tools", false));

    let (st, b) = post(
        s,
        "/v1/chat/completions",
        &chat(
            "hermes",
            // Greedy: sampled, the small model sometimes writes on inside the city's string
            // (the grammar allows any text there) until the limit.
            json!({"tools": [weather_tool()], "tool_choice": "required", "max_tokens": 96,
                   "parallel_tool_calls": false, "temperature": 0}),
        ),
    );
    assert_eq!(st, 200, "{}", short(&b));
    assert_eq!(forced_calls(&b)[0].0, "get_weather", "{}", short(&b));
    let (st, t) = post(
        s,
        "/v1/chat/completions",
        &json!({"model": "hermes", "max_tokens": 1, "messages": messages,
                "tools": [weather_tool()]}),
    );
    assert_eq!(st, 200, "{}", short(&t));
    assert_eq!(
        t["usage"]["prompt_tokens"].as_u64(),
        Some(count("hermes", true).as_array().unwrap().len() as u64)
    );

    let (st, show) = post(s, "/api/show", &json!({"model": "hermes"}));
    assert_eq!(st, 200, "{}", short(&show));
    assert!(
        show["capabilities"].to_string().contains("\"tools\""),
        "{}",
        short(&show)
    );
    let (_, plain) = post(s, "/api/show", &json!({"model": "plain"}));
    assert!(
        !plain["capabilities"].to_string().contains("\"tools\""),
        "{}",
        short(&plain)
    );
}

/// `/tokenize`'s chat form renders `tools` as the chat does, so it counts the prompt the
/// chat's `usage` reports; its tools are checked as a chat's, and its type errors name the
/// field.
#[test]
fn tokenize_counts_the_tools_the_chat_shows() {
    let s = &server().base;
    let messages = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    let (st, b) = post(
        s,
        "/v1/chat/completions",
        &json!({"model": "tools", "max_tokens": 1, "messages": messages, "tools": [weather_tool()]}),
    );
    assert_eq!(st, 200, "{}", short(&b));
    let (st, t) = post(
        s,
        "/tokenize",
        &json!({"model": "tools", "messages": messages, "tools": [weather_tool()]}),
    );
    assert_eq!(st, 200, "{}", short(&t));
    assert_eq!(t["count"], b["usage"]["prompt_tokens"], "{}", short(&t));
    let (_, bare) = post(
        s,
        "/tokenize",
        &json!({"model": "tools", "messages": messages}),
    );
    assert!(
        bare["count"].as_u64() < t["count"].as_u64(),
        "{}",
        short(&bare)
    );

    let (st, e) = post(
        s,
        "/tokenize",
        &json!({"model": "tools", "messages": messages, "tools": "garbage"}),
    );
    assert_error(st, &e, 400, Some("tools"));
    let (st, e) = post(
        s,
        "/tokenize",
        &json!({"model": "plain", "messages": messages, "tools": [weather_tool()]}),
    );
    assert_error(st, &e, 400, Some("tools"));
    let (st, e) = post(s, "/tokenize", &json!({"model": "plain", "prompt": 5}));
    assert_error(st, &e, 400, Some("prompt"));
    let (st, e) = post(
        s,
        "/tokenize",
        &json!({"model": "plain", "messages": [{"role": "user", "content": 5}]}),
    );
    assert_error(st, &e, 400, None);
    assert!(
        e["error"]["param"]
            .as_str()
            .is_some_and(|p| p.starts_with("messages[0]")),
        "{}",
        short(&e)
    );
    let (st, e) = post(
        s,
        "/tokenize",
        &json!({"model": "plain", "prompt": "hi", "messages": messages}),
    );
    assert_error(st, &e, 400, Some("prompt"));
    let (st, e) = post(s, "/tokenize", &json!({"model": "plain"}));
    assert_error(st, &e, 400, Some("prompt"));
}

/// `auto`: the same greedy output read three ways — raw (`tool_choice: "none"`), whole and
/// streamed — gives the text and calls the Hermes parser finds in the raw text, and
/// `finish_reason` says `tool_calls` exactly when there are calls.
#[test]
fn auto_splits_the_output_into_text_and_calls_alike_whole_and_streamed() {
    let s = &server().base;
    // A few-shot history, so the small model has calls to imitate.
    let shot = |city: &str, id: &str| {
        [
            json!({"role": "user", "content": format!("What is the weather in {city}?")}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
             "function": {"name": "get_weather", "arguments": format!("{{\"city\": \"{city}\", \"unit\": \"celsius\"}}")}}]}),
        ]
    };
    let mut messages = vec![
        json!({"role": "system", "content": "Answer weather questions with the get_weather tool."}),
    ];
    messages.extend(shot("Oslo", "call_1"));
    messages.extend(shot("Rome", "call_2"));
    messages.extend(shot("Lima", "call_3"));
    messages.push(json!({"role": "user", "content": "What is the weather in Paris?"}));
    let body = |choice: &str, stream: bool| {
        json!({"model": "tools", "max_tokens": 48, "temperature": 0, "messages": messages,
               "tools": [weather_tool()], "tool_choice": choice, "stream": stream})
    };
    let (st, raw) = post(s, "/v1/chat/completions", &body("none", false));
    assert_eq!(st, 200, "{}", short(&raw));
    let raw_text = raw["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(raw["choices"][0]["message"].get("tool_calls").is_none());
    let (text, calls) = parse_output(ToolFormat::Hermes, raw_text);
    // Greedy, the history's pattern is followed: the call path is what is tested.
    assert_eq!(calls.len(), 1, "{raw_text:?}");
    assert_eq!(calls[0].name, "get_weather");
    let (st, auto) = post(s, "/v1/chat/completions", &body("auto", false));
    assert_eq!(st, 200, "{}", short(&auto));
    let got = without_ids(whole(&auto["choices"][0]));
    assert_eq!(
        got.content,
        text.clone().unwrap_or_default(),
        "{raw_text:?}"
    );
    assert_eq!(
        got.calls,
        calls
            .iter()
            .map(|c| (String::new(), c.name.clone(), c.arguments.clone()))
            .collect::<Vec<_>>()
    );
    let raw_finish = raw["choices"][0]["finish_reason"].as_str().unwrap();
    let want_finish = if !calls.is_empty() && raw_finish == "stop" {
        "tool_calls"
    } else {
        raw_finish
    };
    assert_eq!(got.finish.as_deref(), Some(want_finish));
    assert_eq!(got.finish.as_deref(), Some("tool_calls"));
    assert_eq!(
        auto["choices"][0]["message"]["content"].is_null(),
        text.is_none()
    );
    let streamed = without_ids(assemble(&stream(&body("auto", true)), 0));
    assert_eq!(streamed, got);
    eprintln!("auto: {raw_text:?} → {} call(s)", calls.len());
}

/// Streamed, a call's arguments come in pieces as the model writes them (as OpenAI and
/// vLLM send them): the call's first delta has its `id`, `type` and name, the later ones only
/// `index` and a piece of `arguments`; the pieces make the whole answer's arguments for the
/// same seed, byte for byte.
#[test]
fn streamed_arguments_come_in_pieces_that_make_the_whole_arguments() {
    let s = &server().base;
    for seed in 0..2 {
        let body = chat(
            "tools",
            json!({"tools": [weather_tool()], "tool_choice": "required", "seed": seed,
                   "temperature": 1.0, "max_tokens": 96, "parallel_tool_calls": false}),
        );
        let (st, b) = post(s, "/v1/chat/completions", &body);
        assert_eq!(st, 200, "{}", short(&b));
        let want = b["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap()
            .to_string();
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        let (mut headers, mut pieces) = (0, vec![]);
        for c in stream(&sb) {
            for ch in c["choices"].as_array().unwrap() {
                for d in ch["delta"]["tool_calls"].as_array().into_iter().flatten() {
                    assert_eq!(d["index"], 0, "{d}");
                    if d.get("id").is_some() {
                        headers += 1;
                        assert_eq!(d["function"]["arguments"], "", "{d}");
                        continue;
                    }
                    let mut keys: Vec<&String> = d.as_object().unwrap().keys().collect();
                    keys.sort();
                    assert_eq!(keys, ["function", "index"], "{d}");
                    let f = d["function"].as_object().unwrap();
                    assert_eq!(f.keys().collect::<Vec<_>>(), ["arguments"], "{d}");
                    pieces.push(f["arguments"].as_str().unwrap().to_string());
                }
            }
        }
        assert_eq!(headers, 1);
        assert!(pieces.len() > 3, "seed {seed}: {pieces:?}");
        assert_eq!(pieces.concat(), want, "seed {seed}");
        check_weather_arguments(&want);
    }
}

/// The arguments of a `get_weather` call, checked against `weather_tool`'s schema by hand.
fn check_weather_arguments(args: &str) {
    let v: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let o = v.as_object().unwrap_or_else(|| panic!("{args}"));
    assert!(o.keys().all(|k| k == "city" || k == "unit"), "{args}");
    assert!(o["city"].is_string(), "{args}");
    assert!(
        ["celsius", "fahrenheit"].contains(&o["unit"].as_str().unwrap()),
        "{args}"
    );
}

/// `required` and a named function: whatever the seed, every choice is one call whose
/// arguments follow the schema, whole and streamed alike; a `parameters` schema the grammar
/// compiler rejects is a 400 naming it.
#[test]
fn required_and_named_calls_follow_their_schemas() {
    let s = &server().base;
    let time = json!({"type": "function", "function": {"name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
                       "required": ["zone"], "additionalProperties": false}}});
    for seed in 0..3 {
        let body = chat(
            "tools",
            json!({"tools": [weather_tool(), time], "tool_choice": "required", "seed": seed,
                   "temperature": 1.0, "n": 2, "max_tokens": 96, "parallel_tool_calls": false}),
        );
        let (st, b) = post(s, "/v1/chat/completions", &body);
        assert_eq!(st, 200, "{}", short(&b));
        for c in b["choices"].as_array().unwrap() {
            let got = whole(c);
            assert_eq!(got.finish.as_deref(), Some("tool_calls"), "{c}");
            assert_eq!(got.calls.len(), 1, "{c}");
            match got.calls[0].1.as_str() {
                "get_weather" => check_weather_arguments(&got.calls[0].2),
                "get_time" => {
                    let v: Value = serde_json::from_str(&got.calls[0].2).unwrap();
                    assert!(["UTC", "CET"].contains(&v["zone"].as_str().unwrap()), "{v}");
                }
                other => panic!("called {other}"),
            }
        }
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        let chunks = stream(&sb);
        for i in 0..2 {
            assert_eq!(
                without_ids(assemble(&chunks, i)),
                without_ids(whole(&b["choices"][i as usize])),
                "seed {seed} choice {i}"
            );
        }
    }
    let body = chat(
        "tools",
        json!({"tools": [weather_tool(), time], "seed": 5, "temperature": 1.0, "max_tokens": 96,
               "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    );
    let (st, b) = post(s, "/v1/chat/completions", &body);
    assert_eq!(st, 200, "{}", short(&b));
    let got = whole(&b["choices"][0]);
    assert_eq!(got.calls.len(), 1, "{}", short(&b));
    assert_eq!(got.calls[0].1, "get_weather");
    check_weather_arguments(&got.calls[0].2);
    let broken = json!({"type": "function", "function": {"name": "f",
        "parameters": {"type": "object", "properties": {"a": {"$ref": "#/definitions/nowhere"}}}}});
    let (st, b) = post(
        s,
        "/v1/chat/completions",
        &chat(
            "tools",
            json!({"tools": [weather_tool(), broken], "tool_choice": "required"}),
        ),
    );
    assert_error(st, &b, 400, Some("tools[1].function.parameters"));
}

fn time_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
                       "required": ["zone"], "additionalProperties": false}}})
}

/// The `(name, arguments)` of each choice's single call under `required`, checked to end
/// the choice as a call.
fn forced_calls(b: &Value) -> Vec<(String, Value)> {
    calls_finishing(b, "tool_calls")
}

/// As [`forced_calls`], for a named function: OpenAI (and vLLM) finish those as `stop`.
fn named_calls(b: &Value) -> Vec<(String, Value)> {
    calls_finishing(b, "stop")
}

fn calls_finishing(b: &Value, finish: &str) -> Vec<(String, Value)> {
    b["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let got = whole(c);
            assert_eq!(got.finish.as_deref(), Some(finish), "{c}");
            assert_eq!(got.calls.len(), 1, "{c}");
            let (_, name, args) = got.calls.into_iter().next().unwrap();
            (name, serde_json::from_str(&args).unwrap())
        })
        .collect()
}

/// `parameters` as `openai.pydantic_function_tool` writes them: an enum (or a nested model)
/// is a `$defs` entry the properties `$ref`. Under `required` the refs resolve (they are
/// rewritten to where the parameters sit in the call's schema), the enum is enforced, and two
/// tools that each define `Unit` differently keep their own.
#[test]
fn refs_to_defs_in_parameters_are_enforced_under_required() {
    let s = &server().base;
    let weather = json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object",
            "$defs": {"Unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "title": "Unit"}},
            "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"$ref": "#/$defs/Unit"}},
            "required": ["city", "unit"], "additionalProperties": false}}});
    let time = json!({"type": "function", "function": {"name": "get_time",
        "parameters": {"type": "object",
            "$defs": {"Unit": {"type": "string", "enum": ["UTC", "CET"]}},
            "properties": {"zone": {"$ref": "#/$defs/Unit"}},
            "required": ["zone"], "additionalProperties": false}}});
    for seed in 0..3 {
        let body = chat(
            "tools",
            json!({"tools": [weather, time], "tool_choice": "required", "seed": seed,
                   "temperature": 1.0, "n": 2, "max_tokens": 96, "parallel_tool_calls": false}),
        );
        let (st, b) = post(s, "/v1/chat/completions", &body);
        assert_eq!(st, 200, "{}", short(&b));
        for (name, args) in forced_calls(&b) {
            match name.as_str() {
                "get_weather" => check_weather_arguments(&args.to_string()),
                "get_time" => assert!(["UTC", "CET"].contains(&args["zone"].as_str().unwrap())),
                other => panic!("called {other}"),
            }
        }
    }
    let named = chat(
        "tools",
        json!({"tools": [weather], "seed": 1, "temperature": 1.0, "max_tokens": 96,
               "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    );
    let (st, b) = post(s, "/v1/chat/completions", &named);
    assert_eq!(st, 200, "{}", short(&b));
    let calls = named_calls(&b);
    check_weather_arguments(&calls[0].1.to_string());
}

/// OpenAI takes any JSON schema for a (non-strict) function. Keywords llguidance cannot
/// enforce (`uniqueItems`, `not`, `if`/`then`, `contains`, unknown `format`s) are no 400:
/// under `auto` and `none` nothing is compiled, under `required` they are left unenforced
/// and the rest of the schema still holds.
#[test]
fn schemas_with_unenforceable_keywords_are_taken() {
    let s = &server().base;
    let tool = json!({"type": "function", "function": {"name": "set_tags",
        "parameters": {"type": "object", "properties": {
            "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]},
                     "uniqueItems": true, "maxItems": 2, "contains": {"const": "a"}},
            "password": {"type": "string", "format": "password", "maxLength": 8},
            "id": {"type": "string", "format": "int64", "maxLength": 4},
            "n": {"type": "integer", "not": {"const": 3}, "if": {"minimum": 5}, "then": {"maximum": 9}}},
            "required": ["tags"], "additionalProperties": false}}});
    for choice in [json!("auto"), json!("none"), json!("required")] {
        let body = chat(
            "tools",
            json!({"tools": [tool], "tool_choice": choice, "seed": 3, "temperature": 1.0,
                   "max_tokens": 96, "parallel_tool_calls": false}),
        );
        let (st, b) = post(s, "/v1/chat/completions", &body);
        assert_eq!(st, 200, "{choice}: {}", short(&b));
        if choice == "required" {
            for (name, args) in forced_calls(&b) {
                assert_eq!(name, "set_tags");
                let o = args.as_object().unwrap();
                assert!(o["tags"].as_array().unwrap().len() <= 2, "{args}");
                assert!(o
                    .keys()
                    .all(|k| ["tags", "password", "id", "n"].contains(&k.as_str())));
            }
        }
    }
}

/// A forced call with a `response_format` beside it (the OpenAI Agents SDK sends both when an
/// agent has an output type and `tool_choice: required`): the calls win, as OpenAI answers.
#[test]
fn a_forced_call_wins_over_a_response_format() {
    let s = &server().base;
    let tool = json!({"type": "function", "function": {"name": "set_tags",
        "parameters": {"type": "object", "properties": {"tag": {"type": "string", "maxLength": 8}},
                       "required": ["tag"], "additionalProperties": false}}});
    let format = json!({"type": "json_schema", "json_schema": {"name": "out", "strict": true,
        "schema": {"type": "object", "properties": {"answer": {"type": "string"}},
                   "required": ["answer"], "additionalProperties": false}}});
    let body = chat(
        "tools",
        json!({"tools": [tool], "tool_choice": "required", "response_format": format,
               "seed": 3, "temperature": 1.0, "max_tokens": 64, "parallel_tool_calls": false}),
    );
    let (st, b) = post(s, "/v1/chat/completions", &body);
    assert_eq!(st, 200, "{}", short(&b));
    let calls = forced_calls(&b);
    assert!(!calls.is_empty(), "{}", short(&b));
    for (name, args) in calls {
        assert_eq!(name, "set_tags");
        assert!(args["tag"].is_string(), "{args}");
    } // The format is still checked: one the grammar compiler refuses is a 400 naming it.
    let broken = json!({"type": "json_schema", "json_schema": {"name": "out",
        "schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}});
    let mut bad = body.clone();
    bad["response_format"] = broken;
    let (st, b) = post(s, "/v1/chat/completions", &bad);
    assert_error(st, &b, 400, Some("response_format.json_schema.schema"));
}

/// A call to a function the request does not have is no call: it stays text (Llama 3's
/// format would read any JSON answer with a `"name"` as one). The output is forced by a regex
/// into a Hermes call of `nope`, and of `set_tags`, which is a call.
#[test]
fn a_call_to_a_function_not_given_stays_text() {
    let s = &server().base;
    let tool = json!({"type": "function", "function": {"name": "set_tags",
        "parameters": {"type": "object"}}});
    for (name, is_call) in [("nope", false), ("set_tags", true)] {
        let out =
            format!("<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {{}}}}\n</tool_call>");
        let body = chat(
            "tools",
            json!({"tools": [tool], "tool_choice": "auto", "max_tokens": 40,
                   "structured_outputs": {"regex": regex_escape(&out)}}),
        );
        let (st, b) = post(s, "/v1/chat/completions", &body);
        assert_eq!(st, 200, "{}", short(&b));
        let got = whole(&b["choices"][0]);
        if is_call {
            assert_eq!(got.calls.len(), 1, "{}", short(&b));
            assert_eq!(got.calls[0].1, name);
        } else {
            assert!(got.calls.is_empty(), "{}", short(&b));
            assert_eq!(b["choices"][0]["message"]["content"], out.as_str());
        }
    }
}

/// `s` as a regex matching exactly it.
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.^$|?*+()[]{}".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// Mistral v0.3's template takes only 9-character call ids. A call the server made under that
/// template has such an id, so it goes back into the conversation as it came; an OpenAI-style
/// id from elsewhere is cut to its last 9 characters (vLLM's `truncate_tool_call_ids`), in the
/// call and in the tool's answer alike.
#[test]
fn mistral_call_ids_round_trip_through_a_template_that_checks_them() {
    let s = &server().base;
    let body = chat(
        "mistral",
        json!({"tools": [time_tool()], "tool_choice": "required", "seed": 4, "temperature": 1.0,
               "max_tokens": 64, "parallel_tool_calls": false}),
    );
    let (st, b) = post(s, "/v1/chat/completions", &body);
    assert_eq!(st, 200, "{}", short(&b));
    let call = &b["choices"][0]["message"]["tool_calls"][0];
    let id = call["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", short(&b)));
    assert!(
        id.len() == 9 && id.bytes().all(|c| c.is_ascii_alphanumeric()),
        "{id:?}"
    );
    // Streamed, the same shape.
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let streamed = stream(&sb);
    let sid = streamed
        .iter()
        .flat_map(|c| {
            c["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find_map(|d| d["id"].as_str().map(String::from))
        .expect("a streamed call");
    assert!(
        sid.len() == 9 && sid.bytes().all(|c| c.is_ascii_alphanumeric()),
        "{sid:?}"
    );
    let follow_up = |id: &str| {
        let mut call = call.clone();
        call["id"] = json!(id);
        json!({"model": "mistral", "max_tokens": 1, "tools": [time_tool()],
            "messages": [
                {"role": "user", "content": "What time is it in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": id, "content": "12:00"}]})
    };
    let (st, b) = post(s, "/v1/chat/completions", &follow_up(id));
    assert_eq!(st, 200, "{}", short(&b));
    let long = "call_0123456789abcdefghijXYZ123456";
    let (st, b) = post(s, "/v1/chat/completions", &follow_up(long));
    assert_eq!(st, 200, "{}", short(&b));
    // The same prompt as with its last 9 characters written by the client.
    let (st, cut) = post(
        s,
        "/v1/chat/completions",
        &follow_up(&long[long.len() - 9..]),
    );
    assert_eq!(st, 200, "{}", short(&cut));
    assert_eq!(b["usage"]["prompt_tokens"], cut["usage"]["prompt_tokens"]);
}

/// A stop string that cuts a call short leaves no call to run: the whole answer's output is
/// its text and it finishes as `stop` (as vLLM answers an unclosed call), streamed too (the
/// pieces already sent are the arguments as far as written, never closed into a whole call).
#[test]
fn a_call_cut_by_a_stop_string_is_not_a_call() {
    let s = &server().base;
    let ask = |extra: Value| {
        let mut b = chat(
            "tools",
            json!({"tools": [weather_tool()], "tool_choice": "required", "seed": 2,
                   "temperature": 1.0, "max_tokens": 96, "parallel_tool_calls": false}),
        );
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let (st, b) = post(s, "/v1/chat/completions", &ask(json!({})));
    assert_eq!(st, 200, "{}", short(&b));
    let calls = forced_calls(&b);
    // One character into the city's name (its rest appears nowhere before).
    let city = calls[0].1["city"].as_str().unwrap().to_string();
    assert!(city.chars().count() >= 3, "{city}");
    let stop: String = city.chars().skip(1).collect();
    let (st, cut) = post(s, "/v1/chat/completions", &ask(json!({"stop": [stop]})));
    assert_eq!(st, 200, "{}", short(&cut));
    let c = &cut["choices"][0];
    assert_eq!(c["finish_reason"], "stop", "{c}");
    assert!(c["message"].get("tool_calls").is_none(), "{c}");
    let text = c["message"]["content"].as_str().unwrap();
    let head = format!("\"{}", city.chars().next().unwrap());
    assert!(text.ends_with(&head), "the output as written: {text:?}");
    let streamed = assemble(&stream(&ask(json!({"stop": [stop], "stream": true}))), 0);
    assert_eq!(streamed.finish.as_deref(), Some("stop"), "{streamed:?}");
    for (_, _, args) in &streamed.calls {
        assert!(
            serde_json::from_str::<Value>(args).is_err(),
            "not closed: {args}"
        );
    }
}

/// A forecast tool whose schema asks for `days`, and a history of three calls of it without
/// `days`: imitating the history, the small model leaves `days` out unless a grammar keeps
/// the schema.
fn forecast_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_forecast",
        "description": "The weather forecast for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city", "unit", "days"], "additionalProperties": false}}})
}

fn forecast_history() -> Vec<Value> {
    let mut messages = vec![
        json!({"role": "system", "content": "Answer weather questions with the get_forecast tool."}),
    ];
    for (city, id) in [("Oslo", "call_1"), ("Rome", "call_2"), ("Lima", "call_3")] {
        messages
            .push(json!({"role": "user", "content": format!("What is the weather in {city}?")}));
        messages.push(
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": id,
            "type": "function", "function": {"name": "get_forecast",
            "arguments": format!("{{\"city\": \"{city}\", \"unit\": \"celsius\"}}")}}]}),
        );
    }
    messages.push(json!({"role": "user", "content": "What is the weather in Paris?"}));
    messages
}

fn check_forecast_arguments(args: &Value) {
    let o = args.as_object().unwrap_or_else(|| panic!("{args}"));
    assert!(o["city"].is_string(), "{args}");
    assert!(
        ["celsius", "fahrenheit"].contains(&o["unit"].as_str().unwrap_or("")),
        "{args}"
    );
    assert!((1..=7).contains(&o["days"].as_i64().unwrap_or(0)), "{args}");
    assert_eq!(o.len(), 3, "{args}");
}

/// `auto`: the model may answer in words, and a call it begins (`<tool_call>`) follows the
/// function's schema from there on (llama.cpp's lazy grammar). Greedy, the history's calls
/// are imitated without `days`; the grammar adds it. With `tool_choice: none` the same prompt
/// gives the unconstrained call, which lacks it (what the grammar is there for).
#[test]
fn auto_calls_follow_their_schemas_once_begun() {
    let s = &server().base;
    let body = |choice: &str| {
        json!({"model": "tools", "max_tokens": 64, "temperature": 0,
               "messages": forecast_history(), "tools": [forecast_tool()], "tool_choice": choice,
               "parallel_tool_calls": false})
    };
    let (st, raw) = post(s, "/v1/chat/completions", &body("none"));
    assert_eq!(st, 200, "{}", short(&raw));
    let raw_text = raw["choices"][0]["message"]["content"].as_str().unwrap();
    let (_, free) = parse_output(ToolFormat::Hermes, raw_text);
    assert_eq!(free.len(), 1, "{raw_text:?}");
    let free_args: Value = serde_json::from_str(&free[0].arguments).unwrap();
    assert!(free_args.get("days").is_none(), "{raw_text:?}");
    let (st, b) = post(s, "/v1/chat/completions", &body("auto"));
    assert_eq!(st, 200, "{}", short(&b));
    let got = whole(&b["choices"][0]);
    assert_eq!(got.finish.as_deref(), Some("tool_calls"), "{}", short(&b));
    assert_eq!(got.calls.len(), 1, "{}", short(&b));
    assert_eq!(got.calls[0].1, "get_forecast");
    check_forecast_arguments(&serde_json::from_str(&got.calls[0].2).unwrap());
    // Streamed alike.
    let mut sb = body("auto");
    sb["stream"] = json!(true);
    assert_eq!(
        without_ids(assemble(&stream(&sb), 0)),
        without_ids(got),
        "streamed"
    );
}

/// A non-strict function whose schema the grammar compiler refuses (an OpenAPI `$ref` that
/// does not resolve) beside a JSON answer format: its arguments go unchecked, and the model
/// can still call it (the whole call grammar had been dropped, leaving the answer format
/// alone from the first token: no call possible). A strict one is a 400 naming it; a strict
/// function's keyword the compiler cannot enforce (`uniqueItems`) too, where a non-strict
/// one's is taken unenforced.
#[test]
fn a_refused_non_strict_schema_leaves_calls_possible_beside_a_response_format() {
    let s = &server().base;
    let format = json!({"type": "json_schema", "json_schema": {"name": "reply", "strict": true,
        "schema": {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40}},
                   "required": ["answer"], "additionalProperties": false}}});
    let mut tool = forecast_tool();
    tool["function"]["parameters"]["properties"]["unit"] =
        json!({"$ref": "#/components/schemas/Unit"});
    let mut calls = 0;
    for seed in 0..4 {
        let body = json!({"model": "tools", "max_tokens": 64, "temperature": 1.0, "seed": seed,
            "n": 2, "messages": forecast_history(), "tools": [tool],
            "response_format": format, "parallel_tool_calls": false});
        let (st, b) = post(s, "/v1/chat/completions", &body);
        assert_eq!(st, 200, "{}", short(&b));
        for c in b["choices"].as_array().unwrap() {
            let got = whole(c);
            if !got.calls.is_empty() {
                let args: Value = serde_json::from_str(&got.calls[0].2).unwrap();
                assert!(args.is_object(), "{c}");
                calls += 1;
            }
        }
    }
    assert!(calls > 0, "no call in 8 answers");
    // Strict: the refused schema is a 400 naming it.
    let mut strict = tool.clone();
    strict["function"]["strict"] = json!(true);
    let body = json!({"model": "tools", "max_tokens": 8, "messages": forecast_history(),
        "tools": [strict], "response_format": format});
    let (st, b) = post(s, "/v1/chat/completions", &body);
    assert_eq!(st, 400, "{}", short(&b));
    assert_eq!(b["error"]["param"], "tools[0].function.parameters", "{b}");
    // `uniqueItems`: taken unenforced for a non-strict function, a 400 for a strict one.
    let tags = |strict: bool| {
        json!({"type": "function", "function": {"name": "set_tags", "strict": strict,
            "parameters": {"type": "object", "properties": {"tags": {"type": "array",
                "items": {"type": "string"}, "uniqueItems": true}},
                "required": ["tags"], "additionalProperties": false}}})
    };
    for (strict, want) in [(false, 200), (true, 400)] {
        let body = json!({"model": "tools", "max_tokens": 8, "tool_choice": "required",
            "messages": [{"role": "user", "content": "Tag it."}], "tools": [tags(strict)]});
        let (st, b) = post(s, "/v1/chat/completions", &body);
        assert_eq!(st, want, "strict {strict}: {}", short(&b));
    }
}

/// `auto` beside a JSON `response_format`: the model either calls a function (in its schema)
/// or answers in the format's schema (OpenAI's structured outputs with tools; the Agents SDK
/// sends both for an agent with an output type). The format alone would rule calls out.
#[test]
fn auto_with_a_response_format_calls_or_answers_in_the_schema() {
    let s = &server().base;
    let format = json!({"type": "json_schema", "json_schema": {"name": "reply", "strict": true,
        "schema": {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40}},
                   "required": ["answer"], "additionalProperties": false}}});
    let mut calls = 0;
    let mut answers = 0;
    for seed in 0..4 {
        let body = json!({"model": "tools", "max_tokens": 64, "temperature": 1.0, "seed": seed,
            "n": 2, "messages": forecast_history(), "tools": [forecast_tool()],
            "response_format": format, "parallel_tool_calls": false});
        let (st, b) = post(s, "/v1/chat/completions", &body);
        assert_eq!(st, 200, "{}", short(&b));
        for c in b["choices"].as_array().unwrap() {
            let got = whole(c);
            if got.calls.is_empty() {
                let v: Value = serde_json::from_str(&got.content)
                    .unwrap_or_else(|e| panic!("neither a call nor the schema: {c} ({e})"));
                assert!(
                    v["answer"].is_string() && v.as_object().unwrap().len() == 1,
                    "{v}"
                );
                answers += 1;
            } else {
                assert_eq!(got.finish.as_deref(), Some("tool_calls"), "{c}");
                assert_eq!(got.calls.len(), 1, "{c}");
                check_forecast_arguments(&serde_json::from_str(&got.calls[0].2).unwrap());
                assert_eq!(got.content, "", "{c}");
                calls += 1;
            }
        }
    }
    // The history's pattern makes calls the likely path; the format alone allowed none.
    assert!(calls > 0, "{calls} calls, {answers} answers");
    eprintln!("auto with a response format: {calls} calls, {answers} answers");
}
